//! Moving gradients in and out of burn's `GradientsParams`, whose accessors
//! need the tensor rank as a const generic: the rank is only known at run time
//! (from the layout), so each call dispatches over 1 to 8 dimensions.

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};

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

/// Removes the gradient of `id` (a parameter of `dims` dimensions): its
/// shape, and its values flattened to one dimension, in f32 (the bucket's
/// type), on its device.
pub(crate) fn take<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    dims: usize,
) -> Option<(Vec<usize>, Tensor<B, 1>)> {
    with_dims!(dims, D => grads.remove::<B, D>(id).map(|grad| {
        // Not `dims()`: a gradient of the wrong rank is reported, not a panic.
        let shape = grad.shape().to_vec();
        let numel = shape.iter().product::<usize>();
        (shape, grad.reshape([numel]).cast(FloatDType::F32))
    }))
}

/// Registers `values` (flat) as the gradient of `id`, shaped like its
/// parameter and cast to its `dtype`.
pub(crate) fn put<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    shape: &[usize],
    values: Tensor<B, 1>,
    dtype: DType,
) {
    with_dims!(shape.len(), D => {
        let shape: [usize; D] = shape.try_into().expect("the shape has D dimensions");
        grads.register::<B, D>(id, values.reshape(shape).cast(dtype));
    })
}

/// Copies `data` (any float dtype) into `out` as f32. The lengths must
/// agree.
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
