use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    head: Linear<B>,
}

impl<B: Backend> Net<B> {
    fn project(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(x)
    }
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = self.head.forward(x);
        self.project(y)
    }
}

fn main() {}
