#![deny(deprecated)]
use burn::nn::Linear;
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Detector<B: Backend> {
    cls_head: Linear<B>,
    mask_head: Linear<B>,
    experts: Vec<Linear<B>>,
}

#[ddp_model(report)]
impl<B: Backend> Detector<B> {
    pub fn forward(&self, x: Tensor<B, 2>, has_masks: bool, expert: usize) -> Tensor<B, 2> {
        let y = self.cls_head.forward(x);
        let y = if has_masks {
            self.mask_head.forward(y)
        } else {
            y
        };
        self.experts[expert].forward(y)
    }
}

fn main() {}
