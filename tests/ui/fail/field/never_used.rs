use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Detector<B: Backend> {
    cls_head: Linear<B>,
    teacher: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Detector<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.cls_head.forward(x)
    }
}

fn main() {}
