use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    head: Linear<B>,
    width: usize,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // Reading a parameter-free field inside a macro is fine.
        assert_eq!(x.dims()[1], self.width);
        println!("{:?}", self.head);
        self.head.forward(x)
    }
}

fn main() {}
