//! The tracker's state while it walks a method: the bindings in scope and
//! the shapes they hold, the closures around the current point, and the
//! sites recorded so far.

use syn::Expr;

use super::shape::{Shape, union};
use super::{Form, Kind, Site, is_place, mark};
use crate::analysis::FieldTable;
use crate::analysis::render::render_tokens;
use crate::ctxt::Ctxt;

/// The walk over one method's body.
pub(super) struct Tracker<'a> {
    pub(super) cx: &'a Ctxt,
    pub(super) fields: &'a FieldTable,
    pub(super) sites: &'a mut Vec<Site>,
    /// Bindings in scope, innermost last: `None` for a binding that holds
    /// no derived value (and shadows one that did).
    pub(super) scopes: Vec<Vec<(String, Option<Shape>)>>,
    pub(super) method: String,
    pub(super) is_forward: bool,
    /// Depth of closures around the current point: a `return` in one
    /// leaves the closure, not the method.
    pub(super) closures: usize,
    /// An error that hides uses was reported.
    pub(super) opaque: bool,
}

/// A binding's name as the compiler sees it: `r#h` is `h`.
fn unraw(name: &str) -> &str {
    name.strip_prefix("r#").unwrap_or(name)
}

impl Tracker<'_> {
    pub(super) fn lookup(&self, name: &str) -> Option<Shape> {
        let name = unraw(name);
        self.scopes
            .iter()
            .rev()
            .flat_map(|scope| scope.iter().rev())
            .find(|(n, _)| n == name)
            .and_then(|(_, shape)| shape.clone())
    }

    pub(super) fn bind_name(&mut self, name: String, shape: Option<Shape>) {
        let shape = shape.filter(|s| !s.roots().is_empty());
        if let Some(scope) = self.scopes.last_mut() {
            scope.push((unraw(&name).to_owned(), shape));
        }
    }

    /// `name = value`: the binding, in whichever scope holds it, may now
    /// hold either value.
    pub(super) fn rebind(&mut self, name: &str, shape: Shape) {
        let name = unraw(name);
        let entry = self
            .scopes
            .iter_mut()
            .rev()
            .flat_map(|scope| scope.iter_mut().rev())
            .find(|(n, _)| n == name);
        if let Some((_, old)) = entry {
            *old = union(old.take(), Some(shape));
        }
    }

    pub(super) fn scoped<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.scopes.push(Vec::new());
        let out = f(self);
        self.scopes.pop();
        out
    }

    /// Records a consumption of `expr` (of shape `shape`) and marks it.
    pub(super) fn site(&mut self, expr: &mut Expr, shape: Shape, kind: Kind) {
        self.site_in(expr, shape, kind, false);
    }

    /// As [`Self::site`]; `place_context` when `expr` is used as a place
    /// (the base of a projection), so recording must not move it.
    pub(super) fn site_in(
        &mut self,
        expr: &mut Expr,
        shape: Shape,
        kind: Kind,
        place_context: bool,
    ) {
        let roots = shape.roots();
        if roots.is_empty() {
            return;
        }
        let (value, place_context) = match (&kind, &*expr) {
            // A method call's receiver is a place context (auto-ref).
            (Kind::Call(_), Expr::MethodCall(call)) => (&*call.receiver, true),
            _ => (&*expr, place_context),
        };
        let form = match shape {
            Shape::Module(_) if place_context && is_place(value) => Form::Place,
            Shape::Module(_) => Form::Value,
            _ => Form::Roots,
        };
        let text = render_tokens(value);
        let n = self.sites.len();
        self.sites.push(Site {
            roots,
            kind,
            form,
            text,
            every_root: false,
        });
        mark(expr, n);
    }

    /// A closure: parameters bind to `params` (the values an adaptor hands
    /// it), then the body. Returns the shape of the value it returns, not
    /// consumed: the caller tracks it (`map`) or consumes it.
    pub(super) fn closure(
        &mut self,
        c: &mut syn::ExprClosure,
        params: &[Option<Shape>],
    ) -> Option<Shape> {
        self.closures += 1;
        let shape = self.scoped(|t| {
            for (i, input) in c.inputs.iter().enumerate() {
                t.bind(input, params.get(i).cloned().flatten());
            }
            t.value(&mut c.body)
        });
        self.closures -= 1;
        shape
    }

    /// A closure whose result is not followed: a derived result is used
    /// where the closure returns it.
    pub(super) fn closure_consumed(&mut self, c: &mut syn::ExprClosure, params: &[Option<Shape>]) {
        if let Some(shape) = self.closure(c, params) {
            self.site(&mut c.body, shape, Kind::Other);
        }
    }
}
