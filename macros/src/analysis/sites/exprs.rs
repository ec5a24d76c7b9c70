//! Expressions: the shape of an expression's value when it is derived from
//! a parameter field, and the consumptions inside it.

use syn::Expr;

use super::shape::{Shape, parts, union};
use super::tracker::Tracker;
use super::{Kind, Roots, is_self, unparen};

/// The single identifier a path expression names.
fn local_name(expr: &Expr) -> Option<String> {
    match unparen(expr) {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(|i| i.to_string()),
        _ => None,
    }
}

impl Tracker<'_> {
    /// `expr` in a context that consumes its value.
    pub(super) fn expr(&mut self, expr: &mut Expr) {
        if let Some(shape) = self.value(expr) {
            self.site(expr, shape, Kind::Other);
        }
    }

    /// Walks `expr` and returns the shape of its value when the value is
    /// derived from a parameter field; the value itself is not consumed
    /// (the caller decides), everything inside it that is, is marked.
    pub(super) fn value(&mut self, expr: &mut Expr) -> Option<Shape> {
        match expr {
            Expr::Path(p) => {
                let name = p.path.get_ident().filter(|_| p.qself.is_none())?;
                self.lookup(&name.to_string())
            }
            Expr::Field(f) => {
                if is_self(&f.base) {
                    return self.self_field(f);
                }
                match self.value(&mut f.base)? {
                    Shape::Tuple(parts) => match &f.member {
                        syn::Member::Unnamed(index) => {
                            parts.get(index.index as usize).cloned().flatten()
                        }
                        syn::Member::Named(_) => None,
                    },
                    // `expert.fc1`: a projection uses the value it is taken
                    // from (the field may be a parameter of it, or a config).
                    shape => {
                        self.site_in(&mut f.base, shape, Kind::Other, true);
                        None
                    }
                }
            }
            Expr::Index(e) => {
                self.expr(&mut e.index);
                // An element, or a slice when the index is a range: the
                // touch tells them apart by type.
                match self.value(&mut e.expr)? {
                    Shape::Module(roots) => Some(Shape::Module(parts(&roots))),
                    Shape::Seq(item) => Some(*item),
                    other => {
                        self.site(&mut e.expr, other, Kind::Other);
                        None
                    }
                }
            }
            Expr::Reference(r) => self.value(&mut r.expr),
            Expr::Paren(p) => self.value(&mut p.expr),
            Expr::Group(g) => self.value(&mut g.expr),
            Expr::Unary(u) => match u.op {
                syn::UnOp::Deref(_) => self.value(&mut u.expr),
                _ => {
                    self.expr(&mut u.expr);
                    None
                }
            },
            Expr::Cast(c) => {
                self.expr(&mut c.expr);
                None
            }
            Expr::MethodCall(_) => self.method_call(expr),
            Expr::Call(call) => {
                // `Some(&self.head)` is an `Option` of the value.
                let is_some = matches!(&*call.func, Expr::Path(p)
                    if p.qself.is_none() && p.path.is_ident("Some"))
                    && call.args.len() == 1;
                if is_some {
                    let inner = self.value(&mut call.args[0]);
                    return inner.map(|s| Shape::Seq(Box::new(s)));
                }
                self.expr(&mut call.func);
                for arg in &mut call.args {
                    self.expr(arg);
                }
                None
            }
            Expr::Tuple(t) => {
                let parts: Vec<Option<Shape>> = t.elems.iter_mut().map(|e| self.value(e)).collect();
                if parts.iter().any(Option::is_some) {
                    // Consumed later only through patterns or `.0`; anything
                    // else consumes the whole tuple (a site on it).
                    Some(Shape::Tuple(parts))
                } else {
                    None
                }
            }
            Expr::Block(b) => {
                let tail = self.block(&mut b.block);
                tail.and_then(|(_, shape)| shape)
            }
            Expr::Unsafe(u) => {
                let tail = self.block(&mut u.block);
                tail.and_then(|(_, shape)| shape)
            }
            Expr::If(e) => {
                let then = self.scoped(|t| {
                    t.cond(&mut e.cond);
                    t.block(&mut e.then_branch).and_then(|(_, s)| s)
                });
                let other = match &mut e.else_branch {
                    Some((_, other)) => self.value(other),
                    None => None,
                };
                union(then, other)
            }
            Expr::Match(m) => {
                let scrutinee = self.value(&mut m.expr);
                let mut out = None;
                for arm in &mut m.arms {
                    let shape = self.scoped(|t| {
                        t.bind(&arm.pat, scrutinee.clone());
                        if let Some((_, guard)) = &mut arm.guard {
                            t.cond(guard);
                        }
                        t.value(&mut arm.body)
                    });
                    out = union(out, shape);
                }
                out
            }
            Expr::Let(_) => {
                // Outside an `if`/`while` condition: bindings scope nothing.
                self.cond(expr);
                None
            }
            Expr::Binary(b) => {
                self.expr(&mut b.left);
                self.expr(&mut b.right);
                None
            }
            Expr::Assign(a) => {
                self.assign(&mut a.left, &mut a.right);
                None
            }
            Expr::ForLoop(f) => {
                let shape = self.value(&mut f.expr);
                let item = shape.map(|s| s.item());
                self.scoped(|t| {
                    t.bind(&f.pat, item);
                    t.block_stmts(&mut f.body);
                });
                None
            }
            Expr::While(w) => {
                self.scoped(|t| {
                    t.cond(&mut w.cond);
                    t.block_stmts(&mut w.body);
                });
                None
            }
            Expr::Loop(l) => {
                self.block_stmts(&mut l.body);
                None
            }
            Expr::Closure(c) => {
                self.closure_consumed(c, &[]);
                None
            }
            Expr::Async(a) => {
                self.block_stmts(&mut a.block);
                None
            }
            Expr::Return(r) => {
                if let Some(value) = &mut r.expr {
                    let shape = self.value(value);
                    self.returned(value, shape);
                }
                None
            }
            Expr::Break(b) => {
                if let Some(value) = &mut b.expr {
                    self.expr(value);
                }
                None
            }
            Expr::Macro(m) => {
                let roots = self.macro_roots(&m.mac);
                if !roots.is_empty() {
                    self.site(expr, Shape::Opaque(roots), Kind::Other);
                }
                None
            }
            Expr::Try(t) => {
                self.expr(&mut t.expr);
                None
            }
            Expr::Await(a) => {
                self.expr(&mut a.base);
                None
            }
            Expr::Array(a) => {
                a.elems.iter_mut().for_each(|e| self.expr(e));
                None
            }
            Expr::Repeat(r) => {
                self.expr(&mut r.expr);
                self.expr(&mut r.len);
                None
            }
            Expr::Range(r) => {
                if let Some(start) = &mut r.start {
                    self.expr(start);
                }
                if let Some(end) = &mut r.end {
                    self.expr(end);
                }
                None
            }
            Expr::Struct(s) => {
                s.fields.iter_mut().for_each(|f| self.expr(&mut f.expr));
                if let Some(rest) = &mut s.rest {
                    self.expr(rest);
                }
                None
            }
            Expr::TryBlock(t) => {
                self.block_stmts(&mut t.block);
                None
            }
            Expr::RawAddr(r) => self.value(&mut r.expr),
            Expr::Yield(y) => {
                if let Some(value) = &mut y.expr {
                    self.expr(value);
                }
                None
            }
            // Literals, `continue`, constants: nothing derived.
            _ => None,
        }
    }

    /// `self.f`: a parameter field's value; a declared field without
    /// parameters is nothing; anything else reaches past the struct.
    fn self_field(&mut self, f: &syn::ExprField) -> Option<Shape> {
        if let Some(field) = self.fields.param(&f.member) {
            return Some(Shape::Module(Roots::from([(field, true)])));
        }
        let name = crate::model::member_name(&f.member);
        if !self.fields.others.contains(&name) {
            self.opaque = true;
            self.cx.error_spanned_by(
                f,
                format!(
                    "`{}` has no field `{name}`: `self.{name}` reaches through `Deref` (or a \
                     field `#[ddp_model]` did not see), so the parameters it uses cannot be \
                     recorded\nhelp: reach the field through the declared field that holds it, \
                     as `self.inner.{name}`",
                    self.fields.struct_name
                ),
            );
        }
        None
    }

    /// An `if`/`while` condition or a match guard: `let` patterns bind into
    /// the current scope.
    fn cond(&mut self, expr: &mut Expr) {
        match expr {
            Expr::Let(l) => {
                let shape = self.value(&mut l.expr);
                self.bind(&l.pat, shape);
            }
            Expr::Binary(b) if matches!(b.op, syn::BinOp::And(_)) => {
                self.cond(&mut b.left);
                self.cond(&mut b.right);
            }
            Expr::Paren(p) => self.cond(&mut p.expr),
            other => self.expr(other),
        }
    }

    /// `target = value`: a binding that held a derived value may now hold
    /// another; the assigned value counts as used here as well, since the
    /// binding's earlier uses were walked before this assignment was seen.
    fn assign(&mut self, target: &mut Expr, value: &mut Expr) {
        match local_name(target) {
            Some(name) => {
                let shape = self.value(value);
                if let Some(shape) = shape.clone() {
                    self.rebind(&name, shape.clone());
                    self.site(value, shape, Kind::Other);
                }
            }
            None => {
                self.place(target);
                self.expr(value);
            }
        }
    }

    /// An assigned place: its index expressions are evaluated, nothing else.
    fn place(&mut self, expr: &mut Expr) {
        match expr {
            Expr::Index(i) => {
                self.place(&mut i.expr);
                self.expr(&mut i.index);
            }
            Expr::Field(f) => self.place(&mut f.base),
            Expr::Unary(u) => self.place(&mut u.expr),
            Expr::Paren(p) => self.place(&mut p.expr),
            _ => {}
        }
    }
}
