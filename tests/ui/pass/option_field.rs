// `Option<Module>` fields: matched on in `forward`.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model, record_usage};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    body: Linear<B>,
    // Taken by reference on every path: always (absent means no parameters).
    norm: Option<Linear<B>>,
    // Used only when the caller asks for it.
    head: Option<Linear<B>>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>, with_head: bool) -> Tensor<B, 2> {
        let mut x = self.body.forward(x);
        if let Some(norm) = &self.norm {
            x = norm.forward(x);
        }
        if with_head && self.head.is_some() {
            if let Some(head) = self.head.as_ref() {
                x = head.forward(x);
            }
        }
        x
    }
}

fn main() {
    let device = Default::default();
    let lin = || LinearConfig::new(2, 2).init::<Flex>(&device);
    let model = Net {
        body: lin(),
        norm: Some(lin()),
        head: Some(lin()),
    };
    let plan = model.usage_plan();
    // `body` always; an `Option` field's content is used in its `Some` arm
    // only, so `norm` and `head` are conditional and recorded when used.
    assert!(plan.usage()[..2].iter().all(|u| *u == Usage::Always));
    assert!(plan.usage()[2..].iter().all(|u| u.is_conditional()));
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), false));
    assert_eq!(record.ids().len(), 2);
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), true));
    assert_eq!(record.ids().len(), 4);
}
