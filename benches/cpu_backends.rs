//! The main job's local training step on each CPU backend of burn 0.21 that
//! builds offline: forward, loss, backward, `GradientsParams::from_grads` and
//! the Adam step of `examples/moe_training`'s model at its default shape
//! (input 16, hidden 128, 8 experts, output 4, batch 64), on one thread, with
//! no reducer. Results and their reading are in `BENCHMARKS.md`, "CPU backend
//! for the main job".
//!
//! ```text
//! cargo bench --bench cpu_backends --features bench-ndarray,bench-candle
//! cargo bench --bench cpu_backends --features bench-ndarray,bench-candle,bench-simd
//! cargo bench --bench cpu_backends --features bench-ndarray -- --rounds 5 --steps 50
//! ```
//!
//! `Flex` (with its SIMD kernels, as the tests and examples build it) is
//! compared with `NdArray` as burn builds it without default features (no
//! SIMD, one thread), the backend the main job used before, and `Candle`.
//! `bench-simd` turns on burn's `simd` feature: `NdArray` gets its SIMD
//! kernels too (compare two runs through their `Flex` rows, which it does not
//! change). burn-cpu, the
//! MLIR backend, is not here: its build downloads LLVM from GitHub.
//!
//! The candidates take turns: each round runs a block of steps on each, in an
//! order that reverses every round, so load on the machine hits all of them
//! alike. Each block gives its median step time; a backend's ratio is taken
//! against `NdArray`'s block in the same round, and the table shows the median
//! and the range over the rounds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex, NdArray};
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

#[path = "../examples/moe_training/data.rs"]
mod data;
#[path = "../examples/moe_training/model.rs"]
mod model;

use data::{Batch, Teachers};
use model::MoeNet;

// The main job's defaults (`examples/moe_training/main.rs`).
const INPUT: usize = 16;
const OUTPUT: usize = 4;
const HIDDEN: usize = 128;
const EXPERTS: usize = 8;
const BATCH_SIZE: usize = 64;
const LR: f64 = 3e-3;
const SEED: u64 = 7;
/// Distinct batches (rank 0's first steps), cycled: routes and auxiliary
/// labels vary as in the main job, and making batches is not timed.
const BATCHES: usize = 64;

/// One backend's training state.
struct Trainer<B: AutodiffBackend, O> {
    name: &'static str,
    model: Option<MoeNet<B>>,
    optimizer: O,
    batches: Vec<Batch<B>>,
    device: B::Device,
    next: usize,
}

/// A backend under test, behind a trait object so that all run in one loop.
trait Candidate {
    fn name(&self) -> &'static str;
    /// Runs `steps` steps; returns the time of each.
    fn run(&mut self, steps: usize) -> Vec<Duration>;
}

fn trainer<B: AutodiffBackend>(name: &'static str) -> Box<dyn Candidate> {
    let device = B::Device::default();
    B::seed(&device, SEED);
    let model = MoeNet::<B>::new(INPUT, HIDDEN, OUTPUT, EXPERTS, &device);
    let teachers = Teachers::new(SEED, EXPERTS, INPUT, OUTPUT);
    let batches = (0..BATCHES)
        .map(|step| teachers.batch::<B>(SEED, 0, step, BATCH_SIZE, &device))
        .collect();
    Box::new(Trainer {
        name,
        model: Some(model),
        optimizer: AdamConfig::new().init::<B, MoeNet<B>>(),
        batches,
        device,
        next: 0,
    })
}

impl<B: AutodiffBackend, O: Optimizer<MoeNet<B>, B>> Trainer<B, O> {
    /// One step of `train_rank` in the main job, less the reducer.
    fn step(&mut self) {
        let batch = &self.batches[self.next % BATCHES];
        self.next += 1;
        let model = self.model.take().expect("the model is put back every step");
        let output = model.forward(batch.x.clone(), batch.expert, batch.aux_target.is_some());
        let mse = MseLoss::new();
        let mut loss = mse.forward(output.prediction, batch.target.clone(), Reduction::Mean);
        if let (Some(aux), Some(aux_target)) = (output.aux_prediction, batch.aux_target.clone()) {
            loss = loss
                + mse
                    .forward(aux, aux_target, Reduction::Mean)
                    .mul_scalar(0.1);
        }
        let loss_value: f32 = loss.clone().into_scalar().elem();
        assert!(loss_value.is_finite(), "{}: loss {loss_value}", self.name);
        black_box(loss_value);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optimizer.step(LR, model, grads));
        B::sync(&self.device).expect("the device syncs");
    }
}

impl<B: AutodiffBackend, O: Optimizer<MoeNet<B>, B>> Candidate for Trainer<B, O> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, steps: usize) -> Vec<Duration> {
        (0..steps)
            .map(|_| {
                let start = Instant::now();
                self.step();
                start.elapsed()
            })
            .collect()
    }
}

fn candidates() -> Vec<Box<dyn Candidate>> {
    let ndarray = if cfg!(feature = "bench-simd") {
        "NdArray (simd)"
    } else {
        "NdArray"
    };
    let mut all = vec![
        trainer::<Autodiff<NdArray>>(ndarray),
        trainer::<Autodiff<Flex>>("Flex (simd)"),
    ];
    // Deprecated in burn 0.21 (burn-flex or burn-cubecl replace it).
    #[cfg(feature = "bench-candle")]
    #[allow(deprecated)]
    all.push(trainer::<Autodiff<burn::backend::Candle>>("Candle"));
    all
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `--name value` from the command line (cargo bench also passes `--bench`).
fn flag(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds = flag(&args, "--rounds", 11).max(1);
    let steps = flag(&args, "--steps", 100).max(1);
    let warmup = flag(&args, "--warmup", 50);

    let mut candidates = candidates();
    println!(
        "local step of the main job (hidden {HIDDEN}, {EXPERTS} experts, batch {BATCH_SIZE}), \
         {rounds} rounds of {steps} steps per backend after {warmup} warm-up steps"
    );
    println!("load average at start: {}", load_average());
    for candidate in &mut candidates {
        candidate.run(warmup);
    }

    // blocks[c][r]: median ms/step of candidate c in round r.
    let mut blocks = vec![Vec::with_capacity(rounds); candidates.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for c in order {
            let mut times: Vec<f64> = candidates[c]
                .run(steps)
                .iter()
                .map(|t| t.as_secs_f64() * 1e3)
                .collect();
            blocks[c].push(median(&mut times));
        }
    }
    println!("load average at end:   {}", load_average());

    println!(
        "\n{:<16} {:>10} {:>17} {:>12} {:>15}",
        "backend", "ms/step", "range", "vs NdArray", "ratio range"
    );
    for (c, candidate) in candidates.iter().enumerate() {
        let mut ms = blocks[c].clone();
        let mut ratios: Vec<f64> = blocks[c]
            .iter()
            .zip(&blocks[0])
            .map(|(b, base)| b / base)
            .collect();
        let (ms_median, ratio_median) = (median(&mut ms), median(&mut ratios));
        println!(
            "{:<16} {:>10.3} {:>7.3} – {:<7.3} {:>12.3} {:>6.3} – {:<6.3}",
            candidate.name(),
            ms_median,
            ms[0],
            ms[ms.len() - 1],
            ratio_median,
            ratios[0],
            ratios[ratios.len() - 1],
        );
    }
}
