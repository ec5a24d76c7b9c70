//! One NCCL communicator, owned through cudarc's `nccl::result` functions,
//! with the CUDA stream its operations run on and the watchdog that waits
//! for them.
//!
//! cudarc's safe `Comm` is not used: it is `!Send` (a reducer moves between
//! threads) and its `Drop` panics when the communicator is broken, which is
//! exactly when this collective must report an error instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaStream, DriverError};
use cudarc::nccl::{result, sys};

/// How an operation ended badly.
#[derive(Debug)]
pub(super) enum WaitError {
    /// Not complete after the timeout; the communicator was aborted.
    Timeout(Duration),
    /// NCCL or CUDA reported an error; the communicator was aborted.
    Failed(String),
}

/// A communicator, its device's context, and the stream of its operations.
pub(super) struct Comm {
    raw: sys::ncclComm_t,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// False once aborted: the handle is gone.
    live: bool,
}

// SAFETY: an `ncclComm_t` may be used from any thread as long as calls on it
// do not overlap; `Comm` is only reached through `&mut` of its owning
// collective (or `&self` methods of that `&mut` owner), so they never do.
// The CUDA context and stream are `Send + Sync` handles.
unsafe impl Send for Comm {}

fn driver(call: &str, err: DriverError) -> String {
    format!("CUDA {call} failed: {err:?}")
}

fn nccl(call: &str, err: result::NcclError) -> String {
    format!("NCCL {call} failed: {:?}", err.0)
}

/// The context of device `ordinal` and a new stream on it.
fn device(ordinal: usize) -> Result<(Arc<CudaContext>, Arc<CudaStream>), String> {
    let ctx = CudaContext::new(ordinal).map_err(|err| driver("context creation", err))?;
    let stream = ctx
        .new_stream()
        .map_err(|err| driver("stream creation", err))?;
    Ok((ctx, stream))
}

/// `bytes` as NCCL's unique id.
pub(super) fn unique_id(bytes: &[u8; 128]) -> sys::ncclUniqueId {
    sys::ncclUniqueId {
        internal: bytes.map(|b| b as core::ffi::c_char),
    }
}

/// A new unique id, as bytes to send to the other ranks.
pub(super) fn new_unique_id() -> Result<[u8; 128], String> {
    let id = result::get_uniqueid().map_err(|err| nccl("ncclGetUniqueId", err))?;
    Ok(id.internal.map(|c| c as u8))
}

impl Comm {
    /// Joins the group of `world` ranks named by `id` as `rank`, on device
    /// `ordinal`. Blocks until every rank has joined.
    pub fn init_rank(
        ordinal: usize,
        world: usize,
        id: &[u8; 128],
        rank: usize,
    ) -> Result<Self, String> {
        let (ctx, stream) = device(ordinal)?;
        ctx.bind_to_thread()
            .map_err(|err| driver("context binding", err))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the id is 128 bytes.
        unsafe { result::comm_init_rank(&mut raw, world as i32, unique_id(id), rank as i32) }
            .map_err(|err| nccl("ncclCommInitRank", err))?;
        Ok(Self {
            raw,
            ctx,
            stream,
            live: true,
        })
    }

    /// One communicator per device of `ordinals`, rank `i` on
    /// `ordinals[i]`, for one process driving them from threads.
    pub fn init_all(ordinals: &[usize]) -> Result<Vec<Self>, String> {
        let devices: Vec<i32> = ordinals.iter().map(|&o| o as i32).collect();
        let mut raws = vec![std::ptr::null_mut(); ordinals.len()];
        let contexts = ordinals
            .iter()
            .map(|&ordinal| device(ordinal))
            .collect::<Result<Vec<_>, _>>()?;
        // SAFETY: `raws` has room for one communicator per device.
        unsafe { result::comm_init_all(raws.as_mut_ptr(), devices.len() as i32, devices.as_ptr()) }
            .map_err(|err| nccl("ncclCommInitAll", err))?;
        Ok(raws
            .into_iter()
            .zip(contexts)
            .map(|(raw, (ctx, stream))| Self {
                raw,
                ctx,
                stream,
                live: true,
            })
            .collect())
    }

    /// The stream operations run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// Enqueues a sum of `count` elements from `send` into `recv` (equal for
    /// in place).
    ///
    /// # Safety
    /// Both pointers hold `count` elements of `dtype` on this device and
    /// stay valid until [`Self::wait`] returns.
    pub unsafe fn all_reduce(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dtype: sys::ncclDataType_t,
    ) -> Result<(), String> {
        self.ctx
            .bind_to_thread()
            .map_err(|err| driver("context binding", err))?;
        // SAFETY: as the caller promises.
        unsafe {
            result::all_reduce(
                send as *const _,
                recv as *mut _,
                count,
                dtype,
                sys::ncclRedOp_t::ncclSum,
                self.raw,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map(drop)
        .map_err(|err| nccl("ncclAllReduce", err))
    }

    /// Enqueues an all-gather of `count` elements per rank.
    ///
    /// # Safety
    /// `send` holds `count` and `recv` `count × world` elements of `dtype`
    /// on this device, valid until [`Self::wait`] returns.
    pub unsafe fn all_gather(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        dtype: sys::ncclDataType_t,
    ) -> Result<(), String> {
        self.ctx
            .bind_to_thread()
            .map_err(|err| driver("context binding", err))?;
        // SAFETY: as the caller promises.
        unsafe {
            result::all_gather(
                send as *const _,
                recv as *mut _,
                count,
                dtype,
                self.raw,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map(drop)
        .map_err(|err| nccl("ncclAllGather", err))
    }

    /// Enqueues a broadcast of `count` elements from `root`, in place.
    ///
    /// # Safety
    /// `data` holds `count` elements of `dtype` on this device, valid until
    /// [`Self::wait`] returns.
    pub unsafe fn broadcast(
        &self,
        data: u64,
        count: usize,
        dtype: sys::ncclDataType_t,
        root: usize,
    ) -> Result<(), String> {
        self.ctx
            .bind_to_thread()
            .map_err(|err| driver("context binding", err))?;
        // SAFETY: as the caller promises.
        unsafe {
            result::broadcast(
                data as *const _,
                data as *mut _,
                count,
                dtype,
                root as i32,
                self.raw,
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map(drop)
        .map_err(|err| nccl("ncclBroadcast", err))
    }

    /// The watchdog: returns once everything enqueued on the stream has
    /// completed. It polls a CUDA event and `ncclCommGetAsyncError`; on an
    /// error, or when `timeout` passes (a peer that died or stopped calling
    /// leaves NCCL's kernels waiting forever), it aborts the communicator,
    /// which also ends the kernels, and reports.
    pub fn wait(&mut self, timeout: Duration) -> Result<(), WaitError> {
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        let failed = |this: &mut Self, detail: String| {
            this.abort();
            Err(WaitError::Failed(detail))
        };
        let event = match self.stream.record_event(None) {
            Ok(event) => event,
            Err(err) => return failed(self, driver("event record", err)),
        };
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(err) => return failed(self, driver("event query", err)),
            }
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: the communicator is live; `state` is a valid out-pointer.
            let query = unsafe { sys::ncclCommGetAsyncError(self.raw, &mut state) };
            if query != sys::ncclResult_t::ncclSuccess {
                return failed(self, format!("ncclCommGetAsyncError failed: {query:?}"));
            }
            if !matches!(
                state,
                sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress
            ) {
                return failed(
                    self,
                    format!("NCCL reported {state:?} (set NCCL_DEBUG=WARN for details)"),
                );
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                self.abort();
                return Err(WaitError::Timeout(start.elapsed()));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Aborts the communicator: pending operations end, the handle is
    /// freed. Later operations must not be enqueued.
    pub fn abort(&mut self) {
        if std::mem::replace(&mut self.live, false) {
            // SAFETY: the communicator is live, and not used after this.
            // Nothing more can be done about a failing abort.
            let _ = unsafe { result::comm_abort(self.raw) };
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if std::mem::replace(&mut self.live, false) {
            // SAFETY: every operation was waited for; the handle is not
            // used after this. An error here cannot be reported any more.
            let _ = unsafe { result::comm_destroy(self.raw) };
        }
    }
}
