// A `#[ddp(frozen)]` teacher runs in `forward` (distillation) but is never
// recorded nor reduced; built with `no_grad`, it never has a gradient.
use burn::backend::{Autodiff, Flex};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use maskddp::{DdpModel, Reducer, ReducerConfig, ThreadGroup, Usage, ddp_model, record_usage};

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
            y - self.teacher.forward(x).detach()
        } else {
            y
        }
    }
}

type B = Autodiff<Flex>;

fn main() {
    let device = Default::default();
    let model = Distill::<B> {
        student: LinearConfig::new(2, 2).init(&device),
        teacher: LinearConfig::new(2, 2).init(&device).no_grad(),
    };
    let plan = model.usage_plan();
    assert_eq!(plan.usage(), &[Usage::Always, Usage::Always, Usage::Frozen, Usage::Frozen]);
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), true));
    assert!(record.ids().is_empty());

    let collective = ThreadGroup::new(1).remove(0);
    let (model, mut reducer) = Reducer::new(model, collective, ReducerConfig::default()).unwrap();
    let out = reducer.forward(|| model.forward(Tensor::ones([1, 2], &device), true));
    let grads = GradientsParams::from_grads(out.sum().backward(), &model);
    let grads = reducer.reduce(grads).unwrap();
    assert_eq!(grads.len(), 2, "only the student is reduced");
}
