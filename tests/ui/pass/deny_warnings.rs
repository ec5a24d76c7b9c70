// The expansion is lint-clean: no warning in user code, even denied.
#![deny(
    warnings,
    missing_debug_implementations,
    unused_qualifications,
    unused_results
)]
#![deny(clippy::all)]

use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use maskddp::{DdpModel, ddp_model};

/// A documented model.
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
    /// The forward pass.
    pub fn forward(&self, x: Tensor<B, 2>, has_masks: bool, expert: usize) -> Tensor<B, 2> {
        let h = self.act.forward(self.backbone.forward(x));
        let mut out = self.cls_head.forward(h.clone());
        if has_masks {
            out = out + self.mask_head.forward(h.clone());
        }
        if let Some(e) = self.experts.get(expert) {
            out = out + e.forward(h);
        }
        out
    }
}

mod nested {
    use burn::nn::Linear;
    use burn::prelude::*;
    use maskddp::ddp_model;

    #[ddp_model]
    #[derive(Module, Debug)]
    pub struct Inner<B: Backend> {
        pub lin: Linear<B>,
    }
}

// The impl may name the struct by path, from another module.
#[ddp_model]
impl<B: Backend> nested::Inner<B> {
    /// Forward.
    pub fn forward(&self, x: Tensor<B, 2>, on: bool) -> Tensor<B, 2> {
        if on { self.lin.forward(x) } else { x }
    }
}

fn main() {
    let device = Default::default();
    let lin = || LinearConfig::new(2, 2).init::<Flex>(&device);
    let model = Detector {
        backbone: lin(),
        cls_head: lin(),
        mask_head: lin(),
        experts: vec![lin()],
        teacher: lin(),
        act: Relu::new(),
    };
    let _plan = model.usage_plan();
    let _out = model.forward(Tensor::ones([1, 2], &device), true, 0);
    let inner = nested::Inner { lin: lin() };
    let _out = inner.forward(Tensor::ones([1, 2], &device), true);
    let _plan = inner.usage_plan();
}
