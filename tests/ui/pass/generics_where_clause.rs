// Extra generics, a where-clause and a generic module field.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Gated<B: Backend, M: Module<B>>
where
    M: Clone,
{
    inner: M,
    gate: Linear<B>,
}

pub trait Apply<B: Backend> {
    fn apply(&self, x: Tensor<B, 2>) -> Tensor<B, 2>;
}

impl<B: Backend> Apply<B> for Linear<B> {
    fn apply(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward(x)
    }
}

#[ddp_model]
impl<B: Backend, M: Module<B> + Apply<B>> Gated<B, M>
where
    M: Clone,
{
    pub fn forward(&self, x: Tensor<B, 2>, gated: bool) -> Tensor<B, 2> {
        let y = self.inner.apply(x);
        if gated { self.gate.forward(y) } else { y }
    }
}

fn main() {
    let device = Default::default();
    let model: Gated<Flex, Linear<Flex>> = Gated {
        inner: LinearConfig::new(3, 3).init(&device),
        gate: LinearConfig::new(3, 3).init(&device),
    };
    let plan = model.usage_plan();
    assert_eq!(plan.usage()[0], Usage::Always);
    assert_eq!(plan.usage()[2], Usage::Conditional { branch: "if gated" });
    let out = model.forward(Tensor::ones([1, 3], &device), true);
    assert_eq!(out.dims(), [1, 3]);
}
