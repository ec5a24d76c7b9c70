//! The conditional model the main job trains: a shared encoder, experts picked
//! per batch by hash routing, and an auxiliary head used only on batches that
//! carry auxiliary labels.

use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;
use maskddp::ddp_model;

/// One expert: a two-layer MLP.
#[derive(Module, Debug)]
pub struct Expert<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    activation: Relu,
}

impl<B: Backend> Expert<B> {
    fn new(hidden: usize, out: usize, device: &B::Device) -> Self {
        Self {
            fc1: LinearConfig::new(hidden, hidden).init(device),
            fc2: LinearConfig::new(hidden, out).init(device),
            activation: Relu::new(),
        }
    }

    fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.fc2
            .forward(self.activation.forward(self.fc1.forward(h)))
    }
}

/// Mixture of experts with an optional auxiliary head.
#[ddp_model]
#[derive(Module, Debug)]
pub struct MoeNet<B: Backend> {
    encoder: Linear<B>,
    experts: Vec<Expert<B>>,
    /// Predicts the norm of the target; trained only on batches with
    /// auxiliary labels.
    aux_head: Linear<B>,
    activation: Relu,
}

/// What one forward produces.
pub struct MoeOutput<B: Backend> {
    pub prediction: Tensor<B, 2>,
    pub aux_prediction: Option<Tensor<B, 2>>,
}

#[ddp_model]
impl<B: Backend> MoeNet<B> {
    pub fn new(
        input: usize,
        hidden: usize,
        output: usize,
        experts: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            encoder: LinearConfig::new(input, hidden).init(device),
            experts: (0..experts)
                .map(|_| Expert::new(hidden, output, device))
                .collect(),
            aux_head: LinearConfig::new(hidden, 1).init(device),
            activation: Relu::new(),
        }
    }

    /// `expert` is the batch's route; `with_aux` says whether the batch
    /// carries auxiliary labels.
    pub fn forward(&self, x: Tensor<B, 2>, expert: usize, with_aux: bool) -> MoeOutput<B> {
        let h = self.activation.forward(self.encoder.forward(x));
        let prediction = self.experts[expert].forward(h.clone());
        let aux_prediction = if with_aux {
            Some(self.aux_head.forward(h))
        } else {
            None
        };
        MoeOutput {
            prediction,
            aux_prediction,
        }
    }
}
