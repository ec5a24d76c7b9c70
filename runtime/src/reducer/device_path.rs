//! Buckets for a collective that sums device memory (NCCL): a bucket is a
//! tensor on the gradients' device, packed with one `cat` of the flattened
//! gradients, checked with burn ops, cast there to the wire format, summed in
//! place, and unpacked with slices reshaped like their parameters. Only a
//! check that finds something copies the bucket to the host, to name the
//! parameter and the element, with the host path's messages.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Element, ElementConversion, FloatDType, Tensor, TensorPrimitive};
use half::{bf16, f16};

use super::buckets::SlotSpan;
use super::grads::{self, Local};
use super::host_path::Finding;
use super::{NonFinite, Reducer, WireFormat};
use crate::collective::{Collective, Tag};
use crate::error::DdpError;
use crate::finite;
use crate::half_float::Half;
use crate::stats::StepStats;

/// The first value of each span that is finite in `values` but infinite in
/// `wire`: where the conversion overflowed.
fn overflows<'a, H: Half>(
    values: &'a [f32],
    wire: &'a [H],
    spans: impl Iterator<Item = SlotSpan> + 'a,
) -> impl Iterator<Item = Finding> + 'a {
    spans.filter_map(move |span| {
        let range = span.range();
        finite::first_overflow(&values[range.clone()], &wire[range]).map(|element| Finding {
            slot: span.slot,
            element,
            value: values[span.offset + element],
        })
    })
}

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
    /// Packs `spans` into a bucket on the device, all-reduces it with
    /// [`Collective::all_reduce_device`], and registers the scaled sums in
    /// `out`.
    pub(super) fn reduce_on_device(
        &mut self,
        tag: Tag,
        spans: &[SlotSpan],
        stats: &mut StepStats,
        out: &mut GradientsParams,
    ) -> Result<(), DdpError> {
        let check = self.config.non_finite != NonFinite::Ignore;

        let start = Instant::now();
        let bucket = self.pack(spans);
        if check && !all_finite(&bucket) {
            let values = bucket.to_data();
            self.check_local(values.as_slice().expect("f32 bucket"), spans, stats)?;
        }
        stats.pack += start.elapsed();

        let start = Instant::now();
        let wire = match self.config.wire {
            WireFormat::F32 => bucket,
            WireFormat::Bf16 => {
                self.cast_to_wire::<bf16>(bucket, FloatDType::BF16, spans, stats)?
            }
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
                    self.reduced_non_finite(span.slot, slot_sums, stats);
                }
            }
        }
        for span in spans {
            let values = sums.clone().slice([span.range()]);
            let values = values.div_scalar(self.divisor(span.slot));
            let slot = &self.plan.layout().slots()[span.slot];
            grads::put(
                out,
                slot.id,
                &slot.shape,
                values,
                self.infos[span.slot].dtype,
            );
        }
        stats.unpack += start.elapsed();
        Ok(())
    }

    /// This rank's gradients of `spans`, in order, as one f32 tensor; zeros
    /// for a slot another rank has a gradient for and this one has not.
    fn pack(&mut self, spans: &[SlotSpan]) -> Tensor<B::InnerBackend, 1> {
        let parts = spans
            .iter()
            .map(|span| match self.local[span.slot].take() {
                Some(Local::Device(grad)) => grad,
                _ => Tensor::zeros([span.len], (&self.infos[span.slot].device, DType::F32)),
            })
            .collect();
        Tensor::cat(parts, 0)
    }

    /// Checks this rank's packed `values` (holding `spans`) before anything
    /// is sent: a non-finite value is an error under [`NonFinite::Error`],
    /// else counted once per slot. One fast scan of the bucket; the slots
    /// are searched only when it finds something.
    fn check_local(
        &mut self,
        values: &[f32],
        spans: &[SlotSpan],
        stats: &mut StepStats,
    ) -> Result<(), DdpError> {
        if finite::all_finite(values) {
            return Ok(());
        }
        for span in spans {
            if let Some((element, value)) = finite::first_non_finite(&values[span.range()]) {
                self.local_non_finite(span.slot, element, value, stats)?;
            }
        }
        Ok(())
    }

    /// `bucket` cast to the compressed wire type `H` (`dtype`) on the
    /// device, checked for values the conversion turned into infinities.
    fn cast_to_wire<H: Half + Element>(
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
            let values: &[f32] = values.as_slice().expect("f32 bucket");
            let wire_values: &[H] = wire_values.as_slice().expect("wire bucket");
            for found in overflows(values, wire_values, spans.iter().copied()) {
                self.wire_overflow(found, stats)?;
            }
        }
        Ok(wire)
    }
}
