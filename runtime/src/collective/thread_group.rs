//! Ranks as threads of one process, reducing through shared memory.
//!
//! An all-reduce is a reduce-scatter fused with an all-gather:
//!
//! 1. every rank copies its buffer into its own staging vector;
//! 2. rendezvous;
//! 3. rank `r` sums chunk `r` of every staging vector, in rank order, into its
//!    own result vector (so no rank does more than `1 / world` of the work);
//! 4. rendezvous;
//! 5. every rank copies every result chunk back into its buffer.
//!
//! Two rendezvous per operation suffice: a rank writes its staging vector only
//! after the previous operation's second rendezvous (all reads of staging are
//! done) and its result vector only after the next operation's first one (all
//! copies out of results are done). The locks around the vectors are therefore
//! never contended in a healthy group; they exist so that a broken group (a
//! rank that timed out and left while others still run) stays memory-safe.
//!
//! Every rendezvous compares the callers' tags and lengths and watches for
//! departed ranks and timeouts; the first failure is kept and every later call
//! returns it, so all ranks report the same cause.

use std::ops::{AddAssign, Range};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use half::{bf16, f16};

use super::{CallView, Collective, CollectiveError, Tag, WireBuf};

/// Settings of a [`ThreadGroup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadGroupConfig {
    /// How long a rank waits for the others at each rendezvous before it
    /// reports the missing ranks (default 60 s). A timeout too long to add to
    /// the current instant (such as [`Duration::MAX`]) means waiting forever;
    /// a departed rank is still reported at once.
    pub timeout: Duration,
}

impl Default for ThreadGroupConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
        }
    }
}

impl ThreadGroupConfig {
    /// Sets the rendezvous timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Creates the in-process collective: one [`ThreadCollective`] per rank, to be
/// moved into that rank's thread.
#[derive(Debug, Clone, Copy)]
pub struct ThreadGroup;

impl ThreadGroup {
    /// A group of `world_size` ranks with the default 60 s timeout.
    ///
    /// # Panics
    /// If `world_size` is 0.
    #[allow(clippy::new_ret_no_self)] // a group is only ever used through its members
    pub fn new(world_size: usize) -> Vec<ThreadCollective> {
        Self::with_config(world_size, ThreadGroupConfig::default())
    }

    /// A group of `world_size` ranks with the given settings.
    ///
    /// # Panics
    /// If `world_size` is 0.
    pub fn with_config(world_size: usize, config: ThreadGroupConfig) -> Vec<ThreadCollective> {
        assert!(world_size > 0, "a thread group needs at least one rank");
        let shared = Arc::new(Shared {
            world: world_size,
            timeout: config.timeout,
            sync: Mutex::new(SyncState {
                generation: 0,
                arrived: vec![None; world_size],
                first: None,
                count: 0,
                departed: vec![None; world_size],
                failure: None,
            }),
            wake: Condvar::new(),
            floats: Lanes::new(world_size),
            counts: Lanes::new(world_size),
            gathered: Mutex::new(vec![Vec::new(); world_size]),
        });
        (0..world_size)
            .map(|rank| ThreadCollective {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }
}

/// One rank of a [`ThreadGroup`].
///
/// Dropping it (the rank's thread returned or panicked) tells the other ranks
/// that this rank is gone: any of them waiting for it fails at once.
#[derive(Debug)]
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    timeout: Duration,
    sync: Mutex<SyncState>,
    wake: Condvar,
    floats: Lanes<f32>,
    counts: Lanes<u32>,
    gathered: Mutex<Vec<Vec<u8>>>,
}

#[derive(Debug)]
struct SyncState {
    /// Completed rendezvous; a waiter is released when it changes.
    generation: u64,
    /// Who has arrived at the current rendezvous, with what call.
    arrived: Vec<Option<CallView>>,
    /// The first rank to arrive at the current rendezvous: the reference view.
    first: Option<usize>,
    count: usize,
    /// `Some(panicked)` once a rank's collective was dropped.
    departed: Vec<Option<bool>>,
    /// The first failure; the group is broken from then on.
    failure: Option<CollectiveError>,
}

/// Per-rank staging and result vectors for one element type, reused across
/// operations so steady-state steps do not allocate.
#[derive(Debug)]
struct Lanes<T> {
    staging: Vec<RwLock<Vec<T>>>,
    reduced: Vec<RwLock<Vec<T>>>,
}

impl<T> Lanes<T> {
    fn new(world: usize) -> Self {
        Self {
            staging: (0..world).map(|_| RwLock::new(Vec::new())).collect(),
            reduced: (0..world).map(|_| RwLock::new(Vec::new())).collect(),
        }
    }
}

/// The part of a buffer of `len` elements that `rank` reduces.
fn chunk(len: usize, world: usize, rank: usize) -> Range<usize> {
    len * rank / world..len * (rank + 1) / world
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

macro_rules! read {
    ($lock:expr) => {
        $lock.read().unwrap_or_else(PoisonError::into_inner)
    };
}

macro_rules! write {
    ($lock:expr) => {
        $lock.write().unwrap_or_else(PoisonError::into_inner)
    };
}

impl ThreadCollective {
    fn view(&self, tag: Tag, len: usize, root: Option<usize>) -> CallView {
        CallView {
            rank: self.rank,
            tag,
            len,
            root,
        }
    }

    /// Records `err` as the group's failure (unless one is already known),
    /// wakes everybody, and returns the failure that stands.
    fn fail(&self, state: &mut SyncState, err: CollectiveError) -> CollectiveError {
        let err = state.failure.get_or_insert(err).clone();
        self.shared.wake.notify_all();
        err
    }

    fn departed_error(&self, state: &SyncState, tag: Tag) -> Option<CollectiveError> {
        let departed: Vec<usize> = (0..self.shared.world)
            .filter(|&rank| state.departed[rank].is_some())
            .collect();
        if departed.is_empty() {
            return None;
        }
        Some(CollectiveError::Departed {
            tag,
            observer: self.rank,
            panicked: departed
                .iter()
                .any(|&rank| state.departed[rank] == Some(true)),
            departed,
        })
    }

    /// Waits until every rank has arrived with the same call as `view`.
    fn rendezvous(&self, view: CallView) -> Result<(), CollectiveError> {
        let shared = &*self.shared;
        let mut state = lock(&shared.sync);
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        if let Some(err) = self.departed_error(&state, view.tag) {
            return Err(self.fail(&mut state, err));
        }
        match state.first {
            Some(first) => {
                let reference = state.arrived[first]
                    .clone()
                    .expect("first rank has arrived");
                if (reference.tag, reference.len, reference.root) != (view.tag, view.len, view.root)
                {
                    let err = CollectiveError::Mismatch {
                        first: reference,
                        second: view,
                    };
                    return Err(self.fail(&mut state, err));
                }
            }
            None => state.first = Some(self.rank),
        }
        let tag = view.tag;
        state.arrived[self.rank] = Some(view);
        state.count += 1;
        if state.count == shared.world {
            state.generation += 1;
            state.count = 0;
            state.first = None;
            state.arrived.iter_mut().for_each(|slot| *slot = None);
            shared.wake.notify_all();
            return Ok(());
        }

        let generation = state.generation;
        let start = Instant::now();
        // A timeout too long to represent as an instant means no deadline.
        let deadline = start.checked_add(shared.timeout);
        loop {
            let now = Instant::now();
            if deadline.is_some_and(|deadline| now >= deadline) {
                let missing = (0..shared.world)
                    .filter(|&rank| state.arrived[rank].is_none())
                    .collect();
                let err = CollectiveError::Timeout {
                    tag,
                    observer: self.rank,
                    missing,
                    waited: now - start,
                };
                return Err(self.fail(&mut state, err));
            }
            state = match deadline {
                Some(deadline) => {
                    shared
                        .wake
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
            // Release comes first: a rank that completed the rendezvous and then
            // left must not fail the ranks it already released.
            if state.generation != generation {
                return Ok(());
            }
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            if let Some(err) = self.departed_error(&state, tag) {
                return Err(self.fail(&mut state, err));
            }
        }
    }

    /// Fills this rank's staging vector (step 1 of an all-reduce).
    fn stage<T>(&self, lanes: &Lanes<T>, fill: impl FnOnce(&mut Vec<T>)) {
        let mut staging = write!(lanes.staging[self.rank]);
        staging.clear();
        fill(&mut staging);
    }

    /// Steps 2–5 of an all-reduce over `lanes`, after [`Self::stage`];
    /// `unstage` copies the summed chunk at `range` back.
    fn reduce_gather<T: Copy + AddAssign>(
        &self,
        lanes: &Lanes<T>,
        view: CallView,
        mut unstage: impl FnMut(Range<usize>, &[T]),
    ) -> Result<(), CollectiveError> {
        let world = self.shared.world;
        let len = view.len;
        self.rendezvous(view.clone())?;
        {
            // Summing in rank order on whichever rank owns the chunk makes the
            // result the same bits everywhere.
            let range = chunk(len, world, self.rank);
            let mut reduced = write!(lanes.reduced[self.rank]);
            reduced.clear();
            for (owner, staging) in lanes.staging.iter().enumerate() {
                let staging = read!(staging);
                let Some(part) = staging.get(range.clone()) else {
                    return Err(self.broken(view.tag));
                };
                if owner == 0 {
                    reduced.extend_from_slice(part);
                } else {
                    for (sum, x) in reduced.iter_mut().zip(part) {
                        *sum += *x;
                    }
                }
            }
        }
        self.rendezvous(view.clone())?;
        for (owner, reduced) in lanes.reduced.iter().enumerate() {
            let range = chunk(len, world, owner);
            let reduced = read!(reduced);
            if reduced.len() != range.len() {
                return Err(self.broken(view.tag));
            }
            unstage(range, &reduced);
        }
        Ok(())
    }

    /// The error for buffers that changed under this rank, which only a
    /// broken group (a peer that gave up and moved on) can cause.
    fn broken(&self, tag: Tag) -> CollectiveError {
        let state = lock(&self.shared.sync);
        state.failure.clone().unwrap_or(CollectiveError::Invalid {
            tag,
            rank: self.rank,
            reason: "a peer overwrote the shared buffers mid-operation".to_owned(),
        })
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&mut self, tag: Tag, data: WireBuf<'_>) -> Result<(), CollectiveError> {
        if self.shared.world == 1 {
            return Ok(());
        }
        let view = self.view(tag, data.len(), None);
        let lanes = &self.shared.floats;
        // Compressed buckets are widened to f32 for the sum and rounded once at
        // the end: every rank rounds the same f32 value, so results agree.
        match data {
            WireBuf::F32(data) => {
                self.stage(lanes, |s| s.extend_from_slice(data));
                self.reduce_gather(lanes, view, |range, sum| data[range].copy_from_slice(sum))
            }
            WireBuf::Bf16(data) => {
                self.stage(lanes, |s| s.extend(data.iter().map(|x| x.to_f32())));
                self.reduce_gather(lanes, view, |range, sum| {
                    for (out, x) in data[range].iter_mut().zip(sum) {
                        *out = bf16::from_f32(*x);
                    }
                })
            }
            WireBuf::F16(data) => {
                self.stage(lanes, |s| s.extend(data.iter().map(|x| x.to_f32())));
                self.reduce_gather(lanes, view, |range, sum| {
                    for (out, x) in data[range].iter_mut().zip(sum) {
                        *out = f16::from_f32(*x);
                    }
                })
            }
        }
    }

    fn all_reduce_counts(&mut self, tag: Tag, counts: &mut [u32]) -> Result<(), CollectiveError> {
        if self.shared.world == 1 {
            return Ok(());
        }
        let view = self.view(tag, counts.len(), None);
        let lanes = &self.shared.counts;
        self.stage(lanes, |s| s.extend_from_slice(counts));
        self.reduce_gather(lanes, view, |range, sum| counts[range].copy_from_slice(sum))
    }

    fn broadcast(
        &mut self,
        tag: Tag,
        root: usize,
        data: &mut [f32],
    ) -> Result<(), CollectiveError> {
        let world = self.shared.world;
        if root >= world {
            return Err(CollectiveError::Invalid {
                tag,
                rank: self.rank,
                reason: format!("broadcast root {root} is not a rank of a group of {world}"),
            });
        }
        if world == 1 {
            return Ok(());
        }
        let staging = &self.shared.floats.staging[root];
        if self.rank == root {
            let mut staging = write!(staging);
            staging.clear();
            staging.extend_from_slice(data);
        }
        let view = self.view(tag, data.len(), Some(root));
        self.rendezvous(view.clone())?;
        if self.rank != root {
            let staging = read!(staging);
            if staging.len() != data.len() {
                return Err(self.broken(tag));
            }
            data.copy_from_slice(&staging);
        }
        // The root must not restage before everyone has copied.
        self.rendezvous(view)
    }

    fn all_gather_bytes(
        &mut self,
        tag: Tag,
        local: &[u8],
    ) -> Result<Vec<Vec<u8>>, CollectiveError> {
        lock(&self.shared.gathered)[self.rank] = local.to_vec();
        // Lengths legitimately differ here (that is what is being compared).
        let view = self.view(tag, 0, None);
        self.rendezvous(view.clone())?;
        let all = lock(&self.shared.gathered).clone();
        self.rendezvous(view)?;
        Ok(all)
    }

    fn barrier(&mut self, tag: Tag) -> Result<(), CollectiveError> {
        let view = self.view(tag, 0, None);
        self.rendezvous(view)
    }

    fn abort(&mut self, tag: Tag, reason: &str) {
        let mut state = lock(&self.shared.sync);
        let err = CollectiveError::Aborted {
            tag,
            rank: self.rank,
            reason: reason.to_owned(),
        };
        self.fail(&mut state, err);
    }
}

impl Drop for ThreadCollective {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.sync);
        state.departed[self.rank] = Some(std::thread::panicking());
        self.shared.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::chunk;

    #[test]
    fn chunks_tile_the_buffer() {
        for len in 0..20 {
            for world in 1..9 {
                let mut next = 0;
                for rank in 0..world {
                    let range = chunk(len, world, rank);
                    assert_eq!(range.start, next);
                    next = range.end;
                }
                assert_eq!(next, len);
            }
        }
    }
}
