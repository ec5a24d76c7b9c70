//! Uses that would escape the forward pass, and so could not be recorded:
//! an `async` `forward`, closures run on other threads, and values, closures
//! or lazy iterators returned to be used after the method returned.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::Expr;

use super::adaptors::LAZY;
use super::shape::Shape;
use super::tracker::Tracker;
use super::{Roots, mentions, unparen};
use crate::ctxt::Ctxt;

/// An `async` `forward`: its body runs after the usage scope closed.
pub(super) fn check_async(cx: &Ctxt, sig: &syn::Signature) {
    if sig.ident == "forward"
        && let Some(token) = &sig.asyncness
    {
        cx.error_spanned_by(
            token,
            "`forward` is `async`: its body runs after the usage scope of the \
             forward pass closed, so the parameters it uses cannot be recorded\n\
             help: make `forward` a plain `fn` and await outside it",
        );
    }
}

impl Tracker<'_> {
    /// Closures handed to another thread run outside this thread's usage
    /// scope: their uses would not be recorded.
    pub(super) fn check_threads(
        &self,
        name: &str,
        args: &syn::punctuated::Punctuated<Expr, syn::Token![,]>,
    ) {
        let threaded = matches!(
            name,
            "spawn"
                | "spawn_scoped"
                | "scope"
                | "par_iter"
                | "into_par_iter"
                | "par_bridge"
                | "par_chunks"
                | "join"
        );
        if !threaded {
            return;
        }
        let captures = args.iter().find(|a| {
            let tokens = a.to_token_stream();
            mentions(tokens.clone(), "self") || self.mentions_derived(tokens)
        });
        if let Some(arg) = captures {
            self.cx.error_spanned_by(
                arg,
                format!(
                    "`{name}` runs this on another thread, outside the usage scope of the \
                     forward pass, so the parameters it uses cannot be recorded\n\
                     help: run the parameter uses on the thread that calls `forward`"
                ),
            );
        }
    }

    /// A method returning something that uses parameters after it
    /// returned. Any method: a closure or async block capturing `self` (its
    /// caller may keep it past the forward pass). `forward` also: a value
    /// derived from a field, or a lazy adaptor holding such a closure.
    pub(super) fn check_escape(&mut self, expr: &Expr, shape: Option<&Shape>) {
        if let (true, Some(shape)) = (self.is_forward, shape) {
            let fields: Vec<String> = shape
                .roots()
                .keys()
                .map(|&f| format!("`self.{}`", self.fields.params[f]))
                .collect();
            self.cx.error_spanned_by(
                expr,
                format!(
                    "`forward` returns a value borrowed from {}; parameters used through it \
                     after `forward` returns are not recorded by the usage scope\n\
                     help: use the value inside `forward` and return what it computes",
                    fields.join(", ")
                ),
            );
            return;
        }
        let method = &self.method;
        if let Some(closure) = self.captured_closure(expr) {
            self.cx.error_spanned_by(
                closure,
                format!(
                    "this closure captures `self` and escapes `{method}`; parameters it uses \
                     later are not recorded by the usage scope of the forward pass\n\
                     help: call the closure inside `{method}`, or return the values it computes"
                ),
            );
        } else if let (true, Some(lazy)) = (self.is_forward, self.lazy_capture(expr)) {
            self.cx.error_spanned_by(
                lazy,
                "this iterator runs a closure that uses `self` after `forward` returned; \
                 parameters it uses then are not recorded by the usage scope of the forward \
                 pass\nhelp: evaluate it inside `forward` (`.collect()` it) and return the \
                 values it computes",
            );
        }
    }

    fn captures(&self, e: &Expr) -> bool {
        let tokens = e.to_token_stream();
        mentions(tokens.clone(), "self") || self.mentions_derived(tokens)
    }

    /// A returned closure or async block capturing `self` or a derived
    /// binding, possibly wrapped (`Box::new(..)`, `Some(..)`, a tuple).
    fn captured_closure<'e>(&self, expr: &'e Expr) -> Option<&'e Expr> {
        match unparen(expr) {
            e @ (Expr::Closure(_) | Expr::Async(_)) if self.captures(e) => Some(e),
            Expr::Call(c) => c.args.iter().find_map(|a| self.captured_closure(a)),
            Expr::Tuple(t) => t.elems.iter().find_map(|e| self.captured_closure(e)),
            Expr::Struct(s) => s.fields.iter().find_map(|f| self.captured_closure(&f.expr)),
            _ => None,
        }
    }

    /// A returned lazy adaptor chain holding a closure that captures `self`
    /// or a derived binding: `xs.into_iter().map(move |x| self.head.forward(x))`.
    fn lazy_capture<'e>(&self, expr: &'e Expr) -> Option<&'e Expr> {
        match unparen(expr) {
            Expr::MethodCall(m) if LAZY.contains(&m.method.to_string().as_str()) => m
                .args
                .iter()
                .find(|a| matches!(unparen(a), Expr::Closure(_)) && self.captures(a))
                .or_else(|| self.lazy_capture(&m.receiver)),
            Expr::Call(c) => c.args.iter().find_map(|a| self.lazy_capture(a)),
            _ => None,
        }
    }

    fn mentions_derived(&self, tokens: TokenStream) -> bool {
        let mut roots = Roots::new();
        self.collect_mentioned(tokens, &mut roots);
        !roots.is_empty()
    }
}
