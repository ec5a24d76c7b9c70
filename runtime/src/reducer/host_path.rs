//! Buckets for a collective that sums host memory (the thread group, MPI).
//!
//! Each gradient was read to the host when it was taken out of burn (no copy
//! on a CPU backend). A collective that sums scattered memory (the thread
//! group) reduces the gradients where they are, when they are not tiny: no
//! bucket, no copy, no pass of the reducer's own: the collective divides the
//! sums as it writes them back (except in a lead bucket averaged over
//! contributors, whose divisors arrive with it: those are scaled in place
//! after), checks them, and looks for the non-finite values behind a
//! non-finite sum; each gradient is handed back in its own buffer.
//!
//! Otherwise (MPI, compressed wires, buckets of small gradients) a
//! [`HostBucket`] goes through three passes: packing copies each gradient
//! into a reused buffer (on a 16-bit wire, converts it straight into the
//! wire: `half_wire`), checking it in the same pass; the collective sums it;
//! unpacking writes the scaled sums into the gradients' own buffers, checking
//! them.
//! The passes need nothing of the reducer, so with several buckets a helper
//! thread runs them while the reducer all-reduces the bucket between
//! (`pipeline`). On a CPU backend both passes are faster than packing with
//! tensor ops (NdArray's `reshape` and `cat` copy through generic loops:
//! measured in BENCHMARKS.md), so host collectives keep them.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use half::{bf16, f16};

use super::buckets::SlotSpan;
use super::grads::{self, HostF32, Local};
use super::half_wire;
use super::{Averaging, NonFinite, Reducer, WireFormat};
use crate::collective::{Collective, NonFiniteFound, ScatteredPart, Tag, WireBuf};
use crate::error::DdpError;
use crate::finite;
use crate::half_float::Half;
use crate::plan::UsagePlan;
use crate::stats::StepStats;

/// The least mean number of elements per gradient for which summing the
/// gradients where they lie beats packing them: each part costs the
/// collective a fixed amount of bookkeeping, each element packed two copies.
/// Measured with `cargo bench --bench reducer -- --only 1 --hidden 16`
/// (parameters of 16 to 256 elements pack faster; see BENCHMARKS.md).
const SCATTER_MIN_PART: usize = 1024;

/// One gradient of a [`HostBucket`].
pub(super) struct Item<B: Backend> {
    pub span: SlotSpan,
    /// This rank's gradient; none where another rank has one and this rank
    /// not (it contributes zeros).
    pub local: Option<Local<B>>,
    /// What its sum is divided by: set once the sums are in (a lead
    /// bucket's divisors can depend on the counts it carries).
    pub divisor: f32,
}

/// A value a pass found: not finite, or too large for the 16-bit wire.
#[derive(Debug, Clone, Copy)]
pub(super) struct Finding {
    pub slot: usize,
    /// Its index in the slot's gradient.
    pub element: usize,
    pub value: f32,
}

/// The buffers of a [`HostBucket`], reused across buckets and steps.
#[derive(Default)]
pub(super) struct HostBuffers {
    /// The bucket on the f32 wire: this rank's gradients (and, in the lead
    /// bucket, its gradient counts), then the sums.
    values: Vec<f32>,
    /// The bucket on a 16-bit wire, the same way (without counts).
    bf16: Vec<bf16>,
    f16: Vec<f16>,
}

/// A bucket packed on the host, from this rank's gradients to the reduced
/// ones. Its passes ([`Self::pack`], [`Self::unpack`]) are plain functions
/// of it, which a helper thread can run while the reducer all-reduces
/// another bucket.
pub(super) struct HostBucket<B: Backend> {
    pub tag: Tag,
    pub numel: usize,
    pub items: Vec<Item<B>>,
    pub buffers: HostBuffers,
    /// What a checked [`Self::pack`] found.
    pub findings: Findings,
}

/// A bucket's reduced gradients, ready to be registered.
pub(super) struct Reduced {
    /// Per slot in bucket order: the reduced gradient, and whether (checked)
    /// some value of it is not finite.
    pub grads: Vec<(usize, HostF32, bool)>,
    pub buffers: HostBuffers,
}

impl<B: Backend> HostBucket<B> {
    /// Copies each gradient into its span of the bucket (zeros where this
    /// rank has none), converted to `wire`; with `check`, notes what is not
    /// finite or overflows a 16-bit wire.
    pub fn pack(&mut self, wire: WireFormat, check: bool) {
        let (items, findings) = (&self.items, &mut self.findings);
        match wire {
            WireFormat::F32 => {
                pack_f32(items, self.numel, &mut self.buffers.values, check, findings)
            }
            WireFormat::Bf16 => {
                pack_half(items, self.numel, &mut self.buffers.bf16, check, findings)
            }
            WireFormat::F16 => pack_half(items, self.numel, &mut self.buffers.f16, check, findings),
        }
    }

    /// What the collective sums in place: the packed bucket in `wire`'s
    /// format (with whatever follows the gradients, in f32).
    pub fn wire_buf(&mut self, wire: WireFormat) -> WireBuf<'_> {
        match wire {
            WireFormat::F32 => WireBuf::F32(&mut self.buffers.values),
            WireFormat::Bf16 => WireBuf::Bf16(&mut self.buffers.bf16),
            WireFormat::F16 => WireBuf::F16(&mut self.buffers.f16),
        }
    }

    /// The sums of the bucket (in `wire`'s format), divided, in each
    /// gradient's own buffer (a fresh one where this rank had none); with
    /// `check`, each flagged where some value is not finite.
    pub fn unpack(self, wire: WireFormat, check: bool, plan: &UsagePlan) -> Reduced {
        let Self { items, buffers, .. } = self;
        let slots = plan.layout().slots();
        let grads = items
            .into_iter()
            .map(|item| {
                let (slot, range) = (item.span.slot, item.span.range());
                // This rank's own gradient buffer takes the result (no
                // allocation, no page faults).
                let mut grad = HostF32::new(item.local, &slots[slot].shape);
                let out = grad.values();
                let finite = match wire {
                    WireFormat::F32 if check => {
                        finite::scale_checked(&buffers.values[range], item.divisor, out)
                    }
                    WireFormat::F32 => {
                        finite::scale(&buffers.values[range], item.divisor, out);
                        true
                    }
                    WireFormat::Bf16 => {
                        half_wire::unpack(&buffers.bf16[range], item.divisor, out, check)
                    }
                    WireFormat::F16 => {
                        half_wire::unpack(&buffers.f16[range], item.divisor, out, check)
                    }
                };
                (slot, grad, !finite)
            })
            .collect();
        Reduced { grads, buffers }
    }
}

/// What a checked pack found, in slot order.
#[derive(Default)]
pub(super) struct Findings {
    /// This rank's first non-finite value in each gradient that holds one.
    pub non_finite: Vec<Finding>,
    /// The first value of each gradient that the conversion to a 16-bit
    /// wire turned into an infinity.
    pub overflow: Vec<Finding>,
}

/// Copies each gradient of `items` into its span of `values` (`numel`
/// elements), checking it in the same pass.
fn pack_f32<B: Backend>(
    items: &[Item<B>],
    numel: usize,
    values: &mut Vec<f32>,
    check: bool,
    findings: &mut Findings,
) {
    // No zero-fill: the spans tile the bucket, and each is written below,
    // by a copy or by zeros.
    values.resize(numel, 0.0);
    for item in items {
        let out = &mut values[item.span.range()];
        let Some(Local::Host(data)) = &item.local else {
            out.fill(0.0);
            continue;
        };
        if !check {
            grads::copy_f32(data, out);
        } else if !grads::copy_f32_checked(data, out) {
            let (element, value) = finite::first_non_finite(out).expect("a non-finite value");
            findings.non_finite.push(Finding {
                slot: item.span.slot,
                element,
                value,
            });
        }
    }
}

/// Converts each gradient of `items` straight into its span of the 16-bit
/// `wire` (`numel` elements), checking it in the same pass.
fn pack_half<B: Backend, H: Half + Default>(
    items: &[Item<B>],
    numel: usize,
    wire: &mut Vec<H>,
    check: bool,
    findings: &mut Findings,
) {
    // No zero-fill either: every span is written below.
    wire.resize(numel, H::default());
    for item in items {
        let out = &mut wire[item.span.range()];
        let Some(Local::Host(data)) = &item.local else {
            out.fill(H::default());
            continue;
        };
        let values = grads::f32_values(data);
        let found = half_wire::pack(&values, out, check);
        let slot = item.span.slot;
        if let Some((element, value)) = found.non_finite {
            findings.non_finite.push(Finding {
                slot,
                element,
                value,
            });
        }
        if let Some(element) = found.overflow {
            findings.overflow.push(Finding {
                slot,
                element,
                value: values[element],
            });
        }
    }
}

impl<B: AutodiffBackend, C: Collective> Reducer<B, C> {
    /// Reduces the bucket of `spans` (`numel` elements) and registers the
    /// scaled sums in `out`: summed where they lie where the collective can,
    /// else packed into a [`HostBucket`] for [`Collective::all_reduce_sum`].
    ///
    /// With `counts` (the lead bucket), this rank's gradient counts
    /// (`counts_wire`) travel after the gradients: the summed counts then set
    /// the step's global usage, and a slot no rank has a gradient for gets
    /// none.
    pub(super) fn reduce_on_host(
        &mut self,
        tag: Tag,
        spans: &[SlotSpan],
        numel: usize,
        counts: bool,
        stats: &mut StepStats,
        out: &mut GradientsParams,
    ) -> Result<(), DdpError> {
        if self.sums_scattered() && numel >= SCATTER_MIN_PART * spans.len() {
            return self.reduce_scattered(tag, spans, counts, stats, out);
        }
        let (wire, check) = (self.config.wire, self.checks());

        let start = Instant::now();
        let mut bucket = self.host_bucket(tag, spans, numel);
        bucket.pack(wire, check);
        if counts {
            bucket.buffers.values.extend_from_slice(&self.counts_wire);
        }
        stats.pack += start.elapsed();
        self.check_packed(&bucket, stats)?;

        let start = Instant::now();
        self.all_reduce_host(&mut bucket)?;
        if counts {
            self.usage.set_global_from(&bucket.buffers.values[numel..]);
            let usage = &self.usage;
            bucket.items.retain(|item| usage.is_global(item.span.slot));
        }
        stats.all_reduce += start.elapsed();

        let start = Instant::now();
        self.set_divisors(&mut bucket);
        let reduced = bucket.unpack(wire, check, &self.plan);
        self.finish(reduced, stats, out);
        stats.unpack += start.elapsed();
        Ok(())
    }

    /// Whether f32 buckets are summed where the gradients lie.
    pub(super) fn sums_scattered(&self) -> bool {
        self.config.wire == WireFormat::F32 && self.collective.sums_scattered()
    }

    /// Whether the non-finite checks run.
    pub(super) fn checks(&self) -> bool {
        self.config.non_finite != NonFinite::Ignore
    }

    /// A bucket of `spans` (`numel` elements), holding this rank's gradients
    /// and buffers from the pool, ready to pack.
    pub(super) fn host_bucket(
        &mut self,
        tag: Tag,
        spans: &[SlotSpan],
        numel: usize,
    ) -> HostBucket<B::InnerBackend> {
        HostBucket {
            tag,
            numel,
            items: spans
                .iter()
                .map(|&span| Item {
                    span,
                    local: self.local[span.slot].take(),
                    divisor: 1.0,
                })
                .collect(),
            buffers: self.spare_buffers.pop().unwrap_or_default(),
            findings: Findings::default(),
        }
    }

    /// Reports what packing `bucket` found, before anything is sent: an
    /// error under [`NonFinite::Error`], else counted.
    pub(super) fn check_packed(
        &mut self,
        bucket: &HostBucket<B::InnerBackend>,
        stats: &mut StepStats,
    ) -> Result<(), DdpError> {
        for found in &bucket.findings.non_finite {
            self.local_non_finite(found.slot, found.element, found.value, stats)?;
        }
        for &found in &bucket.findings.overflow {
            self.wire_overflow(found, stats)?;
        }
        Ok(())
    }

    /// Sums a packed bucket over the ranks, in place.
    pub(super) fn all_reduce_host(
        &mut self,
        bucket: &mut HostBucket<B::InnerBackend>,
    ) -> Result<(), DdpError> {
        let tag = bucket.tag;
        let wire = bucket.wire_buf(self.config.wire);
        Ok(self.collective.all_reduce_sum(tag, wire)?)
    }

    /// Sets what each gradient of `bucket` is divided by, once the step's
    /// global usage is known.
    pub(super) fn set_divisors(&self, bucket: &mut HostBucket<B::InnerBackend>) {
        for item in &mut bucket.items {
            item.divisor = self.divisor(item.span.slot);
        }
    }

    /// Registers a bucket's reduced gradients in `out` and keeps its buffers
    /// for the next bucket; a gradient that is not finite is noted
    /// (`reduced_non_finite`).
    pub(super) fn finish(
        &mut self,
        reduced: Reduced,
        stats: &mut StepStats,
        out: &mut GradientsParams,
    ) {
        self.spare_buffers.push(reduced.buffers);
        for (slot, mut grad, non_finite) in reduced.grads {
            if non_finite {
                self.reduced_non_finite(slot, grad.values(), stats);
            }
            self.register(slot, grad, out);
        }
    }

    /// [`Self::reduce_on_host`] without a bucket, for a collective that sums
    /// memory wherever it lies: each gradient is summed in its own buffer
    /// (zeros where this rank has none), divided and checked by the
    /// collective as it is summed, and registered in `out` without a copy.
    fn reduce_scattered(
        &mut self,
        tag: Tag,
        spans: &[SlotSpan],
        counts: bool,
        stats: &mut StepStats,
        out: &mut GradientsParams,
    ) -> Result<(), DdpError> {
        let check = self.checks();

        let start = Instant::now();
        let mut grads: Vec<HostF32> = spans
            .iter()
            .map(|span| {
                let local = self.local[span.slot].take();
                HostF32::new(local, &self.plan.layout().slots()[span.slot].shape)
            })
            .collect();
        stats.pack += start.elapsed();

        // The collective divides the sums as it writes them back, unless the
        // divisors depend on the counts this bucket carries.
        let finish_in_collective = !(counts && self.config.averaging == Averaging::Contributors);
        let start = Instant::now();
        let mut counts_wire = std::mem::take(&mut self.counts_wire);
        let mut parts: Vec<ScatteredPart<'_>> = spans
            .iter()
            .zip(grads.iter_mut())
            .map(|(span, grad)| {
                let divisor = if finish_in_collective {
                    self.divisor(span.slot)
                } else {
                    1.0
                };
                ScatteredPart::new(grad.values(), divisor)
            })
            .collect();
        if counts {
            parts.push(ScatteredPart::new(&mut counts_wire, 1.0));
        }
        let result = self.collective.all_reduce_scattered(tag, &mut parts);
        let found: Vec<NonFiniteFound> = parts.iter().map(|part| part.found).collect();
        drop(parts);
        self.counts_wire = counts_wire;
        result?;
        if counts {
            self.usage.set_global_from(&self.counts_wire);
        }
        stats.all_reduce += start.elapsed();

        let start = Instant::now();
        if check {
            self.values_non_finite(tag, spans, &found, stats)?;
        }
        for ((span, mut grad), found) in spans.iter().zip(grads).zip(found) {
            if !self.usage.is_global(span.slot) {
                continue;
            }
            if !finish_in_collective {
                finite::scale_in_place(grad.values(), self.divisor(span.slot));
            }
            if check && found.in_sums {
                self.reduced_non_finite(span.slot, grad.values(), stats);
            }
            self.register(span.slot, grad, out);
        }
        stats.unpack += start.elapsed();
        Ok(())
    }

    /// What a scattered all-reduce found among the values summed: this
    /// rank's non-finite values, in slot order, as a check before the sum
    /// would have found them (an error, or counted); and under
    /// [`NonFinite::Error`], another rank's, which that rank reports: this
    /// one waits for its word, so that every rank names it.
    fn values_non_finite(
        &mut self,
        tag: Tag,
        spans: &[SlotSpan],
        found: &[NonFiniteFound],
        stats: &mut StepStats,
    ) -> Result<(), DdpError> {
        for (span, found) in spans.iter().zip(found) {
            if let Some((element, value)) = found.here {
                self.local_non_finite(span.slot, element, value, stats)?;
            }
        }
        if self.config.non_finite == NonFinite::Error && found.iter().any(|found| found.in_values) {
            // The rank whose value it was fails this step and aborts the
            // group, which ends this barrier with its report.
            self.collective.barrier(tag)?;
        }
        Ok(())
    }

    /// Registers the reduced `values` of `slot` in `out`.
    fn register(&self, slot: usize, values: HostF32, out: &mut GradientsParams) {
        let info = &self.infos[slot];
        let id = self.plan.layout().slots()[slot].id;
        grads::put_host::<B::InnerBackend>(out, id, values, info.dtype, &info.device);
    }
}
