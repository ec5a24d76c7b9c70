//! Shared support for the end-to-end tests: a conditional model written with
//! the real `#[ddp_model]` macro (encoder, dynamically indexed experts, an
//! optional head, nested `#[ddp_model]` children with conditional parts of
//! their own, a `match` on a route), deterministic parameters and batches from
//! a seeded SplitMix generator, per-path gradient extraction, and a harness
//! that runs ranks on threads under a hard timeout so a hang fails the test.

#![allow(dead_code)] // each test binary uses a different part

#[path = "../../runtime/tests/common/shared.rs"]
mod shared;
#[allow(unused_imports)] // each test binary uses a different part
pub use shared::{Rng, all_ok, run_ranks};

use std::collections::{BTreeMap, BTreeSet};

use burn::backend::{Autodiff, Flex};
use burn::module::ParamId;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use maskddp::{ParamLayout, ParamSlot, Usage, UsagePlan, ddp_model};

pub type Ad = Autodiff<Flex>;

// ---------------------------------------------------------------------------
// The model, built with the real macro

pub const D_IN: usize = 5;
pub const HIDDEN: usize = 6;

/// One expert: a plain burn module (not a `#[ddp_model]`), two layers.
#[derive(Module, Debug)]
pub struct Expert<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

impl<B: Backend> Expert<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(HIDDEN, HIDDEN).init(device),
            fc2: LinearConfig::new(HIDDEN, HIDDEN).init(device),
        }
    }

    fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(self.fc1.forward(h).tanh())
    }
}

/// A nested `#[ddp_model]` with a conditional part of its own: `inner` is
/// always used by its forward, `gate` only when `gated`.
#[ddp_model]
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    inner: Linear<B>,
    gate: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Block<B> {
    pub fn new(device: &B::Device) -> Self {
        Self {
            inner: LinearConfig::new(HIDDEN, HIDDEN).init(device),
            gate: LinearConfig::new(HIDDEN, HIDDEN).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>, gated: bool) -> Tensor<B, 2> {
        let y = self.inner.forward(x).tanh();
        if gated {
            let gate = burn::tensor::activation::sigmoid(self.gate.forward(y.clone()));
            y * gate
        } else {
            y
        }
    }
}

/// Where a batch goes after the shared trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// No expert: the trunk's output passes through.
    Direct,
    /// One expert, by index.
    One(usize),
    /// Two experts (possibly the same one twice), summed.
    Two(usize, usize),
    /// `experts.get(i)`: the expert if it exists, else pass-through.
    Get(usize),
    /// The auxiliary nested block, with or without its gate.
    Aux { gated: bool },
}

/// Which branches one forward takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Whether the always-used nested block runs its gate.
    pub gated: bool,
    pub route: Route,
    /// Whether the optional head runs (if the model has one).
    pub head: bool,
}

/// encoder (always) → trunk (nested, always, with a conditional gate) →
/// `match` on the route (experts by dynamic index or `get`, or a nested block
/// used conditionally) → optional head under `if`.
#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    encoder: Linear<B>,
    trunk: Block<B>,
    experts: Vec<Expert<B>>,
    aux: Block<B>,
    head: Option<Linear<B>>,
    /// Not a parameter.
    scale: f64,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn new(experts: usize, with_head: bool, device: &B::Device) -> Self {
        Self {
            encoder: LinearConfig::new(D_IN, HIDDEN).init(device),
            trunk: Block::new(device),
            experts: (0..experts).map(|_| Expert::new(device)).collect(),
            aux: Block::new(device),
            head: with_head.then(|| LinearConfig::new(HIDDEN, HIDDEN).init(device)),
            scale: 0.5,
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>, choice: Choice) -> Tensor<B, 2> {
        let h = self.encoder.forward(x).tanh();
        let h = self.trunk.forward(h, choice.gated);
        let y = match choice.route {
            Route::Direct => h.clone(),
            Route::One(i) => self.experts[i].forward(h.clone()),
            Route::Two(i, j) => {
                self.experts[i].forward(h.clone()) + self.experts[j].forward(h.clone())
            }
            Route::Get(i) => match self.experts.get(i) {
                Some(expert) => expert.forward(h.clone()),
                None => h.clone(),
            },
            Route::Aux { gated } => self.aux.forward(h.clone(), gated),
        };
        if choice.head
            && let Some(head) = &self.head
        {
            y + head.forward(h).mul_scalar(self.scale)
        } else {
            y
        }
    }
}

/// The parameter paths a forward with `choice` uses, derived from the choice
/// alone (independently of the usage recorder).
pub fn expected_usage(choice: Choice, experts: usize, has_head: bool) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut add = |module: &str| {
        used.insert(format!("{module}.weight"));
        used.insert(format!("{module}.bias"));
    };
    add("encoder");
    add("trunk.inner");
    if choice.gated {
        add("trunk.gate");
    }
    let mut expert = |i: usize| {
        if i < experts {
            add(&format!("experts.{i}.fc1"));
            add(&format!("experts.{i}.fc2"));
        }
    };
    match choice.route {
        Route::Direct => {}
        Route::One(i) | Route::Get(i) => expert(i),
        Route::Two(i, j) => {
            expert(i);
            expert(j);
        }
        Route::Aux { gated } => {
            add("aux.inner");
            if gated {
                add("aux.gate");
            }
        }
    }
    if choice.head && has_head {
        add("head");
    }
    used
}

/// A random choice; `Get` may point past the last expert.
pub fn random_choice(rng: &mut Rng, experts: usize) -> Choice {
    let route = match rng.below(5) {
        0 => Route::Direct,
        1 => Route::One(rng.below(experts)),
        2 => Route::Two(rng.below(experts), rng.below(experts)),
        3 => Route::Get(rng.below(experts + 2)),
        _ => Route::Aux {
            gated: rng.chance(0.5),
        },
    };
    Choice {
        gated: rng.chance(0.5),
        route,
        head: rng.chance(0.5),
    }
}

/// The loss every test uses: mean squared output against a target.
pub fn loss<B: Backend>(out: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    let diff = out - target;
    (diff.clone() * diff).mean()
}

// ---------------------------------------------------------------------------
// Deterministic parameters and data

/// Overwrites every float parameter with values drawn from `seed` (visit
/// order), keeping ids and `require_grad`. Independent of burn's global RNG,
/// so the test thread can rebuild exactly what a rank starts from.
pub fn with_values<B: Backend, M: Module<B>>(model: M, seed: u64) -> M {
    struct Fill(Rng);
    impl<B: Backend> ModuleMapper<B> for Fill {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let shape = param.lazy_shape();
            let values: Vec<f32> = (0..shape.num_elements())
                .map(|_| self.0.signed() * 0.6)
                .collect();
            param.map(|tensor| {
                let device = tensor.device();
                let require_grad = tensor.is_require_grad();
                let fresh = Tensor::from_data(TensorData::new(values, shape), &device);
                if require_grad {
                    fresh.require_grad()
                } else {
                    fresh
                }
            })
        }
    }
    model.map(&mut Fill(Rng::new(seed)))
}

/// A deterministic `[rows, cols]` tensor from `seed`.
pub fn matrix<B: Backend>(seed: u64, rows: usize, cols: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut rng = Rng::new(seed);
    let values: Vec<f32> = (0..rows * cols).map(|_| rng.signed()).collect();
    Tensor::from_data(TensorData::new(values, [rows, cols]), device)
}

/// Input and target of the batch identified by `seed`.
pub fn batch<B: Backend>(
    seed: u64,
    rows: usize,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    (
        matrix(seed.wrapping_mul(2), rows, D_IN, device),
        matrix(seed.wrapping_mul(2) + 1, rows, HIDDEN, device),
    )
}

// ---------------------------------------------------------------------------
// Reading gradients and parameters by path

/// The gradients present in `grads` for the parameters of `model`, by slot
/// path, as f32 values.
pub fn grads_by_path<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &GradientsParams,
) -> BTreeMap<String, Vec<f32>> {
    let layout = ParamLayout::of::<B, M>(model);
    layout
        .gradients_by_path::<B>(grads)
        .map(|(path, grad)| (path.to_owned(), grad.to_vec::<f32>().unwrap()))
        .collect()
}

/// Every float parameter's value bits, by slot path.
pub fn param_bits<B: Backend, M: Module<B>>(model: &M) -> BTreeMap<String, Vec<u32>> {
    struct Collect(Vec<Vec<u32>>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let values = param.val().into_data().to_vec::<f32>().unwrap();
            self.0.push(values.iter().map(|x| x.to_bits()).collect());
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    let layout = ParamLayout::of::<B, M>(model);
    assert_eq!(layout.len(), collect.0.len());
    layout
        .slots()
        .iter()
        .map(|slot| slot.path.clone())
        .zip(collect.0)
        .collect()
}

/// Element-wise relative comparison: `|a - b| <= rel * max(|a|, |b|, floor)`.
/// `floor` covers summation-order rounding where terms cancel.
pub fn assert_close(context: &str, actual: &[f32], expected: &[f64], floor: &[f64], rel: f64) {
    assert_eq!(actual.len(), expected.len(), "{context}: length");
    for (i, ((&a, &e), &f)) in actual.iter().zip(expected).zip(floor).enumerate() {
        let a64 = f64::from(a);
        let magnitude = a64.abs().max(e.abs()).max(f).max(1e-6);
        assert!(
            (a64 - e).abs() <= rel * magnitude,
            "{context}: element {i}: got {a}, reference {e} (|diff| {:e} > {rel:e} × {magnitude:e})",
            (a64 - e).abs()
        );
    }
}

/// The single-process reference of a reduction: for every parameter some
/// rank has a gradient for, the f64 sum over those ranks divided by the world
/// size or by the number of contributors, with the matching tolerance floor
/// (the summands' absolute sum over the same divisor: f32 sums in another
/// order err relative to it when terms cancel).
pub fn reference_average(
    per_rank: &[BTreeMap<String, Vec<f32>>],
    averaging: maskddp::Averaging,
) -> BTreeMap<String, (Vec<f64>, Vec<f64>)> {
    let paths: BTreeSet<&String> = per_rank.iter().flat_map(|g| g.keys()).collect();
    paths
        .into_iter()
        .map(|path| {
            let grads: Vec<&Vec<f32>> = per_rank.iter().filter_map(|g| g.get(path)).collect();
            let len = grads[0].len();
            let mut sum = vec![0.0f64; len];
            let mut abs_sum = vec![0.0f64; len];
            for grad in &grads {
                assert_eq!(grad.len(), len, "{path}");
                for (i, &g) in grad.iter().enumerate() {
                    sum[i] += f64::from(g);
                    abs_sum[i] += f64::from(g).abs();
                }
            }
            let divisor = match averaging {
                maskddp::Averaging::WorldSize => per_rank.len(),
                maskddp::Averaging::Contributors => grads.len(),
            } as f64;
            (
                path.clone(),
                (
                    sum.iter().map(|s| s / divisor).collect(),
                    abs_sum.iter().map(|a| a / divisor).collect(),
                ),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The plan against one run's real gradients

/// How one run's real gradients compare with the plan and the run's records,
/// for every parameter slot (so for every class of parameter).
#[derive(Debug, Default)]
pub struct PlanCheck {
    /// A real gradient, neither planned always nor recorded: the reducer's
    /// "the plan missed a use".
    pub missed: Vec<String>,
    /// Planned always, but no gradient.
    pub false_always: Vec<String>,
    /// Recorded as conditional, but no gradient (costs bytes only).
    pub over_recorded: Vec<String>,
    /// Parameters not planned always that got a gradient: the run was not
    /// vacuous.
    pub conditional_with_grad: usize,
}

/// Compares `plan` and the `recorded` ids of one run with the parameters
/// that really got a gradient (`has_grad`).
pub fn check_plan(
    plan: &UsagePlan,
    recorded: &[ParamId],
    has_grad: impl Fn(&ParamSlot) -> bool,
) -> PlanCheck {
    let recorded: BTreeSet<ParamId> = recorded.iter().copied().collect();
    let mut check = PlanCheck::default();
    for (slot, usage) in plan.layout().slots().iter().zip(plan.usage()) {
        let has = has_grad(slot);
        let always = *usage == Usage::Always;
        let rec = recorded.contains(&slot.id);
        if always && !has {
            check.false_always.push(slot.path.clone());
        }
        if has && !always {
            check.conditional_with_grad += 1;
            if !rec {
                check.missed.push(slot.path.clone());
            }
        }
        if rec && !has && matches!(usage, Usage::Conditional { .. }) {
            check.over_recorded.push(slot.path.clone());
        }
    }
    check
}

impl PlanCheck {
    /// Fails naming `what` unless both directions hold; with `exact`, also
    /// unless every recorded conditional parameter got a gradient.
    pub fn assert_holds(&self, what: &str, exact: bool, plan: &UsagePlan) {
        let table = plan.table();
        let missed = &self.missed;
        assert!(
            missed.is_empty(),
            "{what}: gradient but no recorded use: {missed:?}\n{table}"
        );
        let false_always = &self.false_always;
        assert!(
            false_always.is_empty(),
            "{what}: planned always but no gradient: {false_always:?}\n{table}"
        );
        let over_recorded = &self.over_recorded;
        assert!(
            !exact || over_recorded.is_empty(),
            "{what}: recorded but no gradient: {over_recorded:?}\n{table}"
        );
    }
}
