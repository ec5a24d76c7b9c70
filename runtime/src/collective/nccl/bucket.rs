//! The device memory of a reducer bucket: burn's CUDA tensor primitive and
//! its NCCL element type.

use std::any::Any;

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl_cuda::CudaRuntime;
use cudarc::nccl::sys::ncclDataType_t;

/// The primitive the NCCL collective reduces: burn's `Cuda` backend
/// without fusion.
pub(super) type CudaTensor = CubeTensor<CudaRuntime>;

/// `bucket` as burn's CUDA tensor, or why not.
pub(super) fn downcast(bucket: &mut dyn Any) -> Result<&mut CudaTensor, String> {
    bucket.downcast_mut::<CudaTensor>().ok_or_else(|| {
        "the NCCL collective reduces buckets of burn's `Cuda` backend (CubeTensor<CudaRuntime>, \
         without burn's `fusion` feature); this reducer runs another backend"
            .to_owned()
    })
}

/// The NCCL type of a wire dtype.
pub(super) fn nccl_type(dtype: DType) -> Result<ncclDataType_t, String> {
    match dtype {
        DType::F32 => Ok(ncclDataType_t::ncclFloat32),
        DType::BF16 => Ok(ncclDataType_t::ncclBfloat16),
        DType::F16 => Ok(ncclDataType_t::ncclFloat16),
        other => Err(format!("no NCCL sum for buckets of {other:?}")),
    }
}

/// Readies `tensor` for NCCL to write in place: its element count and NCCL
/// type. A tensor whose buffer is shared, or not contiguous, is first copied
/// into a fresh one (the reducer's buckets never are).
pub(super) fn prepare(tensor: &mut CudaTensor) -> Result<(usize, ncclDataType_t), String> {
    let dtype = nccl_type(tensor.dtype)?;
    if !tensor.can_mut() || !tensor.is_contiguous() {
        *tensor = burn_cubecl::kernel::into_contiguous(tensor.clone());
    }
    Ok((tensor.meta.shape().num_elements(), dtype))
}
