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
