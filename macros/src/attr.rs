//! The attributes users write: `#[ddp_model(...)]` arguments, `#[ddp(frozen)]`
//! on fields and `#[ddp(uses(...))]` on statements.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Attribute, Member, Token};

use crate::ctxt::Ctxt;

/// The helper attribute's name.
pub(crate) const DDP: &str = "ddp";

pub(crate) fn is_ddp(attr: &Attribute) -> bool {
    attr.path().is_ident(DDP)
}

pub(crate) fn is_cfg(attr: &Attribute) -> bool {
    attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr")
}

/// Arguments of `#[ddp_model(...)]` on the impl block.
#[derive(Default)]
pub(crate) struct ImplArgs {
    /// `report`: warn at compile time with the list of conditional fields.
    pub(crate) report: Option<syn::Ident>,
}

impl ImplArgs {
    pub(crate) fn parse(cx: &Ctxt, args: TokenStream) -> ImplArgs {
        let mut out = ImplArgs::default();
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("report") {
                if out.report.is_some() {
                    return Err(meta.error("duplicate `report` argument"));
                }
                out.report = meta.path.get_ident().cloned();
                Ok(())
            } else {
                Err(meta.error(format!(
                    "unknown `#[ddp_model]` argument `{}`; the impl block accepts `report`",
                    quote::ToTokens::to_token_stream(&meta.path)
                        .to_string()
                        .replace(' ', "")
                )))
            }
        });
        if let Err(err) = parser.parse2(args) {
            cx.syn_error(err);
        }
        out
    }
}

/// `#[ddp(frozen)]` on a field: the attribute's path, for spans.
pub(crate) fn field_frozen<'a>(cx: &Ctxt, attrs: &'a [Attribute]) -> Option<&'a Attribute> {
    let mut frozen = None;
    for attr in attrs.iter().filter(|a| is_ddp(a)) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("frozen") {
                if frozen.is_some() {
                    return Err(meta.error("duplicate `frozen`"));
                }
                frozen = Some(attr);
                Ok(())
            } else if meta.path.is_ident("uses") {
                Err(meta.error(
                    "`uses(...)` belongs on a statement inside a method, not on a field; \
                     on a field `#[ddp]` accepts `frozen`",
                ))
            } else {
                Err(meta.error(format!(
                    "unknown `ddp` field attribute `{}`; expected `#[ddp(frozen)]`",
                    quote::ToTokens::to_token_stream(&meta.path)
                        .to_string()
                        .replace(' ', "")
                )))
            }
        });
        if let Err(err) = result {
            cx.syn_error(err);
        }
    }
    frozen
}

/// The fields listed by `#[ddp(uses(a, b))]` on a statement.
///
/// `Ok(None)` when the statement carries no `ddp` attribute.
pub(crate) fn stmt_uses(attrs: &[Attribute]) -> syn::Result<Option<Vec<Member>>> {
    let mut found: Option<Vec<Member>> = None;
    for attr in attrs.iter().filter(|a| is_ddp(a)) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("uses") {
                let content;
                syn::parenthesized!(content in meta.input);
                let members = Punctuated::<Member, Token![,]>::parse_terminated(&content)?;
                found.get_or_insert_with(Vec::new).extend(members);
                Ok(())
            } else if meta.path.is_ident("frozen") {
                Err(meta.error(
                    "`frozen` belongs on a field of the struct; \
                     on a statement `#[ddp]` accepts `uses(field, ...)`",
                ))
            } else {
                Err(meta.error(format!(
                    "unknown `ddp` statement attribute `{}`; expected `#[ddp(uses(field, ...))]`",
                    quote::ToTokens::to_token_stream(&meta.path)
                        .to_string()
                        .replace(' ', "")
                )))
            }
        })?;
        if found.is_none() {
            return Err(syn::Error::new_spanned(
                attr,
                "expected `#[ddp(uses(field, ...))]` on a statement",
            ));
        }
    }
    Ok(found)
}

/// Removes `#[ddp(...)]` attributes (which no compiler pass knows) in place.
pub(crate) fn strip_ddp(attrs: &mut Vec<Attribute>) {
    attrs.retain(|a| !is_ddp(a));
}

/// The attributes of a statement, wherever syn keeps them.
pub(crate) fn stmt_attrs(stmt: &syn::Stmt) -> &[Attribute] {
    match stmt {
        syn::Stmt::Local(local) => &local.attrs,
        syn::Stmt::Macro(mac) => &mac.attrs,
        syn::Stmt::Expr(expr, _) => expr_attrs(expr),
        syn::Stmt::Item(_) => &[],
    }
}

pub(crate) fn stmt_attrs_mut(stmt: &mut syn::Stmt) -> Option<&mut Vec<Attribute>> {
    match stmt {
        syn::Stmt::Local(local) => Some(&mut local.attrs),
        syn::Stmt::Macro(mac) => Some(&mut mac.attrs),
        syn::Stmt::Expr(expr, _) => expr_attrs_mut(expr),
        syn::Stmt::Item(_) => None,
    }
}

/// Every expression kind that can carry outer attributes.
macro_rules! expr_attr_arms {
    ($expr:expr, $default:expr, |$e:ident| $get:expr) => {
        match $expr {
            syn::Expr::Array($e) => $get,
            syn::Expr::Assign($e) => $get,
            syn::Expr::Async($e) => $get,
            syn::Expr::Await($e) => $get,
            syn::Expr::Binary($e) => $get,
            syn::Expr::Block($e) => $get,
            syn::Expr::Break($e) => $get,
            syn::Expr::Call($e) => $get,
            syn::Expr::Cast($e) => $get,
            syn::Expr::Closure($e) => $get,
            syn::Expr::Const($e) => $get,
            syn::Expr::Continue($e) => $get,
            syn::Expr::Field($e) => $get,
            syn::Expr::ForLoop($e) => $get,
            syn::Expr::Group($e) => $get,
            syn::Expr::If($e) => $get,
            syn::Expr::Index($e) => $get,
            syn::Expr::Let($e) => $get,
            syn::Expr::Lit($e) => $get,
            syn::Expr::Loop($e) => $get,
            syn::Expr::Macro($e) => $get,
            syn::Expr::Match($e) => $get,
            syn::Expr::MethodCall($e) => $get,
            syn::Expr::Paren($e) => $get,
            syn::Expr::Path($e) => $get,
            syn::Expr::Range($e) => $get,
            syn::Expr::Reference($e) => $get,
            syn::Expr::Repeat($e) => $get,
            syn::Expr::Return($e) => $get,
            syn::Expr::Struct($e) => $get,
            syn::Expr::Try($e) => $get,
            syn::Expr::Tuple($e) => $get,
            syn::Expr::Unary($e) => $get,
            syn::Expr::Unsafe($e) => $get,
            syn::Expr::While($e) => $get,
            _ => $default,
        }
    };
}

pub(crate) fn expr_attrs(expr: &syn::Expr) -> &[Attribute] {
    expr_attr_arms!(expr, &[], |e| &e.attrs)
}

pub(crate) fn expr_attrs_mut(expr: &mut syn::Expr) -> Option<&mut Vec<Attribute>> {
    expr_attr_arms!(expr, None, |e| Some(&mut e.attrs))
}
