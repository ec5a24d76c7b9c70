//! Failure injection through the reducer: each case ends in an error on every
//! surviving rank, within the timeout, naming what went wrong.

mod common;

use std::time::{Duration, Instant};

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use common::*;
use maskddp_runtime::{
    Averaging, Collective, DdpError, NonFinite, Pipeline, Reducer, ReducerConfig, StepStats,
    ThreadCollective, ThreadGroup, ThreadGroupConfig, WireFormat,
};

const EXPERTS: usize = 3;
/// The harness limit: a hang fails the test instead of blocking CI.
const LIMIT: Duration = Duration::from_secs(60);

fn group(world: usize, timeout: Duration) -> Vec<ThreadCollective> {
    ThreadGroup::with_config(world, ThreadGroupConfig::default().with_timeout(timeout))
}

fn plain_route(rank: usize, step: u64) -> Route {
    Route {
        experts: vec![(rank + step as usize) % EXPERTS],
        head: step.is_multiple_of(2),
        ..Route::default()
    }
}

/// One training step's forward, backward and reduce.
fn step(
    reducer: &mut Reducer<Ad, ThreadCollective>,
    model: &Moe<Ad>,
    rank: usize,
    route: &Route,
) -> Result<GradientsParams, DdpError> {
    let device = Default::default();
    let x = input::<Ad>(rank as u64 * 100 + reducer.step(), 2, &device);
    let y = reducer.forward(|| model.forward(x, route));
    let grads = GradientsParams::from_grads(y.sum().backward(), model);
    reducer.reduce(grads)
}

/// Runs `steps` steps per rank, letting `inject` alter a rank's behaviour;
/// returns each rank's first error (panics are reported as `Err(message)`).
fn run(
    world: usize,
    timeout: Duration,
    steps: u64,
    inject: fn(rank: usize, step: u64, &mut Reducer<Ad, ThreadCollective>) -> Injected,
) -> Vec<RankResult<Option<DdpError>>> {
    let start = Instant::now();
    let results = run_ranks(group(world, timeout), LIMIT, move |rank, collective| {
        let device = Default::default();
        let model = Moe::<Ad>::new(EXPERTS, &device);
        let (model, mut reducer) = match Reducer::new(model, collective, ReducerConfig::default()) {
            Ok(pair) => pair,
            Err(err) => return Some(err),
        };
        for s in 1..=steps {
            let mut route = plain_route(rank, s);
            match inject(rank, s, &mut reducer) {
                Injected::Nothing => {}
                Injected::Route(r) => route = r,
                Injected::Return => return None,
            }
            if let Err(err) = step(&mut reducer, &model, rank, &route) {
                return Some(err);
            }
        }
        None
    });
    assert!(start.elapsed() < LIMIT);
    results
}

enum Injected {
    Nothing,
    Route(Route),
    Return,
}

fn message(result: &RankResult<Option<DdpError>>) -> String {
    match result {
        Ok(Some(err)) => err.to_string(),
        Ok(None) => panic!("expected an error, the rank finished"),
        Err(panic) => panic!("unexpected panic: {panic}"),
    }
}

#[test]
fn a_rank_that_panics_mid_step_fails_the_others_promptly() {
    let timeout = Duration::from_secs(30);
    let start = Instant::now();
    let results = run(3, timeout, 5, |rank, step, _| {
        if rank == 1 && step == 3 {
            panic!("rank 1 crashes in its data loader");
        }
        Injected::Nothing
    });
    assert!(
        start.elapsed() < timeout,
        "survivors waited for the timeout"
    );
    for (rank, result) in results.iter().enumerate() {
        if rank == 1 {
            assert!(result.is_err(), "rank 1 should have panicked");
            continue;
        }
        let message = message(result);
        assert!(message.contains("step 3, usage exchange"), "{message}");
        assert!(
            message.contains("rank 1 left the group (its thread panicked)"),
            "{message}"
        );
    }
}

#[test]
fn a_rank_that_returns_early_fails_the_others() {
    let results = run(2, Duration::from_secs(30), 4, |rank, step, _| {
        if rank == 0 && step == 2 {
            Injected::Return
        } else {
            Injected::Nothing
        }
    });
    assert!(matches!(results[0], Ok(None)));
    let message = message(&results[1]);
    assert!(message.contains("step 2"), "{message}");
    assert!(message.contains("rank 0 left the group"), "{message}");
}

#[test]
fn a_rank_that_skips_a_step_is_a_mismatch_on_every_rank() {
    let results = run(3, Duration::from_secs(30), 5, |rank, step, reducer| {
        if rank == 2 && step == 3 {
            // Its step counter jumps: the next reduce is step 4.
            reducer.set_step(step);
        }
        Injected::Nothing
    });
    for result in &results {
        let message = message(result);
        assert!(message.contains("ranks disagree"), "{message}");
        assert!(
            message.contains("rank 2 is at step 4, usage exchange"),
            "{message}"
        );
        assert!(message.contains("at step 3, usage exchange"), "{message}");
    }
}

#[test]
fn a_rank_that_stops_arriving_is_named_in_a_timeout() {
    let timeout = Duration::from_millis(400);
    let results = run(4, timeout, 3, |rank, step, _| {
        if rank == 3 && step == 2 {
            std::thread::sleep(Duration::from_millis(1500));
        }
        Injected::Nothing
    });
    for result in &results {
        let message = message(result);
        assert!(message.contains("step 2, usage exchange"), "{message}");
        assert!(
            message.contains("rank 3 did not arrive within"),
            "{message}"
        );
    }
}

#[test]
fn different_models_report_the_first_differing_path_on_every_rank() {
    let results = run_ranks(
        group(3, Duration::from_secs(30)),
        LIMIT,
        |rank, collective| {
            let device = Default::default();
            // Rank 1 has a wider hidden layer.
            let hidden = if rank == 1 { 7 } else { D_HIDDEN };
            let model = Moe::<Ad>::with_hidden(EXPERTS, hidden, &device);
            Reducer::new(model, collective, ReducerConfig::default())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        },
    );
    for message in all_ok(results) {
        assert!(
            message.contains(
                "rank 1 has `router.weight` [4, 7] F32 always where rank 0 has \
                 `router.weight` [4, 6] F32 always"
            ),
            "{message}"
        );
    }

    let results = run_ranks(
        group(2, Duration::from_secs(30)),
        LIMIT,
        |rank, collective| {
            let device = Default::default();
            let model = Moe::<Ad>::new(EXPERTS + rank, &device);
            Reducer::new(model, collective, ReducerConfig::default())
                .map(|_| ())
                .unwrap_err()
                .to_string()
        },
    );
    for message in all_ok(results) {
        assert!(
            message.contains(
                "rank 1 has `experts.3.weight` [6, 6] F32 conditional where rank 0 has \
                 `head.weight` [6, 6] F32 conditional"
            ),
            "{message}"
        );
    }
}

#[test]
fn every_setting_that_must_agree_is_named_with_both_values() {
    type Change = fn(ReducerConfig, usize) -> ReducerConfig;
    let cases: [(&str, &str, &str, Change); 5] = [
        ("bucket_cap_bytes", "1001", "1000", |c, rank| {
            c.with_bucket_cap_bytes(1000 + rank)
        }),
        ("broadcast_parameters", "false", "true", |c, rank| {
            c.with_broadcast_parameters(rank == 0)
        }),
        ("averaging", "Contributors", "WorldSize", |c, rank| {
            c.with_averaging(if rank == 0 {
                Averaging::WorldSize
            } else {
                Averaging::Contributors
            })
        }),
        ("wire", "Bf16", "F32", |c, rank| {
            c.with_wire(if rank == 0 {
                WireFormat::F32
            } else {
                WireFormat::Bf16
            })
        }),
        ("non_finite", "Warn", "Error", |c, rank| {
            c.with_non_finite(if rank == 0 {
                NonFinite::Error
            } else {
                NonFinite::Warn
            })
        }),
    ];
    for (setting, theirs, ours, change) in cases {
        let results = run_ranks(
            group(3, Duration::from_secs(30)),
            LIMIT,
            move |rank, collective| {
                let device = Default::default();
                // Only rank 2 differs.
                let config = change(ReducerConfig::default(), rank.saturating_sub(1));
                Reducer::new(Moe::<Ad>::new(EXPERTS, &device), collective, config)
                    .map(|_| ())
                    .unwrap_err()
            },
        );
        for err in all_ok(results) {
            assert_eq!(
                err,
                DdpError::ConfigMismatch {
                    setting: setting.to_owned(),
                    rank: 2,
                    value: theirs.to_owned(),
                    rank0_value: ours.to_owned(),
                }
            );
            assert!(
                err.to_string().contains(&format!(
                    "rank 2 has `{setting}` = {theirs} where rank 0 has `{setting}` = {ours}"
                )),
                "{err}"
            );
            println!("{err}");
        }
    }
}

#[test]
fn a_use_the_plan_did_not_record_is_an_error_naming_the_path() {
    let results = run(3, Duration::from_secs(30), 3, |rank, step, _| {
        if rank == 0 && step == 2 {
            Injected::Route(Route {
                experts: vec![0],
                head: true,
                forget_head_record: true,
                ..Route::default()
            })
        } else {
            Injected::Nothing
        }
    });
    let own = message(&results[0]);
    assert!(
        own.contains(
            "step 2: parameter `head.weight` has a gradient, but no use of it was recorded"
        ),
        "{own}"
    );
    for result in &results[1..] {
        let message = message(result);
        assert!(message.contains("rank 0 aborted the group"), "{message}");
        assert!(message.contains("`head.weight`"), "{message}");
    }
}

#[test]
fn a_reduce_without_any_forward_is_caught() {
    let results = run_ranks(
        group(1, Duration::from_secs(30)),
        LIMIT,
        |rank, collective| {
            let device = Default::default();
            let model = Moe::<Ad>::new(EXPERTS, &device);
            let (model, mut reducer) =
                Reducer::new(model, collective, ReducerConfig::default()).unwrap();
            let route = plain_route(rank, 1);
            // Forgot `reducer.forward(|| …)`.
            let y = model.forward(input::<Ad>(1, 2, &device), &route);
            let grads = GradientsParams::from_grads(y.sum().backward(), &model);
            reducer.reduce(grads).unwrap_err()
        },
    );
    let err = all_ok(results).pop().unwrap();
    assert_eq!(err, DdpError::ReduceWithoutForward { step: 1, rank: 0 });
    assert!(err.to_string().contains("reducer.forward("), "{err}");
}

#[test]
fn a_gradient_on_a_frozen_parameter_is_an_error() {
    let results = run(2, Duration::from_secs(30), 2, |_, step, _| {
        if step == 2 {
            Injected::Route(Route {
                experts: vec![1],
                use_frozen: true,
                ..Route::default()
            })
        } else {
            Injected::Nothing
        }
    });
    for result in &results {
        let message = message(result);
        assert!(
            message.contains("step 2: parameter `frozen.weight` is declared frozen"),
            "{message}"
        );
    }
}

// ---------------------------------------------------------------------------
// Bad gradients, extra reduces

/// Runs `steps` steps per rank with `config`; `alter(rank, step, model,
/// grads)` may change a rank's gradients before they are reduced. Returns
/// each rank's first error, or its statistics of every step.
/// Alters rank `rank`'s gradients of step `step`.
type Alter = fn(rank: usize, step: u64, &Moe<Ad>, &mut GradientsParams);

fn run_altered(
    world: usize,
    config: ReducerConfig,
    steps: u64,
    alter: Alter,
) -> Vec<RankResult<Result<Vec<StepStats>, DdpError>>> {
    run_altered_wide(world, config, steps, D_HIDDEN, alter)
}

/// [`run_altered`] on a model of hidden width `hidden`.
fn run_altered_wide(
    world: usize,
    config: ReducerConfig,
    steps: u64,
    hidden: usize,
    alter: Alter,
) -> Vec<RankResult<Result<Vec<StepStats>, DdpError>>> {
    run_altered_on(world, config, steps, hidden, false, alter)
}

/// [`run_altered`] on ranks that sum only contiguous buffers (as MPI), with
/// buckets of 100 bytes: several packed buckets per step, pipelined.
fn run_pipelined(
    world: usize,
    config: ReducerConfig,
    steps: u64,
    alter: Alter,
) -> Vec<RankResult<Result<Vec<StepStats>, DdpError>>> {
    let config = config
        .with_bucket_cap_bytes(100)
        .with_pipeline(Pipeline::On);
    run_altered_on(world, config, steps, D_HIDDEN, true, alter)
}

fn run_altered_on(
    world: usize,
    config: ReducerConfig,
    steps: u64,
    hidden: usize,
    contiguous: bool,
    alter: Alter,
) -> Vec<RankResult<Result<Vec<StepStats>, DdpError>>> {
    let start = Instant::now();
    let results = run_ranks(
        group(world, Duration::from_secs(30)),
        LIMIT,
        move |rank, collective| {
            let device = Default::default();
            let model = Moe::<Ad>::with_hidden(EXPERTS, hidden, &device);
            let collective: Box<dyn Collective> = if contiguous {
                Box::new(Contiguous(collective))
            } else {
                Box::new(collective)
            };
            let (model, mut reducer) = Reducer::new(model, collective, config)?;
            let mut stats = Vec::new();
            for s in 1..=steps {
                // Every rank uses every expert and the head: all are reduced.
                let route = Route {
                    experts: (0..EXPERTS).collect(),
                    head: true,
                    ..Route::default()
                };
                let x = input::<Ad>(rank as u64 * 100 + s, 2, &device);
                let y = reducer.forward(|| model.forward(x, &route));
                let mut grads = GradientsParams::from_grads(y.sum().backward(), &model);
                alter(rank, s, &model, &mut grads);
                reducer.reduce(grads)?;
                stats.push(*reducer.last_stats());
            }
            Ok(stats)
        },
    );
    assert!(start.elapsed() < LIMIT);
    results
}

fn error_of(result: &RankResult<Result<Vec<StepStats>, DdpError>>) -> DdpError {
    match result {
        Ok(Err(err)) => err.clone(),
        Ok(Ok(_)) => panic!("expected an error, the rank finished"),
        Err(panic) => panic!("unexpected panic: {panic}"),
    }
}

fn stats_of(result: &RankResult<Result<Vec<StepStats>, DdpError>>) -> Vec<StepStats> {
    match result {
        Ok(Ok(stats)) => stats.clone(),
        Ok(Err(err)) => panic!("unexpected error: {err}"),
        Err(panic) => panic!("unexpected panic: {panic}"),
    }
}

/// Sets element `element` of the gradient of `param` (a `D`-dimensional
/// parameter) to `value`.
fn poke<const D: usize>(
    grads: &mut GradientsParams,
    param: &Param<Tensor<Ad, D>>,
    element: usize,
    value: f32,
) {
    let grad = grads
        .remove::<Inner, D>(param.id)
        .expect("a gradient to alter");
    let shape = grad.shape();
    let mut values = grad.into_data().to_vec::<f32>().unwrap();
    values[element] = value;
    grads.register::<Inner, D>(
        param.id,
        Tensor::from_data(TensorData::new(values, shape), &Default::default()),
    );
}

/// Replaces the gradient of `param` with zeros of shape `shape`.
fn replace<const D: usize, const E: usize>(
    grads: &mut GradientsParams,
    param: &Param<Tensor<Ad, D>>,
    shape: [usize; E],
) {
    grads
        .remove::<Inner, D>(param.id)
        .expect("a gradient to replace");
    grads.register::<Inner, E>(param.id, Tensor::zeros(shape, &Default::default()));
}

/// The other ranks are told which rank failed, at which step, and why.
fn assert_others_told(
    results: &[RankResult<Result<Vec<StepStats>, DdpError>>],
    culprit: usize,
    step: u64,
    path: &str,
) {
    for (rank, result) in results.iter().enumerate() {
        if rank == culprit {
            continue;
        }
        let message = error_of(result).to_string();
        assert!(
            message.contains(&format!("rank {culprit} aborted the group: step {step}:")),
            "rank {rank}: {message}"
        );
        assert!(message.contains(path), "rank {rank}: {message}");
    }
}

#[test]
fn a_gradient_of_the_wrong_shape_names_path_shapes_rank_and_step() {
    // `router.weight` is [4, 6]: a smaller gradient, a transposed one, a flat one.
    let alterations: [Alter; 3] = [
        |rank, step, model, grads| {
            if rank == 1 && step == 2 {
                replace(grads, &model.router.weight, [1, 3]);
            }
        },
        |rank, step, model, grads| {
            if rank == 1 && step == 2 {
                replace(grads, &model.router.weight, [6, 4]);
            }
        },
        |rank, step, model, grads| {
            if rank == 1 && step == 2 {
                replace(grads, &model.router.weight, [24]);
            }
        },
    ];
    for (alter, actual) in alterations
        .into_iter()
        .zip([vec![1, 3], vec![6, 4], vec![24]])
    {
        let results = run_altered(3, ReducerConfig::default(), 3, alter);
        let err = error_of(&results[1]);
        assert_eq!(
            err,
            DdpError::GradientShape {
                step: 2,
                rank: 1,
                path: "router.weight".to_owned(),
                expected: vec![4, 6],
                actual: actual.clone(),
            }
        );
        assert!(
            err.to_string().contains(&format!(
                "step 2: rank 1's gradient of `router.weight` has shape {actual:?}, but the \
                 parameter has shape [4, 6]"
            )),
            "{err}"
        );
        assert_others_told(&results, 1, 2, "`router.weight`");
        println!("{err}\n  other ranks: {}", error_of(&results[0]));
    }
}

/// Rank 2, step 3: NaN in `head.bias` and in `experts.1.weight` (element 5);
/// the expert comes first in slot order.
fn two_nans(rank: usize, step: u64, model: &Moe<Ad>, grads: &mut GradientsParams) {
    if rank == 2 && step == 3 {
        poke(grads, model.head.bias.as_ref().unwrap(), 0, f32::NAN);
        poke(grads, &model.experts[1].weight, 5, f32::NAN);
    }
}

/// Under `Warn`, [`two_nans`] is counted as two parameters on rank 2 at step
/// 3, and as two non-finite reduced gradients on every rank at that step (a
/// NaN summand makes the sum NaN); nothing at the other steps.
fn assert_two_nans_counted(results: &[RankResult<Result<Vec<StepStats>, DdpError>>], what: &str) {
    for (rank, result) in results.iter().enumerate() {
        for (index, stats) in stats_of(result).iter().enumerate() {
            let step = index as u64 + 1;
            let local = if rank == 2 && step == 3 { 2 } else { 0 };
            let reduced = if step == 3 { 2 } else { 0 };
            let context = format!("{what}: rank {rank} step {step}");
            assert_eq!(stats.non_finite_local, local, "{context}");
            assert_eq!(stats.non_finite_reduced, reduced, "{context}");
        }
    }
}

/// Rank 2 failed step 3 on the NaN at `element` of `experts.1.weight`
/// (the first in slot order, as [`two_nans`] and its wide variant place
/// them), naming itself, and the other ranks name it.
fn assert_first_nan_reported(
    results: &[RankResult<Result<Vec<StepStats>, DdpError>>],
    element: usize,
    context: &str,
) {
    assert_eq!(
        error_of(&results[2]),
        DdpError::NonFiniteGradient {
            step: 3,
            rank: 2,
            path: "experts.1.weight".to_owned(),
            element,
            value: "NaN".to_owned(),
        },
        "{context}"
    );
    assert_others_told(results, 2, 3, "`experts.1.weight`");
}

#[test]
fn a_non_finite_gradient_fails_the_step_naming_the_first_path_and_the_rank() {
    let results = run_altered(3, ReducerConfig::default(), 4, two_nans);
    let err = error_of(&results[2]);
    assert_eq!(
        err,
        DdpError::NonFiniteGradient {
            step: 3,
            rank: 2,
            path: "experts.1.weight".to_owned(),
            element: 5,
            value: "NaN".to_owned(),
        }
    );
    assert!(
        err.to_string()
            .starts_with("step 3: rank 2's gradient of `experts.1.weight` holds NaN (element 5)"),
        "{err}"
    );
    assert_others_told(&results, 2, 3, "`experts.1.weight`");
    println!("{err}\n  other ranks: {}", error_of(&results[0]));

    // An infinity, in a bias, on rank 0.
    let results = run_altered(
        2,
        ReducerConfig::default(),
        2,
        |rank, step, model, grads| {
            if rank == 0 && step == 1 {
                poke(
                    grads,
                    model.router.bias.as_ref().unwrap(),
                    2,
                    f32::NEG_INFINITY,
                );
            }
        },
    );
    let message = error_of(&results[0]).to_string();
    assert!(
        message.starts_with("step 1: rank 0's gradient of `router.bias` holds -inf (element 2)"),
        "{message}"
    );
    assert_others_told(&results, 0, 1, "`router.bias`");
}

#[test]
fn a_non_finite_gradient_is_counted_under_warn_and_passes_under_ignore() {
    let config = ReducerConfig::default().with_non_finite(NonFinite::Warn);
    let results = run_altered(3, config, 4, two_nans);
    assert_two_nans_counted(&results, "packed");
    for result in &results {
        let stats = stats_of(result);
        assert!(
            stats[2].to_string().contains("non-finite gradients"),
            "{}",
            stats[2]
        );
        assert!(!stats[1].to_string().contains("non-finite"), "{}", stats[1]);
    }

    let config = ReducerConfig::default().with_non_finite(NonFinite::Ignore);
    for result in run_altered(3, config, 4, two_nans) {
        for stats in stats_of(&result) {
            assert_eq!((stats.non_finite_local, stats.non_finite_reduced), (0, 0));
        }
    }
}

/// The same reports where the thread group sums gradients where they lie
/// and checks the sums as it forms them (gradients of thousands of elements;
/// the small model above packs them): a NaN names the rank and the first
/// path on every rank under `Error` and is counted under `Warn`, an
/// overflowing f32 sum is an error on every rank, under both averagings.
#[test]
fn non_finite_gradients_summed_where_they_lie_are_reported_alike() {
    // Hidden width 64: expert weights of 4096 elements.
    const WIDE: usize = 64;
    for averaging in [Averaging::WorldSize, Averaging::Contributors] {
        let config = ReducerConfig::default().with_averaging(averaging);
        // Two NaNs on rank 2, in different chunks of the buffer, and the
        // first in slot order far into its gradient.
        let results = run_altered_wide(3, config, 4, WIDE, |rank, step, model, grads| {
            if rank == 2 && step == 3 {
                poke(grads, model.head.bias.as_ref().unwrap(), 60, f32::NAN);
                poke(grads, &model.experts[1].weight, 4000, f32::NAN);
                poke(grads, &model.experts[1].weight, 4001, f32::INFINITY);
            }
        });
        assert_first_nan_reported(&results, 4000, &averaging.to_string());

        let config = ReducerConfig::default()
            .with_averaging(averaging)
            .with_non_finite(NonFinite::Warn);
        let results = run_altered_wide(3, config, 4, WIDE, two_nans);
        assert_two_nans_counted(&results, &averaging.to_string());

        let config = ReducerConfig::default().with_averaging(averaging);
        let results = run_altered_wide(3, config, 2, WIDE, |_, step, model, grads| {
            if step == 2 {
                poke(grads, &model.experts[0].weight, 3000, 3e38);
            }
        });
        for result in &results {
            let err = error_of(result);
            assert!(
                matches!(&err, DdpError::SumOverflow { step: 2, path, element: 3000, .. }
                    if path == "experts.0.weight"),
                "{averaging}: {err}"
            );
        }
    }
}

/// The same reports where buckets are pipelined: a rank whose gradient is
/// not finite fails before its bucket is sent, naming itself, and the others
/// name it; `Warn` counts alike; an overflowing sum, which each rank notices
/// at its own point of the pipeline, is reported alike by every rank; so is
/// a value beyond the f16 wire.
#[test]
fn non_finite_gradients_in_pipelined_buckets_are_reported_alike() {
    let results = run_pipelined(3, ReducerConfig::default(), 4, two_nans);
    assert_first_nan_reported(&results, 5, "pipelined");

    let config = ReducerConfig::default().with_non_finite(NonFinite::Warn);
    let results = run_pipelined(3, config, 4, two_nans);
    assert_two_nans_counted(&results, "pipelined");
    for result in &results {
        for stats in stats_of(result) {
            assert!(stats.pipelined_buckets > 1, "{stats}");
        }
    }

    // Every rank adds 3e38 to the last expert's weight: the sum overflows.
    // Reported after every bucket, with the pipeline or without.
    for pipeline in [Pipeline::On, Pipeline::Off] {
        let config = ReducerConfig::default()
            .with_bucket_cap_bytes(100)
            .with_pipeline(pipeline);
        let results = run_altered_on(3, config, 2, D_HIDDEN, true, |_, step, model, grads| {
            if step == 2 {
                poke(grads, &model.experts[EXPERTS - 1].weight, 3, 3e38);
            }
        });
        for result in &results {
            let err = error_of(result);
            assert!(
                matches!(&err, DdpError::SumOverflow { step: 2, path, element: 3, .. }
                    if *path == format!("experts.{}.weight", EXPERTS - 1)),
                "{pipeline:?}: {err}"
            );
        }
    }

    let config = ReducerConfig::default().with_wire(WireFormat::F16);
    let results = run_pipelined(2, config, 2, |rank, step, model, grads| {
        if rank == 1 && step == 2 {
            poke(grads, &model.head.weight, 7, 70000.0);
        }
    });
    assert!(
        matches!(&error_of(&results[1]), DdpError::WireOverflow { step: 2, rank: 1, path, element: 7, .. }
            if path == "head.weight"),
        "{}",
        error_of(&results[1])
    );
    assert_others_told(&results, 1, 2, "`head.weight`");
}

#[test]
fn the_summary_counts_non_finite_gradients() {
    let results = run_ranks(
        group(1, Duration::from_secs(30)),
        LIMIT,
        |rank, collective| {
            let device = Default::default();
            let config = ReducerConfig::default().with_non_finite(NonFinite::Warn);
            let (model, mut reducer) =
                Reducer::new(Moe::<Ad>::new(EXPERTS, &device), collective, config).unwrap();
            for step in 1..=3u64 {
                let route = plain_route(rank, step);
                let y = reducer.forward(|| model.forward(input::<Ad>(step, 2, &device), &route));
                let mut grads = GradientsParams::from_grads(y.sum().backward(), &model);
                if step != 2 {
                    poke(&mut grads, &model.router.weight, 0, f32::INFINITY);
                }
                reducer.reduce(grads).unwrap();
            }
            reducer.summary()
        },
    );
    let summary = all_ok(results).pop().unwrap();
    assert_eq!(summary.non_finite_local, 2);
    assert_eq!(summary.non_finite_reduced, 2);
    assert_eq!(summary.non_finite_steps, 2);
    assert!(
        summary
            .to_string()
            .contains("non-finite gradients: 2 on this rank, 2 reduced, in 2 step(s)"),
        "{summary}"
    );
}

#[test]
fn an_f16_wire_overflow_is_reported_not_sent_as_infinity() {
    // One rank's value does not fit f16.
    let config = ReducerConfig::default().with_wire(WireFormat::F16);
    let results = run_altered(2, config, 2, |rank, step, model, grads| {
        if rank == 1 && step == 2 {
            poke(grads, &model.head.weight, 7, 70000.0);
        }
    });
    let err = error_of(&results[1]);
    assert_eq!(
        err,
        DdpError::WireOverflow {
            step: 2,
            rank: 1,
            path: "head.weight".to_owned(),
            element: 7,
            value: "70000".to_owned(),
            wire: "f16".to_owned(),
            max: "65504".to_owned(),
        }
    );
    assert!(
        err.to_string().starts_with(
            "step 2: rank 1's gradient of `head.weight` holds 70000 (element 7), beyond the \
             f16 wire format's largest finite value 65504"
        ),
        "{err}"
    );
    assert_others_told(&results, 1, 2, "`head.weight`");
    println!("{err}\n  other ranks: {}", error_of(&results[0]));

    // Each rank's value fits, their sum does not: every rank reports it.
    let results = run_altered(3, config, 2, |_, step, model, grads| {
        if step == 2 {
            poke(grads, &model.experts[0].weight, 3, 30000.0);
        }
    });
    for result in &results {
        let err = error_of(result);
        assert!(
            matches!(&err, DdpError::SumOverflow { step: 2, path, element: 3, .. }
                if path == "experts.0.weight")
                || err
                    .to_string()
                    .contains("aborted the group: step 2: the sum over ranks"),
            "{err}"
        );
        assert!(err.to_string().contains("`experts.0.weight`"), "{err}");
        assert!(
            err.to_string().contains("overflows the f16 wire format"),
            "{err}"
        );
        println!("{err}");
    }

    // Under Warn both are counted; bf16 has f32's range and carries 70000.
    let config = config.with_non_finite(NonFinite::Warn);
    let results = run_altered(2, config, 1, |rank, _, model, grads| {
        if rank == 1 {
            poke(grads, &model.head.weight, 7, 70000.0);
        }
    });
    for (rank, result) in results.iter().enumerate() {
        let stats = stats_of(result)[0];
        assert_eq!(
            stats.non_finite_local,
            usize::from(rank == 1),
            "rank {rank}"
        );
        assert_eq!(stats.non_finite_reduced, 1, "rank {rank}");
    }
    let config = ReducerConfig::default().with_wire(WireFormat::Bf16);
    for result in run_altered(2, config, 1, |rank, _, model, grads| {
        if rank == 1 {
            poke(grads, &model.head.weight, 7, 70000.0);
        }
    }) {
        assert_eq!(stats_of(&result)[0].non_finite_reduced, 0);
    }
}

#[test]
fn an_extra_reduce_is_caught_when_it_happens_naming_the_rank_ahead() {
    let timeout = Duration::from_secs(30);
    let start = Instant::now();
    let results = run_ranks(group(3, timeout), LIMIT, |rank, collective| {
        let device = Default::default();
        let model = Moe::<Ad>::new(EXPERTS, &device);
        let (model, mut reducer) =
            Reducer::new(model, collective, ReducerConfig::default()).unwrap();
        for s in 1..=5 {
            step(&mut reducer, &model, rank, &plain_route(rank, s))?;
            if rank == 1 && s == 3 {
                // An extra reduce of leftover gradients, with no forward.
                let y = model.forward(input::<Ad>(9, 2, &device), &plain_route(rank, s));
                let grads = GradientsParams::from_grads(y.sum().backward(), &model);
                reducer.reduce(grads)?;
            }
        }
        Ok::<_, DdpError>(())
    });
    assert!(
        start.elapsed() < timeout,
        "the others waited for the timeout"
    );
    let results: Vec<DdpError> = all_ok(results)
        .into_iter()
        .map(|r| r.unwrap_err())
        .collect();
    assert_eq!(
        results[1],
        DdpError::ReduceWithoutForward { step: 4, rank: 1 }
    );
    println!("{}\n  other ranks: {}", results[1], results[0]);
    for (rank, err) in results.iter().enumerate() {
        let message = err.to_string();
        assert!(
            message.contains("step 4: rank 1 called `reduce` with no `reducer.forward"),
            "rank {rank}: {message}"
        );
        assert!(
            message.contains("rank 1 is a step ahead"),
            "rank {rank}: {message}"
        );
    }
}

#[test]
fn a_rank_with_nothing_to_compute_takes_part_with_reduce_without_forward() {
    let results = all_ok(run_ranks(
        group(3, Duration::from_secs(30)),
        LIMIT,
        |rank, collective| {
            let device = Default::default();
            let model = Moe::<Ad>::new(EXPERTS, &device);
            let (model, mut reducer) =
                Reducer::new(model, collective, ReducerConfig::default()).unwrap();
            let mut last = Vec::new();
            for s in 1..=3 {
                let grads = if rank == 2 && s == 3 {
                    // Its data ran out: it still takes part.
                    reducer
                        .reduce_without_forward(GradientsParams::new())
                        .unwrap()
                } else {
                    step(&mut reducer, &model, rank, &plain_route(rank, s)).unwrap()
                };
                last = grads_by_slot::<Ad, _>(&model, &grads);
            }
            last
        },
    ));
    // Everyone ends with the same reduced gradients of step 3.
    assert!(results[0].iter().any(Option::is_some));
    assert_eq!(results[2], results[0]);
    assert_eq!(results[1], results[0]);
}
