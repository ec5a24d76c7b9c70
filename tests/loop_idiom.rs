//! The expert loop people write,
//! `for (i, expert) in self.experts.iter().enumerate() { if mask[i] { .. } }`,
//! records and sends exactly what the index form `self.experts[i]` does: the
//! same plan classes, the same recorded parameters, the same bytes per step.

use std::collections::BTreeSet;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use maskddp::{
    DdpModel, Reducer, ReducerConfig, ThreadGroup, ThreadGroupConfig, Usage, ddp_model,
    record_usage,
};

type B = Autodiff<Flex>;
const EXPERTS: usize = 4;
const WIDTH: usize = 8;

#[ddp_model]
#[derive(Module, Debug)]
pub struct LoopNet<B: Backend> {
    trunk: Linear<B>,
    experts: Vec<Linear<B>>,
}

#[ddp_model]
impl<B: Backend> LoopNet<B> {
    pub fn forward(&self, x: Tensor<B, 2>, mask: [bool; EXPERTS]) -> Tensor<B, 2> {
        let x = self.trunk.forward(x);
        let mut out = x.clone();
        for (i, expert) in self.experts.iter().enumerate() {
            if mask[i] {
                out = out + expert.forward(x.clone());
            }
        }
        out
    }
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct IndexNet<B: Backend> {
    trunk: Linear<B>,
    experts: Vec<Linear<B>>,
}

#[ddp_model]
impl<B: Backend> IndexNet<B> {
    pub fn forward(&self, x: Tensor<B, 2>, mask: [bool; EXPERTS]) -> Tensor<B, 2> {
        let x = self.trunk.forward(x);
        let mut out = x.clone();
        for (i, used) in mask.iter().enumerate() {
            if *used {
                out = out + self.experts[i].forward(x.clone());
            }
        }
        out
    }
}

fn parts(device: &burn::tensor::Device<B>) -> (Linear<B>, Vec<Linear<B>>) {
    let linear = || LinearConfig::new(WIDTH, WIDTH).init(device);
    (linear(), (0..EXPERTS).map(|_| linear()).collect())
}

fn masks() -> Vec<[bool; EXPERTS]> {
    (0..1 << EXPERTS)
        .map(|bits: usize| std::array::from_fn(|i| bits >> i & 1 == 1))
        .collect()
}

fn recorded<M: DdpModel<B>>(model: &M, forward: impl FnOnce() -> Tensor<B, 2>) -> BTreeSet<String> {
    let (_, record) = record_usage(forward);
    let plan = model.usage_plan();
    plan.layout()
        .slots()
        .iter()
        .filter(|slot| record.ids().contains(&slot.id))
        .map(|slot| slot.path.clone())
        .collect()
}

#[test]
fn loop_and_index_forms_plan_and_record_the_same() {
    let device = Default::default();
    let (trunk, experts) = parts(&device);
    let looped = LoopNet {
        trunk: trunk.clone(),
        experts: experts.clone(),
    };
    let indexed = IndexNet { trunk, experts };
    let always = |plan: maskddp::UsagePlan| -> Vec<bool> {
        plan.usage().iter().map(|u| *u == Usage::Always).collect()
    };
    assert_eq!(always(looped.usage_plan()), always(indexed.usage_plan()));
    assert_eq!(
        looped.usage_plan().usage()[2],
        Usage::Conditional {
            branch: "if mask[i]"
        },
        "{}",
        looped.usage_plan().table()
    );
    let x = || Tensor::<B, 2>::ones([2, WIDTH], &device);
    for mask in masks() {
        let a = recorded(&looped, || looped.forward(x(), mask));
        let b = recorded(&indexed, || indexed.forward(x(), mask));
        assert_eq!(a, b, "mask {mask:?}");
        assert_eq!(
            a.len(),
            2 * mask.iter().filter(|m| **m).count(),
            "mask {mask:?}"
        );
    }
}

/// Bytes the reducer sends for one step of `forward`.
fn bytes_sent<M: DdpModel<B> + burn::module::AutodiffModule<B>>(
    model: M,
    forward: impl Fn(&M) -> Tensor<B, 2>,
) -> u64 {
    let mut collectives = ThreadGroup::with_config(
        1,
        ThreadGroupConfig::default().with_timeout(Duration::from_secs(30)),
    );
    let (model, mut reducer) =
        Reducer::new(model, collectives.remove(0), ReducerConfig::default()).unwrap();
    let out = reducer.forward(|| forward(&model));
    let grads = GradientsParams::from_grads(out.sum().backward(), &model);
    reducer.reduce(grads).unwrap();
    reducer.last_stats().bytes_sent
}

#[test]
fn loop_and_index_forms_send_the_same_bytes() {
    let device = Default::default();
    let x = || Tensor::<B, 2>::ones([2, WIDTH], &device);
    for mask in masks() {
        let (trunk, experts) = parts(&device);
        let looped = LoopNet {
            trunk: trunk.clone(),
            experts: experts.clone(),
        };
        let indexed = IndexNet { trunk, experts };
        let a = bytes_sent(looped, |m| m.forward(x(), mask));
        let b = bytes_sent(indexed, |m| m.forward(x(), mask));
        assert_eq!(a, b, "mask {mask:?}");
        let per_linear = ((WIDTH * WIDTH + WIDTH) * 4) as u64;
        let used = mask.iter().filter(|m| **m).count() as u64;
        assert!(a >= (1 + used) * per_linear, "mask {mask:?}: {a} bytes");
        assert!(a < (2 + used) * per_linear, "mask {mask:?}: {a} bytes");
    }
}
