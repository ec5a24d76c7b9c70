//! Benchmarks of maskddp (SPEC §7): the mask-aware reducer against a dense
//! all-reduce of the same model, against the memory-bandwidth bound of the
//! machine, the cost of usage recording per forward, the cost of the
//! non-finite checks, and the gain of pipelining packed buckets.
//!
//! ```text
//! cargo bench --bench reducer              # full run (about a minute on 2 cores)
//! cargo bench --bench reducer -- --quick   # fewer steps and repetitions
//! cargo bench --bench reducer -- --only 3  # only the recording benchmark
//! cargo bench --bench reducer -- --only 4  # only the non-finite checks
//! cargo bench --bench reducer -- --only 5  # only the pipelining of packed buckets
//! cargo bench --bench reducer -- --only 1 --hidden 16   # a small model: latency
//!
//! cargo bench --bench reducer --features mpi --no-run   # prints the binary's path
//! mpirun -np 4 <that path> --quick   # sections 1, 2 and 5, one rank per process
//! mpirun -np 2 <that path> --only 5  # only section 5 over MPI
//! ```
//!
//! Every number is reported as a ratio against a baseline measured in the same
//! run: absolute times on a shared machine drift, ratios drift much less.
//! Results and their meaning are recorded in `BENCHMARKS.md`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::Distribution;
use maskddp::{
    Collective, DdpModel, NonFinite, Op, Pipeline, PlanBuilder, Reducer, ReducerConfig,
    ScatteredPart, StepStats, Tag, ThreadGroup, UsageRecord, WireBuf, WireFormat, ddp_model,
};

#[cfg(feature = "mpi")]
#[path = "reducer/mpi.rs"]
mod mpi;

type Ad = Autodiff<Flex>;

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

/// One expert: a two-layer MLP (a plain burn module).
#[derive(Module, Debug)]
pub struct Expert<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    act: Relu,
}

impl<B: Backend> Expert<B> {
    fn new(hidden: usize, device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(hidden, hidden).init(device),
            fc2: LinearConfig::new(hidden, hidden).init(device),
            act: Relu::new(),
        }
    }

    fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2.forward(self.act.forward(self.fc1.forward(h)))
    }
}

/// Mixture of experts: a shared encoder used on every path, experts picked
/// by a dynamic index, and an optional head. The experts and the head are
/// conditional in the plan.
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
    pub fn new(hidden: usize, experts: usize, device: &B::Device) -> Self {
        Self {
            encoder: LinearConfig::new(hidden, hidden).init(device),
            experts: (0..experts).map(|_| Expert::new(hidden, device)).collect(),
            head: LinearConfig::new(hidden, hidden).init(device),
            act: Relu::new(),
        }
    }

    /// Runs the experts in `route` (summed) and, if `head`, the head.
    pub fn forward(&self, x: Tensor<B, 2>, route: &[usize], head: bool) -> Tensor<B, 2> {
        let h = self.act.forward(self.encoder.forward(x));
        let mut y = h.clone();
        for &expert in route {
            y = y + self.experts[expert].forward(h.clone());
        }
        if head {
            y = y + self.head.forward(h);
        }
        y
    }
}

/// The same parameters, but `forward` runs every expert and the head on every
/// path, and the plan says so: every slot is always used (a hand-written
/// plan, independent of how the macro classifies a loop over the experts).
/// The reducer all-reduces every gradient — a plain dense all-reduce, after
/// the small exchange of gradient counts every step pays.
#[derive(Module, Debug)]
pub struct DenseMoeNet<B: Backend> {
    encoder: Linear<B>,
    experts: Vec<Expert<B>>,
    head: Linear<B>,
    act: Relu,
}

impl<B: Backend> DdpModel<B> for DenseMoeNet<B> {
    fn build_plan(&self, plan: &mut PlanBuilder) {
        plan.always::<B, _>(self);
    }

    fn record_always_used(&self) {}
}

impl<B: Backend> DenseMoeNet<B> {
    pub fn new(hidden: usize, experts: usize, device: &B::Device) -> Self {
        Self {
            encoder: LinearConfig::new(hidden, hidden).init(device),
            experts: (0..experts).map(|_| Expert::new(hidden, device)).collect(),
            head: LinearConfig::new(hidden, hidden).init(device),
            act: Relu::new(),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.act.forward(self.encoder.forward(x));
        let y = self
            .experts
            .iter()
            .fold(h.clone(), |y, expert| y + expert.forward(h.clone()));
        y + self.head.forward(h)
    }
}

/// A tiny conditional model for the recording benchmark: the forward is so
/// cheap that the recording overhead is visible.
#[ddp_model]
#[derive(Module, Debug)]
pub struct TinyMoe<B: Backend> {
    router: Linear<B>,
    experts: Vec<Linear<B>>,
    head: Linear<B>,
}

#[ddp_model]
impl<B: Backend> TinyMoe<B> {
    pub fn new(width: usize, experts: usize, device: &B::Device) -> Self {
        let linear = || LinearConfig::new(width, width).init(device);
        Self {
            router: linear(),
            experts: (0..experts).map(|_| linear()).collect(),
            head: linear(),
        }
    }

    pub fn forward(&self, x: Tensor<B, 2>, expert: usize, head: bool) -> Tensor<B, 2> {
        let h = self.router.forward(x);
        let y = self.experts[expert].forward(h);
        if head { self.head.forward(y) } else { y }
    }
}

/// A model whose `forward` only touches one expert's weight (no tensor op):
/// what is left is the cost of the instrumentation itself.
#[ddp_model]
#[derive(Module, Debug)]
pub struct TouchOnly<B: Backend> {
    experts: Vec<Linear<B>>,
}

#[ddp_model]
impl<B: Backend> TouchOnly<B> {
    pub fn new(width: usize, experts: usize, device: &B::Device) -> Self {
        Self {
            experts: (0..experts)
                .map(|_| LinearConfig::new(width, width).init(device))
                .collect(),
        }
    }

    pub fn forward(&self, expert: usize) -> usize {
        self.experts[expert].weight.dims()[0]
    }
}

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Settings {
    hidden: usize,
    experts: usize,
    batch: usize,
    warmup_steps: usize,
    steps: usize,
    memcpy_reps: usize,
    record_reps: usize,
    record_forwards: usize,
    touch_calls: usize,
}

impl Settings {
    fn new(quick: bool) -> Self {
        Self {
            hidden: 256,
            experts: 16,
            batch: 8,
            warmup_steps: if quick { 2 } else { 10 },
            steps: if quick { 10 } else { 100 },
            memcpy_reps: if quick { 10 } else { 50 },
            record_reps: if quick { 5 } else { 25 },
            record_forwards: if quick { 500 } else { 2_000 },
            touch_calls: if quick { 100_000 } else { 500_000 },
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore it and anything else unknown.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: cargo bench --bench reducer [-- [--quick] [--only 1|2|3|4|5] [--hidden N]]\n  \
             --quick     fewer steps and repetitions\n  \
             --only N    run only section N (1 and 2 run together)\n  \
             --hidden N  width of the section 1 and 2 models (default 256; a small one \
             shows latency)"
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.as_str())
    };
    let mut settings = Settings::new(quick);
    if let Some(hidden) = value_of("--hidden") {
        settings.hidden = hidden.parse().expect("--hidden takes a positive integer");
        assert!(settings.hidden > 0, "--hidden takes a positive integer");
    }
    let only = value_of("--only");
    #[cfg(feature = "mpi")]
    if matches!(
        maskddp::LaunchEnv::from_env(),
        Ok(maskddp::LaunchEnv::Mpi { .. })
    ) {
        mpi::run(&settings, only);
        return;
    }
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    println!(
        "maskddp reducer benchmarks ({} mode, {cores} CPU(s) available, release={}); \
         load average at start: {}",
        if quick { "quick" } else { "full" },
        !cfg!(debug_assertions),
        load_average()
    );

    if only.is_none_or(|v| v == "1" || v == "2") {
        let results = bench_reducer(&settings);
        bench_bound(&settings, &results, cores);
        bench_reduce_against_raw(&settings);
    }
    if only.is_none_or(|v| v == "3") {
        bench_recording(&settings);
    }
    if only.is_none_or(|v| v == "4") {
        bench_non_finite(&settings);
    }
    if only.is_none_or(|v| v == "5") {
        bench_pipeline(&settings);
    }
    println!(
        "\ntotal benchmark time {:.1?}; load average at end: {}",
        started.elapsed(),
        load_average()
    );
}

/// The 1/5/15-minute load averages (Linux), to show how busy the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

// ---------------------------------------------------------------------------
// 1. Mask-aware reduction vs dense all-reduce
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// `MoeNet`, each rank uses one expert (different per rank) and sometimes
    /// the head: only globally used gradients are reduced.
    MaskAware,
    /// `MoeNet`, every rank runs every expert and the head: same reducer,
    /// same plan, everything used, so it reduces everything.
    AllUsed,
    /// `DenseMoeNet`: no conditional slot at all.
    DensePlan,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::MaskAware => "mask-aware (1 expert/rank)",
            Variant::AllUsed => "same model, all used",
            Variant::DensePlan => "dense plan (baseline)",
        }
    }
}

/// One rank's measurements, for the measured steps only.
struct RankRun {
    /// Wall time of `reducer.reduce(grads)`, entered right after a barrier.
    wall: Vec<Duration>,
    stats: Vec<StepStats>,
}

/// One case's aggregate.
#[derive(Debug, Clone, Copy)]
struct CaseResult {
    world: usize,
    variant: Variant,
    /// Median over steps of the slowest rank's `reduce` wall time.
    wall: Duration,
    /// Rank 0's medians of the reducer's own phase timings.
    pack: Duration,
    exchange: Duration,
    all_reduce: Duration,
    unpack: Duration,
    /// Bytes per step (rank 0, mean over steps).
    bytes_sent: f64,
    usage_bytes: f64,
    dense_bytes: u64,
    params_skipped: f64,
    buckets: f64,
}

fn median(mut values: Vec<Duration>) -> Duration {
    assert!(!values.is_empty());
    values.sort();
    values[values.len() / 2]
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n.max(1) as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// The gradients of the bench's loss (the mean of `y²`) for `model`.
fn backward<M: AutodiffModule<Ad>>(y: Tensor<Ad, 2>, model: &M) -> GradientsParams {
    GradientsParams::from_grads(y.powf_scalar(2.0).mean().backward(), model)
}

/// One step on one rank: `forward` in the usage scope, real backward, then
/// a barrier (so the time excludes waiting for a slower backward elsewhere)
/// and the timed `reduce`, whose result is discarded. Returns its wall time.
fn timed_step<M, C>(
    reducer: &mut Reducer<Ad, C>,
    model: &M,
    forward: impl FnOnce() -> Tensor<Ad, 2>,
) -> Duration
where
    M: AutodiffModule<Ad>,
    C: Collective,
{
    let grads = backward(reducer.forward(forward), model);
    reducer.barrier().expect("barrier");
    let start = Instant::now();
    let reduced = reducer.reduce(grads).expect("reduce");
    let wall = start.elapsed();
    drop(black_box(reduced));
    wall
}

/// Runs steps on one rank: forward in the usage scope, real backward, then
/// a barrier (so that no rank's `reduce` time includes waiting for a slower
/// backward elsewhere) and the timed `reduce`. Gradients are discarded; the
/// parameters never change, so every step reduces the same amount of work.
fn rank_loop<M, C: Collective>(
    model: M,
    collective: C,
    settings: Settings,
    config: ReducerConfig,
    forward: impl Fn(&M, Tensor<Ad, 2>, usize) -> Tensor<Ad, 2>,
) -> RankRun
where
    M: DdpModel<Ad> + AutodiffModule<Ad>,
{
    let device = Default::default();
    let (model, mut reducer) = Reducer::new(model, collective, config)
        .unwrap_or_else(|e| panic!("reducer set-up failed: {e}"));
    let x = Tensor::<Ad, 2>::random(
        [settings.batch, settings.hidden],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    let total = settings.warmup_steps + settings.steps;
    let mut run = RankRun {
        wall: Vec::with_capacity(settings.steps),
        stats: Vec::with_capacity(settings.steps),
    };
    for step in 0..total {
        let wall = timed_step(&mut reducer, &model, || forward(&model, x.clone(), step));
        if step >= settings.warmup_steps {
            run.wall.push(wall);
            run.stats.push(*reducer.last_stats());
        }
    }
    run
}

/// `rank`'s steps of one variant.
fn run_variant<C: Collective>(
    variant: Variant,
    rank: usize,
    world: usize,
    collective: C,
    settings: Settings,
) -> RankRun {
    let device = Default::default();
    let experts = settings.experts;
    match variant {
        Variant::MaskAware => rank_loop(
            MoeNet::<Ad>::new(settings.hidden, experts, &device),
            collective,
            settings,
            ReducerConfig::default(),
            move |m, x, step| {
                // Every rank a different expert; the head on some steps of
                // some ranks.
                let expert = (step * world + rank) % experts;
                m.forward(x, &[expert], (step + rank).is_multiple_of(3))
            },
        ),
        Variant::AllUsed => {
            let all: Vec<usize> = (0..experts).collect();
            rank_loop(
                MoeNet::<Ad>::new(settings.hidden, experts, &device),
                collective,
                settings,
                ReducerConfig::default(),
                move |m, x, _| m.forward(x, &all, true),
            )
        }
        Variant::DensePlan => {
            let model = DenseMoeNet::<Ad>::new(settings.hidden, experts, &device);
            assert!(
                !model.usage_plan().has_conditional(),
                "the dense baseline must have no conditional slot"
            );
            rank_loop(
                model,
                collective,
                settings,
                ReducerConfig::default(),
                |m, x, _| m.forward(x),
            )
        }
    }
}

fn run_case(settings: &Settings, world: usize, variant: Variant) -> CaseResult {
    let settings = *settings;
    let handles: Vec<_> = ThreadGroup::new(world)
        .into_iter()
        .enumerate()
        .map(|(rank, collective)| {
            thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn(move || {
                    let device = Default::default();
                    <Ad as Backend>::seed(&device, 11 + rank as u64);
                    run_variant(variant, rank, world, collective, settings)
                })
                .expect("spawn rank")
        })
        .collect();
    let runs: Vec<RankRun> = handles
        .into_iter()
        .map(|h| h.join().expect("rank panicked"))
        .collect();
    aggregate(world, variant, &runs)
}

/// One case's result from every rank's wall times and rank 0's statistics.
fn aggregate(world: usize, variant: Variant, runs: &[RankRun]) -> CaseResult {
    let stats = &runs[0].stats;
    let phase = |f: fn(&StepStats) -> Duration| median(stats.iter().map(f).collect());
    CaseResult {
        world,
        variant,
        wall: median(slowest(runs.iter().map(|run| run.wall.as_slice()))),
        pack: phase(|s| s.pack),
        exchange: phase(|s| s.exchange),
        all_reduce: phase(|s| s.all_reduce),
        unpack: phase(|s| s.unpack),
        bytes_sent: mean(stats.iter().map(|s| s.bytes_sent as f64)),
        usage_bytes: mean(stats.iter().map(|s| s.usage_bytes as f64)),
        dense_bytes: stats[0].dense_bytes,
        params_skipped: mean(stats.iter().map(|s| s.params_skipped as f64)),
        buckets: mean(stats.iter().map(|s| s.buckets as f64)),
    }
}

fn bench_reducer(settings: &Settings) -> Vec<CaseResult> {
    let probe = MoeNet::<Flex>::new(settings.hidden, settings.experts, &Default::default());
    let plan = probe.usage_plan();
    let slots = plan.layout().slots();
    let numel: usize = slots.iter().map(|s| s.numel()).sum();
    let expert_numel: usize = slots
        .iter()
        .filter(|s| s.path.starts_with("experts.0."))
        .map(|s| s.numel())
        .sum();
    println!(
        "\n== 1. mask-aware reduction vs dense all-reduce ==\n\
         model: MoeNet, hidden {h}, {e} experts of {en} params ({em:.2} MiB) + encoder + head; \
         {n} params, {nm:.2} MiB of f32 gradients; batch {b}/rank; ThreadGroup; \
         default ReducerConfig (25 MiB buckets, f32 wire, world-size averaging)\n\
         timed: reducer.reduce(grads) entered right after a barrier, {w} warm-up + {s} measured steps; \
         'reduce' = median over steps of the slowest rank; phases = rank 0's medians from last_stats()",
        h = settings.hidden,
        e = settings.experts,
        en = expert_numel,
        em = mib((expert_numel * 4) as f64),
        n = numel,
        nm = mib((numel * 4) as f64),
        b = settings.batch,
        w = settings.warmup_steps,
        s = settings.steps,
    );
    drop(probe);

    let mut results = Vec::new();
    for world in [2, 4] {
        for variant in [Variant::DensePlan, Variant::AllUsed, Variant::MaskAware] {
            results.push(run_case(settings, world, variant));
        }
    }

    print_reducer_table(&results);
    results
}

/// The table of section 1: per world size, each variant against the dense
/// baseline.
fn print_reducer_table(results: &[CaseResult]) {
    println!(
        "\n{:>5}  {:<27} {:>10} {:>8} {:>10} {:>8} {:>8} {:>9} {:>8} {:>10} {:>10}",
        "world",
        "variant",
        "sent MiB",
        "skipped",
        "reduce ms",
        "pack",
        "exchange",
        "allreduce",
        "unpack",
        "time/base",
        "bytes/base"
    );
    for r in results {
        let base = results
            .iter()
            .find(|b| b.world == r.world && b.variant == Variant::DensePlan)
            .expect("baseline ran");
        println!(
            "{:>5}  {:<27} {:>10.3} {:>8.1} {:>10.3} {:>8.3} {:>8.3} {:>9.3} {:>8.3} {:>10.3} {:>10.3}",
            r.world,
            r.variant.name(),
            mib(r.bytes_sent),
            r.params_skipped,
            ms(r.wall),
            ms(r.pack),
            ms(r.exchange),
            ms(r.all_reduce),
            ms(r.unpack),
            r.wall.as_secs_f64() / base.wall.as_secs_f64(),
            r.bytes_sent / base.bytes_sent,
        );
    }
    let dense = mib(results[0].dense_bytes as f64);
    let mean_buckets = mean(results.iter().map(|r| r.buckets));
    println!(
        "(dense_bytes per step {dense:.3} MiB; mean {mean_buckets:.2} bucket(s) per step; \
         'sent' includes the exchange of gradient counts: {:.0} B per step, every variant)",
        results
            .iter()
            .find(|r| r.variant == Variant::MaskAware)
            .map_or(0.0, |r| r.usage_bytes),
    );
}

// ---------------------------------------------------------------------------
// 2. Against the bandwidth bound
// ---------------------------------------------------------------------------

/// Aggregate memcpy rate (bytes copied per second, summed over threads) of
/// `threads` threads each copying its own `bytes`-sized buffer at the same
/// time; best of `reps`.
fn memcpy_rate(bytes: usize, threads: usize, reps: usize) -> f64 {
    let len = (bytes / 4).max(1);
    let barrier = Arc::new(Barrier::new(threads));
    let times: Vec<Vec<Duration>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = Arc::clone(&barrier);
                scope.spawn(move || {
                    let src: Vec<f32> = (0..len).map(|i| (i + t) as f32).collect();
                    let mut dst = vec![0.0f32; len]; // faulted in by the first copy
                    let mut times = Vec::with_capacity(reps + 1);
                    for _ in 0..=reps {
                        barrier.wait();
                        let start = Instant::now();
                        dst.copy_from_slice(black_box(&src));
                        black_box(&mut dst);
                        times.push(start.elapsed());
                    }
                    times.remove(0); // the page-faulting warm-up
                    times
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("memcpy thread"))
            .collect()
    });
    let best = (0..reps)
        .map(|rep| times.iter().map(|t| t[rep]).max().expect("threads"))
        .min()
        .expect("reps");
    (len * 4 * threads) as f64 / best.as_secs_f64()
}

/// How the raw all-reduce hands its buffer to the collective.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum RawForm {
    /// One contiguous buffer, summed as it is
    /// (`ThreadCollective::all_reduce_sum`).
    Whole,
    /// Cut like the model's gradients (weights of `hidden²` elements, biases
    /// of `hidden`), each part divided by the world size and checked:
    /// what the reducer asks of the collective
    /// (`ThreadCollective::all_reduce_scattered`).
    Scattered { hidden: usize },
}

/// Median over calls of the slowest rank's time for one all-reduce of `len`
/// f32 in `form` (after a barrier): the collective alone, without the
/// reducer. Each rank writes its buffer afresh before every call, as a
/// backward writes its gradients.
fn raw_all_reduce(world: usize, len: usize, calls: usize, form: RawForm) -> Duration {
    let handles: Vec<_> = ThreadGroup::new(world)
        .into_iter()
        .map(|mut collective| {
            thread::spawn(move || {
                let mut data = vec![1.0f32; len];
                let mut times = Vec::with_capacity(calls);
                for call in 0..calls + 3 {
                    let step = call as u64 + 1;
                    data.fill(1.0);
                    collective
                        .barrier(Tag::new(step, Op::Barrier))
                        .expect("barrier");
                    let tag = Tag::new(step, Op::Bucket(0));
                    let start = Instant::now();
                    match form {
                        RawForm::Whole => collective.all_reduce_sum(tag, WireBuf::F32(&mut data)),
                        RawForm::Scattered { hidden } => {
                            let mut parts = Vec::new();
                            let mut rest = data.as_mut_slice();
                            for size in [hidden * hidden, hidden].into_iter().cycle() {
                                if rest.is_empty() {
                                    break;
                                }
                                let (part, tail) = rest.split_at_mut(size.min(rest.len()));
                                parts.push(ScatteredPart::new(part, world as f32));
                                rest = tail;
                            }
                            collective.all_reduce_scattered(tag, &mut parts)
                        }
                    }
                    .expect("all-reduce");
                    let elapsed = start.elapsed();
                    if call >= 3 {
                        times.push(elapsed);
                    }
                }
                times
            })
        })
        .collect();
    let times: Vec<Vec<Duration>> = handles
        .into_iter()
        .map(|h| h.join().expect("rank panicked"))
        .collect();
    median(slowest(times.iter().map(Vec::as_slice)))
}

fn bench_bound(settings: &Settings, results: &[CaseResult], cores: usize) {
    println!(
        "\n== 2. against the memory-bandwidth bound ==\n\
         bound for an all-reduce of N bytes on w ranks in shared memory: every rank's buffer must be \
         read once and written once, i.e. w memcpys of N bytes, spread over p = min(w, cores) cores:\n\
         bound = w * N / R(N, p), R = aggregate memcpy rate of p threads each copying N bytes \
         concurrently (best of {} reps, measured now at each N)",
        settings.memcpy_reps
    );
    let dense = results[0].dense_bytes as usize;
    println!(
        "memcpy of {:.2} MiB (the dense gradient):",
        mib(dense as f64)
    );
    for threads in 1..=cores.min(4) {
        let rate = memcpy_rate(dense, threads, settings.memcpy_reps);
        println!(
            "  {threads} thread(s): {:.2} GB/s aggregate ({:.3} ms per copy per thread)",
            rate / 1e9,
            ms(Duration::from_secs_f64(
                dense as f64 * threads as f64 / rate
            )),
        );
    }
    let mut rates: HashMap<(usize, usize), f64> = HashMap::new();
    let mut raw: HashMap<(usize, usize, RawForm), Duration> = HashMap::new();
    println!(
        "\n{:>5}  {:<27} {:>8} {:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>13} {:>11}",
        "world",
        "variant",
        "N MiB",
        "R GB/s",
        "bound ms",
        "raw ms",
        "scat ms",
        "allreduce",
        "raw/bound",
        "scat/bound",
        "allred/bound",
        "reduce/scat"
    );
    for r in results {
        let n = (r.bytes_sent - r.usage_bytes).round() as usize;
        let p = r.world.min(cores);
        let rate = *rates
            .entry((n, p))
            .or_insert_with(|| memcpy_rate(n, p, settings.memcpy_reps));
        let mut raw_in = |form| {
            *raw.entry((r.world, n, form))
                .or_insert_with(|| raw_all_reduce(r.world, n / 4, settings.steps, form))
        };
        let whole = raw_in(RawForm::Whole);
        let scattered = raw_in(RawForm::Scattered {
            hidden: settings.hidden,
        });
        let bound = Duration::from_secs_f64(r.world as f64 * n as f64 / rate);
        let over = |d: Duration, base: Duration| d.as_secs_f64() / base.as_secs_f64();
        println!(
            "{:>5}  {:<27} {:>8.3} {:>7.1} {:>8.3} {:>8.3} {:>8.3} {:>10.3} {:>10.2} {:>10.2} {:>13.2} {:>11.2}",
            r.world,
            r.variant.name(),
            mib(n as f64),
            rate / 1e9,
            ms(bound),
            ms(whole),
            ms(scattered),
            ms(r.all_reduce),
            over(whole, bound),
            over(scattered, bound),
            over(r.all_reduce, bound),
            over(r.wall, scattered),
        );
    }
    println!(
        "('raw' = one ThreadCollective::all_reduce_sum of N bytes alone, median of the slowest \
         rank after a barrier; 'scat' = the same bytes cut like the model's gradients (weights \
         of hidden^2, biases of hidden elements), divided by the world size and checked, through \
         all_reduce_scattered: what the reducer asks of the collective; 'allreduce' = rank 0's \
         median bucket all-reduce time from StepStats, rendezvous waits included; 'reduce' = \
         the whole reduce() call, slowest rank)"
    );
}

/// Target 2, in the state a step leaves the machine in: the dense model's
/// `reduce`, and the raw all-reduce of the same bytes after the same
/// forward and backward, paired step by step.
fn bench_reduce_against_raw(settings: &Settings) {
    println!(
        "\ndense reduce against the raw all-reduce of the same bytes in the same steps: every step \
         each rank runs a forward and backward of DenseMoeNet twice, once before its timed \
         reduce() and once before a timed ThreadCollective::all_reduce_sum of a buffer of the \
         same size (written afresh after the backward, as the gradients are) on a second thread \
         group, alternating which goes first; medians of the slowest rank; 'ratio' = median over \
         steps of reduce/raw in the same step\n\n{:>5} {:>10} {:>10} {:>8}",
        "world", "reduce ms", "raw ms", "ratio"
    );
    for world in [2, 4] {
        let [reduce, raw] = reduce_against_raw(settings, world);
        println!(
            "{world:>5} {:>10.3} {:>10.3} {:>8.3}",
            ms(median(reduce.clone())),
            ms(median(raw.clone())),
            paired_ratio(&reduce, &raw)
        );
    }
}

/// Per step, the slowest rank's `reduce` of the dense model and its raw
/// all-reduce of the same bytes (see [`bench_reduce_against_raw`]).
fn reduce_against_raw(settings: &Settings, world: usize) -> [Vec<Duration>; 2] {
    let settings = *settings;
    let handles: Vec<_> = ThreadGroup::new(world)
        .into_iter()
        .zip(ThreadGroup::new(world))
        .enumerate()
        .map(|(rank, (for_reducer, mut raw))| {
            thread::spawn(move || {
                let device = Default::default();
                <Ad as Backend>::seed(&device, 11 + rank as u64);
                let model = DenseMoeNet::<Ad>::new(settings.hidden, settings.experts, &device);
                let (model, mut reducer) =
                    Reducer::new(model, for_reducer, ReducerConfig::default()).expect("set-up");
                let numel = model
                    .usage_plan()
                    .layout()
                    .slots()
                    .iter()
                    .map(|s| s.numel())
                    .sum();
                let mut data = vec![1.0f32; numel];
                let x = Tensor::<Ad, 2>::random(
                    [settings.batch, settings.hidden],
                    Distribution::Uniform(-1.0, 1.0),
                    &device,
                );
                let mut times = [Vec::new(), Vec::new()];
                for step in 0..settings.warmup_steps + settings.steps {
                    for turn in 0..2 {
                        let which = (step + turn) % 2;
                        let time = if which == 0 {
                            timed_step(&mut reducer, &model, || model.forward(x.clone()))
                        } else {
                            drop(black_box(backward(model.forward(x.clone()), &model)));
                            data.fill(1.0);
                            let step = step as u64 + 1;
                            raw.barrier(Tag::new(step, Op::Barrier)).expect("barrier");
                            let start = Instant::now();
                            raw.all_reduce_sum(
                                Tag::new(step, Op::Bucket(0)),
                                WireBuf::F32(&mut data),
                            )
                            .expect("all-reduce");
                            start.elapsed()
                        };
                        if step >= settings.warmup_steps {
                            times[which].push(time);
                        }
                    }
                }
                times
            })
        })
        .collect();
    let runs: Vec<[Vec<Duration>; 2]> = handles
        .into_iter()
        .map(|h| h.join().expect("rank panicked"))
        .collect();
    [0, 1].map(|which| slowest(runs.iter().map(|run| run[which].as_slice())))
}

// ---------------------------------------------------------------------------
// 3. Cost of usage recording per forward
// ---------------------------------------------------------------------------

/// Best-of-`reps` ns per call of `a` and of `b`, interleaved rep by rep (in
/// alternating order) so that drifting machine load hits both alike.
fn compare(reps: usize, calls: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let per_call = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..calls {
            f();
        }
        start.elapsed().as_secs_f64() * 1e9 / calls as f64
    };
    // Warm-up.
    per_call(&mut a);
    per_call(&mut b);
    let mut best = (f64::INFINITY, f64::INFINITY);
    for rep in 0..reps {
        // Alternate which goes first, so neither always runs right after
        // the other.
        if rep % 2 == 0 {
            best.0 = best.0.min(per_call(&mut a));
            best.1 = best.1.min(per_call(&mut b));
        } else {
            best.1 = best.1.min(per_call(&mut b));
            best.0 = best.0.min(per_call(&mut a));
        }
    }
    best
}

fn bench_recording(settings: &Settings) {
    const WIDTH: usize = 4;
    const EXPERTS: usize = 8;
    println!(
        "\n== 3. cost of usage recording ==\n\
         best of {} interleaved repetitions; single thread",
        settings.record_reps
    );
    let device = Default::default();
    let mut record = UsageRecord::default();

    println!(
        "\n{:<58} {:>12} {:>12} {:>10} {:>8}",
        "what (per call)", "no scope ns", "scope ns", "diff ns", "ratio"
    );
    let row = |what: &str, (plain, scoped): (f64, f64)| {
        println!(
            "{what:<58} {plain:>12.1} {scoped:>12.1} {:>10.1} {:>8.3}",
            scoped - plain,
            scoped / plain
        );
    };

    // Inference backend: the forward alone (recording does not depend on
    // the backend; an autodiff forward without backward would pile up
    // graph state and time that instead).
    let model = TinyMoe::<Flex>::new(WIDTH, EXPERTS, &device);
    let x = Tensor::<Flex, 2>::ones([1, WIDTH], &device);
    // Sanity: in a scope the forward records the expert and the head (2
    // Linear = 4 parameter ids).
    record.record(|| model.forward(x.clone(), 3, true));
    assert_eq!(record.ids().len(), 4, "TinyMoe should record 4 ids");
    record.clear();
    let (mut i, mut i2) = (0usize, 0usize);
    let forward = compare(
        settings.record_reps,
        settings.record_forwards,
        || {
            i = i.wrapping_add(1);
            black_box(model.forward(x.clone(), i % EXPERTS, true));
        },
        || {
            i2 = i2.wrapping_add(1);
            black_box(record.record(|| model.forward(x.clone(), i2 % EXPERTS, true)));
            record.clear();
        },
    );
    row(
        &format!("TinyMoe<Flex> forward (3 Linear {WIDTH}x{WIDTH}, records 4 ids)"),
        forward,
    );

    // A whole tiny training step on Autodiff<Flex>: forward (in the scope
    // or not) + backward + gradient collection.
    let model = TinyMoe::<Ad>::new(WIDTH, EXPERTS, &device);
    let x = Tensor::<Ad, 2>::ones([1, WIDTH], &device);
    let (mut i, mut i2) = (0usize, 0usize);
    let train = compare(
        settings.record_reps,
        settings.record_forwards / 4,
        || {
            i = i.wrapping_add(1);
            let y = model.forward(x.clone(), i % EXPERTS, true);
            black_box(GradientsParams::from_grads(y.sum().backward(), &model));
        },
        || {
            i2 = i2.wrapping_add(1);
            let y = record.record(|| model.forward(x.clone(), i2 % EXPERTS, true));
            record.clear();
            black_box(GradientsParams::from_grads(y.sum().backward(), &model));
        },
    );
    row("TinyMoe<Autodiff<Flex>> forward + backward", train);

    let touch = TouchOnly::<Flex>::new(WIDTH, EXPERTS, &device);
    record.record(|| touch.forward(5));
    assert_eq!(record.ids().len(), 2, "TouchOnly should record 2 ids");
    record.clear();
    let (mut j, mut j2) = (0usize, 0usize);
    let touched = compare(
        settings.record_reps,
        settings.touch_calls,
        || {
            j = j.wrapping_add(1);
            black_box(touch.forward(black_box(j % EXPERTS)));
        },
        || {
            j2 = j2.wrapping_add(1);
            black_box(record.record(|| touch.forward(black_box(j2 % EXPERTS))));
            record.clear();
        },
    );
    row(
        "TouchOnly forward (index one expert, records 2 ids)",
        touched,
    );

    // The scope alone: entering and leaving `UsageRecord::record` + clear.
    let scope = compare(
        settings.record_reps,
        settings.touch_calls,
        || {
            black_box(black_box(7usize));
        },
        || {
            black_box(record.record(|| black_box(7usize)));
            record.clear();
        },
    );
    row("empty closure (scope enter/leave + clear only)", scope);

    // Recording inside a scope that stays open: the per-expert cost without
    // entering and leaving the scope. The ids accumulate (2 per call); a
    // warm-up burst grows the buffer first so the timed bursts do not
    // reallocate.
    let burst = settings.touch_calls / 10;
    let mut k = 0usize;
    let in_scope = record.record(|| {
        (0..=settings.record_reps)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..burst {
                    k = k.wrapping_add(1);
                    black_box(touch.forward(black_box(k % EXPERTS)));
                }
                start.elapsed().as_secs_f64() * 1e9 / burst as f64
            })
            .skip(1)
            .fold(f64::INFINITY, f64::min)
    });
    record.clear();
    println!(
        "recording one expert (2 ids) inside an open scope: {in_scope:.1} ns per touch \
         (TouchOnly outside any scope: {:.1} ns)",
        touched.0
    );
}

// ---------------------------------------------------------------------------
// 4. Cost of the non-finite checks
// ---------------------------------------------------------------------------

/// Per step, one rank's timings of one reducer.
#[derive(Default)]
struct PairedRun {
    wall: Vec<Duration>,
    /// Packing plus unpacking: where the f32 checks run on the packed path.
    pack_unpack: Vec<Duration>,
    all_reduce: Vec<Duration>,
    buckets: Vec<usize>,
}

/// The dense model on `world` ranks, reduced every step by two reducers that
/// differ only in their `configs`. Each rank holds both, on two separate
/// thread groups, and alternates which one goes first, so both see the same
/// machine state. Returns, per reducer, every rank's run.
fn run_paired(
    settings: &Settings,
    world: usize,
    configs: [ReducerConfig; 2],
) -> [Vec<PairedRun>; 2] {
    let settings = *settings;
    let handles: Vec<_> = ThreadGroup::new(world)
        .into_iter()
        .zip(ThreadGroup::new(world))
        .enumerate()
        .map(|(rank, (first, second))| {
            thread::Builder::new()
                .name(format!("rank-{rank}"))
                .spawn(move || {
                    let device = Default::default();
                    <Ad as Backend>::seed(&device, 11 + rank as u64);
                    let model = DenseMoeNet::<Ad>::new(settings.hidden, settings.experts, &device);
                    let (model, first) =
                        Reducer::new(model, first, configs[0]).expect("set-up (first)");
                    let (model, second) =
                        Reducer::new(model, second, configs[1]).expect("set-up (second)");
                    let mut reducers = [first, second];
                    let mut runs = [PairedRun::default(), PairedRun::default()];
                    let x = Tensor::<Ad, 2>::random(
                        [settings.batch, settings.hidden],
                        Distribution::Uniform(-1.0, 1.0),
                        &device,
                    );
                    for step in 0..settings.warmup_steps + settings.steps {
                        for turn in 0..2 {
                            let which = (step + turn) % 2;
                            let reducer = &mut reducers[which];
                            let wall = timed_step(reducer, &model, || model.forward(x.clone()));
                            if step >= settings.warmup_steps {
                                let stats = reducer.last_stats();
                                runs[which].wall.push(wall);
                                runs[which].pack_unpack.push(stats.pack + stats.unpack);
                                runs[which].all_reduce.push(stats.all_reduce);
                                runs[which].buckets.push(stats.buckets);
                            }
                        }
                    }
                    runs
                })
                .expect("spawn rank")
        })
        .collect();
    let mut out: [Vec<PairedRun>; 2] = [Vec::new(), Vec::new()];
    for handle in handles {
        let [first, second] = handle.join().expect("rank panicked");
        out[0].push(first);
        out[1].push(second);
    }
    out
}

/// Per step (or call), the slowest rank's time, from every rank's times.
fn slowest<'a>(ranks: impl IntoIterator<Item = &'a [Duration]>) -> Vec<Duration> {
    let mut ranks = ranks.into_iter();
    let mut slowest = ranks.next().expect("ranks").to_vec();
    for times in ranks {
        for (slowest, &time) in slowest.iter_mut().zip(times) {
            *slowest = (*slowest).max(time);
        }
    }
    slowest
}

/// [`slowest`] of paired runs.
fn slowest_paired(runs: &[PairedRun]) -> Vec<Duration> {
    slowest(runs.iter().map(|run| run.wall.as_slice()))
}

/// The median over steps of `a / b` in the same step. Steps are paired (the
/// two reducers run back to back), so drift of the machine between steps
/// cancels.
fn paired_ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let mut ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn bench_non_finite(settings: &Settings) {
    let world = 2;
    let dense = DenseMoeNet::<Flex>::new(settings.hidden, settings.experts, &Default::default());
    let dense_bytes = dense.usage_plan().layout().numel() * 4;
    drop(dense);
    println!(
        "\n== 4. cost of the non-finite checks ==\n\
         DenseMoeNet (every gradient reduced, {nm:.2} MiB of f32), {world} ranks, default \
         ReducerConfig but the wire; two reducers per rank on two thread groups, \
         NonFinite::Error (checks on, the default) and NonFinite::Ignore (no check), \
         alternating which goes first; {w} warm-up + {s} measured steps each; \
         'reduce' = median of the slowest rank, phases = rank 0's medians; 'ratio' = \
         median over steps of on/off in the same step\n",
        nm = mib(dense_bytes as f64),
        w = settings.warmup_steps,
        s = settings.steps,
    );
    println!(
        "{:<5} {:>11} {:>11} {:>7}   {:>11} {:>11} {:>7}   {:>11} {:>11} {:>7}",
        "wire",
        "reduce on",
        "reduce off",
        "ratio",
        "pk+unpk on",
        "pk+unpk off",
        "ratio",
        "allred on",
        "allred off",
        "ratio"
    );
    for wire in [WireFormat::F32, WireFormat::F16] {
        let config = ReducerConfig::default().with_wire(wire);
        let [on, off] = run_paired(
            settings,
            world,
            [config, config.with_non_finite(NonFinite::Ignore)],
        );
        let (wall_on, wall_off) = (slowest_paired(&on), slowest_paired(&off));
        println!(
            "{:<5} {:>11.3} {:>11.3} {:>7.3}   {:>11.3} {:>11.3} {:>7.3}   {:>11.3} {:>11.3} {:>7.3}",
            wire.to_string(),
            ms(median(wall_on.clone())),
            ms(median(wall_off.clone())),
            paired_ratio(&wall_on, &wall_off),
            ms(median(on[0].pack_unpack.clone())),
            ms(median(off[0].pack_unpack.clone())),
            paired_ratio(&on[0].pack_unpack, &off[0].pack_unpack),
            ms(median(on[0].all_reduce.clone())),
            ms(median(off[0].all_reduce.clone())),
            paired_ratio(&on[0].all_reduce, &off[0].all_reduce),
        );
    }
    println!(
        "(f32: the thread group checks each block of sums as it forms them, and looks at \
         the gradients behind a non-finite one, inside the all-reduce phase; f16 converts \
         each gradient straight into the wire, checking each block for non-finite values and \
         overflow as it converts it, in the pack phase; the checks of the sums run in the unpack \
         phase)"
    );
}

// ---------------------------------------------------------------------------
// 5. Pipelining the passes over packed buckets
// ---------------------------------------------------------------------------

/// Bucket cap of section 5: the dense model's 8.53 MiB of gradients make 5
/// buckets of up to 1 MiB on a 16-bit wire, 9 in f32.
const PIPELINE_CAP: usize = 1024 * 1024;

fn bench_pipeline(settings: &Settings) {
    let world = 2;
    println!(
        "\n== 5. pipelining the passes over packed buckets ==\n\
         DenseMoeNet, {world} ranks on the thread group, {cap} MiB buckets; the thread group \
         sums f32 gradients where they lie, so only the 16-bit wires pack here (MPI packs \
         every wire: run this binary under mpirun); two reducers per rank, pipeline on and \
         off, alternating which goes first; {w} warm-up + {s} measured steps each; 'reduce' = \
         median of the slowest rank, phases = rank 0's medians (pipelined: the helper's \
         pack+unpack overlap the all-reduces); 'ratio' = median over steps of on/off in the \
         same step\n",
        cap = PIPELINE_CAP / (1024 * 1024),
        w = settings.warmup_steps,
        s = settings.steps,
    );
    PipelineRow::print_header("ratio");
    for wire in [WireFormat::F16, WireFormat::Bf16] {
        let config = ReducerConfig::default()
            .with_wire(wire)
            .with_bucket_cap_bytes(PIPELINE_CAP);
        let configs = [Pipeline::On, Pipeline::Off].map(|pipeline| config.with_pipeline(pipeline));
        let [on, off] = run_paired(settings, world, configs);
        let (wall_on, wall_off) = (slowest_paired(&on), slowest_paired(&off));
        PipelineRow {
            wire,
            buckets: mean(on[0].buckets.iter().map(|&b| b as f64)),
            reduce: [median(wall_on.clone()), median(wall_off.clone())],
            ratio: paired_ratio(&wall_on, &wall_off),
            pack_unpack: [&on, &off].map(|runs| median(runs[0].pack_unpack.clone())),
            all_reduce: [&on, &off].map(|runs| median(runs[0].all_reduce.clone())),
        }
        .print();
    }
}

/// One line of section 5: the pipeline on, and off.
struct PipelineRow {
    wire: WireFormat,
    buckets: f64,
    /// The slowest rank's median `reduce`.
    reduce: [Duration; 2],
    /// On against off.
    ratio: f64,
    /// Rank 0's medians.
    pack_unpack: [Duration; 2],
    all_reduce: [Duration; 2],
}

impl PipelineRow {
    /// The column titles; `ratio` names how on and off are compared.
    fn print_header(ratio: &str) {
        println!(
            "{:<5} {:>8} {:>11} {:>11} {:>7}   {:>11} {:>11}   {:>11} {:>11}",
            "wire",
            "buckets",
            "reduce on",
            "reduce off",
            ratio,
            "pk+unpk on",
            "pk+unpk off",
            "allred on",
            "allred off",
        );
    }

    fn print(&self) {
        println!(
            "{:<5} {:>8.1} {:>11.3} {:>11.3} {:>7.3}   {:>11.3} {:>11.3}   {:>11.3} {:>11.3}",
            self.wire.to_string(),
            self.buckets,
            ms(self.reduce[0]),
            ms(self.reduce[1]),
            self.ratio,
            ms(self.pack_unpack[0]),
            ms(self.pack_unpack[1]),
            ms(self.all_reduce[0]),
            ms(self.all_reduce[1]),
        );
    }
}
