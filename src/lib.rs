//! Data-parallel training of conditional [burn](https://burn.dev) models:
//! mixture-of-experts routing, optional heads, skipped detection heads.
//!
//! [`ddp_model`] reads a model's `forward` at compile time, finds which
//! parameters are used only inside branches, rejects parameters that can never
//! be used, and instruments the branches so each step records which
//! parameters it touched. The [`Reducer`] then exchanges one small vector of
//! per-parameter gradient counts per step and all-reduces, in buckets, exactly
//! the gradients some rank's backward produced: no autograd graph is walked,
//! no zero is sent for a parameter nobody used, and no rank hangs on a
//! parameter another skipped.
//!
//! # Example
//!
//! Two ranks on threads of this process; each routes its batch to another
//! expert, so each expert gets a gradient from one rank only.
//!
//! ```
//! use std::thread;
//!
//! use burn::backend::{Autodiff, Flex};
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
//! type Train = Autodiff<Flex>;
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
//!    The scope belongs to the calling thread (ranks may be threads of one
//!    process), so a forward must run on the thread that calls
//!    `reducer.forward`; a use recorded elsewhere is missed, and its gradient
//!    is then reported as unplanned rather than silently reduced.
//! 2. [`Reducer::reduce`] takes burn's `GradientsParams`. A parameter with a
//!    gradient that was not recorded is an error naming its path. The plan
//!    and the records decide only what may travel; the result follows the
//!    real gradients.
//! 3. Per-slot gradient counts travel with the usage exchange: one all-reduce
//!    of a `u32` per trainable parameter, the number of ranks that have a
//!    gradient for it (none in a world of one).
//! 4. The parameters with a count above zero are packed into deterministic
//!    buckets (cap [`ReducerConfig::bucket_cap_bytes`]), summed, and scaled by
//!    [`Averaging`]; a rank without the gradient contributes zeros.
//! 5. The result holds exactly the parameters some rank's backward produced
//!    a gradient for. One planned always or recorded but cut off from the
//!    loss on every rank gets no gradient, not zeros: the optimizer leaves it,
//!    and its moment estimates, alone.
//!
//! Every gradient's shape is checked against its parameter's, and its values
//! for NaN and infinities while it is packed, on the rank that produced it
//! ([`ReducerConfig::non_finite`]: an error naming the rank and the path by
//! default). A compressed wire never overflows to infinity silently. Call
//! `reduce` once per step after `reducer.forward`: a `reduce` with no forward
//! since the previous one is [`DdpError::ReduceWithoutForward`], unless it is
//! [`Reducer::reduce_without_forward`].
//!
//! A rank that panics, returns early or stops arriving makes every other rank
//! fail with a [`DdpError`] naming the step, the operation and the rank,
//! within the [`ThreadGroupConfig`] timeout.
//!
//! # With burn-train
//!
//! The cargo feature `train` adds `maskddp::train`: `DdpStrategy`, a
//! training strategy for burn-train's `Learner` (through
//! `TrainingStrategy::Custom`), and `ReducerMetric`, which shows the
//! reducer's statistics among the Learner's metrics. The README's section
//! "With burn-train" and `examples/learner_moe.rs` show it at work.

/// Analyses a burn model's `forward` and instruments it for the [`Reducer`].
///
/// Put it on the model struct **and** on the impl block holding `forward`:
///
/// ```
/// use burn::nn::{Linear, LinearConfig};
/// use burn::prelude::*;
/// use maskddp::{DdpModel, Usage, ddp_model};
///
/// #[ddp_model]
/// #[derive(Module, Debug)]
/// pub struct Detector<B: Backend> {
///     cls_head: Linear<B>,
///     mask_head: Linear<B>,
///     #[ddp(frozen)]
///     teacher: Linear<B>,
/// }
///
/// #[ddp_model]
/// impl<B: Backend> Detector<B> {
///     pub fn forward(&self, x: Tensor<B, 2>, has_masks: bool) -> Tensor<B, 2> {
///         let y = self.cls_head.forward(x.clone());
///         if has_masks {
///             y + self.mask_head.forward(x)
///         } else {
///             y
///         }
///     }
/// }
///
/// let device = Default::default();
/// let model = Detector::<burn::backend::Flex> {
///     cls_head: LinearConfig::new(2, 2).init(&device),
///     mask_head: LinearConfig::new(2, 2).init(&device),
///     teacher: LinearConfig::new(2, 2).init(&device),
/// };
/// let plan = model.usage_plan();
/// assert_eq!(plan.usage()[0], Usage::Always); // cls_head.weight
/// assert_eq!(plan.usage()[2], Usage::Conditional { branch: "if has_masks" });
/// assert_eq!(plan.usage()[4], Usage::Frozen); // teacher.weight
/// println!("{}", plan.table());
/// ```
///
/// # What it finds
///
/// Every field that holds parameters (burn's own rule: its type mentions the
/// backend `B`, `Param` or `Tensor`, and it is not `#[module(skip)]`) is
/// classified from `forward` and the `&self` methods of the annotated impl
/// block it calls (recursion included):
///
/// A *use* is where a value taken from a field is consumed, not where it is
/// taken. The analysis follows values through references held in locals
/// (`let head = &self.head;`), `let`/`match`/`if let`/`while let` patterns,
/// tuples, iterator adaptors (`iter`, `enumerate`, `zip`, `filter`,
/// `filter_map`, `map`, `take_while`, `chunks`, `nth`, `find`, …), `Option`
/// adaptors (`as_ref`, `filter`, `map`, `unwrap_or`, …) and closure
/// parameters, to the method call that consumes them
/// (`expert.forward(x)`). So in
///
/// ```text
/// for (i, expert) in self.experts.iter().enumerate() {
///     if mask[i] { out = out + expert.forward(x.clone()); }
/// }
/// ```
///
/// only the experts whose `forward` runs are recorded, exactly as with
/// `self.experts[i].forward(x)`. Any other use of such a value (an argument,
/// a value returned from a helper, a projection `expert.fc1`, a macro naming
/// it) counts as a use of all of it, there.
///
/// - **always**: consumed by a method call on every path. Reduced every
///   step; costs nothing to record.
/// - **conditional**: consumed only on some paths — inside `if`/`else`,
///   `if let`, `match` arms and guards, loop bodies, closures, after an early
///   `return` or `?`, in a `let … else` branch — or consumed element by
///   element (`self.experts[i]`, an element of a loop, the content of an
///   `Option` field), or handed on whole (to a function, into a projection).
///   Each evaluated use records what it consumed into the usage scope of
///   [`Reducer::forward`].
/// - **never**: a compile error on the field, unless it is `#[ddp(frozen)]`.
///
/// A field whose type is itself a `#[ddp_model]` (directly, or in `Option`,
/// `Vec` or an array) keeps its own split when called on every path; used
/// conditionally, all its parameters are conditional in the plan. At run time
/// a child called through a method of its own `#[ddp_model]` impl block —
/// directly (`self.child.forward(x)`), through a binding or as an element of
/// a loop — records only what it used; any other use (`&self.child` passed
/// on, a method outside its annotated impl block, `self.child.head`) records
/// all of its parameters, which is always safe.
///
/// Recording more than was used costs bytes at most: the reducer's result
/// follows the gradients that really exist.
///
/// # Attributes
///
/// - `#[ddp(frozen)]` on a field: not trained. It may run in `forward` (a
///   distillation teacher built with `no_grad()`), is never recorded nor
///   reduced, and a gradient on it is a run-time error naming it.
/// - `#[ddp(uses(a, b))]` on a statement: the statement uses those fields; the
///   analysis does not look inside it. For code it cannot see through.
/// - `#[ddp_model(report)]` on the impl block: a compiler warning lists the
///   conditional fields and their branches.
///
/// # Errors
///
/// Besides never-used fields, these are compile errors spanned on the
/// offending expression, each saying what to write instead: `self` used as a
/// whole (passed to a function, stored, returned), a call to a `self` method
/// outside the annotated impl block (`self.clone()` included), a macro call
/// whose tokens mention `self`, a field reached through `Deref` (not a
/// declared field), an `async fn forward`, a closure capturing `self`
/// returned from a method, a lazy iterator whose closure uses `self`
/// returned from `forward` (or a value borrowed from a field), and a closure
/// handed to another thread (`spawn`, `scope`, `par_iter`). Each would use
/// parameters where the usage scope cannot see them. Several mistakes are
/// reported in one build.
///
/// # Limits
///
/// - burn 0.21's `#[derive(Module)]` does not support tuple structs; with a
///   hand-written `Module` impl, `#[ddp_model]` handles `self.0`.
/// - Inside a function body the impl block must come after the struct (in a
///   module, either order works).
/// - A field of a generic type `M` is recorded in full when used, even if `M`
///   is a `#[ddp_model]`: the split of a generic child is not known.
#[doc(inline)]
pub use maskddp_macros::ddp_model;

// The public surface, item by item: a new runtime item is public only once
// it is listed here.
pub use maskddp_runtime::collective;
pub use maskddp_runtime::{
    Averaging, Collective, CollectiveError, DdpError, DdpModel, NonFinite, NonFiniteFound, Op,
    ParamLayout, ParamSlot, Pipeline, PlanBuilder, PlanTable, Reducer, ReducerConfig,
    ScatteredPart, StatsSummary, StepStats, Tag, ThreadCollective, ThreadGroup, ThreadGroupConfig,
    Usage, UsagePlan, UsageRecord, WireBuf, WireFormat, init_from_env, parameter_checksum,
    record_usage,
};
pub use maskddp_runtime::{Launch, LaunchEnv, LaunchError, NcclEnv};
#[cfg(feature = "mpi")]
pub use maskddp_runtime::{MpiCollective, MpiConfig, MpiInitError};
#[cfg(feature = "nccl")]
pub use maskddp_runtime::{NcclCollective, NcclConfig, NcclInitError};

#[cfg(feature = "train")]
pub use maskddp_runtime::train;

/// What a training loop needs: `use maskddp::prelude::*;`.
///
/// The attribute, the trait whose methods the attribute implements (so that
/// `model.usage_plan()` resolves), the reducer with its settings, the
/// in-process collective and the error type.
pub mod prelude {
    pub use crate::{
        Averaging, DdpError, DdpModel, NonFinite, Pipeline, Reducer, ReducerConfig, ThreadGroup,
        ThreadGroupConfig, WireFormat, ddp_model, parameter_checksum,
    };
}

/// The README's code blocks, compiled and run as doctests so they cannot
/// drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

/// Support for generated code. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use maskddp_macros::ddp_model_impl;
    pub use maskddp_runtime::__private::*;
}
