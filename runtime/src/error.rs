//! Errors of the reducer.

use crate::collective::CollectiveError;

/// Why setting up the reducer or reducing a step failed.
///
/// Messages name the step, the parameter path or the ranks involved, and what
/// to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DdpError {
    /// A collective operation failed (a rank left, timed out, or disagreed).
    #[error(transparent)]
    Collective(#[from] CollectiveError),
    /// Ranks built different models or reducer configurations.
    #[error(
        "parameter layouts differ across ranks: {detail}; every rank must build the same \
         model (same parameter paths, shapes, dtypes and usage plan) with the same \
         ReducerConfig"
    )]
    LayoutMismatch {
        /// The first difference, naming both ranks' views.
        detail: String,
    },
    /// Ranks set up their reducers with different settings.
    #[error(
        "reducer configurations differ across ranks: rank {rank} has `{setting}` = {value} \
         where rank 0 has `{setting}` = {rank0_value}; every rank must use the same \
         ReducerConfig"
    )]
    ConfigMismatch {
        /// The `ReducerConfig` field.
        setting: String,
        /// The first rank that differs from rank 0.
        rank: usize,
        /// Its value there.
        value: String,
        /// Rank 0's value.
        rank0_value: String,
    },
    /// `reduce` was called with no `forward` since the previous `reduce`.
    #[error(
        "step {step}: rank {rank} called `reduce` with no `reducer.forward(|| …)` since its \
         previous `reduce` (or since set-up): rank {rank} is a step ahead of the others, or \
         ran its forward outside `reducer.forward`; run each step's forward inside \
         `reducer.forward` and call `reduce` once per step — a rank that has nothing to \
         compute in a step calls `reducer.reduce_without_forward(grads)`; nothing was reduced"
    )]
    ReduceWithoutForward {
        /// The step this `reduce` would have been.
        step: u64,
        /// The rank that is ahead.
        rank: usize,
    },
    /// A gradient's shape differs from its parameter's.
    #[error(
        "step {step}: rank {rank}'s gradient of `{path}` has shape {actual:?}, but the \
         parameter has shape {expected:?}; build the `GradientsParams` from this model's own \
         backward (`GradientsParams::from_grads(loss.backward(), &model)`) and register a \
         gradient only with its parameter's shape — nothing was reduced"
    )]
    GradientShape {
        /// The step.
        step: u64,
        /// The rank whose gradient it is.
        rank: usize,
        /// The parameter's module path.
        path: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The gradient's shape.
        actual: Vec<usize>,
    },
    /// A rank's gradient holds NaN or an infinity ([`NonFinite::Error`]).
    ///
    /// [`NonFinite::Error`]: crate::NonFinite::Error
    #[error(
        "step {step}: rank {rank}'s gradient of `{path}` holds {value} (element {element}); \
         it was stopped before reaching the other ranks, whose replicas it would have \
         poisoned — look for what diverged on rank {rank} (learning rate, loss, inputs), or \
         set `ReducerConfig::non_finite` to `NonFinite::Warn` to reduce it anyway and count \
         it in the step statistics"
    )]
    NonFiniteGradient {
        /// The step.
        step: u64,
        /// The rank whose gradient it is.
        rank: usize,
        /// The first parameter (in slot order) with a non-finite gradient.
        path: String,
        /// Index of the first non-finite element.
        element: usize,
        /// `NaN`, `inf` or `-inf`.
        value: String,
    },
    /// A finite gradient value does not fit the compressed wire format: it
    /// would travel as an infinity ([`NonFinite::Error`]).
    ///
    /// [`NonFinite::Error`]: crate::NonFinite::Error
    #[error(
        "step {step}: rank {rank}'s gradient of `{path}` holds {value} (element {element}), \
         beyond the {wire} wire format's largest finite value {max}: it would reach every rank \
         as an infinity; use `WireFormat::Bf16` (f32's range) or `WireFormat::F32`, or scale \
         the loss down"
    )]
    WireOverflow {
        /// The step.
        step: u64,
        /// The rank whose gradient it is.
        rank: usize,
        /// The parameter's module path.
        path: String,
        /// Index of the first element that overflows.
        element: usize,
        /// The value.
        value: String,
        /// The wire format.
        wire: String,
        /// Its largest finite value.
        max: String,
    },
    /// Every rank's gradient was finite, but their sum is not: it overflows
    /// the wire format ([`NonFinite::Error`]). Every rank reports it.
    ///
    /// [`NonFinite::Error`]: crate::NonFinite::Error
    #[error(
        "step {step}: the sum over ranks of the gradients of `{path}` overflows the {wire} \
         wire format (largest finite value {max}) at element {element}, although every \
         rank's own gradient is finite; scale the loss down, or, on a 16-bit wire, use one \
         with f32's range (`WireFormat::Bf16` or `WireFormat::F32`)"
    )]
    SumOverflow {
        /// The step.
        step: u64,
        /// The parameter's module path.
        path: String,
        /// Index of the first element that overflows.
        element: usize,
        /// The wire format.
        wire: String,
        /// Its largest finite value.
        max: String,
    },
    /// A parameter has a gradient although this step's forward did not record
    /// a use of it.
    #[error(
        "step {step}: parameter `{path}` has a gradient, but no use of it was recorded in \
         this step's forward; run the forward inside `reducer.forward(|| …)` on this rank's \
         thread, and if you do, the usage plan missed a use of `{path}` (a path through \
         `forward` the analysis did not see): state it with `#[ddp(uses(field))]` on the \
         statement that uses it — nothing was reduced"
    )]
    UnplannedGradient {
        /// The step.
        step: u64,
        /// The parameter's module path.
        path: String,
    },
    /// A parameter declared frozen has a gradient.
    #[error(
        "step {step}: parameter `{path}` is declared frozen but has a gradient; \
         either remove the frozen declaration or keep it out of the graph \
         (`Module::no_grad`, `Tensor::detach`)"
    )]
    FrozenGradient {
        /// The step.
        step: u64,
        /// The parameter's module path.
        path: String,
    },
    /// Gradients for parameters the reducer does not know.
    #[error(
        "step {step}: {count} gradient(s) belong to parameters that are not in the model \
         this reducer was built for; build the `GradientsParams` from that model"
    )]
    ForeignGradients {
        /// The step.
        step: u64,
        /// How many.
        count: usize,
    },
    /// A parameter has a rank the reducer cannot handle.
    #[error(
        "parameter `{path}` has {dims} dimensions; the reducer handles tensors of 1 to 8 \
         dimensions"
    )]
    UnsupportedDims {
        /// The parameter's module path.
        path: String,
        /// Its number of dimensions.
        dims: usize,
    },
}
