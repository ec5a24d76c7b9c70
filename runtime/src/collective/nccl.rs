//! Ranks as GPUs reducing with NCCL, over burn's CUDA backend. Built with
//! the `nccl` feature; CUDA and NCCL are loaded at run time.
//!
//! **Where buckets live.** The reducer hands each bucket over as burn's
//! CUDA tensor primitive ([`Collective::all_reduce_device`]); NCCL sums it
//! in place with one `ncclAllReduce`. Before the call, burn's stream on this
//! thread is synchronised (NCCL runs on a stream of its own and must see
//! burn's finished gradients); the call returns only once NCCL completed,
//! so burn's next use of the buffer comes after it.
//!
//! **Tag agreement.** NCCL carries no tags, and ranks that start different
//! collectives (or lengths) hang or corrupt memory. As in the MPI
//! collective, every operation starts with an all-gather of every rank's
//! call (step, operation, length, root: 32 bytes per rank); a disagreement
//! is returned by every rank as [`CollectiveError::Mismatch`] and nothing
//! else is started. The same all-gather is the barrier.
//!
//! **No hang.** A watchdog polls each operation's completion (a CUDA event)
//! and `ncclCommGetAsyncError`. When the timeout passes (a rank died,
//! stopped calling, or is much slower) it aborts the communicator and
//! returns [`CollectiveError::Timeout`] naming the step and operation; NCCL
//! cannot tell which rank is missing. The group is broken from then on.
//! `ncclCommInitRank` itself blocks until every rank joins; the TCP
//! rendezvous before it has already checked that all are there.
//!
//! **Sums.** In the wire type, by NCCL (f32, bf16, f16); NCCL's algorithms
//! give every rank the same bits. Usage counts are summed as `u32`.

mod bucket;
mod comm;

use std::any::Any;
use std::fmt;
use std::time::Duration;

use burn::backend::Cuda;
use burn::tensor::backend::Backend;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::sys::ncclDataType_t;
use half::{bf16, f16};

use super::rendezvous::{self, RendezvousError};
use super::{CallView, Collective, CollectiveError, Tag, WireBuf, calls};
use crate::launch::{LaunchError, NcclEnv};
use comm::{Comm, WaitError};

/// Settings of an [`NcclCollective`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NcclConfig {
    /// How long an operation, and the rendezvous, may take before this rank
    /// aborts the communicator and reports (default 60 s). A timeout too
    /// long to add to the current instant means waiting forever.
    pub timeout: Duration,
}

impl Default for NcclConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
        }
    }
}

impl NcclConfig {
    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Why an [`NcclCollective`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NcclInitError {
    /// libcuda or libnccl cannot be loaded.
    #[error("cannot load {library}: {hint}")]
    Library {
        /// The library.
        library: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// A CUDA or NCCL call failed while setting up.
    #[error("setting up NCCL on device {device}: {detail}")]
    Setup {
        /// The device ordinal.
        device: usize,
        /// What failed.
        detail: String,
    },
    /// The TCP rendezvous failed.
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    /// The environment does not say where to meet.
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// One rank of an NCCL group: one GPU.
pub struct NcclCollective {
    comm: Comm,
    rank: usize,
    world: usize,
    timeout: Duration,
    failure: Option<CollectiveError>,
}

impl fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.rank)
            .field("world_size", &self.world)
            .field("device", &self.comm.ordinal())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Checks that the driver and libnccl load, before cudarc would panic.
fn check_libraries() -> Result<(), NcclInitError> {
    // SAFETY: loading a shared library runs its initialisers; these are
    // NVIDIA's driver and NCCL, loaded here for exactly that use.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(NcclInitError::Library {
            library: "the CUDA driver (libcuda)",
            hint: "the NCCL collective runs on NVIDIA GPUs and needs their driver",
        });
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Err(NcclInitError::Library {
            library: "libnccl",
            hint: "cudarc looks for `libnccl.so` (and `.so.13`, `.so.12`, ...) on \
                   LD_LIBRARY_PATH; a pip `nvidia-nccl-cu*` wheel ships `libnccl.so.2`: link it \
                   as `libnccl.so` in a folder on LD_LIBRARY_PATH",
        });
    }
    Ok(())
}

impl NcclCollective {
    /// One process per GPU, started torchrun-style (see
    /// [`NcclEnv::from_env`]): rank `RANK` of `WORLD_SIZE` on GPU
    /// `LOCAL_RANK`, meeting at `MASTER_ADDR:MASTER_PORT`.
    pub fn from_env(config: NcclConfig) -> Result<Self, NcclInitError> {
        let env = NcclEnv::from_env()?;
        Self::init_rank(&env, config)
    }

    /// Joins the group `env` describes: rank 0 creates NCCL's unique id and
    /// hands it out over TCP; every rank then joins the communicator on GPU
    /// `env.local_rank`.
    pub fn init_rank(env: &NcclEnv, config: NcclConfig) -> Result<Self, NcclInitError> {
        check_libraries()?;
        let device = env.local_rank;
        let setup = |detail| NcclInitError::Setup { device, detail };
        let id = if env.rank == 0 {
            // Bind first: a port in use is reported before anything else.
            let server = rendezvous::Server::bind(&env.master_addr, env.master_port)?;
            let id = comm::new_unique_id().map_err(setup)?;
            server.hand_out(env.world_size, &id, config.timeout)?;
            id
        } else {
            rendezvous::fetch_id(
                &env.master_addr,
                env.master_port,
                env.rank,
                env.world_size,
                config.timeout,
            )?
        };
        let comm = Comm::init_rank(device, env.world_size, &id, env.rank).map_err(setup)?;
        Ok(Self::new(comm, env.rank, env.world_size, config))
    }

    /// One process driving the GPUs `devices` from threads: one collective
    /// per device, rank `i` on `devices[i]`; move each into its rank's
    /// thread (as burn-train's own data parallelism does).
    pub fn for_devices(devices: &[usize], config: NcclConfig) -> Result<Vec<Self>, NcclInitError> {
        check_libraries()?;
        let comms = Comm::init_all(devices).map_err(|detail| NcclInitError::Setup {
            device: devices.first().copied().unwrap_or(0),
            detail,
        })?;
        let world = comms.len();
        Ok(comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| Self::new(comm, rank, world, config))
            .collect())
    }

    fn new(comm: Comm, rank: usize, world: usize, config: NcclConfig) -> Self {
        Self {
            comm,
            rank,
            world,
            timeout: config.timeout,
            failure: None,
        }
    }

    /// The GPU this rank runs on.
    pub fn device(&self) -> usize {
        self.comm.ordinal()
    }

    fn call(&self, tag: Tag, len: usize, root: Option<usize>) -> CallView {
        CallView {
            rank: self.rank,
            tag,
            len,
            root,
        }
    }

    /// Keeps `err` as the group's failure (every later call returns it).
    fn fail(&mut self, err: CollectiveError) -> CollectiveError {
        self.failure.get_or_insert(err).clone()
    }

    fn invalid(&mut self, tag: Tag, reason: String) -> CollectiveError {
        self.fail(CollectiveError::Invalid {
            tag,
            rank: self.rank,
            reason,
        })
    }

    /// Waits for what was enqueued, turning a watchdog verdict into the
    /// group's failure.
    fn wait(&mut self, tag: Tag) -> Result<(), CollectiveError> {
        match self.comm.wait(self.timeout) {
            Ok(()) => Ok(()),
            Err(WaitError::Timeout(waited)) => Err(self.fail(CollectiveError::Timeout {
                tag,
                observer: self.rank,
                missing: Vec::new(),
                waited,
            })),
            Err(WaitError::Failed(detail)) => Err(self.invalid(tag, detail)),
        }
    }

    /// Runs `op` on a device copy of `data` and copies the result back.
    fn staged<T: DeviceRepr + ValidAsZeroBits>(
        &mut self,
        tag: Tag,
        data: &mut [T],
        op: impl FnOnce(&Comm, u64) -> Result<(), String>,
    ) -> Result<(), CollectiveError> {
        let stream = std::sync::Arc::clone(self.comm.stream());
        let mut staging: CudaSlice<T> = match stream.clone_htod(data) {
            Ok(staging) => staging,
            Err(err) => return Err(self.invalid(tag, format!("CUDA copy failed: {err:?}"))),
        };
        let enqueued = {
            let (ptr, _sync) = staging.device_ptr_mut(&stream);
            op(&self.comm, ptr)
        };
        enqueued.map_err(|detail| self.invalid(tag, detail))?;
        self.wait(tag)?;
        stream
            .memcpy_dtoh(&staging, data)
            .map_err(|err| self.invalid(tag, format!("CUDA copy failed: {err:?}")))
    }

    /// Checks that every rank makes `call`, before anything else starts.
    fn agree(&mut self, call: CallView) -> Result<(), CollectiveError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let tag = call.tag;
        let words = calls::encode(&call);
        let stream = std::sync::Arc::clone(self.comm.stream());
        let copy_error = |err| format!("CUDA copy failed: {err:?}");
        let send = stream
            .clone_htod(&words)
            .map_err(|err| self.invalid(tag, copy_error(err)))?;
        let mut gathered = stream
            .alloc_zeros::<u64>(calls::WORDS * self.world)
            .map_err(|err| self.invalid(tag, copy_error(err)))?;
        let enqueued = {
            let (send_ptr, _send_sync) = send.device_ptr(&stream);
            let (recv_ptr, _recv_sync) = gathered.device_ptr_mut(&stream);
            // SAFETY: `send` holds WORDS u64s, `gathered` WORDS per rank;
            // both live until `wait` below returned.
            unsafe {
                self.comm
                    .all_gather(send_ptr, recv_ptr, calls::WORDS, ncclDataType_t::ncclUint64)
            }
        };
        enqueued.map_err(|detail| self.invalid(tag, detail))?;
        self.wait(tag)?;
        let gathered = stream
            .clone_dtoh(&gathered)
            .map_err(|err| self.invalid(tag, copy_error(err)))?;
        match calls::first_mismatch(&gathered) {
            None => Ok(()),
            Some((first, second)) => Err(self.fail(CollectiveError::Mismatch { first, second })),
        }
    }

    /// Sums a host slice on the device (NCCL has no host memory path).
    fn sum_host<T: DeviceRepr + ValidAsZeroBits>(
        &mut self,
        tag: Tag,
        data: &mut [T],
        dtype: ncclDataType_t,
    ) -> Result<(), CollectiveError> {
        self.agree(self.call(tag, data.len(), None))?;
        let count = data.len();
        // SAFETY: the staging buffer holds `count` elements until `staged`
        // waited for the operation.
        self.staged(tag, data, |comm, ptr| unsafe {
            comm.all_reduce(ptr, ptr, count, dtype)
        })
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn sums_on_device(&self) -> bool {
        true
    }

    fn all_reduce_device(&mut self, tag: Tag, bucket: &mut dyn Any) -> Result<(), CollectiveError> {
        let tensor = bucket::downcast(bucket).map_err(|reason| self.invalid(tag, reason))?;
        if tensor.device.index != self.comm.ordinal() {
            let reason = format!(
                "the bucket is on GPU {} but this rank's communicator on GPU {}",
                tensor.device.index,
                self.comm.ordinal()
            );
            return Err(self.invalid(tag, reason));
        }
        let elements = tensor.meta.shape().num_elements();
        self.agree(self.call(tag, elements, None))?;
        // NCCL's stream must see burn's finished work on this buffer.
        if let Err(err) = <Cuda as Backend>::sync(&tensor.device) {
            return Err(self.invalid(tag, format!("burn's CUDA stream failed: {err:?}")));
        }
        let (count, dtype) = bucket::prepare(tensor).map_err(|reason| self.invalid(tag, reason))?;
        // The managed resource keeps the allocation alive while NCCL writes;
        // its pointer already includes the handle's offset.
        let resource = match tensor.client.get_resource(tensor.handle.clone()) {
            Ok(resource) => resource,
            Err(err) => {
                let reason = format!("cannot reach the bucket's device memory: {err:?}");
                return Err(self.invalid(tag, reason));
            }
        };
        let ptr = resource.resource().ptr;
        // SAFETY: `resource` keeps the bucket's `count` elements alive until
        // `wait` returned; burn does not touch them meanwhile (the reducer
        // holds the only handle, and this thread is inside this call).
        let enqueued = unsafe { self.comm.all_reduce(ptr, ptr, count, dtype) };
        enqueued.map_err(|detail| self.invalid(tag, detail))?;
        let done = self.wait(tag);
        drop(resource);
        done
    }

    fn all_reduce_sum(&mut self, tag: Tag, data: WireBuf<'_>) -> Result<(), CollectiveError> {
        match data {
            WireBuf::F32(data) => self.sum_host(tag, data, ncclDataType_t::ncclFloat32),
            WireBuf::Bf16(data) => self.sum_host::<bf16>(tag, data, ncclDataType_t::ncclBfloat16),
            WireBuf::F16(data) => self.sum_host::<f16>(tag, data, ncclDataType_t::ncclFloat16),
        }
    }

    fn all_reduce_counts(&mut self, tag: Tag, counts: &mut [u32]) -> Result<(), CollectiveError> {
        self.sum_host(tag, counts, ncclDataType_t::ncclUint32)
    }

    fn broadcast(
        &mut self,
        tag: Tag,
        root: usize,
        data: &mut [f32],
    ) -> Result<(), CollectiveError> {
        self.agree(self.call(tag, data.len(), Some(root)))?;
        // Every rank named the same root: all of them fail alike.
        if root >= self.world {
            let reason = format!(
                "broadcast root {root} is not a rank of a group of {}",
                self.world
            );
            return Err(self.invalid(tag, reason));
        }
        let count = data.len();
        // SAFETY: as in `sum_host`.
        self.staged(tag, data, |comm, ptr| unsafe {
            comm.broadcast(ptr, count, ncclDataType_t::ncclFloat32, root)
        })
    }

    fn all_gather_bytes(
        &mut self,
        tag: Tag,
        local: &[u8],
    ) -> Result<Vec<Vec<u8>>, CollectiveError> {
        // Lengths legitimately differ here (that is what is being compared).
        self.agree(self.call(tag, 0, None))?;
        // Every rank's length, then every rank's bytes padded to the
        // longest: sums of blocks that are zero on all ranks but one.
        let (rank, world) = (self.rank, self.world);
        let mut lengths = vec![0u64; world];
        lengths[rank] = local.len() as u64;
        // SAFETY: as in `sum_host`.
        self.staged(tag, &mut lengths, |comm, ptr| unsafe {
            comm.all_reduce(ptr, ptr, world, ncclDataType_t::ncclUint64)
        })?;
        let longest = lengths.iter().copied().max().unwrap_or(0) as usize;
        let mut all = vec![0u8; longest * self.world];
        all[rank * longest..][..local.len()].copy_from_slice(local);
        let total = all.len();
        // SAFETY: as in `sum_host`.
        self.staged(tag, &mut all, |comm, ptr| unsafe {
            comm.all_reduce(ptr, ptr, total, ncclDataType_t::ncclUint8)
        })?;
        Ok(lengths
            .iter()
            .enumerate()
            .map(|(rank, &len)| all[rank * longest..][..len as usize].to_vec())
            .collect())
    }

    fn barrier(&mut self, tag: Tag) -> Result<(), CollectiveError> {
        // Completing the call agreement needs every rank.
        self.agree(self.call(tag, 0, None))
    }

    fn abort(&mut self, tag: Tag, reason: &str) {
        // NCCL cannot carry a reason: the others time out, naming the step
        // and operation; this rank's own error says why.
        self.comm.abort();
        self.fail(CollectiveError::Aborted {
            tag,
            rank: self.rank,
            reason: reason.to_owned(),
        });
    }
}
