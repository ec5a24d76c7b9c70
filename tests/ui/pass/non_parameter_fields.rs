// Fields without parameters (config values, skipped modules, activations,
// `Ignored<T>`) are not analysed and may go unused.
#![allow(deprecated)] // burn 0.21 deprecates `Ignored<T>`; still supported here.

use burn::backend::Flex;
use burn::module::Ignored;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use maskddp::{DdpModel, ddp_model};

#[derive(Debug, Clone)]
pub struct Settings {
    pub scale: f32,
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    proj: Linear<B>,
    act: Relu,
    width: usize,
    name: String,
    settings: Ignored<Settings>,
    #[module(skip)]
    cache: Option<Linear<B>>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        assert_eq!(x.dims()[1], self.width, "input width of {}", self.name);
        self.act.forward(self.proj.forward(x)) * self.settings.0.scale
    }
}

fn main() {
    let device = Default::default();
    let model = Net::<Flex> {
        proj: LinearConfig::new(2, 2).init(&device),
        act: Relu::new(),
        width: 2,
        name: "net".into(),
        settings: Ignored(Settings { scale: 2.0 }),
        cache: None,
    };
    assert!(model.cache.is_none());
    assert!(!model.usage_plan().has_conditional());
    let _ = model.forward(Tensor::ones([1, 2], &device));
}
