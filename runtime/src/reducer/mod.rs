//! The mask-aware gradient reducer.
//!
//! Per step (SPEC §4): local usage = always ∪ recorded; every gradient taken
//! out of burn is checked against it (a gradient outside it is an error). The
//! plan and the records decide only what may travel; the result follows the
//! real gradients. Every rank counts, per trainable slot (always and
//! conditional), whether its backward produced a gradient for it; the sum of
//! those counts over the ranks is the step's global usage. On a host
//! collective with the f32 wire the counts ride in the *lead bucket*, after
//! the always-planned gradients, whose layout is fixed at compile time; other
//! collectives and wires exchange them first, in one small `u32` all-reduce.
//! Conditional slots with a count above zero go into buckets laid out from
//! that global mask alone, all-reduced, scaled and handed back; a rank without
//! the gradient contributes zeros. Slots no rank has a gradient for — whether
//! unused, or planned always or recorded but cut off from the loss — get no
//! gradient at all (the optimizer leaves them and their state alone) and cost
//! no bytes.
//!
//! Checks on the way, all on data the step reads anyway: each gradient's shape
//! against its parameter's when it is taken out of burn; NaN and infinities in
//! this rank's gradients while they are packed (before anything is sent, so
//! the report names the rank), in a compressed wire buffer right after the
//! conversion (overflow), and in the reduced sums while they are scaled. A
//! collective that sums gradients where they lie checks the sums as it forms
//! them and looks at the values behind a non-finite one, which names the rank
//! just as well — see [`NonFinite`]. A `reduce` with no `forward` since the
//! previous one is an error unless it is [`Reducer::reduce_without_forward`].
//!
//! Where buckets live depends on the collective. One that sums host memory
//! (the thread group, MPI) gets a host bucket packed from the gradients read
//! to the host (`host_path`), or, on the thread group, the gradients where
//! they lie; with several packed buckets, a helper thread packs the next and
//! unpacks the previous while one is all-reduced (`pipeline`). One that sums
//! device memory (NCCL) gets a tensor on the gradients' device, packed,
//! checked, cast, reduced and unpacked there (`device_path`): no gradient
//! leaves the device.
//!
//! A world of one exchanges nothing.

mod buckets;
mod device_path;
pub(crate) mod grads;
mod half_wire;
mod host_path;
mod layout_check;
mod params;
mod pipeline;
mod usage;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::collective::{Collective, Op, Tag};
use crate::error::DdpError;
use crate::finite;
use crate::model::DdpModel;
use crate::plan::{Usage, UsagePlan};
use crate::recorder::UsageRecord;
use crate::stats::{StatsSummary, StepStats};

use buckets::{BucketCache, BucketLayout, LeadBucket};
use host_path::{Finding, HostBuffers};
use params::SlotInfo;
use usage::UsageTracker;

pub use params::parameter_checksum;

/// How a reduced gradient is scaled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Averaging {
    /// Sum over the ranks whose backward produced a gradient for the
    /// parameter, divided by the world size (PyTorch DDP and Horovod: a rank
    /// without the gradient counts as zero).
    #[default]
    WorldSize,
    /// Sum divided by the number of ranks whose backward produced a gradient
    /// for the parameter — what mixture-of-experts training usually wants for
    /// experts.
    Contributors,
}

impl fmt::Display for Averaging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Averaging::WorldSize => "world-size",
            Averaging::Contributors => "contributors",
        })
    }
}

/// The element type buckets travel in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// Full precision.
    #[default]
    F32,
    /// bfloat16: half the bytes, f32's range, about 3 significant digits.
    Bf16,
    /// IEEE half: half the bytes, more precision than bf16 but a range that
    /// large gradients can overflow.
    F16,
}

impl WireFormat {
    /// Bytes per element on the wire.
    pub fn element_bytes(self) -> usize {
        match self {
            WireFormat::F32 => 4,
            WireFormat::Bf16 | WireFormat::F16 => 2,
        }
    }
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireFormat::F32 => "f32",
            WireFormat::Bf16 => "bf16",
            WireFormat::F16 => "f16",
        })
    }
}

impl WireFormat {
    /// Its largest finite value, as a message shows it.
    fn max_text(self) -> &'static str {
        match self {
            WireFormat::F32 => "3.4028235e38",
            WireFormat::Bf16 => "3.3895314e38",
            WireFormat::F16 => "65504",
        }
    }
}

/// What the reducer does about a gradient holding NaN or an infinity, and
/// about a finite value that a compressed wire format cannot hold (it would
/// travel as an infinity).
///
/// Checks run on data the reducer reads anyway: this rank's gradients while
/// they are packed (before anything is sent, so the report names the rank
/// that produced the value), the compressed wire buffer right after the
/// conversion, and the reduced sums while they are scaled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NonFinite {
    /// Fail the step: [`DdpError::NonFiniteGradient`] naming the rank, the
    /// step and the first parameter (in slot order),
    /// [`DdpError::WireOverflow`], or [`DdpError::SumOverflow`]. The other
    /// ranks fail too, naming this one. The default: a non-finite gradient
    /// silently poisons every replica and the optimizer's state.
    #[default]
    Error,
    /// Reduce as usual and count, in [`StepStats::non_finite_local`], the
    /// parameters whose gradient on this rank is non-finite (or overflows
    /// the wire), and in [`StepStats::non_finite_reduced`] those whose
    /// reduced gradient is (the same on every rank, so every rank can skip
    /// the optimizer step alike — what dynamic loss scaling needs).
    Warn,
    /// No check at all.
    Ignore,
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NonFinite::Error => "error",
            NonFinite::Warn => "warn",
            NonFinite::Ignore => "ignore",
        })
    }
}

/// Whether the passes over a step's packed host buckets overlap: a helper
/// thread packs bucket k+1 and unpacks bucket k−1 while the reducer
/// all-reduces bucket k. Buckets are packed for MPI, and for any host
/// collective with a 16-bit wire (the thread group sums f32 gradients where
/// they lie: nothing to overlap); a step needs two or more of them.
///
/// The helper needs a core of its own: where every core already runs a
/// rank, the passes only take turns with the all-reduce, and the step is
/// slower (measured in BENCHMARKS.md). The results are the same bits either
/// way, and ranks may choose differently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Pipeline {
    /// Pipeline where this machine has at least two cores per rank on it
    /// ([`Collective::local_ranks`]).
    #[default]
    Auto,
    /// Always pipeline.
    On,
    /// Never: each bucket is packed, all-reduced and unpacked in turn.
    Off,
}

/// Settings of a [`Reducer`]; every rank must use the same (checked at set-up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReducerConfig {
    /// Largest bucket in wire bytes (default 25 MiB). A parameter larger than
    /// this travels alone.
    pub bucket_cap_bytes: usize,
    /// How reduced gradients are scaled (default [`Averaging::WorldSize`]).
    pub averaging: Averaging,
    /// Whether [`Reducer::new`] overwrites every rank's parameters with rank
    /// 0's (default `true`), so replicas start identical.
    pub broadcast_parameters: bool,
    /// The element type buckets travel in (default [`WireFormat::F32`]).
    pub wire: WireFormat,
    /// What a non-finite gradient does (default [`NonFinite::Error`]).
    pub non_finite: NonFinite,
    /// Whether a step's packed host buckets, when there are several, are
    /// pipelined (default [`Pipeline::Auto`]). A rank's own choice, not
    /// compared across ranks: the calls and results are the same either way.
    pub pipeline: Pipeline,
}

impl Default for ReducerConfig {
    fn default() -> Self {
        Self {
            bucket_cap_bytes: 25 * 1024 * 1024,
            averaging: Averaging::WorldSize,
            broadcast_parameters: true,
            wire: WireFormat::F32,
            non_finite: NonFinite::Error,
            pipeline: Pipeline::Auto,
        }
    }
}

impl ReducerConfig {
    /// Sets [`Self::bucket_cap_bytes`].
    pub fn with_bucket_cap_bytes(mut self, bytes: usize) -> Self {
        self.bucket_cap_bytes = bytes;
        self
    }

    /// Sets [`Self::averaging`].
    pub fn with_averaging(mut self, averaging: Averaging) -> Self {
        self.averaging = averaging;
        self
    }

    /// Sets [`Self::broadcast_parameters`].
    pub fn with_broadcast_parameters(mut self, broadcast: bool) -> Self {
        self.broadcast_parameters = broadcast;
        self
    }

    /// Sets [`Self::wire`].
    pub fn with_wire(mut self, wire: WireFormat) -> Self {
        self.wire = wire;
        self
    }

    /// Sets [`Self::non_finite`].
    pub fn with_non_finite(mut self, non_finite: NonFinite) -> Self {
        self.non_finite = non_finite;
        self
    }

    /// Sets [`Self::pipeline`].
    pub fn with_pipeline(mut self, pipeline: Pipeline) -> Self {
        self.pipeline = pipeline;
        self
    }
}

/// Bucket layouts kept per rank; MoE routing produces few distinct masks.
const BUCKET_CACHE_CAPACITY: usize = 64;

/// One rank's gradient reducer for a `#[ddp_model]`. The `maskddp` crate's
/// documentation has a complete, tested two-rank example; in short:
///
/// ```text
/// let (model, mut reducer) = Reducer::new(model, collective, ReducerConfig::default())?;
/// for step in 0..steps {
///     let output = reducer.forward(|| model.forward(x.clone()));
///     let grads = GradientsParams::from_grads(loss(output).backward(), &model);
///     let grads = reducer.reduce(grads)?;
///     model = optim.step(lr, model, grads);
/// }
/// ```
pub struct Reducer<B: AutodiffBackend, C: Collective> {
    collective: C,
    config: ReducerConfig,
    /// Shared with the pipeline's helper thread.
    plan: Arc<UsagePlan>,
    infos: Vec<SlotInfo<B::Device>>,
    usage: UsageTracker,
    record: UsageRecord,
    buckets: BucketCache,
    /// Per slot: this step's local gradient, taken out of burn.
    local: Vec<Option<grads::Local<B::InnerBackend>>>,
    /// The first bucket of every step, with the gradient counts after it;
    /// empty where the counts travel alone (see [`Self::new`]).
    lead: LeadBucket,
    /// This rank's gradient counts as f32, for the lead bucket (reused).
    counts_wire: Vec<f32>,
    /// Buffers of host buckets, reused across buckets and steps.
    spare_buffers: Vec<HostBuffers>,
    /// Whether this machine has at least two cores per rank on it, so that
    /// each rank's pipeline helper gets a core ([`Pipeline::Auto`]).
    spare_cores: bool,
    step: u64,
    /// Whether [`Self::forward`] ran since the last reduce.
    forward_seen: bool,
    /// The operation a step is in, for what other ranks are told on failure.
    op: Op,
    /// Per slot: already counted as non-finite on this rank in this step.
    flagged: Vec<bool>,
    /// This step's first reduced gradient whose sum overflowed (under
    /// [`NonFinite::Error`]). The sums are the same on every rank, but ranks
    /// notice them at different points of a pipeline: so the step reduces
    /// every bucket, then reports it, and every rank reports alike.
    sum_overflow: Option<DdpError>,
    last: StepStats,
    summary: StatsSummary,
    /// The steps since the last [`Self::take_summary`].
    window: StatsSummary,
    _backend: PhantomData<fn() -> B>,
}

impl<B: AutodiffBackend, C: Collective> fmt::Debug for Reducer<B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reducer")
            .field("rank", &self.collective.rank())
            .field("world_size", &self.collective.world_size())
            .field("config", &self.config)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl<B: AutodiffBackend, C: Collective> Reducer<B, C> {
    /// Sets up this rank: checks that every rank has the same parameter
    /// layout, plan and configuration, and (unless turned off) replaces this
    /// rank's parameter values with rank 0's. Every rank must call it.
    pub fn new<M: DdpModel<B>>(
        model: M,
        collective: C,
        config: ReducerConfig,
    ) -> Result<(M, Self), DdpError> {
        let mut collective = collective;
        let plan = model.usage_plan();
        for slot in plan.layout().slots() {
            let dims = slot.shape.len();
            if dims == 0 || dims > grads::MAX_DIMS {
                return Err(DdpError::UnsupportedDims {
                    path: slot.path.clone(),
                    dims,
                });
            }
        }
        let infos = params::slot_infos::<B, M>(&model);
        let dtypes: Vec<_> = infos.iter().map(|info| info.dtype).collect();

        let text = layout_check::fingerprint(&plan, &dtypes, &config);
        let all = collective.all_gather_bytes(Tag::new(0, Op::Layout), text.as_bytes())?;
        match layout_check::first_difference(&all) {
            None => {}
            Some(layout_check::Difference::Setting {
                rank,
                name,
                value,
                rank0_value,
            }) => {
                return Err(DdpError::ConfigMismatch {
                    setting: name,
                    rank,
                    value,
                    rank0_value,
                });
            }
            Some(layout_check::Difference::Layout(detail)) => {
                return Err(DdpError::LayoutMismatch { detail });
            }
        }

        let mut model = model;
        if config.broadcast_parameters && collective.world_size() > 1 {
            let mut values = vec![0.0; plan.layout().numel()];
            if collective.rank() == 0 {
                params::flatten::<B, M>(&model, &mut values);
            }
            collective.broadcast(Tag::new(0, Op::Broadcast), 0, &mut values)?;
            if collective.rank() != 0 {
                model = params::assign::<B, M>(model, &values);
            }
        }

        let slots = plan.layout().len();
        let usage = UsageTracker::new(&plan);
        // The counts travel with the always-used gradients, saving a round
        // trip per step, where they can: in f32 (exact), to a host collective.
        let lead = if config.wire == WireFormat::F32
            && !collective.sums_on_device()
            && collective.world_size() > 1
        {
            let numels: Vec<usize> = plan
                .layout()
                .slots()
                .iter()
                .map(|slot| slot.numel())
                .collect();
            let cap_elems = config.bucket_cap_bytes / config.wire.element_bytes();
            LeadBucket::build(
                &numels,
                |slot| plan.usage()[slot] == Usage::Always && !usage.is_alias(slot),
                cap_elems,
            )
        } else {
            LeadBucket::default()
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spare_cores = cores >= 2 * collective.local_ranks();
        let reducer = Self {
            usage,
            lead,
            counts_wire: Vec::new(),
            collective,
            config,
            plan: Arc::new(plan),
            infos,
            record: UsageRecord::default(),
            buckets: BucketCache::new(BUCKET_CACHE_CAPACITY),
            local: (0..slots).map(|_| None).collect(),
            spare_buffers: Vec::new(),
            spare_cores,
            step: 0,
            forward_seen: false,
            op: Op::Usage,
            flagged: vec![false; slots],
            sum_overflow: None,
            last: StepStats::default(),
            summary: StatsSummary::default(),
            window: StatsSummary::default(),
            _backend: PhantomData,
        };
        Ok((model, reducer))
    }

    /// Runs `forward` inside this rank's usage scope. Call it for every
    /// micro-batch of a step: usage is OR-ed until the next [`Self::reduce`].
    pub fn forward<R>(&mut self, forward: impl FnOnce() -> R) -> R {
        self.forward_seen = true;
        self.record.record(forward)
    }

    /// Reduces this step's gradients across ranks and returns the averaged
    /// gradients of exactly the parameters for which some rank's backward
    /// produced a gradient. A parameter planned always or recorded, but with
    /// no gradient on any rank, gets none (not zeros).
    ///
    /// A `reduce` with no [`Self::forward`] since the previous one is
    /// [`DdpError::ReduceWithoutForward`]: it would pair with the other ranks'
    /// next step and surface steps later, blaming another rank. A rank that
    /// legitimately has nothing to compute in a step calls
    /// [`Self::reduce_without_forward`] instead.
    ///
    /// On error the group is broken (other ranks are told where possible);
    /// stop training.
    pub fn reduce(&mut self, grads: GradientsParams) -> Result<GradientsParams, DdpError> {
        if !self.forward_seen {
            self.step += 1;
            let err = DdpError::ReduceWithoutForward {
                step: self.step,
                rank: self.collective.rank(),
            };
            // Tell the others now: they are about to pair their step with it.
            self.collective
                .abort(Tag::new(self.step, Op::Usage), &err.to_string());
            return Err(err);
        }
        self.reduce_now(grads)
    }

    /// [`Self::reduce`] for a step in which this rank ran no forward, on
    /// purpose: for example a rank whose data ran out while the others still
    /// have a batch, which must still take part in the step (pass
    /// `GradientsParams::new()`). It contributes whatever gradients it holds
    /// (none, usually) and gets the others' reduced gradients.
    pub fn reduce_without_forward(
        &mut self,
        grads: GradientsParams,
    ) -> Result<GradientsParams, DdpError> {
        self.reduce_now(grads)
    }

    fn reduce_now(&mut self, grads: GradientsParams) -> Result<GradientsParams, DdpError> {
        self.forward_seen = false;
        self.step += 1;
        let step = self.step;
        self.op = Op::Usage;
        let result = self.reduce_step(grads);
        self.local.iter_mut().for_each(|grad| *grad = None);
        self.flagged.iter_mut().for_each(|flag| *flag = false);
        self.sum_overflow = None;
        if let Err(err) = &result
            && !matches!(err, DdpError::Collective(_))
        {
            // Local errors: tell the others now rather than let them time out.
            self.collective
                .abort(Tag::new(step, self.op), &err.to_string());
        }
        result
    }

    fn reduce_step(&mut self, mut grads: GradientsParams) -> Result<GradientsParams, DdpError> {
        let step = self.step;
        let world = self.collective.world_size();
        let mut stats = StepStats {
            step,
            ..StepStats::default()
        };

        let start = Instant::now();
        self.usage.set_local(self.record.ids());
        self.record.clear();
        self.take_local_grads(&mut grads)?;
        stats.pack += start.elapsed();

        let mut out = grads; // empty now: every known gradient was taken

        let start = Instant::now();
        let local = &self.local;
        let counts = self.usage.local_counts(|slot| local[slot].is_some());
        if world > 1 {
            stats.usage_bytes = size_of_val(counts) as u64;
        }
        if self.lead.numel > 0 {
            // The usage exchange is the lead bucket's all-reduce.
            self.counts_wire.clear();
            self.counts_wire
                .extend(counts.iter().map(|&count| count as f32));
            let lead = std::mem::take(&mut self.lead);
            let tag = Tag::new(step, Op::Usage);
            let result =
                self.reduce_on_host(tag, &lead.spans, lead.numel, true, &mut stats, &mut out);
            stats.buckets += 1;
            stats.bytes_sent += (lead.numel * size_of::<f32>()) as u64;
            self.lead = lead;
            result?;
        } else {
            if world > 1 {
                self.collective
                    .all_reduce_counts(Tag::new(step, Op::Usage), counts)?;
            }
            self.usage.set_global();
            stats.exchange = start.elapsed();
        }

        let layout = self.bucket_layout();
        if self.pipelines(&layout) {
            self.reduce_pipelined(&layout, &mut stats, &mut out)?;
        } else {
            for (index, bucket) in layout.buckets.iter().enumerate() {
                let spans = layout.spans(bucket);
                self.op = Op::Bucket(index as u32);
                let tag = Tag::new(step, self.op);
                if self.collective.sums_on_device() {
                    self.reduce_on_device(tag, spans, &mut stats, &mut out)?;
                } else {
                    self.reduce_on_host(tag, spans, bucket.numel, false, &mut stats, &mut out)?;
                }
            }
        }
        if let Some(err) = self.sum_overflow.take() {
            return Err(err);
        }
        for bucket in &layout.buckets {
            stats.buckets += 1;
            stats.bytes_sent += (bucket.numel * self.config.wire.element_bytes()) as u64;
        }
        stats.bytes_sent += stats.usage_bytes;

        for (index, slot) in self.plan.layout().slots().iter().enumerate() {
            if self.plan.usage()[index] == Usage::Frozen || self.usage.is_alias(index) {
                continue;
            }
            stats.dense_bytes += (slot.numel() * size_of::<f32>()) as u64;
            if self.usage.is_global(index) {
                stats.params_reduced += 1;
                stats.elements_reduced += slot.numel();
                if slot.numel() == 0 {
                    // Buckets hold no empty slot; its (empty) gradient
                    // still follows the real ones.
                    let info = &self.infos[index];
                    let empty =
                        Tensor::<B::InnerBackend, 1>::zeros([0], (&info.device, DType::F32));
                    grads::put(&mut out, slot.id, &slot.shape, empty, info.dtype);
                }
            } else {
                stats.params_skipped += 1;
                stats.elements_skipped += slot.numel();
            }
        }
        self.last = stats;
        self.summary.add(&stats);
        self.window.add(&stats);
        Ok(out)
    }

    /// What the reduced sum of `slot` is divided by.
    fn divisor(&self, slot: usize) -> f32 {
        match self.config.averaging {
            Averaging::WorldSize => self.collective.world_size() as f32,
            Averaging::Contributors => self.usage.contributors(slot) as f32,
        }
    }

    /// This rank's gradient of `slot` holds `value` at `element`: an error
    /// under [`NonFinite::Error`], else counted once per slot.
    fn local_non_finite(
        &mut self,
        slot: usize,
        element: usize,
        value: f32,
        stats: &mut StepStats,
    ) -> Result<(), DdpError> {
        if self.config.non_finite == NonFinite::Error {
            return Err(DdpError::NonFiniteGradient {
                step: self.step,
                rank: self.collective.rank(),
                path: self.plan.layout().slots()[slot].path.clone(),
                element,
                value: finite::describe(value),
            });
        }
        if !std::mem::replace(&mut self.flagged[slot], true) {
            stats.non_finite_local += 1;
        }
        Ok(())
    }

    /// The reduced sums of `slot` are not all finite: with every rank's own
    /// gradient finite (always so under [`NonFinite::Error`]), the sum
    /// overflowed; every rank sees the same sums and reports alike. Under
    /// `Error` the first is kept for the end of the step
    /// (`sum_overflow`), else counted.
    fn reduced_non_finite(&mut self, slot: usize, sums: &[f32], stats: &mut StepStats) {
        if self.config.non_finite != NonFinite::Error {
            stats.non_finite_reduced += 1;
        } else if self.sum_overflow.is_none() {
            let (element, _) = finite::first_non_finite(sums).expect("a non-finite sum");
            self.sum_overflow = Some(DdpError::SumOverflow {
                step: self.step,
                path: self.plan.layout().slots()[slot].path.clone(),
                element,
                wire: self.config.wire.to_string(),
                max: self.config.wire.max_text().to_owned(),
            });
        }
    }

    /// Moves every gradient out of `grads` into `self.local`, checking each
    /// against the plan, this step's usage and its parameter's shape.
    fn take_local_grads(&mut self, grads: &mut GradientsParams) -> Result<(), DdpError> {
        let step = self.step;
        let on_device = self.collective.sums_on_device();
        for (index, slot) in self.plan.layout().slots().iter().enumerate() {
            if self.usage.is_alias(index) {
                continue;
            }
            let Some((shape, grad)) =
                grads::take::<B::InnerBackend>(grads, slot.id, slot.shape.len(), on_device)
            else {
                continue;
            };
            if self.plan.usage()[index] == Usage::Frozen {
                return Err(DdpError::FrozenGradient {
                    step,
                    path: slot.path.clone(),
                });
            }
            if !self.usage.is_local(index) {
                return Err(DdpError::UnplannedGradient {
                    step,
                    path: slot.path.clone(),
                });
            }
            if shape != slot.shape {
                return Err(DdpError::GradientShape {
                    step,
                    rank: self.collective.rank(),
                    path: slot.path.clone(),
                    expected: slot.shape.clone(),
                    actual: shape,
                });
            }
            self.local[index] = Some(grad);
        }
        if !grads.is_empty() {
            return Err(DdpError::ForeignGradients {
                step,
                count: grads.len(),
            });
        }
        Ok(())
    }

    fn bucket_layout(&mut self) -> Arc<BucketLayout> {
        let (usage, lead) = (&self.usage, &self.lead);
        let slots = self.plan.layout().slots();
        let cap_elems = self.config.bucket_cap_bytes / self.config.wire.element_bytes();
        self.buckets.get_or_build(usage.global_mask(), || {
            let numels: Vec<usize> = slots.iter().map(|slot| slot.numel()).collect();
            BucketLayout::build(
                &numels,
                |slot| usage.is_global(slot) && !lead.holds(slot),
                cap_elems,
            )
        })
    }

    /// `found` is a finite value of this rank that the 16-bit wire format
    /// cannot hold (it would travel as an infinity): an error under
    /// [`NonFinite::Error`], else counted once per slot.
    fn wire_overflow(&mut self, found: Finding, stats: &mut StepStats) -> Result<(), DdpError> {
        if self.config.non_finite == NonFinite::Error {
            return Err(DdpError::WireOverflow {
                step: self.step,
                rank: self.collective.rank(),
                path: self.plan.layout().slots()[found.slot].path.clone(),
                element: found.element,
                value: found.value.to_string(),
                wire: self.config.wire.to_string(),
                max: self.config.wire.max_text().to_owned(),
            });
        }
        if !std::mem::replace(&mut self.flagged[found.slot], true) {
            stats.non_finite_local += 1;
        }
        Ok(())
    }

    /// Waits until every rank reaches this point (for example before the
    /// final replica check).
    pub fn barrier(&mut self) -> Result<(), DdpError> {
        Ok(self.collective.barrier(Tag::new(self.step, Op::Barrier))?)
    }

    /// The usage plan of the model this reducer was built for.
    pub fn plan(&self) -> &UsagePlan {
        &self.plan
    }

    /// The configuration.
    pub fn config(&self) -> &ReducerConfig {
        &self.config
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.collective.world_size()
    }

    /// Number of steps reduced so far (the last step's number).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Sets the step counter, so that the next [`Self::reduce`] is step
    /// `step + 1`. For resuming from a checkpoint: ranks resumed at different
    /// steps are then reported instead of silently reduced together.
    pub fn set_step(&mut self, step: u64) {
        self.step = step;
    }

    /// Statistics of the last [`Self::reduce`].
    pub fn last_stats(&self) -> &StepStats {
        &self.last
    }

    /// Statistics accumulated over all steps.
    pub fn summary(&self) -> StatsSummary {
        self.summary
    }

    /// Statistics accumulated since the previous `take_summary` (or since
    /// set-up), starting a new window: call it once after the warm-up steps
    /// and again at the end to report steady-state figures alone.
    /// [`Self::summary`] is not affected.
    pub fn take_summary(&mut self) -> StatsSummary {
        std::mem::take(&mut self.window)
    }

    /// The gradients in `grads` of this reducer's model, with the module path
    /// of each parameter (`experts.3.weight`), in `Module::visit` order: for
    /// logging, checking or clipping by parameter after [`Self::reduce`].
    /// See [`ParamLayout::gradients_by_path`](crate::ParamLayout::gradients_by_path).
    pub fn gradients_by_path<'a>(
        &'a self,
        grads: &'a GradientsParams,
    ) -> impl Iterator<Item = (&'a str, TensorData)> + 'a {
        self.plan.layout().gradients_by_path::<B>(grads)
    }

    /// The collective, for operations of your own (use step numbers and
    /// operations the reducer does not, or ranks will report a mismatch).
    pub fn collective_mut(&mut self) -> &mut C {
        &mut self.collective
    }
}
