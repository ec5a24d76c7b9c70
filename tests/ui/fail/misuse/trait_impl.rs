use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    head: Linear<B>,
}

pub trait Forward<B: Backend> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2>;
}

#[ddp_model]
impl<B: Backend> Forward<B> for Net<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(x)
    }
}

fn main() {}
