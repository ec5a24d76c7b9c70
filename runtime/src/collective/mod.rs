//! The collective operations the reducer needs, and their failure reports.
//!
//! The trait is deliberately small so that MPI and NCCL can implement it with
//! one library call per method. Every call carries a [`Tag`] (step number and
//! operation) so an implementation can tell when ranks disagree about where
//! they are, and say so instead of reducing unrelated buffers.
//!
//! Buckets reach a collective in one of three ways. A host collective (the
//! thread group, MPI) sums host memory: the reducer packs each bucket into
//! one host buffer and calls [`Collective::all_reduce_sum`]. One that can
//! sum memory in several places (the thread group) says so with
//! [`Collective::sums_scattered`] and gets the gradients themselves, unpacked,
//! in [`Collective::all_reduce_scattered`], with the divisor of each, so it
//! writes back averages and reports non-finite values. A device collective
//! (NCCL) says so with [`Collective::sums_on_device`] and sums the bucket
//! where it lives, [`Collective::all_reduce_device`]: no gradient leaves the
//! device.

// Tag agreement for collectives whose library carries no tags.
#[cfg(any(feature = "mpi", feature = "nccl"))]
mod calls;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
pub mod rendezvous;
mod thread_group;

use std::any::Any;
use std::fmt;
use std::time::Duration;

use half::{bf16, f16};

#[cfg(feature = "mpi")]
pub use mpi::{MpiCollective, MpiConfig, MpiInitError};
#[cfg(feature = "nccl")]
pub use nccl::{NcclCollective, NcclConfig, NcclInitError};
pub use thread_group::{ThreadCollective, ThreadGroup, ThreadGroupConfig};

/// The operation a collective call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Set-up: comparing parameter layouts.
    Layout,
    /// Set-up: broadcasting rank 0's parameter values.
    Broadcast,
    /// The per-step exchange of gradient counts: alone, or in the lead bucket
    /// with the always-used gradients.
    Usage,
    /// The all-reduce of one gradient bucket (index within the step).
    Bucket(u32),
    /// An explicit barrier.
    Barrier,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Layout => f.write_str("layout check"),
            Op::Broadcast => f.write_str("parameter broadcast"),
            Op::Usage => f.write_str("usage exchange"),
            Op::Bucket(index) => write!(f, "all-reduce of bucket {index}"),
            Op::Barrier => f.write_str("barrier"),
        }
    }
}

/// Where a rank is: its step number and the operation it is running.
///
/// Step 0 is set-up (layout check and broadcast); the reducer numbers training
/// steps from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    /// Step number (0 = set-up).
    pub step: u64,
    /// Operation within the step.
    pub op: Op,
}

impl Tag {
    /// A tag for `op` at `step`.
    pub fn new(step: u64, op: Op) -> Self {
        Self { step, op }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step == 0 {
            write!(f, "set-up, {}", self.op)
        } else {
            write!(f, "step {}, {}", self.step, self.op)
        }
    }
}

/// One part of a buffer summed where it lies
/// ([`Collective::all_reduce_scattered`]): this rank's values in, the
/// finished sums out, and what was found not finite on the way.
#[derive(Debug)]
pub struct ScatteredPart<'a> {
    /// This rank's contribution; the finished sums after the call.
    pub values: &'a mut [f32],
    /// Every sum is divided by it before it is written back (1 leaves the
    /// sums as they are). Dividing by a power of two multiplies by its exact
    /// inverse, which gives the same bits.
    pub divisor: f32,
    /// Set by the call.
    pub found: NonFiniteFound,
}

impl<'a> ScatteredPart<'a> {
    /// A part whose sums are divided by `divisor`.
    pub fn new(values: &'a mut [f32], divisor: f32) -> Self {
        Self {
            values,
            divisor,
            found: NonFiniteFound::default(),
        }
    }
}

/// What a scattered all-reduce found not finite in one part. A NaN or an
/// infinity among the values summed makes the sum non-finite too, so the
/// sums are checked, and the values behind a non-finite sum are looked at.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NonFiniteFound {
    /// Some finished value is not finite (the same on every rank).
    pub in_sums: bool,
    /// Some rank contributed a non-finite value (the same on every rank);
    /// without it, a non-finite sum overflowed.
    pub in_values: bool,
    /// This rank's first non-finite value: its element and the value.
    pub here: Option<(usize, f32)>,
}

/// A bucket in its wire format, for [`Collective::all_reduce_sum`].
///
/// The element type is what travels between ranks: compressed buckets cost two
/// bytes per element. How an implementation sums (NCCL in the wire type, the
/// thread group in f32 with one rounding) is its own business, but every rank
/// must end with bit-identical results.
#[derive(Debug)]
pub enum WireBuf<'a> {
    /// Uncompressed.
    F32(&'a mut [f32]),
    /// bfloat16 (same range as f32, 8-bit mantissa).
    Bf16(&'a mut [bf16]),
    /// IEEE half precision.
    F16(&'a mut [f16]),
}

impl WireBuf<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            WireBuf::F32(data) => data.len(),
            WireBuf::Bf16(data) => data.len(),
            WireBuf::F16(data) => data.len(),
        }
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per element on the wire.
    pub fn element_bytes(&self) -> usize {
        match self {
            WireBuf::F32(_) => 4,
            WireBuf::Bf16(_) | WireBuf::F16(_) => 2,
        }
    }
}

/// The collective operations of one rank.
///
/// Every rank must issue the same calls in the same order with the same tags
/// and lengths; implementations detect and report violations where they can.
/// After any error the group is broken: later calls fail too.
pub trait Collective: Send {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// How many ranks, this one included, share this machine's cores (the
    /// default: all of them, as in-process ranks do). The reducer runs a
    /// helper thread per rank only where the cores allow it
    /// ([`Pipeline::Auto`](crate::Pipeline::Auto)).
    fn local_ranks(&self) -> usize {
        self.world_size()
    }

    /// Sums `data` element-wise over all ranks, in place; every rank ends with
    /// the same bits.
    fn all_reduce_sum(&mut self, tag: Tag, data: WireBuf<'_>) -> Result<(), CollectiveError>;

    /// Whether f32 buckets go to [`Self::all_reduce_scattered`] as the
    /// gradients themselves, wherever they lie, instead of being packed into
    /// one buffer for [`Self::all_reduce_sum`] (the default).
    fn sums_scattered(&self) -> bool {
        false
    }

    /// Sums the buffer made of `parts` (their concatenation) element-wise
    /// over all ranks, in place, and finishes each sum as its part says
    /// (divided, checked); every rank passes parts of the same lengths and
    /// divisors and ends with the same bits and flags. Called only when
    /// [`Self::sums_scattered`] says so; the default reports that it does not.
    fn all_reduce_scattered(
        &mut self,
        tag: Tag,
        parts: &mut [ScatteredPart<'_>],
    ) -> Result<(), CollectiveError> {
        let _ = parts;
        Err(CollectiveError::Invalid {
            tag,
            rank: self.rank(),
            reason: "this collective sums one contiguous buffer (all_reduce_sum), not scattered \
                     parts"
                .to_owned(),
        })
    }

    /// Whether buckets go to [`Self::all_reduce_device`] (this collective
    /// sums device memory) instead of [`Self::all_reduce_sum`] (the default:
    /// it sums host memory).
    fn sums_on_device(&self) -> bool {
        false
    }

    /// Sums a bucket held in device memory element-wise over all ranks, in
    /// place; every rank ends with the same bits. Called only when
    /// [`Self::sums_on_device`] says so.
    ///
    /// `bucket` is the float tensor primitive of the reducer's burn backend
    /// (`B::FloatTensorPrimitive`): a fresh, contiguous, one-dimensional
    /// tensor in the wire's element type. It travels as [`Any`] so that this
    /// trait stays independent of burn's backends; a device collective
    /// downcasts it to the one primitive it can reduce, and reports any other
    /// as [`CollectiveError::Invalid`]. The default is that report.
    fn all_reduce_device(&mut self, tag: Tag, bucket: &mut dyn Any) -> Result<(), CollectiveError> {
        let _ = bucket;
        Err(CollectiveError::Invalid {
            tag,
            rank: self.rank(),
            reason: "this collective sums host memory (all_reduce_sum), not device buffers"
                .to_owned(),
        })
    }

    /// Sums usage counts element-wise over all ranks, in place.
    fn all_reduce_counts(&mut self, tag: Tag, counts: &mut [u32]) -> Result<(), CollectiveError>;

    /// Overwrites `data` on every rank with `root`'s `data`.
    fn broadcast(&mut self, tag: Tag, root: usize, data: &mut [f32])
    -> Result<(), CollectiveError>;

    /// Returns every rank's `local` bytes, indexed by rank. Set-up only: it may
    /// allocate.
    fn all_gather_bytes(&mut self, tag: Tag, local: &[u8])
    -> Result<Vec<Vec<u8>>, CollectiveError>;

    /// Waits until every rank arrives.
    fn barrier(&mut self, tag: Tag) -> Result<(), CollectiveError>;

    /// Tells the other ranks that this rank cannot continue, so they fail now
    /// with `reason` instead of waiting for a timeout. Best effort.
    fn abort(&mut self, tag: Tag, reason: &str) {
        let _ = (tag, reason);
    }
}

/// Forwards [`Collective`] through a pointer type. A reducer can own its
/// collective, or borrow it (`&mut`): MPI can be initialised only once per
/// process, so several reducers in turn share one `MpiCollective`.
macro_rules! forward_collective {
    ($($pointer:ty),*) => {$(
        impl<C: Collective + ?Sized> Collective for $pointer {
            fn rank(&self) -> usize {
                (**self).rank()
            }
            fn world_size(&self) -> usize {
                (**self).world_size()
            }
            fn local_ranks(&self) -> usize {
                (**self).local_ranks()
            }
            fn all_reduce_sum(&mut self, tag: Tag, data: WireBuf<'_>) -> Result<(), CollectiveError> {
                (**self).all_reduce_sum(tag, data)
            }
            fn sums_scattered(&self) -> bool {
                (**self).sums_scattered()
            }
            fn all_reduce_scattered(&mut self, tag: Tag, parts: &mut [ScatteredPart<'_>]) -> Result<(), CollectiveError> {
                (**self).all_reduce_scattered(tag, parts)
            }
            fn sums_on_device(&self) -> bool {
                (**self).sums_on_device()
            }
            fn all_reduce_device(&mut self, tag: Tag, bucket: &mut dyn Any) -> Result<(), CollectiveError> {
                (**self).all_reduce_device(tag, bucket)
            }
            fn all_reduce_counts(&mut self, tag: Tag, counts: &mut [u32]) -> Result<(), CollectiveError> {
                (**self).all_reduce_counts(tag, counts)
            }
            fn broadcast(&mut self, tag: Tag, root: usize, data: &mut [f32]) -> Result<(), CollectiveError> {
                (**self).broadcast(tag, root, data)
            }
            fn all_gather_bytes(&mut self, tag: Tag, local: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
                (**self).all_gather_bytes(tag, local)
            }
            fn barrier(&mut self, tag: Tag) -> Result<(), CollectiveError> {
                (**self).barrier(tag)
            }
            fn abort(&mut self, tag: Tag, reason: &str) {
                (**self).abort(tag, reason)
            }
        }
    )*};
}

forward_collective!(Box<C>, &mut C);

/// What one rank called, as reported in a mismatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallView {
    /// The rank.
    pub rank: usize,
    /// Its tag.
    pub tag: Tag,
    /// Its buffer length in elements (bytes for the layout exchange).
    pub len: usize,
    /// The broadcast root it named, if the call was a broadcast.
    pub root: Option<usize>,
}

impl fmt::Display for CallView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rank {} is at {} with {} elements",
            self.rank, self.tag, self.len
        )?;
        if let Some(root) = self.root {
            write!(f, " from root {root}")?;
        }
        Ok(())
    }
}

fn list_ranks(ranks: &[usize]) -> String {
    let names: Vec<String> = ranks.iter().map(usize::to_string).collect();
    match names.len() {
        // MPI cannot tell which ranks have not arrived.
        0 => "a rank (the collective cannot tell which)".to_owned(),
        1 => format!("rank {}", names[0]),
        _ => format!("ranks {}", names.join(", ")),
    }
}

/// Why a collective operation failed. Every variant names the step and the
/// operation, and the rank(s) at fault where they are known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectiveError {
    /// A rank left the group (its thread panicked or returned, or its process
    /// exited) while others still expected it.
    #[error(
        "{tag}: {} left the group ({}) while rank {observer} was waiting for it; \
         look for the first error or panic reported by {} — every rank must run the same steps",
        list_ranks(departed),
        if *panicked { "its thread panicked" } else { "it returned or dropped its collective" },
        list_ranks(departed)
    )]
    Departed {
        /// Where the observing rank was.
        tag: Tag,
        /// The rank that noticed.
        observer: usize,
        /// The ranks that left.
        departed: Vec<usize>,
        /// Whether (one of) them panicked.
        panicked: bool,
    },
    /// Some ranks did not arrive in time.
    #[error(
        "{tag}: {} did not arrive within {waited:.0?} (rank {observer} gave up waiting); \
         a rank is stuck, much slower, or stopped calling the reducer — raise the \
         collective's timeout if steps are legitimately this slow",
        list_ranks(missing)
    )]
    Timeout {
        /// Where the waiting rank was.
        tag: Tag,
        /// The rank that gave up.
        observer: usize,
        /// The ranks that had not arrived.
        missing: Vec<usize>,
        /// How long it waited.
        waited: Duration,
    },
    /// Two ranks called different operations (or steps, or lengths) at the
    /// same point of the sequence.
    #[error(
        "ranks disagree: {first} but {second}; nothing was reduced — every rank must \
         call the reducer once per step, with the same model and configuration"
    )]
    Mismatch {
        /// The first rank's call.
        first: CallView,
        /// A call that differs from it.
        second: CallView,
    },
    /// A rank aborted the group with a reason.
    #[error("{tag}: rank {rank} aborted the group: {reason}")]
    Aborted {
        /// Where the aborting rank was.
        tag: Tag,
        /// The rank that aborted.
        rank: usize,
        /// Its reason.
        reason: String,
    },
    /// A call's arguments were invalid on this rank.
    #[error("{tag}: invalid call on rank {rank}: {reason}")]
    Invalid {
        /// The call.
        tag: Tag,
        /// The calling rank.
        rank: usize,
        /// What is wrong.
        reason: String,
    },
}
