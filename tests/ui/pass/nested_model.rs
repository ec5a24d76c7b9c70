// A `#[ddp_model]` field composes: its plan and recording are its own.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model, record_usage};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    main: Linear<B>,
    skip: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Block<B> {
    pub fn forward(&self, x: Tensor<B, 2>, skip: bool) -> Tensor<B, 2> {
        let y = self.main.forward(x);
        if skip { self.skip.forward(y) } else { y }
    }
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    always: Block<B>,
    sometimes: Block<B>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>, deep: bool) -> Tensor<B, 2> {
        let x = self.always.forward(x, false);
        if deep {
            self.sometimes.forward(x, true)
        } else {
            x
        }
    }
}

fn main() {
    let device = Default::default();
    let block = || Block::<Flex> {
        main: LinearConfig::new(2, 2).init(&device),
        skip: LinearConfig::new(2, 2).init(&device),
    };
    let model = Net {
        always: block(),
        sometimes: block(),
    };
    let plan = model.usage_plan();
    let usage = plan.usage();
    assert_eq!(usage[0], Usage::Always); // always.main.weight
    assert_eq!(usage[2], Usage::Conditional { branch: "if skip" }); // always.skip.weight
    assert_eq!(usage[4], Usage::Conditional { branch: "if deep" }); // sometimes.main.weight
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), false));
    assert!(record.ids().is_empty());
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), true));
    // sometimes.main (touch of a conditional child) + sometimes.skip (its own branch).
    assert_eq!(record.ids().len(), 4);
}
