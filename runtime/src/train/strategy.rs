//! The strategy: one worker thread per local rank, joined into one result.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use burn::tensor::Device;
use burn::tensor::backend::Backend;
use burn::train::{
    Learner, LearningComponentsTypes, SupervisedLearningStrategy, SupervisedTrainingEventProcessor,
    TrainLoader, TrainingComponents, TrainingModel, ValidLoader,
};

use super::ReducerStats;
use super::worker::{Epochs, Worker};
use crate::collective::Collective;
use crate::model::DdpModel;
use crate::reducer::ReducerConfig;

/// A burn-train training strategy that trains a `#[ddp_model]` data-parallel
/// with a [`Reducer`](crate::Reducer) per rank (see the [module
/// documentation](super) for what it does each step and epoch).
///
/// Give it the collectives of the ranks this process runs, for example
/// [`ThreadGroup::new(4)`](crate::ThreadGroup::new) for four ranks on threads.
/// A strategy trains once: its collectives are used up by the run.
pub struct DdpStrategy<B: Backend, C: Collective> {
    collectives: Mutex<Vec<C>>,
    devices: Option<Vec<Device<B>>>,
    config: ReducerConfig,
    stats: ReducerStats,
}

impl<B: Backend, C: Collective> std::fmt::Debug for DdpStrategy<B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DdpStrategy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<B: Backend, C: Collective> DdpStrategy<B, C> {
    /// One rank per collective, all on the device of the learner's model.
    pub fn new(collectives: Vec<C>, config: ReducerConfig) -> Self {
        Self {
            collectives: Mutex::new(collectives),
            devices: None,
            config,
            stats: ReducerStats::default(),
        }
    }

    /// Puts the rank of the `i`-th collective on `devices[i]` (one GPU per
    /// rank, for example): its model, its training shard and its part of
    /// the validation set.
    pub fn with_devices(mut self, devices: Vec<Device<B>>) -> Self {
        self.devices = Some(devices);
        self
    }

    /// The reducer statistics of this strategy's run, shared with it: take
    /// it before handing the strategy to the Learner.
    pub fn stats(&self) -> ReducerStats {
        self.stats.clone()
    }
}

impl<LC, C> SupervisedLearningStrategy<LC> for DdpStrategy<LC::Backend, C>
where
    LC: LearningComponentsTypes + Send + 'static,
    LC::TrainingModel: DdpModel<LC::Backend>,
    C: Collective + 'static,
{
    fn fit(
        &self,
        components: TrainingComponents<LC>,
        learner: Learner<LC>,
        dataloader_train: TrainLoader<LC>,
        dataloader_valid: ValidLoader<LC>,
        starting_epoch: usize,
    ) -> (TrainingModel<LC>, SupervisedTrainingEventProcessor<LC>) {
        let collectives = std::mem::take(
            &mut *self
                .collectives
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        assert!(
            !collectives.is_empty(),
            "a DdpStrategy trains once: build another, with new collectives, for another run"
        );
        if let Some(devices) = &self.devices {
            assert_eq!(
                devices.len(),
                collectives.len(),
                "DdpStrategy::with_devices needs one device per collective"
            );
        }
        let local_ranks = collectives.len();
        // Validation belongs to the process of rank 0 (the one whose
        // renderer and event store the user watches), split over its ranks.
        let validates = collectives.iter().any(|collective| collective.rank() == 0);
        let processor = Arc::new(Mutex::new(components.event_processor));
        let epochs = Epochs {
            first: starting_epoch,
            last: components.num_epochs,
            accumulation: components.grad_accumulation.unwrap_or(1).max(1),
        };
        let mut checkpointer = components.checkpointer;
        let mut early_stopping = components.early_stopping;

        let workers: Vec<_> = collectives
            .into_iter()
            .enumerate()
            .map(|(local, collective)| {
                let rank = collective.rank();
                let worker = Worker::<LC> {
                    config: self.config,
                    learner: learner.clone(),
                    device: self.devices.as_ref().map(|devices| devices[local].clone()),
                    train: dataloader_train.clone(),
                    valid: validates.then(|| dataloader_valid.clone()),
                    local: (local, local_ranks),
                    epochs,
                    processor: processor.clone(),
                    interrupter: components.interrupter.clone(),
                    event_store: components.event_store.clone(),
                    checkpointer: if rank == 0 { checkpointer.take() } else { None },
                    early_stopping: if rank == 0 {
                        early_stopping.take()
                    } else {
                        None
                    },
                    stats: self.stats.clone(),
                };
                let handle = thread::Builder::new()
                    .name(format!("maskddp rank {rank}"))
                    .spawn(move || worker.run(collective))
                    .expect("the OS starts a thread per rank");
                (rank, handle)
            })
            .collect();

        let mut model = None;
        let mut failures = Vec::new();
        for (rank, handle) in workers {
            match handle.join() {
                Ok(Ok(trained)) => {
                    model.get_or_insert(trained);
                }
                Ok(Err(err)) => failures.push(format!("rank {rank}: {err}")),
                Err(panic) => failures.push(format!("rank {rank} panicked: {}", message(&panic))),
            }
        }
        // `fit` has no error channel: a failed rank fails the whole run.
        assert!(
            failures.is_empty(),
            "data-parallel training failed:\n{}",
            failures.join("\n")
        );
        if let Some(reason) = components.interrupter.get_message() {
            log::info!("training interrupted: {reason}");
        }
        log::info!("maskddp reducer (rank 0):\n{}", self.stats.summary());
        let processor = Arc::into_inner(processor)
            .expect("every worker has ended")
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        // Replicas are identical: any rank's model is the model.
        (model.expect("at least one rank"), processor)
    }
}

fn message(panic: &Box<dyn Any + Send>) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "(no message)"
    }
}
