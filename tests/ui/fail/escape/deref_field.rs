use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[derive(Module, Debug)]
pub struct Inner<B: Backend> {
    head: Linear<B>,
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    inner: Inner<B>,
}

impl<B: Backend> std::ops::Deref for Net<B> {
    type Target = Inner<B>;
    fn deref(&self) -> &Inner<B> {
        &self.inner
    }
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(x)
    }
}

fn main() {}
