//! `maskddp::train::DdpStrategy` inside burn-train's `Learner` (feature
//! `train`): three thread ranks train the conditional test model for two
//! short epochs with gradient accumulation, Adam and a decaying learning rate.
//!
//! - Replicas end bit-identical; an expert and a nested block that no batch
//!   routes to keep every bit, and Adam holds no state for them.
//! - Training one epoch, checkpointing, and resuming for the second gives
//!   the same bits as two epochs at once, with the reducer's step counter
//!   carried on; metrics were logged for both splits.
//! - The result equals, bit for bit, the hand-written loop with the same
//!   reducer, shards, micro-batches and schedule.
//! - A stop requested through the interrupter ends every rank after the
//!   same step.
//! - Training shards are disjoint and equal.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use burn::backend::Flex;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::{AutodiffModule, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::lr_scheduler::exponential::{
    ExponentialLrScheduler, ExponentialLrSchedulerConfig,
};
use burn::optim::{Adam, AdamConfig, GradientsAccumulator, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::train::renderer::CliMetricsRenderer;
use burn::train::{
    InferenceStep, Learner, LearnerOptimizerRecord, LearnerSummary, LearningComponentsMarker,
    RegressionOutput, SupervisedTraining, TrainOutput, TrainStep, TrainingStrategy,
};
use common::*;
use maskddp::prelude::*;
use maskddp::train::{DdpStrategy, ReducerMetric, ReducerStats, shard_range};

const WORLD: usize = 3;
const EXPERTS: usize = 4;
/// 12 items per rank (two left over), batches of 2, two micro-batches per
/// step: three steps per rank and epoch.
const ITEMS: usize = 38;
const BATCH: usize = 2;
const ACCUMULATION: usize = 2;
const STEPS_PER_EPOCH: u64 = 3;
const SEED: u64 = 7;
/// No batch routes here: `Route::One` picks among the first three experts.
const IDLE: [&str; 2] = ["experts.3.", "aux."];

type Optim = OptimizerAdaptor<Adam, Net<Ad>, Ad>;
type Components = LearningComponentsMarker<Ad, ExponentialLrScheduler, Net<Ad>, Optim>;

/// A batch of the items `first..`; its route depends on its first item
/// only, so it is the same on whichever rank the batch lands.
#[derive(Debug, Clone)]
pub struct NetBatch<B: Backend> {
    x: Tensor<B, 2>,
    target: Tensor<B, 2>,
    choice: Choice,
}

#[derive(Debug, Clone)]
struct ItemBatcher;

impl<B: Backend> Batcher<B, usize, NetBatch<B>> for ItemBatcher {
    fn batch(&self, items: Vec<usize>, device: &B::Device) -> NetBatch<B> {
        let rows = |offset: u64, cols: usize| {
            let rows = items
                .iter()
                .map(|&item| matrix(item as u64 * 2 + offset, 1, cols, device))
                .collect();
            Tensor::cat(rows, 0)
        };
        let first = items[0];
        NetBatch {
            x: rows(0, D_IN),
            target: rows(1, HIDDEN),
            choice: Choice {
                gated: first.is_multiple_of(2),
                route: Route::One(first % 3),
                head: first.is_multiple_of(4),
            },
        }
    }
}

fn regression<B: Backend>(model: &Net<B>, batch: NetBatch<B>) -> RegressionOutput<B> {
    let output = model.forward(batch.x, batch.choice);
    RegressionOutput::new(
        loss(output.clone(), batch.target.clone()),
        output,
        batch.target,
    )
}

impl<B: AutodiffBackend> TrainStep for Net<B> {
    type Input = NetBatch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: NetBatch<B>) -> TrainOutput<RegressionOutput<B>> {
        let item = regression(self, batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: Backend> InferenceStep for Net<B> {
    type Input = NetBatch<B>;
    type Output = RegressionOutput<B>;

    fn step(&self, batch: NetBatch<B>) -> RegressionOutput<B> {
        regression(self, batch)
    }
}

fn train_loader() -> Arc<dyn DataLoader<Ad, NetBatch<Ad>>> {
    DataLoaderBuilder::new(ItemBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new((0..ITEMS).collect()))
}

fn initial_model() -> Net<Ad> {
    with_values(Net::new(EXPERTS, true, &Default::default()), SEED)
}

fn scheduler() -> ExponentialLrScheduler {
    ExponentialLrSchedulerConfig::new(0.02, 0.9).init().unwrap()
}

fn config() -> ReducerConfig {
    ReducerConfig::default().with_bucket_cap_bytes(512)
}

/// What one `Learner` run leaves behind.
struct Run {
    params: BTreeMap<String, Vec<u32>>,
    stats: ReducerStats,
}

/// Trains up to `epochs` with the Learner on `WORLD` thread ranks, resuming
/// from `resume`'s checkpoint if given.
fn launch(dir: &Path, epochs: usize, resume: Option<usize>, stop_at_once: bool) -> Run {
    let group = ThreadGroup::with_config(
        WORLD,
        ThreadGroupConfig::default().with_timeout(Duration::from_secs(60)),
    );
    let strategy = DdpStrategy::new(group, config());
    let stats = strategy.stats();
    let valid = DataLoaderBuilder::<Flex, _, _>::new(ItemBatcher)
        .batch_size(BATCH)
        .build(InMemDataset::new((100..110).collect()));
    let mut training = SupervisedTraining::new(dir, train_loader(), valid)
        .with_training_strategy(TrainingStrategy::Custom(Arc::new(strategy)))
        .with_application_logger(None)
        .renderer(CliMetricsRenderer::new())
        .with_file_checkpointer(BinFileRecorder::<FullPrecisionSettings>::new())
        .metric_train_numeric(burn::train::metric::LossMetric::new())
        .metric_valid_numeric(burn::train::metric::LossMetric::new())
        .metric_train_numeric(ReducerMetric::bytes_sent(&stats))
        .metric_train_numeric(ReducerMetric::params_skipped(&stats))
        .grads_accumulation(ACCUMULATION)
        .num_epochs(epochs);
    if let Some(epoch) = resume {
        training = training.checkpoint(epoch);
    }
    if stop_at_once {
        training.interrupter().stop(Some("stopped by the test"));
    }
    let learner: Learner<Components> =
        Learner::new(initial_model(), AdamConfig::new().init(), scheduler());
    let result = training.launch(learner);
    Run {
        params: param_bits(&result.model),
        stats,
    }
}

fn assert_replicas_identical(run: &Run) {
    let checksums = run.stats.replica_checksums();
    assert_eq!(checksums.len(), WORLD);
    assert!(
        checksums.iter().all(|(_, sum)| *sum == checksums[0].1),
        "replicas differ: {checksums:?}"
    );
}

fn idle(path: &str) -> bool {
    IDLE.iter().any(|prefix| path.starts_with(prefix))
}

#[test]
fn learner_trains_checkpoints_and_resumes_on_three_ranks() {
    let initial = param_bits(&initial_model().valid());
    let once = tempdir("once");
    let whole = launch(&once, 2, None, false);
    assert_replicas_identical(&whole);
    assert_eq!(whole.stats.last().step, 2 * STEPS_PER_EPOCH);
    for (path, bits) in &whole.params {
        if idle(path) {
            assert_eq!(
                bits, &initial[path],
                "{path} moved although no batch used it"
            );
        } else {
            assert_ne!(bits, &initial[path], "{path} did not train");
        }
    }

    // Adam holds state for exactly the parameters that had gradients.
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let optimizer: LearnerOptimizerRecord<Components> = Recorder::<Ad>::load(
        &recorder,
        once.join("checkpoint/optim-2"),
        &Default::default(),
    )
    .expect("rank 0 wrote the checkpoint of epoch 2");
    let with_state: HashSet<ParamId> = optimizer.keys().copied().collect();
    let trained = burn::module::Module::<Ad>::load_record(
        initial_model(),
        Recorder::<Ad>::load(
            &recorder,
            once.join("checkpoint/model-2"),
            &Default::default(),
        )
        .unwrap(),
    );
    let layout = maskddp::ParamLayout::of(&trained);
    for slot in layout.slots() {
        assert_eq!(
            with_state.contains(&slot.id),
            !idle(&slot.path),
            "optimizer state of {}",
            slot.path
        );
    }

    // Metrics of both splits and of the reducer reached the logs.
    let summary = LearnerSummary::new(
        &*once,
        &[
            "Loss",
            "Reducer bytes sent (% of dense)",
            "Reducer params skipped",
        ],
    )
    .unwrap();
    assert_eq!(summary.epochs, 2);
    assert_eq!(summary.metrics.train.len(), 3, "train metrics");
    assert_eq!(summary.metrics.valid.len(), 1, "valid loss");
    for metric in summary.metrics.train.iter().chain(&summary.metrics.valid) {
        assert_eq!(metric.entries.len(), 2, "{} per epoch", metric.name);
    }
    let sent = &summary.metrics.train[1].entries[0].value;
    assert!(*sent > 0.0 && *sent < 100.0, "sent {sent}% of dense");

    // One epoch, a checkpoint, then a resumed second epoch: the same bits.
    let twice = tempdir("twice");
    let first = launch(&twice, 1, None, false);
    assert_eq!(first.stats.last().step, STEPS_PER_EPOCH);
    let resumed = launch(&twice, 2, Some(1), false);
    assert_replicas_identical(&resumed);
    assert_eq!(
        resumed.stats.last().step,
        2 * STEPS_PER_EPOCH,
        "the step counter carries on"
    );
    assert_eq!(resumed.stats.summary().steps, STEPS_PER_EPOCH);
    assert!(resumed.params == whole.params, "resumed training differs");
}

#[test]
fn learner_equals_the_hand_written_loop() {
    let learner = launch(&tempdir("equivalence"), 2, None, false);
    let loader = train_loader();
    let hand_written = all_ok(run_ranks(
        ThreadGroup::new(WORLD),
        Duration::from_secs(120),
        move |rank, collective| {
            let (mut model, mut reducer) =
                Reducer::new(initial_model(), collective, config()).unwrap();
            let mut optimizer: Optim = AdamConfig::new().init();
            let mut scheduler = scheduler();
            let range = shard_range(loader.num_items(), rank, WORLD);
            let shard = loader.slice(range.start, range.end);
            for _epoch in 0..2 {
                let batches: Vec<_> = shard.iter().collect();
                for micro_batches in batches.chunks(ACCUMULATION) {
                    let lr = scheduler.step();
                    let mut accumulator = GradientsAccumulator::new();
                    for batch in micro_batches {
                        let output = reducer.forward(|| TrainStep::step(&model, batch.clone()));
                        accumulator.accumulate(&model, output.grads);
                    }
                    let grads = reducer.reduce(accumulator.grads()).unwrap();
                    model = optimizer.step(lr, model, grads);
                }
            }
            param_bits(&model.valid())
        },
    ));
    for (rank, params) in hand_written.iter().enumerate() {
        assert!(
            *params == learner.params,
            "rank {rank}: the Learner's result differs"
        );
    }
}

#[test]
fn the_interrupter_stops_every_rank_after_the_same_step() {
    let run = launch(&tempdir("interrupted"), 2, None, true);
    assert_eq!(run.stats.last().step, 1);
    assert_replicas_identical(&run);
}

#[test]
fn shards_are_disjoint_equal_and_cover_all_but_the_remainder() {
    for items in 0..40 {
        for world in 1..6 {
            let shards: Vec<_> = (0..world)
                .map(|rank| shard_range(items, rank, world))
                .collect();
            for pair in shards.windows(2) {
                assert_eq!(pair[0].end, pair[1].start, "{items} items, {world} ranks");
                assert_eq!(pair[0].len(), pair[1].len());
            }
            assert_eq!(shards[0].start, 0);
            assert_eq!(shards[world - 1].end, items - items % world);
        }
    }
}

/// A fresh directory for one run's artifacts, removed when dropped.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("maskddp-learner-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}
