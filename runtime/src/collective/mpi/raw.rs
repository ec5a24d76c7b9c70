//! The raw MPI calls the safe rsmpi API lacks: non-blocking collectives on
//! buffers that stay borrowed until completion, in place, and polling them;
//! and sums of 16-bit floats, which MPI has no operation for.
//!
//! rsmpi exports no `MPI_IN_PLACE` (a macro in `mpi.h` whose value differs
//! between implementations), so [`Comm::new`] derives it from the library's
//! version string.

use std::ffi::{c_int, c_void};

use half::{bf16, f16};

use ::mpi::collective::SystemOperation;
use ::mpi::datatype::Equivalence;
use ::mpi::ffi;
use ::mpi::raw::AsRaw;
use ::mpi::topology::{Communicator, SimpleCommunicator};

/// The largest element count of one MPI call (counts are C `int`s).
pub(super) const MAX_COUNT: usize = c_int::MAX as usize;

/// A communicator of our own (a duplicate of the world, so that our
/// collectives never pair with the application's) and the library's
/// `MPI_IN_PLACE`.
pub(super) struct Comm {
    comm: SimpleCommunicator,
    in_place: *mut c_void,
    /// User-defined sums of bf16 and of f16 ([`sum_halves`]).
    bf16_sum: ffi::MPI_Op,
    f16_sum: ffi::MPI_Op,
}

// SAFETY: `SimpleCommunicator` is `!Send` only because it holds a raw MPI
// handle. MPI is initialised with `MPI_THREAD_SERIALIZED`, which allows calls
// from any thread as long as no two run at once; `Comm` is owned by one
// `MpiCollective`, whose methods take `&mut self`, so only the thread holding
// it can call MPI through it, one call at a time.
unsafe impl Send for Comm {}

/// A started non-blocking collective. MPI reads and writes its buffers until
/// [`Comm::test`] says it completed: the caller must keep them alive and
/// untouched until then, or end the process.
#[derive(Debug)]
pub(super) struct Request(ffi::MPI_Request);

impl Comm {
    /// Duplicates `world`. `library` is `MPI_Get_library_version`'s text.
    pub(super) fn new(world: &SimpleCommunicator, library: &str) -> Result<Self, String> {
        // OpenMPI: `#define MPI_IN_PLACE ((void *) 1)`; MPICH and its
        // derivatives (Intel MPI, MVAPICH): `((void *) -1)`.
        let in_place = if library.contains("Open MPI") {
            1usize
        } else if ["MPICH", "Intel(R) MPI", "MVAPICH"]
            .iter()
            .any(|name| library.contains(name))
        {
            usize::MAX
        } else {
            return Err(format!(
                "unknown MPI library ({}); maskddp supports OpenMPI and MPICH",
                library.lines().next().unwrap_or_default()
            ));
        };
        Ok(Self {
            comm: world.duplicate(),
            in_place: in_place as *mut c_void,
            bf16_sum: half_sum(sum_halves::<bf16>),
            f16_sum: half_sum(sum_halves::<f16>),
        })
    }

    pub(super) fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    pub(super) fn size(&self) -> usize {
        self.comm.size() as usize
    }

    /// Ends every process of the job with `code`.
    pub(super) fn abort(&self, code: c_int) -> ! {
        self.comm.abort(code)
    }

    /// Starts an in-place element-wise sum of `data` over all ranks.
    ///
    /// # Safety
    /// `data` must stay alive and untouched until the request completes.
    pub(super) unsafe fn sum_in_place<T: Equivalence>(&self, data: &mut [T]) -> Request {
        let datatype = T::equivalent_datatype().as_raw();
        // SAFETY: as this function's contract; MPI's sum fits every type.
        unsafe {
            self.reduce_in_place(
                data.as_mut_ptr().cast(),
                data.len(),
                datatype,
                SystemOperation::sum().as_raw(),
            )
        }
    }

    /// Starts an in-place element-wise sum of 16-bit floats over all ranks:
    /// two bytes per element on the wire, each pair added in f32 and rounded
    /// back.
    ///
    /// # Safety
    /// As [`Self::sum_in_place`].
    pub(super) unsafe fn sum_halves_in_place<H: Half>(&self, data: &mut [H]) -> Request {
        let datatype = u16::equivalent_datatype().as_raw();
        // SAFETY: as this function's contract; `H` is two bytes, which the
        // operation reads as `H`.
        unsafe {
            self.reduce_in_place(data.as_mut_ptr().cast(), data.len(), datatype, H::sum(self))
        }
    }

    /// Starts an in-place all-reduce with `op` of `len` elements of
    /// `datatype` at `data`.
    ///
    /// # Safety
    /// The elements must stay alive and untouched until the request
    /// completes, and `op` must apply to `datatype`.
    unsafe fn reduce_in_place(
        &self,
        data: *mut c_void,
        len: usize,
        datatype: ffi::MPI_Datatype,
        op: ffi::MPI_Op,
    ) -> Request {
        self.start(|request| {
            // SAFETY: by the contract; the count fits (checked).
            unsafe {
                ffi::MPI_Iallreduce(
                    self.in_place,
                    data,
                    count(len),
                    datatype,
                    op,
                    self.comm.as_raw(),
                    request,
                )
            }
        })
    }

    /// Starts a broadcast of `root`'s `data` into every rank's `data`.
    ///
    /// # Safety
    /// As [`Self::sum_in_place`].
    pub(super) unsafe fn broadcast<T: Equivalence>(&self, root: usize, data: &mut [T]) -> Request {
        self.start(|request| {
            // SAFETY: as above.
            unsafe {
                ffi::MPI_Ibcast(
                    data.as_mut_ptr().cast(),
                    count(data.len()),
                    T::equivalent_datatype().as_raw(),
                    root as c_int,
                    self.comm.as_raw(),
                    request,
                )
            }
        })
    }

    /// Starts gathering every rank's `local` into `all` (rank `r`'s at
    /// `r * local.len()`).
    ///
    /// # Safety
    /// Both buffers must stay alive and untouched until the request completes;
    /// `all` must hold `local.len() * size` elements.
    pub(super) unsafe fn all_gather<T: Equivalence>(&self, local: &[T], all: &mut [T]) -> Request {
        debug_assert_eq!(all.len(), local.len() * self.size());
        self.start(|request| {
            // SAFETY: as above.
            unsafe {
                ffi::MPI_Iallgather(
                    local.as_ptr().cast(),
                    count(local.len()),
                    T::equivalent_datatype().as_raw(),
                    all.as_mut_ptr().cast(),
                    count(local.len()),
                    T::equivalent_datatype().as_raw(),
                    self.comm.as_raw(),
                    request,
                )
            }
        })
    }

    /// Starts gathering every rank's `local` bytes into `all`, rank `r`'s at
    /// `offsets[r]` with length `lengths[r]`.
    ///
    /// # Safety
    /// All buffers must stay alive and untouched until the request completes;
    /// `all` must hold every rank's bytes at the given places.
    pub(super) unsafe fn all_gather_varying(
        &self,
        local: &[u8],
        all: &mut [u8],
        lengths: &[c_int],
        offsets: &[c_int],
    ) -> Request {
        self.start(|request| {
            // SAFETY: as above.
            unsafe {
                ffi::MPI_Iallgatherv(
                    local.as_ptr().cast(),
                    count(local.len()),
                    u8::equivalent_datatype().as_raw(),
                    all.as_mut_ptr().cast(),
                    lengths.as_ptr(),
                    offsets.as_ptr(),
                    u8::equivalent_datatype().as_raw(),
                    self.comm.as_raw(),
                    request,
                )
            }
        })
    }

    fn start(&self, call: impl FnOnce(*mut ffi::MPI_Request) -> c_int) -> Request {
        // SAFETY: a null request is a valid value to be overwritten.
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        // The communicator keeps MPI's default handler, MPI_ERRORS_ARE_FATAL:
        // a failing call ends the job with MPI's own message, so the return
        // code is always MPI_SUCCESS.
        call(&mut request);
        Request(request)
    }

    /// Whether `request` completed (then MPI no longer uses its buffers).
    /// Also drives MPI's progress: non-blocking collectives advance only
    /// inside MPI calls.
    pub(super) fn test(&self, request: &mut Request) -> bool {
        let mut done: c_int = 0;
        // SAFETY: `request` came from `start`; MPI sets it to null when it
        // completes, and testing a null request reports completion.
        unsafe { ffi::MPI_Test(&mut request.0, &mut done, ffi::RSMPI_STATUS_IGNORE) };
        done != 0
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once; MPI is still initialised (the
        // owner finalises it after dropping this).
        unsafe {
            ffi::MPI_Op_free(&mut self.bf16_sum);
            ffi::MPI_Op_free(&mut self.f16_sum);
        }
    }
}

/// A 16-bit float type MPI sums with a user-defined operation.
pub(super) trait Half: crate::half_float::Half {
    /// This type's sum operation on `comm`.
    fn sum(comm: &Comm) -> ffi::MPI_Op;
}

macro_rules! half {
    ($ty:ty, $sum:ident) => {
        impl Half for $ty {
            fn sum(comm: &Comm) -> ffi::MPI_Op {
                comm.$sum
            }
        }
    };
}

half!(bf16, bf16_sum);
half!(f16, f16_sum);

/// A commutative MPI operation running `function`.
fn half_sum(
    function: unsafe extern "C" fn(*mut c_void, *mut c_void, *mut c_int, *mut ffi::MPI_Datatype),
) -> ffi::MPI_Op {
    // SAFETY: an operation handle to be overwritten; `function` is a valid
    // MPI user function (it neither panics nor unwinds).
    unsafe {
        let mut op: ffi::MPI_Op = std::mem::zeroed();
        ffi::MPI_Op_create(Some(function), 1, &mut op);
        op
    }
}

/// Elements [`sum_halves`] widens at a time: two blocks of f32 stay in L1.
const HALF_BLOCK: usize = 1024;

/// MPI's user function for [`Half`] sums: `inout[i] = in[i] + inout[i]`,
/// added in f32 and rounded back (the same on every rank that combines the
/// same two values, whichever is `in`). A block at a time, converted by whole
/// blocks (see [`crate::half_float`]).
unsafe extern "C" fn sum_halves<H: Half>(
    input: *mut c_void,
    inout: *mut c_void,
    len: *mut c_int,
    _datatype: *mut ffi::MPI_Datatype,
) {
    // SAFETY: MPI passes two buffers of `*len` elements of the datatype the
    // operation was called with, two-byte elements of `H`.
    let (input, inout) = unsafe {
        let len = usize::try_from(*len).unwrap_or(0);
        (
            std::slice::from_raw_parts(input as *const H, len),
            std::slice::from_raw_parts_mut(inout as *mut H, len),
        )
    };
    let (mut sums, mut addends) = ([0.0f32; HALF_BLOCK], [0.0f32; HALF_BLOCK]);
    for (inout, input) in inout.chunks_mut(HALF_BLOCK).zip(input.chunks(HALF_BLOCK)) {
        let (sums, addends) = (&mut sums[..inout.len()], &mut addends[..inout.len()]);
        H::widen(input, sums);
        H::widen(inout, addends);
        for (sum, addend) in sums.iter_mut().zip(addends.iter()) {
            *sum += *addend;
        }
        H::narrow(sums, inout);
    }
}

/// `len` as an MPI count; callers split larger buffers at [`MAX_COUNT`].
fn count(len: usize) -> c_int {
    c_int::try_from(len).expect("buffers are split at MAX_COUNT elements")
}
