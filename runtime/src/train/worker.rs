//! One rank's training: its epochs, steps and share of validation.

use std::sync::{Arc, Mutex, PoisonError};

use burn::data::dataloader::Progress;
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;
use burn::train::metric::store::EventStoreClient;
use burn::train::{
    EventProcessorTraining, InferenceStep, Interrupter, Learner, LearnerEvent,
    LearningCheckpointer, LearningComponentsTypes, SupervisedTrainingEventProcessor, TrainLoader,
    TrainStep, TrainingItem, ValidLoader,
};

use super::{ReducerStats, shard_range};
use crate::collective::{Collective, Op, Tag};
use crate::error::DdpError;
use crate::model::DdpModel;
use crate::reducer::{Reducer, ReducerConfig, parameter_checksum};

type Model<LC> = <LC as LearningComponentsTypes>::TrainingModel;
type Output<LC> = <Model<LC> as TrainStep>::Output;
type Processor<LC> = Arc<Mutex<SupervisedTrainingEventProcessor<LC>>>;

/// The epochs a run covers and the micro-batches per step.
#[derive(Debug, Clone, Copy)]
pub(super) struct Epochs {
    pub first: usize,
    pub last: usize,
    pub accumulation: usize,
}

/// Everything one rank needs besides its collective; moved onto its thread.
pub(super) struct Worker<LC: LearningComponentsTypes> {
    pub config: ReducerConfig,
    pub learner: Learner<LC>,
    pub device: Option<Device<LC::Backend>>,
    pub train: TrainLoader<LC>,
    /// The whole validation set, in the process that validates.
    pub valid: Option<ValidLoader<LC>>,
    /// This rank's index among the ranks of this process, and their number.
    pub local: (usize, usize),
    pub epochs: Epochs,
    pub processor: Processor<LC>,
    pub interrupter: Interrupter,
    pub event_store: Arc<EventStoreClient>,
    pub checkpointer: Option<LearningCheckpointer<LC>>,
    pub early_stopping: Option<Box<dyn burn::train::CloneEarlyStoppingStrategy>>,
    pub stats: ReducerStats,
}

impl<LC> Worker<LC>
where
    LC: LearningComponentsTypes,
    Model<LC>: DdpModel<LC::Backend>,
{
    /// Trains this rank: set-up, then every epoch; returns the trained model.
    pub(super) fn run<C: Collective>(mut self, collective: C) -> Result<Model<LC>, DdpError> {
        if let Some(device) = &self.device {
            self.learner.fork(device);
        }
        let (model, mut reducer) = Reducer::new(self.learner.model(), collective, self.config)?;
        // Rank 0's parameters, under this learner's parameter ids.
        self.learner.load_model(model.into_record());

        let rank = reducer.rank();
        let (train, valid) = self.data(rank, reducer.world_size());

        // One rank per process closes each epoch in the event processor.
        let leader = self.local.0 == 0;
        for epoch in self.epochs.first..=self.epochs.last {
            let progress = Progress::new(epoch, self.epochs.last);
            let stopped = self.train_epoch(&mut reducer, &train, &progress)?;
            // Every rank ran the same steps (a different count is reported
            // here, as a step mismatch) and reported its items.
            reducer.barrier()?;
            if leader {
                self.process(|processor| processor.process_train(LearnerEvent::EndEpoch(epoch)));
            }
            if stopped {
                break;
            }
            if let Some(valid) = &valid {
                self.validate(valid, &progress);
            }
            reducer.barrier()?;
            if leader && valid.is_some() {
                self.process(|processor| processor.process_valid(LearnerEvent::EndEpoch(epoch)));
            }
            if let Some(checkpointer) = &mut self.checkpointer {
                checkpointer.checkpoint(&self.learner, epoch, &self.event_store);
            }
            let stop = match &mut self.early_stopping {
                Some(early_stopping) => early_stopping.should_stop(epoch, &self.event_store),
                None => false,
            };
            if any_rank(&mut reducer, stop)? {
                break;
            }
        }
        let model = self.learner.model();
        self.stats.add_checksum(rank, parameter_checksum(&model));
        Ok(model)
    }

    /// This rank's shard of the training set and, in the validating
    /// process, its part of the validation set, on its device.
    fn data(&mut self, rank: usize, world: usize) -> (TrainLoader<LC>, Option<ValidLoader<LC>>) {
        let range = shard_range(self.train.num_items(), rank, world);
        let mut train = self.train.slice(range.start, range.end);
        let mut valid = self.valid.take().map(|valid| {
            let (local, locals) = self.local;
            let items = valid.num_items();
            // Every item exactly once: the last rank takes the remainder.
            let end = if local + 1 == locals {
                items
            } else {
                (local + 1) * (items / locals)
            };
            valid.slice(local * (items / locals), end)
        });
        if let Some(device) = &self.device {
            train = train.to_device(device);
            valid = valid.map(|valid| valid.to_device(device));
        }
        (train, valid)
    }

    /// Trains one epoch on this rank's shard; returns whether the ranks
    /// agreed to stop early.
    fn train_epoch<C: Collective>(
        &mut self,
        reducer: &mut Reducer<LC::Backend, C>,
        train: &TrainLoader<LC>,
        global: &Progress,
    ) -> Result<bool, DdpError> {
        let world = reducer.world_size();
        let mut batches = train.iter();
        let mut accumulator = GradientsAccumulator::new();
        let mut items = Vec::with_capacity(self.epochs.accumulation);
        let mut resumed = self.epochs.first > 1 && global.items_processed == self.epochs.first;
        while let Some(batch) = batches.next() {
            let mut progress = batches.progress();
            if std::mem::take(&mut resumed) {
                // Number the steps on from where the checkpointed run ended,
                // estimated from the first batch's size. Every rank
                // estimates alike, so batch sizes that vary would change
                // only the step numbers in messages.
                let batches_per_epoch = progress
                    .items_total
                    .div_ceil(progress.items_processed.max(1));
                let steps = batches_per_epoch.div_ceil(self.epochs.accumulation);
                reducer.set_step(((self.epochs.first - 1) * steps) as u64);
            }
            if items.is_empty() {
                self.learner.lr_step();
            }
            let learner = &self.learner;
            let output = reducer.forward(|| learner.train_step(batch));
            accumulator.accumulate(&learner.model(), output.grads);
            // Progress over the whole training set, as all ranks go.
            progress.items_processed *= world;
            progress.items_total *= world;
            items.push((output.item, progress));
            if items.len() == self.epochs.accumulation
                && self.step(reducer, &mut accumulator, &mut items, global)?
            {
                return Ok(true);
            }
        }
        // The last, shorter step of an epoch whose batches do not divide
        // by the accumulation: its gradients are not dropped.
        if !items.is_empty() && self.step(reducer, &mut accumulator, &mut items, global)? {
            return Ok(true);
        }
        Ok(false)
    }

    /// Reduces the accumulated gradients, steps the optimizer, reports the
    /// step's items; returns whether the ranks agreed to stop.
    fn step<C: Collective>(
        &mut self,
        reducer: &mut Reducer<LC::Backend, C>,
        accumulator: &mut GradientsAccumulator<Model<LC>>,
        items: &mut Vec<(Output<LC>, Progress)>,
        global: &Progress,
    ) -> Result<bool, DdpError> {
        let grads = reducer.reduce(accumulator.grads())?;
        self.learner.optimizer_step(grads);
        if reducer.rank() == 0 {
            self.stats.publish(*reducer.last_stats(), reducer.summary());
        }
        let iteration = reducer.step() as usize;
        let lr = self.learner.lr_current();
        self.process(|processor| {
            for (item, progress) in items.drain(..) {
                let item =
                    TrainingItem::new(item, progress, global.clone(), Some(iteration), Some(lr));
                processor.process_train(LearnerEvent::ProcessedItem(item));
            }
        });
        any_rank(reducer, self.interrupter.should_stop())
    }

    /// Runs this rank's part of the validation set.
    fn validate(&self, valid: &ValidLoader<LC>, global: &Progress) {
        let model = self.learner.model().valid();
        let mut batches = valid.iter();
        let mut iteration = 0;
        while let Some(batch) = batches.next() {
            iteration += 1;
            let item = TrainingItem::new(
                model.step(batch),
                batches.progress(),
                global.clone(),
                Some(iteration),
                None,
            );
            self.process(|processor| processor.process_valid(LearnerEvent::ProcessedItem(item)));
            if self.interrupter.should_stop() {
                break;
            }
        }
    }

    fn process(&self, f: impl FnOnce(&mut SupervisedTrainingEventProcessor<LC>)) {
        f(&mut self
            .processor
            .lock()
            .unwrap_or_else(PoisonError::into_inner));
    }
}

/// Whether any rank passed `true`: the ranks' shared decisions to stop
/// (interrupter, early stopping), taken at the same point by every rank so
/// that none waits for a step the others will not run.
fn any_rank<B, C>(reducer: &mut Reducer<B, C>, flag: bool) -> Result<bool, DdpError>
where
    B: burn::tensor::backend::AutodiffBackend,
    C: Collective,
{
    let tag = Tag::new(reducer.step(), Op::Barrier);
    let mut flags = [u32::from(flag)];
    reducer
        .collective_mut()
        .all_reduce_counts(tag, &mut flags)?;
    Ok(flags[0] > 0)
}
