//! maskddp side of the maskddp-vs-PyTorch-DDP benchmark: the model, routings,
//! batch, optimizer and step counts of `benches/vs_pytorch/ddp.py`, trained on
//! two thread ranks with the `Reducer`. `benches/vs_pytorch/run.sh` runs both
//! sides in alternating rounds and prints the comparison; results are in
//! `BENCHMARKS.md`.
//!
//! ```text
//! cargo bench --bench vs_pytorch -- [--routing conditional|all ...] [--batch 32]
//!                                   [--warmup 10] [--steps 50]
//! ```
//!
//! Each rank runs step pairs: one step of a plain copy of the model ("local":
//! forward, MSE loss, backward, `GradientsParams::from_grads`, SGD step) and
//! one of a copy under the reducer (the forward inside `reducer.forward`,
//! `reducer.reduce` before the SGD step), each started right after a barrier.
//! A step's time is the slowest rank's; the medians over the measured steps
//! are printed as one JSON line per routing, with rank 0's median reducer
//! phases from `reducer.last_stats()`.
//!
//! The backend is Flex, the main job's (README, "The main job"). One thread
//! per rank: the workspace builds burn-flex without its `rayon` feature
//! (single-threaded `gemm`), so every tensor op runs on the calling rank's
//! thread. The JSON reports the process's thread count as a check.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use maskddp::{Reducer, ReducerConfig, StepStats, ThreadCollective, ThreadGroup, ddp_model};

type Ad = Autodiff<Flex>;

const WORLD: usize = 2;
const WIDTH: usize = 256;
const EXPERT_HIDDEN: usize = 1024;
const EXPERTS: usize = 8;
const LR: f64 = 1e-3;

/// One expert: Linear(256, 1024) -> relu -> Linear(1024, 256), 2.0 MiB of f32.
#[derive(Module, Debug)]
pub struct Expert<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    act: Relu,
}

impl<B: Backend> Expert<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(WIDTH, EXPERT_HIDDEN).init(device),
            fc2: LinearConfig::new(EXPERT_HIDDEN, WIDTH).init(device),
            act: Relu::new(),
        }
    }

    fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(self.act.forward(self.fc1.forward(h)))
    }
}

/// The PyTorch script's `MoeNet`: encoder and head on every path, the routed
/// experts summed onto the encoder output. 4 336 128 parameters, 16.54 MiB.
#[ddp_model]
#[derive(Module, Debug)]
pub struct MoeNet<B: Backend> {
    encoder: Linear<B>,
    experts: Vec<Expert<B>>,
    head: Linear<B>,
    act: Relu,
}

#[ddp_model]
impl<B: Backend> MoeNet<B> {
    pub fn new(device: &B::Device) -> Self {
        Self {
            encoder: LinearConfig::new(WIDTH, WIDTH).init(device),
            experts: (0..EXPERTS).map(|_| Expert::new(device)).collect(),
            head: LinearConfig::new(WIDTH, WIDTH).init(device),
            act: Relu::new(),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>, route: &[usize]) -> Tensor<B, 2> {
        let h = self.act.forward(self.encoder.forward(x));
        let mut y = h.clone();
        for &expert in route {
            y = y + self.experts[expert].forward(h.clone());
        }
        self.head.forward(y)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routing {
    /// Rank `r` at step `s` runs expert `(s * world + r) mod 8` only.
    Conditional,
    /// Every expert on every step and rank.
    All,
}

impl Routing {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "conditional" => Some(Self::Conditional),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Conditional => "conditional",
            Self::All => "all",
        }
    }

    fn route(self, step: usize, rank: usize) -> Vec<usize> {
        match self {
            Self::Conditional => vec![(step * WORLD + rank) % EXPERTS],
            Self::All => (0..EXPERTS).collect(),
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    routings: Vec<Routing>,
    batch: usize,
    warmup: usize,
    steps: usize,
}

const USAGE: &str = "usage: cargo bench --bench vs_pytorch -- [--routing conditional|all ...] \
                     [--batch N] [--warmup N] [--steps N]";

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Self {
            routings: vec![Routing::Conditional, Routing::All],
            batch: 32,
            warmup: 10,
            steps: 50,
        };
        let mut routings = Vec::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(arg) = it.next() {
            let mut number = || -> Result<usize, String> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{arg} needs a number > 0"))
            };
            match arg.as_str() {
                "--batch" => args.batch = number()?,
                "--warmup" => args.warmup = number()?,
                "--steps" => args.steps = number()?,
                "--routing" => {
                    while let Some(routing) = it.peek().and_then(|v| Routing::parse(v)) {
                        routings.push(routing);
                        it.next();
                    }
                }
                "--bench" => {} // passed by `cargo bench`
                other => return Err(format!("unknown argument {other}\n{USAGE}")),
            }
        }
        if !routings.is_empty() {
            args.routings = routings;
        }
        Ok(args)
    }
}

/// One rank's measured steps.
struct RankRun {
    local: Vec<Duration>,
    ddp: Vec<Duration>,
    /// Wall time of the `reducer.reduce` call alone.
    reduce: Vec<Duration>,
    stats: Vec<StepStats>,
    /// Threads of the process while the ranks train.
    process_threads: usize,
}

fn main() {
    if std::env::args().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return;
    }
    let args = match Args::parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    for &routing in &args.routings {
        let barrier = Arc::new(Barrier::new(WORLD));
        let ranks: Vec<_> = ThreadGroup::new(WORLD)
            .into_iter()
            .enumerate()
            .map(|(rank, collective)| {
                let (args, barrier) = (args.clone(), barrier.clone());
                thread::Builder::new()
                    .name(format!("rank-{rank}"))
                    .spawn(move || run_rank(rank, collective, routing, &args, &barrier))
                    .expect("spawn rank")
            })
            .collect();
        let runs: Vec<RankRun> = ranks
            .into_iter()
            .map(|rank| rank.join().expect("rank panicked"))
            .collect();
        println!("{}", report(routing, &args, &runs));
    }
}

fn run_rank(
    rank: usize,
    collective: ThreadCollective,
    routing: Routing,
    args: &Args,
    barrier: &Barrier,
) -> RankRun {
    let device = Default::default();
    let mut local = MoeNet::<Ad>::new(&device);
    let mut local_opt = SgdConfig::new().init();
    let (mut model, mut reducer) = Reducer::new(
        MoeNet::<Ad>::new(&device),
        collective,
        ReducerConfig::default(),
    )
    .unwrap_or_else(|e| panic!("reducer set-up failed: {e}"));
    let mut ddp_opt = SgdConfig::new().init();

    let mut run = RankRun {
        local: Vec::new(),
        ddp: Vec::new(),
        reduce: Vec::new(),
        stats: Vec::new(),
        process_threads: 0,
    };
    for step in 0..args.warmup + args.steps {
        let route = routing.route(step, rank);
        let x = Tensor::<Ad, 2>::random(
            [args.batch, WIDTH],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );
        let target =
            Tensor::<Ad, 2>::random([args.batch, WIDTH], Distribution::Normal(0.0, 1.0), &device);

        let start = after_barrier(barrier);
        let loss = mse(local.forward(x.clone(), &route), target.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &local);
        local = local_opt.step(LR, local, grads);
        let t_local = start.elapsed();

        let start = after_barrier(barrier);
        let y = reducer.forward(|| model.forward(x, &route));
        let grads = GradientsParams::from_grads(mse(y, target).backward(), &model);
        let reduce_start = Instant::now();
        let grads = reducer.reduce(grads).expect("reduce");
        let t_reduce = reduce_start.elapsed();
        model = ddp_opt.step(LR, model, grads);
        let t_ddp = start.elapsed();

        if step >= args.warmup {
            run.local.push(t_local);
            run.ddp.push(t_ddp);
            run.reduce.push(t_reduce);
            run.stats.push(*reducer.last_stats());
        }
        if step == args.warmup {
            run.process_threads = process_threads();
        }
    }
    run
}

/// Waits for every rank, then starts a step's clock: the slowest rank's time
/// is then the step time of the group, as with `dist.barrier()` on the
/// PyTorch side.
fn after_barrier(barrier: &Barrier) -> Instant {
    barrier.wait();
    Instant::now()
}

fn mse<B: Backend>(y: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    (y - target).powi_scalar(2).mean()
}

/// The `Threads:` line of /proc/self/status (0 where there is none).
fn process_threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The median in milliseconds (the mean of the middle two for an even count,
/// as Python's `statistics.median`).
fn median_ms(values: impl Iterator<Item = Duration>) -> f64 {
    let mut ms: Vec<f64> = values.map(|d| d.as_secs_f64() * 1e3).collect();
    assert!(!ms.is_empty(), "no measured step");
    ms.sort_by(f64::total_cmp);
    let mid = ms.len() / 2;
    if ms.len().is_multiple_of(2) {
        (ms[mid - 1] + ms[mid]) / 2.0
    } else {
        ms[mid]
    }
}

/// One JSON line with the field names of the PyTorch script, plus rank 0's
/// reducer phases.
fn report(routing: Routing, args: &Args, runs: &[RankRun]) -> String {
    let slowest = |of: fn(&RankRun) -> &[Duration]| {
        (0..args.steps).map(move |step| runs.iter().map(|run| of(run)[step]).max().expect("ranks"))
    };
    let rank0 = &runs[0];
    let phase = |of: fn(&StepStats) -> Duration| median_ms(rank0.stats.iter().map(of));
    let last = rank0.stats.last().expect("measured steps");
    let params = last.dense_bytes / 4;
    let bytes: Vec<u64> = rank0.stats.iter().map(|s| s.bytes_sent).collect();
    assert!(
        bytes.iter().all(|&b| b == bytes[0]),
        "every step of a routing reduces the same amount"
    );
    format!(
        concat!(
            r#"{{"impl": "maskddp", "routing": "{routing}", "world": {world}, "batch": {batch}, "#,
            r#""warmup": {warmup}, "steps": {steps}, "params": {params}, "param_bytes": {param_bytes}, "#,
            r#""local_ms": {local}, "ddp_ms": {ddp}, "bytes_per_step": {bytes}, "#,
            r#""usage_bytes": {usage}, "params_skipped": {skipped}, "reduce_ms": {reduce}, "#,
            r#""pack_ms": {pack}, "exchange_ms": {exchange}, "all_reduce_ms": {all_reduce}, "#,
            r#""unpack_ms": {unpack}, "process_threads": {threads}}}"#,
        ),
        routing = routing.name(),
        world = WORLD,
        batch = args.batch,
        warmup = args.warmup,
        steps = args.steps,
        params = params,
        param_bytes = last.dense_bytes,
        local = median_ms(slowest(|r| &r.local)),
        ddp = median_ms(slowest(|r| &r.ddp)),
        bytes = bytes[0],
        usage = last.usage_bytes,
        skipped = last.params_skipped,
        reduce = median_ms(rank0.reduce.iter().copied()),
        pack = phase(|s| s.pack),
        exchange = phase(|s| s.exchange),
        all_reduce = phase(|s| s.all_reduce),
        unpack = phase(|s| s.unpack),
        threads = rank0.process_threads,
    )
}
