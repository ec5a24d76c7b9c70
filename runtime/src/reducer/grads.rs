//! Moving gradients in and out of burn's `GradientsParams`, whose accessors
//! need the tensor rank as a const generic: the rank is only known at run time
//! (from the layout), so each call dispatches over 1 to 8 dimensions.

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::finite;

/// The highest tensor rank handled.
pub(crate) const MAX_DIMS: usize = 8;

macro_rules! with_dims {
    ($dims:expr, $d:ident => $body:expr) => {
        match $dims {
            1 => {
                const $d: usize = 1;
                $body
            }
            2 => {
                const $d: usize = 2;
                $body
            }
            3 => {
                const $d: usize = 3;
                $body
            }
            4 => {
                const $d: usize = 4;
                $body
            }
            5 => {
                const $d: usize = 5;
                $body
            }
            6 => {
                const $d: usize = 6;
                $body
            }
            7 => {
                const $d: usize = 7;
                $body
            }
            8 => {
                const $d: usize = 8;
                $body
            }
            dims => unreachable!("{dims}-dimensional parameters are rejected at set-up"),
        }
    };
}

/// Removes the gradient of `id` (a parameter of `dims` dimensions) and reads it.
pub(crate) fn take<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    dims: usize,
) -> Option<TensorData> {
    with_dims!(dims, D => grads.remove::<B, D>(id).map(Tensor::into_data))
}

/// Reads the gradient of `id` (a parameter of `dims` dimensions), leaving it in place.
pub(crate) fn get<B: Backend>(
    grads: &GradientsParams,
    id: ParamId,
    dims: usize,
) -> Option<TensorData> {
    with_dims!(dims, D => grads.get::<B, D>(id).map(Tensor::into_data))
}

/// Registers `values` as the gradient of `id`.
pub(crate) fn put<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    shape: &[usize],
    values: Vec<f32>,
    dtype: DType,
    device: &B::Device,
) {
    let data = TensorData::new(values, shape.to_vec());
    with_dims!(shape.len(), D => grads.register::<B, D>(
        id,
        Tensor::<B, D>::from_data(data, (device, dtype)),
    ))
}

/// Copies `data` (any float dtype) into `out` as f32 and says whether every
/// value is finite, reading the values once.
pub(crate) fn copy_f32_checked(data: &TensorData, out: &mut [f32]) -> bool {
    match data.as_slice::<f32>() {
        Ok(values) => finite::copy_checked(values, out),
        Err(_) => {
            for (out, value) in out.iter_mut().zip(data.iter::<f32>()) {
                *out = value;
            }
            finite::all_finite(out)
        }
    }
}

/// Copies `data` (any float dtype) into `out` as f32. The lengths must
/// agree (gradient shapes are checked when they are taken out of burn).
pub(crate) fn copy_f32(data: &TensorData, out: &mut [f32]) {
    match data.as_slice::<f32>() {
        Ok(values) => out.copy_from_slice(values),
        Err(_) => {
            for (out, value) in out.iter_mut().zip(data.iter::<f32>()) {
                *out = value;
            }
        }
    }
}
