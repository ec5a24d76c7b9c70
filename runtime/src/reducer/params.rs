//! Reading and overwriting parameter values: the set-up broadcast, and the
//! checksum used to verify that replicas agree.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use super::grads::copy_f32;

/// What the reducer needs to know about a slot beyond its path and shape.
#[derive(Debug, Clone)]
pub(crate) struct SlotInfo<D> {
    pub dtype: DType,
    pub device: D,
}

/// Dtype and device of every float parameter, in visit order.
pub(crate) fn slot_infos<B: Backend, M: Module<B>>(model: &M) -> Vec<SlotInfo<B::Device>> {
    struct Infos<D>(Vec<SlotInfo<D>>);
    impl<B: Backend> ModuleVisitor<B> for Infos<B::Device> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            self.0.push(SlotInfo {
                dtype: value.dtype(),
                device: value.device(),
            });
        }
    }
    let mut infos = Infos(Vec::new());
    model.visit(&mut infos);
    infos.0
}

/// Every float parameter's values, concatenated in visit order, as f32.
pub(crate) fn flatten<B: Backend, M: Module<B>>(model: &M, out: &mut [f32]) {
    struct Flatten<'a> {
        out: &'a mut [f32],
        offset: usize,
    }
    impl<B: Backend> ModuleVisitor<B> for Flatten<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data();
            let len = data.num_elements();
            copy_f32(&data, &mut self.out[self.offset..self.offset + len]);
            self.offset += len;
        }
    }
    model.visit(&mut Flatten { out, offset: 0 });
}

/// Replaces every float parameter's values with `values` (visit order),
/// keeping ids, dtypes, devices and `require_grad`.
pub(crate) fn assign<B: Backend, M: Module<B>>(model: M, values: &[f32]) -> M {
    struct Assign<'a> {
        values: &'a [f32],
        offset: usize,
    }
    impl<B: Backend> ModuleMapper<B> for Assign<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let shape = param.lazy_shape();
            let len = shape.num_elements();
            let values = self.values[self.offset..self.offset + len].to_vec();
            self.offset += len;
            param.map(|tensor| {
                let device = tensor.device();
                let require_grad = tensor.is_require_grad();
                let data = TensorData::new(values, shape);
                let fresh = Tensor::from_data(data, (&device, tensor.dtype()));
                if require_grad {
                    fresh.require_grad()
                } else {
                    fresh
                }
            })
        }
    }
    model.map(&mut Assign { values, offset: 0 })
}

/// A 64-bit FNV-1a hash of every float parameter's shape and value bits, in
/// visit order: equal on two replicas exactly when their parameters are
/// bit-identical (up to hash collisions).
pub fn parameter_checksum<B: Backend, M: Module<B>>(model: &M) -> u64 {
    struct Checksum(u64);
    impl Checksum {
        fn eat(&mut self, bytes: &[u8]) {
            for &byte in bytes {
                self.0 ^= u64::from(byte);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    impl<B: Backend> ModuleVisitor<B> for Checksum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let data = param.val().into_data();
            for &dim in data.shape.iter() {
                self.eat(&(dim as u64).to_le_bytes());
            }
            self.eat(data.as_bytes());
        }
    }
    let mut checksum = Checksum(0xcbf2_9ce4_8422_2325);
    model.visit(&mut checksum);
    checksum.0
}
