//! `#[ddp_model]` on real burn models: the static plan per parameter slot, and
//! exactly which parameters an instrumented forward records per branch.

use std::collections::BTreeSet;

use burn::backend::{Autodiff, Flex};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, UsagePlan, record_usage};

type B = Autodiff<Flex>;

#[ddp_model_attr]
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    act: Relu,
}

use maskddp::ddp_model as ddp_model_attr;

#[ddp_model_attr]
impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(self.act.forward(self.fc1.forward(x)))
    }
}

/// A nested model with a conditional part of its own.
#[maskddp::ddp_model]
#[derive(Module, Debug)]
pub struct Backbone<B: Backend> {
    stem: Linear<B>,
    refine: Linear<B>,
}

#[maskddp::ddp_model]
impl<B: Backend> Backbone<B> {
    pub fn forward(&self, x: Tensor<B, 2>, refine: bool) -> Tensor<B, 2> {
        let x = self.stem.forward(x);
        if refine { self.refine.forward(x) } else { x }
    }
}

#[maskddp::ddp_model]
#[derive(Module, Debug)]
pub struct Detector<B: Backend> {
    backbone: Backbone<B>,
    cls_head: Linear<B>,
    mask_head: Linear<B>,
    experts: Vec<Mlp<B>>,
    aux: Backbone<B>,
    #[ddp(frozen)]
    teacher: Linear<B>,
    width: usize,
}

#[maskddp::ddp_model]
impl<B: Backend> Detector<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        has_masks: bool,
        expert: usize,
        aux: bool,
    ) -> Tensor<B, 2> {
        let h = self.backbone.forward(x, true);
        let mut out = self.cls_head.forward(h.clone());
        if has_masks {
            out = out + self.masks(h.clone());
        }
        out = out + self.experts[expert].forward(h.clone());
        if aux {
            out = out + self.aux.forward(h, false);
        }
        out
    }

    fn masks(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.mask_head.forward(h)
    }
}

const W: usize = 4;

fn detector(device: &burn::tensor::Device<B>) -> Detector<B> {
    let linear = || LinearConfig::new(W, W).init(device);
    let backbone = || Backbone {
        stem: linear(),
        refine: linear(),
    };
    Detector {
        backbone: backbone(),
        cls_head: linear(),
        mask_head: linear(),
        experts: (0..3)
            .map(|_| Mlp {
                fc1: linear(),
                fc2: linear(),
                act: Relu::new(),
            })
            .collect(),
        aux: backbone(),
        teacher: linear(),
        width: W,
    }
}

fn usage_of(plan: &UsagePlan, path: &str) -> Usage {
    let slot = plan
        .layout()
        .slots()
        .iter()
        .position(|s| s.path == path)
        .unwrap_or_else(|| panic!("no slot {path}"));
    plan.usage()[slot]
}

/// The slot paths recorded by one forward.
fn recorded(model: &Detector<B>, has_masks: bool, expert: usize, aux: bool) -> BTreeSet<String> {
    let device = Default::default();
    let x = Tensor::<B, 2>::ones([2, W], &device);
    let (_, record) = record_usage(|| model.forward(x, has_masks, expert, aux));
    let plan = model.usage_plan();
    let ids: BTreeSet<_> = record.ids().iter().copied().collect();
    plan.layout()
        .slots()
        .iter()
        .filter(|s| ids.contains(&s.id))
        .map(|s| s.path.clone())
        .collect()
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

#[test]
fn plan_classifies_every_slot() {
    let model = detector(&Default::default());
    assert_eq!(model.width, W);
    let plan = model.usage_plan();
    assert!(plan.undescribed().is_empty(), "{}", plan.table());
    for path in [
        "backbone.stem.weight",
        "backbone.stem.bias",
        "cls_head.weight",
        "cls_head.bias",
    ] {
        assert_eq!(usage_of(&plan, path), Usage::Always, "{path}");
    }
    // The always-used child keeps its own conditional part.
    assert_eq!(
        usage_of(&plan, "backbone.refine.weight"),
        Usage::Conditional {
            branch: "if refine"
        }
    );
    assert_eq!(
        usage_of(&plan, "mask_head.weight"),
        Usage::Conditional {
            branch: "if has_masks"
        }
    );
    assert_eq!(
        usage_of(&plan, "experts.1.fc2.bias"),
        Usage::Conditional {
            branch: "self.experts[expert]"
        }
    );
    // A conditionally used child is conditional as a whole.
    assert_eq!(
        usage_of(&plan, "aux.stem.weight"),
        Usage::Conditional { branch: "if aux" }
    );
    assert_eq!(usage_of(&plan, "teacher.weight"), Usage::Frozen);
    println!("{}", plan.table());
}

#[test]
fn forward_records_exactly_the_branches_taken() {
    let model = detector(&Default::default());
    // Always-used parameters are never recorded; backbone.refine is recorded
    // by the child's own instrumentation.
    assert_eq!(
        recorded(&model, false, 2, false),
        set(&[
            "backbone.refine.weight",
            "backbone.refine.bias",
            "experts.2.fc1.weight",
            "experts.2.fc1.bias",
            "experts.2.fc2.weight",
            "experts.2.fc2.bias"
        ])
    );
    assert_eq!(
        recorded(&model, true, 0, false),
        set(&[
            "backbone.refine.weight",
            "backbone.refine.bias",
            "mask_head.weight",
            "mask_head.bias",
            "experts.0.fc1.weight",
            "experts.0.fc1.bias",
            "experts.0.fc2.weight",
            "experts.0.fc2.bias"
        ])
    );
    // The conditionally used child: its always part (stem) via the touch, its
    // refine branch not taken (`forward(h, false)`).
    assert_eq!(
        recorded(&model, false, 1, true),
        set(&[
            "backbone.refine.weight",
            "backbone.refine.bias",
            "experts.1.fc1.weight",
            "experts.1.fc1.bias",
            "experts.1.fc2.weight",
            "experts.1.fc2.bias",
            "aux.stem.weight",
            "aux.stem.bias"
        ])
    );
}

#[test]
fn outside_a_scope_nothing_is_recorded() {
    let model = detector(&Default::default());
    let x = Tensor::<B, 2>::ones([2, W], &Default::default());
    let out = model.forward(x, true, 1, true);
    assert_eq!(out.dims(), [2, W]);
}
