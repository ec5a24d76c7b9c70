//! The MPI collective and the reducer above it, one rank per process: run
//! under `mpirun -np N` (`.ci/mpi-tests` runs N = 2, 3, 4). Outside `mpirun`
//! it does nothing.
//!
//! Checks: sums against a reference computed from every rank's inputs, with
//! bit-identical results on every rank; bf16 and f16 summed two bytes per
//! element, each combination added in f32 and rounded (on two ranks: the
//! single rounding of the sum, as the thread group computes it, and within
//! the rounding of each combination otherwise); the reducer's gradients against
//! the single-process reference, with exactly the union of real gradients;
//! replicas bit-identical after training with momentum, on f32 and bf16 wires.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use burn::optim::momentum::MomentumConfig;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer, SgdConfig};
use common::*;
use half::{bf16, f16};
use maskddp_runtime::{
    Averaging, Collective, LaunchEnv, MpiCollective, MpiConfig, Op, Pipeline, Reducer,
    ReducerConfig, Tag, ThreadGroup, WireBuf, WireFormat, parameter_checksum,
};

const EXPERTS: usize = 5;

fn main() -> ExitCode {
    if !matches!(LaunchEnv::from_env(), Ok(LaunchEnv::Mpi { .. })) {
        println!("not under mpirun: nothing to check (run .ci/mpi-tests)");
        return ExitCode::SUCCESS;
    }
    let config = MpiConfig::default().with_timeout(Duration::from_secs(60));
    let mut mpi = Checker {
        mpi: MpiCollective::init(config).expect("MPI starts"),
        step: 0,
    };
    let checks: [(&str, Check); 5] = [
        ("f32 and u32 sums, broadcast, gather", collective_operations),
        ("bf16 and f16 summed as 16-bit values", compressed_sums),
        ("reduced gradients equal the reference", reducer_equivalence),
        ("bf16 wire within tolerance", reducer_equivalence_bf16),
        ("replicas bit-identical after training", training_replicas),
    ];
    for (name, check) in checks {
        check(&mut mpi);
        if mpi.mpi.rank() == 0 {
            println!("ok: {name} (np {})", mpi.mpi.world_size());
        }
    }
    ExitCode::SUCCESS
}

type Check = fn(&mut Checker);

/// The collective, and the step numbers of the checks' own calls (kept
/// apart from each other so that a desynchronised check is a mismatch).
struct Checker {
    mpi: MpiCollective,
    step: u64,
}

impl Checker {
    fn tag(&mut self) -> Tag {
        self.step += 1;
        Tag::new(self.step, Op::Barrier)
    }

    /// Every rank's `bytes`, by rank.
    fn gather(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let tag = self.tag();
        self.mpi.all_gather_bytes(tag, bytes).unwrap()
    }

    fn gather_f32(&mut self, values: &[f32]) -> Vec<Vec<f32>> {
        let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.gather(&bytes)
            .iter()
            .map(|bytes| {
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect()
            })
            .collect()
    }

    /// Asserts every rank holds the same `bytes`.
    fn assert_same_everywhere(&mut self, bytes: &[u8], what: &str) {
        let all = self.gather(bytes);
        for (rank, theirs) in all.iter().enumerate() {
            assert!(theirs == &all[0], "{what}: rank {rank} differs from rank 0");
        }
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn collective_operations(c: &mut Checker) {
    let rank = c.mpi.rank();
    let world = c.mpi.world_size();
    // Every rank of these tests shares one machine.
    assert_eq!(c.mpi.local_ranks(), world);
    // Small and large: MPI switches algorithms with the message size.
    for len in [7, 100_003] {
        let mut rng = Rng::new(1000 + rank as u64);
        let input: Vec<f32> = (0..len).map(|_| rng.signed() * 10.0).collect();
        let mut data = input.clone();
        let tag = c.tag();
        c.mpi.all_reduce_sum(tag, WireBuf::F32(&mut data)).unwrap();
        let inputs = c.gather_f32(&input);
        for (i, sum) in data.iter().enumerate() {
            let exact: f64 = inputs.iter().map(|r| f64::from(r[i])).sum();
            let magnitude: f64 = inputs.iter().map(|r| f64::from(r[i]).abs()).sum();
            assert!(
                (f64::from(*sum) - exact).abs() <= 1e-6 * magnitude.max(1e-30),
                "element {i}: {sum} against {exact}"
            );
        }
        c.assert_same_everywhere(&f32_bytes(&data), "f32 sums");
    }

    let mut counts: Vec<u32> = (0..50).map(|i| (i * (rank + 1)) as u32).collect();
    let tag = c.tag();
    c.mpi.all_reduce_counts(tag, &mut counts).unwrap();
    let ranks_sum: usize = (1..=world).sum();
    for (i, count) in counts.iter().enumerate() {
        assert_eq!(*count as usize, i * ranks_sum);
    }

    let root = world - 1;
    let mut data: Vec<f32> = (0..33).map(|i| (i * (rank + 1)) as f32).collect();
    let tag = c.tag();
    c.mpi.broadcast(tag, root, &mut data).unwrap();
    for (i, x) in data.iter().enumerate() {
        assert_eq!(*x, (i * (root + 1)) as f32);
    }

    // Lengths differ by rank, rank 0's is empty.
    let local: Vec<u8> = (0..rank * 3).map(|i| (i + rank) as u8).collect();
    let all = c.gather(&local);
    assert_eq!(all.len(), world);
    for (r, bytes) in all.iter().enumerate() {
        let expected: Vec<u8> = (0..r * 3).map(|i| (i + r) as u8).collect();
        assert_eq!(bytes, &expected, "rank {r}'s bytes");
    }
    let tag = c.tag();
    c.mpi.barrier(tag).unwrap();
}

fn compressed_sums(c: &mut Checker) {
    let rank = c.mpi.rank();
    let world = c.mpi.world_size();
    let len = 4099;
    // Multiples of 1/256 below 1 in magnitude: exact in bf16 and f16, and
    // their sums exact in f32 in any order, but not in the 8 bits of bf16.
    // Each combination MPI makes is added in f32 and rounded: on two ranks
    // that is the single rounding of the exact sum (what the thread group
    // computes); on more, every partial sum rounds once more, at most half a
    // unit in the last place of a value no larger than the sum of magnitudes.
    let mut rng = Rng::new(7 + rank as u64);
    let exact: Vec<f32> = (0..len)
        .map(|_| (rng.below(511) as f32 - 255.0) / 256.0)
        .collect();
    let inputs = c.gather_f32(&exact);
    let sums: Vec<f32> = (0..len)
        .map(|i| inputs.iter().map(|r| r[i]).sum())
        .collect();
    let magnitudes: Vec<f32> = (0..len)
        .map(|i| inputs.iter().map(|r| r[i].abs()).sum())
        .collect();
    // Half a unit in the last place, relative: 2^-8 for bf16's 8 bits, 2^-11
    // for f16's 11; one rounding per combination, `world - 1` of them.
    let within = |result: &[f32], half_ulp: f32, name: &str| {
        for (i, &r) in result.iter().enumerate() {
            let bound = (world - 1) as f32 * half_ulp * magnitudes[i] * 2.0;
            assert!(
                (r - sums[i]).abs() <= bound,
                "{name} element {i}: {r} against the exact sum {}",
                sums[i]
            );
        }
    };

    let mut wire: Vec<bf16> = exact.iter().map(|&x| bf16::from_f32(x)).collect();
    let tag = c.tag();
    c.mpi.all_reduce_sum(tag, WireBuf::Bf16(&mut wire)).unwrap();
    if world == 2 {
        let expected: Vec<bf16> = sums.iter().map(|&s| bf16::from_f32(s)).collect();
        assert!(wire == expected, "bf16: not the single rounding of the sum");
        assert!(
            wire == thread_group_bf16(&inputs),
            "bf16: MPI and the thread group differ"
        );
    }
    within(
        &wire.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
        1.0 / 256.0,
        "bf16",
    );
    c.assert_same_everywhere(&half_bits(&wire), "bf16 sums of exact values");

    let mut wire: Vec<f16> = exact.iter().map(|&x| f16::from_f32(x)).collect();
    let tag = c.tag();
    c.mpi.all_reduce_sum(tag, WireBuf::F16(&mut wire)).unwrap();
    if world == 2 {
        let expected: Vec<f16> = sums.iter().map(|&s| f16::from_f32(s)).collect();
        assert!(wire == expected, "f16: not the single rounding of the sum");
    }
    within(
        &wire.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
        1.0 / 2048.0,
        "f16",
    );
    c.assert_same_everywhere(&half_bits(&wire), "f16 sums of exact values");

    // Arbitrary values, short and long (MPI picks its algorithm by size):
    // bit-identical on every rank.
    for len in [len, 1 << 20] {
        let mut wire: Vec<bf16> = (0..len).map(|_| bf16::from_f32(rng.signed())).collect();
        let tag = c.tag();
        c.mpi.all_reduce_sum(tag, WireBuf::Bf16(&mut wire)).unwrap();
        c.assert_same_everywhere(&half_bits(&wire), &format!("bf16 sums of {len}"));
    }
    assert!(world >= 2);
}

/// The bits of 16-bit values, as bytes.
fn half_bits<H: Copy + Into<f32>>(values: &[H]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&x| Into::<f32>::into(x).to_bits().to_le_bytes())
        .collect()
}

/// The thread group's bf16 sum of `inputs` (one vector per rank).
fn thread_group_bf16(inputs: &[Vec<f32>]) -> Vec<bf16> {
    let inputs = inputs.to_vec();
    all_ok(run_ranks(
        ThreadGroup::new(inputs.len()),
        Duration::from_secs(30),
        move |rank, mut group| {
            let mut wire: Vec<bf16> = inputs[rank].iter().map(|&x| bf16::from_f32(x)).collect();
            group
                .all_reduce_sum(Tag::new(1, Op::Bucket(0)), WireBuf::Bf16(&mut wire))
                .unwrap();
            wire
        },
    ))
    .swap_remove(0)
}

/// Per slot: a presence byte, then the values.
fn encode_slots(slots: &[Option<Vec<f32>>]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for slot in slots {
        match slot {
            None => bytes.push(0),
            Some(values) => {
                bytes.push(1);
                bytes.extend((values.len() as u32).to_le_bytes());
                bytes.extend(f32_bytes(values));
            }
        }
    }
    bytes
}

fn decode_slots(mut bytes: &[u8]) -> Vec<Option<Vec<f32>>> {
    let mut slots = Vec::new();
    while let Some((&present, rest)) = bytes.split_first() {
        bytes = rest;
        if present == 0 {
            slots.push(None);
            continue;
        }
        let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let values = bytes[4..4 + 4 * len]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        bytes = &bytes[4 + 4 * len..];
        slots.push(Some(values));
    }
    slots
}

fn reducer_equivalence(c: &mut Checker) {
    let pipelined: usize = (0..24)
        .map(|seed| equivalence_case(c, seed, WireFormat::F32, 1e-6))
        .sum();
    assert!(pipelined > 0, "no step went through the pipeline");
}

fn reducer_equivalence_bf16(c: &mut Checker) {
    for seed in 100..108 {
        equivalence_case(c, seed, WireFormat::Bf16, 2e-2);
    }
}

/// One random usage pattern (the same on every rank, drawn from `seed`):
/// each rank reduces its own micro-batches; every rank then checks the
/// result against the reference built from every rank's local gradients.
/// Even seeds pipeline their buckets, odd ones reduce them in turn. Returns
/// the number of buckets pipelined.
fn equivalence_case(c: &mut Checker, seed: u64, wire: WireFormat, tolerance: f32) -> usize {
    let rank = c.mpi.rank();
    let world = c.mpi.world_size();
    let mut rng = Rng::new(seed);
    let cap = rng.pick(&[4, 24, 100, 500, 2000, 1 << 20]);
    let averaging = rng.pick(&[Averaging::WorldSize, Averaging::Contributors]);
    let density = rng.pick(&[0.1, 0.3, 0.6]);
    let micro_batches = 1 + rng.below(2);
    let routes: Vec<Vec<Route>> = (0..world)
        .map(|_| {
            (0..micro_batches)
                .map(|_| Route {
                    experts: (0..EXPERTS).filter(|_| rng.chance(density)).collect(),
                    head: rng.chance(0.5),
                    ..Route::default()
                })
                .collect()
        })
        .collect();
    let config = ReducerConfig::default()
        .with_bucket_cap_bytes(cap)
        .with_averaging(averaging)
        .with_wire(wire)
        .with_pipeline(if seed.is_multiple_of(2) {
            Pipeline::On
        } else {
            Pipeline::Off
        });
    let context = format!("seed {seed} np {world} cap {cap} {averaging} {wire}");

    let device = Default::default();
    let (model, mut reducer) =
        Reducer::new(Moe::<Ad>::new(EXPERTS, &device), &mut c.mpi, config).unwrap();
    let mut accumulator = GradientsAccumulator::<Moe<Ad>>::new();
    for (micro, route) in routes[rank].iter().enumerate() {
        let x = input::<Ad>(seed * 1000 + rank as u64 * 10 + micro as u64, 3, &device);
        let y = reducer.forward(|| model.forward(x, route));
        let grads = GradientsParams::from_grads((y.clone() * y).mean().backward(), &model);
        accumulator.accumulate(&model, grads);
    }
    let grads = accumulator.grads();
    let local = grads_by_slot::<Ad, _>(&model, &grads);
    let reduced = grads_by_slot::<Ad, _>(&model, &reducer.reduce(grads).unwrap());
    let pipelined = reducer.last_stats().pipelined_buckets;
    drop(reducer);

    let locals: Vec<_> = c
        .gather(&encode_slots(&local))
        .iter()
        .map(|bytes| decode_slots(bytes))
        .collect();
    for (slot, reduced) in reduced.iter().enumerate() {
        let given: Vec<&Vec<f32>> = locals.iter().filter_map(|l| l[slot].as_ref()).collect();
        assert_eq!(
            reduced.is_some(),
            !given.is_empty(),
            "{context}: slot {slot}: gradient presence differs from the union of real gradients"
        );
        let Some(reduced) = reduced else { continue };
        let divisor = match averaging {
            Averaging::WorldSize => world,
            Averaging::Contributors => given.len(),
        } as f32;
        let expected: Vec<f32> = (0..reduced.len())
            .map(|i| given.iter().map(|g| g[i]).sum::<f32>() / divisor)
            .collect();
        let scale = expected.iter().fold(1e-20f32, |m, e| m.max(e.abs()));
        for (i, (r, e)) in reduced.iter().zip(&expected).enumerate() {
            let magnitude: f32 = given.iter().map(|g| g[i].abs()).sum::<f32>() / divisor;
            let magnitude = magnitude.max(scale * 1e-3);
            assert!(
                (r - e).abs() <= tolerance * magnitude,
                "{context}: slot {slot} element {i}: reduced {r}, reference {e}"
            );
        }
    }
    c.assert_same_everywhere(&encode_slots(&reduced), &context);
    pipelined
}

fn training_replicas(c: &mut Checker) {
    let rank = c.mpi.rank();
    let route = |step: usize| Route {
        experts: vec![(rank + step / 3) % EXPERTS],
        head: (step + rank).is_multiple_of(3),
        ..Route::default()
    };
    let batch = |step: usize| {
        let x = input::<Ad>((step * 16 + rank) as u64, 8, &Default::default());
        let target = x.clone().slice([0..8, 0..2]).repeat_dim(1, 3) * 0.5;
        (x, target)
    };
    // The summed loss over the first five steps' examples: one fixed set, so
    // the values before and after training compare (a step's own loss swings
    // with its route and input).
    let held_loss = |model: &Moe<Ad>| -> f32 {
        (0..5)
            .map(|step| {
                let (x, target) = batch(step);
                let y = model.forward(x, &route(step));
                (y - target).powi_scalar(2).mean().into_scalar()
            })
            .sum()
    };
    for wire in [WireFormat::F32, WireFormat::Bf16] {
        let device = Default::default();
        let config = ReducerConfig::default()
            .with_bucket_cap_bytes(256)
            .with_wire(wire);
        // Seeded per rank: reproducible, and the reducer starts every replica
        // from rank 0's values.
        let initial = Moe::<Ad>::seeded(EXPERTS, 0x5eed + rank as u64, &device);
        let (mut model, mut reducer) = Reducer::new(initial, &mut c.mpi, config).unwrap();
        let before = held_loss(&model);
        let mut optimizer = SgdConfig::new()
            .with_momentum(Some(MomentumConfig::new().with_momentum(0.9)))
            .init::<Ad, Moe<Ad>>();
        for step in 0..30 {
            let (x, target) = batch(step);
            let y = reducer.forward(|| model.forward(x, &route(step)));
            let loss = (y - target).powi_scalar(2).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let grads = reducer.reduce(grads).unwrap();
            model = optimizer.step(0.05, model, grads);
        }
        drop(reducer);
        let after = held_loss(&model);
        assert!(
            after < before,
            "{wire}: rank {rank}'s held loss did not go down: {before} -> {after}"
        );
        let checksum = parameter_checksum::<Ad, _>(&model);
        c.assert_same_everywhere(&checksum.to_le_bytes(), &format!("{wire} replicas"));
    }
}
