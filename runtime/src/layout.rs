use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::reducer::grads;

/// One float parameter of a model, at its place in `Module::visit` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSlot {
    /// Module path, such as `experts.3.fc1.weight`.
    pub path: String,
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// The parameter's id in this process. Ids are random per process: ranks
    /// agree on slots, never on ids.
    pub id: ParamId,
}

impl ParamSlot {
    /// Number of scalar elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The float parameters of a model, numbered in `Module::visit` order.
///
/// Only float parameters receive gradients; integer and boolean parameters
/// (buffers such as counters) are not part of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    slots: Vec<ParamSlot>,
}

impl ParamLayout {
    /// Reads the layout of `module`.
    pub fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut visitor = LayoutVisitor {
            path: Vec::new(),
            slots: Vec::new(),
        };
        module.visit(&mut visitor);
        Self {
            slots: visitor.slots,
        }
    }

    /// The slots, in visit order.
    pub fn slots(&self) -> &[ParamSlot] {
        &self.slots
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the model has no float parameter.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Total number of scalar elements over all slots.
    pub fn numel(&self) -> usize {
        self.slots.iter().map(ParamSlot::numel).sum()
    }

    /// The gradients in `grads` (of a model on the autodiff backend `B`) of
    /// this layout's parameters, with their paths, in slot order. Parameters
    /// without a gradient are left out, and so are parameters of more than 8
    /// dimensions (which the reducer rejects); a tied parameter is listed
    /// under each of its paths. `GradientsParams` is keyed by parameter ids, which
    /// are random per process: paths are what ranks, logs and tests agree on.
    ///
    /// ```
    /// # use burn::backend::{Autodiff, Flex};
    /// # use burn::nn::LinearConfig;
    /// # use burn::optim::GradientsParams;
    /// # use burn::prelude::*;
    /// # use maskddp_runtime as maskddp;
    /// use maskddp::ParamLayout;
    ///
    /// type B = Autodiff<Flex>;
    /// let device = Default::default();
    /// let model = LinearConfig::new(3, 2).init::<B>(&device);
    /// let loss = model.forward(Tensor::<B, 2>::ones([1, 3], &device)).sum();
    /// let grads = GradientsParams::from_grads(loss.backward(), &model);
    /// let layout = ParamLayout::of::<B, _>(&model);
    /// let paths: Vec<&str> = layout.gradients_by_path::<B>(&grads).map(|(path, _)| path).collect();
    /// assert_eq!(paths, ["weight", "bias"]);
    /// ```
    pub fn gradients_by_path<'a, B: AutodiffBackend>(
        &'a self,
        grads: &'a GradientsParams,
    ) -> impl Iterator<Item = (&'a str, TensorData)> + 'a {
        self.slots.iter().filter_map(|slot| {
            if slot.shape.len() > grads::MAX_DIMS {
                return None;
            }
            let grad = grads::get::<B::InnerBackend>(grads, slot.id, slot.shape.len())?;
            Some((slot.path.as_str(), grad))
        })
    }
}

struct LayoutVisitor {
    path: Vec<String>,
    slots: Vec<ParamSlot>,
}

impl<B: Backend> ModuleVisitor<B> for LayoutVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.slots.push(ParamSlot {
            path: self.path.join("."),
            shape: param.lazy_shape().to_vec(),
            id: param.id,
        });
    }

    fn visit_int<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Int>>) {}

    fn visit_bool<const D: usize>(&mut self, _param: &Param<Tensor<B, D, Bool>>) {}
}
