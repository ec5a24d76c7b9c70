//! The reduced gradients equal a single-process reference for random usage
//! patterns, world sizes, bucket caps, averaging modes and wire formats, and
//! exactly the parameters some rank used receive a gradient.

mod common;

use std::time::Duration;

use burn::optim::{GradientsAccumulator, GradientsParams};
use common::*;
use maskddp_runtime::{Averaging, Reducer, ReducerConfig, StepStats, ThreadGroup, WireFormat};

const EXPERTS: usize = 5;
const LIMIT: Duration = Duration::from_secs(60);

struct RankOutcome {
    /// Micro-batch routes of this rank.
    routes: Vec<Route>,
    /// This rank's own (accumulated) gradients, before reduction.
    local: Vec<Option<Vec<f32>>>,
    /// What the reducer returned.
    reduced: Vec<Option<Vec<f32>>>,
    stats: StepStats,
}

struct Case {
    seed: u64,
    world: usize,
    config: ReducerConfig,
    /// Micro-batch routes per rank.
    routes: Vec<Vec<Route>>,
}

fn random_case(seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let world = 1 + rng.below(8);
    // From a few bytes (one slot per bucket) to more than the whole model.
    let cap = [4, 24, 100, 500, 2000, 1 << 20][rng.below(6)];
    let averaging = if rng.chance(0.5) {
        Averaging::WorldSize
    } else {
        Averaging::Contributors
    };
    // Sparse patterns leave experts unused by every rank.
    let density = [0.1, 0.3, 0.6][rng.below(3)];
    let micro_batches = 1 + rng.below(2);
    let routes = (0..world)
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
    Case {
        seed,
        world,
        config: ReducerConfig::default()
            .with_bucket_cap_bytes(cap)
            .with_averaging(averaging),
        routes,
    }
}

fn run_case(case: &Case) -> Vec<RankOutcome> {
    let routes = case.routes.clone();
    let config = case.config;
    let seed = case.seed;
    all_ok(run_ranks(
        ThreadGroup::new(case.world),
        LIMIT,
        move |rank, collective| {
            let device = Default::default();
            let model = Moe::<Ad>::new(EXPERTS, &device);
            let (model, mut reducer) = Reducer::new(model, collective, config).unwrap();
            let mut accumulator = GradientsAccumulator::<Moe<Ad>>::new();
            for (micro, route) in routes[rank].iter().enumerate() {
                let x = input::<Ad>(seed * 1000 + rank as u64 * 10 + micro as u64, 3, &device);
                let y = reducer.forward(|| model.forward(x, route));
                let loss = (y.clone() * y).mean();
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
            }
            let grads = accumulator.grads();
            let local = grads_by_slot::<Ad, _>(&model, &grads);
            let grads = reducer.reduce(grads).unwrap();
            RankOutcome {
                routes: routes[rank].clone(),
                local,
                reduced: grads_by_slot::<Ad, _>(&model, &grads),
                stats: *reducer.last_stats(),
            }
        },
    ))
}

/// Checks one case against the reference; `tolerance` is relative to each
/// element's magnitude (floored at a thousandth of the slot's largest).
fn check_case(case: &Case, outcomes: &[RankOutcome], tolerance: f32) {
    let slots = 6 + 2 * EXPERTS;
    let used: Vec<Vec<bool>> = outcomes
        .iter()
        .map(|outcome| {
            let mut used = vec![false; slots];
            for route in &outcome.routes {
                for (slot, u) in used_slots(EXPERTS, route).into_iter().enumerate() {
                    used[slot] |= u;
                }
            }
            used
        })
        .collect();
    for slot in 0..slots {
        let contributors = used.iter().filter(|u| u[slot]).count();
        let context = format!(
            "seed {} world {} {:?} slot {slot}",
            case.seed, case.world, case.config
        );
        for (rank, outcome) in outcomes.iter().enumerate() {
            assert_eq!(
                outcome.reduced[slot].is_some(),
                contributors > 0,
                "{context}: rank {rank} gradient presence differs from the union of usage"
            );
            // The reducer must never see a gradient outside the local usage.
            assert!(
                used[rank][slot] || outcome.local[slot].is_none(),
                "{context}"
            );
        }
        if contributors == 0 {
            continue;
        }
        let len = outcomes[0].reduced[slot].as_ref().unwrap().len();
        let mut sum = vec![0.0f32; len];
        let mut abs_sum = vec![0.0f32; len];
        for outcome in outcomes {
            if let Some(local) = &outcome.local[slot] {
                for ((s, a), g) in sum.iter_mut().zip(&mut abs_sum).zip(local) {
                    *s += g;
                    *a += g.abs();
                }
            }
        }
        let divisor = match case.config.averaging {
            Averaging::WorldSize => case.world,
            Averaging::Contributors => contributors,
        } as f32;
        let expected: Vec<f32> = sum.iter().map(|s| s / divisor).collect();
        let scale = expected
            .iter()
            .fold(0.0f32, |m, e| m.max(e.abs()))
            .max(1e-20);
        let first = outcomes[0].reduced[slot].as_ref().unwrap();
        for (rank, outcome) in outcomes.iter().enumerate() {
            let reduced = outcome.reduced[slot].as_ref().unwrap();
            // Bit-identical on every rank.
            assert_eq!(
                reduced.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                first.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{context}: rank {rank} differs from rank 0"
            );
            for (i, (r, e)) in reduced.iter().zip(&expected).enumerate() {
                // Rounding the summands (compressed wire) errs relative to
                // their magnitudes, which cancellation can make exceed the sum's.
                let magnitude = e.abs().max(abs_sum[i] / divisor).max(scale * 1e-3);
                assert!(
                    (r - e).abs() <= tolerance * magnitude,
                    "{context}: element {i}: reduced {r}, reference {e}"
                );
            }
        }
    }
}

#[test]
fn reduced_gradients_equal_the_single_process_reference() {
    for seed in 0..60 {
        let case = random_case(seed);
        let outcomes = run_case(&case);
        check_case(&case, &outcomes, 1e-6);
        let stats = &outcomes[0].stats;
        assert!(stats.bytes_sent <= stats.dense_bytes + stats.usage_bytes);
    }
}

#[test]
fn compressed_wire_formats_stay_within_half_precision_tolerance() {
    for (wire, tolerance) in [(WireFormat::Bf16, 2e-2), (WireFormat::F16, 4e-3)] {
        for seed in 100..115 {
            let mut case = random_case(seed);
            case.config = case.config.with_wire(wire);
            let outcomes = run_case(&case);
            check_case(&case, &outcomes, tolerance);
            // Two bytes per element on the wire, plus four per usage count.
            let stats = &outcomes[0].stats;
            assert_eq!(
                stats.bytes_sent,
                2 * stats.elements_reduced as u64 + stats.usage_bytes
            );
        }
    }
}

#[test]
fn world_of_one_returns_its_own_gradients() {
    let case = Case {
        seed: 7,
        world: 1,
        config: ReducerConfig::default(),
        routes: vec![vec![Route {
            experts: vec![1, 3],
            head: true,
            ..Route::default()
        }]],
    };
    let outcomes = run_case(&case);
    check_case(&case, &outcomes, 0.0);
}

#[test]
fn statistics_count_skipped_parameters_and_bytes() {
    // Two ranks: rank 0 uses expert 0, rank 1 expert 0 and the head; experts
    // 1.. are skipped. Slot sizes: Linear(4, 6) = 24 + 6, Linear(6, 6) = 36 + 6.
    let case = Case {
        seed: 3,
        world: 2,
        config: ReducerConfig::default(),
        routes: vec![
            vec![Route {
                experts: vec![0],
                ..Route::default()
            }],
            vec![Route {
                experts: vec![0],
                head: true,
                ..Route::default()
            }],
        ],
    };
    let outcomes = run_case(&case);
    check_case(&case, &outcomes, 1e-6);
    let stats = outcomes[1].stats;
    let expert = 36 + 6;
    let reduced = 30 + expert + expert;
    let trainable = 30 + EXPERTS * expert + expert;
    assert_eq!(stats.step, 1);
    assert_eq!(stats.elements_reduced, reduced);
    assert_eq!(stats.params_reduced, 6);
    assert_eq!(stats.params_skipped, 2 * (EXPERTS - 1));
    assert_eq!(stats.elements_skipped, trainable - reduced);
    assert_eq!(stats.usage_bytes, 4 * (2 * EXPERTS + 2) as u64);
    assert_eq!(stats.bytes_sent, 4 * reduced as u64 + stats.usage_bytes);
    assert_eq!(stats.dense_bytes, 4 * trainable as u64);
    assert_eq!(stats.buckets, 1);
    println!("{stats}");
}

/// Tied weights: one parameter visited twice; its gradient must survive
/// (the second slot must not overwrite it with zeros).
#[derive(burn::module::Module, Debug)]
struct Tied<B: burn::tensor::backend::Backend> {
    first: burn::nn::Linear<B>,
    second: burn::nn::Linear<B>,
}

impl<B: burn::tensor::backend::Backend> maskddp_runtime::DdpModel<B> for Tied<B> {
    fn build_plan(&self, plan: &mut maskddp_runtime::PlanBuilder) {
        plan.always::<B, _>(&self.first);
        plan.always::<B, _>(&self.second);
    }

    fn record_always_used(&self) {}
}

#[test]
fn tied_weights_keep_their_gradient() {
    let results = all_ok(run_ranks(ThreadGroup::new(2), LIMIT, |rank, collective| {
        let device = Default::default();
        let linear = burn::nn::LinearConfig::new(D_IN, D_IN).init::<Ad>(&device);
        let _ = param_values::<Ad, _>(&linear); // initialize before tying
        let model = Tied {
            first: linear.clone(),
            second: linear,
        };
        let (model, mut reducer) =
            Reducer::new(model, collective, ReducerConfig::default()).unwrap();
        assert_eq!(reducer.plan().layout().len(), 4);
        let x = input::<Ad>(rank as u64, 2, &device);
        let y = reducer.forward(|| model.second.forward(model.first.forward(x)));
        let grads = GradientsParams::from_grads(y.sum().backward(), &model);
        let local = grads_by_slot::<Ad, _>(&model, &grads);
        let reduced = grads_by_slot::<Ad, _>(&model, &reducer.reduce(grads).unwrap());
        (local, reduced, *reducer.last_stats())
    }));
    for (_, reduced, stats) in &results {
        // The layout repeats the tied slots; the reduction counts them once.
        assert_eq!(stats.params_reduced, 2);
        for (slot, reduced) in reduced.iter().enumerate().take(2) {
            let expected: Vec<f32> = results[0].0[slot]
                .as_ref()
                .unwrap()
                .iter()
                .zip(results[1].0[slot].as_ref().unwrap())
                .map(|(a, b)| (a + b) / 2.0)
                .collect();
            assert_eq!(reduced.as_ref().unwrap(), &expected);
        }
    }
}

#[test]
fn set_up_broadcast_makes_replicas_identical_unless_turned_off() {
    for broadcast in [true, false] {
        let checksums = all_ok(run_ranks(
            ThreadGroup::new(3),
            LIMIT,
            move |_, collective| {
                let device = Default::default();
                let config = ReducerConfig::default().with_broadcast_parameters(broadcast);
                let (model, _reducer) =
                    Reducer::new(Moe::<Ad>::new(EXPERTS, &device), collective, config).unwrap();
                maskddp_runtime::parameter_checksum::<Ad, _>(&model)
            },
        ));
        let identical = checksums.iter().all(|c| *c == checksums[0]);
        assert_eq!(identical, broadcast, "broadcast {broadcast}: {checksums:?}");
    }
}

#[test]
fn a_boxed_collective_drives_a_reducer() {
    fn assert_send<T: Send>() {}
    assert_send::<Reducer<Ad, maskddp_runtime::ThreadCollective>>();
    assert_send::<Reducer<Ad, Box<dyn maskddp_runtime::Collective>>>();

    let results = all_ok(run_ranks(ThreadGroup::new(2), LIMIT, |rank, collective| {
        let device = Default::default();
        let collective: Box<dyn maskddp_runtime::Collective> = Box::new(collective);
        let (model, mut reducer) = Reducer::new(
            Moe::<Ad>::new(EXPERTS, &device),
            collective,
            ReducerConfig::default(),
        )
        .unwrap();
        assert_eq!((reducer.rank(), reducer.world_size()), (rank, 2));
        let route = Route {
            experts: vec![rank],
            ..Route::default()
        };
        let y = reducer.forward(|| model.forward(input::<Ad>(rank as u64, 2, &device), &route));
        let grads = GradientsParams::from_grads(y.sum().backward(), &model);
        let grads = reducer.reduce(grads).unwrap();
        grads.len()
    }));
    // Router (2) + experts 0 and 1 (2 each).
    assert_eq!(results, vec![6, 6]);
}
