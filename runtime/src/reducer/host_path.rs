//! Buckets for a collective that sums host memory (the thread group, MPI).
//!
//! Each gradient was read to the host when it was taken out of burn (no copy
//! on a CPU backend). A collective that sums scattered memory (the thread
//! group) reduces the gradients where they are, when they are not tiny: no
//! bucket, no copy, no pass of the reducer's own: the collective divides the
//! sums as it writes them back (except in a lead bucket averaged over
//! contributors, whose divisors arrive with it: those are scaled in place
//! after), checks them, and looks for the non-finite values behind a
//! non-finite sum; each gradient is handed back in its own buffer. Otherwise
//! (MPI, compressed wires, buckets of small gradients) packing copies each
//! gradient into a reused bucket, checking it in the same pass, and the
//! sums are checked and scaled in the pass that writes them into the
//! gradients' own buffers. On a CPU backend both are faster than packing
//! with tensor ops (NdArray's `reshape` and `cat` copy through generic loops:
//! measured in BENCHMARKS.md), so host collectives keep them.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use half::slice::HalfFloatSliceExt;

use super::buckets::SlotSpan;
use super::grads::{self, HostF32, Local};
use super::{Averaging, NonFinite, Reducer, WireFormat};
use crate::collective::{Collective, NonFiniteFound, ScatteredPart, Tag, WireBuf};
use crate::error::DdpError;
use crate::finite;
use crate::stats::StepStats;

/// The least mean number of elements per gradient for which summing the
/// gradients where they lie beats packing them: each part costs the
/// collective a fixed amount of bookkeeping, each element packed two copies.
/// Measured with `cargo bench --bench reducer -- --only 1 --hidden 16`
/// (parameters of 16 to 256 elements pack faster; see BENCHMARKS.md).
const SCATTER_MIN_PART: usize = 1024;

impl<B: AutodiffBackend, C: Collective> Reducer<B, C> {
    /// Packs `spans` (`numel` elements) into the host bucket, all-reduces
    /// it with [`Collective::all_reduce_sum`], and registers the scaled
    /// sums in `out`.
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
        if self.config.wire == WireFormat::F32
            && self.collective.sums_scattered()
            && numel >= SCATTER_MIN_PART * spans.len()
        {
            return self.reduce_scattered(tag, spans, counts, stats, out);
        }
        let check = self.config.non_finite != NonFinite::Ignore;

        let start = Instant::now();
        // No zero-fill: the spans tile the bucket, and each is written below,
        // by a copy or by zeros.
        self.bucket.resize(numel, 0.0);
        for span in spans {
            let values = &mut self.bucket[span.range()];
            // Another rank has this gradient, this one not: it contributes
            // zeros.
            let Some(Local::Host(data)) = &self.local[span.slot] else {
                values.fill(0.0);
                continue;
            };
            if !check {
                grads::copy_f32(data, values);
            } else if !grads::copy_f32_checked(data, values) {
                let (element, value) =
                    finite::first_non_finite(values).expect("a non-finite value");
                self.local_non_finite(span.slot, element, value, stats)?;
            }
        }
        if counts {
            self.bucket.extend_from_slice(&self.counts_wire);
        }
        stats.pack += start.elapsed();

        let start = Instant::now();
        let mut bucket = std::mem::take(&mut self.bucket);
        let result = self.all_reduce_wire(tag, &mut bucket, spans, stats);
        self.bucket = bucket;
        result?;
        if counts {
            self.usage.set_global_from(&self.bucket[numel..]);
        }
        stats.all_reduce += start.elapsed();

        let start = Instant::now();
        for span in spans {
            if !self.usage.is_global(span.slot) {
                continue;
            }
            let sums = &self.bucket[span.range()];
            let divisor = self.divisor(span.slot);
            // This rank's own gradient buffer takes the result (no
            // allocation, no page faults); a fresh one where it had none.
            let local = self.local[span.slot].take();
            let mut grad = HostF32::new(local, &self.plan.layout().slots()[span.slot].shape);
            if !check {
                finite::scale(sums, divisor, grad.values());
            } else if !finite::scale_checked(sums, divisor, grad.values()) {
                self.reduced_non_finite(span.slot, sums, stats)?;
            }
            self.register(span.slot, grad, out);
        }
        stats.unpack += start.elapsed();
        Ok(())
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
        let check = self.config.non_finite != NonFinite::Ignore;

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
                self.reduced_non_finite(span.slot, grad.values(), stats)?;
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

    /// All-reduces `values` (holding `spans`) in the configured wire format,
    /// in place. A compressed format is checked for values the conversion
    /// turned into infinities before anything is sent.
    fn all_reduce_wire(
        &mut self,
        tag: Tag,
        values: &mut [f32],
        spans: &[SlotSpan],
        stats: &mut StepStats,
    ) -> Result<(), DdpError> {
        match self.config.wire {
            WireFormat::F32 => self.collective.all_reduce_sum(tag, WireBuf::F32(values))?,
            WireFormat::Bf16 => {
                let mut wire = std::mem::take(&mut self.wire_bf16);
                let result = self
                    .all_reduce_half(tag, values, &mut wire, spans, stats, |w| WireBuf::Bf16(w));
                self.wire_bf16 = wire;
                result?;
            }
            WireFormat::F16 => {
                let mut wire = std::mem::take(&mut self.wire_f16);
                let result =
                    self.all_reduce_half(tag, values, &mut wire, spans, stats, |w| WireBuf::F16(w));
                self.wire_f16 = wire;
                result?;
            }
        }
        Ok(())
    }

    /// [`Self::all_reduce_wire`] in a 16-bit format: `values` converted into
    /// `wire` (whole slices at a time, which uses the CPU's conversion
    /// instructions where it has them), checked for overflow, all-reduced,
    /// and converted back.
    fn all_reduce_half<H: finite::Half + Default>(
        &mut self,
        tag: Tag,
        values: &mut [f32],
        wire: &mut Vec<H>,
        spans: &[SlotSpan],
        stats: &mut StepStats,
        wrap: for<'a> fn(&'a mut [H]) -> WireBuf<'a>,
    ) -> Result<(), DdpError>
    where
        [H]: HalfFloatSliceExt,
    {
        wire.clear();
        wire.resize(values.len(), H::default());
        wire.convert_from_f32_slice(values);
        if self.config.non_finite != NonFinite::Ignore && finite::any_infinite(wire) {
            self.wire_overflow(values, wire, spans, stats)?;
        }
        let result = self.collective.all_reduce_sum(tag, wrap(wire));
        wire.convert_to_f32_slice(values);
        Ok(result?)
    }
}
