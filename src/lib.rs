//! Data-parallel training of conditional [burn](https://burn.dev) models:
//! mixture-of-experts routing, optional heads, skipped detection heads.
//!
//! [`ddp_model`] reads a model's `forward` at compile time, finds which
//! parameters are used only inside branches, rejects parameters that can never
//! be used, and instruments the branches so each step records which
//! parameters it touched. The [`Reducer`] then exchanges one small vector of
//! usage counts per step and all-reduces, in buckets, exactly the gradients
//! some rank produced: no autograd graph is walked, no zero is sent for a
//! parameter nobody used, and no rank hangs on a parameter another skipped.
//!
//! # Example
//!
//! Two ranks on threads of this process; each routes its batch to another
//! expert, so each expert gets a gradient from one rank only.
//!
//! ```
//! use std::thread;
//!
//! use burn::backend::{Autodiff, NdArray};
//! use burn::nn::{Linear, LinearConfig};
//! use burn::optim::{GradientsParams, Optimizer, SgdConfig};
//! use burn::prelude::*;
//! use maskddp::{Reducer, ReducerConfig, ThreadGroup, ddp_model, parameter_checksum};
//!
//! #[ddp_model]
//! #[derive(Module, Debug)]
//! pub struct Moe<B: Backend> {
//!     encoder: Linear<B>,     // used on every path
//!     experts: Vec<Linear<B>>, // one per batch, picked by the route
//! }
//!
//! #[ddp_model]
//! impl<B: Backend> Moe<B> {
//!     pub fn forward(&self, x: Tensor<B, 2>, expert: usize) -> Tensor<B, 2> {
//!         self.experts[expert].forward(self.encoder.forward(x))
//!     }
//! }
//!
//! type Train = Autodiff<NdArray>;
//!
//! let ranks: Vec<_> = ThreadGroup::new(2)
//!     .into_iter()
//!     .enumerate()
//!     .map(|(rank, collective)| {
//!         thread::spawn(move || {
//!             let device = Default::default();
//!             let model = Moe::<Train> {
//!                 encoder: LinearConfig::new(4, 4).init(&device),
//!                 experts: (0..3).map(|_| LinearConfig::new(4, 2).init(&device)).collect(),
//!             };
//!             // Checks that both ranks built the same model, then gives
//!             // every rank rank 0's parameters.
//!             let (mut model, mut reducer) =
//!                 Reducer::new(model, collective, ReducerConfig::default())?;
//!             let mut optimizer = SgdConfig::new().init();
//!             for step in 0..5 {
//!                 let x = Tensor::<Train, 2>::ones([8, 4], &device);
//!                 let expert = (rank + step) % 3;
//!                 let y = reducer.forward(|| model.forward(x, expert));
//!                 let grads = GradientsParams::from_grads(y.powf_scalar(2.0).mean().backward(), &model);
//!                 // Experts 0..3 minus the two used this step get no gradient.
//!                 let grads = reducer.reduce(grads)?;
//!                 model = optimizer.step(0.1, model, grads);
//!             }
//!             println!("{}", reducer.summary());
//!             Ok::<_, maskddp::DdpError>(parameter_checksum(&model))
//!         })
//!     })
//!     .collect();
//! let checksums: Vec<u64> = ranks
//!     .into_iter()
//!     .map(|rank| rank.join().expect("no rank panics").expect("no rank fails"))
//!     .collect();
//! assert_eq!(checksums[0], checksums[1], "replicas are bit-identical");
//! ```
//!
//! # What happens each step
//!
//! 1. [`Reducer::forward`] runs the forward inside this rank's usage scope;
//!    the instrumented branches record the conditional parameters they touch.
//! 2. [`Reducer::reduce`] takes burn's `GradientsParams`. A parameter with a
//!    gradient that was not recorded is an error naming its path; a recorded
//!    parameter without a gradient contributes zeros.
//! 3. One all-reduce of `u32` counts over the conditional parameters gives the
//!    global usage (skipped when the model has none).
//! 4. The globally used gradients are packed into deterministic buckets
//!    (cap [`ReducerConfig::bucket_cap_bytes`]), summed, and scaled by
//!    [`Averaging`].
//! 5. The result holds exactly the globally used parameters: the optimizer
//!    leaves the others, and their moment estimates, alone.
//!
//! A rank that panics, returns early or stops arriving makes every other rank
//! fail with a [`DdpError`] naming the step, the operation and the rank,
//! within the [`ThreadGroupConfig`] timeout.

#[doc(inline)]
pub use maskddp_macros::ddp_model;
pub use maskddp_runtime::*;

/// Support for generated code. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use maskddp_macros::ddp_model_impl;
    pub use maskddp_runtime::__private::*;
}
