//! The per-thread usage scope that instrumented `forward`s record into.
//!
//! Ranks may be threads of one process, so the active scope is thread-local:
//! a forward on one rank never records into another rank's scope.

use std::cell::RefCell;

use burn::module::ParamId;

thread_local! {
    static ACTIVE: RefCell<Option<Vec<ParamId>>> = const { RefCell::new(None) };
}

/// The conditional parameters recorded by the forwards run inside
/// [`UsageRecord::record`], as parameter ids (duplicates allowed).
///
/// Reuse one record across steps: [`UsageRecord::clear`] keeps the buffer, so
/// recording does not allocate in steady state.
#[derive(Debug, Default)]
pub struct UsageRecord {
    ids: Vec<ParamId>,
}

impl UsageRecord {
    /// Runs `f` with this record as the thread's active usage scope; every
    /// conditional parameter an instrumented method touches is appended.
    /// Scopes nest: the previous scope is restored afterwards, even on panic.
    pub fn record<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Restore<'a> {
            record: &'a mut UsageRecord,
            previous: Option<Vec<ParamId>>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let previous = self.previous.take();
                if let Some(ids) = ACTIVE.with(|active| active.replace(previous)) {
                    self.record.ids = ids;
                }
            }
        }
        let ids = std::mem::take(&mut self.ids);
        let previous = ACTIVE.with(|active| active.replace(Some(ids)));
        let _restore = Restore {
            record: self,
            previous,
        };
        f()
    }

    /// The recorded parameter ids, in recording order, with repeats.
    pub fn ids(&self) -> &[ParamId] {
        &self.ids
    }

    /// Forgets what was recorded, keeping the buffer.
    pub fn clear(&mut self) {
        self.ids.clear();
    }
}

/// Runs `f` in a fresh usage scope and returns its result with what it recorded.
pub fn record_usage<R>(f: impl FnOnce() -> R) -> (R, UsageRecord) {
    let mut record = UsageRecord::default();
    let out = record.record(f);
    (out, record)
}

/// Appends `id` to the active scope; a no-op outside any scope (inference).
pub(crate) fn record_id(id: ParamId) {
    ACTIVE.with(|active| {
        if let Some(ids) = active.borrow_mut().as_mut() {
            ids.push(id);
        }
    });
}

/// Whether a usage scope is active on this thread.
pub(crate) fn is_recording() -> bool {
    ACTIVE.with(|active| active.borrow().is_some())
}
