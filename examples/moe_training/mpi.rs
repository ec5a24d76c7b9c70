//! `--collective mpi`: this process is one rank of an `mpirun` job.

use maskddp::Launch;

use super::{Args, Failure};

const START: &str = "mpirun -np 4 target/release/examples/moe_training --collective mpi";

/// Trains this process's rank (see `process`).
pub fn run(args: Args) -> Result<bool, Failure> {
    let mut collective = match maskddp::init_from_env() {
        Ok(Launch::Mpi(collective)) => collective,
        Ok(Launch::Threads) => {
            return Err(Failure::Usage(format!(
                "`--collective mpi` runs one rank per process; start it with `{START}`"
            )));
        }
        #[cfg(feature = "nccl")]
        Ok(Launch::Nccl(_)) => {
            return Err(Failure::Usage(
                "torchrun-style variables (RANK, MASTER_ADDR, ...) are set: they start the \
                 NCCL collective; use `--collective nccl`"
                    .to_owned(),
            ));
        }
        Err(err) => return Err(Failure::Usage(err.to_string())),
    };
    super::process::run::<super::Train, _>(args, &mut *collective, &Default::default())
}
