// `Vec<Module>` fields: dynamic indexing and `get` record only the element used.
use burn::backend::Flex;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use maskddp::{DdpModel, ddp_model, record_usage};

#[ddp_model]
#[derive(Module, Debug)]
pub struct Moe<B: Backend> {
    router: Linear<B>,
    experts: Vec<Linear<B>>,
    fallback: Vec<Linear<B>>,
}

#[ddp_model]
impl<B: Backend> Moe<B> {
    pub fn forward(&self, x: Tensor<B, 2>, expert: usize) -> Tensor<B, 2> {
        let x = self.router.forward(x);
        if expert >= self.experts.len() {
            return match self.fallback.get(expert - self.experts.len()) {
                Some(f) => f.forward(x),
                None => x,
            };
        }
        self.experts[expert].forward(x)
    }
}

fn main() {
    let device = Default::default();
    let lin = || LinearConfig::new(2, 2).init::<Flex>(&device);
    let model = Moe {
        router: lin(),
        experts: vec![lin(), lin(), lin()],
        fallback: vec![lin()],
    };
    let plan = model.usage_plan();
    assert_eq!(plan.conditional_slots().count(), 8);
    let slots = plan.layout().slots();
    for expert in 0..5 {
        let (_, record) = record_usage(|| model.forward(Tensor::ones([1, 2], &device), expert));
        let paths: Vec<&str> = slots
            .iter()
            .filter(|s| record.ids().contains(&s.id))
            .map(|s| s.path.as_str())
            .collect();
        let expected: Vec<String> = match expert {
            0..=2 => vec![
                format!("experts.{expert}.weight"),
                format!("experts.{expert}.bias"),
            ],
            3 => vec!["fallback.0.weight".into(), "fallback.0.bias".into()],
            _ => vec![],
        };
        assert_eq!(paths, expected);
    }
}
