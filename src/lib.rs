//! maskddp: data-parallel training of conditional burn models.
//!
//! `#[ddp_model]` reads a model's `forward` at compile time, finds which
//! parameters are used only inside branches, rejects parameters that can never
//! be used, and instruments the branches so each step records which
//! parameters it touched. The runtime reduces exactly the gradients some rank
//! produced, in buckets, with one tiny usage exchange per step.

#[doc(inline)]
pub use maskddp_macros::ddp_model;
pub use maskddp_runtime::*;

/// Support for generated code. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use maskddp_macros::ddp_model_impl;
    pub use maskddp_runtime::__private::*;
}
