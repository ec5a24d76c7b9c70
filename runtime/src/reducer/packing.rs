//! Buckets as tensors on the gradients' device: packed with one `cat` of
//! the flattened gradients, unpacked with slices reshaped like their
//! parameters. Neither step leaves the device.

use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

use super::buckets::SlotSpan;
use super::{Reducer, grads};
use crate::collective::Collective;

/// A reduced bucket: f32 sums on the gradients' device.
pub(super) struct Reduced<B: Backend> {
    pub sums: Tensor<B, 1>,
    /// Whether every slot's sums are already divided by its divisor (the
    /// host path divides on the host copy, in the pass that checks them).
    pub scaled: bool,
}

impl<B: AutodiffBackend, C: Collective> Reducer<B, C> {
    /// This rank's gradients of `spans`, in order, as one f32 tensor; zeros
    /// for a slot another rank has a gradient for and this one has not.
    /// Takes the gradients out of `self.local`.
    pub(super) fn pack(&mut self, spans: &[SlotSpan]) -> Tensor<B::InnerBackend, 1> {
        let parts = spans
            .iter()
            .map(|span| {
                self.local[span.slot].take().unwrap_or_else(|| {
                    Tensor::zeros([span.len], (&self.infos[span.slot].device, DType::F32))
                })
            })
            .collect();
        Tensor::cat(parts, 0)
    }

    /// Registers each slot's part of `reduced` in `out`, scaled (unless
    /// already), shaped and typed like its parameter.
    pub(super) fn unpack(
        &self,
        reduced: Reduced<B::InnerBackend>,
        spans: &[SlotSpan],
        out: &mut GradientsParams,
    ) {
        for span in spans {
            let mut values = reduced.sums.clone().slice([span.range()]);
            if !reduced.scaled {
                values = values.div_scalar(self.divisor(span.slot));
            }
            let slot = &self.plan.layout().slots()[span.slot];
            grads::put(
                out,
                slot.id,
                &slot.shape,
                values,
                self.infos[span.slot].dtype,
            );
        }
    }
}
