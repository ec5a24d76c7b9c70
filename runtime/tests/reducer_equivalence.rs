//! The reduced gradients equal a single-process reference for random usage
//! patterns, world sizes, bucket caps, averaging modes and wire formats, and
//! exactly the parameters for which some rank's backward produced a gradient
//! receive one: the plan and the records decide only what may travel.

mod common;

use std::time::Duration;

use burn::optim::{GradientsAccumulator, GradientsParams};
use common::*;
use maskddp_runtime::{
    Averaging, Collective, Pipeline, Reducer, ReducerConfig, StepStats, ThreadGroup, WireFormat,
};

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
    /// What the ranks look like to the reducer.
    ranks: Ranks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ranks {
    /// Thread-group ranks.
    ThreadGroup,
    /// Ranks that sum only contiguous buffers (as MPI), so that every bucket
    /// is packed; all on one machine.
    Contiguous,
    /// The same, each rank alone on its machine (as MPI across nodes).
    ContiguousApart,
}

/// A [`Contiguous`] rank that says it is alone on its machine.
struct Apart(Contiguous);

impl Collective for Apart {
    crate::forward_to_thread_group!();
    fn local_ranks(&self) -> usize {
        1
    }
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
        ranks: Ranks::ThreadGroup,
    }
}

fn run_case(case: &Case) -> Vec<RankOutcome> {
    let routes = case.routes.clone();
    let config = case.config;
    let seed = case.seed;
    let ranks = case.ranks;
    all_ok(run_ranks(
        ThreadGroup::new(case.world),
        LIMIT,
        move |rank, collective| {
            let device = Default::default();
            // Seeded: runs of one case start alike.
            let model = Moe::<Ad>::seeded(EXPERTS, seed * 100 + rank as u64, &device);
            let collective: Box<dyn Collective> = match ranks {
                Ranks::ThreadGroup => Box::new(collective),
                Ranks::Contiguous => Box::new(Contiguous(collective)),
                Ranks::ContiguousApart => Box::new(Apart(Contiguous(collective))),
            };
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
    for (rank, (outcome, used)) in outcomes.iter().zip(&used).enumerate() {
        for (slot, (local, used)) in outcome.local.iter().zip(used).enumerate() {
            // The reducer must never see a gradient outside the local usage.
            assert!(
                *used || local.is_none(),
                "seed {}: rank {rank} slot {slot}: a gradient outside the usage",
                case.seed
            );
        }
    }
    for slot in 0..slots {
        // The ranks whose backward really produced a gradient.
        let contributors = outcomes.iter().filter(|o| o.local[slot].is_some()).count();
        let context = format!(
            "seed {} world {} {:?} slot {slot}",
            case.seed, case.world, case.config
        );
        for (rank, outcome) in outcomes.iter().enumerate() {
            assert_eq!(
                outcome.reduced[slot].is_some(),
                contributors > 0,
                "{context}: rank {rank} gradient presence differs from the union of real gradients"
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
fn pipelined_buckets_give_the_bits_of_buckets_reduced_in_turn() {
    let mut pipelined = 0;
    for (wire, tolerance) in [
        (WireFormat::F32, 1e-6),
        (WireFormat::Bf16, 2e-2),
        (WireFormat::F16, 4e-3),
    ] {
        for seed in 300..312 {
            let mut case = random_case(seed);
            // Small buckets: several per step.
            case.config = case
                .config
                .with_wire(wire)
                .with_bucket_cap_bytes(100)
                .with_pipeline(Pipeline::On);
            case.ranks = Ranks::Contiguous;
            let on = run_case(&case);
            check_case(&case, &on, tolerance);
            case.config = case.config.with_pipeline(Pipeline::Off);
            let off = run_case(&case);
            for (rank, (on, off)) in on.iter().zip(&off).enumerate() {
                let bits = |grads: &[Option<Vec<f32>>]| -> Vec<Option<Vec<u32>>> {
                    grads
                        .iter()
                        .map(|g| g.as_ref().map(|g| g.iter().map(|x| x.to_bits()).collect()))
                        .collect()
                };
                assert_eq!(
                    bits(&on.reduced),
                    bits(&off.reduced),
                    "seed {seed} {wire}: rank {rank} differs with the pipeline"
                );
                assert_eq!(off.stats.pipelined_buckets, 0);
                // The lead bucket (f32) travels before the others, alone.
                assert!(on.stats.pipelined_buckets <= on.stats.buckets);
            }
            pipelined += on[0].stats.pipelined_buckets;
        }
    }
    assert!(pipelined > 0, "no step went through the pipeline");

    // `Auto` pipelines where the machine has two cores per rank on it: all
    // of the thread group's ranks, or one rank alone.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut case = random_case(301);
    assert!(case.world > 1, "a case with several ranks");
    case.config = case.config.with_bucket_cap_bytes(100);
    for (ranks, here) in [(Ranks::Contiguous, case.world), (Ranks::ContiguousApart, 1)] {
        case.ranks = ranks;
        let auto = run_case(&case);
        check_case(&case, &auto, 1e-6);
        let expected = cores >= 2 * here;
        for outcome in &auto {
            let stats = &outcome.stats;
            assert_eq!(
                stats.pipelined_buckets > 0,
                expected,
                "{ranks:?}, {cores} cores: {stats}"
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
        ranks: Ranks::ThreadGroup,
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
        ranks: Ranks::ThreadGroup,
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
    // One count per trainable slot: router, experts and head, not frozen.
    assert_eq!(stats.usage_bytes, 4 * (2 + 2 * EXPERTS + 2) as u64);
    assert_eq!(stats.bytes_sent, 4 * reduced as u64 + stats.usage_bytes);
    assert_eq!(stats.dense_bytes, 4 * trainable as u64);
    // The lead bucket (always-planned slots and the counts), then one of
    // the used experts.
    assert_eq!(stats.buckets, 2);
    assert_eq!(stats.exchange, Duration::ZERO);
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

// ---------------------------------------------------------------------------
// The result follows the real gradients, not the plan or the records

/// What one rank does with one parameter in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Uses it on the way to the loss: a real gradient.
    Grad,
    /// Uses it (planned always, or recorded) but its output never reaches
    /// the loss: no gradient.
    UsedNoGrad,
    /// Leaves it alone.
    Unused,
}

const ALWAYS: usize = 3;
const CONDITIONAL: usize = 5;
/// Columns of each parameter, times the pattern's width (rows are `D_IN`):
/// uneven slot sizes.
const COLUMNS: [usize; ALWAYS + CONDITIONAL] = [3, 1, 5, 2, 7, 4, 1, 6];

/// Single-tensor parameters, the first `ALWAYS` planned always, the rest
/// conditional; which of them reach the loss is chosen per rank and step.
#[derive(burn::module::Module, Debug)]
struct Pattern<B: burn::tensor::backend::Backend> {
    always: Vec<burn::module::Param<burn::tensor::Tensor<B, 2>>>,
    conditional: Vec<burn::module::Param<burn::tensor::Tensor<B, 2>>>,
}

impl<B: burn::tensor::backend::Backend> Pattern<B> {
    /// Parameter `i` has `COLUMNS[i] * width` columns: a width of 1 makes
    /// gradients small enough that the reducer packs them, 512 large enough
    /// that the thread group sums them where they lie.
    fn new(width: usize, device: &B::Device) -> Self {
        let mut rng = Rng::new(99);
        let mut param = |columns: usize| {
            let columns = columns * width;
            let values: Vec<f32> = (0..D_IN * columns).map(|_| rng.signed()).collect();
            burn::module::Param::from_tensor(burn::tensor::Tensor::from_data(
                burn::tensor::TensorData::new(values, [D_IN, columns]),
                device,
            ))
        };
        Self {
            always: COLUMNS[..ALWAYS].iter().map(|&c| param(c)).collect(),
            conditional: COLUMNS[ALWAYS..].iter().map(|&c| param(c)).collect(),
        }
    }

    /// `acts[i]` for parameter `i` (always ones first). What `#[ddp_model]`
    /// would generate: a conditional parameter is recorded where it is used,
    /// whether or not its output reaches the loss.
    fn forward(&self, x: burn::tensor::Tensor<B, 2>, acts: &[Act]) -> burn::tensor::Tensor<B, 1> {
        // A leaf that is not a parameter, so the loss has a graph even when
        // no parameter reaches it.
        let mut loss = burn::tensor::Tensor::<B, 1>::zeros([1], &x.device()).require_grad();
        let params = self.always.iter().chain(&self.conditional);
        for (index, (param, act)) in params.zip(acts).enumerate() {
            if *act == Act::Unused {
                continue;
            }
            if index >= ALWAYS {
                maskddp_runtime::__private::record_module::<B, _>(param);
            }
            let term = x.clone().matmul(param.val()).tanh().powf_scalar(2.0).mean();
            if *act == Act::Grad {
                loss = loss + term;
            }
        }
        loss
    }
}

impl<B: burn::tensor::backend::Backend> maskddp_runtime::DdpModel<B> for Pattern<B> {
    fn build_plan(&self, plan: &mut maskddp_runtime::PlanBuilder) {
        plan.always::<B, _>(&self.always);
        plan.conditional::<B, _>(&self.conditional, "if acts[i] != Unused");
    }

    fn record_always_used(&self) {}
}

struct PatternOutcome {
    local: Vec<Option<Vec<f32>>>,
    reduced: Vec<Option<Vec<f32>>>,
    stats: StepStats,
}

fn run_pattern(
    world: usize,
    width: usize,
    config: ReducerConfig,
    acts: Vec<Vec<Act>>,
    seed: u64,
) -> Vec<PatternOutcome> {
    all_ok(run_ranks(
        ThreadGroup::new(world),
        LIMIT,
        move |rank, collective| {
            let device = Default::default();
            let (model, mut reducer) =
                Reducer::new(Pattern::<Ad>::new(width, &device), collective, config).unwrap();
            let x = input::<Ad>(seed * 100 + rank as u64, 3, &device);
            let loss = reducer.forward(|| model.forward(x, &acts[rank]));
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let local = grads_by_slot::<Ad, _>(&model, &grads);
            let grads = reducer.reduce(grads).unwrap();
            PatternOutcome {
                local,
                reduced: grads_by_slot::<Ad, _>(&model, &grads),
                stats: *reducer.last_stats(),
            }
        },
    ))
}

#[test]
fn the_result_follows_the_real_gradients_for_every_pattern() {
    const SLOTS: usize = ALWAYS + CONDITIONAL;
    let mut rng = Rng::new(2024);
    let mut seen = [[false; 3]; 2]; // [always, conditional][act]
    let mut silent_slots = 0;
    for seed in 0..80 {
        let world = 1 + rng.below(6);
        let width = rng.pick(&[1, 512]);
        let cap = rng.pick(&[4, 24, 60, 100, 300, 1 << 20]);
        let averaging = rng.pick(&[Averaging::WorldSize, Averaging::Contributors]);
        let grad_chance = rng.pick(&[0.1, 0.35, 0.7]);
        let acts: Vec<Vec<Act>> = (0..world)
            .map(|_| {
                (0..SLOTS)
                    .map(|_| {
                        if rng.chance(grad_chance) {
                            Act::Grad
                        } else if rng.chance(0.5) {
                            Act::UsedNoGrad
                        } else {
                            Act::Unused
                        }
                    })
                    .collect()
            })
            .collect();
        let config = ReducerConfig::default()
            .with_bucket_cap_bytes(cap)
            .with_averaging(averaging);
        let outcomes = run_pattern(world, width, config, acts.clone(), seed);
        let context =
            format!("seed {seed} world {world} width {width} cap {cap} {averaging:?} {acts:?}");

        let mut reduced_elements = 0;
        let mut reduced_params = 0;
        for slot in 0..SLOTS {
            for (rank, act) in acts.iter().map(|a| a[slot]).enumerate() {
                seen[usize::from(slot >= ALWAYS)][act as usize] = true;
                // The pattern really is what the backward produced.
                assert_eq!(
                    outcomes[rank].local[slot].is_some(),
                    act == Act::Grad,
                    "{context}: slot {slot} rank {rank}: local gradient presence"
                );
            }
            let contributors = acts.iter().filter(|a| a[slot] == Act::Grad).count();
            for (rank, outcome) in outcomes.iter().enumerate() {
                assert_eq!(
                    outcome.reduced[slot].is_some(),
                    contributors > 0,
                    "{context}: slot {slot} rank {rank}: a reduced gradient exactly when some \
                     rank has a real one"
                );
            }
            if contributors == 0 {
                if acts.iter().any(|a| a[slot] == Act::UsedNoGrad) {
                    silent_slots += 1;
                }
                continue;
            }
            let numel = D_IN * COLUMNS[slot] * width;
            reduced_elements += numel;
            reduced_params += 1;
            let mut sum = vec![0.0f64; numel];
            let mut abs_sum = vec![0.0f64; numel];
            for outcome in &outcomes {
                if let Some(local) = &outcome.local[slot] {
                    for ((s, a), &g) in sum.iter_mut().zip(&mut abs_sum).zip(local) {
                        *s += f64::from(g);
                        *a += f64::from(g).abs();
                    }
                }
            }
            let divisor = match averaging {
                Averaging::WorldSize => world,
                Averaging::Contributors => contributors,
            } as f64;
            let first = outcomes[0].reduced[slot].as_ref().unwrap();
            for (rank, outcome) in outcomes.iter().enumerate() {
                let reduced = outcome.reduced[slot].as_ref().unwrap();
                assert_eq!(
                    bits(std::slice::from_ref(reduced)),
                    bits(std::slice::from_ref(first)),
                    "{context}: slot {slot}: rank {rank} differs from rank 0"
                );
                for (i, &r) in reduced.iter().enumerate() {
                    let expected = sum[i] / divisor;
                    // Relative to the summands' magnitude: f32 sums in another
                    // order err relative to it when terms cancel.
                    let magnitude = expected.abs().max(abs_sum[i] / divisor).max(1e-30);
                    assert!(
                        (f64::from(r) - expected).abs() <= 1e-6 * magnitude,
                        "{context}: slot {slot} element {i}: reduced {r}, reference {expected}"
                    );
                }
            }
        }
        // The gradient counts travel after the lead bucket: the first bucket
        // of the always-planned slots, packed in slot order up to the cap.
        // It is fixed before the counts are known, so it also carries (as
        // zeros) an always-planned slot that no rank has a gradient for.
        let mut lead_elements = 0;
        let mut silent_lead_elements = 0;
        for slot in 0..ALWAYS {
            let numel = D_IN * COLUMNS[slot] * width;
            if world == 1 || (lead_elements > 0 && lead_elements + numel > (cap / 4).max(1)) {
                break;
            }
            lead_elements += numel;
            if acts.iter().all(|a| a[slot] != Act::Grad) {
                silent_lead_elements += numel;
            }
        }
        for (rank, outcome) in outcomes.iter().enumerate() {
            let stats = &outcome.stats;
            let usage_bytes = if world > 1 { 4 * SLOTS as u64 } else { 0 };
            assert_eq!(stats.usage_bytes, usage_bytes, "{context}: rank {rank}");
            assert_eq!(
                stats.bytes_sent,
                4 * (reduced_elements + silent_lead_elements) as u64 + usage_bytes,
                "{context}: rank {rank}: bytes sent count only slots with a real gradient, and \
                 the lead bucket"
            );
            assert_eq!(stats.params_reduced, reduced_params, "{context}");
            assert_eq!(stats.params_skipped, SLOTS - reduced_params, "{context}");
            let total: usize = COLUMNS.iter().map(|c| D_IN * c * width).sum();
            assert_eq!(stats.elements_reduced, reduced_elements, "{context}");
            assert_eq!(stats.dense_bytes, 4 * total as u64, "{context}");
        }
    }
    // Every combination of kind and act occurred, and some slots were used
    // (planned or recorded) without a gradient on any rank.
    assert_eq!(seen, [[true; 3]; 2]);
    assert!(silent_slots > 10, "{silent_slots}");
}

#[test]
fn a_slot_used_everywhere_without_a_gradient_gets_none() {
    // Two ranks; the always-planned parameter 0 and the conditional
    // parameter 3 run on both ranks but never reach the loss. Neither gets
    // a gradient; the conditional one costs no bytes, the always-planned one
    // travels as zeros in the lead bucket (fixed before the counts are known,
    // it saves the separate exchange of counts).
    let mut acts = vec![Act::Grad; ALWAYS + CONDITIONAL];
    acts[0] = Act::UsedNoGrad;
    acts[ALWAYS] = Act::UsedNoGrad;
    for averaging in [Averaging::WorldSize, Averaging::Contributors] {
        let config = ReducerConfig::default().with_averaging(averaging);
        let outcomes = run_pattern(2, 1, config, vec![acts.clone(), acts.clone()], 5);
        for outcome in &outcomes {
            assert!(outcome.reduced[0].is_none());
            assert!(outcome.reduced[ALWAYS].is_none());
            assert!(outcome.reduced[1].is_some());
            let stats = outcome.stats;
            assert_eq!(stats.params_skipped, 2);
            let sent: usize =
                COLUMNS.iter().map(|c| D_IN * c).sum::<usize>() - D_IN * COLUMNS[ALWAYS];
            assert_eq!(stats.bytes_sent, 4 * sent as u64 + stats.usage_bytes);
        }
    }
}
