//! Rewrites method bodies so each evaluated use of a conditional field
//! records the parameters it touches into the active usage scope.
//!
//! Input:  `self.experts[i].forward(x)`
//! Output: `(*{ let f = &self.experts[i]; record(f); f }).forward(x)`
//!
//! The rewritten expression is the same place (a deref of a shared borrow),
//! so auto-ref, method calls and `&` keep working. Always-used fields are
//! left alone: they cost nothing per step. Two element-wise forms record only
//! the element used: `self.f.get(i)` and `self.f.iter()`.
//!
//! A projection into a parameter field, `self.child.head` or
//! `self.kids[i].head`, bypasses the field's own instrumented methods (a
//! nested `#[ddp_model]` records its conditional parameters only from them),
//! so it records every parameter of `self.child` / `self.kids[i]`, whether the
//! field is always or conditionally used.

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
/// methods taking `&self`, uses of the `conditional` fields instrumented.
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

struct Rewriter<'a> {
    cx: &'a Ctxt,
    fields: &'a FieldTable,
    conditional: &'a BTreeSet<usize>,
    /// The fields `forward` uses (always or conditionally; not the frozen):
    /// projections into them record the whole field.
    used: &'a BTreeSet<usize>,
    /// False for methods without a `&self` receiver: nothing to record.
    enabled: bool,
    /// The span of the method's own `self`, so generated `self` resolves to it.
    self_span: Span,
}

impl Rewriter<'_> {
    fn is_conditional(&self, member: &Member) -> bool {
        self.enabled
            && self
                .fields
                .param(member)
                .is_some_and(|f| self.conditional.contains(&f))
    }

    /// `self.f` with `f` conditional.
    fn conditional_place(&self, expr: &Expr) -> bool {
        match expr {
            Expr::Field(f) => is_self(&f.base) && self.is_conditional(&f.member),
            _ => false,
        }
    }

    /// `self.f` or `self.f[i]` (in parentheses or not) with `f` used: the
    /// base of a projection that must record all of `f`'s parameters.
    fn projection_root(&self, expr: &Expr) -> bool {
        let field = match expr {
            Expr::Paren(p) => return self.projection_root(&p.expr),
            Expr::Index(index) => match &*index.expr {
                Expr::Paren(p) => &*p.expr,
                other => other,
            },
            other => other,
        };
        self.enabled
            && matches!(field, Expr::Field(f) if is_self(&f.base)
                && self.fields.param(&f.member).is_some_and(|f| self.used.contains(&f)))
    }

    /// Records every parameter of `place` (a module), nested model or not.
    fn wrap_deep(&self, place: &Expr) -> Expr {
        let tmp = syn::Ident::new("__maskddp_field", Span::mixed_site());
        let backend = self.backend();
        parse_quote!((*{
            let #tmp = &#place;
            ::maskddp::__private::record_module::<#backend, _>(#tmp);
            #tmp
        }))
    }

    fn backend(&self) -> TokenStream {
        quote!(<Self as ::maskddp::__private::ModelBackend>::Backend)
    }

    /// Records `reference` (an expression of type `&M`).
    fn touch(&self, reference: TokenStream) -> TokenStream {
        let backend = self.backend();
        quote! {
            use ::maskddp::__private::{TouchNested as _, TouchPlain as _};
            (&&::maskddp::__private::Field::<#backend, _>::new(#reference)).__maskddp_touch();
        }
    }

    fn wrap(&self, place: &Expr) -> Expr {
        let tmp = syn::Ident::new("__maskddp_field", Span::mixed_site());
        let touch = self.touch(quote!(#tmp));
        parse_quote!((*{ let #tmp = &#place; #touch #tmp }))
    }

    /// `self.experts[a..b]`: a slice, each of its elements recorded.
    fn wrap_slice(&self, place: &Expr) -> Expr {
        let tmp = syn::Ident::new("__maskddp_field", Span::mixed_site());
        let elem = syn::Ident::new("__maskddp_elem", Span::mixed_site());
        let touch = self.touch(quote!(#elem));
        parse_quote!((*{
            let #tmp = &#place;
            for #elem in #tmp.iter() {
                #touch
            }
            #tmp
        }))
    }

    /// `self.experts.get(i)`: record element `i` only, when it exists.
    fn wrap_get(&self, call: &syn::ExprMethodCall) -> Expr {
        let tmp = syn::Ident::new("__maskddp_get", Span::mixed_site());
        let elem = syn::Ident::new("__maskddp_elem", Span::mixed_site());
        let touch = self.touch(quote!(#elem));
        parse_quote!({
            let #tmp = #call;
            if let ::core::option::Option::Some(#elem) = #tmp {
                #touch
            }
            #tmp
        })
    }

    /// `self.experts.iter()`: record each element as the iterator yields it,
    /// so `.take(k)` or an early `break` records only what was visited.
    fn wrap_iter(&self, call: &syn::ExprMethodCall) -> Expr {
        let elem = syn::Ident::new("__maskddp_elem", Span::mixed_site());
        let touch = self.touch(quote!(*#elem));
        parse_quote!(#call.inspect(|#elem| { #touch }))
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
            if self.is_conditional(&member) {
                let self_token = syn::Ident::new("self", self.self_span);
                let touch = self.touch(quote!(&#self_token.#member));
                stmts.push(parse_quote!({ #touch }));
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
            Expr::Field(_) if self.conditional_place(expr) => {
                *expr = self.wrap(expr);
            }
            // `self.child.head`: the child's own instrumentation never runs.
            Expr::Field(projection) if self.projection_root(&projection.base) => {
                let mut root = &mut *projection.base;
                while let Expr::Paren(p) = root {
                    root = &mut *p.expr;
                }
                if let Expr::Index(index) = root {
                    self.visit_expr_mut(&mut index.index);
                }
                *projection.base = self.wrap_deep(&projection.base);
            }
            Expr::Index(index) if self.conditional_place(&index.expr) => {
                self.visit_expr_mut(&mut index.index);
                *expr = if matches!(&*index.index, Expr::Range(_)) {
                    self.wrap_slice(expr)
                } else {
                    self.wrap(expr)
                };
            }
            Expr::MethodCall(call) if self.conditional_place(&call.receiver) => {
                for arg in &mut call.args {
                    self.visit_expr_mut(arg);
                }
                let method = call.method.to_string();
                if NON_USE.contains(&method.as_str()) {
                    return;
                }
                if method == "get"
                    && call.args.len() == 1
                    && !matches!(call.args[0], Expr::Range(_))
                {
                    *expr = self.wrap_get(call);
                    return;
                }
                if method == "iter" && call.args.is_empty() {
                    *expr = self.wrap_iter(call);
                    return;
                }
                *call.receiver = self.wrap(&call.receiver);
            }
            // Macro tokens are not rewritten: uses in them are reported by the
            // analysis unless a statement attribute states them.
            Expr::Macro(_) => {}
            _ => syn::visit_mut::visit_expr_mut(self, expr),
        }
    }

    // Nested items have no `self`.
    fn visit_item_mut(&mut self, _: &mut syn::Item) {}
}
