//! Diagnostics on the analysis' verdicts: parameters `forward` never uses,
//! and frozen fields it does use.

use quote::ToTokens;

use crate::analysis::FieldUsage;
use crate::ctxt::Ctxt;
use crate::model::{Model, ModelField};

pub(crate) fn check_usage(cx: &Ctxt, model: &Model<'_>, usage: &[FieldUsage]) {
    for (field, usage) in model.param_fields().zip(usage) {
        let name = field.name();
        match (usage, field.frozen) {
            (FieldUsage::Never, None) => cx.error_spanned_by(
                field_span(field),
                format!(
                    "parameter field `{name}` is never used by `forward`\n\
                     help: use it in `forward`, remove it, or mark it `#[ddp(frozen)]` if it \
                     is intentionally not trained"
                ),
            ),
            (FieldUsage::Always | FieldUsage::Conditional(_), Some(frozen)) => cx.error_spanned_by(
                frozen,
                format!(
                    "field `{name}` is marked `#[ddp(frozen)]` but `forward` uses it\n\
                     help: remove `#[ddp(frozen)]`: a frozen field takes no part in `forward` \
                     and never receives a gradient"
                ),
            ),
            _ => {}
        }
    }
}

/// The field's name, or its type in a tuple struct.
fn field_span(field: &ModelField<'_>) -> proc_macro2::TokenStream {
    match &field.field.ident {
        Some(ident) => ident.to_token_stream(),
        None => field.field.ty.to_token_stream(),
    }
}
