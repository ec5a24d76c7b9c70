//! `--collective nccl`: ranks on NVIDIA GPUs, over burn's CUDA backend.
//!
//! Started torchrun-style (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `MASTER_ADDR`, `MASTER_PORT`; or by mpirun, with the last two set), this
//! process is one rank, on GPU `LOCAL_RANK`. Started without those, it drives `--ranks` GPUs (0, 1, …)
//! from threads, one rank each.

use burn::backend::cuda::CudaDevice;
use burn::backend::{Autodiff, Cuda};
use maskddp::{LaunchEnv, NcclCollective, NcclConfig, NcclEnv};

use super::{Args, Failure, run_threads};

type Gpu = Autodiff<Cuda>;

/// Trains on GPUs; returns whether all replicas ended bit-identical.
pub fn run(args: Args) -> Result<bool, Failure> {
    let usage = |err: &dyn std::fmt::Display| Failure::Usage(err.to_string());
    match LaunchEnv::from_env().map_err(|err| usage(&err))? {
        // Under mpirun the rank comes from mpirun's variables; the address
        // and port are still needed.
        LaunchEnv::Torchrun { .. } | LaunchEnv::Mpi { .. } => {
            let env = NcclEnv::from_env().map_err(|err| usage(&err))?;
            let mut collective = NcclCollective::init_rank(&env, NcclConfig::default())
                .map_err(|err| usage(&err))?;
            let device = CudaDevice::new(env.local_rank);
            super::process::run::<Gpu, _>(args, &mut collective, &device)
        }
        LaunchEnv::Threads => {
            let devices: Vec<usize> = (0..usize::from(args.ranks)).collect();
            let collectives = NcclCollective::for_devices(&devices, NcclConfig::default())
                .map_err(|err| usage(&err))?;
            let devices: Vec<CudaDevice> = devices.into_iter().map(CudaDevice::new).collect();
            run_threads::<Gpu, _>(&args, collectives, &devices).map_err(Failure::Run)
        }
    }
}
