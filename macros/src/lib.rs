//! The `#[ddp_model]` attribute. Implementation detail of `maskddp`.

use proc_macro::TokenStream;

/// See the `maskddp` crate.
#[proc_macro_attribute]
pub fn ddp_model(_args: TokenStream, item: TokenStream) -> TokenStream {
    item
}
