//! Diagnostics on the analysis' verdicts: parameters `forward` never uses.

use quote::ToTokens;

use crate::analysis::FieldUsage;
use crate::ctxt::Ctxt;
use crate::model::{Model, ModelField};

pub(crate) fn check_usage(cx: &Ctxt, model: &Model<'_>, usage: &[FieldUsage]) {
    for (field, usage) in model.param_fields().zip(usage) {
        let name = field.name();
        if let (FieldUsage::Never, None) = (usage, field.frozen) {
            cx.error_spanned_by(
                field_span(field),
                format!(
                    "parameter field `{name}` is never used by `forward`\n\
                     help: use it in `forward`, remove it, or mark it `#[ddp(frozen)]` if it \
                     is intentionally not trained"
                ),
            );
        }
    }
}

/// A frozen field is never reduced nor recorded, whatever `forward` does with
/// it: a distillation teacher runs in `forward` without being trained. Should
/// one of its parameters get a gradient anyway, the reducer reports it.
pub(crate) fn apply_frozen(model: &Model<'_>, usage: &mut [FieldUsage]) {
    for (field, usage) in model.param_fields().zip(usage) {
        if field.frozen.is_some() {
            *usage = FieldUsage::Never;
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
