//! Rewrites the marked impl block so each consumption site records what it
//! uses into the active usage scope. Which expressions are sites, and how
//! each records, was decided by the value tracker (`analysis::sites`); this
//! module only turns marks into code.
//!
//! - A *place* site (`self.experts[i].forward(x)`, `expert.forward(x)`)
//!   records through a reference to the place:
//!   `(*{ use …; (&&&Field::<Backend, _>::new((&expert).__maskddp_module_ref())).__maskddp_touch_call("forward") }).forward(x)`.
//!   The result is the same place, so auto-ref and method lookup still work.
//! - A *value* site (`helper(&self.head)`, `it.next().unwrap().forward(x)`)
//!   moves the value into a block, records it and hands it back unchanged.
//! - A *roots* site (an iterator or `Option` consumed whole, a macro naming
//!   a derived binding, a `#[ddp(uses(..))]` statement) records its root
//!   fields in a statement before the statement holding it (or at the start
//!   of the closure body or match arm holding it), without touching the
//!   expression, so its type and place-ness stay exactly as written.
//!
//! What a touch records is decided at compile time by the autoref dispatch
//! in `maskddp::__private` (nested `#[ddp_model]`, plain module, or slice of
//! modules), from the kind of use and the class of the site's fields: a
//! site whose fields are all used on every path uses the `_always` touches
//! (plain modules then record nothing). Frozen fields are never recorded.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::visit_mut::VisitMut;
use syn::{Expr, ItemImpl, parse_quote};

use crate::analysis::sites::{self, Form, Kind, Site};
use crate::analysis::{FieldTable, FieldUsage};
use crate::attr;

/// The marked impl block with every mark turned into recording code and
/// every `#[ddp(...)]` and marker attribute removed.
pub(crate) fn instrument_impl(
    fields: &FieldTable,
    sites: &[Site],
    usage: &[FieldUsage],
    mut imp: ItemImpl,
) -> ItemImpl {
    let mut rewriter = Rewriter {
        fields,
        sites,
        usage,
        pending: Vec::new(),
        self_span: Span::call_site(),
    };
    rewriter.visit_item_impl_mut(&mut imp);
    imp
}

/// The impl block with statement attributes stripped, nothing else changed:
/// what is emitted when the macro reports errors.
pub(crate) fn strip_impl(imp: &ItemImpl) -> ItemImpl {
    let mut imp = imp.clone();
    Stripper.visit_item_impl_mut(&mut imp);
    imp
}

struct Stripper;

impl VisitMut for Stripper {
    fn visit_stmt_mut(&mut self, stmt: &mut syn::Stmt) {
        if let Some(attrs) = attr::stmt_attrs_mut(stmt) {
            attr::strip_ddp(attrs);
        }
        syn::visit_mut::visit_stmt_mut(self, stmt);
    }
}

struct Rewriter<'a> {
    fields: &'a FieldTable,
    sites: &'a [Site],
    usage: &'a [FieldUsage],
    /// Records of roots sites waiting for the statement (closure body,
    /// match arm) that holds them, innermost last.
    pending: Vec<Vec<TokenStream>>,
    /// The span of the current method's own `self`, so generated `self`
    /// resolves to it (the impl block may come through a `macro_rules!`).
    self_span: Span,
}

/// The class of a touch: all the site's fields are always used, or not.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Always,
    /// [`FieldUsage::AlwaysIfPlain`]: always for a plain module, conditional
    /// for a nested model.
    AlwaysIfPlain,
    Conditional,
}

fn unparen_mut(expr: &mut Expr) -> &mut Expr {
    // A marked parenthesis is an expression of its own.
    if matches!(expr, Expr::Paren(p) if !p.attrs.is_empty()) {
        return expr;
    }
    match expr {
        Expr::Paren(p) => unparen_mut(&mut p.expr),
        Expr::Group(g) => unparen_mut(&mut g.expr),
        other => other,
    }
}

fn remove_marks(attrs: &mut Vec<syn::Attribute>) -> Option<usize> {
    let site = sites::site_of(attrs);
    attrs.retain(|a| !a.path().is_ident(sites::SITE_ATTR));
    site
}

impl Rewriter<'_> {
    /// The class of the recorded fields among `site`'s roots; `None` when
    /// none is recorded (all frozen).
    fn class(&self, site: &Site) -> Option<Class> {
        // `Conditional` orders after `Always`: one conditional field makes
        // the touch conditional.
        site.roots.keys().filter_map(|&f| self.field_class(f)).max()
    }

    /// The class of a recorded field; `None` for a frozen one.
    fn field_class(&self, field: usize) -> Option<Class> {
        match self.usage.get(field) {
            Some(FieldUsage::Conditional(_)) => Some(Class::Conditional),
            Some(FieldUsage::Always) => Some(Class::Always),
            Some(FieldUsage::AlwaysIfPlain(_)) => Some(Class::AlwaysIfPlain),
            _ => None,
        }
    }

    fn backend(&self) -> TokenStream {
        quote!(<Self as ::maskddp::__private::ModelBackend>::Backend)
    }

    fn imports(&self) -> TokenStream {
        quote!(
            use ::maskddp::__private::{
                ModuleRef as _, TouchNested as _, TouchPlain as _, TouchSlice as _,
            };
        )
    }

    /// Records the module (or slice) `reference` points to, through any
    /// number of references; evaluates to `&M`.
    fn touch(&self, reference: TokenStream, kind: &Kind, class: Class) -> TokenStream {
        let backend = self.backend();
        let call = match (kind, class) {
            (Kind::Call(method), Class::Conditional) => quote!(__maskddp_touch_call(#method)),
            (Kind::Call(method), Class::Always) => quote!(__maskddp_touch_call_always(#method)),
            (Kind::Call(method), Class::AlwaysIfPlain) => {
                quote!(__maskddp_touch_call_always_if_plain(#method))
            }
            (Kind::Other, Class::Conditional) => quote!(__maskddp_touch()),
            (Kind::Other, Class::Always) => quote!(__maskddp_touch_always()),
            (Kind::Other, Class::AlwaysIfPlain) => quote!(__maskddp_touch_always_if_plain()),
        };
        quote!((&&&::maskddp::__private::Field::<#backend, _>::new(
            (#reference).__maskddp_module_ref()
        )).#call)
    }

    /// Records every recorded root field of `site`, as statements.
    fn touch_roots(&self, site: &Site) -> TokenStream {
        let self_token = syn::Ident::new("self", self.self_span);
        let touches = site.roots.keys().filter_map(|&field| {
            let class = self.field_class(field)?;
            let member = member(&self.fields.params[field]);
            let touch = self.touch(quote!(&#self_token.#member), &Kind::Other, class);
            Some(quote!(#touch;))
        });
        let imports = self.imports();
        quote!({ #imports #(#touches)* })
    }

    /// The place `place`, its use recorded; the same place.
    fn wrap_place(&self, place: &Expr, kind: &Kind, class: Class) -> Expr {
        let imports = self.imports();
        let touch = self.touch(quote!(&#place), kind, class);
        parse_quote!((*{ #imports #touch }))
    }

    /// The value of `value`, its use recorded; the same value.
    fn wrap_value(&self, value: &Expr, kind: &Kind, class: Class) -> Expr {
        let tmp = syn::Ident::new("__maskddp_value", Span::mixed_site());
        let imports = self.imports();
        let touch = self.touch(quote!(&#tmp), kind, class);
        parse_quote!({
            let #tmp = #value;
            {
                #imports
                let _ = #touch;
            }
            #tmp
        })
    }

    /// Rewrites `expr`, which carries the mark of site `n`.
    fn rewrite(&mut self, expr: &mut Expr, n: usize) {
        let Some(site) = self.sites.get(n) else {
            return;
        };
        let Some(class) = self.class(site) else {
            return;
        };
        match site.form {
            Form::Roots => {
                let touches = self.touch_roots(site);
                if let Some(pending) = self.pending.last_mut() {
                    pending.push(touches);
                }
            }
            Form::Place | Form::Value => {
                let target = match (&site.kind, &mut *expr) {
                    (Kind::Call(_), Expr::MethodCall(call)) => unparen_mut(&mut call.receiver),
                    (_, other) => other,
                };
                *target = if site.form == Form::Place {
                    self.wrap_place(target, &site.kind, class)
                } else {
                    self.wrap_value(target, &site.kind, class)
                };
            }
        }
    }

    /// Visits `expr` with a fresh list of pending records; returns them.
    fn collecting(&mut self, f: impl FnOnce(&mut Self)) -> Vec<TokenStream> {
        self.pending.push(Vec::new());
        f(self);
        self.pending.pop().unwrap_or_default()
    }
}

/// `head` or `0` as a member token; a field named by a keyword (`type`,
/// declared `r#type`) is written raw.
fn member(name: &str) -> syn::Member {
    match name.parse::<u32>() {
        Ok(index) => syn::Member::Unnamed(syn::Index {
            index,
            span: Span::call_site(),
        }),
        Err(_) => syn::Member::Named(
            syn::parse_str::<syn::Ident>(name)
                .unwrap_or_else(|_| syn::Ident::new_raw(name, Span::call_site())),
        ),
    }
}

/// `body` preceded by `touches`, as one block expression.
fn prefixed(touches: Vec<TokenStream>, body: &Expr) -> Expr {
    parse_quote!({ #(#touches)* #body })
}

impl VisitMut for Rewriter<'_> {
    fn visit_impl_item_fn_mut(&mut self, f: &mut syn::ImplItemFn) {
        self.self_span = match f.sig.inputs.first() {
            Some(syn::FnArg::Receiver(r)) => r.self_token.span,
            _ => Span::call_site(),
        };
        syn::visit_mut::visit_impl_item_fn_mut(self, f);
    }

    fn visit_block_mut(&mut self, block: &mut syn::Block) {
        let mut stmts = Vec::with_capacity(block.stmts.len());
        for mut stmt in std::mem::take(&mut block.stmts) {
            if let syn::Stmt::Macro(m) = &stmt
                && let Some(n) = sites::stated_site(&m.mac)
            {
                if let Some(site) = self.sites.get(n)
                    && self.class(site).is_some()
                {
                    let touches = self.touch_roots(site);
                    stmts.push(parse_quote!(#touches));
                }
                continue;
            }
            if let Some(attrs) = attr::stmt_attrs_mut(&mut stmt) {
                attr::strip_ddp(attrs);
                if sites::is_opaque(attrs) {
                    attrs.retain(|a| !a.path().is_ident(sites::OPAQUE_ATTR));
                    stmts.push(stmt);
                    continue;
                }
            }
            let touches = self.collecting(|r| r.visit_stmt_mut(&mut stmt));
            stmts.extend(touches.into_iter().map(|t| parse_quote!(#t)));
            stmts.push(stmt);
        }
        block.stmts = stmts;
    }

    fn visit_expr_closure_mut(&mut self, closure: &mut syn::ExprClosure) {
        let touches = self.collecting(|r| r.visit_expr_mut(&mut closure.body));
        if !touches.is_empty() {
            *closure.body = prefixed(touches, &closure.body);
        }
    }

    fn visit_arm_mut(&mut self, arm: &mut syn::Arm) {
        let touches = self.collecting(|r| {
            if let Some((_, guard)) = &mut arm.guard {
                r.visit_expr_mut(guard);
            }
            r.visit_expr_mut(&mut arm.body);
        });
        if !touches.is_empty() {
            *arm.body = prefixed(touches, &arm.body);
        }
    }

    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        let site = attr::expr_attrs_mut(expr).and_then(remove_marks);
        // Inner sites first: a receiver may hold sites of its own.
        syn::visit_mut::visit_expr_mut(self, expr);
        if let Some(n) = site {
            self.rewrite(expr, n);
        }
    }

    // Nested items have no `self`.
    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
}
