//! Training with burn-train's `Learner` (feature `train`).
//!
//! [`DdpStrategy`] is a `SupervisedLearningStrategy`, passed to
//! `SupervisedTraining::with_training_strategy` as
//! `TrainingStrategy::Custom`. It runs one worker per rank, each on its own
//! thread with its own copy of the learner (model, optimizer, scheduler):
//!
//! - every step runs the model's `TrainStep` inside [`Reducer::forward`]
//!   (once per micro-batch under gradient accumulation, the gradients summed
//!   by burn's `GradientsAccumulator`), then [`Reducer::reduce`], then
//!   `Learner::optimizer_step`, and steps the learning-rate scheduler once per
//!   such global step;
//! - each rank trains on its own shard of the training data (see
//!   [`shard_range`]);
//! - validation runs in the process of rank 0, its validation set split over
//!   the ranks of that process, every item reported to the one event
//!   processor, so epoch metrics cover the whole set; rank 0 writes the
//!   checkpoints and decides early stopping, and all ranks follow;
//! - a resumed run restores the reducer's step counter;
//! - the interrupter stops every rank after the same step: the ranks agree
//!   on it with one tiny collective per step.
//!
//! [`ReducerStats`] carries rank 0's reducer statistics out of the workers;
//! [`ReducerMetric`] shows them among the Learner's metrics.
//!
//! [`Reducer::forward`]: crate::Reducer::forward
//! [`Reducer::reduce`]: crate::Reducer::reduce

mod metric;
mod shard;
mod stats;
mod strategy;
mod worker;

pub use metric::ReducerMetric;
pub use shard::shard_range;
pub use stats::ReducerStats;
pub use strategy::DdpStrategy;
