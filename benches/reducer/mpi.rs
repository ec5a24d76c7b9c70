//! Sections 1, 2 and 5 with one rank per process, under `mpirun` (feature
//! `mpi`): the same cases over the MPI collective, every rank's times
//! gathered to rank 0, which prints.

use std::hint::black_box;
use std::time::{Duration, Instant};

use maskddp::{
    Collective, MpiCollective, MpiConfig, Op, Pipeline, ReducerConfig, StepStats, Tag, WireBuf,
    WireFormat,
};

use super::{
    Ad, CaseResult, DenseMoeNet, PIPELINE_CAP, PipelineRow, RankRun, Settings, Variant, aggregate,
    mean, median, mib, ms, print_reducer_table, rank_loop, run_variant, slowest,
};

/// Runs the MPI sections on this process's rank: `only` one of them (`1`
/// and `2` run together), or all.
pub fn run(settings: &Settings, only: Option<&str>) {
    let mut mpi = Gather {
        mpi: MpiCollective::init(MpiConfig::default()).expect("MPI starts"),
        step: 0,
    };
    if only.is_none_or(|v| v == "1" || v == "2") {
        reducer_and_bound(&mut mpi, settings);
    }
    if only.is_none_or(|v| v == "5") {
        pipeline(&mut mpi, settings);
    }
}

/// Sections 1 and 2.
fn reducer_and_bound(mpi: &mut Gather, settings: &Settings) {
    let (rank, world) = (mpi.mpi.rank(), mpi.mpi.world_size());
    if rank == 0 {
        println!(
            "\n== 1. mask-aware reduction vs dense all-reduce, MPI ==\n\
             {world} processes under mpirun, one rank each; cases and timing as with threads"
        );
    }
    let results: Vec<CaseResult> = [Variant::DensePlan, Variant::AllUsed, Variant::MaskAware]
        .into_iter()
        .map(|variant| {
            let mut run = run_variant(variant, rank, world, &mut mpi.mpi, *settings);
            // Every rank's wall times; rank 0 also keeps its statistics.
            let walls = mpi.durations(&run.wall);
            let stats = std::mem::take(&mut run.stats);
            let mut runs: Vec<RankRun> = walls
                .into_iter()
                .map(|wall| RankRun {
                    wall,
                    stats: Vec::new(),
                })
                .collect();
            runs[0].stats = stats;
            aggregate(world, variant, &runs)
        })
        .collect();
    if rank == 0 {
        print_reducer_table(&results);
        println!(
            "\n== 2. against the memory-copy bound, MPI ==\n\
             bound for N bytes on w processes: the time for every process to copy its own N \
             bytes at the same time (after a barrier; best of {} reps); \
             raw = one MpiCollective::all_reduce_sum of N bytes alone (slowest rank, median)",
            settings.memcpy_reps
        );
        println!(
            "\n{:>5}  {:<27} {:>8} {:>8} {:>8} {:>10} {:>10} {:>13} {:>10}",
            "world",
            "variant",
            "N MiB",
            "bound ms",
            "raw ms",
            "allreduce",
            "raw/bound",
            "allred/bound",
            "reduce/bnd"
        );
    }
    for r in &results {
        let n = (r.bytes_sent - r.usage_bytes).round() as usize;
        let bound = mpi.concurrent_copy(n, settings.memcpy_reps);
        let raw = mpi.raw_all_reduce(n / 4, settings.steps);
        if rank == 0 {
            let over = |d: Duration| d.as_secs_f64() / bound.as_secs_f64();
            println!(
                "{:>5}  {:<27} {:>8.3} {:>8.3} {:>8.3} {:>10.3} {:>10.2} {:>13.2} {:>10.2}",
                r.world,
                r.variant.name(),
                mib(n as f64),
                ms(bound),
                ms(raw),
                ms(r.all_reduce),
                over(raw),
                over(r.all_reduce),
                over(r.wall),
            );
        }
    }
}

/// Section 5 over MPI, which packs every bucket: the dense model in 1 MiB
/// buckets, reduced with the pipeline on and off in alternating rounds (one
/// reducer at a time holds the collective).
fn pipeline(mpi: &mut Gather, settings: &Settings) {
    const ROUNDS: usize = 5;
    let rank = mpi.mpi.rank();
    let round = Settings {
        warmup_steps: 2,
        steps: (settings.steps / ROUNDS).max(2),
        ..*settings
    };
    if rank == 0 {
        println!(
            "\n== 5. pipelining the passes over packed buckets, MPI ==\n\
             DenseMoeNet, {cap} MiB buckets; pipeline on and off in {ROUNDS} alternating \
             rounds of {w} warm-up + {s} measured steps; 'reduce' = median of the slowest \
             rank, phases = rank 0's medians (pipelined: the helper's pack+unpack overlap the \
             all-reduces); 'on/off' = ratio of the medians\n",
            cap = PIPELINE_CAP / (1024 * 1024),
            w = round.warmup_steps,
            s = round.steps,
        );
        PipelineRow::print_header("on/off");
    }
    for wire in [WireFormat::F32, WireFormat::Bf16] {
        let config = ReducerConfig::default()
            .with_wire(wire)
            .with_bucket_cap_bytes(PIPELINE_CAP);
        let mut runs = [Vec::new(), Vec::new()];
        for index in 0..ROUNDS {
            for turn in 0..2 {
                let which = (index + turn) % 2;
                let device = Default::default();
                let model = DenseMoeNet::<Ad>::new(settings.hidden, settings.experts, &device);
                let config = config.with_pipeline([Pipeline::On, Pipeline::Off][which]);
                let run = rank_loop(model, &mut mpi.mpi, round, config, |m, x, _| m.forward(x));
                runs[which].push(run);
            }
        }
        let [on, off] = runs.map(|runs| {
            let wall: Vec<Duration> = runs.iter().flat_map(|run| run.wall.clone()).collect();
            let stats: Vec<StepStats> = runs.into_iter().flat_map(|run| run.stats).collect();
            (mpi.slowest_median(&wall), stats)
        });
        if rank == 0 {
            let phase = |stats: &[StepStats], f: fn(&StepStats) -> Duration| {
                median(stats.iter().map(f).collect())
            };
            PipelineRow {
                wire,
                buckets: mean(on.1.iter().map(|s| s.buckets as f64)),
                reduce: [on.0, off.0],
                ratio: on.0.as_secs_f64() / off.0.as_secs_f64(),
                pack_unpack: [&on, &off].map(|(_, stats)| phase(stats, |s| s.pack + s.unpack)),
                all_reduce: [&on, &off].map(|(_, stats)| phase(stats, |s| s.all_reduce)),
            }
            .print();
        }
    }
}

/// The collective and the step numbers of the benchmark's own calls.
struct Gather {
    mpi: MpiCollective,
    step: u64,
}

impl Gather {
    fn tag(&mut self, op: Op) -> Tag {
        self.step += 1;
        Tag::new(self.step, op)
    }

    /// Every rank's `durations`, by rank.
    fn durations(&mut self, durations: &[Duration]) -> Vec<Vec<Duration>> {
        let bytes: Vec<u8> = durations
            .iter()
            .flat_map(|d| d.as_secs_f64().to_le_bytes())
            .collect();
        let tag = self.tag(Op::Barrier);
        self.mpi
            .all_gather_bytes(tag, &bytes)
            .expect("gather")
            .iter()
            .map(|bytes| {
                bytes
                    .chunks_exact(8)
                    .map(|b| Duration::from_secs_f64(f64::from_le_bytes(b.try_into().unwrap())))
                    .collect()
            })
            .collect()
    }

    /// Per call, the slowest rank's time; their median.
    fn slowest_median(&mut self, times: &[Duration]) -> Duration {
        let all = self.durations(times);
        median(slowest(all.iter().map(Vec::as_slice)))
    }

    /// Best over `reps` of the time for every rank to copy `bytes` at once.
    fn concurrent_copy(&mut self, bytes: usize, reps: usize) -> Duration {
        let len = (bytes / 4).max(1);
        let src: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let mut dst = vec![0.0f32; len];
        dst.copy_from_slice(&src); // page faults
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let tag = self.tag(Op::Barrier);
            self.mpi.barrier(tag).expect("barrier");
            let start = Instant::now();
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
            times.push(start.elapsed());
        }
        let all = self.durations(&times);
        (0..reps)
            .map(|rep| all.iter().map(|t| t[rep]).max().expect("ranks"))
            .min()
            .expect("reps")
    }

    /// One all-reduce of `len` f32 after a barrier, `calls` times.
    fn raw_all_reduce(&mut self, len: usize, calls: usize) -> Duration {
        let mut data = vec![1.0f32; len];
        let mut times = Vec::with_capacity(calls);
        for call in 0..calls + 3 {
            let tag = self.tag(Op::Barrier);
            self.mpi.barrier(tag).expect("barrier");
            let tag = self.tag(Op::Bucket(0));
            let start = Instant::now();
            self.mpi
                .all_reduce_sum(tag, WireBuf::F32(&mut data))
                .expect("all-reduce");
            let elapsed = start.elapsed();
            data.fill(1.0);
            if call >= 3 {
                times.push(elapsed);
            }
        }
        self.slowest_median(&times)
    }
}
