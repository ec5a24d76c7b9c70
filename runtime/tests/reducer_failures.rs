//! Failure injection through the reducer: each case ends in an error on every
//! surviving rank, within the timeout, naming what went wrong.

mod common;

use std::time::{Duration, Instant};

use burn::optim::GradientsParams;
use common::*;
use maskddp_runtime::{
    DdpError, Reducer, ReducerConfig, ThreadCollective, ThreadGroup, ThreadGroupConfig,
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
fn different_reducer_configurations_are_reported() {
    let results = run_ranks(
        group(2, Duration::from_secs(30)),
        LIMIT,
        |rank, collective| {
            let device = Default::default();
            let config = ReducerConfig::default().with_bucket_cap_bytes(1000 + rank);
            Reducer::new(Moe::<Ad>::new(EXPERTS, &device), collective, config)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        },
    );
    for message in all_ok(results) {
        assert!(message.contains("1001 byte buckets"), "{message}");
        assert!(
            message.contains("in the reducer configuration"),
            "{message}"
        );
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
fn a_forward_outside_the_usage_scope_is_caught() {
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
    assert!(
        matches!(err, DdpError::UnplannedGradient { step: 1, .. }),
        "{err}"
    );
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
