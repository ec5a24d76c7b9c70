//! A nested `#[ddp_model]` inside `Option<…>` or `Vec<…>` keeps its own
//! always/conditional split, in the plan, in what is recorded and in what the
//! reducer returns.

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

#[ddp_model]
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    inner: Linear<B>,
    gate: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Block<B> {
    pub fn forward(&self, x: Tensor<B, 2>, gated: bool) -> Tensor<B, 2> {
        let x = self.inner.forward(x);
        if gated { self.gate.forward(x) } else { x }
    }
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    opt: Option<Block<B>>,
    many: Vec<Block<B>>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>, gated: bool, pick: usize) -> Tensor<B, 2> {
        let x = match &self.opt {
            Some(block) => block.forward(x, gated),
            None => x,
        };
        self.many[pick].forward(x, gated)
    }
}

fn block(device: &burn::tensor::Device<B>) -> Block<B> {
    Block {
        inner: LinearConfig::new(2, 2).init(device),
        gate: LinearConfig::new(2, 2).init(device),
    }
}

fn net() -> Net<B> {
    let device = Default::default();
    Net {
        opt: Some(block(&device)),
        many: vec![block(&device), block(&device)],
    }
}

fn paths(plan: &maskddp::UsagePlan, keep: impl Fn(&Usage) -> bool) -> BTreeSet<String> {
    plan.layout()
        .slots()
        .iter()
        .zip(plan.usage())
        .filter(|(_, usage)| keep(usage))
        .map(|(slot, _)| slot.path.clone())
        .collect()
}

#[test]
fn plan_keeps_the_split_of_children_in_containers() {
    let plan = net().usage_plan();
    assert_eq!(plan.undescribed(), &[] as &[usize]);
    // `self.opt`'s child is used in the `Some` arm only, so all of it is
    // conditional; no field is used on every path.
    assert_eq!(
        paths(&plan, |usage| *usage == Usage::Always),
        BTreeSet::new(),
        "{}",
        plan.table()
    );
    assert_eq!(
        plan.usage()[2],
        Usage::Conditional {
            branch: "match &self.opt => Some(block)"
        },
        "{}",
        plan.table()
    );
}

#[test]
fn recording_a_child_in_a_container_skips_its_unused_gate() {
    let model = net();
    let plan = model.usage_plan();
    let (_, record) =
        record_usage(|| model.forward(Tensor::ones([1, 2], &Default::default()), false, 1));
    let recorded: BTreeSet<String> = plan
        .layout()
        .slots()
        .iter()
        .filter(|slot| record.ids().contains(&slot.id))
        .map(|slot| slot.path.clone())
        .collect();
    // Each child called records only its own always-used part, since its
    // own forward did not take the gate.
    let expected: BTreeSet<String> = [
        "opt.inner.weight",
        "opt.inner.bias",
        "many.1.inner.weight",
        "many.1.inner.bias",
    ]
    .map(String::from)
    .into();
    assert_eq!(recorded, expected);
}

#[test]
fn reducer_returns_no_gradient_for_an_ungated_child_gate() {
    let mut collectives = ThreadGroup::with_config(
        1,
        ThreadGroupConfig::default().with_timeout(Duration::from_secs(30)),
    );
    let (model, mut reducer) =
        Reducer::new(net(), collectives.remove(0), ReducerConfig::default()).unwrap();
    let device = Default::default();
    let out = reducer.forward(|| model.forward(Tensor::ones([1, 2], &device), false, 0));
    let grads = GradientsParams::from_grads(out.sum().backward(), &model);
    let grads = reducer.reduce(grads).unwrap();
    let plan = model.usage_plan();
    let with_gradient: BTreeSet<String> = plan
        .layout()
        .slots()
        .iter()
        .filter(|slot| {
            let dims = slot.shape.len();
            match dims {
                1 => grads.get::<Flex, 1>(slot.id).is_some(),
                2 => grads.get::<Flex, 2>(slot.id).is_some(),
                _ => unreachable!("Linear has 1- and 2-d parameters"),
            }
        })
        .map(|slot| slot.path.clone())
        .collect();
    let expected: BTreeSet<String> = [
        "opt.inner.weight",
        "opt.inner.bias",
        "many.0.inner.weight",
        "many.0.inner.bias",
    ]
    .map(String::from)
    .into();
    assert_eq!(with_gradient, expected);
}
