use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor};

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
