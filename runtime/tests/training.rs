//! Training a conditional model on four thread ranks keeps every replica
//! bit-identical, and parameters no rank used in a step do not move in that
//! step — not even under Adam, whose momentum would otherwise keep moving them.
//! The reduced gradients read by path are exactly those of the parameters
//! some rank used, and a statistics window taken after the warm-up covers the
//! steps after it.

mod common;

use std::time::Duration;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use common::*;
use maskddp_runtime::{
    Averaging, Reducer, ReducerConfig, StatsSummary, ThreadGroup, parameter_checksum,
};

const WORLD: usize = 4;
const STEPS: usize = 50;
const EXPERTS: usize = 6;
const LIMIT: Duration = Duration::from_secs(120);

/// Rank `rank`'s route at `step`. Experts 0–3 rotate; expert 4 is used only
/// by rank 2 in steps 10–19 and expert 5 only by rank 0 in steps 30–34, so
/// both sit unused by every rank for long stretches (after having moment
/// state, in expert 4's case). The head runs when `step % 7 == rank`, so
/// steps with `step % 7` in 4..7 use it nowhere.
fn route(rank: usize, step: usize) -> Route {
    let mut experts = vec![(rank + step / 5) % 4];
    if rank == 2 && (10..20).contains(&step) {
        experts.push(4);
    }
    if rank == 0 && (30..35).contains(&step) {
        experts.push(5);
    }
    Route {
        experts,
        head: step % 7 == rank,
        ..Route::default()
    }
}

/// Slots no rank uses at `step`.
fn globally_unused(step: usize) -> Vec<usize> {
    let mut used = [false; 6 + 2 * EXPERTS];
    for rank in 0..WORLD {
        for (slot, u) in used_slots(EXPERTS, &route(rank, step))
            .into_iter()
            .enumerate()
        {
            used[slot] |= u;
        }
    }
    (0..used.len()).filter(|&slot| !used[slot]).collect()
}

struct Replica {
    bits: Vec<Vec<u32>>,
    checksum: u64,
    /// [`held_loss`] of the model before the first step and after the last.
    held_loss: [f32; 2],
    summary: StatsSummary,
    /// Taken after the first [`WARM_UP`] steps, then at the end.
    windows: [StatsSummary; 2],
}

const WARM_UP: usize = 10;

/// Seed of the initial values: the same on every run, different on every
/// rank (the reducer starts every replica from rank 0's).
fn init_seed(rank: usize) -> u64 {
    0x5eed + rank as u64
}

/// This rank's input and a learnable target for it (a fixed function of the
/// input) at `step`.
fn batch<B: Backend>(rank: usize, step: usize, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let x = input::<B>((step * WORLD + rank) as u64, 8, device);
    let target = x.clone().slice([0..8, 0..2]).repeat_dim(1, 3) * 0.5;
    (x, target)
}

/// The summed loss over this rank's batches and routes of the first
/// [`HELD_STEPS`] steps: one fixed set of examples, so the value before
/// training and after it can be compared (a step's own loss swings with its
/// route and input).
fn held_loss(model: &Moe<Inner>, rank: usize) -> f32 {
    (0..HELD_STEPS)
        .map(|step| {
            let (x, target) = batch::<Inner>(rank, step, &Default::default());
            let y = model.forward(x, &route(rank, step));
            (y - target).powi_scalar(2).mean().into_scalar()
        })
        .sum()
}

const HELD_STEPS: usize = 10;

fn train<O>(make_optimizer: fn() -> O, lr: f64, averaging: Averaging) -> Vec<Replica>
where
    O: Optimizer<Moe<Ad>, Ad> + 'static,
{
    all_ok(run_ranks(
        ThreadGroup::new(WORLD),
        LIMIT,
        move |rank, collective| {
            let device = Default::default();
            let config = ReducerConfig::default()
                .with_averaging(averaging)
                .with_bucket_cap_bytes(256);
            let (mut model, mut reducer) = Reducer::new(
                Moe::<Ad>::seeded(EXPERTS, init_seed(rank), &device),
                collective,
                config,
            )
            .unwrap();
            let mut optimizer = make_optimizer();
            let held_before = held_loss(&model.valid(), rank);
            let mut warm_up = StatsSummary::default();
            for step in 0..STEPS {
                if step == WARM_UP {
                    warm_up = reducer.take_summary();
                }
                let (x, target) = batch::<Ad>(rank, step, &device);
                let y = reducer.forward(|| model.forward(x, &route(rank, step)));
                let loss = (y - target).powi_scalar(2).mean();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                let grads = reducer.reduce(grads).unwrap();

                let unused = globally_unused(step);
                let frozen = frozen_slots(EXPERTS);
                let slots = reducer.plan().layout().slots();
                let expected: Vec<&str> = (0..slots.len())
                    .filter(|slot| !unused.contains(slot) && !frozen.contains(slot))
                    .map(|slot| slots[slot].path.as_str())
                    .collect();
                let reduced: Vec<(&str, TensorData)> = reducer.gradients_by_path(&grads).collect();
                let paths: Vec<&str> = reduced.iter().map(|(path, _)| *path).collect();
                assert_eq!(
                    paths, expected,
                    "rank {rank} step {step}: reduced gradients"
                );
                for (path, grad) in &reduced {
                    let slot = slots.iter().find(|slot| slot.path == *path).unwrap();
                    assert_eq!(grad.shape.to_vec(), slot.shape, "{path}");
                }

                let before = param_values::<Ad, _>(&model);
                model = optimizer.step(lr, model, grads);
                let after = param_values::<Ad, _>(&model);
                for slot in 0..before.len() {
                    if unused.contains(&slot) {
                        assert_eq!(
                            bits(&before[slot..=slot]),
                            bits(&after[slot..=slot]),
                            "rank {rank} step {step}: slot {slot} moved although no rank used it"
                        );
                    }
                }
                // The frozen layer never changes.
                for slot in frozen_slots(EXPERTS) {
                    assert_eq!(bits(&before[slot..=slot]), bits(&after[slot..=slot]));
                }
            }
            reducer.barrier().unwrap();
            Replica {
                bits: bits(&param_values::<Ad, _>(&model)),
                checksum: parameter_checksum::<Ad, _>(&model),
                held_loss: [held_before, held_loss(&model.valid(), rank)],
                summary: reducer.summary(),
                windows: [warm_up, reducer.take_summary()],
            }
        },
    ))
}

fn check_replicas(replicas: &[Replica], name: &str) {
    for (rank, replica) in replicas.iter().enumerate().skip(1) {
        assert_eq!(
            replica.checksum, replicas[0].checksum,
            "{name}: rank {rank}"
        );
        assert!(
            replica.bits == replicas[0].bits,
            "{name}: rank {rank}'s parameters differ from rank 0's"
        );
    }
    // Training lowered every rank's loss on its held examples.
    for (rank, replica) in replicas.iter().enumerate() {
        let [before, after] = replica.held_loss;
        assert!(
            after < before,
            "{name}: rank {rank}'s held loss did not go down: {before} -> {after}"
        );
        println!("{name}: rank {rank}'s held loss {before:.3} -> {after:.3}");
    }
    let summary = &replicas[0].summary;
    assert_eq!(summary.steps, STEPS as u64);
    assert!(summary.bytes_sent < summary.dense_bytes);
    let [warm_up, rest] = &replicas[0].windows;
    assert_eq!(warm_up.steps, WARM_UP as u64);
    assert_eq!(rest.steps, (STEPS - WARM_UP) as u64);
    assert_eq!(warm_up.bytes_sent + rest.bytes_sent, summary.bytes_sent);
    assert_eq!(
        warm_up.params_skipped + rest.params_skipped,
        summary.params_skipped
    );
    println!("{name}:\n{summary}");
}

#[test]
fn sgd_replicas_stay_bit_identical() {
    let replicas = train(
        || SgdConfig::new().init::<Ad, Moe<Ad>>(),
        0.05,
        Averaging::WorldSize,
    );
    check_replicas(&replicas, "sgd");
}

#[test]
fn adam_replicas_stay_bit_identical_and_leave_unused_experts_alone() {
    let replicas = train(
        || AdamConfig::new().init::<Ad, Moe<Ad>>(),
        0.01,
        Averaging::Contributors,
    );
    check_replicas(&replicas, "adam");
}

#[test]
fn checksum_tells_models_apart() {
    let device = Default::default();
    let a = Moe::<Ad>::new(2, &device);
    // Reading the values initializes burn's lazy parameters before cloning.
    let values = param_values::<Ad, _>(&a);
    let b = a.clone();
    assert_eq!(
        parameter_checksum::<Ad, _>(&a),
        parameter_checksum::<Ad, _>(&b)
    );
    let mut changed = a.clone().valid();
    changed.router.bias = changed.router.bias.map(|bias| {
        bias.map(|tensor| {
            let mut data = values[1].clone();
            data[0] = f32::from_bits(data[0].to_bits() ^ 1);
            Tensor::from_data(TensorData::new(data, [values[1].len()]), &tensor.device())
        })
    });
    assert_ne!(
        parameter_checksum::<Inner, _>(&a.valid()),
        parameter_checksum::<Inner, _>(&changed)
    );
}
