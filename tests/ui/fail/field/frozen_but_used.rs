use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Distill<B: Backend> {
    student: Linear<B>,
    #[ddp(frozen)]
    teacher: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Distill<B> {
    pub fn forward(&self, x: Tensor<B, 2>, distill: bool) -> Tensor<B, 2> {
        let y = self.student.forward(x.clone());
        if distill {
            y - self.teacher.forward(x)
        } else {
            y
        }
    }
}

fn main() {}
