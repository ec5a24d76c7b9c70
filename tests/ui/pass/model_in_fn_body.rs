// A model declared inside a function body (as in doctests and unit tests):
// the impl finds the struct's expansion by name, after it.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model};

fn main() {
    #[ddp_model]
    #[derive(Module, Debug)]
    pub struct Local<B: Backend> {
        always: Linear<B>,
        sometimes: Linear<B>,
    }

    #[ddp_model]
    impl<B: Backend> Local<B> {
        pub fn forward(&self, x: Tensor<B, 2>, more: bool) -> Tensor<B, 2> {
            let x = self.always.forward(x);
            if more { self.sometimes.forward(x) } else { x }
        }
    }

    let device = Default::default();
    let model = Local::<Flex> {
        always: LinearConfig::new(2, 2).init(&device),
        sometimes: LinearConfig::new(2, 2).init(&device),
    };
    assert_eq!(model.usage_plan().usage()[2], Usage::Conditional { branch: "if more" });
    let _ = model.forward(Tensor::ones([1, 2], &device), true);
}
