//! The generated-program property test: `generated_programs/models.rs` holds
//! models whose `forward` bodies a grammar wrote at random (see
//! `generated_programs/generator.rs`). Each model runs on several random
//! routing inputs, and every run is held to autodiff's real gradients, for
//! every class of parameter (plain layers, raw `Param`s, `Vec` elements,
//! `Option` contents, nested `#[ddp_model]` children and their elements):
//!
//! - every parameter with a gradient was planned always or recorded;
//! - every parameter planned always got a gradient;
//! - every recorded conditional parameter got a gradient (no over-recording).
//!
//! Then three thread ranks, each with its own routing input, run the model
//! through the reducer: the parameters that get a reduced gradient are
//! exactly the union of the ranks' real gradients, the values equal a
//! single-process reference, and every rank holds the same bits.
//!
//! `generated_programs_source.rs` checks that the models are what the
//! generator writes, and regenerates them.

mod common;
#[rustfmt::skip]
#[path = "generated_programs/models.rs"]
mod models;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use burn::module::{AutodiffModule, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Device;
use common::{
    Ad, Rng, all_ok, assert_close, check_plan, grads_by_path, matrix, reference_average, run_ranks,
    with_values,
};
use maskddp::{
    Averaging, DdpModel, Reducer, ReducerConfig, ThreadGroup, ThreadGroupConfig, record_usage,
};
use models::{N, R, R_MAX};

/// Width of every layer.
const W: usize = 3;
/// Routing inputs each model runs on; the first `WORLD` also go through the
/// reducer, one per rank.
const RUNS: usize = 12;
const WORLD: usize = 3;
const LIMIT: Duration = Duration::from_secs(60);

/// Builds any field type the generated models declare.
pub trait Make {
    fn make(device: &Device<Ad>) -> Self;
}

impl Make for Linear<Ad> {
    fn make(device: &Device<Ad>) -> Self {
        LinearConfig::new(W, W).init(device)
    }
}

impl Make for Param<Tensor<Ad, 2>> {
    fn make(device: &Device<Ad>) -> Self {
        Param::from_tensor(Tensor::ones([W, W], device))
    }
}

impl<M: Make> Make for Option<M> {
    fn make(device: &Device<Ad>) -> Self {
        Some(M::make(device))
    }
}

impl<M: Make> Make for Vec<M> {
    fn make(device: &Device<Ad>) -> Self {
        (0..N).map(|_| M::make(device)).collect()
    }
}

/// The nested model: `stem` always, `head` when asked.
pub mod child {
    use super::*;

    #[maskddp::ddp_model]
    #[derive(Module, Debug)]
    pub struct Child<B: Backend> {
        stem: Linear<B>,
        head: Linear<B>,
    }

    #[maskddp::ddp_model]
    impl<B: Backend> Child<B> {
        pub fn forward(&self, x: Tensor<B, 2>, c: bool) -> Tensor<B, 2> {
            let y = self.stem.forward(x).tanh();
            if c { self.head.forward(y) } else { y }
        }
    }

    impl<B: Backend> Child<B> {
        /// Outside the `#[ddp_model]` block: not instrumented, uses `head` only.
        pub fn head_only(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
            self.head.forward(x)
        }
    }

    impl Make for Child<Ad> {
        fn make(device: &Device<Ad>) -> Self {
            Child {
                stem: Make::make(device),
                head: Make::make(device),
            }
        }
    }
}
use child::Child;

/// What the generated code implements for each model.
pub trait Generated: DdpModel<Ad> + AutodiffModule<Ad> + Send + 'static {
    fn build(device: &Device<Ad>) -> Self;
    fn run(&self, x: Tensor<Ad, 2>, r: &[usize]) -> Tensor<Ad, 2>;
}

/// Whether a model may record a parameter that gets no gradient: only one
/// that calls a nested model's method outside its `#[ddp_model]` block,
/// which records all of the nested model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    Exact,
    Loose,
}
pub use Recording::{Exact, Loose};

/// One run's input.
#[derive(Debug, Clone)]
struct Input {
    r: Vec<usize>,
    rows: usize,
    seed: u64,
}

impl Input {
    fn tensors(&self, device: &Device<Ad>) -> (Tensor<Ad, 2>, Tensor<Ad, 2>) {
        (
            matrix(self.seed * 2, self.rows, W, device),
            matrix(self.seed * 2 + 1, self.rows, W, device),
        )
    }
}

fn loss(out: Tensor<Ad, 2>, target: Tensor<Ad, 2>) -> Tensor<Ad, 1> {
    let diff = out - target;
    (diff.clone() * diff).mean()
}

fn init_seed(model: u64, rank: usize) -> u64 {
    model * 1_000 + 7 + rank as u64
}

/// Runs `input` in a usage scope and checks both directions against the real
/// gradients; returns the gradients by path and how many conditional
/// parameters got one.
fn check_run<M: Generated>(
    model: &M,
    what: &str,
    input: &Input,
    recording: Recording,
) -> (BTreeMap<String, Vec<f32>>, usize) {
    let (x, target) = input.tensors(&Default::default());
    let (out, record) = record_usage(|| model.run(x, &input.r));
    let grads = GradientsParams::from_grads(loss(out, target).backward(), model);
    let with_grad = grads_by_path(model, &grads);
    let plan = model.usage_plan();
    let check = check_plan(&plan, record.ids(), |slot| {
        with_grad.contains_key(&slot.path)
    });
    check.assert_holds(what, recording == Exact, &plan);
    (with_grad, check.conditional_with_grad)
}

/// The whole property for one generated model.
fn check_model<M: Generated>(name: &str, index: u64, recording: Recording) {
    let mut rng = Rng::new(0xfeed_0000 + index);
    let inputs: Vec<Input> = (0..RUNS)
        .map(|run| Input {
            r: (0..R).map(|_| rng.below(R_MAX)).collect(),
            rows: 1 + rng.below(3),
            seed: index * 100 + run as u64,
        })
        .collect();
    let device = Default::default();
    let model = with_values(M::build(&device), init_seed(index, 0));
    let plan = model.usage_plan();
    assert!(plan.undescribed().is_empty(), "{name}\n{}", plan.table());

    let mut per_run = Vec::new();
    let mut exercised = 0;
    for input in &inputs {
        let what = format!("{name} with r = {:?}", input.r);
        let (grads, conditional) = check_run(&model, &what, input, recording);
        per_run.push(grads);
        exercised += conditional;
    }
    assert!(
        !plan.has_conditional() || exercised > 0,
        "{name}: no run gave a conditional parameter a gradient\n{}",
        plan.table()
    );

    // Through the reducer: rank k runs input k from its own initial values.
    let averaging = if index.is_multiple_of(2) {
        Averaging::Contributors
    } else {
        Averaging::WorldSize
    };
    let cap = [8usize, 64, 400, 1 << 20][(index / 2 % 4) as usize];
    let config = ReducerConfig::default()
        .with_bucket_cap_bytes(cap)
        .with_averaging(averaging);
    let rank_inputs = Arc::new(inputs[..WORLD].to_vec());
    let group = ThreadGroup::with_config(
        WORLD,
        ThreadGroupConfig::default().with_timeout(Duration::from_secs(30)),
    );
    let reduced = all_ok(run_ranks(group, LIMIT, move |rank, collective| {
        let device = Default::default();
        let model = with_values(M::build(&device), init_seed(index, rank));
        let (model, mut reducer) = Reducer::new(model, collective, config).unwrap();
        let input = &rank_inputs[rank];
        let (x, target) = input.tensors(&device);
        let out = reducer.forward(|| model.run(x, &input.r));
        let grads = GradientsParams::from_grads(loss(out, target).backward(), &model);
        let grads = reducer.reduce(grads).unwrap_or_else(|e| panic!("{e}"));
        grads_by_path(&model, &grads)
    }));
    let reference = reference_average(&per_run[..WORLD], averaging);
    let union: Vec<&String> = reference.keys().collect();
    for (rank, grads) in reduced.iter().enumerate() {
        let what = format!("{name}: rank {rank} ({averaging:?}, cap {cap} B)");
        assert_eq!(
            grads.keys().collect::<Vec<_>>(),
            union,
            "{what}: parameters with a reduced gradient"
        );
        for (path, grad) in grads {
            let (expected, floor) = &reference[path];
            assert_close(&format!("{what}: {path}"), grad, expected, floor, 1e-5);
            let bits = |g: &[f32]| g.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(grad),
                bits(&reduced[0][path]),
                "{what}: {path} differs from rank 0"
            );
        }
    }
}
