// `?`, early `return` and `let ... else`: uses after a possible exit are conditional.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, Usage, ddp_model};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    first: Linear<B>,
    after_try: Linear<B>,
    after_return: Linear<B>,
}

#[ddp_model]
impl<B: Backend> Net<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        mask: Option<Tensor<B, 2>>,
    ) -> Result<Tensor<B, 2>, String> {
        let x = self.first.forward(x);
        let width = Self::check(&x)?;
        let y = self.after_try.forward(x);
        let Some(mask) = mask else {
            return Ok(y);
        };
        if width == 0 {
            return Err("empty".into());
        }
        Ok(self.after_return.forward(y * mask))
    }

    fn check(x: &Tensor<B, 2>) -> Result<usize, String> {
        let [_, width] = x.dims();
        if width > 1000 {
            Err("too wide".into())
        } else {
            Ok(width)
        }
    }
}

fn main() {
    let device = Default::default();
    let lin = || LinearConfig::new(2, 2).init::<Flex>(&device);
    let model = Net {
        first: lin(),
        after_try: lin(),
        after_return: lin(),
    };
    let plan = model.usage_plan();
    assert_eq!(plan.usage()[0], Usage::Always);
    assert!(plan.usage()[2].is_conditional());
    assert!(plan.usage()[4].is_conditional());
    let out = model.forward(
        Tensor::ones([1, 2], &device),
        Some(Tensor::ones([1, 2], &device)),
    );
    assert!(out.is_ok());
}
