//! Buckets for a collective that sums host memory (the thread group, MPI):
//! each bucket comes to the host with one `into_data`, is checked, converted
//! to the wire format, summed, and scaled there, and goes back to the
//! gradients' device as one tensor.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use half::{bf16, f16};

use super::buckets::SlotSpan;
use super::packing::Reduced;
use super::{NonFinite, Reducer, WireFormat, finite};
use crate::collective::{Collective, Tag, WireBuf};
use crate::error::DdpError;
use crate::stats::StepStats;

impl<B: AutodiffBackend, C: Collective> Reducer<B, C> {
    /// Reduces the packed `bucket` (holding `spans`) through
    /// [`Collective::all_reduce_sum`]. The checks run on the host copy, in
    /// passes the reduction makes anyway.
    pub(super) fn reduce_on_host(
        &mut self,
        tag: Tag,
        bucket: Tensor<B::InnerBackend, 1>,
        spans: &[SlotSpan],
        stats: &mut StepStats,
    ) -> Result<Reduced<B::InnerBackend>, DdpError> {
        let check = self.config.non_finite != NonFinite::Ignore;

        let start = Instant::now();
        let device = bucket.device();
        let mut data = bucket.into_data();
        let values = data
            .as_mut_slice::<f32>()
            .expect("buckets are packed in f32");
        if check {
            self.check_local(values, spans, stats)?;
        }
        stats.pack += start.elapsed();

        let start = Instant::now();
        self.all_reduce_wire(tag, values, spans, stats)?;
        stats.all_reduce += start.elapsed();

        let start = Instant::now();
        for span in spans {
            let sums = &mut values[span.range()];
            if check && !finite::all_finite(sums) {
                self.reduced_non_finite(span.slot, sums, stats)?;
            }
            let divisor = self.divisor(span.slot);
            sums.iter_mut().for_each(|sum| *sum /= divisor);
        }
        let sums = Tensor::from_data(data, (&device, DType::F32));
        stats.unpack += start.elapsed();
        Ok(Reduced { sums, scaled: true })
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
