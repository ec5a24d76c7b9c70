//! A mixture of experts trained by burn-train's `Learner`, data-parallel on
//! CPU threads through `maskddp::train::DdpStrategy`:
//!
//! ```text
//! cargo run --release --features train --example learner_moe -- --ranks 3 --epochs 2
//! ```
//!
//! The data are synthetic: each batch belongs to one of the experts' domains
//! (a fixed linear map from input to target) and is routed to that expert;
//! one batch in three also trains an auxiliary head. Printed: burn-train's
//! CLI progress, its summary table (loss, and the reducer's bytes sent and
//! parameters skipped per epoch), the reducer's totals, and a checksum per
//! rank.

use std::process::ExitCode;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::nn::loss::{MseLoss, Reduction};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::AdamConfig;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::train::metric::LossMetric;
use burn::train::renderer::CliMetricsRenderer;
use burn::train::{
    InferenceStep, Learner, RegressionOutput, SupervisedTraining, TrainOutput, TrainStep,
    TrainingStrategy,
};
use clap::Parser;
use maskddp::prelude::*;
use maskddp::train::{DdpStrategy, ReducerMetric};

const INPUT: usize = 16;
const HIDDEN: usize = 64;
const OUTPUT: usize = 4;
const BATCH: usize = 16;

/// Train a conditional model with burn-train's Learner on thread ranks.
#[derive(Parser, Debug)]
struct Args {
    /// Number of data-parallel ranks (threads).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    ranks: u16,
    /// Epochs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    epochs: u16,
    /// Number of experts (and data domains).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    experts: u16,
    /// Training items (the ranks split them).
    #[arg(long, default_value_t = 4800)]
    items: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    accumulation: u16,
    /// Directory for burn-train's logs and checkpoints.
    #[arg(long, default_value = "target/learner_moe")]
    artifacts: String,
}

#[ddp_model]
#[derive(Module, Debug)]
pub struct MoeNet<B: Backend> {
    encoder: Linear<B>,
    experts: Vec<Linear<B>>,
    aux_head: Linear<B>,
    activation: Relu,
}

#[ddp_model]
impl<B: Backend> MoeNet<B> {
    pub fn new(experts: usize, device: &B::Device) -> Self {
        Self {
            encoder: LinearConfig::new(INPUT, HIDDEN).init(device),
            experts: (0..experts)
                .map(|_| LinearConfig::new(HIDDEN, OUTPUT).init(device))
                .collect(),
            aux_head: LinearConfig::new(HIDDEN, 1).init(device),
            activation: Relu::new(),
        }
    }

    pub fn forward(&self, batch: MoeBatch<B>) -> RegressionOutput<B> {
        let h = self.activation.forward(self.encoder.forward(batch.x));
        let output = self.experts[batch.domain].forward(h.clone());
        let mut loss =
            MseLoss::new().forward(output.clone(), batch.target.clone(), Reduction::Mean);
        if let Some(aux_target) = batch.aux_target {
            let aux = self.aux_head.forward(h);
            loss = loss + MseLoss::new().forward(aux, aux_target, Reduction::Mean);
        }
        RegressionOutput::new(loss, output, batch.target)
    }
}

impl<B: AutodiffBackend> TrainStep for MoeNet<B> {
    type Input = MoeBatch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: MoeBatch<B>) -> TrainOutput<RegressionOutput<B>> {
        let output = self.forward(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl<B: Backend> InferenceStep for MoeNet<B> {
    type Input = MoeBatch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: MoeBatch<B>) -> RegressionOutput<B> {
        self.forward(batch)
    }
}

/// One batch: every item from one domain, routed to its expert.
#[derive(Debug, Clone)]
pub struct MoeBatch<B: Backend> {
    x: Tensor<B, 2>,
    target: Tensor<B, 2>,
    aux_target: Option<Tensor<B, 2>>,
    domain: usize,
}

/// Builds batches from item numbers; item `i` is in domain
/// `(i / BATCH) % experts`, so the batches of an unshuffled loader are
/// single-domain.
#[derive(Debug, Clone)]
struct Domains {
    experts: usize,
}

impl<B: Backend> Batcher<B, usize, MoeBatch<B>> for Domains {
    fn batch(&self, items: Vec<usize>, device: &B::Device) -> MoeBatch<B> {
        let domain = (items[0] / BATCH) % self.experts;
        let rows = items.len();
        let x: Vec<f32> = items.iter().flat_map(|&item| features(item)).collect();
        let x = Tensor::<B, 2>::from_data(TensorData::new(x, [rows, INPUT]), device);
        let teacher =
            Tensor::<B, 2>::from_data(TensorData::new(teacher(domain), [INPUT, OUTPUT]), device);
        let target = x.clone().matmul(teacher);
        let aux_target = (items[0] / BATCH)
            .is_multiple_of(3)
            .then(|| target.clone().powi_scalar(2).sum_dim(1));
        MoeBatch {
            x,
            target,
            aux_target,
            domain,
        }
    }
}

/// Deterministic pseudo-random values in [-1, 1) for `seed`.
fn uniform(seed: u64, len: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn features(item: usize) -> Vec<f32> {
    uniform(item as u64, INPUT)
}

fn teacher(domain: usize) -> Vec<f32> {
    uniform(1_000_000 + domain as u64, INPUT * OUTPUT)
        .into_iter()
        .map(|w| w * 0.5)
        .collect()
}

type Train = Autodiff<Flex>;

fn main() -> ExitCode {
    let args = Args::parse();
    let experts = usize::from(args.experts);
    let ranks = usize::from(args.ranks);
    let device = Default::default();

    let strategy = DdpStrategy::new(ThreadGroup::new(ranks), ReducerConfig::default());
    let stats = strategy.stats();
    let batcher = Domains { experts };
    let train = DataLoaderBuilder::<Train, _, _>::new(batcher.clone())
        .batch_size(BATCH)
        .build(InMemDataset::new((0..args.items).collect()));
    let valid = DataLoaderBuilder::<Flex, _, _>::new(batcher)
        .batch_size(BATCH)
        .build(InMemDataset::new(
            (args.items..args.items + args.items / 5).collect(),
        ));
    // Steps per epoch per rank, for the schedule (it steps once per step).
    let steps = (args.items / ranks)
        .div_ceil(BATCH)
        .div_ceil(usize::from(args.accumulation));
    let scheduler = CosineAnnealingLrSchedulerConfig::new(1e-2, steps * usize::from(args.epochs))
        .init()
        .expect("a valid schedule");
    let model = MoeNet::<Train>::new(experts, &device);
    println!("{}", model.usage_plan().table());

    let training = SupervisedTraining::new(&args.artifacts, train, valid)
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)))
        .renderer(CliMetricsRenderer::new())
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(ReducerMetric::bytes_sent(&stats))
        .metric_train_numeric(ReducerMetric::params_skipped(&stats))
        .grads_accumulation(usize::from(args.accumulation))
        .num_epochs(usize::from(args.epochs))
        .summary();
    training.launch(Learner::new(model, AdamConfig::new().init(), scheduler));

    println!("reducer (rank 0):\n{}", stats.summary());
    let checksums = stats.replica_checksums();
    for (rank, checksum) in &checksums {
        println!("  rank {rank}: parameters checksum {checksum:016x}");
    }
    if checksums.iter().all(|(_, sum)| *sum == checksums[0].1) {
        println!(
            "all {} replicas hold bit-identical parameters",
            checksums.len()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("error: the replicas differ");
        ExitCode::FAILURE
    }
}
