//! The `#[ddp_model]` attribute. Implementation detail of `maskddp`: depend on
//! the `maskddp` crate, which documents the attribute and re-exports it.

mod analysis;
mod attr;
mod check;
mod ctxt;
mod expand;
mod instrument;
mod model;

#[cfg(test)]
mod robustness;
#[cfg(test)]
mod snapshot;

use proc_macro::TokenStream;

// Documented where `maskddp` re-exports it: rustdoc appends this item's own
// docs to the re-export's, so it has none.
#[proc_macro_attribute]
pub fn ddp_model(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::ddp_model(args.into(), item.into()).into()
}

/// The second half of `#[ddp_model]`: called by the callback the struct's
/// expansion defines, with the struct and the impl block. Not public API.
#[doc(hidden)]
#[proc_macro]
pub fn ddp_model_impl(input: TokenStream) -> TokenStream {
    expand::ddp_model_impl(input.into()).into()
}
