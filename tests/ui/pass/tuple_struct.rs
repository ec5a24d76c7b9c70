// Tuple structs: burn 0.21's derive does not support them, so `Module` is
// written by hand here; `#[ddp_model]` handles `self.0` / `self.1`.
use burn::backend::Flex;
use burn::module::{Devices, ModuleMapper, ModuleVisitor};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model};

#[ddp_model]
#[derive(Debug, Clone)]
pub struct Pair<B: Backend>(Linear<B>, Linear<B>);

impl<B: Backend> Module<B> for Pair<B> {
    type Record = <(Linear<B>, Linear<B>) as Module<B>>::Record;

    fn collect_devices(&self, devices: Devices<B>) -> Devices<B> {
        self.1.collect_devices(self.0.collect_devices(devices))
    }
    fn fork(self, device: &burn::tensor::Device<B>) -> Self {
        Pair(self.0.fork(device), self.1.fork(device))
    }
    fn to_device(self, device: &burn::tensor::Device<B>) -> Self {
        Pair(self.0.to_device(device), self.1.to_device(device))
    }
    fn visit<V: ModuleVisitor<B>>(&self, visitor: &mut V) {
        (self.0.clone(), self.1.clone()).visit(visitor)
    }
    fn map<M: ModuleMapper<B>>(self, mapper: &mut M) -> Self {
        let (a, b) = (self.0, self.1).map(mapper);
        Pair(a, b)
    }
    fn load_record(self, record: Self::Record) -> Self {
        let (a, b) = (self.0, self.1).load_record(record);
        Pair(a, b)
    }
    fn into_record(self) -> Self::Record {
        (self.0, self.1).into_record()
    }
}

#[ddp_model]
impl<B: Backend> Pair<B> {
    pub fn forward(&self, x: Tensor<B, 2>, second: bool) -> Tensor<B, 2> {
        let x = self.0.forward(x);
        if second { self.1.forward(x) } else { x }
    }
}

fn main() {
    let device = Default::default();
    let model = Pair::<Flex>(
        LinearConfig::new(2, 2).init(&device),
        LinearConfig::new(2, 2).init(&device),
    );
    let plan = model.usage_plan();
    assert_eq!(plan.layout().slots()[2].path, "1.weight");
    assert_eq!(plan.usage()[0], Usage::Always);
    assert_eq!(
        plan.usage()[2],
        Usage::Conditional {
            branch: "if second"
        }
    );
    let _ = model.forward(Tensor::ones([1, 2], &device), true);
}
