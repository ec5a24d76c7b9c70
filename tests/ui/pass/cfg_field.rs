// `#[cfg]`-gated fields: the plan entries carry the same `cfg`.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    body: Linear<B>,
    #[cfg(any())]
    never_compiled: Linear<B>,
    #[cfg(all())]
    extra: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.body.forward(x);
        #[cfg(any())]
        let x = self.never_compiled.forward(x);
        #[cfg(all())]
        let x = self.extra.forward(x);
        x
    }
}

fn main() {
    let device = Default::default();
    let model = Net::<Flex> {
        body: LinearConfig::new(2, 2).init(&device),
        extra: LinearConfig::new(2, 2).init(&device),
    };
    let plan = model.usage_plan();
    assert_eq!(plan.usage()[0], Usage::Always);
    // A use under `#[cfg]` is not a use in every build: conditional.
    assert!(plan.usage()[2].is_conditional());
    let _ = model.forward(Tensor::ones([1, 2], &device));
}
