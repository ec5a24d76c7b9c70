use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    head: Linear<B>,
}

fn run<B: Backend>(net: &Net<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    net.head.forward(x)
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        #[ddp(use(head))]
        let y = run(self, x);
        y
    }
}

fn main() {}
