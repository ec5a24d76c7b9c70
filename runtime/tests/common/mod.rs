//! Shared test support: a small conditional model with a hand-written
//! `DdpModel` impl, a seeded RNG, per-slot gradient extraction, and a harness
//! that runs ranks in threads under a hard timeout.

#![allow(dead_code)] // each test binary uses a different part

mod shared;
#[allow(unused_imports)] // each test binary uses a different part
pub use shared::{RankResult, Rng, all_ok, cut_into, run_ranks};

use burn::backend::{Autodiff, Flex};
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use maskddp_runtime::__private::record_module;
use maskddp_runtime::{Collective, DdpModel, PlanBuilder, ThreadCollective};

pub type Ad = Autodiff<Flex>;
pub type Inner = Flex;

/// Which conditional parts one forward uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Experts applied (summed) after the router.
    pub experts: Vec<usize>,
    /// Whether the head runs.
    pub head: bool,
    /// Bug injection: use the head without recording it.
    pub forget_head_record: bool,
    /// Bug injection: use the frozen layer.
    pub use_frozen: bool,
}

/// router (always) → sum of chosen experts (conditional) → head (conditional);
/// `frozen` is declared frozen and never used by a correct forward.
#[derive(Module, Debug)]
pub struct Moe<B: Backend> {
    pub router: Linear<B>,
    pub experts: Vec<Linear<B>>,
    pub head: Linear<B>,
    pub frozen: Linear<B>,
}

pub const D_IN: usize = 4;
pub const D_HIDDEN: usize = 6;

impl<B: Backend> Moe<B> {
    pub fn new(experts: usize, device: &B::Device) -> Self {
        Self::with_hidden(experts, D_HIDDEN, device)
    }

    pub fn with_hidden(experts: usize, hidden: usize, device: &B::Device) -> Self {
        Self {
            router: LinearConfig::new(D_IN, hidden).init(device),
            experts: (0..experts)
                .map(|_| LinearConfig::new(hidden, hidden).init(device))
                .collect(),
            head: LinearConfig::new(hidden, hidden).init(device),
            frozen: LinearConfig::new(hidden, hidden).init(device),
        }
    }

    /// Like [`Moe::new`], with initial values drawn from `seed` instead of the
    /// backend's unseeded generator, so a run that judges learning is
    /// reproducible.
    pub fn seeded(experts: usize, seed: u64, device: &B::Device) -> Self {
        let mut rng = Rng::new(seed);
        let mut linear = |d_in| seeded_linear(&mut rng, d_in, D_HIDDEN, device);
        Self {
            router: linear(D_IN),
            experts: (0..experts).map(|_| linear(D_HIDDEN)).collect(),
            head: linear(D_HIDDEN),
            frozen: linear(D_HIDDEN),
        }
    }

    /// What `#[ddp_model]` would instrument: each conditional use records
    /// the module it touches.
    pub fn forward(&self, x: Tensor<B, 2>, route: &Route) -> Tensor<B, 2> {
        let hidden = self.router.forward(x).tanh();
        let mut y = hidden.clone();
        for &expert in &route.experts {
            record_module::<B, _>(&self.experts[expert]);
            y = y + self.experts[expert].forward(hidden.clone()).tanh();
        }
        if route.head {
            if !route.forget_head_record {
                record_module::<B, _>(&self.head);
            }
            y = self.head.forward(y);
        }
        if route.use_frozen {
            y = self.frozen.forward(y);
        }
        y
    }
}

/// A linear layer drawn as burn draws one, `U(-k, k)` with `k = 1/sqrt(d_in)`,
/// from `rng`.
fn seeded_linear<B: Backend>(
    rng: &mut Rng,
    d_in: usize,
    d_out: usize,
    device: &B::Device,
) -> Linear<B> {
    let k = 1.0 / (d_in as f32).sqrt();
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.unit() * 2.0 - 1.0) * k).collect() };
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(draw(d_in * d_out), [d_in, d_out]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(draw(d_out), [d_out]),
            device,
        ))),
    }
}

impl<B: Backend> DdpModel<B> for Moe<B> {
    fn build_plan(&self, plan: &mut PlanBuilder) {
        plan.always::<B, _>(&self.router);
        for expert in &self.experts {
            plan.conditional::<B, _>(expert, "self.experts[expert]");
        }
        plan.conditional::<B, _>(&self.head, "if route.head");
        plan.frozen::<B, _>(&self.frozen);
    }

    fn record_always_used(&self) {
        record_module::<B, _>(&self.router);
    }
}

/// Slot indices of each part of a [`Moe`] (Linear: weight then bias).
pub fn router_slots() -> [usize; 2] {
    [0, 1]
}
pub fn expert_slots(expert: usize) -> [usize; 2] {
    [2 + 2 * expert, 3 + 2 * expert]
}
pub fn head_slots(experts: usize) -> [usize; 2] {
    [2 + 2 * experts, 3 + 2 * experts]
}
pub fn frozen_slots(experts: usize) -> [usize; 2] {
    [4 + 2 * experts, 5 + 2 * experts]
}

/// The slots a route uses (always ∪ recorded), as a per-slot flag.
pub fn used_slots(experts: usize, route: &Route) -> Vec<bool> {
    let mut used = vec![false; 6 + 2 * experts];
    for slot in router_slots() {
        used[slot] = true;
    }
    for &expert in &route.experts {
        for slot in expert_slots(expert) {
            used[slot] = true;
        }
    }
    if route.head {
        for slot in head_slots(experts) {
            used[slot] = true;
        }
    }
    used
}

/// Deterministic input for a rank and step.
pub fn input<B: Backend>(seed: u64, rows: usize, device: &B::Device) -> Tensor<B, 2> {
    let mut rng = Rng::new(seed);
    let values: Vec<f32> = (0..rows * D_IN).map(|_| rng.unit() * 2.0 - 1.0).collect();
    Tensor::from_data(TensorData::new(values, [rows, D_IN]), device)
}

/// Each slot's gradient in `grads` (visit order), as f32 values.
pub fn grads_by_slot<B: AutodiffBackend, M: Module<B>>(
    model: &M,
    grads: &GradientsParams,
) -> Vec<Option<Vec<f32>>> {
    struct Collect<'a, B: AutodiffBackend> {
        grads: &'a GradientsParams,
        out: Vec<Option<Vec<f32>>>,
        _b: std::marker::PhantomData<B>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = self.grads.get::<B::InnerBackend, D>(param.id);
            self.out
                .push(grad.map(|g| g.into_data().to_vec::<f32>().unwrap()));
        }
    }
    let mut collect = Collect::<B> {
        grads,
        out: Vec::new(),
        _b: std::marker::PhantomData,
    };
    model.visit(&mut collect);
    collect.out
}

/// Every float parameter's values (visit order), one vector per slot.
pub fn param_values<B: Backend, M: Module<B>>(model: &M) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0
                .push(param.val().into_data().to_vec::<f32>().unwrap());
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

/// Bit patterns of a slot list, for exact comparisons.
pub fn bits(values: &[Vec<f32>]) -> Vec<Vec<u32>> {
    values
        .iter()
        .map(|slot| slot.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// The [`Collective`] methods every wrapper of a thread-group rank (field
/// `0`) forwards unchanged; a wrapper adds the methods it changes.
#[macro_export]
macro_rules! forward_to_thread_group {
    () => {
        fn rank(&self) -> usize {
            self.0.rank()
        }
        fn world_size(&self) -> usize {
            self.0.world_size()
        }
        fn all_reduce_sum(
            &mut self,
            tag: maskddp_runtime::Tag,
            data: maskddp_runtime::WireBuf<'_>,
        ) -> Result<(), maskddp_runtime::CollectiveError> {
            self.0.all_reduce_sum(tag, data)
        }
        fn all_reduce_counts(
            &mut self,
            tag: maskddp_runtime::Tag,
            counts: &mut [u32],
        ) -> Result<(), maskddp_runtime::CollectiveError> {
            self.0.all_reduce_counts(tag, counts)
        }
        fn broadcast(
            &mut self,
            tag: maskddp_runtime::Tag,
            root: usize,
            data: &mut [f32],
        ) -> Result<(), maskddp_runtime::CollectiveError> {
            self.0.broadcast(tag, root, data)
        }
        fn all_gather_bytes(
            &mut self,
            tag: maskddp_runtime::Tag,
            local: &[u8],
        ) -> Result<Vec<Vec<u8>>, maskddp_runtime::CollectiveError> {
            self.0.all_gather_bytes(tag, local)
        }
        fn barrier(
            &mut self,
            tag: maskddp_runtime::Tag,
        ) -> Result<(), maskddp_runtime::CollectiveError> {
            self.0.barrier(tag)
        }
        fn abort(&mut self, tag: maskddp_runtime::Tag, reason: &str) {
            self.0.abort(tag, reason)
        }
    };
}

/// A thread-group rank that sums only contiguous buffers, as MPI does
/// (`sums_scattered` is false): the reducer packs every bucket for it, which
/// puts the packed host path and its pipeline under test with the f32 wire
/// in-process. Every call goes to the thread group.
pub struct Contiguous(pub ThreadCollective);

impl Collective for Contiguous {
    forward_to_thread_group!();
}
