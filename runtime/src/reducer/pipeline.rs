//! Overlapping the passes over a step's packed buckets: while the reducer
//! all-reduces bucket k on the calling thread, a helper thread packs bucket
//! k+1 and then unpacks bucket k−1.
//!
//! The collective is only ever called from the reducer's own thread, in the
//! same order as without the pipeline (MPI needs no more than
//! `MPI_THREAD_SERIALIZED`), and each bucket's passes are the same
//! functions, so the results are the same bits. The helper gets a bucket's
//! gradients and buffers with the task and hands them back with the result;
//! at most three buckets are in flight, so at most three sets of buffers
//! are live.
//!
//! Failures keep their order and meaning. A bucket's own checks are reported
//! before it is sent, so a rank whose gradient is not finite fails before
//! the all-reduce, naming itself, as without the pipeline. A reduced
//! gradient that is not finite is the same on every rank, but ranks notice
//! it at different points of the pipeline; so every rank finishes the
//! buckets and then reports the first one (as the reducer does without the
//! pipeline too, so that ranks may choose differently). An error of the
//! collective ends the step at once; the helper finishes its task, finds
//! nobody listening and stops. A panic of the helper is a panic of the
//! reducer.

use std::panic;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::buckets::BucketLayout;
use super::host_path::{HostBucket, Reduced};
use super::{Pipeline, Reducer, WireFormat};
use crate::collective::{Collective, Op, Tag};
use crate::error::DdpError;
use crate::plan::UsagePlan;
use crate::stats::StepStats;

/// A pass for the helper.
enum Task<B: Backend> {
    Pack(HostBucket<B>),
    Unpack(HostBucket<B>),
}

/// A finished pass, and how long it took.
enum Done<B: Backend> {
    Packed(HostBucket<B>, Duration),
    Unpacked(Reduced, Duration),
}

/// The helper thread: runs tasks in order until the reducer stops sending
/// them or stops listening.
fn helper<B: Backend>(
    tasks: Receiver<Task<B>>,
    done: Sender<Done<B>>,
    plan: Arc<UsagePlan>,
    wire: WireFormat,
    check: bool,
) {
    for task in tasks {
        let start = Instant::now();
        let result = match task {
            Task::Pack(mut bucket) => {
                bucket.pack(wire, check);
                Done::Packed(bucket, start.elapsed())
            }
            Task::Unpack(bucket) => {
                Done::Unpacked(bucket.unpack(wire, check, &plan), start.elapsed())
            }
        };
        if done.send(result).is_err() {
            return;
        }
    }
}

impl<B: AutodiffBackend, C: Collective> Reducer<B, C> {
    /// Whether this step's buckets go through the pipeline: there is more
    /// than one, each is packed on the host, and the setting allows it.
    pub(super) fn pipelines(&self, layout: &BucketLayout) -> bool {
        let wanted = match self.config.pipeline {
            Pipeline::On => true,
            Pipeline::Off => false,
            Pipeline::Auto => self.spare_cores,
        };
        wanted
            && layout.buckets.len() > 1
            && !self.collective.sums_on_device()
            && !self.sums_scattered()
    }

    /// Reduces every bucket of `layout` with the passes overlapped, and
    /// registers the results in `out`. `stats` counts each phase's own time:
    /// the phases overlap, so they add up to more than the step.
    pub(super) fn reduce_pipelined(
        &mut self,
        layout: &BucketLayout,
        stats: &mut StepStats,
        out: &mut GradientsParams,
    ) -> Result<(), DdpError> {
        let (wire, check) = (self.config.wire, self.checks());
        let plan = Arc::clone(&self.plan);
        let step = self.step;
        let count = layout.buckets.len();
        thread::scope(|scope| {
            let (to_helper, tasks) = mpsc::channel();
            let (from_helper, done) = mpsc::channel();
            let helper = scope.spawn(move || helper(tasks, from_helper, plan, wire, check));
            let pack = |this: &mut Self, index: usize| {
                let bucket = &layout.buckets[index];
                let tag = Tag::new(step, Op::Bucket(index as u32));
                let bucket = this.host_bucket(tag, layout.spans(bucket), bucket.numel);
                // A helper that is gone panicked: the next receive says so.
                let _ = to_helper.send(Task::Pack(bucket));
            };
            let mut finish =
                |this: &mut Self, reduced: Reduced, time: Duration, stats: &mut StepStats| {
                    stats.unpack += time;
                    this.finish(reduced, stats, out);
                };

            pack(self, 0);
            for index in 0..count {
                self.op = Op::Bucket(index as u32);
                let mut bucket = loop {
                    match done.recv() {
                        Ok(Done::Packed(bucket, time)) => {
                            stats.pack += time;
                            break bucket;
                        }
                        Ok(Done::Unpacked(reduced, time)) => finish(self, reduced, time, stats),
                        Err(_) => panic::resume_unwind(
                            helper
                                .join()
                                .expect_err("the helper stops early only by panicking"),
                        ),
                    }
                };
                if index + 1 < count {
                    pack(self, index + 1);
                }
                self.check_packed(&bucket, stats)?;
                let start = Instant::now();
                self.all_reduce_host(&mut bucket)?;
                stats.all_reduce += start.elapsed();
                self.set_divisors(&mut bucket);
                let _ = to_helper.send(Task::Unpack(bucket));
            }
            // Closing the channel ends the helper once the last unpack is
            // done; a panic in it resurfaces when the scope joins it.
            drop(to_helper);
            for result in done {
                match result {
                    Done::Unpacked(reduced, time) => finish(self, reduced, time, stats),
                    Done::Packed(..) => unreachable!("every packed bucket was received"),
                }
            }
            stats.pipelined_buckets += count;
            Ok(())
        })
    }
}
