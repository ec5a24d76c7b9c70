use burn::backend::NdArray;
use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Debug)]
pub struct Net {
    head: Linear<NdArray>,
}

#[ddp_model]
impl Net {
    pub fn forward(&self, x: Tensor<NdArray, 2>) -> Tensor<NdArray, 2> {
        self.head.forward(x)
    }
}

fn main() {}
