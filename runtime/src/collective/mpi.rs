//! Ranks as processes started by `mpirun` (OpenMPI or MPICH), reducing with
//! MPI. Built with the `mpi` feature.
//!
//! **Deadlines.** MPI never times out: a rank that stops arriving blocks the
//! others forever. So every operation is a non-blocking MPI collective,
//! polled until it completes or the deadline passes. A started collective
//! cannot be cancelled and keeps using its buffers until it completes, so a
//! rank whose deadline passes prints the error (step, operation) and aborts
//! the whole job with `MPI_Abort`: it could neither return while MPI still
//! writes into the caller's buffer nor ever complete the operation. A rank
//! that dies (a crash, SIGKILL, an exit without finalising MPI) is noticed by
//! `mpirun`, which ends the job itself and names the rank. MPI does not tell
//! which ranks have arrived, so a timeout cannot name the missing ones.
//!
//! **Tag agreement.** MPI collectives carry no tags, and ranks that start
//! different collectives, or one with different lengths, is erroneous MPI:
//! it may hang or corrupt memory. So each operation begins with an all-gather
//! of every rank's call (step, operation, length, root: 32 bytes per rank),
//! and the operation itself starts only once all calls are equal. A
//! disagreement is seen by every rank at once and returned by every rank as
//! [`CollectiveError::Mismatch`] naming both calls; nothing is reduced and
//! the job can exit cleanly. The cost is one small-message latency per
//! operation (the reducer makes one plus one per bucket per step; measured in
//! BENCHMARKS.md). The same all-gather is the barrier.
//!
//! **Sums.** f32 and u32 are summed in place (`MPI_IN_PLACE`). bf16 and f16
//! travel as they are, two bytes per element, and are summed by a
//! user-defined MPI operation that adds each pair in f32 and rounds back (MPI
//! has no 16-bit float sum); so each combination rounds, where the thread
//! group rounds once, and the order of the additions is MPI's. MPI's
//! reduction algorithms combine the same partial sums on every rank, and the
//! tests check that every rank ends with the same bits.

mod raw;

use std::fmt;
use std::time::{Duration, Instant};

use ::mpi::Threading;
use ::mpi::datatype::Equivalence;
use ::mpi::environment::Universe;
use ::mpi::topology::Communicator;

use super::{CallView, Collective, CollectiveError, Tag, WireBuf, calls};

/// Calls to `MPI_Test` between yields of the core while waiting: a yield
/// after every call delays each round of a large all-reduce (measured up to
/// 2.5× slower on 2 cores), never yielding starves ranks sharing a core.
const POLLS_PER_YIELD: u32 = 64;

/// The exit code of a job this collective aborts.
const ABORT_CODE: i32 = 1;

/// Settings of an [`MpiCollective`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MpiConfig {
    /// How long a rank waits for the others in each operation before it
    /// reports a timeout and aborts the job (default 60 s). A timeout too
    /// long to add to the current instant (such as [`Duration::MAX`]) means
    /// waiting forever.
    pub timeout: Duration,
}

impl Default for MpiConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
        }
    }
}

impl MpiConfig {
    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Why [`MpiCollective::init`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MpiInitError {
    /// MPI was initialised before (MPI allows it once per process).
    #[error(
        "MPI is already initialised in this process; create the MpiCollective once, \
         before anything else uses MPI"
    )]
    AlreadyInitialized,
    /// The library cannot serve calls from any thread.
    #[error(
        "the MPI library offers thread support {provided}, but the reducer may run on any \
         thread and needs MPI_THREAD_SERIALIZED; use an MPI built with thread support"
    )]
    Threading {
        /// The level the library provides.
        provided: String,
    },
    /// The library is not one whose `MPI_IN_PLACE` is known.
    #[error("{0}")]
    Library(String),
}

/// One rank of an MPI job: this process.
///
/// It owns MPI: [`Self::init`] initialises it and dropping the collective
/// (after the reducer holding it) finalises it, so drop it before the
/// process exits — `std::process::exit` skips that, and `mpirun` then
/// reports the rank as having exited improperly.
pub struct MpiCollective {
    link: Link,
    failure: Option<CollectiveError>,
    /// Every rank's call words, gathered before each operation.
    gathered: Vec<u64>,
    // Last: MPI is finalised after the communicator is freed.
    _universe: Universe,
}

/// The communicator and how long to wait on it.
struct Link {
    comm: raw::Comm,
    rank: usize,
    world: usize,
    /// Ranks on this machine (sharing memory with this one).
    local: usize,
    timeout: Duration,
}

impl fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MpiCollective")
            .field("rank", &self.link.rank)
            .field("world_size", &self.link.world)
            .field("timeout", &self.link.timeout)
            .finish_non_exhaustive()
    }
}

impl MpiCollective {
    /// Initialises MPI (`MPI_THREAD_SERIALIZED`: the reducer may move between
    /// threads, and calls one operation at a time) and joins the job's world.
    pub fn init(config: MpiConfig) -> Result<Self, MpiInitError> {
        let (universe, provided) = ::mpi::initialize_with_threading(Threading::Serialized)
            .ok_or(MpiInitError::AlreadyInitialized)?;
        if !matches!(provided, Threading::Serialized | Threading::Multiple) {
            return Err(MpiInitError::Threading {
                provided: format!("{provided:?}"),
            });
        }
        let library = ::mpi::environment::library_version().unwrap_or_default();
        let comm = raw::Comm::new(&universe.world(), &library).map_err(MpiInitError::Library)?;
        // Blocking, like MPI's initialisation itself: every rank takes part.
        let local = universe.world().split_shared(0).size() as usize;
        Ok(Self {
            link: Link {
                rank: comm.rank(),
                world: comm.size(),
                local,
                comm,
                timeout: config.timeout,
            },
            failure: None,
            gathered: Vec::new(),
            _universe: universe,
        })
    }

    /// Checks that every rank makes `call`, before anything else starts.
    fn agree(&mut self, call: CallView, start: Instant) -> Result<(), CollectiveError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let words = calls::encode(&call);
        self.gathered.resize(calls::WORDS * self.link.world, 0);
        // SAFETY: `wait` returns only once the gather completed (or ends the
        // process); `words` and `gathered` live until then.
        let request = unsafe { self.link.comm.all_gather(&words, &mut self.gathered) };
        self.link.wait(call.tag, request, start);
        match calls::first_mismatch(&self.gathered) {
            None => Ok(()),
            Some((first, second)) => Err(self.fail(CollectiveError::Mismatch { first, second })),
        }
    }

    /// Keeps `err` as the group's failure (every later call returns it).
    fn fail(&mut self, err: CollectiveError) -> CollectiveError {
        self.failure.get_or_insert(err).clone()
    }
}

impl Link {
    fn call(&self, tag: Tag, len: usize, root: Option<usize>) -> CallView {
        CallView {
            rank: self.rank,
            tag,
            len,
            root,
        }
    }

    /// Returns once `request` completed. Past the deadline (counted from
    /// `start`, when this rank entered the operation) it aborts the job.
    fn wait(&self, tag: Tag, mut request: raw::Request, start: Instant) {
        let deadline = start.checked_add(self.timeout);
        let mut polls = 0u32;
        while !self.comm.test(&mut request) {
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                self.abort_job(&CollectiveError::Timeout {
                    tag,
                    observer: self.rank,
                    missing: Vec::new(),
                    waited: now - start,
                });
            }
            // MPI progresses only inside calls, so poll hard; but now and
            // then let ranks that share cores (`--oversubscribe`) run.
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(POLLS_PER_YIELD) {
                std::thread::yield_now();
            }
        }
    }

    /// Reports `err` on stderr and ends every process of the job.
    fn abort_job(&self, err: &CollectiveError) -> ! {
        // One write: lines of several ranks interleave otherwise.
        let report = format!(
            "maskddp: {err}\nmaskddp: rank {} aborts the MPI job\n",
            self.rank
        );
        eprint!("{report}");
        self.comm.abort(ABORT_CODE)
    }

    /// Sums `data` over all ranks, in place.
    fn sum<T: Equivalence>(&self, tag: Tag, data: &mut [T], start: Instant) {
        for part in data.chunks_mut(raw::MAX_COUNT) {
            // SAFETY: `wait` returns only once the sum completed (or ends the
            // process); `part` is borrowed until then.
            let request = unsafe { self.comm.sum_in_place(part) };
            self.wait(tag, request, start);
        }
    }

    fn sum_halves<H: raw::Half>(&self, tag: Tag, data: &mut [H], start: Instant) {
        for part in data.chunks_mut(raw::MAX_COUNT) {
            // SAFETY: as in `sum`.
            let request = unsafe { self.comm.sum_halves_in_place(part) };
            self.wait(tag, request, start);
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.link.rank
    }

    fn world_size(&self) -> usize {
        self.link.world
    }

    fn local_ranks(&self) -> usize {
        self.link.local
    }

    fn all_reduce_sum(&mut self, tag: Tag, data: WireBuf<'_>) -> Result<(), CollectiveError> {
        if self.link.world == 1 {
            return Ok(());
        }
        let start = Instant::now();
        self.agree(self.link.call(tag, data.len(), None), start)?;
        match data {
            WireBuf::F32(data) => self.link.sum(tag, data, start),
            WireBuf::Bf16(data) => self.link.sum_halves(tag, data, start),
            WireBuf::F16(data) => self.link.sum_halves(tag, data, start),
        }
        Ok(())
    }

    fn all_reduce_counts(&mut self, tag: Tag, counts: &mut [u32]) -> Result<(), CollectiveError> {
        if self.link.world == 1 {
            return Ok(());
        }
        let start = Instant::now();
        self.agree(self.link.call(tag, counts.len(), None), start)?;
        self.link.sum(tag, counts, start);
        Ok(())
    }

    fn broadcast(
        &mut self,
        tag: Tag,
        root: usize,
        data: &mut [f32],
    ) -> Result<(), CollectiveError> {
        let start = Instant::now();
        self.agree(self.link.call(tag, data.len(), Some(root)), start)?;
        // Every rank named the same root: all of them fail alike.
        if root >= self.link.world {
            let reason = format!(
                "broadcast root {root} is not a rank of a group of {}",
                self.link.world
            );
            return Err(self.fail(CollectiveError::Invalid {
                tag,
                rank: self.link.rank,
                reason,
            }));
        }
        for part in data.chunks_mut(raw::MAX_COUNT) {
            // SAFETY: as in `Link::sum`.
            let request = unsafe { self.link.comm.broadcast(root, part) };
            self.link.wait(tag, request, start);
        }
        Ok(())
    }

    fn all_gather_bytes(
        &mut self,
        tag: Tag,
        local: &[u8],
    ) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let start = Instant::now();
        // Lengths legitimately differ here (that is what is being compared).
        self.agree(self.link.call(tag, 0, None), start)?;
        let world = self.link.world;
        let mut lengths = vec![0u64; world];
        // SAFETY: as in `Link::sum`.
        let request = unsafe {
            self.link
                .comm
                .all_gather(&[local.len() as u64], &mut lengths)
        };
        self.link.wait(tag, request, start);

        let mut offsets = Vec::with_capacity(world);
        let mut total = 0u64;
        for &length in &lengths {
            offsets.push(total);
            total += length;
        }
        let as_counts = |values: &[u64]| -> Option<Vec<i32>> {
            values.iter().map(|&v| i32::try_from(v).ok()).collect()
        };
        // Every rank sees the same lengths: all of them fail alike.
        let (Some(counts), Some(offsets), Ok(_)) = (
            as_counts(&lengths),
            as_counts(&offsets),
            i32::try_from(total),
        ) else {
            let reason = format!("{total} bytes in all are more than one MPI gather can carry");
            return Err(self.fail(CollectiveError::Invalid {
                tag,
                rank: self.link.rank,
                reason,
            }));
        };
        let mut all = vec![0u8; total as usize];
        // SAFETY: as in `Link::sum`; `all` holds every rank's bytes at
        // `offsets`.
        let request = unsafe {
            self.link
                .comm
                .all_gather_varying(local, &mut all, &counts, &offsets)
        };
        self.link.wait(tag, request, start);
        Ok(offsets
            .iter()
            .zip(&counts)
            .map(|(&offset, &count)| all[offset as usize..][..count as usize].to_vec())
            .collect())
    }

    fn barrier(&mut self, tag: Tag) -> Result<(), CollectiveError> {
        // Completing the call agreement needs every rank.
        self.agree(self.link.call(tag, 0, None), Instant::now())
    }

    fn abort(&mut self, tag: Tag, reason: &str) {
        self.link.abort_job(&CollectiveError::Aborted {
            tag,
            rank: self.link.rank,
            reason: reason.to_owned(),
        })
    }
}
