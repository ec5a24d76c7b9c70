//! Buckets for a collective that sums host memory (the thread group, MPI).
//!
//! Each gradient was read to the host when it was taken out of burn (no copy
//! on a CPU backend); packing copies it into a reused f32 bucket, checking it
//! in the same pass; the sums are checked and scaled in the pass that hands
//! them back. On a CPU backend this is faster than packing with tensor ops
//! (NdArray's `reshape` and `cat` copy through generic loops: measured in
//! BENCHMARKS.md), so host collectives keep it.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use half::{bf16, f16};

use super::buckets::SlotSpan;
use super::grads::{self, Local};
use super::{NonFinite, Reducer, WireFormat, finite};
use crate::collective::{Collective, Tag, WireBuf};
use crate::error::DdpError;
use crate::stats::StepStats;

impl<B: AutodiffBackend, C: Collective> Reducer<B, C> {
    /// Packs `spans` (`numel` elements) into the host bucket, all-reduces
    /// it with [`Collective::all_reduce_sum`], and registers the scaled
    /// sums in `out`.
    pub(super) fn reduce_on_host(
        &mut self,
        tag: Tag,
        spans: &[SlotSpan],
        numel: usize,
        stats: &mut StepStats,
        out: &mut GradientsParams,
    ) -> Result<(), DdpError> {
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
        stats.pack += start.elapsed();

        let start = Instant::now();
        let mut bucket = std::mem::take(&mut self.bucket);
        let result = self.all_reduce_wire(tag, &mut bucket, spans, stats);
        self.bucket = bucket;
        result?;
        stats.all_reduce += start.elapsed();

        let start = Instant::now();
        for span in spans {
            let sums = &self.bucket[span.range()];
            if check && !finite::all_finite(sums) {
                self.reduced_non_finite(span.slot, sums, stats)?;
            }
            let divisor = self.divisor(span.slot);
            let values: Vec<f32> = sums.iter().map(|sum| sum / divisor).collect();
            let slot = &self.plan.layout().slots()[span.slot];
            let info = &self.infos[span.slot];
            grads::put_host::<B::InnerBackend>(
                out,
                slot.id,
                &slot.shape,
                values,
                info.dtype,
                &info.device,
            );
        }
        stats.unpack += start.elapsed();
        Ok(())
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
        let check = self.config.non_finite != NonFinite::Ignore;
        match self.config.wire {
            WireFormat::F32 => self.collective.all_reduce_sum(tag, WireBuf::F32(values))?,
            WireFormat::Bf16 => {
                let mut wire = std::mem::take(&mut self.wire_bf16);
                wire.clear();
                wire.extend(values.iter().map(|&x| bf16::from_f32(x)));
                if check && finite::any_infinite(&wire) {
                    self.wire_overflow(values, &wire, spans, stats)?;
                }
                let result = self
                    .collective
                    .all_reduce_sum(tag, WireBuf::Bf16(&mut wire));
                for (out, x) in values.iter_mut().zip(&wire) {
                    *out = x.to_f32();
                }
                self.wire_bf16 = wire;
                result?;
            }
            WireFormat::F16 => {
                let mut wire = std::mem::take(&mut self.wire_f16);
                wire.clear();
                wire.extend(values.iter().map(|&x| f16::from_f32(x)));
                if check && finite::any_infinite(&wire) {
                    self.wire_overflow(values, &wire, spans, stats)?;
                }
                let result = self.collective.all_reduce_sum(tag, WireBuf::F16(&mut wire));
                for (out, x) in values.iter_mut().zip(&wire) {
                    *out = x.to_f32();
                }
                self.wire_f16 = wire;
                result?;
            }
        }
        Ok(())
    }
}
