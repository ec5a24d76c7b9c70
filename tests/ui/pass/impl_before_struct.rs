// The impl block may come before the struct in the module.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, ddp_model};

#[ddp_model]
impl<B: Backend> Late<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.lin.forward(x)
    }
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct Late<B: Backend> {
    lin: Linear<B>,
}

fn main() {
    let device = Default::default();
    let model = Late::<Flex> {
        lin: LinearConfig::new(2, 2).init(&device),
    };
    assert!(!model.usage_plan().has_conditional());
    let _ = model.forward(Tensor::ones([1, 2], &device));
}
