//! Ranks as threads of one process, reducing through shared memory.
//!
//! An all-reduce runs straight out of the ranks' own buffers, with no
//! staging copy and in one pass: every rank sums its share of the buffer and
//! writes the sums into every rank's buffer.
//!
//! 1. Every rank *lends* its buffer to the group (a table of its parts'
//!    addresses and lengths, and their element type), then meets the others
//!    (rendezvous). A buffer may be scattered over several parts (the
//!    reducer's gradients, each where burn left it): it is read as their
//!    concatenation, and every rank's parts must have the same lengths.
//! 2. Rank `r` sums chunk `r` of every rank's buffer, in rank order, a block
//!    at a time, and writes each block of sums into chunk `r` of every
//!    rank's buffer. Nobody else reads or writes chunk `r` of any buffer.
//! 3. Rank `r` gives the borrowed buffers back and meets the others again:
//!    after that every buffer holds the whole sum, and nobody touches another
//!    rank's buffer any more.
//!
//! Across the group every element is read once per rank and written once per
//! rank: `w` memcpys of the buffer, the least an all-reduce in shared memory
//! can move (a reduce-scatter followed by an all-gather moves `2w - 1` reads
//! and `w` writes). Summing in rank order on whichever rank owns a chunk
//! makes the result the same bits everywhere; compressed elements are summed
//! in f32 and rounded once.
//!
//! **Safety of the loans.** A rank touches another rank's buffer only while
//! it holds a *borrow* of that loan, counted in the group's state under its
//! lock, and only in the disjoint regions listed above. The owner, on every
//! path out of the operation (success, error, timeout, or a panic unwinding
//! through it), first withdraws the loan so no new borrow can start, then
//! waits until the count of borrows is zero: its buffer is never released
//! while another rank reads it. Borrowers never block while holding a
//! borrow, except at a rendezvous, which fails at once once the group is
//! broken; so that wait is short. The owner reaches its buffer only through
//! the address it lent while the loan is out.
//!
//! Every rendezvous compares the callers' tags and lengths and watches for
//! departed ranks and timeouts; the first failure is kept and every later call
//! returns it, so all ranks report the same cause. A rank spins briefly
//! before it parks at a rendezvous, or, when ranks outnumber cores, yields
//! its core a few times to the ranks still on their way: operations on small
//! buffers then mostly cost no sleep and wake-up.

use std::ops::{AddAssign, Range};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use half::{bf16, f16};

use super::{CallView, Collective, CollectiveError, NonFiniteFound, ScatteredPart, Tag, WireBuf};
use crate::finite;
use crate::half_float::Half;

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
            spin: std::thread::available_parallelism().is_ok_and(|cores| world_size <= cores.get()),
            sync: Mutex::new(SyncState {
                generation: 0,
                arrived: vec![None; world_size],
                first: None,
                count: 0,
                departed: vec![None; world_size],
                failure: None,
                loans: vec![None; world_size],
                borrows: vec![0; world_size],
            }),
            generation: AtomicU64::new(0),
            wake: Condvar::new(),
            gathered: Mutex::new(vec![Vec::new(); world_size]),
        });
        (0..world_size)
            .map(|rank| ThreadCollective {
                rank,
                shared: Arc::clone(&shared),
                peers: Vec::with_capacity(world_size),
                parts: Vec::new(),
                reports: Vec::new(),
                piece: Vec::with_capacity(world_size),
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
    /// The lent part tables' addresses by rank, during an operation (reused).
    peers: Vec<usize>,
    /// This rank's part table during an operation (reused).
    parts: Vec<Part>,
    /// What the summing ranks found not finite, per part of this rank's
    /// buffer (reused).
    reports: Vec<Report>,
    /// Scratch for one part of every rank's table (reused).
    piece: Vec<Part>,
}

/// A part of a lent buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Part {
    /// Address of the first element (0 where a rank lent nothing).
    addr: usize,
    len: usize,
    /// What the sums are divided by before they are written back.
    divisor: f32,
    /// Address of the lender's [`Report`] for this part; 0 when the sums
    /// are not to be checked (and then `divisor` is 1). Only f32 parts are
    /// checked.
    report: usize,
}

impl Part {
    const NONE: Part = Part::plain(0, 0);

    /// A part whose sums are written back as they are.
    const fn plain(addr: usize, len: usize) -> Self {
        Part {
            addr,
            len,
            divisor: 1.0,
            report: 0,
        }
    }
}

/// What the summing ranks found not finite in one part of a lent buffer
/// ([`NonFiniteFound`]); written by any rank, read by the lender after the
/// operation.
#[derive(Debug, Default)]
struct Report {
    in_sums: AtomicBool,
    in_values: AtomicBool,
    /// The lender's first non-finite value, by element.
    here: Mutex<Option<(usize, f32)>>,
}

impl Report {
    fn clear(&self) {
        self.in_sums.store(false, Ordering::Relaxed);
        self.in_values.store(false, Ordering::Relaxed);
        *lock(&self.here) = None;
    }

    fn found(&self) -> NonFiniteFound {
        NonFiniteFound {
            in_sums: self.in_sums.load(Ordering::Relaxed),
            in_values: self.in_values.load(Ordering::Relaxed),
            here: *lock(&self.here),
        }
    }
}

#[derive(Debug)]
struct Shared {
    world: usize,
    timeout: Duration,
    /// Whether a waiting rank spins before it parks: only when every rank
    /// can have a core, or spinning would take the core a late rank needs
    /// (it yields the core instead).
    spin: bool,
    sync: Mutex<SyncState>,
    /// `SyncState::generation`, readable without the lock, for spinning.
    generation: AtomicU64,
    wake: Condvar,
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
    /// Each rank's buffer while it is lent for an operation.
    loans: Vec<Option<Loan>>,
    /// How many ranks currently borrow each rank's loan.
    borrows: Vec<usize>,
}

/// A buffer lent to the group for one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loan {
    /// Address of the buffer's part table (`parts` entries of [`Part`]).
    table: usize,
    /// Number of parts.
    parts: usize,
    /// Total length in elements.
    len: usize,
    /// The element type, which every borrower must read it as.
    element: &'static str,
}

/// An element type the group moves: summed as `Acc`, rounded back once.
/// Both passes take a block at a time, so that 16-bit values are converted
/// by whole slices (eight at a time with the CPU's conversion instructions,
/// where it has them) rather than one call per element.
trait Element: Copy + 'static {
    type Acc: Copy;
    /// Any value; it initialises the blocks.
    const ZERO: Self;
    /// Any value; it initialises the block of running sums.
    const ACC: Self::Acc;
    /// The type's name, checked between lender and borrower.
    const NAME: &'static str;
    /// Sets (`first`) or adds to the running `sums` the `values` of one rank.
    fn accumulate(sums: &mut [Self::Acc], values: &[Self], first: bool);
    /// Adds the last rank's values `last` to the running `sums` and writes
    /// the rounded totals to `out`; with `check`, divided by `divisor`, and
    /// saying whether every total is finite. Only summed gradients in f32
    /// are checked ([`ScatteredPart`]).
    fn finish(
        sums: &[Self::Acc],
        last: &[Self],
        out: &mut [Self],
        divisor: f32,
        check: bool,
    ) -> bool;
}

/// [`Element::accumulate`] of a type summed as itself.
#[inline(always)]
fn accumulate_plain<T: Copy + AddAssign>(sums: &mut [T], values: &[T], first: bool) {
    if first {
        sums.copy_from_slice(values);
    } else {
        for (sum, &x) in sums.iter_mut().zip(values) {
            *sum += x;
        }
    }
}

impl Element for f32 {
    type Acc = f32;
    const ZERO: f32 = 0.0;
    const ACC: f32 = 0.0;
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn accumulate(sums: &mut [f32], values: &[f32], first: bool) {
        accumulate_plain(sums, values, first);
    }
    /// One loop, so that finishing a block costs no pass of its own.
    #[inline(always)]
    fn finish(sums: &[f32], last: &[f32], out: &mut [f32], divisor: f32, check: bool) -> bool {
        if !check {
            for ((out, sum), x) in out.iter_mut().zip(sums).zip(last) {
                *out = sum + x;
            }
            return true;
        }
        finite::add_scale_checked(sums, last, divisor, out)
    }
}

impl Element for u32 {
    type Acc = u32;
    const ZERO: u32 = 0;
    const ACC: u32 = 0;
    const NAME: &'static str = "u32";
    fn accumulate(sums: &mut [u32], values: &[u32], first: bool) {
        accumulate_plain(sums, values, first);
    }
    fn finish(sums: &[u32], last: &[u32], out: &mut [u32], divisor: f32, check: bool) -> bool {
        debug_assert!(!check && divisor == 1.0);
        for ((out, sum), x) in out.iter_mut().zip(sums).zip(last) {
            *out = sum + x;
        }
        true
    }
}

/// A 16-bit float summed in f32: every rank rounds the same f32 total.
macro_rules! half_element {
    ($ty:ty, $name:literal) => {
        impl Element for $ty {
            type Acc = f32;
            const ZERO: $ty = <$ty>::ZERO;
            const ACC: f32 = 0.0;
            const NAME: &'static str = $name;
            fn accumulate(sums: &mut [f32], values: &[$ty], first: bool) {
                if first {
                    <$ty>::widen(values, sums);
                } else {
                    let mut wide = [0.0f32; BLOCK];
                    let wide = &mut wide[..values.len()];
                    <$ty>::widen(values, wide);
                    for (sum, x) in sums.iter_mut().zip(wide) {
                        *sum += *x;
                    }
                }
            }
            fn finish(
                sums: &[f32],
                last: &[$ty],
                out: &mut [$ty],
                divisor: f32,
                check: bool,
            ) -> bool {
                debug_assert!(!check && divisor == 1.0);
                let mut totals = [0.0f32; BLOCK];
                let totals = &mut totals[..sums.len()];
                <$ty>::widen(last, totals);
                // `x + sum`: the same bits as `sum + x` (IEEE addition commutes).
                for (x, sum) in totals.iter_mut().zip(sums) {
                    *x += *sum;
                }
                <$ty>::narrow(totals, out);
                true
            }
        }
    };
}

half_element!(bf16, "bf16");
half_element!(f16, "f16");

/// Elements summed per block: the running sums stay in L1.
const BLOCK: usize = 1024;

/// How many times a rank yields its core at a rendezvous before it parks,
/// when ranks outnumber cores.
const YIELDS: usize = 16;

/// How long a rank spins at a rendezvous before it parks.
const SPIN: Duration = Duration::from_micros(50);

/// The part of a buffer of `len` elements that `rank` reduces.
fn chunk(len: usize, world: usize, rank: usize) -> Range<usize> {
    len * rank / world..len * (rank + 1) / world
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
            shared.generation.store(state.generation, Ordering::Release);
            state.count = 0;
            state.first = None;
            state.arrived.iter_mut().for_each(|slot| *slot = None);
            shared.wake.notify_all();
            return Ok(());
        }

        let generation = state.generation;
        let start = Instant::now();
        if !shared.spin {
            drop(state);
            // More ranks than cores: give the core away, a few times, to the
            // ranks still on their way, instead of parking at once.
            for _ in 0..YIELDS {
                std::thread::yield_now();
                if shared.generation.load(Ordering::Acquire) != generation {
                    return Ok(());
                }
            }
            state = lock(&shared.sync);
        } else {
            drop(state);
            // Release comes first (see below); the store is made under the
            // lock after every rank's arrival, so its `Acquire` load also
            // orders what the other ranks wrote before arriving.
            while start.elapsed() < SPIN {
                for _ in 0..64 {
                    if shared.generation.load(Ordering::Acquire) != generation {
                        return Ok(());
                    }
                    std::hint::spin_loop();
                }
            }
            state = lock(&shared.sync);
        }
        // A timeout too long to represent as an instant means no deadline.
        let deadline = start.checked_add(shared.timeout);
        loop {
            // Release comes first: a rank that completed the rendezvous and then
            // left must not fail the ranks it already released. Each check runs
            // before every wait: a failure may have been announced while this
            // rank spun, when no one was waiting to be woken.
            if state.generation != generation {
                return Ok(());
            }
            if let Some(failure) = &state.failure {
                return Err(failure.clone());
            }
            if let Some(err) = self.departed_error(&state, tag) {
                return Err(self.fail(&mut state, err));
            }
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
        }
    }

    /// All-reduce in place of the buffer whose parts `fill` writes into this
    /// rank's (cleared) table, straight out of every rank's buffer (see the
    /// module docs). A part with a report gets in `self.reports` what was
    /// found not finite in it.
    fn all_reduce_in_place<T: Element>(
        &mut self,
        tag: Tag,
        fill: impl FnOnce(&mut Vec<Part>, &[Report]),
    ) -> Result<(), CollectiveError> {
        let (rank, world) = (self.rank, self.shared.world);
        // From here on the parts are reached only through the lent table.
        let mut table = std::mem::take(&mut self.parts);
        table.clear();
        fill(&mut table, &self.reports);
        let len = table.iter().map(|part| part.len).sum();
        let view = self.view(tag, len, None);
        let mut peers = std::mem::take(&mut self.peers);
        let mut piece = std::mem::take(&mut self.piece);
        let result = (|| {
            let _lent = self.shared.lend::<T>(rank, &table, len);
            self.rendezvous(view.clone())?;
            let borrowed = self
                .shared
                .borrow(rank, tag, &table, T::NAME, None, &mut peers)?;
            // SAFETY: every table in `peers` is lent, with parts of `T` as
            // long as this rank's, alive while borrowed; this rank alone
            // reads and writes chunk `rank` of them until the rendezvous.
            unsafe {
                for_each_piece(
                    &peers,
                    &table,
                    chunk(len, world, rank),
                    &mut piece,
                    |parts, range| reduce_chunk_fastest::<T>(parts, parts[rank], range),
                )
            };
            // Given back before the rendezvous: once every rank has met
            // there, no loan is borrowed and every owner leaves at once.
            drop(borrowed);
            self.rendezvous(view)
        })();
        self.parts = table;
        self.peers = peers;
        self.piece = piece;
        result
    }

    /// [`Self::all_reduce_in_place`] of one contiguous buffer, unfinished.
    fn all_reduce_whole<T: Element>(
        &mut self,
        tag: Tag,
        data: &mut [T],
    ) -> Result<(), CollectiveError> {
        let part = Part::plain(data.as_mut_ptr() as usize, data.len());
        self.all_reduce_in_place::<T>(tag, |table, _| table.push(part))
    }
}

impl Shared {
    /// Lends the buffer whose parts `table` lists (`len` elements of `T` in
    /// all) to the group until the guard drops. The table must stay unchanged
    /// meanwhile: borrowers read it.
    fn lend<T: Element>(&self, rank: usize, table: &[Part], len: usize) -> Lent<'_> {
        lock(&self.sync).loans[rank] = Some(Loan {
            table: table.as_ptr() as usize,
            parts: table.len(),
            len,
            element: T::NAME,
        });
        Lent { shared: self, rank }
    }

    /// Borrows the loans of every other rank (or of `only` that rank) for an
    /// operation on a buffer of `element`s in parts as long as those of
    /// `own`, writing every rank's table address into `peers` (this rank's
    /// own, if it lent). Fails, borrowing nothing, if a loan is missing (its
    /// owner gave up) or does not match.
    fn borrow(
        &self,
        rank: usize,
        tag: Tag,
        own: &[Part],
        element: &'static str,
        only: Option<usize>,
        peers: &mut Vec<usize>,
    ) -> Result<Borrowed<'_>, CollectiveError> {
        let mut state = lock(&self.sync);
        if let Some(failure) = &state.failure {
            return Err(failure.clone());
        }
        let len: usize = own.iter().map(|part| part.len).sum();
        peers.clear();
        for owner in 0..self.world {
            match state.loans[owner] {
                // SAFETY: a loan present under the lock has a live table.
                Some(loan) if loan.element == element && unsafe { loan.parts_match(own) } => {
                    peers.push(loan.table)
                }
                // Not read: a broadcast receiver's own buffer, or a rank
                // other than the root.
                _ if !reads(rank, only, owner) => peers.push(0),
                other => {
                    let reason = match other {
                        Some(loan) => format!(
                            "rank {owner} lent {} elements of {} in {} part(s) where rank {rank} \
                             expects {len} of {element} in {} part(s) of the same lengths",
                            loan.len,
                            loan.element,
                            loan.parts,
                            own.len()
                        ),
                        None => format!("rank {owner} withdrew its buffer mid-operation"),
                    };
                    let err = CollectiveError::Invalid { tag, rank, reason };
                    let err = state.failure.get_or_insert(err).clone();
                    self.wake.notify_all();
                    return Err(err);
                }
            }
        }
        for owner in (0..self.world).filter(|&owner| reads(rank, only, owner)) {
            state.borrows[owner] += 1;
        }
        Ok(Borrowed {
            shared: self,
            rank,
            only,
        })
    }
}

impl Loan {
    /// Whether the lent parts have the lengths of `own`'s.
    ///
    /// # Safety
    /// The loan's table must be alive (the loan is present, read under the
    /// group's lock).
    unsafe fn parts_match(&self, own: &[Part]) -> bool {
        // SAFETY: by the contract, `parts` entries at `table`.
        let lent = unsafe { std::slice::from_raw_parts(self.table as *const Part, self.parts) };
        lent.len() == own.len() && lent.iter().zip(own).all(|(lent, own)| lent.len == own.len)
    }
}

/// Whether `rank` borrows `owner`'s loan: every other rank's, or only that
/// of `only`.
fn reads(rank: usize, only: Option<usize>, owner: usize) -> bool {
    owner != rank && only.is_none_or(|only| only == owner)
}

/// A lent buffer; dropping it withdraws the loan and waits until nobody
/// borrows it any more, on every way out of an operation.
struct Lent<'a> {
    shared: &'a Shared,
    rank: usize,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.sync);
        state.loans[self.rank] = None;
        // Borrowers never block while borrowing, except at a rendezvous,
        // which fails at once in a broken group: this wait is short.
        while state.borrows[self.rank] > 0 {
            state = self
                .shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Borrows of other ranks' loans; dropping it gives them back.
struct Borrowed<'a> {
    shared: &'a Shared,
    rank: usize,
    only: Option<usize>,
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.sync);
        for owner in (0..self.shared.world).filter(|&owner| reads(self.rank, self.only, owner)) {
            state.borrows[owner] -= 1;
        }
        self.shared.wake.notify_all();
    }
}

/// Splits `range` of a buffer into its pieces within single parts, and calls
/// `visit` for each with that part of every rank's table ([`Part::NONE`]
/// where `tables` has none) and the range within the part.
///
/// # Safety
/// Every non-zero address in `tables` must be a live table of parts as long
/// as those of `own`.
unsafe fn for_each_piece(
    tables: &[usize],
    own: &[Part],
    range: Range<usize>,
    piece: &mut Vec<Part>,
    mut visit: impl FnMut(&[Part], Range<usize>),
) {
    let mut start = 0;
    for (index, part) in own.iter().enumerate() {
        if start >= range.end {
            break;
        }
        let end = start + part.len;
        if range.start < end {
            piece.clear();
            piece.extend(tables.iter().map(|&table| match table {
                0 => Part::NONE,
                // SAFETY: by the contract, the table has an entry `index`.
                table => unsafe { *(table as *const Part).add(index) },
            }));
            visit(
                piece,
                range.start.max(start) - start..range.end.min(end) - start,
            );
        }
        start = end;
    }
}

/// [`reduce_chunk`], compiled for AVX2 where the CPU has it: twice the
/// lanes of the baseline's SSE2 for the sums, the division and the checks.
/// The same operations in the same order (Rust never fuses a multiply and an
/// add on its own), so the same bits.
///
/// # Safety
/// As for [`reduce_chunk`].
unsafe fn reduce_chunk_fastest<T: Element>(peers: &[Part], own: Part, range: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; the rest by the contract.
        return unsafe { reduce_chunk_avx2::<T>(peers, own, range) };
    }
    // SAFETY: by the contract.
    unsafe { reduce_chunk::<T>(peers, own, range) }
}

/// [`reduce_chunk`] with AVX2 enabled in it and in what it inlines.
///
/// # Safety
/// The CPU must have AVX2; the rest as for [`reduce_chunk`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn reduce_chunk_avx2<T: Element>(peers: &[Part], own: Part, range: Range<usize>) {
    // SAFETY: by the contract.
    unsafe { reduce_chunk::<T>(peers, own, range) }
}

/// Sums chunk `range` of the parts `peers` (by rank) in rank order, in
/// `T::Acc`, finishes the rounded sums as `own` (this rank's part) says, and
/// writes them to the same chunk of every part, a block at a time. A checked
/// block with a non-finite finished value is reported.
///
/// # Safety
/// Every part in `peers` must be a live buffer of at least `range.end`
/// elements of `T`, whose `range` no one else reads or writes meanwhile, and
/// with a live report where `own` has one (then `T` is `f32`).
#[inline(always)]
unsafe fn reduce_chunk<T: Element>(peers: &[Part], own: Part, range: Range<usize>) {
    let mut sums = [T::ACC; BLOCK];
    let mut block = [T::ZERO; BLOCK];
    let (last, first) = peers.split_last().expect("two ranks or more");
    let mut start = range.start;
    while start < range.end {
        let n = BLOCK.min(range.end - start);
        let sums = &mut sums[..n];
        // SAFETY: by the contract; the slices end before any is written.
        let values = |part: &Part| unsafe {
            std::slice::from_raw_parts((part.addr as *const T).add(start), n)
        };
        for (owner, part) in first.iter().enumerate() {
            T::accumulate(sums, values(part), owner == 0);
        }
        let block = &mut block[..n];
        // The last rank's values complete the sums on their way out.
        if !T::finish(sums, values(last), block, own.divisor, own.report != 0) {
            debug_assert_eq!(T::NAME, f32::NAME);
            // SAFETY: by the contract; the values are not written yet.
            unsafe { report_non_finite(peers, start, n) };
        }
        for part in peers {
            // SAFETY: by the contract; no other slice of this range is alive.
            unsafe {
                std::ptr::copy_nonoverlapping(block.as_ptr(), (part.addr as *mut T).add(start), n)
            };
        }
        start += n;
    }
}

/// Reports a block of `n` non-finite sums from `start` to every lender, with
/// whether some rank's values there are not finite, and to each such rank
/// its first one.
///
/// # Safety
/// Every part in `peers` must be a live buffer of at least `start + n` f32s
/// with a live report, whose block no one else writes meanwhile.
unsafe fn report_non_finite(peers: &[Part], start: usize, n: usize) {
    let mut in_values = false;
    for part in peers {
        // SAFETY: by the contract.
        let (values, report) = unsafe {
            (
                std::slice::from_raw_parts((part.addr as *const f32).add(start), n),
                &*(part.report as *const Report),
            )
        };
        if let Some((index, value)) = finite::first_non_finite(values) {
            in_values = true;
            let mut here = lock(&report.here);
            if here.is_none_or(|(element, _)| start + index < element) {
                *here = Some((start + index, value));
            }
        }
    }
    for part in peers {
        // SAFETY: by the contract.
        let report = unsafe { &*(part.report as *const Report) };
        report.in_sums.store(true, Ordering::Relaxed);
        if in_values {
            report.in_values.store(true, Ordering::Relaxed);
        }
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
        // Compressed buckets are summed in f32 and rounded once: every rank
        // rounds the same f32 value, so results agree.
        match data {
            WireBuf::F32(data) => self.all_reduce_whole(tag, data),
            WireBuf::Bf16(data) => self.all_reduce_whole(tag, data),
            WireBuf::F16(data) => self.all_reduce_whole(tag, data),
        }
    }

    fn sums_scattered(&self) -> bool {
        true
    }

    fn all_reduce_scattered(
        &mut self,
        tag: Tag,
        parts: &mut [ScatteredPart<'_>],
    ) -> Result<(), CollectiveError> {
        if self.shared.world == 1 {
            for part in parts.iter_mut() {
                let here = finite::first_non_finite(part.values);
                part.found = NonFiniteFound {
                    in_sums: !finite::scale_in_place_checked(part.values, part.divisor),
                    in_values: here.is_some(),
                    here,
                };
            }
            return Ok(());
        }
        if self.reports.len() < parts.len() {
            self.reports.resize_with(parts.len(), Report::default);
        }
        for report in &self.reports[..parts.len()] {
            report.clear();
        }
        self.all_reduce_in_place::<f32>(tag, |table, reports| {
            table.extend(parts.iter_mut().zip(reports).map(|(part, report)| Part {
                addr: part.values.as_mut_ptr() as usize,
                len: part.values.len(),
                divisor: part.divisor,
                report: report as *const Report as usize,
            }))
        })?;
        for (part, report) in parts.iter_mut().zip(&self.reports) {
            part.found = report.found();
        }
        Ok(())
    }

    fn all_reduce_counts(&mut self, tag: Tag, counts: &mut [u32]) -> Result<(), CollectiveError> {
        if self.shared.world == 1 {
            return Ok(());
        }
        self.all_reduce_whole(tag, counts)
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
        let (rank, len) = (self.rank, data.len());
        // From here on the buffer is reached only through the table.
        let mut table = std::mem::take(&mut self.parts);
        table.clear();
        table.push(Part::plain(data.as_mut_ptr() as usize, len));
        let view = self.view(tag, len, Some(root));
        let mut peers = std::mem::take(&mut self.peers);
        let result = (|| {
            let _lent = (rank == root).then(|| self.shared.lend::<f32>(rank, &table, len));
            self.rendezvous(view.clone())?;
            if rank != root {
                let _borrowed =
                    self.shared
                        .borrow(rank, tag, &table, f32::NAME, Some(root), &mut peers)?;
                // SAFETY: the root lent one part of `len` f32s, alive while
                // borrowed; it does not write them during a broadcast.
                unsafe {
                    let from = (*(peers[root] as *const Part)).addr;
                    std::ptr::copy_nonoverlapping(
                        from as *const f32,
                        table[0].addr as *mut f32,
                        len,
                    );
                }
            }
            // Everyone has borrowed before the root may leave (the root's
            // loan also waits for the copies to finish on any way out).
            self.rendezvous(view)
        })();
        self.parts = table;
        self.peers = peers;
        result
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
    use super::*;

    /// Three ranks' buffers of `len` values that round when summed, with a
    /// NaN in the middle one.
    fn buffers(len: usize) -> Vec<Vec<f32>> {
        (0..3)
            .map(|rank| {
                (0..len)
                    .map(|i| ((rank * 7919 + i * 104_729) % 20_011) as f32 * 1.37e-3 - 13.0)
                    .collect()
            })
            .collect()
    }

    /// Reduces chunk `range` of `bufs` (one rank's view), divided by 3 and
    /// checked, with `reduce`; returns the buffers and what was reported.
    fn reduce_with(
        reduce: unsafe fn(&[Part], Part, Range<usize>),
        mut bufs: Vec<Vec<f32>>,
        range: Range<usize>,
    ) -> (Vec<Vec<f32>>, Vec<NonFiniteFound>) {
        let reports: Vec<Report> = bufs.iter().map(|_| Report::default()).collect();
        let peers: Vec<Part> = bufs
            .iter_mut()
            .zip(&reports)
            .map(|(buf, report)| Part {
                addr: buf.as_mut_ptr() as usize,
                len: buf.len(),
                divisor: 3.0,
                report: report as *const Report as usize,
            })
            .collect();
        // SAFETY: every part is a live buffer with a live report, used by
        // nothing else meanwhile.
        unsafe { reduce(&peers, peers[0], range) };
        (bufs, reports.iter().map(Report::found).collect())
    }

    /// The AVX2 build of the summing pass gives the bits of the baseline's,
    /// and finds the same non-finite values.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_pass_gives_the_bits_of_the_baseline_pass() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let len = 3 * BLOCK + 77;
        let mut bufs = buffers(len);
        bufs[1][2 * BLOCK + 5] = f32::NAN;
        for range in [0..len, 17..2 * BLOCK + 300] {
            let baseline = reduce_with(reduce_chunk::<f32>, bufs.clone(), range.clone());
            let avx2 = reduce_with(reduce_chunk_avx2::<f32>, bufs.clone(), range);
            let bits = |bufs: &[Vec<f32>]| -> Vec<u32> {
                bufs.iter().flatten().map(|x| x.to_bits()).collect()
            };
            assert_eq!(bits(&baseline.0), bits(&avx2.0));
            // Debug, as a NaN found is not equal to itself.
            assert_eq!(format!("{:?}", baseline.1), format!("{:?}", avx2.1));
        }
        // The sums changed, and the NaN was found.
        let (summed, found) = reduce_with(reduce_chunk_avx2::<f32>, bufs.clone(), 0..len);
        assert_ne!(summed[0], bufs[0]);
        assert!(found.iter().all(|found| found.in_sums && found.in_values));
    }

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
