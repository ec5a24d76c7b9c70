//! The main job: train a mixture-of-experts model with an optional head,
//! data-parallel over CPU threads, and prove the replicas stay identical.
//!
//! ```text
//! cargo run --release --example moe_training -- --help
//! cargo build --release --example moe_training --features mpi
//! mpirun -np 4 target/release/examples/moe_training --collective mpi
//! cargo build --release --example moe_training --features nccl
//! target/release/examples/moe_training --collective nccl --ranks 2   # 2 GPUs, threads
//! ```
//!
//! One process per GPU (torchrun-style), on one node with 4 GPUs:
//!
//! ```text
//! for r in 0 1 2 3; do
//!   RANK=$r LOCAL_RANK=$r WORLD_SIZE=4 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 \
//!     target/release/examples/moe_training --collective nccl & done; wait
//! ```

mod data;
mod model;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
#[cfg(any(feature = "mpi", feature = "nccl"))]
mod process;

use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use maskddp::{
    Averaging, Collective, DdpModel, Reducer, ReducerConfig, StatsSummary, ThreadGroup, WireFormat,
};

use data::Teachers;
use model::MoeNet;

type Train = Autodiff<Flex>;

/// Train a conditional model data-parallel and check the replicas agree.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Number of data-parallel ranks (threads; under mpirun, `-np` sets it).
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
    #[arg(long, default_value = "25600", value_parser = parse_bucket_cap)]
    bucket_kib: BucketCap,
    /// How reduced gradients are averaged.
    #[arg(long, value_enum, default_value_t = AveragingArg::WorldSize)]
    averaging: AveragingArg,
    /// Element type of gradients on the wire.
    #[arg(long, value_enum, default_value_t = WireArg::F32)]
    wire: WireArg,
    /// Which collective carries the reduction.
    #[arg(long, value_enum, default_value_t = CollectiveArg::Threads)]
    collective: CollectiveArg,
    /// Learning rate of Adam (finite, greater than 0).
    #[arg(long, default_value_t = 3e-3, value_parser = parse_lr, allow_hyphen_values = true)]
    lr: f64,
    /// Seed of the data and of the initial parameters.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// `--bucket-kib`, as the cap in bytes it stands for.
#[derive(Debug, Clone, Copy)]
struct BucketCap {
    bytes: usize,
}

/// Accepts a positive whole number of KiB whose byte count fits in `usize`
/// (a larger one would wrap around, to a cap of 0 for 2^54 KiB).
fn parse_bucket_cap(value: &str) -> Result<BucketCap, String> {
    let kib: u64 = value
        .parse()
        .map_err(|e| format!("not a whole number of KiB ({e})"))?;
    if kib == 0 {
        return Err("the bucket cap must be at least 1 KiB".to_owned());
    }
    let bytes = kib
        .checked_mul(1024)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| {
            format!(
                "{kib} KiB is more bytes than this machine can address (at most {} KiB)",
                usize::MAX / 1024
            )
        })?;
    Ok(BucketCap { bytes })
}

/// Accepts a finite learning rate greater than 0: any other value can only
/// diverge or stand still.
fn parse_lr(value: &str) -> Result<f64, String> {
    let lr: f64 = value
        .trim()
        .parse()
        .map_err(|e| format!("not a number ({e})"))?;
    if lr.is_finite() && lr > 0.0 {
        Ok(lr)
    } else {
        Err("the learning rate must be a finite number greater than 0".to_owned())
    }
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
    outcome: RankOutcome,
    summary: StatsSummary,
    plan_table: String,
}

/// What the report shows of every rank.
#[derive(Debug, Clone, Copy)]
struct RankOutcome {
    rank: usize,
    checksum: u64,
    losses: LossSummary,
}

/// The parts of one rank's loss curve the report prints, gathered step by
/// step: memory does not grow with `--steps`.
#[derive(Debug, Clone, Copy, Default)]
struct LossSummary {
    /// The loss at the first step.
    first: f64,
    /// Sum and count of the losses over the first `window` steps.
    head: (f64, usize),
    /// Sum and count of the losses over the last `window` steps.
    tail: (f64, usize),
}

impl LossSummary {
    fn record(&mut self, step: usize, steps: usize, loss: f32) {
        let window = loss_window(steps);
        let loss = f64::from(loss);
        if step == 0 {
            self.first = loss;
        }
        if step < window {
            self.head.0 += loss;
            self.head.1 += 1;
        }
        if step >= steps - window {
            self.tail.0 += loss;
            self.tail.1 += 1;
        }
    }
}

/// How many steps the report averages the loss over, at each end of the run.
fn loss_window(steps: usize) -> usize {
    (steps / 10).max(1)
}

/// What stopped being finite.
#[derive(Debug, Clone, Copy)]
enum Diverged {
    Loss(f32),
    Parameters,
}

/// Why a rank stopped before the end.
enum RankError {
    /// The loss at `step` (or, after the last step, a parameter) stopped
    /// being finite: the cause of a failed run, not a consequence.
    Diverged { step: usize, what: Diverged },
    /// Another rank left the group: a consequence of that rank's failure.
    PeerLeft(String),
    /// Anything else this rank ran into.
    Failed(String),
}

impl From<maskddp::DdpError> for RankError {
    fn from(err: maskddp::DdpError) -> Self {
        match err {
            maskddp::DdpError::Collective(maskddp::CollectiveError::Departed { .. }) => {
                RankError::PeerLeft(err.to_string())
            }
            err => RankError::Failed(err.to_string()),
        }
    }
}

/// Progress of rank 0, for the bar.
struct Progress {
    step: usize,
    loss: f32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.collective {
        CollectiveArg::Threads => check_memory(&args)
            .map_err(Failure::Usage)
            .and_then(|()| run(&args).map_err(Failure::Run)),
        #[cfg(feature = "mpi")]
        CollectiveArg::Mpi => mpi::run(args),
        #[cfg(not(feature = "mpi"))]
        CollectiveArg::Mpi => Err(Failure::Usage(
            "`--collective mpi` needs the MPI collective: build with \
             `cargo build --release --example moe_training --features mpi` and start it with \
             `mpirun -np 4 target/release/examples/moe_training --collective mpi`"
                .to_owned(),
        )),
        #[cfg(feature = "nccl")]
        CollectiveArg::Nccl => nccl::run(args),
        #[cfg(not(feature = "nccl"))]
        CollectiveArg::Nccl => Err(Failure::Usage(
            "`--collective nccl` needs the NCCL collective: build with \
             `cargo build --release --example moe_training --features nccl` (no CUDA toolkit \
             needed) and run it on a machine with NVIDIA GPUs and libnccl"
                .to_owned(),
        )),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Run(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Why the job did not run to the end.
enum Failure {
    /// Flags or environment that cannot work: nothing ran (exit code 2).
    Usage(String),
    /// The run failed (exit code 1).
    Run(String),
}

/// Parameters of one `MoeNet` replica.
fn parameter_count(hidden: u128, experts: u128) -> u128 {
    let (input, output) = (INPUT as u128, OUTPUT as u128);
    let encoder = input * hidden + hidden;
    let expert = hidden * hidden + hidden + hidden * output + output;
    let aux_head = hidden + 1;
    encoder + experts * expert + aux_head
}

/// Bytes held per parameter per rank: the weights, the autodiff gradient and
/// its `GradientsParams` copy, Adam's two moments, and the updated weights
/// while the optimizer builds them.
const BYTES_PER_PARAMETER: u128 = 4 * 6;
/// Bytes per bucket element per rank: the reducer's bucket, the thread
/// group's staging copy and its share of the sum (with the compressed copy
/// when the wire is bf16 or f16).
const BYTES_PER_BUCKET_ELEMENT: u128 = 4 * 3;
/// Values held per sample per rank, per unit of `--hidden`: the encoder's and
/// the expert's pre- and post-activation outputs, with their gradients.
const ACTIVATIONS_PER_HIDDEN: u128 = 12;
/// Values held per sample per rank besides those: inputs (three copies),
/// targets and predictions.
const ACTIVATIONS_FIXED: u128 = 3 * INPUT as u128 + 4 * OUTPUT as u128 + 4;
/// The bound when the machine's memory cannot be read.
const FALLBACK_MEMORY: u128 = 16 << 30;

/// Refuses, before allocating anything, a run whose sizes need more memory
/// than the machine has available: it would otherwise abort in an allocation
/// or be killed by the kernel after minutes.
fn check_memory(args: &Args) -> Result<(), String> {
    let ranks = u128::from(args.ranks);
    let (hidden, experts, batch) = (
        u128::from(args.hidden),
        u128::from(args.experts),
        u128::from(args.batch_size),
    );
    let parameters = parameter_count(hidden, experts);
    let bucket = parameters.min(args.bucket_kib.bytes as u128 / 4);
    // Rank 0's broadcast of the initial parameters keeps one more copy.
    let model = ranks * (parameters * BYTES_PER_PARAMETER + bucket * BYTES_PER_BUCKET_ELEMENT)
        + parameters * 4;
    let activations = ranks * batch * (ACTIVATIONS_PER_HIDDEN * hidden + ACTIVATIONS_FIXED) * 4;
    let needed = model + activations;
    let (available, source) = available_memory();
    if needed <= available {
        return Ok(());
    }
    let lower = if activations > model {
        "lower --batch-size or --hidden"
    } else {
        "lower --hidden, --experts or --ranks"
    };
    Err(format!(
        "--ranks {} --experts {} --hidden {} --batch-size {} need about {} of memory \
         ({} for {} parameters per replica with their gradients, optimizer state and reducer \
         buffers, {} for activations), more than the {} {source}; {lower}",
        args.ranks,
        args.experts,
        args.hidden,
        args.batch_size,
        bytes(needed),
        bytes(model),
        count(parameters),
        bytes(activations),
        bytes(available),
    ))
}

/// The memory a run may use, and where that figure comes from: what the
/// kernel reports as available (capped by this control group's limit), or a
/// fixed bound where neither can be read.
fn available_memory() -> (u128, &'static str) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let field = |name: &str| -> Option<u128> {
        let line = meminfo.as_deref()?.lines().find(|l| l.starts_with(name))?;
        let kib: u128 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|max| max.trim().parse::<u128>().ok())
        .map(|max| {
            let used = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
                .ok()
                .and_then(|used| used.trim().parse::<u128>().ok())
                .unwrap_or(0);
            max.saturating_sub(used)
        });
    match (
        field("MemAvailable:").or_else(|| field("MemTotal:")),
        cgroup,
    ) {
        (Some(memory), Some(limit)) if limit < memory => {
            (limit, "this control group may still use")
        }
        (Some(memory), _) => (memory, "available on this machine"),
        (None, Some(limit)) => (limit, "this control group may still use"),
        (None, None) => (
            FALLBACK_MEMORY,
            "this job allows when it cannot read /proc/meminfo",
        ),
    }
}

/// `1.5 GiB`.
fn bytes(n: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// `8.4 M`.
fn count(n: u128) -> String {
    match n {
        0..1_000_000 => n.to_string(),
        1_000_000..1_000_000_000 => format!("{:.1} M", n as f64 / 1e6),
        _ => format!("{:.1} G", n as f64 / 1e9),
    }
}

fn reducer_config(args: &Args) -> ReducerConfig {
    ReducerConfig {
        bucket_cap_bytes: args.bucket_kib.bytes,
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

/// Trains on every rank, as threads on the CPU; returns whether all
/// replicas ended bit-identical.
fn run(args: &Args) -> Result<bool, String> {
    let ranks = args.ranks as usize;
    let devices = vec![Default::default(); ranks];
    run_threads::<Train, _>(args, ThreadGroup::new(ranks), &devices)
}

/// Trains rank `r` on a thread with `collectives[r]` on `devices[r]`.
fn run_threads<B: AutodiffBackend, C: Collective + 'static>(
    args: &Args,
    collectives: Vec<C>,
    devices: &[B::Device],
) -> Result<bool, String> {
    let ranks = collectives.len();
    let steps = args.steps as usize;
    let mut bar = Bar::new(steps);
    let (progress_tx, progress_rx) = mpsc::channel::<Progress>();
    let handles: Vec<_> = collectives
        .into_iter()
        .zip(initial_models::<B>(args, devices))
        .zip(devices.iter().cloned())
        .enumerate()
        .map(|(rank, ((collective, model), device))| {
            let args = args.clone();
            let progress = (rank == 0).then(|| progress_tx.clone());
            let report_progress = move |p: Progress| {
                if let Some(progress) = &progress {
                    let _ = progress.send(p);
                }
            };
            thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn(move || train_rank(rank, model, collective, &args, &device, report_progress))
                .map_err(|e| format!("cannot start rank {rank}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    drop(progress_tx);

    for progress in progress_rx {
        bar.update(progress);
    }
    bar.bar.finish();

    let mut results = Vec::with_capacity(ranks);
    let mut errors = Vec::new();
    for (rank, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(err)) => errors.push((rank, err)),
            Err(_) => errors.push((rank, RankError::Failed("its thread panicked".to_owned()))),
        }
    }
    if !errors.is_empty() {
        return Err(first_cause(args, errors));
    }
    let first = &results[0];
    let outcomes: Vec<RankOutcome> = results.iter().map(|r| r.outcome).collect();
    Ok(report(args, bar.started.elapsed(), first, &outcomes))
}

/// Rank 0's progress bar.
struct Bar {
    bar: ProgressBar,
    started: Instant,
    smoothed: Option<f32>,
}

impl Bar {
    fn new(steps: usize) -> Self {
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40.cyan/blue} {pos}/{len} steps  {msg}  [{elapsed_precise}]",
            )
            .expect("the progress template is valid"),
        );
        Self {
            bar,
            started: Instant::now(),
            smoothed: None,
        }
    }

    fn update(&mut self, Progress { step, loss }: Progress) {
        let value = self.smoothed.map_or(loss, |s| 0.9 * s + 0.1 * loss);
        self.smoothed = Some(value);
        let per_second = (step + 1) as f64 / self.started.elapsed().as_secs_f64();
        self.bar.set_position(step as u64 + 1);
        self.bar
            .set_message(format!("loss {value:.4}  {per_second:.1} steps/s"));
    }
}

/// The message for the error that caused the others: the earliest divergence,
/// else the first rank's own failure, else what the ranks saw of each other.
fn first_cause(args: &Args, mut errors: Vec<(usize, RankError)>) -> String {
    let diverged = errors
        .iter()
        .filter_map(|(rank, err)| match err {
            RankError::Diverged { step, what } => Some((*step, *rank, *what)),
            _ => None,
        })
        .min_by_key(|&(step, rank, _)| (step, rank));
    if let Some((step, rank, what)) = diverged {
        // Steps are counted from 1, as in the report.
        let step = step + 1;
        let what = match what {
            Diverged::Loss(loss) => {
                format!("non-finite loss at step {step} ({loss} on rank {rank})")
            }
            Diverged::Parameters => {
                format!("non-finite parameters after step {step} (on rank {rank})")
            }
        };
        return format!(
            "{what}: training diverged; try a smaller --lr than {:?}",
            args.lr
        );
    }
    errors.sort_by_key(|(rank, err)| (matches!(err, RankError::PeerLeft(_)), *rank));
    match &errors[0] {
        (rank, RankError::Failed(message) | RankError::PeerLeft(message)) => {
            format!("rank {rank}: {message}")
        }
        (_, RankError::Diverged { .. }) => unreachable!("divergence is reported above"),
    }
}

/// One model per rank, on its device `devices[rank]`, each with different
/// random parameters (the reducer broadcasts rank 0's, so every replica
/// starts identical).
///
/// Built here, one after the other, because burn's generator is global and
/// its parameters are initialised lazily, on first read: ranks initialising
/// on their own threads would draw from it in a racy order, and the same seed
/// would not give the same run twice.
fn initial_models<B: AutodiffBackend>(args: &Args, devices: &[B::Device]) -> Vec<MoeNet<B>> {
    // Each device's generator once: ranks sharing a device draw in turn.
    for (index, device) in devices.iter().enumerate() {
        if !devices[..index].contains(device) {
            B::seed(device, args.seed);
        }
    }
    devices
        .iter()
        .map(|device| {
            let model = MoeNet::<B>::new(
                INPUT,
                args.hidden as usize,
                OUTPUT,
                args.experts as usize,
                device,
            );
            // Reading every value initialises the parameters now.
            maskddp::parameter_checksum(&model);
            model
        })
        .collect()
}

fn train_rank<B: AutodiffBackend, C: Collective>(
    rank: usize,
    model: MoeNet<B>,
    collective: C,
    args: &Args,
    device: &B::Device,
    mut progress: impl FnMut(Progress),
) -> Result<RankResult, RankError> {
    let (mut model, mut reducer) = Reducer::new(model, collective, reducer_config(args))?;
    let teachers = Teachers::new(args.seed, args.experts as usize, INPUT, OUTPUT);
    let mut optimizer = AdamConfig::new().init::<B, MoeNet<B>>();
    let mse = MseLoss::new();
    let steps = args.steps as usize;
    let mut losses = LossSummary::default();

    for step in 0..steps {
        let batch = teachers.batch::<B>(args.seed, rank, step, args.batch_size as usize, device);
        let output =
            reducer.forward(|| model.forward(batch.x, batch.expert, batch.aux_target.is_some()));
        let mut loss = mse.forward(output.prediction, batch.target, Reduction::Mean);
        if let (Some(aux), Some(aux_target)) = (output.aux_prediction, batch.aux_target) {
            loss = loss
                + mse
                    .forward(aux, aux_target, Reduction::Mean)
                    .mul_scalar(0.1);
        }
        let loss_value: f32 = loss.clone().into_scalar().elem();
        if !loss_value.is_finite() {
            // Leaving drops this rank's collective: the others stop at once.
            return Err(RankError::Diverged {
                step,
                what: Diverged::Loss(loss_value),
            });
        }
        losses.record(step, steps, loss_value);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let grads = reducer.reduce(grads)?;
        model = optimizer.step(args.lr, model, grads);
        progress(Progress {
            step,
            loss: loss_value,
        });
    }
    let valid = model.valid();
    if !parameters_are_finite(&valid) {
        return Err(RankError::Diverged {
            step: steps - 1,
            what: Diverged::Parameters,
        });
    }
    Ok(RankResult {
        outcome: RankOutcome {
            rank,
            checksum: maskddp::parameter_checksum(&valid),
            losses,
        },
        summary: reducer.summary(),
        plan_table: model.usage_plan().table().to_string(),
    })
}

/// Whether every parameter value of `model` is finite.
fn parameters_are_finite<B: Backend, M: Module<B>>(model: &M) -> bool {
    struct Finite(bool);
    impl<B: Backend> ModuleVisitor<B> for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.0 {
                self.0 = param.val().into_data().iter::<f32>().all(|x| x.is_finite());
            }
        }
    }
    let mut finite = Finite(true);
    model.visit(&mut finite);
    finite.0
}

/// Prints rank 0's plan and statistics and every rank's loss and checksum;
/// returns whether every replica is bit-identical.
fn report(args: &Args, elapsed: Duration, first: &RankResult, results: &[RankOutcome]) -> bool {
    println!("\nplan of MoeNet:\n{}\n", first.plan_table);
    println!(
        "{} steps on {} ranks in {:.1?} ({:.1} ms/step)",
        args.steps,
        args.ranks,
        elapsed,
        elapsed.as_secs_f64() * 1e3 / f64::from(args.steps),
    );
    let window = loss_window(args.steps as usize);
    let mean = |part: fn(&LossSummary) -> (f64, usize)| {
        let (sum, n) = results
            .iter()
            .map(|r| part(&r.losses))
            .fold((0.0, 0), |(s, n), (s2, n2)| (s + s2, n + n2));
        sum / n as f64
    };
    println!(
        "loss (mean over ranks): step 1 {:.4}, mean of the first {window} steps {:.4}, of the last {window} {:.4}",
        mean(|l| (l.first, 1)),
        mean(|l| l.head),
        mean(|l| l.tail),
    );
    println!("reducer (rank 0):\n{}", first.summary);
    println!("\nreplica check:");
    let mut identical = true;
    for result in results {
        let same = result.checksum == first.outcome.checksum;
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
