//! The main job: train a mixture-of-experts model with an optional head,
//! data-parallel over CPU threads, and prove the replicas stay identical.
//!
//! ```text
//! cargo run --release --example moe_training -- --help
//! ```

mod data;
mod model;

use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use maskddp::{Averaging, DdpModel, Reducer, ReducerConfig, StatsSummary, ThreadGroup, WireFormat};

use data::Teachers;
use model::MoeNet;

type Train = Autodiff<NdArray>;

/// Train a conditional model data-parallel and check the replicas agree.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Number of data-parallel ranks.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    ranks: u16,
    /// Optimizer steps.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    /// Samples per rank per step.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Width of the encoder and of each expert.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    hidden: u32,
    /// Number of experts.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    experts: u32,
    /// Bucket cap in KiB.
    #[arg(long, default_value_t = 25 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    bucket_kib: u64,
    /// How reduced gradients are averaged.
    #[arg(long, value_enum, default_value_t = AveragingArg::WorldSize)]
    averaging: AveragingArg,
    /// Element type of gradients on the wire.
    #[arg(long, value_enum, default_value_t = WireArg::F32)]
    wire: WireArg,
    /// Which collective carries the reduction.
    #[arg(long, value_enum, default_value_t = CollectiveArg::Threads)]
    collective: CollectiveArg,
    /// Learning rate of Adam.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Seed of the data and of the initial parameters.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum AveragingArg {
    /// Sum over the ranks that used a parameter, divided by the world size.
    WorldSize,
    /// Sum divided by the number of ranks that used the parameter.
    Contributors,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum WireArg {
    F32,
    Bf16,
    F16,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum CollectiveArg {
    /// Ranks are threads of this process.
    Threads,
    /// Ranks are processes started by mpirun.
    Mpi,
    /// One process per GPU.
    Nccl,
}

const INPUT: usize = 16;
const OUTPUT: usize = 4;

/// What each rank hands back when it finishes.
struct RankResult {
    rank: usize,
    checksum: u64,
    /// This rank's loss at every step.
    losses: Vec<f32>,
    summary: StatsSummary,
    plan_table: String,
}

/// Progress of rank 0, for the bar.
struct Progress {
    step: usize,
    loss: f32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.collective {
        CollectiveArg::Threads => {}
        other => {
            eprintln!(
                "error: the `{other:?}` collective is not compiled into this build yet; \
                 use `--collective threads`"
            );
            return ExitCode::from(2);
        }
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn reducer_config(args: &Args) -> ReducerConfig {
    ReducerConfig {
        bucket_cap_bytes: (args.bucket_kib * 1024) as usize,
        averaging: match args.averaging {
            AveragingArg::WorldSize => Averaging::WorldSize,
            AveragingArg::Contributors => Averaging::Contributors,
        },
        wire: match args.wire {
            WireArg::F32 => WireFormat::F32,
            WireArg::Bf16 => WireFormat::Bf16,
            WireArg::F16 => WireFormat::F16,
        },
        ..ReducerConfig::default()
    }
}

/// Trains on every rank; returns whether all replicas ended bit-identical.
fn run(args: &Args) -> Result<bool, String> {
    let ranks = args.ranks as usize;
    let steps = args.steps as usize;
    let started = Instant::now();
    let (progress_tx, progress_rx) = mpsc::channel::<Progress>();
    let handles: Vec<_> = ThreadGroup::new(ranks)
        .into_iter()
        .zip(initial_models(args))
        .enumerate()
        .map(|(rank, (collective, model))| {
            let args = args.clone();
            let progress = (rank == 0).then(|| progress_tx.clone());
            thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn(move || train_rank(rank, model, collective, &args, progress))
                .map_err(|e| format!("cannot start rank {rank}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    drop(progress_tx);

    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise}]",
        )
        .expect("the progress template is valid"),
    );
    let mut smoothed = None::<f32>;
    for Progress { step, loss } in progress_rx {
        let value = smoothed.map_or(loss, |s| 0.9 * s + 0.1 * loss);
        smoothed = Some(value);
        let per_second = (step + 1) as f64 / started.elapsed().as_secs_f64();
        bar.set_position(step as u64 + 1);
        bar.set_message(format!("loss {value:.4}  {per_second:.1} steps/s"));
    }
    bar.finish();

    let mut results = Vec::with_capacity(ranks);
    for (rank, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(message)) => return Err(format!("rank {rank}: {message}")),
            Err(_) => return Err(format!("rank {rank} panicked")),
        }
    }
    Ok(report(args, started.elapsed(), &results))
}

/// One model per rank, each with different random parameters (the reducer
/// broadcasts rank 0's, so every replica starts identical).
///
/// Built here, one after the other, because burn's generator is global and
/// its parameters are initialised lazily, on first read: ranks initialising
/// on their own threads would draw from it in a racy order, and the same seed
/// would not give the same run twice.
fn initial_models(args: &Args) -> Vec<MoeNet<Train>> {
    let device = Default::default();
    <Train as Backend>::seed(&device, args.seed);
    (0..args.ranks)
        .map(|_| {
            let model = MoeNet::<Train>::new(
                INPUT,
                args.hidden as usize,
                OUTPUT,
                args.experts as usize,
                &device,
            );
            // Reading every value initialises the parameters now.
            maskddp::parameter_checksum(&model);
            model
        })
        .collect()
}

fn train_rank(
    rank: usize,
    model: MoeNet<Train>,
    collective: maskddp::ThreadCollective,
    args: &Args,
    progress: Option<mpsc::Sender<Progress>>,
) -> Result<RankResult, String> {
    let device = Default::default();
    let (mut model, mut reducer) =
        Reducer::new(model, collective, reducer_config(args)).map_err(|e| e.to_string())?;
    let teachers = Teachers::new(args.seed, args.experts as usize, INPUT, OUTPUT);
    let mut optimizer = AdamConfig::new().init::<Train, MoeNet<Train>>();
    let mse = MseLoss::new();
    let mut losses = Vec::with_capacity(args.steps as usize);

    for step in 0..args.steps as usize {
        let batch =
            teachers.batch::<Train>(args.seed, rank, step, args.batch_size as usize, &device);
        let output =
            reducer.forward(|| model.forward(batch.x, batch.expert, batch.aux_target.is_some()));
        let mut loss = mse.forward(output.prediction, batch.target, Reduction::Mean);
        if let (Some(aux), Some(aux_target)) = (output.aux_prediction, batch.aux_target) {
            loss = loss
                + mse
                    .forward(aux, aux_target, Reduction::Mean)
                    .mul_scalar(0.1);
        }
        let loss_value = loss.clone().into_scalar();
        losses.push(loss_value);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let grads = reducer.reduce(grads).map_err(|e| e.to_string())?;
        model = optimizer.step(args.lr, model, grads);
        if let Some(progress) = &progress {
            let _ = progress.send(Progress {
                step,
                loss: loss_value,
            });
        }
    }
    Ok(RankResult {
        rank,
        checksum: maskddp::parameter_checksum(&model.valid()),
        losses,
        summary: reducer.summary(),
        plan_table: model.usage_plan().table().to_string(),
    })
}

/// Prints the summary; returns whether every replica is bit-identical.
fn report(args: &Args, elapsed: Duration, results: &[RankResult]) -> bool {
    let first = &results[0];
    println!("\nplan of MoeNet:\n{}\n", first.plan_table);
    println!(
        "{} steps on {} ranks in {:.1?} ({:.1} ms/step)",
        args.steps,
        args.ranks,
        elapsed,
        elapsed.as_secs_f64() * 1e3 / args.steps as f64,
    );
    let window = (args.steps as usize / 10).max(1);
    let mean_loss = |range: std::ops::Range<usize>| {
        let values: Vec<f32> = results
            .iter()
            .flat_map(|r| &r.losses[range.clone()])
            .copied()
            .collect();
        values.iter().sum::<f32>() / values.len() as f32
    };
    let steps = args.steps as usize;
    println!(
        "loss (mean over ranks): step 1 {:.4}, mean of the first {window} steps {:.4}, of the last {window} {:.4}",
        mean_loss(0..1),
        mean_loss(0..window),
        mean_loss(steps - window..steps),
    );
    println!("reducer (rank 0):\n{}", first.summary);
    println!("\nreplica check:");
    let mut identical = true;
    for result in results {
        let same = result.checksum == first.checksum;
        identical &= same;
        println!(
            "  rank {}: parameters checksum {:016x} {}",
            result.rank,
            result.checksum,
            if same { "ok" } else { "DIFFERS from rank 0" }
        );
    }
    if identical {
        println!(
            "all {} replicas hold bit-identical parameters",
            results.len()
        );
    } else {
        eprintln!("error: replicas diverged");
    }
    identical
}
