//! End to end through the real `#[ddp_model]` macro: for random per-rank
//! branch choices, world sizes, bucket caps and averaging modes, the gradients
//! the reducer hands back on thread ranks equal a single-process reference
//! computed in the test thread (SPEC §7), are bit-identical on every rank, and
//! exist for exactly the parameters in the union of the ranks' usage — usage
//! the test derives from the branch choices, not from the recorder, so the
//! macro's plan and instrumentation are checked along with the reducer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use burn::optim::GradientsParams;
use common::*;
use maskddp::{
    Averaging, DdpModel, Reducer, ReducerConfig, StepStats, ThreadGroup, ThreadGroupConfig, Usage,
};

const LIMIT: Duration = Duration::from_secs(90);
const CASES: u64 = 40;

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    world: usize,
    experts: usize,
    has_head: bool,
    config: ReducerConfig,
    choices: Vec<Choice>,
    rows: Vec<usize>,
}

impl Case {
    fn init_seed(&self, rank: usize) -> u64 {
        // Every rank starts from different values; the reducer must replace
        // them with rank 0's.
        self.seed * 1_000 + 7 + rank as u64
    }

    fn batch_seed(&self, rank: usize) -> u64 {
        self.seed * 1_000 + 500 + rank as u64
    }
}

fn random_case(seed: u64) -> Case {
    let mut rng = Rng::new(0x5eed_0000 + seed);
    let world = 1 + rng.below(6);
    let experts = 2 + rng.below(4);
    let has_head = rng.chance(0.75);
    // From one element per bucket to more than the whole model (~3 KB).
    let cap = rng.pick(&[4usize, 8, 40, 150, 600, 2_000, 1 << 20]);
    let averaging = if rng.chance(0.5) {
        Averaging::WorldSize
    } else {
        Averaging::Contributors
    };
    let choices = (0..world)
        .map(|_| random_choice(&mut rng, experts))
        .collect();
    let rows = (0..world).map(|_| 1 + rng.below(4)).collect();
    Case {
        seed,
        world,
        experts,
        has_head,
        config: ReducerConfig::default()
            .with_bucket_cap_bytes(cap)
            .with_averaging(averaging),
        choices,
        rows,
    }
}

struct RankOutcome {
    /// Parameter bits after `Reducer::new` (the broadcast).
    params: BTreeMap<String, Vec<u32>>,
    /// This rank's own gradients, before reduction.
    local: BTreeMap<String, Vec<f32>>,
    /// What the reducer returned.
    reduced: BTreeMap<String, Vec<f32>>,
    stats: StepStats,
    slots: usize,
}

fn run_case(case: &Case) -> Vec<RankOutcome> {
    let shared = case.clone();
    let group = ThreadGroup::with_config(
        case.world,
        ThreadGroupConfig::default().with_timeout(Duration::from_secs(30)),
    );
    all_ok(run_ranks(group, LIMIT, move |rank, collective| {
        let case = &shared;
        let device = Default::default();
        let model = with_values(
            Net::<Ad>::new(case.experts, case.has_head, &device),
            case.init_seed(rank),
        );
        let (model, mut reducer) = Reducer::new(model, collective, case.config).unwrap();
        let params = param_bits(&model);
        let (x, target) = batch::<Ad>(case.batch_seed(rank), case.rows[rank], &device);
        let choice = case.choices[rank];
        let out = reducer.forward(|| model.forward(x, choice));
        let grads = GradientsParams::from_grads(loss(out, target).backward(), &model);
        let local = grads_by_path(&model, &grads);
        let grads = reducer.reduce(grads).unwrap();
        RankOutcome {
            params,
            local,
            reduced: grads_by_path(&model, &grads),
            stats: *reducer.last_stats(),
            slots: reducer.plan().layout().len(),
        }
    }))
}

/// Each rank's gradients computed in this thread, from rank 0's initial
/// values and each rank's own batch and choice.
/// Gradients by path, one map per rank.
type PerRank = Vec<BTreeMap<String, Vec<f32>>>;

fn reference_grads(case: &Case) -> (PerRank, BTreeMap<String, Vec<u32>>) {
    let device = Default::default();
    let model = with_values(
        Net::<Ad>::new(case.experts, case.has_head, &device),
        case.init_seed(0),
    );
    let per_rank = (0..case.world)
        .map(|rank| {
            let (x, target) = batch::<Ad>(case.batch_seed(rank), case.rows[rank], &device);
            let out = model.forward(x, case.choices[rank]);
            let grads = GradientsParams::from_grads(loss(out, target).backward(), &model);
            grads_by_path(&model, &grads)
        })
        .collect();
    (per_rank, param_bits(&model))
}

fn check_case(case: &Case) {
    let context = format!(
        "case {} (world {}, {} experts, head {}, cap {} B, {:?}, choices {:?})",
        case.seed,
        case.world,
        case.experts,
        case.has_head,
        case.config.bucket_cap_bytes,
        case.config.averaging,
        case.choices
    );
    let (reference, initial) = reference_grads(case);
    let usage: Vec<BTreeSet<String>> = case
        .choices
        .iter()
        .map(|&choice| expected_usage(choice, case.experts, case.has_head))
        .collect();
    // Sanity of the derived usage: autodiff produces a gradient for exactly
    // the parameters the choice uses.
    for (rank, grads) in reference.iter().enumerate() {
        let with_grad: BTreeSet<String> = grads.keys().cloned().collect();
        assert_eq!(
            with_grad, usage[rank],
            "{context}: rank {rank}: derived usage"
        );
    }
    let union: BTreeSet<String> = usage.iter().flatten().cloned().collect();

    let outcomes = run_case(case);
    let first = &outcomes[0];
    for (rank, outcome) in outcomes.iter().enumerate() {
        // The broadcast gave every rank rank 0's values.
        assert_eq!(
            outcome.params, initial,
            "{context}: rank {rank}: initial parameters"
        );
        // Same values, same batch: the rank's own gradients are this thread's.
        assert_eq!(
            outcome.local.keys().collect::<Vec<_>>(),
            reference[rank].keys().collect::<Vec<_>>(),
            "{context}: rank {rank}: local gradient set"
        );
        for (path, grad) in &outcome.local {
            assert_eq!(
                grad.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                reference[rank][path]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>(),
                "{context}: rank {rank}: local gradient of {path}"
            );
        }
        // Exactly the union of the ranks' usage has a gradient.
        let reduced: BTreeSet<String> = outcome.reduced.keys().cloned().collect();
        assert_eq!(
            reduced, union,
            "{context}: rank {rank}: reduced parameter set"
        );
        // Bit-identical on every rank.
        for (path, grad) in &outcome.reduced {
            assert_eq!(
                grad.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                first.reduced[path]
                    .iter()
                    .map(|x| x.to_bits())
                    .collect::<Vec<_>>(),
                "{context}: rank {rank} differs from rank 0 on {path}"
            );
        }
        assert_eq!(outcome.stats.params_reduced, union.len(), "{context}");
        assert_eq!(
            outcome.stats.params_reduced + outcome.stats.params_skipped,
            outcome.slots,
            "{context}"
        );
    }

    // Against the reference: sum over the ranks that used a parameter, in
    // f64, divided by the world size or the number of contributors.
    let expected = reference_average(&reference, case.config.averaging);
    assert_eq!(
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        union,
        "{context}"
    );
    for (path, (mean, floor)) in &expected {
        assert_close(
            &format!("{context}: {path}"),
            &first.reduced[path],
            mean,
            floor,
            1e-6,
        );
    }
}

#[test]
fn plan_of_the_macro_model_matches_its_forward() {
    let model = Net::<Ad>::new(3, true, &Default::default());
    let plan = model.usage_plan();
    assert!(plan.undescribed().is_empty(), "{}", plan.table());
    let always = [
        "encoder.weight",
        "encoder.bias",
        "trunk.inner.weight",
        "trunk.inner.bias",
    ];
    for (slot, usage) in plan.layout().slots().iter().zip(plan.usage()) {
        if always.contains(&slot.path.as_str()) {
            assert_eq!(*usage, Usage::Always, "{}\n{}", slot.path, plan.table());
        } else {
            assert!(
                usage.is_conditional(),
                "{} is {usage:?}\n{}",
                slot.path,
                plan.table()
            );
        }
    }
    assert_eq!(plan.layout().len(), 2 + 4 + 3 * 4 + 4 + 2);
    // The paths the tests rely on.
    let paths: BTreeSet<&str> = plan
        .layout()
        .slots()
        .iter()
        .map(|s| s.path.as_str())
        .collect();
    for path in [
        "trunk.gate.bias",
        "experts.2.fc2.weight",
        "aux.gate.weight",
        "head.bias",
    ] {
        assert!(paths.contains(path), "no slot {path}:\n{}", plan.table());
    }
}

#[test]
fn reduced_gradients_equal_the_single_process_reference() {
    let mut seen_worlds = BTreeSet::new();
    let mut seen_modes = BTreeSet::new();
    for seed in 0..CASES {
        let case = random_case(seed);
        seen_worlds.insert(case.world);
        seen_modes.insert(case.config.averaging == Averaging::WorldSize);
        check_case(&case);
    }
    // The generator covers what it claims to.
    assert_eq!(seen_worlds.len(), 6, "world sizes covered: {seen_worlds:?}");
    assert_eq!(seen_modes.len(), 2);
}

/// Corner patterns the random draw may miss: nobody uses any conditional
/// parameter; every rank takes the same branch; one rank uses everything a
/// choice can reach while the others use nothing conditional.
#[test]
fn corner_patterns_equal_the_reference() {
    let plain = Choice {
        gated: false,
        route: Route::Direct,
        head: false,
    };
    let patterns: Vec<Vec<Choice>> = vec![
        vec![plain; 3],
        vec![
            Choice {
                gated: true,
                route: Route::Two(1, 1),
                head: true,
            };
            4
        ],
        vec![
            Choice {
                gated: true,
                route: Route::Aux { gated: true },
                head: true,
            },
            plain,
            Choice {
                route: Route::Get(9),
                ..plain
            },
        ],
        vec![plain],
    ];
    for (index, choices) in patterns.into_iter().enumerate() {
        for (averaging, cap) in [
            (Averaging::WorldSize, 4),
            (Averaging::Contributors, 1 << 20),
        ] {
            let world = choices.len();
            let case = Case {
                seed: 1_000 + index as u64,
                world,
                experts: 3,
                has_head: true,
                config: ReducerConfig::default()
                    .with_bucket_cap_bytes(cap)
                    .with_averaging(averaging),
                rows: vec![3; world],
                choices: choices.clone(),
            };
            check_case(&case);
        }
    }
}
