use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    trunk: Linear<B>,
    head: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>, refine: bool) -> Tensor<B, 2> {
        // The macro's body uses `self.head` wherever `head!` expands.
        macro_rules! head {
            ($x:expr) => {
                self.head.forward($x)
            };
        }
        let y = self.trunk.forward(x);
        if refine { head!(y) } else { y }
    }
}

fn main() {}
