//! Uses the tracker does not see but is told of: a `#[ddp(uses(..))]`
//! statement states its uses, and a macro call uses every derived binding
//! it names.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::Stmt;

use super::shape::{merge, parts};
use super::tracker::Tracker;
use super::{Form, Kind, Roots, STATED_MACRO, Site};
use crate::attr;

impl Tracker<'_> {
    /// `#[ddp(uses(a, b))] stmt;`: the user states the uses; nothing inside
    /// is looked at. Returns the `__maskddp_stated!(N);` statement to put
    /// before it, and marks the statement opaque.
    pub(super) fn stated_uses(&mut self, stmt: &mut Stmt) -> Option<Stmt> {
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
    pub(super) fn stated_stmt(&mut self, site: Site) -> Stmt {
        let n = self.sites.len();
        self.sites.push(site);
        let name = syn::Ident::new(STATED_MACRO, Span::call_site());
        syn::parse_quote!(#name!(#n);)
    }

    /// The roots of the derived bindings a macro's tokens mention: the
    /// macro's expansion is not seen, so it uses them all.
    pub(super) fn macro_roots(&self, mac: &syn::Macro) -> Roots {
        let mut roots = Roots::new();
        self.collect_mentioned(mac.tokens.clone(), &mut roots);
        roots
    }

    pub(super) fn collect_mentioned(&self, tokens: TokenStream, roots: &mut Roots) {
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
}
