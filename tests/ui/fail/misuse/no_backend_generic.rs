use burn::backend::Flex;
use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Debug)]
pub struct Net {
    head: Linear<Flex>,
}

#[ddp_model]
impl Net {
    pub fn forward(&self, x: Tensor<Flex, 2>) -> Tensor<Flex, 2> {
        self.head.forward(x)
    }
}

fn main() {}
