//! Rewrites method bodies so each evaluated use of a parameter field records
//! the parameters it may touch into the active usage scope.
//!
//! Input:  `self.experts[i].forward(x)`
//! Output: `(*{ use …; (&&Field::<Backend, _>::new(&self.experts[i])).__maskddp_touch_call("forward") }).forward(x)`
//!
//! The rewritten expression is the same place (a deref of a shared borrow
//! the touch method hands back), so auto-ref, method calls and `&` keep
//! working. What a use records is decided at compile time by the autoref
//! dispatch in `maskddp::__private` (nested `#[ddp_model]` or plain module),
//! from the kind of use and the field's classification:
//!
//! - a *call* `self.f.m(..)` / `self.f[i].m(..)`: a nested model whose
//!   instrumented methods include `m` records its own conditional parameters,
//!   so the parent adds only its always-used ones (none if `f` is always
//!   used); any other method of a nested model records all its parameters;
//!   a plain module records all its parameters if `f` is conditional;
//! - any *other* use (`&self.f`, an argument, a projection `self.f.g`, an
//!   element of an iteration): a nested model records all its parameters (its
//!   own instrumentation may never run); a plain module all its parameters
//!   if `f` is conditional.
//!
//! A binding of `match &self.f { Some(b) => …, None => … }` or
//! `if let Some(b) = &self.f { … }` (patterns of `_`, `None`, a name and
//! `Some(..)` only) whose every use in its arm is the receiver of a method
//! call aliases the field exactly: the scrutinee records nothing and each
//! `b.m(..)` records as a call. Any other use of a binding (an argument, a
//! projection, a rebinding, a macro) makes the scrutinee an other use.
//!
//! Plain modules used on every path record nothing (an inlined empty call).
//! Three element-wise forms record only the elements used: `self.f.get(i)`,
//! `self.f[a..b]` and, for conditional fields, `self.f.iter()` (an always
//! used field's `iter()` is a call: its type stays `slice::Iter`).
//! Frozen fields are left alone.

use std::collections::BTreeSet;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::visit_mut::VisitMut;
use syn::{Expr, ImplItem, ItemImpl, Member, parse_quote};

use crate::analysis::{FieldTable, is_self, takes_ref_self};
use crate::attr;
use crate::ctxt::Ctxt;

/// Methods on a field that read its shape, not its parameters.
const NON_USE: &[&str] = &["len", "is_empty", "is_some", "is_none", "num_params"];

/// The impl block with `#[ddp(...)]` statement attributes stripped and, for
/// methods taking `&self`, uses of the `used` fields (always or
/// `conditional`) instrumented.
pub(crate) fn instrument_impl(
    cx: &Ctxt,
    fields: &FieldTable,
    conditional: &BTreeSet<usize>,
    used: &BTreeSet<usize>,
    imp: &ItemImpl,
) -> ItemImpl {
    let mut imp = imp.clone();
    for item in &mut imp.items {
        if let ImplItem::Fn(f) = item {
            let self_span = match f.sig.inputs.first() {
                Some(syn::FnArg::Receiver(r)) => r.self_token.span,
                _ => Span::call_site(),
            };
            let mut rewriter = Rewriter {
                cx,
                fields,
                conditional,
                used,
                enabled: takes_ref_self(f),
                self_span,
                aliases: Vec::new(),
            };
            rewriter.visit_block_mut(&mut f.block);
        }
    }
    imp
}

/// The impl block with statement attributes stripped, nothing else changed:
/// what is emitted when the macro reports errors.
pub(crate) fn strip_impl(imp: &ItemImpl) -> ItemImpl {
    let cx = Ctxt::new();
    let fields = FieldTable {
        params: Vec::new(),
        others: Default::default(),
        struct_name: String::new(),
    };
    let out = instrument_impl(&cx, &fields, &BTreeSet::new(), &BTreeSet::new(), imp);
    // Attribute errors are reported by the main pass.
    let _ = cx.check();
    out
}

/// How `forward` uses a field, as far as recording goes.
#[derive(Clone, Copy, PartialEq)]
enum Class {
    Always,
    Conditional,
}

/// The kind of use: the receiver of a call to the named method, or anything
/// else.
enum Use {
    Call(syn::LitStr),
    Other,
}

struct Rewriter<'a> {
    cx: &'a Ctxt,
    fields: &'a FieldTable,
    conditional: &'a BTreeSet<usize>,
    /// The fields `forward` uses (always or conditionally; not the frozen).
    used: &'a BTreeSet<usize>,
    /// False for methods without a `&self` receiver: nothing to record.
    enabled: bool,
    /// The span of the method's own `self`, so generated `self` resolves to it.
    self_span: Span,
    /// Bindings in scope that alias a field (see [`Rewriter::alias_source`]).
    aliases: Vec<(syn::Ident, Class)>,
}

/// `expr` without enclosing parentheses or invisible groups.
fn unparen(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unparen(&p.expr),
        Expr::Group(g) => unparen(&g.expr),
        other => other,
    }
}

fn unparen_mut(expr: &mut Expr) -> &mut Expr {
    match expr {
        Expr::Paren(p) => unparen_mut(&mut p.expr),
        Expr::Group(g) => unparen_mut(&mut g.expr),
        other => other,
    }
}

fn is_range(expr: &Expr) -> bool {
    matches!(unparen(expr), Expr::Range(_))
}

impl Rewriter<'_> {
    /// The classification of field `member`, if uses of it are recorded.
    fn class(&self, member: &Member) -> Option<Class> {
        let field = self.fields.param(member).filter(|_| self.enabled)?;
        if self.conditional.contains(&field) {
            Some(Class::Conditional)
        } else if self.used.contains(&field) {
            Some(Class::Always)
        } else {
            None
        }
    }

    /// `self.f` (in parentheses or not), with `f` recorded.
    fn field_class(&self, expr: &Expr) -> Option<Class> {
        match unparen(expr) {
            Expr::Field(f) if is_self(&f.base) => self.class(&f.member),
            _ => None,
        }
    }

    /// `self.f[i]`, not a range, with `f` recorded.
    fn element_class(&self, expr: &Expr) -> Option<Class> {
        match unparen(expr) {
            Expr::Index(index) if !is_range(&index.index) => self.field_class(&index.expr),
            _ => None,
        }
    }

    /// The scrutinee of a `match` or `if let` whose bindings may alias a
    /// field: `&self.f` or `self.f`. In
    /// `match &self.f { Some(b) => b.forward(x), None => x }`, as long as
    /// every use of `b` is the receiver of a method call, each such call
    /// records like a call on the field itself (a nested model's instrumented
    /// method keeps its split) and the scrutinee records nothing.
    fn alias_source(&self, scrutinee: &Expr) -> Option<Class> {
        match unparen(scrutinee) {
            Expr::Reference(r) if r.mutability.is_none() => self.field_class(&r.expr),
            other => self.field_class(other),
        }
    }

    /// `b`, a binding that aliases a field.
    fn alias_class(&self, expr: &Expr) -> Option<Class> {
        let Expr::Path(path) = unparen(expr) else {
            return None;
        };
        let ident = path.path.get_ident().filter(|_| path.qself.is_none())?;
        self.aliases
            .iter()
            .rev()
            .find(|(alias, _)| alias == ident)
            .map(|(_, class)| *class)
    }

    /// Visits `exprs` with `names` aliasing a field of class `class`.
    fn with_aliases(&mut self, names: Vec<syn::Ident>, class: Class, exprs: Vec<&mut Expr>) {
        let depth = self.aliases.len();
        self.aliases
            .extend(names.into_iter().map(|name| (name, class)));
        for expr in exprs {
            self.visit_expr_mut(expr);
        }
        self.aliases.truncate(depth);
    }

    /// `match &self.f { … }` whose every arm only calls methods on its
    /// bindings; `false` (nothing done) otherwise.
    fn alias_match(&mut self, m: &mut syn::ExprMatch) -> bool {
        let Some(class) = self.alias_source(&m.expr) else {
            return false;
        };
        let mut arms = Vec::new();
        for arm in &m.arms {
            let mut scope: Vec<&Expr> = arm.guard.iter().map(|(_, g)| &**g).collect();
            scope.push(&arm.body);
            match alias_bindings(&arm.pat, &scope) {
                Some(names) => arms.push(names),
                None => return false,
            }
        }
        for (arm, names) in m.arms.iter_mut().zip(arms) {
            let mut scope: Vec<&mut Expr> = arm.guard.iter_mut().map(|(_, g)| &mut **g).collect();
            scope.push(&mut arm.body);
            self.with_aliases(names, class, scope);
        }
        true
    }

    /// `if let PAT = &self.f { … } else { … }`, as [`Rewriter::alias_match`].
    fn alias_if_let(&mut self, expr_if: &mut syn::ExprIf) -> bool {
        let Expr::Let(let_) = &*expr_if.cond else {
            return false;
        };
        let Some(class) = self.alias_source(&let_.expr) else {
            return false;
        };
        let then = Expr::Block(syn::ExprBlock {
            attrs: Vec::new(),
            label: None,
            block: expr_if.then_branch.clone(),
        });
        let Some(names) = alias_bindings(&let_.pat, &[&then]) else {
            return false;
        };
        let mut then = then;
        self.with_aliases(names, class, vec![&mut then]);
        if let Expr::Block(block) = then {
            expr_if.then_branch = block.block;
        }
        if let Some((_, other)) = &mut expr_if.else_branch {
            self.visit_expr_mut(other);
        }
        true
    }

    fn backend(&self) -> TokenStream {
        quote!(<Self as ::maskddp::__private::ModelBackend>::Backend)
    }

    /// Brings the touch methods into scope (a statement).
    fn imports(&self) -> TokenStream {
        quote!(
            use ::maskddp::__private::{TouchNested as _, TouchPlain as _};
        )
    }

    /// Records a use of `reference` (an expression of type `&M`); evaluates
    /// to `reference`.
    fn touch(&self, reference: TokenStream, use_: &Use, class: Class) -> TokenStream {
        let backend = self.backend();
        let call = match (use_, class) {
            (Use::Call(method), Class::Conditional) => quote!(__maskddp_touch_call(#method)),
            (Use::Call(method), Class::Always) => quote!(__maskddp_touch_call_always(#method)),
            (Use::Other, Class::Conditional) => quote!(__maskddp_touch()),
            (Use::Other, Class::Always) => quote!(__maskddp_touch_always()),
        };
        quote!((&&::maskddp::__private::Field::<#backend, _>::new(#reference)).#call)
    }

    /// The place `place` (a module), its use recorded.
    fn wrap(&self, place: &Expr, use_: &Use, class: Class) -> Expr {
        let imports = self.imports();
        let touch = self.touch(quote!(&#place), use_, class);
        parse_quote!((*{ #imports #touch }))
    }

    /// `self.experts[a..b]`: a slice, each of its elements recorded.
    fn wrap_slice(&self, place: &Expr, class: Class) -> Expr {
        let tmp = syn::Ident::new("__maskddp_slice", Span::mixed_site());
        let elem = syn::Ident::new("__maskddp_elem", Span::mixed_site());
        let imports = self.imports();
        let touch = self.touch(quote!(#elem), &Use::Other, class);
        parse_quote!((*{
            #imports
            let #tmp = &#place;
            for #elem in #tmp {
                #touch;
            }
            #tmp
        }))
    }

    /// `self.experts.get(i)`: record element `i` only, when it exists.
    fn wrap_get(&self, call: &syn::ExprMethodCall, class: Class) -> Expr {
        let tmp = syn::Ident::new("__maskddp_get", Span::mixed_site());
        let elem = syn::Ident::new("__maskddp_elem", Span::mixed_site());
        let imports = self.imports();
        let touch = self.touch(quote!(#elem), &Use::Other, class);
        parse_quote!({
            let #tmp = #call;
            if let ::core::option::Option::Some(#elem) = #tmp {
                #imports
                #touch;
            }
            #tmp
        })
    }

    /// `self.experts.iter()` of a conditional field: record each element as
    /// the iterator yields it, so `.take(k)` or an early `break` records only
    /// what was visited.
    fn wrap_iter(&self, call: &syn::ExprMethodCall) -> Expr {
        let elem = syn::Ident::new("__maskddp_elem", Span::mixed_site());
        let imports = self.imports();
        let touch = self.touch(quote!(*#elem), &Use::Other, Class::Conditional);
        parse_quote!(#call.inspect(|#elem| {
            #imports
            #touch;
        }))
    }

    /// A method call: `self.f.m(..)` and `self.f[i].m(..)` are calls of `m`
    /// on a field's place. Returns the expression replacing the whole call,
    /// for the element-wise `get` and `iter`.
    fn method_call(&mut self, call: &mut syn::ExprMethodCall) -> Option<Expr> {
        for arg in &mut call.args {
            self.visit_expr_mut(arg);
        }
        let method = call.method.to_string();
        if let Some(class) = self.alias_class(&call.receiver) {
            // `b.m(..)`: the call keeps `b` (a reference) as its receiver.
            let use_ = Use::Call(syn::LitStr::new(&method, call.method.span()));
            let receiver = unparen_mut(&mut call.receiver);
            let imports = self.imports();
            let touch = self.touch(quote!(#receiver), &use_, class);
            *receiver = parse_quote!(({ #imports #touch }));
            return None;
        }
        let class = match (
            self.field_class(&call.receiver),
            self.element_class(&call.receiver),
        ) {
            (Some(class), _) => {
                if NON_USE.contains(&method.as_str()) {
                    return None;
                }
                if method == "get" && call.args.len() == 1 && !is_range(&call.args[0]) {
                    return Some(self.wrap_get(call, class));
                }
                if method == "iter" && call.args.is_empty() && class == Class::Conditional {
                    return Some(self.wrap_iter(call));
                }
                class
            }
            (None, Some(class)) => {
                if let Expr::Index(index) = unparen_mut(&mut call.receiver) {
                    self.visit_expr_mut(&mut index.index);
                }
                class
            }
            (None, None) => {
                self.visit_expr_mut(&mut call.receiver);
                return None;
            }
        };
        let use_ = Use::Call(syn::LitStr::new(&method, call.method.span()));
        let receiver = unparen_mut(&mut call.receiver);
        *receiver = self.wrap(receiver, &use_, class);
        None
    }

    /// The statement attribute `#[ddp(uses(...))]`: validated, and turned
    /// into records of the conditional fields it lists.
    fn stated_uses(&self, attrs: &[syn::Attribute]) -> Option<Vec<syn::Stmt>> {
        let members = match attr::stmt_uses(attrs) {
            Ok(Some(members)) => members,
            Ok(None) => return None,
            Err(err) => {
                self.cx.syn_error(err);
                return Some(Vec::new());
            }
        };
        let mut stmts = Vec::new();
        for member in members {
            let name = crate::model::member_name(&member);
            if self.fields.param(&member).is_none() {
                if self.fields.others.contains(&name) {
                    self.cx.error_spanned_by(
                        &member,
                        format!("field `{name}` holds no parameters; remove it from `uses(...)`"),
                    );
                } else if !self.fields.params.is_empty() || !self.fields.others.is_empty() {
                    self.cx.error_spanned_by(
                        &member,
                        format!(
                            "`{}` has no field `{name}`; `uses(...)` lists parameter fields of \
                             the model struct",
                            self.fields.struct_name
                        ),
                    );
                }
                continue;
            }
            if let Some(class) = self.class(&member) {
                let self_token = syn::Ident::new("self", self.self_span);
                let imports = self.imports();
                let touch = self.touch(quote!(&#self_token.#member), &Use::Other, class);
                stmts.push(parse_quote!({ #imports #touch; }));
            }
        }
        Some(stmts)
    }
}

impl VisitMut for Rewriter<'_> {
    fn visit_block_mut(&mut self, block: &mut syn::Block) {
        let mut stmts = Vec::with_capacity(block.stmts.len());
        for mut stmt in std::mem::take(&mut block.stmts) {
            let stated = self.stated_uses(attr::stmt_attrs(&stmt));
            match stated {
                Some(touches) => {
                    // The user vouches for this statement: record, do not look inside.
                    if let Some(attrs) = attr::stmt_attrs_mut(&mut stmt) {
                        attr::strip_ddp(attrs);
                    }
                    stmts.extend(touches);
                }
                None => self.visit_stmt_mut(&mut stmt),
            }
            stmts.push(stmt);
        }
        block.stmts = stmts;
    }

    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        match expr {
            Expr::MethodCall(call) => {
                if let Some(rewritten) = self.method_call(call) {
                    *expr = rewritten;
                }
            }
            Expr::Match(m) => {
                if !self.alias_match(m) {
                    syn::visit_mut::visit_expr_match_mut(self, m);
                }
            }
            Expr::If(expr_if) => {
                if !self.alias_if_let(expr_if) {
                    syn::visit_mut::visit_expr_if_mut(self, expr_if);
                }
            }
            Expr::Index(index) => match self.field_class(&index.expr) {
                Some(class) => {
                    self.visit_expr_mut(&mut index.index);
                    *expr = if is_range(&index.index) {
                        self.wrap_slice(expr, class)
                    } else {
                        self.wrap(expr, &Use::Other, class)
                    };
                }
                None => syn::visit_mut::visit_expr_mut(self, expr),
            },
            Expr::Field(_) => match self.field_class(expr) {
                Some(class) => *expr = self.wrap(expr, &Use::Other, class),
                // A projection `self.f.g` reaches `self.f` here, as another use.
                None => syn::visit_mut::visit_expr_mut(self, expr),
            },
            // Macro tokens are not rewritten: uses in them are reported by the
            // analysis unless a statement attribute states them.
            Expr::Macro(_) => {}
            _ => syn::visit_mut::visit_expr_mut(self, expr),
        }
    }

    // Nested items have no `self`.
    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
}

/// The names `pat` binds, when it can only bind the whole scrutinee or the
/// value in its `Some`: made of `_`, `None`, a name (`b`, `ref b`) and
/// `Some(..)` of those; and when every use of those names in `scope` is the
/// receiver of a method call. `None` otherwise (a binding could alias part of
/// the field, or escape).
fn alias_bindings(pat: &syn::Pat, scope: &[&Expr]) -> Option<Vec<syn::Ident>> {
    fn collect(pat: &syn::Pat, out: &mut Vec<syn::Ident>) -> bool {
        match pat {
            syn::Pat::Wild(_) | syn::Pat::Path(_) => true,
            syn::Pat::Ident(p) if p.ident == "None" && p.by_ref.is_none() => true,
            syn::Pat::Ident(p) => {
                out.push(p.ident.clone());
                p.subpat.is_none() && p.mutability.is_none()
            }
            syn::Pat::TupleStruct(ts) => {
                ts.qself.is_none()
                    && ts.path.is_ident("Some")
                    && ts.elems.len() == 1
                    && collect(&ts.elems[0], out)
            }
            syn::Pat::Or(or) => or.cases.iter().all(|case| collect(case, out)),
            syn::Pat::Paren(p) => collect(&p.pat, out),
            _ => false,
        }
    }
    let mut names = Vec::new();
    if !collect(pat, &mut names) {
        return None;
    }
    names.sort();
    names.dedup();
    let only_receivers = names.iter().all(|name| {
        let mut uses = ReceiverOnly { name, ok: true };
        for expr in scope {
            syn::visit::Visit::visit_expr(&mut uses, expr);
        }
        uses.ok
    });
    only_receivers.then_some(names)
}

/// Whether `name` is used only as the receiver of method calls, and never
/// bound again (nor mentioned in a macro's tokens).
struct ReceiverOnly<'n> {
    name: &'n syn::Ident,
    ok: bool,
}

impl<'ast> syn::visit::Visit<'ast> for ReceiverOnly<'_> {
    fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
        let receiver_is_name = matches!(unparen(&call.receiver), Expr::Path(p)
            if p.qself.is_none() && p.path.is_ident(self.name));
        if !receiver_is_name {
            self.visit_expr(&call.receiver);
        }
        for arg in &call.args {
            self.visit_expr(arg);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        // Any other mention: a use as a value, a shadowing pattern.
        if path.is_ident(self.name) {
            self.ok = false;
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_pat_ident(&mut self, pat: &'ast syn::PatIdent) {
        if pat.ident == *self.name {
            self.ok = false;
        }
        syn::visit::visit_pat_ident(self, pat);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        if mentions(mac.tokens.clone(), self.name) {
            self.ok = false;
        }
    }

    // Nested items cannot see the binding.
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

fn mentions(tokens: TokenStream, name: &syn::Ident) -> bool {
    tokens.into_iter().any(|tt| match tt {
        proc_macro2::TokenTree::Ident(i) => i == *name,
        proc_macro2::TokenTree::Group(g) => mentions(g.stream(), name),
        _ => false,
    })
}
