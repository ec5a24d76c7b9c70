// Input of the expansion snapshot: `detector.expanded.rs` is what
// `#[ddp_model]` turns this file into (regenerate with
// `MASKDDP_BLESS=1 cargo test -p maskddp-macros snapshot`).
// Not an example target: cargo only builds `examples/*.rs` and `examples/*/main.rs`.

use burn::nn::{Linear, Relu};
use burn::prelude::*;
use maskddp::ddp_model;

#[ddp_model]
#[derive(Module, Debug)]
pub struct Detector<B: Backend> {
    backbone: Linear<B>,
    cls_head: Linear<B>,
    mask_head: Linear<B>,
    experts: Vec<Linear<B>>,
    #[ddp(frozen)]
    teacher: Linear<B>,
    act: Relu,
}

#[ddp_model]
impl<B: Backend> Detector<B> {
    pub fn forward(&self, x: Tensor<B, 2>, has_masks: bool, expert: usize) -> Tensor<B, 2> {
        let h = self.act.forward(self.backbone.forward(x));
        let mut out = self.cls_head.forward(h.clone());
        if has_masks {
            out = out + self.masks(h.clone());
        }
        out + self.experts[expert].forward(h)
    }

    fn masks(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.mask_head.forward(h)
    }
}
