// `#[ddp(uses(...))]` states what an opaque statement uses.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, ddp_model, record_usage};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    a: Linear<B>,
    b: Linear<B>,
}

fn run_both<B: Backend>(net: &Net<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    net.b.forward(net.a.forward(x))
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(&self, x: Tensor<B, 2>, both: bool) -> Tensor<B, 2> {
        if both {
            #[ddp(uses(a, b))]
            let y = run_both(self, x);
            y
        } else {
            #[ddp(uses(a))]
            println!("{:?}", self.a);
            x
        }
    }
}

fn main() {
    let device = Default::default();
    let lin = || LinearConfig::new(2, 2).init::<Flex>(&device);
    let model = Net { a: lin(), b: lin() };
    // `a` is stated on both paths: always. `b` only when `both`.
    assert_eq!(model.usage_plan().conditional_slots().count(), 2);
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), true));
    assert_eq!(record.ids().len(), 2);
    let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), false));
    assert!(record.ids().is_empty());
}
