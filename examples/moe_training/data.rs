//! Synthetic, learnable data: each domain has a fixed random linear teacher;
//! a batch comes from one domain (its route) and may carry auxiliary labels
//! (the norm of each target row).

use burn::prelude::*;

/// One rank's batch for one step.
pub struct Batch<B: Backend> {
    pub x: Tensor<B, 2>,
    pub target: Tensor<B, 2>,
    pub expert: usize,
    pub aux_target: Option<Tensor<B, 2>>,
}

/// The teachers, identical on every rank (seeded).
pub struct Teachers {
    weights: Vec<Vec<f32>>,
    input: usize,
    output: usize,
}

/// SplitMix64: a tiny deterministic generator, so batches depend only on
/// (seed, rank, step) and never on thread timing.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(state: &mut u64) -> f32 {
    *state = mix(*state);
    ((*state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

impl Teachers {
    pub fn new(seed: u64, domains: usize, input: usize, output: usize) -> Self {
        let mut state = seed;
        let scale = 1.0 / (input as f32).sqrt();
        let weights = (0..domains)
            .map(|_| {
                (0..input * output)
                    .map(|_| uniform(&mut state) * scale)
                    .collect()
            })
            .collect();
        Self {
            weights,
            input,
            output,
        }
    }

    /// The batch of `rank` at `step`: the domain (and so the expert) varies
    /// with both, and one batch in three carries auxiliary labels.
    pub fn batch<B: Backend>(
        &self,
        seed: u64,
        rank: usize,
        step: usize,
        batch_size: usize,
        device: &B::Device,
    ) -> Batch<B> {
        let key = mix(seed ^ mix((rank as u64) << 32 | step as u64));
        let domains = self.weights.len();
        // Skewed routing: low experts are popular, high ones rare, so some
        // experts go unused by every rank for whole steps.
        let expert = ((key % 1000) as usize * (key % 1000) as usize * domains) / 1_000_000;
        let with_aux = mix(key).is_multiple_of(3);
        let mut state = key;
        let inputs = (0..batch_size * self.input)
            .map(|_| uniform(&mut state))
            .collect::<Vec<_>>();
        let x =
            Tensor::<B, 2>::from_data(TensorData::new(inputs, [batch_size, self.input]), device);
        let teacher = Tensor::<B, 2>::from_data(
            TensorData::new(self.weights[expert].clone(), [self.input, self.output]),
            device,
        );
        let target = x.clone().matmul(teacher);
        let aux_target = with_aux.then(|| target.clone().powf_scalar(2.0).sum_dim(1).sqrt());
        Batch {
            x,
            target,
            expert,
            aux_target,
        }
    }
}
