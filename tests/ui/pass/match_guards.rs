// `match` with guards, `if let` chains, `else if`.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, ddp_model};

pub enum Task {
    Classify,
    Segment { masks: usize },
    Both,
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct Heads<B: Backend> {
    cls: Linear<B>,
    seg: Linear<B>,
    big_seg: Linear<B>,
    shared: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Heads<B> {
    pub fn forward(&self, x: Tensor<B, 2>, task: Task) -> Tensor<B, 2> {
        let y = match task {
            Task::Classify => self.cls.forward(x),
            Task::Segment { masks } if masks > 10 => self.big_seg.forward(x),
            Task::Segment { .. } => self.seg.forward(x),
            Task::Both => self.seg.forward(self.cls.forward(x)),
        };
        if let [n, _] = y.dims()
            && n > 100
        {
            y
        } else if y.dims()[1] > 0 {
            self.shared.forward(y)
        } else {
            self.shared.forward(y) * 2.0
        }
    }
}

fn main() {
    let device = Default::default();
    let lin = || LinearConfig::new(2, 2).init::<Flex>(&device);
    let model = Heads {
        cls: lin(),
        seg: lin(),
        big_seg: lin(),
        shared: lin(),
    };
    let plan = model.usage_plan();
    assert_eq!(plan.conditional_slots().count(), 8);
    for task in [
        Task::Classify,
        Task::Segment { masks: 11 },
        Task::Segment { masks: 1 },
        Task::Both,
    ] {
        let _ = model.forward(Tensor::ones([1, 2], &device), task);
    }
}
