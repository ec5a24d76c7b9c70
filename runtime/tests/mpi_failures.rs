//! Failure injection under `mpirun`: `mpi_failures <case>` trains a few
//! steps on every rank while one rank misbehaves. `.ci/mpi-tests` runs each
//! case under a hard deadline and checks that the job ends with a non-zero
//! exit and a message naming the cause. Outside `mpirun` it does nothing.
//!
//! Cases: `exit` (a rank exits mid-step), `kill` (a rank is SIGKILLed
//! mid-step), `sleep` (a rank sleeps past the timeout), `layout` (ranks build
//! different models), `step` (ranks disagree about the step).

mod common;

use std::process::ExitCode;
use std::time::Duration;

use burn::optim::GradientsParams;
use common::*;
use maskddp_runtime::{Collective, LaunchEnv, MpiCollective, MpiConfig, Reducer, ReducerConfig};

const EXPERTS: usize = 3;
/// The collective's timeout in these cases.
const TIMEOUT: Duration = Duration::from_secs(3);
/// The rank that misbehaves, at this step.
const CULPRIT: usize = 1;
const BAD_STEP: u64 = 3;

fn main() -> ExitCode {
    let case = std::env::args().nth(1).unwrap_or_default();
    if !["exit", "kill", "sleep", "layout", "step"].contains(&case.as_str()) {
        eprintln!("usage: mpi_failures exit|kill|sleep|layout|step (under mpirun)");
        return ExitCode::from(2);
    }
    if !matches!(LaunchEnv::from_env(), Ok(LaunchEnv::Mpi { .. })) {
        println!("not under mpirun: nothing to check (run .ci/mpi-tests)");
        return ExitCode::SUCCESS;
    }
    let mut mpi = MpiCollective::init(MpiConfig::default().with_timeout(TIMEOUT)).unwrap();
    let rank = mpi.rank();
    match train(&mut mpi, &case) {
        Ok(()) => {
            println!("rank {rank}: finished without an error");
            ExitCode::SUCCESS
        }
        Err(message) => {
            // One write: lines of several ranks interleave otherwise.
            let line = format!("rank {rank}: error: {message}\n");
            eprint!("{line}");
            ExitCode::FAILURE
        }
    }
}

fn train(mpi: &mut MpiCollective, case: &str) -> Result<(), String> {
    let rank = mpi.rank();
    let culprit = rank == CULPRIT;
    let device = Default::default();
    let experts = if case == "layout" && culprit {
        EXPERTS + 1
    } else {
        EXPERTS
    };
    let model = Moe::<Ad>::new(experts, &device);
    let (model, mut reducer) =
        Reducer::new(model, mpi, ReducerConfig::default()).map_err(|e| e.to_string())?;
    for step in 1..=6u64 {
        let route = Route {
            experts: vec![(rank + step as usize) % EXPERTS],
            head: step % 2 == 0,
            ..Route::default()
        };
        let x = input::<Ad>(rank as u64 * 100 + step, 2, &device);
        let y = reducer.forward(|| model.forward(x, &route));
        let grads = GradientsParams::from_grads(y.sum().backward(), &model);
        if culprit && step == BAD_STEP {
            match case {
                "exit" => std::process::exit(3),
                "kill" => {
                    let pid = std::process::id().to_string();
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid])
                        .status();
                    std::thread::sleep(Duration::from_secs(60));
                }
                "sleep" => std::thread::sleep(TIMEOUT * 10),
                // Its step counter jumps: this reduce is step BAD_STEP + 1.
                "step" => reducer.set_step(BAD_STEP),
                _ => {}
            }
        }
        reducer.reduce(grads).map_err(|e| e.to_string())?;
    }
    Ok(())
}
