//! Buckets for a collective that sums device memory (NCCL): checked with
//! burn ops where they live, cast there to the wire format, and summed in
//! place. Only a check that finds something copies the bucket to the host,
//! to name the parameter and the element, with the host path's messages.

use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Element, ElementConversion, FloatDType, Tensor, TensorPrimitive};
use half::{bf16, f16};

use super::buckets::SlotSpan;
use super::packing::Reduced;
use super::{NonFinite, Reducer, WireFormat, finite};
use crate::collective::{Collective, Tag};
use crate::error::DdpError;
use crate::stats::StepStats;

/// Whether every value of `tensor` is finite: one reduction on the device,
/// one boolean read back.
fn all_finite<B: Backend>(tensor: &Tensor<B, 1>) -> bool {
    tensor
        .clone()
        .is_finite()
        .all()
        .into_scalar()
        .elem::<bool>()
}

impl<B: AutodiffBackend, C: Collective> Reducer<B, C> {
    /// Reduces the packed `bucket` (holding `spans`) through
    /// [`Collective::all_reduce_device`]. The sums come back unscaled: the
    /// unpacking divides each slot's slice.
    pub(super) fn reduce_on_device(
        &mut self,
        tag: Tag,
        bucket: Tensor<B::InnerBackend, 1>,
        spans: &[SlotSpan],
        stats: &mut StepStats,
    ) -> Result<Reduced<B::InnerBackend>, DdpError> {
        let check = self.config.non_finite != NonFinite::Ignore;

        let start = Instant::now();
        if check && !all_finite(&bucket) {
            let values = bucket.to_data();
            self.check_local(values.as_slice().expect("f32 bucket"), spans, stats)?;
        }
        stats.pack += start.elapsed();

        let start = Instant::now();
        let wire = match self.config.wire {
            WireFormat::F32 => bucket,
            WireFormat::Bf16 => self.cast_to_wire::<bf16>(bucket, FloatDType::BF16, spans, stats)?,
            WireFormat::F16 => self.cast_to_wire::<f16>(bucket, FloatDType::F16, spans, stats)?,
        };
        let mut primitive = wire.into_primitive().tensor();
        self.collective.all_reduce_device(tag, &mut primitive)?;
        let sums = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(primitive))
            .cast(FloatDType::F32);
        stats.all_reduce += start.elapsed();

        let start = Instant::now();
        if check && !all_finite(&sums) {
            let values = sums.to_data();
            let values: &[f32] = values.as_slice().expect("f32 sums");
            for span in spans {
                let slot_sums = &values[span.range()];
                if !finite::all_finite(slot_sums) {
                    self.reduced_non_finite(span.slot, slot_sums, stats)?;
                }
            }
        }
        stats.unpack += start.elapsed();
        Ok(Reduced {
            sums,
            scaled: false,
        })
    }

    /// `bucket` cast to the compressed wire type `H` (`dtype`) on the
    /// device, checked for values the conversion turned into infinities.
    fn cast_to_wire<H: finite::Half + Element>(
        &mut self,
        bucket: Tensor<B::InnerBackend, 1>,
        dtype: FloatDType,
        spans: &[SlotSpan],
        stats: &mut StepStats,
    ) -> Result<Tensor<B::InnerBackend, 1>, DdpError> {
        let wire = bucket.clone().cast(dtype);
        if self.config.non_finite != NonFinite::Ignore
            && wire.clone().is_inf().any().into_scalar().elem::<bool>()
        {
            let values = bucket.to_data();
            let wire_values = wire.to_data();
            self.wire_overflow(
                values.as_slice().expect("f32 bucket"),
                wire_values.as_slice::<H>().expect("wire bucket"),
                spans,
                stats,
            )?;
        }
        Ok(wire)
    }
}
