// Loops, closures and iterator adaptors: bodies may run zero times.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model, record_usage};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    stem: Linear<B>,
    repeat: Linear<B>,
    layers: Vec<Linear<B>>,
    picked: Vec<Linear<B>>,
    refine: Linear<B>,
    exit: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>, steps: usize, k: usize) -> Tensor<B, 2> {
        let mut x = self.stem.forward(x);
        for _ in 0..steps {
            x = self.repeat.forward(x);
        }
        // Every layer, each recorded as the fold reaches it (a `Vec` may
        // be empty): conditional.
        x = self.layers.iter().fold(x, |x, layer| layer.forward(x));
        // Only the first `k`: conditional.
        for layer in self.picked.iter().take(k) {
            x = layer.forward(x);
        }
        let refine = |x: Tensor<B, 2>| self.refine.forward(x);
        let mut n = 0;
        while n < steps {
            x = refine(x);
            n += 1;
        }
        loop {
            x = self.exit.forward(x);
            if n >= steps {
                break x;
            }
            n += 1;
        }
    }
}

fn main() {
    let device = Default::default();
    let lin = || LinearConfig::new(2, 2).init::<Flex>(&device);
    let model = Net {
        stem: lin(),
        repeat: lin(),
        layers: vec![lin(), lin()],
        picked: vec![lin(), lin()],
        refine: lin(),
        exit: lin(),
    };
    let plan = model.usage_plan();
    let usage = |path: &str| {
        let slot = plan
            .layout()
            .slots()
            .iter()
            .position(|s| s.path == path)
            .unwrap();
        plan.usage()[slot]
    };
    assert_eq!(usage("stem.weight"), Usage::Always);
    assert!(usage("layers.1.weight").is_conditional());
    assert_eq!(usage("exit.weight"), Usage::Always);
    assert!(usage("repeat.weight").is_conditional());
    assert!(usage("picked.0.weight").is_conditional());
    assert!(usage("refine.weight").is_conditional());
    // Only the layers the fold ran: 2 × (weight, bias).
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), 0, 0));
    assert_eq!(record.ids().len(), 4);
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), 1, 1));
    assert!(!record.ids().is_empty());
}
