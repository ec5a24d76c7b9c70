//! One launch story: which collective this process runs, read from the
//! variables its launcher set.

use std::fmt;

#[cfg(feature = "mpi")]
use crate::collective::{MpiCollective, MpiConfig, MpiInitError};
#[cfg(feature = "nccl")]
use crate::collective::{NcclCollective, NcclConfig};

/// How this process was launched, as its environment tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchEnv {
    /// Started by `mpirun`/`mpiexec`: OpenMPI's `OMPI_COMM_WORLD_RANK` and
    /// `OMPI_COMM_WORLD_SIZE`, or the PMI variables `PMI_RANK` and `PMI_SIZE`
    /// of MPICH's launcher.
    Mpi {
        /// This process's rank.
        rank: usize,
        /// Number of processes.
        world_size: usize,
    },
    /// Started torchrun-style: `RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
    /// `MASTER_PORT` (the rendezvous of the NCCL collective).
    Torchrun {
        /// This process's rank.
        rank: usize,
        /// Number of processes.
        world_size: usize,
        /// Host of rank 0's rendezvous.
        master_addr: String,
        /// Port of rank 0's rendezvous.
        master_port: u16,
    },
    /// No launcher: ranks are threads of this process.
    Threads,
}

/// A launcher's variables, the first being the one that identifies it.
struct Launcher {
    name: &'static str,
    rank: &'static str,
    size: &'static str,
    rest: &'static [&'static str],
}

const OPENMPI: Launcher = Launcher {
    name: "mpirun (OpenMPI)",
    rank: "OMPI_COMM_WORLD_RANK",
    size: "OMPI_COMM_WORLD_SIZE",
    rest: &[],
};
const PMI: Launcher = Launcher {
    name: "mpiexec (PMI)",
    rank: "PMI_RANK",
    size: "PMI_SIZE",
    rest: &[],
};
const TORCHRUN: Launcher = Launcher {
    name: "torchrun-style launch",
    rank: "RANK",
    size: "WORLD_SIZE",
    rest: &["MASTER_ADDR", "MASTER_PORT"],
};

impl LaunchEnv {
    /// Reads this process's environment.
    pub fn from_env() -> Result<Self, LaunchError> {
        Self::detect(|name| std::env::var(name).ok())
    }

    /// Decides from the variables `var` returns: MPI's first, then
    /// torchrun's, else threads. A launcher whose variables are only partly
    /// set, or set to nonsense, is an error naming the variable.
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Result<Self, LaunchError> {
        for mpi in [&OPENMPI, &PMI] {
            if let Some((rank, world_size)) = mpi.rank_and_size(&var)? {
                return Ok(LaunchEnv::Mpi { rank, world_size });
            }
        }
        let Some((rank, world_size)) = TORCHRUN.rank_and_size(&var)? else {
            return Ok(LaunchEnv::Threads);
        };
        let (master_addr, master_port) = TORCHRUN.master(&var)?;
        Ok(LaunchEnv::Torchrun {
            rank,
            world_size,
            master_addr,
            master_port,
        })
    }
}

impl Launcher {
    /// `None` if none of this launcher's variables is set.
    fn rank_and_size(
        &self,
        var: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<(usize, usize)>, LaunchError> {
        let names = [self.rank, self.size]
            .into_iter()
            .chain(self.rest.iter().copied());
        if names.clone().all(|name| var(name).is_none()) {
            return Ok(None);
        }
        let number = |name: &'static str, expected: String| {
            let value = self.required(var, name)?;
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| LaunchError::Invalid {
                    variable: name,
                    value: value.clone(),
                    expected,
                })
        };
        let size = number(self.size, "a number of processes".to_owned())?;
        if size == 0 {
            return Err(LaunchError::Invalid {
                variable: self.size,
                value: "0".to_owned(),
                expected: "at least one process".to_owned(),
            });
        }
        let rank = number(self.rank, format!("a rank below {} = {size}", self.size))?;
        if rank >= size {
            return Err(LaunchError::Invalid {
                variable: self.rank,
                value: rank.to_string(),
                expected: format!("a rank below {} = {size}", self.size),
            });
        }
        Ok(Some((rank, size)))
    }

    /// Rank 0's address and port (`MASTER_ADDR`, `MASTER_PORT`).
    fn master(&self, var: &impl Fn(&str) -> Option<String>) -> Result<(String, u16), LaunchError> {
        let addr = self.required(var, "MASTER_ADDR")?;
        let port = self.required(var, "MASTER_PORT")?;
        let port = port.trim().parse().map_err(|_| LaunchError::Invalid {
            variable: "MASTER_PORT",
            value: port.clone(),
            expected: "a TCP port number (1 to 65535)".to_owned(),
        })?;
        Ok((addr, port))
    }

    fn required(
        &self,
        var: &impl Fn(&str) -> Option<String>,
        name: &'static str,
    ) -> Result<String, LaunchError> {
        var(name).ok_or_else(|| LaunchError::Missing {
            launcher: self.name,
            missing: name,
            needed: [self.rank, self.size]
                .iter()
                .chain(self.rest)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// The collective [`init_from_env`] picked.
#[derive(Debug)]
pub enum Launch {
    /// No launcher: run the ranks as threads of this process, with a
    /// [`ThreadGroup`](crate::ThreadGroup) of the size you choose.
    Threads,
    /// Started by `mpirun`: this process is one rank.
    #[cfg(feature = "mpi")]
    Mpi(Box<MpiCollective>),
    /// Started torchrun-style: this process is one GPU's rank.
    #[cfg(feature = "nccl")]
    Nccl(Box<NcclCollective>),
}

/// Picks the collective from the environment (see [`LaunchEnv::detect`]):
/// under `mpirun` it initialises MPI and returns this process's rank; with
/// torchrun-style variables it runs the NCCL rendezvous (see [`NcclEnv`]);
/// with neither,
/// it returns [`Launch::Threads`]. A launcher this build cannot serve is an
/// error naming the cargo feature it needs.
pub fn init_from_env() -> Result<Launch, LaunchError> {
    match LaunchEnv::from_env()? {
        LaunchEnv::Threads => Ok(Launch::Threads),
        #[cfg(feature = "mpi")]
        LaunchEnv::Mpi { .. } => Ok(Launch::Mpi(Box::new(MpiCollective::init(
            MpiConfig::default(),
        )?))),
        #[cfg(not(feature = "mpi"))]
        LaunchEnv::Mpi { .. } => Err(LaunchError::FeatureMissing {
            launcher: "mpirun",
            feature: "mpi",
        }),
        #[cfg(feature = "nccl")]
        LaunchEnv::Torchrun { .. } => {
            let env = NcclEnv::from_env()?;
            NcclCollective::init_rank(&env, NcclConfig::default())
                .map(|collective| Launch::Nccl(Box::new(collective)))
                .map_err(|err| LaunchError::Nccl(err.to_string()))
        }
        #[cfg(not(feature = "nccl"))]
        LaunchEnv::Torchrun { .. } => Err(LaunchError::FeatureMissing {
            launcher: "torchrun-style launch (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)",
            feature: "nccl",
        }),
    }
}

/// Why [`init_from_env`] cannot start this process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// Some of a launcher's variables are set, this one is not.
    #[error(
        "the environment looks like a {launcher} but `{missing}` is not set; \
         it needs all of {needed}"
    )]
    Missing {
        /// The launcher the other variables point to.
        launcher: &'static str,
        /// The unset variable.
        missing: &'static str,
        /// All the variables that launcher sets.
        needed: String,
    },
    /// A variable does not hold what its launcher sets.
    #[error("`{variable}` is `{value}`, expected {expected}")]
    Invalid {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What it should hold.
        expected: String,
    },
    /// The launcher needs a collective this build leaves out.
    #[error(
        "this process was started by {launcher}, but maskddp was built without its \
         `{feature}` feature; enable it (`maskddp = {{ version = \"…\", features = \
         [\"{feature}\"] }}`, or `--features {feature}`)"
    )]
    FeatureMissing {
        /// The launcher.
        launcher: &'static str,
        /// The cargo feature.
        feature: &'static str,
    },
    /// The NCCL collective could not be started.
    #[error("{0}")]
    Nccl(String),
    /// MPI could not be initialised.
    #[cfg(feature = "mpi")]
    #[error(transparent)]
    Mpi(#[from] MpiInitError),
}

/// Where this process's NCCL rank meets the others: torchrun's `RANK`,
/// `WORLD_SIZE`, `LOCAL_RANK` (the GPU; this rank's number when unset, as on
/// one node), `MASTER_ADDR` and `MASTER_PORT`; under `mpirun`, the rank,
/// size and local rank come from `OMPI_COMM_WORLD_*` instead (the address
/// and port are still needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NcclEnv {
    /// This process's rank.
    pub rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// The GPU of this process, on its node.
    pub local_rank: usize,
    /// Host of rank 0.
    pub master_addr: String,
    /// Port rank 0 listens on.
    pub master_port: u16,
}

impl NcclEnv {
    /// Reads this process's environment.
    pub fn from_env() -> Result<Self, LaunchError> {
        Self::detect(|name| std::env::var(name).ok())
    }

    /// Reads the variables `var` returns: torchrun's, or mpirun's for the
    /// rank, size and local rank.
    pub fn detect(var: impl Fn(&str) -> Option<String>) -> Result<Self, LaunchError> {
        let (launcher, local) = if var(TORCHRUN.rank).is_some() || var(OPENMPI.rank).is_none() {
            (&TORCHRUN, "LOCAL_RANK")
        } else {
            (&OPENMPI, "OMPI_COMM_WORLD_LOCAL_RANK")
        };
        let (rank, world_size) = launcher
            .rank_and_size(&var)?
            .ok_or_else(|| TORCHRUN.required(&var, TORCHRUN.rank).unwrap_err())?;
        let local_rank = match var(local) {
            None => rank,
            Some(value) => value.trim().parse().map_err(|_| LaunchError::Invalid {
                variable: local,
                value: value.clone(),
                expected: "the GPU number of this process on its node".to_owned(),
            })?,
        };
        let (master_addr, master_port) = TORCHRUN.master(&var)?;
        Ok(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        })
    }
}

impl fmt::Display for LaunchEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaunchEnv::Mpi { rank, world_size } => write!(f, "MPI rank {rank} of {world_size}"),
            LaunchEnv::Torchrun {
                rank,
                world_size,
                master_addr,
                master_port,
            } => write!(
                f,
                "torchrun rank {rank} of {world_size} (rendezvous {master_addr}:{master_port})"
            ),
            LaunchEnv::Threads => f.write_str("threads of one process"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(vars: &[(&str, &str)]) -> Result<LaunchEnv, LaunchError> {
        LaunchEnv::detect(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        })
    }

    #[test]
    fn no_launcher_means_threads() {
        assert_eq!(detect(&[("HOME", "/root")]), Ok(LaunchEnv::Threads));
    }

    #[test]
    fn openmpi_and_pmi_mean_mpi() {
        let env = [("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "4")];
        assert_eq!(
            detect(&env),
            Ok(LaunchEnv::Mpi {
                rank: 2,
                world_size: 4
            })
        );
        let env = [("PMI_RANK", "0"), ("PMI_SIZE", "3")];
        assert_eq!(
            detect(&env),
            Ok(LaunchEnv::Mpi {
                rank: 0,
                world_size: 3
            })
        );
    }

    #[test]
    fn mpi_wins_over_torchrun_variables() {
        let env = [
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("RANK", "1"),
        ];
        assert!(matches!(detect(&env), Ok(LaunchEnv::Mpi { rank: 1, .. })));
    }

    #[test]
    fn torchrun_variables() {
        let env = [
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ];
        assert_eq!(
            detect(&env),
            Ok(LaunchEnv::Torchrun {
                rank: 3,
                world_size: 8,
                master_addr: "node0".to_owned(),
                master_port: 29500
            })
        );
    }

    #[test]
    fn a_partial_environment_names_the_missing_variable() {
        for (env, missing) in [
            (&[("RANK", "0")][..], "WORLD_SIZE"),
            (&[("RANK", "0"), ("WORLD_SIZE", "2")][..], "MASTER_ADDR"),
            (&[("MASTER_PORT", "1")][..], "WORLD_SIZE"),
            (&[("OMPI_COMM_WORLD_SIZE", "2")][..], "OMPI_COMM_WORLD_RANK"),
            (&[("PMI_RANK", "1")][..], "PMI_SIZE"),
        ] {
            let err = detect(env).unwrap_err();
            assert!(
                matches!(err, LaunchError::Missing { missing: m, .. } if m == missing),
                "{env:?}: {err}"
            );
            assert!(err.to_string().contains(&format!("`{missing}` is not set")));
        }
    }

    #[test]
    fn nccl_reads_torchrun_or_mpirun_variables() {
        let env = [
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ];
        let read = |vars: &[(&str, &str)]| {
            NcclEnv::detect(|name| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| value.to_string())
            })
        };
        let expected = NcclEnv {
            rank: 3,
            world_size: 8,
            local_rank: 1,
            master_addr: "node0".to_owned(),
            master_port: 29500,
        };
        assert_eq!(read(&env), Ok(expected.clone()));
        // One node: the GPU is the rank.
        assert_eq!(
            read(
                &env[..2]
                    .iter()
                    .chain(&env[3..])
                    .copied()
                    .collect::<Vec<_>>()
            )
            .map(|e| e.local_rank),
            Ok(3)
        );
        let mpirun = [
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "8"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ];
        assert_eq!(read(&mpirun), Ok(expected));
        for (vars, missing) in [
            (&mpirun[..3], "MASTER_ADDR"),
            (&env[2..], "WORLD_SIZE"),
            (&[][..], "RANK"),
        ] {
            let err = read(vars).unwrap_err();
            assert!(
                matches!(err, LaunchError::Missing { missing: m, .. } if m == missing),
                "{vars:?}: {err}"
            );
        }
        let err = read(
            &[("LOCAL_RANK", "x")]
                .iter()
                .chain(&env[..2])
                .chain(&env[3..])
                .copied()
                .collect::<Vec<_>>(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::Invalid {
                    variable: "LOCAL_RANK",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn nonsense_values_are_named() {
        for (env, variable) in [
            (
                &[("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "2")][..],
                "OMPI_COMM_WORLD_RANK",
            ),
            (
                &[("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "2")][..],
                "OMPI_COMM_WORLD_RANK",
            ),
            (&[("PMI_RANK", "0"), ("PMI_SIZE", "0")][..], "PMI_SIZE"),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "1"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "99999"),
                ][..],
                "MASTER_PORT",
            ),
        ] {
            let err = detect(env).unwrap_err();
            assert!(
                matches!(err, LaunchError::Invalid { variable: v, .. } if v == variable),
                "{env:?}: {err}"
            );
        }
    }
}
