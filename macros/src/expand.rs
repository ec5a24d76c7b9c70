//! Code generation for the two halves of `#[ddp_model]`.
//!
//! The struct and the impl block are separate attribute invocations, so the
//! struct's expansion leaves a callback behind:
//!
//! ```text
//! macro_rules! __maskddp_model_Detector {
//!     ($($impl:tt)*) => { ::maskddp::__private::ddp_model_impl! { { <struct> } $($impl)* } };
//! }
//! pub(crate) use __maskddp_model_Detector;
//! ```
//!
//! and the impl's expansion calls it by name (`__maskddp_model_Detector!`),
//! so `ddp_model_impl` sees both items, with their spans, and does the work.
//!
//! Why a named callback: the analysis needs the struct's field types (which
//! fields hold parameters, which are nested models) while it reads
//! `forward`, and an attribute macro sees only its own item; a `macro_rules!`
//! item is the one way to carry one item's tokens to another's expansion.
//! The name cannot collide: it is derived from the struct's, which is unique
//! in its module, and the `pub(crate) use` is what lets an impl block that
//! comes first, or lives in another module, reach it. It stays out of error
//! messages: `ddp_model_impl` gives the struct's tokens back the user's
//! syntax context (`in_user_context`). It shows only when the struct lacks
//! `#[ddp_model]` ("cannot find macro"), next to an error that says so.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Item, ItemImpl, ItemStruct, Type, parse_quote};

use crate::analysis::{self, FieldTable, FieldUsage};
use crate::attr::{self, ImplArgs};
use crate::check;
use crate::ctxt::Ctxt;
use crate::instrument;
use crate::model::Model;

/// `#[ddp_model]` on an item.
pub(crate) fn ddp_model(args: TokenStream, item: TokenStream) -> TokenStream {
    let parsed: Item = match syn::parse2(item.clone()) {
        Ok(parsed) => parsed,
        Err(err) => {
            let err = err.to_compile_error();
            return quote!(#err #item);
        }
    };
    match parsed {
        Item::Struct(item) => expand_struct(args, &item),
        Item::Impl(item) => forward_impl(args, &item),
        other => {
            let what: TokenStream = match &other {
                Item::Enum(e) => {
                    let (t, i) = (&e.enum_token, &e.ident);
                    quote!(#t #i)
                }
                Item::Union(u) => {
                    let (t, i) = (&u.union_token, &u.ident);
                    quote!(#t #i)
                }
                Item::Fn(f) => {
                    let (t, i) = (&f.sig.fn_token, &f.sig.ident);
                    quote!(#t #i)
                }
                Item::Trait(t) => {
                    let (k, i) = (&t.trait_token, &t.ident);
                    quote!(#k #i)
                }
                other => other.to_token_stream(),
            };
            let err = syn::Error::new_spanned(
                what,
                "`#[ddp_model]` expected a struct or the impl block holding `forward`",
            )
            .to_compile_error();
            quote!(#err #other)
        }
    }
}

fn callback_name(ident: &syn::Ident) -> syn::Ident {
    format_ident!("__maskddp_model_{}", ident, span = ident.span())
}

fn expand_struct(args: TokenStream, item: &ItemStruct) -> TokenStream {
    let cx = Ctxt::new();
    if !args.is_empty() {
        cx.error_spanned_by(
            &args,
            "`#[ddp_model]` on a struct takes no arguments (`report` goes on the impl block)",
        );
    }
    let model = Model::from_struct(&cx, item);
    let backend_impl = model.as_ref().map(model_backend_impl);

    let mut stripped = item.clone();
    for field in stripped.fields.iter_mut() {
        attr::strip_ddp(&mut field.attrs);
    }
    let callback = callback_name(&item.ident);
    let errors = cx.check().err().map(|e| e.to_compile_error());
    quote! {
        #errors
        #stripped
        #backend_impl
        #[doc(hidden)]
        #[allow(unused_macros, non_snake_case)]
        macro_rules! #callback {
            ($($tokens:tt)*) => {
                ::maskddp::__private::ddp_model_impl! { { #item } $($tokens)* }
            };
        }
        #[doc(hidden)]
        #[allow(unused_imports)]
        pub(crate) use #callback;
    }
}

fn model_backend_impl(model: &Model<'_>) -> TokenStream {
    let name = &model.item.ident;
    let backend = &model.backend;
    let mut generics = model.item.generics.clone();
    generics
        .make_where_clause()
        .predicates
        .push(parse_quote!(#backend: ::maskddp::__private::BurnBackend));
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::maskddp::__private::ModelBackend for #name #ty_generics #where_clause {
            type Backend = #backend;
        }
    }
}

/// `#[ddp_model]` on the impl block: hand it to the struct's callback.
fn forward_impl(args: TokenStream, item: &ItemImpl) -> TokenStream {
    let path = if let Some((_, trait_path, _)) = &item.trait_ {
        Err(syn::Error::new_spanned(
            trait_path,
            "`#[ddp_model]` goes on the inherent impl block holding `forward`, not on a trait impl",
        ))
    } else {
        callback_path(&item.self_ty)
    };
    match path {
        Ok(path) => {
            // If the struct lacks `#[ddp_model]`, the callback path above does
            // not resolve; this bound then adds an error naming the struct.
            let (impl_generics, _, where_clause) = item.generics.split_for_impl();
            let self_ty = &item.self_ty;
            // (A struct without type parameters has no backend generic and
            // was already reported by its own expansion.)
            let has_type_params = item.generics.type_params().next().is_some();
            let check = has_type_params.then(|| quote_spanned! {self_ty.span()=>
                const _: () = {
                    #[allow(dead_code)]
                    fn __maskddp_struct_has_ddp_model #impl_generics () #where_clause {
                        fn has_ddp_model<T: ?::core::marker::Sized + ::maskddp::__private::ModelBackend>() {}
                        has_ddp_model::<#self_ty>();
                    }
                };
            });
            quote!(#path! { { #args } #item } #check)
        }
        Err(err) => {
            let err = err.to_compile_error();
            let item = instrument::strip_impl(item);
            quote!(#err #item)
        }
    }
}

/// `Detector<B>` → `__maskddp_model_Detector`; `m::Detector<B>` →
/// `m::__maskddp_model_Detector`.
///
/// A bare name resolves both ways the callback can be reached: textually,
/// after the struct (which also works inside a function body, where `self::`
/// paths cannot see items), and through the `pub(crate) use` item, which
/// works in a module even when the impl comes first.
fn callback_path(self_ty: &Type) -> syn::Result<TokenStream> {
    let Type::Path(type_path) = self_ty else {
        return Err(syn::Error::new_spanned(
            self_ty,
            "`#[ddp_model]` expected the impl block of a `#[ddp_model]` struct",
        ));
    };
    if type_path.qself.is_some() || type_path.path.segments.is_empty() {
        return Err(syn::Error::new_spanned(
            self_ty,
            "`#[ddp_model]` expected the impl block of a `#[ddp_model]` struct",
        ));
    }
    let mut path = type_path.path.clone();
    if let Some(last) = path.segments.last_mut() {
        last.ident = callback_name(&last.ident);
        last.arguments = syn::PathArguments::None;
    }
    Ok(path.into_token_stream())
}

/// What the callback passes to `ddp_model_impl`.
struct ImplInput {
    strukt: ItemStruct,
    args: TokenStream,
    imp: ItemImpl,
}

impl Parse for ImplInput {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let strukt;
        syn::braced!(strukt in input);
        let strukt: TokenStream = strukt.parse()?;
        let args;
        syn::braced!(args in input);
        let args = args.parse()?;
        let imp: ItemImpl = input.parse()?;
        let strukt = syn::parse2(in_user_context(strukt, imp.impl_token.span))?;
        Ok(ImplInput { strukt, args, imp })
    }
}

/// The struct's tokens, as the callback's body carries them, with the
/// syntax context of the user's own code (`anchor`, a token of the impl
/// block, which reaches here unchanged). Without this, every error spanned
/// on a field would end with "this error originates in the macro
/// `__maskddp_model_…`", naming a hidden item; the locations do not change,
/// and the names resolve as where the user wrote them.
fn in_user_context(tokens: TokenStream, anchor: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let stream = in_user_context(group.stream(), anchor);
                let mut respanned = Group::new(group.delimiter(), stream);
                respanned.set_span(group.span());
                token = TokenTree::Group(respanned);
            }
            token.set_span(token.span().resolved_at(anchor));
            token
        })
        .collect()
}

/// The hidden `ddp_model_impl!`: analysis and all generated code.
pub(crate) fn ddp_model_impl(input: TokenStream) -> TokenStream {
    let ImplInput { strukt, args, imp } = match syn::parse2(input) {
        Ok(input) => input,
        Err(err) => return err.to_compile_error(),
    };
    // The struct's own expansion reported its mistakes already.
    let quiet = Ctxt::new();
    let model = Model::from_struct(&quiet, &strukt);
    let struct_ok = quiet.check().is_ok();
    let model = match model {
        Some(model) if struct_ok => model,
        _ => return instrument::strip_impl(&imp).into_token_stream(),
    };

    let cx = Ctxt::new();
    let args = ImplArgs::parse(&cx, args);
    let fields = FieldTable::from_model(&model);
    let mut marked = imp.clone();
    let mut analysis = analysis::analyse(&cx, &fields, &mut marked);
    if let Some(analysis) = &mut analysis {
        // An error that hid uses (`self` as a whole, a macro) would make
        // "never used" verdicts wrong: report only the hiding error.
        if !analysis.opaque {
            check::check_usage(&cx, &model, &analysis.usage);
        }
        check::apply_frozen(&model, &mut analysis.usage);
    }
    match (cx.check(), analysis) {
        (Ok(()), Some(analysis)) => {
            let usage = analysis.usage;
            let instrumented =
                instrument::instrument_impl(&fields, &analysis.sites, &usage, marked);
            let trait_impl = ddp_model_trait_impl(&model, &imp, Some(&usage));
            let report = args.report.map(|ident| report(&model, &usage, &ident));
            quote! {
                #instrumented
                #trait_impl
                #report
            }
        }
        (result, _) => {
            let errors = result.err().map(|e| e.to_compile_error());
            let plain = instrument::strip_impl(&imp);
            // A stub keeps uses of the model's `DdpModel` API from piling
            // more errors on the real one.
            let stub = ddp_model_trait_impl(&model, &imp, None);
            quote! {
                #errors
                #plain
                #stub
            }
        }
    }
}

/// `impl DdpModel<B> for Detector<B>`, generic like the struct. With `usage`
/// `None`, a stub whose methods are unreachable (only emitted with errors).
fn ddp_model_trait_impl(
    model: &Model<'_>,
    imp: &ItemImpl,
    usage: Option<&[FieldUsage]>,
) -> TokenStream {
    let backend = &model.backend;
    let self_path = self_path(imp, model);
    let mut generics = model.item.generics.clone();
    let (_, ty_generics, _) = model.item.generics.split_for_impl();
    let self_ty = quote!(#self_path #ty_generics);
    {
        let where_clause = generics.make_where_clause();
        where_clause
            .predicates
            .push(parse_quote!(#backend: ::maskddp::__private::BurnBackend));
        where_clause
            .predicates
            .push(parse_quote!(#self_ty: ::maskddp::__private::BurnModule<#backend>));
    }
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let private = quote!(::maskddp::__private);

    let Some(usage) = usage else {
        return quote! {
            #[automatically_derived]
            impl #impl_generics #private::DdpModel<#backend> for #self_ty #where_clause {
                fn build_plan(&self, _: &mut #private::PlanBuilder) {
                    ::core::unreachable!()
                }
                fn record_always_used(&self) {
                    ::core::unreachable!()
                }
            }
        };
    };

    let mut plan = Vec::new();
    let mut record = Vec::new();
    for (field, usage) in model.param_fields().zip(usage) {
        let member = &field.member;
        let cfgs = &field.cfgs;
        let wrapped = quote!((&&#private::Field::<#backend, _>::new(&self.#member)));
        match usage {
            FieldUsage::Always => {
                plan.push(quote!(#(#cfgs)* #wrapped.__maskddp_plan_always(plan);));
                record.push(quote!(#(#cfgs)* #wrapped.__maskddp_record_always();));
            }
            FieldUsage::AlwaysIfPlain(branch) => {
                plan.push(
                    quote!(#(#cfgs)* #wrapped.__maskddp_plan_always_if_plain(plan, #branch);),
                );
                record.push(quote!(#(#cfgs)* #wrapped.__maskddp_record_always_if_plain();));
            }
            FieldUsage::Conditional(branch) => {
                plan.push(
                    quote!(#(#cfgs)* plan.conditional::<#backend, _>(&self.#member, #branch);),
                );
            }
            // Never-used fields that are not frozen were reported as errors.
            FieldUsage::Never => {
                plan.push(quote!(#(#cfgs)* plan.frozen::<#backend, _>(&self.#member);));
            }
        }
    }
    let plan_param = if plan.is_empty() {
        quote!(_plan)
    } else {
        quote!(plan)
    };
    let plan_imports =
        (!plan.is_empty()).then(|| quote!(use #private::{PlanNested as _, PlanPlain as _};));
    let record_imports =
        (!record.is_empty()).then(|| quote!(use #private::{RecordNested as _, RecordPlain as _};));
    // The methods `instrument` rewrites: calls of them record on their own.
    let instrumented: Vec<String> = analysis::methods(imp).into_keys().collect();
    // (`forward` is always one; the analysis reported its absence.)
    let instruments = if instrumented.is_empty() {
        quote!(
            fn instruments(_: &str) -> bool {
                false
            }
        )
    } else {
        quote!(
            fn instruments(method: &str) -> bool {
                ::core::matches!(method, #(#instrumented)|*)
            }
        )
    };
    quote! {
        #[automatically_derived]
        impl #impl_generics #private::DdpModel<#backend> for #self_ty #where_clause {
            fn build_plan(&self, #plan_param: &mut #private::PlanBuilder) {
                #plan_imports
                #(#plan)*
            }
            fn record_always_used(&self) {
                #record_imports
                #(#record)*
            }
            #instruments
        }
    }
}

/// The struct's path as the impl block spells it, without generic arguments.
fn self_path(imp: &ItemImpl, model: &Model<'_>) -> TokenStream {
    match &*imp.self_ty {
        Type::Path(type_path) if type_path.qself.is_none() => {
            let mut path = type_path.path.clone();
            if let Some(last) = path.segments.last_mut() {
                last.arguments = syn::PathArguments::None;
            }
            path.into_token_stream()
        }
        _ => model.item.ident.to_token_stream(),
    }
}

/// `#[ddp_model(report)]`: a compile-time warning listing the conditional
/// fields, through the only stable way to warn (a deprecated item, used
/// with the user's `report` span).
fn report(model: &Model<'_>, usage: &[FieldUsage], report: &syn::Ident) -> TokenStream {
    let conditional: Vec<String> = model
        .param_fields()
        .zip(usage)
        .filter_map(|(field, usage)| match usage {
            FieldUsage::Conditional(branch) => Some(format!("`{}` ({branch})", field.name())),
            _ => None,
        })
        .collect();
    let note = if conditional.is_empty() {
        format!(
            "`{}`: every parameter field is used on every path of `forward`",
            model.item.ident
        )
    } else {
        format!(
            "`{}`: {} conditional parameter field(s): {}",
            model.item.ident,
            conditional.len(),
            conditional.join(", ")
        )
    };
    let span = report.span();
    let name = syn::Ident::new("ddp_model_report", span);
    quote_spanned! {span=>
        const _: () = {
            #[deprecated(note = #note)]
            #[allow(non_upper_case_globals)]
            const #name: () = ();
            #name
        };
    }
}
