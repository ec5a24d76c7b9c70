use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

// Every mistake of the model is reported in the same build.
#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    head: Linear<B>,
    unused_a: Linear<B>,
    unused_b: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = self.head.forward(x);
        #[ddp(uses(missing))]
        let _z = 1;
        y
    }
}

fn main() {}
