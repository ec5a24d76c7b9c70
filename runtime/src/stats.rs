//! Per-step reducer statistics and their running summary.

use std::fmt;
use std::time::Duration;

/// What one [`Reducer::reduce`](crate::Reducer::reduce) call did on this rank.
///
/// Byte counts are what this rank contributes to the collectives (the buffer
/// sizes it all-reduces); an all-reduce algorithm moves a constant multiple of
/// that, the same for the dense comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Step number (from 1).
    pub step: u64,
    /// Bytes all-reduced: gradient buckets in the wire format plus usage counts.
    pub bytes_sent: u64,
    /// Of `bytes_sent`, the gradient counts (alone or in the lead bucket).
    pub usage_bytes: u64,
    /// Bytes a dense f32 all-reduce of every trainable parameter would send.
    pub dense_bytes: u64,
    /// Parameters (slots) reduced.
    pub params_reduced: usize,
    /// Trainable parameters skipped because no rank used them.
    pub params_skipped: usize,
    /// Scalar elements reduced.
    pub elements_reduced: usize,
    /// Scalar elements skipped.
    pub elements_skipped: usize,
    /// Number of bucket all-reduces.
    pub buckets: usize,
    /// Of `buckets`, those whose packing and unpacking ran on a helper
    /// thread alongside the other buckets' all-reduces
    /// ([`ReducerConfig::pipeline`](crate::ReducerConfig::pipeline)).
    pub pipelined_buckets: usize,
    /// Parameters whose gradient on this rank held NaN or an infinity, or a
    /// value the compressed wire format cannot hold (counted under
    /// [`NonFinite::Warn`](crate::NonFinite::Warn); an error under `Error`).
    pub non_finite_local: usize,
    /// Parameters whose reduced gradient holds NaN or an infinity: the same
    /// on every rank, so every rank can skip the optimizer step alike
    /// (counted under [`NonFinite::Warn`](crate::NonFinite::Warn)).
    pub non_finite_reduced: usize,
    /// Taking gradients out of burn and packing buckets.
    pub pack: Duration,
    /// The separate exchange of gradient counts: zero when they travel in
    /// the lead bucket (the reducer's default), whose all-reduce counts in
    /// `all_reduce`.
    pub exchange: Duration,
    /// Bucket all-reduces (including wire conversion).
    pub all_reduce: Duration,
    /// Scaling and handing gradients back to burn.
    pub unpack: Duration,
}

impl StepStats {
    /// The phases' times added up: the time spent in the reducer, except
    /// that the phases of pipelined buckets overlap, so there it is more.
    pub fn total_time(&self) -> Duration {
        self.pack + self.exchange + self.all_reduce + self.unpack
    }
}

/// Binary-prefixed byte count (`1.5 MiB`).
pub(crate) struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

impl fmt::Display for StepStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "step {}: sent {} of {} dense ({:.1}%), skipped {} of {} params ({} elements), \
             {} bucket(s){}; pack {:.3} ms, exchange {:.3} ms, all-reduce {:.3} ms, unpack {:.3} ms",
            self.step,
            Bytes(self.bytes_sent),
            Bytes(self.dense_bytes),
            percent(self.bytes_sent, self.dense_bytes),
            self.params_skipped,
            self.params_skipped + self.params_reduced,
            self.elements_skipped,
            self.buckets,
            match self.pipelined_buckets {
                0 => String::new(),
                pipelined => format!(" ({pipelined} pipelined)"),
            },
            ms(self.pack),
            ms(self.exchange),
            ms(self.all_reduce),
            ms(self.unpack),
        )?;
        if self.non_finite_local + self.non_finite_reduced > 0 {
            write!(
                f,
                "; non-finite gradients: {} param(s) on this rank, {} reduced",
                self.non_finite_local, self.non_finite_reduced
            )?;
        }
        Ok(())
    }
}

/// Totals over all steps; see [`Reducer::summary`](crate::Reducer::summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSummary {
    /// Steps reduced.
    pub steps: u64,
    /// Sum of [`StepStats::bytes_sent`].
    pub bytes_sent: u64,
    /// Sum of [`StepStats::usage_bytes`].
    pub usage_bytes: u64,
    /// Sum of [`StepStats::dense_bytes`].
    pub dense_bytes: u64,
    /// Sum of [`StepStats::params_skipped`].
    pub params_skipped: u64,
    /// Sum of [`StepStats::params_reduced`].
    pub params_reduced: u64,
    /// Sum of [`StepStats::elements_skipped`].
    pub elements_skipped: u64,
    /// Sum of [`StepStats::elements_reduced`].
    pub elements_reduced: u64,
    /// Sum of [`StepStats::buckets`].
    pub buckets: u64,
    /// Sum of [`StepStats::pipelined_buckets`].
    pub pipelined_buckets: u64,
    /// Sum of [`StepStats::non_finite_local`].
    pub non_finite_local: u64,
    /// Sum of [`StepStats::non_finite_reduced`].
    pub non_finite_reduced: u64,
    /// Steps with a non-zero [`StepStats::non_finite_reduced`].
    pub non_finite_steps: u64,
    /// Sum of [`StepStats::pack`].
    pub pack: Duration,
    /// Sum of [`StepStats::exchange`].
    pub exchange: Duration,
    /// Sum of [`StepStats::all_reduce`].
    pub all_reduce: Duration,
    /// Sum of [`StepStats::unpack`].
    pub unpack: Duration,
}

impl StatsSummary {
    /// Adds one step.
    pub fn add(&mut self, step: &StepStats) {
        self.steps += 1;
        self.bytes_sent += step.bytes_sent;
        self.usage_bytes += step.usage_bytes;
        self.dense_bytes += step.dense_bytes;
        self.params_skipped += step.params_skipped as u64;
        self.params_reduced += step.params_reduced as u64;
        self.elements_skipped += step.elements_skipped as u64;
        self.elements_reduced += step.elements_reduced as u64;
        self.buckets += step.buckets as u64;
        self.pipelined_buckets += step.pipelined_buckets as u64;
        self.non_finite_local += step.non_finite_local as u64;
        self.non_finite_reduced += step.non_finite_reduced as u64;
        self.non_finite_steps += u64::from(step.non_finite_reduced > 0);
        self.pack += step.pack;
        self.exchange += step.exchange;
        self.all_reduce += step.all_reduce;
        self.unpack += step.unpack;
    }

    /// Fraction of the dense traffic actually sent (1.0 = no saving).
    pub fn sent_fraction(&self) -> f64 {
        percent(self.bytes_sent, self.dense_bytes) / 100.0
    }
}

impl fmt::Display for StatsSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps = self.steps.max(1);
        let per_step = |d: Duration| ms(d) / steps as f64;
        writeln!(
            f,
            "{} steps: sent {} of {} a dense all-reduce would send ({:.1}%; usage exchange {})",
            self.steps,
            Bytes(self.bytes_sent),
            Bytes(self.dense_bytes),
            percent(self.bytes_sent, self.dense_bytes),
            Bytes(self.usage_bytes),
        )?;
        writeln!(
            f,
            "parameters skipped per step: {:.1} of {} ({:.1}% of the elements), {:.1} buckets per step",
            self.params_skipped as f64 / steps as f64,
            (self.params_skipped + self.params_reduced) / steps,
            percent(
                self.elements_skipped,
                self.elements_skipped + self.elements_reduced
            ),
            self.buckets as f64 / steps as f64,
        )?;
        write!(
            f,
            "time per step: pack {:.3} ms, exchange {:.3} ms, all-reduce {:.3} ms, unpack {:.3} ms",
            per_step(self.pack),
            per_step(self.exchange),
            per_step(self.all_reduce),
            per_step(self.unpack),
        )?;
        if self.non_finite_local + self.non_finite_reduced > 0 {
            write!(
                f,
                "\nnon-finite gradients: {} on this rank, {} reduced, in {} step(s)",
                self.non_finite_local, self.non_finite_reduced, self.non_finite_steps
            )?;
        }
        Ok(())
    }
}
