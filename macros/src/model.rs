//! The model struct as the macro sees it: which fields hold parameters,
//! which are frozen, which backend generic names the burn backend.

use syn::visit::Visit;
use syn::{
    Attribute, GenericParam, Ident, ItemStruct, Member, Type, TypeParamBound, WherePredicate,
};

use crate::attr;
use crate::ctxt::Ctxt;

pub(crate) struct Model<'a> {
    pub(crate) item: &'a ItemStruct,
    /// The backend type parameter (burn's derive requires it to be `B`).
    pub(crate) backend: Ident,
    pub(crate) fields: Vec<ModelField<'a>>,
}

pub(crate) struct ModelField<'a> {
    pub(crate) field: &'a syn::Field,
    /// `head` or `0` (tuple structs).
    pub(crate) member: Member,
    /// Whether `#[derive(Module)]` would visit it as a module, i.e. whether it
    /// can own parameters; the other fields (config values, `Ignored<T>`,
    /// parameter-free activations) are none of the analysis' business.
    pub(crate) holds_params: bool,
    pub(crate) frozen: Option<&'a Attribute>,
    pub(crate) cfgs: Vec<&'a Attribute>,
}

impl ModelField<'_> {
    pub(crate) fn name(&self) -> String {
        member_name(&self.member)
    }
}

/// The field's name as the compiler sees it: `r#head` is `head`.
pub(crate) fn member_name(member: &Member) -> String {
    match member {
        Member::Named(ident) => syn::ext::IdentExt::unraw(ident).to_string(),
        Member::Unnamed(index) => index.index.to_string(),
    }
}

impl<'a> Model<'a> {
    /// Reads the struct; problems go to `cx`, and a best-effort model is
    /// returned anyway so later phases can report their own mistakes.
    pub(crate) fn from_struct(cx: &Ctxt, item: &'a ItemStruct) -> Option<Model<'a>> {
        let backend = find_backend(item);
        if backend.is_none() {
            let (token, ident, generics) = (&item.struct_token, &item.ident, &item.generics);
            cx.error_spanned_by(
                quote::quote!(#token #ident #generics),
                format!(
                    "`#[ddp_model]` needs the burn backend as a type parameter, as in \
                     `struct {}<B: Backend>`",
                    item.ident
                ),
            );
        }
        let module_generics = module_generics(item, backend.as_ref());
        let fields = item
            .fields
            .iter()
            .enumerate()
            .map(|(index, field)| {
                let member = match &field.ident {
                    Some(ident) => Member::Named(ident.clone()),
                    None => Member::Unnamed(syn::Index {
                        index: index as u32,
                        span: proc_macro2::Span::call_site(),
                    }),
                };
                let holds_params = holds_params(field, backend.as_ref(), &module_generics);
                let frozen = attr::field_frozen(cx, &field.attrs);
                if let (Some(frozen), false) = (frozen, holds_params) {
                    cx.error_spanned_by(
                        frozen,
                        format!(
                            "field `{}` holds no parameters, so it cannot be frozen; \
                             remove `#[ddp(frozen)]`",
                            member_name(&member)
                        ),
                    );
                }
                ModelField {
                    field,
                    member,
                    holds_params,
                    frozen,
                    cfgs: field.attrs.iter().filter(|a| attr::is_cfg(a)).collect(),
                }
            })
            .collect();
        Some(Model {
            item,
            backend: backend?,
            fields,
        })
    }

    pub(crate) fn param_fields(&self) -> impl Iterator<Item = &ModelField<'a>> {
        self.fields.iter().filter(|f| f.holds_params)
    }
}

/// The backend generic: the one named `B` (burn's derive insists on that
/// name), else the only type parameter bounded by `Backend`.
fn find_backend(item: &ItemStruct) -> Option<Ident> {
    let type_params: Vec<_> = item.generics.type_params().collect();
    if let Some(b) = type_params.iter().find(|p| p.ident == "B") {
        return Some(b.ident.clone());
    }
    let bounded: Vec<_> = type_params
        .iter()
        .filter(|p| has_bound(p.bounds.iter(), "Backend"))
        .collect();
    match bounded.as_slice() {
        [only] => Some(only.ident.clone()),
        _ => None,
    }
}

fn has_bound<'b>(mut bounds: impl Iterator<Item = &'b TypeParamBound>, name: &str) -> bool {
    bounds.any(|bound| match bound {
        TypeParamBound::Trait(t) => t.path.segments.last().is_some_and(|s| s.ident == name),
        _ => false,
    })
}

/// Type parameters other than the backend, and whether each is bounded by
/// `Module` — burn-derive 0.21's `parse_module_generics`.
fn module_generics(item: &ItemStruct, backend: Option<&Ident>) -> Vec<(Ident, bool)> {
    let mut out: Vec<(Ident, bool)> = Vec::new();
    let mut set = |ident: &Ident, module: bool| {
        if Some(ident) == backend {
            return;
        }
        match out.iter_mut().find(|(i, _)| i == ident) {
            Some(entry) => entry.1 = module,
            None => out.push((ident.clone(), module)),
        }
    };
    for param in &item.generics.params {
        if let GenericParam::Type(tp) = param {
            set(&tp.ident, has_bound(tp.bounds.iter(), "Module"));
        }
    }
    if let Some(where_clause) = &item.generics.where_clause {
        for predicate in &where_clause.predicates {
            if let WherePredicate::Type(pt) = predicate
                && let Type::Path(p) = &pt.bounded_ty
                && let Some(ident) = p.path.get_ident()
            {
                set(ident, has_bound(pt.bounds.iter(), "Module"));
            }
        }
    }
    out
}

/// burn-derive 0.21's rule (`parse_module_field_type`): a field is visited as
/// a module when it is not a primitive and its type mentions the backend, a
/// `Param`, a `Tensor` or a `Module`-bounded generic, or when it mentions any
/// other declared generic; `#[module(skip)]` opts out.
fn holds_params(field: &syn::Field, backend: Option<&Ident>, generics: &[(Ident, bool)]) -> bool {
    struct Mentions<'g> {
        backend: Option<&'g Ident>,
        generics: &'g [(Ident, bool)],
        backend_seen: bool,
        module_bound_seen: bool,
        generic_seen: bool,
    }
    impl<'ast> Visit<'ast> for Mentions<'_> {
        fn visit_type_path(&mut self, tp: &'ast syn::TypePath) {
            if tp.qself.is_none()
                && let Some(ident) = tp.path.get_ident()
            {
                if Some(ident) == self.backend || ident == "B" {
                    self.backend_seen = true;
                } else if let Some((_, module)) = self.generics.iter().find(|(g, _)| g == ident) {
                    self.generic_seen = true;
                    self.module_bound_seen |= *module;
                }
            }
            syn::visit::visit_type_path(self, tp);
        }
    }
    let skipped = field.attrs.iter().any(|a| {
        a.path().is_ident("module") && {
            let mut skip = false;
            let _ = a.parse_nested_meta(|meta| {
                skip |= meta.path.is_ident("skip");
                Ok(())
            });
            skip
        }
    });
    // `PhantomData<B>` mentions the backend but holds nothing.
    if skipped || last_ident(&field.ty).is_some_and(|l| l == "PhantomData") {
        return false;
    }
    let mut mentions = Mentions {
        backend,
        generics,
        backend_seen: false,
        module_bound_seen: false,
        generic_seen: false,
    };
    mentions.visit_type(&field.ty);
    let last = last_ident(&field.ty);
    let is = |names: &[&str]| last.as_ref().is_some_and(|l| names.iter().any(|n| l == n));
    let primitive = is(&[
        "bool", "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize", "f32",
        "f64", "String",
    ]);
    let module = !primitive
        && (mentions.module_bound_seen
            || is(&["Param"])
            || is(&["Tensor"])
            || mentions.backend_seen);
    // burn also visits fields that mention a plain generic ("maybe a module").
    module || mentions.generic_seen
}

fn last_ident(ty: &Type) -> Option<Ident> {
    match ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
}
