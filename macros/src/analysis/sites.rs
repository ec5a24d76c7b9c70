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

use std::collections::BTreeMap;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Expr, ImplItemFn, Pat, Stmt};

use super::FieldTable;
use super::render::render_tokens;
use crate::attr;
use crate::ctxt::Ctxt;

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

/// The shape of a derived value, as far as syntax tells.
#[derive(Clone, Debug, PartialEq)]
enum Shape {
    /// Derefs to a module or a slice of modules: the field, an element.
    Module(Roots),
    /// Yields values of the inner shape: an iterator, a slice, an `Option`,
    /// a collection.
    Seq(Box<Shape>),
    /// A tuple; `None` for components not derived from a field.
    Tuple(Vec<Option<Shape>>),
    /// Derived, of unknown type: only its roots are known.
    Opaque(Roots),
}

impl Shape {
    fn roots(&self) -> Roots {
        let mut out = Roots::new();
        self.collect_roots(&mut out);
        out
    }

    fn collect_roots(&self, out: &mut Roots) {
        match self {
            Shape::Module(roots) | Shape::Opaque(roots) => merge(out, roots.clone()),
            Shape::Seq(item) => item.collect_roots(out),
            Shape::Tuple(parts) => parts.iter().flatten().for_each(|p| p.collect_roots(out)),
        }
    }

    /// The values a `for` loop, `Some(..)` pattern or adaptor yields.
    fn item(&self) -> Shape {
        match self {
            Shape::Seq(item) => (**item).clone(),
            // A container field (`Vec`, array, `Option`) or a slice: its
            // elements are modules, parts of the field.
            Shape::Module(roots) => Shape::Module(parts(roots)),
            other => Shape::Opaque(parts(&other.roots())),
        }
    }

    /// This shape where a value may be one of two: `if c { &self.a } else { &self.b }`.
    fn union(self, other: Shape) -> Shape {
        match (self, other) {
            (Shape::Module(mut a), Shape::Module(b)) => {
                merge(&mut a, b);
                Shape::Module(a)
            }
            (Shape::Seq(a), Shape::Seq(b)) => Shape::Seq(Box::new(a.union(*b))),
            (Shape::Tuple(a), Shape::Tuple(b)) if a.len() == b.len() => {
                Shape::Tuple(a.into_iter().zip(b).map(|(a, b)| union(a, b)).collect())
            }
            (a, b) => {
                let mut roots = a.roots();
                merge(&mut roots, b.roots());
                Shape::Opaque(roots)
            }
        }
    }
}

fn union(a: Option<Shape>, b: Option<Shape>) -> Option<Shape> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.union(b)),
        (a, b) => a.or(b),
    }
}

fn merge(into: &mut Roots, from: Roots) {
    for (field, whole) in from {
        let entry = into.entry(field).or_insert(whole);
        *entry &= whole;
    }
}

/// The same fields, as parts (elements) rather than wholes.
fn parts(roots: &Roots) -> Roots {
    roots.keys().map(|&field| (field, false)).collect()
}

/// Methods that read a value's length or presence, not its parameters.
const NON_USE: &[&str] = &[
    "len",
    "is_empty",
    "is_some",
    "is_none",
    "num_params",
    "count",
];
/// Methods that return part of a container field, or the same values.
const TAKE_PART: &[&str] = &[
    "iter",
    "into_iter",
    "get",
    "first",
    "last",
    "as_ref",
    "as_deref",
    "as_slice",
    "unwrap",
    "expect",
];
/// Iterator and `Option` adaptors that yield (some of) the same values.
const SAME_ITEMS: &[&str] = &[
    "iter",
    "into_iter",
    "by_ref",
    "rev",
    "skip",
    "take",
    "step_by",
    "peekable",
    "fuse",
    "cycle",
    "copied",
    "cloned",
    "as_ref",
    "as_deref",
    "as_slice",
    "collect",
    "to_vec",
    "filter",
    "skip_while",
    "take_while",
    "inspect",
    "or",
    "or_else",
    "xor",
];
/// Adaptors returning one of the values (as an `Option`).
const ONE_ITEM: &[&str] = &[
    "next",
    "next_back",
    "nth",
    "nth_back",
    "last",
    "first",
    "get",
    "peek",
    "find",
    "max_by_key",
    "min_by_key",
    "max_by",
    "min_by",
];
/// Adaptors that unwrap an `Option`.
const UNWRAP: &[&str] = &["unwrap", "expect", "unwrap_unchecked"];
/// Adaptors whose closure's result becomes the values.
const MAP: &[&str] = &["map"];
/// Adaptors whose closure returns an `Option` or iterator of the values.
const FLAT_MAP: &[&str] = &[
    "filter_map",
    "flat_map",
    "and_then",
    "map_while",
    "find_map",
];
/// Consumers that only drive the closures they are given.
const DRIVE: &[&str] = &[
    "for_each",
    "fold",
    "try_fold",
    "try_for_each",
    "any",
    "all",
    "position",
    "rposition",
    "is_some_and",
    "is_none_or",
];
/// Adaptors returning sub-slices.
const CHUNKS: &[&str] = &[
    "chunks",
    "chunks_exact",
    "rchunks",
    "windows",
    "split",
    "splitn",
];
/// Lazy adaptors: a closure given to one of them runs when the result is
/// iterated, possibly after `forward` returned.
const LAZY: &[&str] = &[
    "map",
    "filter",
    "filter_map",
    "flat_map",
    "map_while",
    "take_while",
    "skip_while",
    "inspect",
    "scan",
    "zip",
    "chain",
    "enumerate",
    "peekable",
    "rev",
    "skip",
    "take",
    "step_by",
    "cycle",
    "fuse",
    "iter",
    "into_iter",
];

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
        if is_forward && let Some(token) = &method.sig.asyncness {
            cx.error_spanned_by(
                token,
                "`forward` is `async`: its body runs after the usage scope of the \
                 forward pass closed, so the parameters it uses cannot be recorded\n\
                 help: make `forward` a plain `fn` and await outside it",
            );
        }
        let mut tracker = Tracker {
            cx,
            fields,
            sites: &mut sites,
            scopes: vec![Vec::new()],
            method: method.sig.ident.to_string(),
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

struct Tracker<'a> {
    cx: &'a Ctxt,
    fields: &'a FieldTable,
    sites: &'a mut Vec<Site>,
    /// Bindings in scope, innermost last: `None` for a binding that holds
    /// no derived value (and shadows one that did).
    scopes: Vec<Vec<(String, Option<Shape>)>>,
    method: String,
    is_forward: bool,
    /// Depth of closures around the current point: a `return` in one
    /// leaves the closure, not the method.
    closures: usize,
    /// An error that hides uses was reported.
    opaque: bool,
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

/// A binding's name as the compiler sees it: `r#h` is `h`.
fn unraw(name: &str) -> &str {
    name.strip_prefix("r#").unwrap_or(name)
}

/// The single identifier a path expression names.
fn local_name(expr: &Expr) -> Option<String> {
    match unparen(expr) {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(|i| i.to_string()),
        _ => None,
    }
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

impl Tracker<'_> {
    fn lookup(&self, name: &str) -> Option<Shape> {
        let name = unraw(name);
        self.scopes
            .iter()
            .rev()
            .flat_map(|scope| scope.iter().rev())
            .find(|(n, _)| n == name)
            .and_then(|(_, shape)| shape.clone())
    }

    fn bind_name(&mut self, name: String, shape: Option<Shape>) {
        let shape = shape.filter(|s| !s.roots().is_empty());
        if let Some(scope) = self.scopes.last_mut() {
            scope.push((unraw(&name).to_owned(), shape));
        }
    }

    /// `name = value`: the binding, in whichever scope holds it, may now
    /// hold either value.
    fn rebind(&mut self, name: &str, shape: Shape) {
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

    fn scoped<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        self.scopes.push(Vec::new());
        let out = f(self);
        self.scopes.pop();
        out
    }

    /// Records a consumption of `expr` (of shape `shape`) and marks it.
    fn site(&mut self, expr: &mut Expr, shape: Shape, kind: Kind) {
        self.site_in(expr, shape, kind, false);
    }

    /// As [`Self::site`]; `place_context` when `expr` is used as a place
    /// (the base of a projection), so recording must not move it.
    fn site_in(&mut self, expr: &mut Expr, shape: Shape, kind: Kind, place_context: bool) {
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

    /// Binds the names of `pat` to the parts of a value of shape `shape`.
    fn bind(&mut self, pat: &Pat, shape: Option<Shape>) {
        match pat {
            Pat::Ident(p) => {
                let name = p.ident.to_string();
                // `None`, constants and unit variants are paths, not bindings.
                if !name.starts_with(|c: char| c.is_uppercase()) {
                    self.bind_name(name, shape.clone());
                }
                if let Some((_, sub)) = &p.subpat {
                    self.bind(sub, shape);
                }
            }
            Pat::Tuple(t) => {
                let has_rest = t.elems.iter().any(|p| matches!(p, Pat::Rest(_)));
                match shape {
                    Some(Shape::Tuple(parts)) if !has_rest && parts.len() == t.elems.len() => {
                        for (p, part) in t.elems.iter().zip(parts) {
                            self.bind(p, part);
                        }
                    }
                    other => {
                        let opaque = other.map(|s| Shape::Opaque(s.roots()));
                        t.elems.iter().for_each(|p| self.bind(p, opaque.clone()));
                    }
                }
            }
            Pat::TupleStruct(ts) => {
                let is_some = ts.qself.is_none() && ts.path.is_ident("Some") && ts.elems.len() == 1;
                let inner = match &shape {
                    Some(s) if is_some => Some(s.item()),
                    other => other.as_ref().map(|s| Shape::Opaque(s.roots())),
                };
                ts.elems.iter().for_each(|p| self.bind(p, inner.clone()));
            }
            Pat::Reference(r) => self.bind(&r.pat, shape),
            Pat::Paren(p) => self.bind(&p.pat, shape),
            Pat::Type(t) => self.bind(&t.pat, shape),
            Pat::Or(or) => or.cases.iter().for_each(|p| self.bind(p, shape.clone())),
            Pat::Slice(s) => {
                let item = shape.as_ref().map(Shape::item);
                for p in &s.elems {
                    match p {
                        // `rest @ ..` is a slice of the same values.
                        Pat::Ident(id)
                            if matches!(id.subpat.as_ref().map(|s| &*s.1), Some(Pat::Rest(_))) =>
                        {
                            self.bind_name(id.ident.to_string(), shape.clone());
                        }
                        p => self.bind(p, item.clone()),
                    }
                }
            }
            Pat::Struct(s) => {
                let opaque = shape.map(|s| Shape::Opaque(s.roots()));
                s.fields
                    .iter()
                    .for_each(|f| self.bind(&f.pat, opaque.clone()));
            }
            _ => {}
        }
    }

    fn body(&mut self, block: &mut syn::Block) {
        let tail = self.block(block);
        if let Some((tail_expr, shape)) = tail {
            self.returned(tail_expr, shape);
        }
    }

    /// A value leaving the method (tail or `return`).
    fn returned(&mut self, expr: &mut Expr, shape: Option<Shape>) {
        if self.closures == 0 {
            self.check_escape(expr, shape.as_ref());
        }
        if let Some(shape) = shape {
            // A helper handing back `&self.experts[i]`: its caller's uses
            // are not followed, so the value counts as used here.
            self.site(expr, shape, Kind::Other);
        }
    }

    /// Walks a block in its own scope; returns its tail expression and the
    /// tail's shape, unconsumed.
    fn block<'b>(&mut self, block: &'b mut syn::Block) -> Option<(&'b mut Expr, Option<Shape>)> {
        self.scopes.push(Vec::new());
        let count = block.stmts.len();
        let mut stmts = std::mem::take(&mut block.stmts);
        let mut out = Vec::with_capacity(count);
        let mut tail_is_opaque = false;
        for (i, mut stmt) in stmts.drain(..).enumerate() {
            let is_last = i + 1 == count;
            if let Some(stated) = self.stated_uses(&mut stmt) {
                out.push(stated);
                out.push(stmt);
                tail_is_opaque = is_last;
                continue;
            }
            if let Stmt::Macro(m) = &stmt {
                // `println!("{:?}", expert)`: the expansion is not seen, so
                // the derived bindings it names are used there.
                let roots = self.macro_roots(&m.mac);
                if !roots.is_empty() {
                    let text = format!("{}!", render_tokens(&m.mac.path));
                    out.push(self.stated_stmt(Site {
                        roots,
                        kind: Kind::Other,
                        form: Form::Roots,
                        text,
                        every_root: true,
                    }));
                }
            }
            let is_tail = is_last && matches!(stmt, Stmt::Expr(_, None));
            if !is_tail {
                self.stmt(&mut stmt);
            }
            out.push(stmt);
        }
        block.stmts = out;
        let result = match block.stmts.last_mut() {
            Some(Stmt::Expr(tail, None)) if !tail_is_opaque => {
                // The shape is computed before the scope ends: the tail may
                // name bindings of this block.
                let shape = self.value(tail);
                Some((tail, shape))
            }
            _ => None,
        };
        self.scopes.pop();
        result
    }

    /// `#[ddp(uses(a, b))] stmt;`: the user states the uses; nothing inside
    /// is looked at. Returns the `__maskddp_stated!(N);` statement to put
    /// before it, and marks the statement opaque.
    fn stated_uses(&mut self, stmt: &mut Stmt) -> Option<Stmt> {
        let attrs = attr::stmt_attrs(stmt);
        if !attrs.iter().any(attr::is_ddp) {
            return None;
        }
        let roots: Roots = match attr::stmt_uses(attrs) {
            Ok(members) => {
                let mut roots = Roots::new();
                for member in members.unwrap_or_default() {
                    let name = crate::model::member_name(&member);
                    match self.fields.param(&member) {
                        Some(field) => {
                            roots.insert(field, true);
                        }
                        None if self.fields.others.contains(&name) => self.cx.error_spanned_by(
                            &member,
                            format!(
                                "field `{name}` holds no parameters; remove it from `uses(...)`"
                            ),
                        ),
                        None => self.cx.error_spanned_by(
                            &member,
                            format!(
                                "`{}` has no field `{name}`; `uses(...)` lists parameter fields \
                                 of the model struct",
                                self.fields.struct_name
                            ),
                        ),
                    }
                }
                roots
            }
            Err(err) => {
                self.opaque = true;
                self.cx.syn_error(err);
                // Every field counts as used: no "never used" errors pile on.
                (0..self.fields.params.len()).map(|f| (f, true)).collect()
            }
        };
        if let Some(attrs) = attr::stmt_attrs_mut(stmt) {
            attr::strip_ddp(attrs);
            attrs.push(syn::parse_quote!(#[__maskddp_opaque]));
        }
        // Bindings the statement introduces hold nothing we follow.
        if let Stmt::Local(local) = stmt {
            self.bind(&local.pat, None);
        }
        Some(self.stated_stmt(Site {
            roots,
            kind: Kind::Other,
            form: Form::Roots,
            text: "#[ddp(uses(..))]".to_owned(),
            every_root: true,
        }))
    }

    /// `__maskddp_stated!(N);`: a statement standing for site `N`.
    fn stated_stmt(&mut self, site: Site) -> Stmt {
        let n = self.sites.len();
        self.sites.push(site);
        let name = syn::Ident::new(STATED_MACRO, Span::call_site());
        syn::parse_quote!(#name!(#n);)
    }

    fn stmt(&mut self, stmt: &mut Stmt) {
        match stmt {
            Stmt::Local(local) => {
                let shape = match &mut local.init {
                    Some(init) => {
                        let shape = self.value(&mut init.expr);
                        if let Some((_, diverge)) = &mut init.diverge {
                            self.expr(diverge);
                        }
                        shape
                    }
                    None => None,
                };
                self.bind(&local.pat, shape);
            }
            Stmt::Expr(expr, _) => self.expr(expr),
            // Macro statements are handled by `block` (they cannot be marked).
            Stmt::Macro(_) | Stmt::Item(_) => {}
        }
    }

    /// `expr` in a context that consumes its value.
    fn expr(&mut self, expr: &mut Expr) {
        if let Some(shape) = self.value(expr) {
            self.site(expr, shape, Kind::Other);
        }
    }

    /// Walks `expr` and returns the shape of its value when the value is
    /// derived from a parameter field; the value itself is not consumed
    /// (the caller decides), everything inside it that is, is marked.
    fn value(&mut self, expr: &mut Expr) -> Option<Shape> {
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

    /// A block whose value is not used (loop bodies).
    fn block_stmts(&mut self, block: &mut syn::Block) {
        if let Some((tail, Some(shape))) = self.block(block) {
            self.site(tail, shape, Kind::Other);
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

    /// A closure: parameters bind to `params` (the values an adaptor hands
    /// it), then the body. Returns the shape of the value it returns, not
    /// consumed: the caller tracks it (`map`) or consumes it.
    fn closure(&mut self, c: &mut syn::ExprClosure, params: &[Option<Shape>]) -> Option<Shape> {
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
    fn closure_consumed(&mut self, c: &mut syn::ExprClosure, params: &[Option<Shape>]) {
        if let Some(shape) = self.closure(c, params) {
            self.site(&mut c.body, shape, Kind::Other);
        }
    }

    /// An argument of an adaptor: a closure literal's parameters get
    /// `params`, and its result is returned (`track`) or consumed; any
    /// other argument is consumed.
    fn closure_arg(
        &mut self,
        arg: &mut Expr,
        params: &[Option<Shape>],
        track: bool,
    ) -> Option<Shape> {
        match arg {
            Expr::Closure(c) if track => self.closure(c, params),
            Expr::Closure(c) => {
                self.closure_consumed(c, params);
                None
            }
            other => {
                self.expr(other);
                None
            }
        }
    }

    /// A method call: a call on `self` (another method; the flow analysis
    /// follows it), an adaptor over a derived value (tracked), a read of
    /// its length (nothing), or a consumption.
    fn method_call(&mut self, expr: &mut Expr) -> Option<Shape> {
        let Expr::MethodCall(call) = expr else {
            return None;
        };
        let method = call.method.to_string();
        self.check_threads(&method, &call.args);
        if is_self(&call.receiver) {
            call.args.iter_mut().for_each(|a| self.expr(a));
            return None;
        }
        let Some(receiver) = self.value(&mut call.receiver) else {
            // Not derived; a `map` closure may still return derived values.
            return self.adaptor(call, None, &method).flatten();
        };
        if NON_USE.contains(&method.as_str()) {
            call.args.iter_mut().for_each(|a| self.expr(a));
            return None;
        }
        if let Some(result) = self.adaptor(call, Some(&receiver), &method) {
            return result;
        }
        // A consumption: `expert.forward(x)`.
        call.args.iter_mut().for_each(|a| self.expr(a));
        self.site(expr, receiver, Kind::Call(method));
        None
    }

    /// Method `m` as an adaptor of a value of shape `receiver` (`None`: not
    /// derived): `Some(result shape)` with the arguments walked, or `None`
    /// when `m` is not an adaptor of such a value (arguments untouched).
    fn adaptor(
        &mut self,
        call: &mut syn::ExprMethodCall,
        receiver: Option<&Shape>,
        m: &str,
    ) -> Option<Option<Shape>> {
        let args = &mut call.args;
        if m == "then_some" && args.len() == 1 {
            // `(k == i).then_some(expert)`: an `Option` of the value.
            let inner = self.value(&mut args[0]);
            return Some(inner.map(|s| Shape::Seq(Box::new(s))));
        }
        if m == "then" && args.len() == 1 {
            let inner = self.closure_arg(&mut args[0], &[], true);
            return Some(inner.map(|s| Shape::Seq(Box::new(s))));
        }
        // `map` and its kin over an iterator or `Option`, derived or not:
        // the closure's result becomes the values.
        let mapped = (MAP.contains(&m) || FLAT_MAP.contains(&m)) && args.len() == 1;
        if mapped && !matches!(receiver, Some(Shape::Module(_))) {
            let item = receiver.map(Shape::item);
            let out = self.closure_arg(&mut args[0], &[item], true);
            let flat = FLAT_MAP.contains(&m);
            return Some(out.map(|s| Shape::Seq(Box::new(if flat { s.item() } else { s }))));
        }
        let Some(receiver) = receiver else {
            args.iter_mut().for_each(|a| self.expr(a));
            return Some(None);
        };
        if let Shape::Module(roots) = receiver {
            let part = Shape::Module(parts(roots));
            return match m {
                "clone" if args.is_empty() => Some(Some(receiver.clone())),
                _ if UNWRAP.contains(&m) => {
                    args.iter_mut().for_each(|a| self.expr(a));
                    Some(Some(part))
                }
                _ if TAKE_PART.contains(&m) || CHUNKS.contains(&m) => {
                    args.iter_mut().for_each(|a| self.expr(a));
                    Some(Some(Shape::Seq(Box::new(part))))
                }
                // Two slices, or an element and the slice of the rest.
                "split_at" => {
                    args.iter_mut().for_each(|a| self.expr(a));
                    Some(Some(Shape::Tuple(vec![Some(part.clone()), Some(part)])))
                }
                "split_first" | "split_last" => {
                    let pair = Shape::Tuple(vec![Some(part.clone()), Some(part)]);
                    Some(Some(Shape::Seq(Box::new(pair))))
                }
                _ => None,
            };
        }
        let Shape::Seq(item) = receiver else {
            return None;
        };
        let item = (**item).clone();
        match (m, args.len()) {
            ("fold" | "try_fold", 2) => {
                self.expr(&mut args[0]);
                self.closure_arg(&mut args[1], &[None, Some(item)], false);
                Some(None)
            }
            _ if DRIVE.contains(&m) => {
                for arg in args.iter_mut() {
                    self.closure_arg(arg, &[Some(item.clone())], false);
                }
                Some(None)
            }
            _ if SAME_ITEMS.contains(&m) => {
                let mut out = receiver.clone();
                for arg in args.iter_mut() {
                    if matches!(arg, Expr::Closure(_)) {
                        // `filter(|e| ..)` sees (a reference to) the item.
                        self.closure_arg(arg, &[Some(item.clone())], false);
                    } else if let Some(other) = self.value(arg) {
                        // `a.or(b)`: either value may come out.
                        out = out.union(other);
                    }
                }
                Some(Some(out))
            }
            _ if ONE_ITEM.contains(&m) => {
                for arg in args.iter_mut() {
                    let params = [Some(item.clone()), Some(item.clone())];
                    self.closure_arg(arg, &params, false);
                }
                Some(Some(Shape::Seq(Box::new(item))))
            }
            _ if UNWRAP.contains(&m) => {
                args.iter_mut().for_each(|a| self.expr(a));
                Some(Some(item))
            }
            ("unwrap_or", 1) => {
                let other = self.value(&mut args[0]);
                Some(union(Some(item), other))
            }
            ("enumerate", 0) => Some(Some(Shape::Seq(Box::new(Shape::Tuple(vec![
                None,
                Some(item),
            ]))))),
            ("zip", 1) => {
                let other = self.value(&mut args[0]).map(|s| s.item());
                Some(Some(Shape::Seq(Box::new(Shape::Tuple(vec![
                    Some(item),
                    other,
                ])))))
            }
            ("chain", 1) => {
                let other = self.value(&mut args[0]).map(|s| s.item());
                Some(union(
                    Some(receiver.clone()),
                    other.map(|o| Shape::Seq(Box::new(o))),
                ))
            }
            _ if CHUNKS.contains(&m) => {
                args.iter_mut().for_each(|a| self.expr(a));
                Some(Some(Shape::Seq(Box::new(receiver.clone()))))
            }
            ("split_at", 1) => {
                self.expr(&mut args[0]);
                Some(Some(Shape::Tuple(vec![
                    Some(receiver.clone()),
                    Some(receiver.clone()),
                ])))
            }
            _ => None,
        }
    }

    /// Closures handed to another thread run outside this thread's usage
    /// scope: their uses would not be recorded.
    fn check_threads(&self, name: &str, args: &syn::punctuated::Punctuated<Expr, syn::Token![,]>) {
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

    /// The roots of the derived bindings a macro's tokens mention: the
    /// macro's expansion is not seen, so it uses them all.
    fn macro_roots(&self, mac: &syn::Macro) -> Roots {
        let mut roots = Roots::new();
        self.collect_mentioned(mac.tokens.clone(), &mut roots);
        roots
    }

    fn collect_mentioned(&self, tokens: TokenStream, roots: &mut Roots) {
        for tt in tokens {
            match tt {
                TokenTree::Ident(i) => {
                    if let Some(shape) = self.lookup(&i.to_string()) {
                        merge(roots, parts(&shape.roots()));
                    }
                }
                TokenTree::Group(g) => self.collect_mentioned(g.stream(), roots),
                _ => {}
            }
        }
    }

    /// A method returning something that uses parameters after it
    /// returned. Any method: a closure or async block capturing `self` (its
    /// caller may keep it past the forward pass). `forward` also: a value
    /// derived from a field, or a lazy adaptor holding such a closure.
    fn check_escape(&mut self, expr: &Expr, shape: Option<&Shape>) {
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
