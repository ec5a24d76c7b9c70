//! Moving gradients in and out of burn's `GradientsParams`, whose accessors
//! need the tensor rank as a const generic: the rank is only known at run time
//! (from the layout), so each call dispatches over 1 to 8 dimensions.

use std::borrow::Cow;

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};

use crate::finite;

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

/// A gradient taken out of burn: on the host for a collective that sums
/// host memory, flattened on its device for one that sums device memory.
pub(crate) enum Local<B: Backend> {
    /// Read with `into_data` (no copy on a CPU backend).
    Host(TensorData),
    /// Flattened to one dimension, in f32 (the bucket's type).
    Device(Tensor<B, 1>),
}

/// Removes the gradient of `id` (a parameter of `dims` dimensions): its
/// shape, and its values (`on_device`: flattened on the device, else read to
/// the host).
pub(crate) fn take<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    dims: usize,
    on_device: bool,
) -> Option<(Vec<usize>, Local<B>)> {
    with_dims!(dims, D => grads.remove::<B, D>(id).map(|grad| {
        // Not `dims()`: a gradient of the wrong rank is reported, not a panic.
        let shape = grad.shape().to_vec();
        let local = if on_device {
            let numel = shape.iter().product::<usize>();
            Local::Device(grad.reshape([numel]).cast(FloatDType::F32))
        } else {
            Local::Host(grad.into_data())
        };
        (shape, local)
    }))
}

/// Reads the gradient of `id` (a parameter of `dims` dimensions), leaving it in place.
pub(crate) fn get<B: Backend>(
    grads: &GradientsParams,
    id: ParamId,
    dims: usize,
) -> Option<TensorData> {
    with_dims!(dims, D => grads.get::<B, D>(id).map(Tensor::into_data))
}

/// Registers `values` (flat, on the device) as the gradient of `id`, shaped
/// like its parameter and cast to its `dtype`.
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

/// Registers `values` (on the host, f32) as the gradient of `id`.
pub(crate) fn put_host<B: Backend>(
    grads: &mut GradientsParams,
    id: ParamId,
    values: HostF32,
    dtype: DType,
    device: &B::Device,
) {
    let data = values.0;
    with_dims!(data.shape.len(), D => grads.register::<B, D>(
        id,
        Tensor::<B, D>::from_data(data, (device, dtype)),
    ))
}

/// A gradient on the host as f32 values in a buffer of its own, which
/// becomes the reduced gradient's: on a CPU backend the one burn's backward
/// allocated, so no copy is made on the way in or out.
pub(crate) struct HostF32(TensorData);

impl HostF32 {
    /// This rank's gradient taken to the host, shaped `shape`: its own
    /// buffer when it is f32 (no copy), converted when it is another float
    /// type, zeros when this rank has none.
    pub(crate) fn new<B: Backend>(local: Option<Local<B>>, shape: &[usize]) -> Self {
        let data = match local {
            Some(Local::Host(mut data)) if data.dtype == DType::F32 => {
                // `as_mut_slice` needs the buffer aligned for f32, which an
                // allocation for any float is; a copy where it is not.
                if data.as_mut_slice::<f32>().is_err() {
                    data = TensorData::new(data.iter::<f32>().collect(), data.shape.clone());
                }
                data
            }
            Some(Local::Host(data)) => {
                TensorData::new(data.iter::<f32>().collect(), data.shape.clone())
            }
            _ => TensorData::new(vec![0.0f32; shape.iter().product()], shape.to_vec()),
        };
        Self(data)
    }

    pub(crate) fn values(&mut self) -> &mut [f32] {
        self.0.as_mut_slice().expect("an aligned f32 buffer")
    }
}

/// `data`'s values as f32: its own buffer when it is f32 (no copy), else
/// converted into a new one (for a pass that needs f32 values to read, not a
/// buffer to fill: [`copy_f32`] converts without one).
pub(crate) fn f32_values(data: &TensorData) -> Cow<'_, [f32]> {
    match data.as_slice::<f32>() {
        Ok(values) => Cow::Borrowed(values),
        Err(_) => Cow::Owned(data.iter::<f32>().collect()),
    }
}

/// Copies `data` (any float dtype) into `out` as f32 and says whether every
/// value is finite, reading the values once.
pub(crate) fn copy_f32_checked(data: &TensorData, out: &mut [f32]) -> bool {
    match data.as_slice::<f32>() {
        Ok(values) => finite::copy_checked(values, out),
        Err(_) => {
            copy_converted(data, out);
            finite::all_finite(out)
        }
    }
}

/// Copies `data` (any float dtype) into `out` as f32. The lengths must
/// agree (gradient shapes are checked when they are taken out of burn).
pub(crate) fn copy_f32(data: &TensorData, out: &mut [f32]) {
    match data.as_slice::<f32>() {
        Ok(values) => out.copy_from_slice(values),
        Err(_) => copy_converted(data, out),
    }
}

/// Copies `data` of another float dtype into `out`, converting each value
/// on the way (no intermediate buffer).
fn copy_converted(data: &TensorData, out: &mut [f32]) {
    for (out, value) in out.iter_mut().zip(data.iter::<f32>()) {
        *out = value;
    }
}
