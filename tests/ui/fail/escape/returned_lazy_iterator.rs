use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    head: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(
        &self,
        xs: Vec<Tensor<B, 2>>,
    ) -> impl Iterator<Item = Tensor<B, 2>> + '_ {
        xs.into_iter().map(move |x| self.head.forward(x))
    }
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct Router<B: Backend> {
    experts: Vec<Linear<B>>,
}

#[ddp_model]
impl<B: Backend> Router<B> {
    pub fn forward(&self) -> std::slice::Iter<'_, Linear<B>> {
        self.experts.iter()
    }
}

fn main() {}
