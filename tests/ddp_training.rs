//! Training the `#[ddp_model]` model on four thread ranks with burn's
//! optimizers: replicas stay bit-identical, a parameter no rank used in a
//! step does not move in that step (not even under Adam, whose momentum from
//! earlier use would move it if it got a zero gradient), and gradient
//! accumulation over micro-batches that take different branches reduces to
//! the single-process reference.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsAccumulator, GradientsParams, Optimizer, SgdConfig};
use common::*;
use maskddp::{
    Averaging, Reducer, ReducerConfig, ThreadGroup, ThreadGroupConfig, parameter_checksum,
};

const WORLD: usize = 4;
const STEPS: usize = 50;
const EXPERTS: usize = 4;
const LIMIT: Duration = Duration::from_secs(180);

/// Rank `rank`'s branches at `step`.
///
/// - Experts 0–2 rotate over the ranks; expert 3 is used only by rank 1 in
///   steps 5–14, then by nobody (so it carries Adam moments it must not act on).
/// - The aux block is used by rank 3 in steps 20–24 (gated on odd steps), by
///   nobody otherwise.
/// - The head runs when `step % 5 == rank`: nobody uses it when `step % 5 == 4`.
/// - The trunk's gate runs when `(step + rank) % 6 == 0`: nobody uses it when
///   `step % 6` is 1 or 2.
fn choice(rank: usize, step: usize) -> Choice {
    let route = if rank == 1 && (5..15).contains(&step) {
        Route::One(3)
    } else if rank == 3 && (20..25).contains(&step) {
        Route::Aux {
            gated: step % 2 == 1,
        }
    } else if rank == 2 && step.is_multiple_of(4) {
        Route::Two((step / 4) % 3, (step / 4 + 1) % 3)
    } else {
        Route::One((rank + step / 3) % 3)
    };
    Choice {
        gated: (step + rank).is_multiple_of(6),
        route,
        head: step % 5 == rank,
    }
}

/// The paths some rank uses at `step`.
fn globally_used(step: usize) -> BTreeSet<String> {
    (0..WORLD)
        .flat_map(|rank| expected_usage(choice(rank, step), EXPERTS, true))
        .collect()
}

struct Replica {
    params: BTreeMap<String, Vec<u32>>,
    checksum: u64,
    /// Per step: the paths whose values changed in that step.
    changed: Vec<BTreeSet<String>>,
    /// Per step: the paths the reducer returned a gradient for.
    reduced: Vec<BTreeSet<String>>,
}

fn train<O>(make_optimizer: fn() -> O, lr: f64, averaging: Averaging) -> Vec<Replica>
where
    O: Optimizer<Net<Ad>, Ad> + 'static,
{
    let group = ThreadGroup::with_config(
        WORLD,
        ThreadGroupConfig::default().with_timeout(Duration::from_secs(60)),
    );
    all_ok(run_ranks(group, LIMIT, move |rank, collective| {
        let device = Default::default();
        let config = ReducerConfig::default()
            .with_averaging(averaging)
            .with_bucket_cap_bytes(256);
        // Different initial values per rank: the broadcast must align them.
        let model = with_values(Net::<Ad>::new(EXPERTS, true, &device), 40 + rank as u64);
        let (mut model, mut reducer) = Reducer::new(model, collective, config).unwrap();
        let mut optimizer = make_optimizer();
        let mut changed = Vec::with_capacity(STEPS);
        let mut reduced = Vec::with_capacity(STEPS);
        for step in 0..STEPS {
            let (x, target) = batch::<Ad>((step * WORLD + rank) as u64, 4, &device);
            let out = reducer.forward(|| model.forward(x, choice(rank, step)));
            let grads = GradientsParams::from_grads(loss(out, target).backward(), &model);
            let grads = reducer.reduce(grads).unwrap();
            reduced.push(grads_by_path(&model, &grads).into_keys().collect());
            let before = param_bits(&model);
            model = optimizer.step(lr, model, grads);
            let after = param_bits(&model);
            changed.push(
                after
                    .iter()
                    .filter(|(path, bits)| before[*path] != **bits)
                    .map(|(path, _)| path.clone())
                    .collect(),
            );
        }
        reducer.barrier().unwrap();
        let model = model.valid();
        Replica {
            params: param_bits(&model),
            checksum: parameter_checksum(&model),
            changed,
            reduced,
        }
    }))
}

fn check_replicas(name: &str, replicas: &[Replica]) {
    let first = &replicas[0];
    for (rank, replica) in replicas.iter().enumerate() {
        assert_eq!(
            replica.checksum, first.checksum,
            "{name}: rank {rank}'s checksum differs from rank 0's"
        );
        for (path, bits) in &first.params {
            assert_eq!(
                &replica.params[path], bits,
                "{name}: rank {rank}'s {path} differs from rank 0's"
            );
        }
        assert_eq!(replica.params.len(), first.params.len());
    }
    let mut idle_expert_steps = 0;
    for step in 0..STEPS {
        let used = globally_used(step);
        for (rank, replica) in replicas.iter().enumerate() {
            assert_eq!(
                replica.reduced[step], used,
                "{name}: step {step}, rank {rank}: reduced set != union of usage"
            );
            // Exactly the globally used parameters move; the rest keep every bit.
            assert_eq!(
                replica.changed[step], used,
                "{name}: step {step}, rank {rank}: changed set != union of usage"
            );
        }
        if !used.contains("experts.3.fc1.weight") && step >= 15 {
            idle_expert_steps += 1;
        }
    }
    // The schedule does exercise "used earlier, idle now" for expert 3.
    assert!(idle_expert_steps >= 30, "{idle_expert_steps}");
    // And expert 3 did train while used.
    assert!((5..15).all(|step| first.changed[step].contains("experts.3.fc2.bias")));
}

#[test]
fn sgd_replicas_stay_bit_identical_and_idle_parameters_do_not_move() {
    let replicas = train(
        || SgdConfig::new().init::<Ad, Net<Ad>>(),
        0.05,
        Averaging::WorldSize,
    );
    check_replicas("sgd", &replicas);
}

#[test]
fn adam_replicas_stay_bit_identical_and_idle_parameters_keep_every_bit() {
    let replicas = train(
        || AdamConfig::new().init::<Ad, Net<Ad>>(),
        1e-2,
        Averaging::Contributors,
    );
    check_replicas("adam", &replicas);
    // Expert 3 after its last use (step 14) is bit-for-bit what it is at the
    // end: Adam's moments did not move it.
    let first = &replicas[0];
    for step in 15..STEPS {
        assert!(
            !first.changed[step]
                .iter()
                .any(|p| p.starts_with("experts.3.")),
            "step {step}: {:?}",
            first.changed[step]
        );
    }
}

/// Two micro-batches per step taking different branches, accumulated with
/// burn's `GradientsAccumulator` (usage OR-ed by `reducer.forward`), then one
/// reduce: equals the reference over every rank's and micro-batch's gradients.
#[test]
fn accumulated_micro_batches_reduce_to_the_reference() {
    for seed in 0..10u64 {
        let mut rng = Rng::new(0xacc0 + seed);
        let world = 1 + rng.below(4);
        let averaging = if seed % 2 == 0 {
            Averaging::WorldSize
        } else {
            Averaging::Contributors
        };
        let cap = rng.pick(&[4usize, 100, 1 << 20]);
        let micro: Vec<[Choice; 2]> = (0..world)
            .map(|_| {
                let a = random_choice(&mut rng, EXPERTS);
                let mut b = random_choice(&mut rng, EXPERTS);
                while expected_usage(b, EXPERTS, true) == expected_usage(a, EXPERTS, true) {
                    b = random_choice(&mut rng, EXPERTS);
                }
                [a, b]
            })
            .collect();
        let batch_seed = move |rank: usize, m: usize| seed * 100 + (rank * 2 + m) as u64;
        let context = format!("seed {seed}: world {world}, {averaging:?}, cap {cap}, {micro:?}");

        // Reference, in this thread, from rank 0's initial values.
        let device = Default::default();
        let reference_model = with_values(Net::<Ad>::new(EXPERTS, true, &device), seed);
        let per_rank: Vec<BTreeMap<String, Vec<f32>>> = (0..world)
            .map(|rank| {
                let mut sum: BTreeMap<String, Vec<f32>> = BTreeMap::new();
                for (m, &c) in micro[rank].iter().enumerate() {
                    let (x, target) = batch::<Ad>(batch_seed(rank, m), 3, &device);
                    let out = reference_model.forward(x, c);
                    let grads =
                        GradientsParams::from_grads(loss(out, target).backward(), &reference_model);
                    for (path, grad) in grads_by_path(&reference_model, &grads) {
                        match sum.get_mut(&path) {
                            Some(acc) => acc.iter_mut().zip(&grad).for_each(|(a, g)| *a += g),
                            None => {
                                sum.insert(path, grad);
                            }
                        }
                    }
                }
                sum
            })
            .collect();
        let union: BTreeSet<String> = micro
            .iter()
            .flatten()
            .flat_map(|&c| expected_usage(c, EXPERTS, true))
            .collect();
        let expected = reference_average(&per_rank, averaging);
        assert_eq!(
            expected.keys().cloned().collect::<BTreeSet<_>>(),
            union,
            "{context}"
        );

        let micro_ranks = micro.clone();
        let config = ReducerConfig::default()
            .with_averaging(averaging)
            .with_bucket_cap_bytes(cap);
        let outcomes = all_ok(run_ranks(
            ThreadGroup::new(world),
            LIMIT,
            move |rank, collective| {
                let device = Default::default();
                let model = with_values(
                    Net::<Ad>::new(EXPERTS, true, &device),
                    seed + 17 * rank as u64,
                );
                let (model, mut reducer) = Reducer::new(model, collective, config).unwrap();
                let mut accumulator = GradientsAccumulator::<Net<Ad>>::new();
                for (m, &c) in micro_ranks[rank].iter().enumerate() {
                    let (x, target) = batch::<Ad>(batch_seed(rank, m), 3, &device);
                    let out = reducer.forward(|| model.forward(x, c));
                    let grads = GradientsParams::from_grads(loss(out, target).backward(), &model);
                    accumulator.accumulate(&model, grads);
                }
                let grads = accumulator.grads();
                let local = grads_by_path(&model, &grads);
                let grads = reducer.reduce(grads).unwrap();
                (local, grads_by_path(&model, &grads))
            },
        ));

        let first = &outcomes[0].1;
        for (rank, (local, reduced)) in outcomes.iter().enumerate() {
            // The accumulator's sum is this thread's, bit for bit.
            assert_eq!(
                local, &per_rank[rank],
                "{context}: rank {rank}: accumulated gradients"
            );
            assert_eq!(
                reduced.keys().cloned().collect::<BTreeSet<_>>(),
                union,
                "{context}: rank {rank}: reduced set"
            );
            for (path, grad) in reduced {
                let bits = |v: &Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(grad),
                    bits(&first[path]),
                    "{context}: rank {rank}: {path}"
                );
            }
        }
        for (path, (mean, floor)) in &expected {
            assert_close(
                &format!("{context}: {path}"),
                &first[path],
                mean,
                floor,
                1e-6,
            );
        }
    }
}
