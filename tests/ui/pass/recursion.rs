// Helper methods, mutual recursion and `Self::method(self, ..)` calls.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model, record_usage};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    even: Linear<B>,
    odd: Linear<B>,
    last: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>, depth: usize) -> Tensor<B, 2> {
        Self::even_step(self, x, depth)
    }

    fn even_step(&self, x: Tensor<B, 2>, n: usize) -> Tensor<B, 2> {
        let x = self.even.forward(x);
        if n == 0 { x } else { self.odd_step(x, n - 1) }
    }

    fn odd_step(&self, x: Tensor<B, 2>, n: usize) -> Tensor<B, 2> {
        let x = self.odd.forward(x);
        if n == 0 {
            self.last.forward(x)
        } else {
            self.even_step(x, n - 1)
        }
    }
}

fn main() {
    let device = Default::default();
    let lin = || LinearConfig::new(2, 2).init::<Flex>(&device);
    let model = Net {
        even: lin(),
        odd: lin(),
        last: lin(),
    };
    let plan = model.usage_plan();
    assert_eq!(plan.usage()[0], Usage::Always);
    assert!(plan.usage()[2].is_conditional());
    assert!(plan.usage()[4].is_conditional());
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), 0));
    assert!(record.ids().is_empty());
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), 1));
    // odd once, then last.
    assert_eq!(record.ids().len(), 4);
}
