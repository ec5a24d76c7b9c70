//! Reducer statistics carried out of the worker threads.

use std::sync::{Arc, Mutex, PoisonError};

use crate::stats::{StatsSummary, StepStats};

/// Rank 0's reducer statistics during and after a [`DdpStrategy`] run, and
/// each local rank's parameter checksum at its end. Clones share the same
/// figures; get one from [`DdpStrategy::stats`] before handing the strategy
/// to the Learner.
///
/// [`DdpStrategy`]: super::DdpStrategy
/// [`DdpStrategy::stats`]: super::DdpStrategy::stats
#[derive(Debug, Clone, Default)]
pub struct ReducerStats {
    shared: Arc<Mutex<Figures>>,
}

#[derive(Debug, Default)]
struct Figures {
    last: StepStats,
    summary: StatsSummary,
    checksums: Vec<(usize, u64)>,
}

impl ReducerStats {
    fn figures(&self) -> std::sync::MutexGuard<'_, Figures> {
        // Plain data: a panicking writer cannot leave it inconsistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rank 0's statistics of its latest step.
    pub fn last(&self) -> StepStats {
        self.figures().last
    }

    /// Rank 0's statistics over every step of the run so far.
    pub fn summary(&self) -> StatsSummary {
        self.figures().summary
    }

    /// `(rank, parameter checksum)` of every rank of this process that
    /// finished, in rank order: equal checksums mean bit-identical replicas
    /// (see [`parameter_checksum`](crate::parameter_checksum)).
    pub fn replica_checksums(&self) -> Vec<(usize, u64)> {
        let mut checksums = self.figures().checksums.clone();
        checksums.sort_unstable();
        checksums
    }

    pub(super) fn publish(&self, last: StepStats, summary: StatsSummary) {
        let mut figures = self.figures();
        figures.last = last;
        figures.summary = summary;
    }

    pub(super) fn add_checksum(&self, rank: usize, checksum: u64) {
        self.figures().checksums.push((rank, checksum));
    }
}
