//! The reducer's statistics as a burn-train metric.

use std::fmt;
use std::sync::Arc;

use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

use super::ReducerStats;

/// A numeric metric of rank 0's reducer, for
/// `SupervisedTraining::metric_train_numeric`: the renderer, the metric logs
/// and the Learner's summary then show it per step and per epoch.
///
/// It reads the [`ReducerStats`] of a [`DdpStrategy`](super::DdpStrategy),
/// not the model's output, so it works with any `TrainStep` output.
#[derive(Clone)]
pub struct ReducerMetric {
    stats: ReducerStats,
    figure: Figure,
    name: MetricName,
    state: NumericMetricState,
}

#[derive(Debug, Clone, Copy)]
enum Figure {
    SentPercent,
    ParamsSkipped,
}

impl ReducerMetric {
    /// Bytes the last step sent, in percent of what a dense all-reduce of
    /// every trainable parameter would send.
    pub fn bytes_sent(stats: &ReducerStats) -> Self {
        Self::new(
            stats,
            Figure::SentPercent,
            "Reducer bytes sent (% of dense)",
        )
    }

    /// Trainable parameters the last step skipped because no rank had a
    /// gradient for them.
    pub fn params_skipped(stats: &ReducerStats) -> Self {
        Self::new(stats, Figure::ParamsSkipped, "Reducer params skipped")
    }

    fn new(stats: &ReducerStats, figure: Figure, name: &str) -> Self {
        Self {
            stats: stats.clone(),
            figure,
            name: Arc::new(name.to_owned()),
            state: NumericMetricState::new(),
        }
    }
}

impl fmt::Debug for ReducerMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReducerMetric")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Metric for ReducerMetric {
    // Every output type adapts to `()`: the figures come from the reducer.
    type Input = ();

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, _item: &(), _metadata: &MetricMetadata) -> SerializedEntry {
        let last = self.stats.last();
        let value = match self.figure {
            Figure::SentPercent if last.dense_bytes > 0 => {
                100.0 * last.bytes_sent as f64 / last.dense_bytes as f64
            }
            Figure::SentPercent => 0.0,
            Figure::ParamsSkipped => last.params_skipped as f64,
        };
        self.state
            .update(value, 1, FormatOptions::new(self.name()).precision(1))
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for ReducerMetric {
    fn value(&self) -> NumericEntry {
        self.state.current_value()
    }

    fn running_value(&self) -> NumericEntry {
        self.state.running_value()
    }
}
