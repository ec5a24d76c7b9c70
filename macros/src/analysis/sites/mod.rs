//! The value tracker: the one place that decides what a *use* of a parameter
//! field is.
//!
//! A value derived from a parameter field — `&self.head`, `self.experts[i]`,
//! an element yielded by `self.experts.iter().enumerate()`, the `p` of
//! `if let Some(p) = &self.proj`, a closure parameter of
//! `self.proj.as_ref().map(|p| ..)` — is followed through bindings,
//! patterns, iterator and `Option` adaptors until it is *consumed*: a method
//! call on it (`expert.forward(x)`), or any use the tracker does not model
//! (an argument, a return from a helper, an assignment, an operand). Taking,
//! binding, iterating or filtering a value is not a use; only consumption is.
//!
//! Each consumption becomes a [`Site`] (its fields, whether it denotes a
//! whole field or a part, the kind of use), and the consumed expression is
//! marked with the site's number in a `#[__maskddp_site(N)]` attribute. The
//! flow analysis reads the marks to classify fields (always, conditional,
//! never); instrumentation rewrites them to record. Neither decides anew
//! what a use is.
//!
//! A site records either the consumed *value* itself ([`Form::Value`]: the
//! value derefs to a module or a slice of modules, so exactly the expert a
//! loop used is recorded) or, when the value's type is not known to be a
//! module (an iterator, an `Option`, a tuple), every root field it came from
//! ([`Form::Roots`]), which over-records but always compiles.
//!
//! The tracker is split by what each part decides:
//!
//! - this module: what the rest of the crate sees: the [`Site`]s, the marks
//!   they leave in the code, and [`mark_methods`], which runs the tracker;
//! - `shape`: the shape of a derived value, and the root fields it comes from;
//! - `tracker`: the walk's state: bindings in scope, closures, recorded sites;
//! - `blocks`: blocks and statements, and values leaving a method;
//! - `patterns`: what the names of a pattern bind to;
//! - `exprs`: what an expression's value is, and what in it is consumed;
//! - `adaptors`: method calls on derived values: which method takes a part,
//!   adapts an iterator or `Option`, reads a length, or consumes;
//! - `stated`: uses the tracker does not see but is told of: `#[ddp(uses(..))]`
//!   statements, and the bindings a macro call names;
//! - `escape`: errors for uses that would escape the forward pass (returned
//!   closures and lazy iterators, other threads, `async`).

mod adaptors;
mod blocks;
mod escape;
mod exprs;
mod patterns;
mod shape;
mod stated;
mod tracker;

use std::collections::BTreeMap;

use proc_macro2::{TokenStream, TokenTree};
use syn::ext::IdentExt as _;
use syn::{Expr, ImplItemFn};

use super::FieldTable;
use crate::attr;
use crate::ctxt::Ctxt;
use tracker::Tracker;

/// The attribute that marks a consumed expression with its site number.
pub(crate) const SITE_ATTR: &str = "__maskddp_site";
/// The macro statement standing for a `#[ddp(uses(..))]` statement's records.
pub(crate) const STATED_MACRO: &str = "__maskddp_stated";
/// The attribute on a `#[ddp(uses(..))]` statement: nothing inside is a use.
pub(crate) const OPAQUE_ATTR: &str = "__maskddp_opaque";

/// For each field a value may come from: whether it is the whole field (as
/// opposed to an element, a slice, or the content of an `Option` field).
pub(crate) type Roots = BTreeMap<usize, bool>;

/// What recording a site does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Form {
    /// Record the consumed value (a module or a slice of modules, behind
    /// any number of references), which is a place: a binding, `self.f`,
    /// `self.f[i]`. It is recorded through a reference, never moved.
    Place,
    /// Record the consumed value, which is a temporary: it is moved into
    /// the recording block and handed back.
    Value,
    /// Record every root field, whatever the value is, before the statement
    /// that consumes it.
    Roots,
}

/// How the value is consumed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Kind {
    /// Receiver of a call of this method: a nested model whose method is
    /// instrumented records its own conditional parameters.
    Call(String),
    /// Anything else.
    Other,
}

/// One consumption of values derived from parameter fields.
#[derive(Clone, Debug)]
pub(crate) struct Site {
    pub(crate) roots: Roots,
    pub(crate) kind: Kind,
    pub(crate) form: Form,
    /// The source text of the used value, for plan tables.
    pub(crate) text: String,
    /// Whether the site uses every one of its roots (a statement stating
    /// its uses), rather than one of them (`if c { &self.a } else { &self.b }`).
    pub(crate) every_root: bool,
}

impl Site {
    /// The fields this site surely uses as a whole: only those are used
    /// on every path through it. A call on the field uses it; handing it
    /// to a function or reaching into it (`self.child.head`) may use any
    /// part of it, or none.
    pub(crate) fn whole_fields(&self) -> Vec<usize> {
        let wholes = self.roots.iter().filter(|(_, whole)| **whole);
        if self.every_root || (self.roots.len() == 1 && matches!(self.kind, Kind::Call(_))) {
            wholes.map(|(field, _)| *field).collect()
        } else {
            Vec::new()
        }
    }

    /// The fields this site surely uses through a call of their `forward`.
    /// Only such a call is sure to use what a nested `#[ddp_model]` plans as
    /// always: any other method (or a statement stating its uses) may use
    /// any part of it.
    pub(crate) fn forward_fields(&self) -> Vec<usize> {
        match &self.kind {
            Kind::Call(method) if method == "forward" && !self.every_root => self.whole_fields(),
            _ => Vec::new(),
        }
    }
}

/// Marks every consumption site of the `&self` methods in `methods`, in
/// place, and returns the sites. Reports forms that cannot be tracked.
pub(crate) fn mark_methods<'a>(
    cx: &Ctxt,
    fields: &FieldTable,
    methods: impl IntoIterator<Item = &'a mut ImplItemFn>,
) -> Marked {
    let mut sites = Vec::new();
    let mut opaque = false;
    for method in methods {
        let is_forward = method.sig.ident == "forward";
        escape::check_async(cx, &method.sig);
        let mut tracker = Tracker {
            cx,
            fields,
            sites: &mut sites,
            scopes: vec![Vec::new()],
            method: method.sig.ident.unraw().to_string(),
            is_forward,
            closures: 0,
            opaque: false,
        };
        tracker.body(&mut method.block);
        opaque |= tracker.opaque;
    }
    Marked { sites, opaque }
}

/// What marking found.
pub(crate) struct Marked {
    pub(crate) sites: Vec<Site>,
    /// Whether an error hid uses (a field reached through `Deref`, a
    /// malformed `uses(..)`): "never used" verdicts are then unreliable.
    pub(crate) opaque: bool,
}

/// `expr` without enclosing parentheses or invisible groups.
fn unparen(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) if p.attrs.is_empty() => unparen(&p.expr),
        Expr::Group(g) => unparen(&g.expr),
        other => other,
    }
}

/// Whether `expr` is the bare path `self`.
pub(crate) fn is_self(expr: &Expr) -> bool {
    matches!(unparen(expr), Expr::Path(p) if p.qself.is_none() && p.path.is_ident("self"))
}

/// Whether `expr` denotes a place (a binding, a field, an element, a deref):
/// instrumentation then records through a reference instead of moving it.
pub(crate) fn is_place(expr: &Expr) -> bool {
    match expr {
        Expr::Path(_) | Expr::Field(_) | Expr::Index(_) => true,
        Expr::Unary(u) => matches!(u.op, syn::UnOp::Deref(_)),
        Expr::Paren(p) => is_place(&p.expr),
        Expr::Group(g) => is_place(&g.expr),
        _ => false,
    }
}

pub(crate) fn mentions(tokens: TokenStream, name: &str) -> bool {
    tokens.into_iter().any(|tt| match tt {
        TokenTree::Ident(i) => i == name,
        TokenTree::Group(g) => mentions(g.stream(), name),
        _ => false,
    })
}

/// The site number an expression is marked with.
pub(crate) fn site_of(attrs: &[syn::Attribute]) -> Option<usize> {
    attrs.iter().find_map(|a| {
        if !a.path().is_ident(SITE_ATTR) {
            return None;
        }
        a.parse_args::<syn::LitInt>()
            .ok()
            .and_then(|n| n.base10_parse().ok())
    })
}

/// The site number of a `__maskddp_stated!(N)` statement.
pub(crate) fn stated_site(mac: &syn::Macro) -> Option<usize> {
    if !mac.path.is_ident(STATED_MACRO) {
        return None;
    }
    mac.parse_body::<syn::LitInt>()
        .ok()
        .and_then(|n| n.base10_parse().ok())
}

pub(crate) fn is_opaque(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| a.path().is_ident(OPAQUE_ATTR))
}

/// Puts the mark of site `n` on `expr`.
fn mark(expr: &mut Expr, n: usize) {
    let attr: syn::Attribute = syn::parse_quote!(#[__maskddp_site(#n)]);
    match expr {
        // Marks go on an expression's own attributes where syn keeps them;
        // parentheses carry them for the rest.
        Expr::Paren(p) => p.attrs.push(attr),
        other => match attr::expr_attrs_mut(other) {
            Some(attrs) => attrs.push(attr),
            None => {
                let inner = std::mem::replace(other, Expr::Verbatim(TokenStream::new()));
                *other = Expr::Paren(syn::ExprParen {
                    attrs: vec![attr],
                    paren_token: Default::default(),
                    expr: Box::new(inner),
                });
            }
        },
    }
}
