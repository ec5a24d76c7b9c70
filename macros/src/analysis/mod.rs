//! Which parameter fields `forward` uses on every path, on some paths, or
//! never. Pure functions over syn nodes; diagnostics go to a [`Ctxt`].
//!
//! First the value tracker ([`sites`]) marks, in a copy of the impl block,
//! every place where a value derived from a parameter field is consumed.
//! Then each method of the annotated impl block gets a [`Summary`]: the fields it
//! uses on every path to its exits (a "must" set, computed forward over the
//! control flow and intersected at joins and early exits) and every field it
//! may use (with the guard text of the first conditional use). Calls to other
//! methods of the block apply the callee's summary; recursion is solved by
//! iterating to a fixpoint (must sets start full and shrink, may sets start
//! empty and grow), so summaries are sound for terminating calls.

mod flow;
pub(crate) mod render;
pub(crate) mod sites;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use syn::ext::IdentExt as _;
use syn::{FnArg, ImplItem, ImplItemFn, ItemImpl, Member};

use self::flow::Must;
use crate::ctxt::Ctxt;
use crate::model::{Model, member_name};

pub(crate) use sites::Site;

/// Field indices, into [`FieldTable::params`].
pub(crate) type FieldSet = BTreeSet<usize>;

/// The struct's fields as the analysis needs them.
pub(crate) struct FieldTable {
    /// Parameter-holding fields, by name (`head`, `0`).
    pub(crate) params: Vec<String>,
    /// Fields without parameters: reading them is not a use.
    pub(crate) others: HashSet<String>,
    /// The struct's name, for `Detector::method(self)` calls.
    pub(crate) struct_name: String,
}

impl FieldTable {
    pub(crate) fn from_model(model: &Model<'_>) -> FieldTable {
        FieldTable {
            params: model.param_fields().map(|f| f.name()).collect(),
            others: model
                .fields
                .iter()
                .filter(|f| !f.holds_params)
                .map(|f| f.name())
                .collect(),
            struct_name: model.item.ident.to_string(),
        }
    }

    pub(crate) fn param(&self, member: &Member) -> Option<usize> {
        let name = member_name(member);
        self.params.iter().position(|p| *p == name)
    }
}

/// What one method does with the parameter fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Summary {
    /// Used on every path that returns.
    pub(crate) always: FieldSet,
    /// Used on some path; the value is the guard of the first conditional
    /// use, `None` when every use seen was unguarded.
    pub(crate) uses: BTreeMap<usize, Option<String>>,
}

/// The verdict for one parameter field.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FieldUsage {
    Always,
    /// Used as a whole on every path, but on some only through a method
    /// other than its `forward`: always if it is a plain burn module (a call
    /// uses all of it); if it is a nested `#[ddp_model]`, its own split may
    /// not hold (the method may skip what its `forward` always uses), so all
    /// of it is conditional, under this branch text.
    AlwaysIfPlain(String),
    /// With the source text of the branch that guards the use.
    Conditional(String),
    Never,
}

/// The methods the analysis can follow: those of the annotated block that
/// take `&self`.
pub(crate) type Methods<'a> = BTreeMap<String, &'a ImplItemFn>;

pub(crate) fn methods(imp: &ItemImpl) -> Methods<'_> {
    imp.items
        .iter()
        .filter_map(|item| match item {
            ImplItem::Fn(f) if takes_ref_self(f) => Some((f.sig.ident.unraw().to_string(), f)),
            _ => None,
        })
        .collect()
}

fn receiver(f: &ImplItemFn) -> Option<&syn::Receiver> {
    match f.sig.inputs.first() {
        Some(FnArg::Receiver(r)) => Some(r),
        _ => None,
    }
}

/// `&self` (or `self: &Self`): instrumented field uses are shared borrows.
pub(crate) fn takes_ref_self(f: &ImplItemFn) -> bool {
    receiver(f).is_some_and(|r| {
        r.mutability.is_none()
            && matches!(&*r.ty, syn::Type::Reference(t) if t.mutability.is_none())
    })
}

/// What the analysis found in an impl block.
pub(crate) struct Analysis {
    /// Per parameter field.
    pub(crate) usage: Vec<FieldUsage>,
    /// The consumption sites `imp` (as passed to [`analyse`]) is marked with.
    pub(crate) sites: Vec<Site>,
    /// Whether an error hid uses: "never used" verdicts are then unreliable.
    pub(crate) opaque: bool,
}

/// Marks the consumption sites of `imp` in place and classifies every
/// parameter field by what `forward` does with it. Returns `None` (after
/// reporting) when the block has no usable `forward`.
pub(crate) fn analyse(cx: &Ctxt, fields: &FieldTable, imp: &mut ItemImpl) -> Option<Analysis> {
    let marked = imp.items.iter_mut().filter_map(|item| match item {
        ImplItem::Fn(f) if takes_ref_self(f) => Some(f),
        _ => None,
    });
    let sites::Marked { sites, opaque } = sites::mark_methods(cx, fields, marked);
    let methods = methods(imp);
    if !methods.contains_key("forward") {
        report_missing_forward(cx, imp);
        return None;
    }
    let summaries = fixpoint(fields, &sites, &methods, Must::AnyUse);

    // Diagnose what `forward` can reach, once each.
    let mut reachable = vec!["forward".to_owned()];
    let mut seen: HashSet<String> = reachable.iter().cloned().collect();
    let mut opaque = opaque;
    while let Some(name) = reachable.pop() {
        let walked = flow::walk_method(
            fields,
            &sites,
            &methods,
            &summaries,
            Some(cx),
            Must::AnyUse,
            methods[&name],
        );
        opaque |= walked.opaque;
        for callee in walked.callees {
            if seen.insert(callee.clone()) {
                reachable.push(callee);
            }
        }
    }

    let through_forward = fixpoint(fields, &sites, &methods, Must::ForwardCalls);
    Some(Analysis {
        usage: classify(fields, &summaries["forward"], &through_forward["forward"]),
        sites,
        opaque,
    })
}

/// `forward` is `forward`'s summary; `through_forward` the same, with only
/// calls of a field's own `forward` reaching the must set.
fn classify(fields: &FieldTable, forward: &Summary, through_forward: &Summary) -> Vec<FieldUsage> {
    (0..fields.params.len())
        .map(|f| match forward.uses.get(&f) {
            None => FieldUsage::Never,
            Some(_) if through_forward.always.contains(&f) => FieldUsage::Always,
            Some(_) if forward.always.contains(&f) => FieldUsage::AlwaysIfPlain(format!(
                "some path uses `self.{}` other than through its `forward`",
                fields.params[f]
            )),
            Some(reason) => FieldUsage::Conditional(
                reason
                    .clone()
                    .unwrap_or_else(|| "some paths of `forward`".to_owned()),
            ),
        })
        .collect()
}

fn fixpoint(
    fields: &FieldTable,
    sites: &[Site],
    methods: &Methods<'_>,
    must: Must,
) -> BTreeMap<String, Summary> {
    let all: FieldSet = (0..fields.params.len()).collect();
    let mut summaries: BTreeMap<String, Summary> = methods
        .keys()
        .map(|name| {
            (
                name.clone(),
                Summary {
                    always: all.clone(),
                    uses: BTreeMap::new(),
                },
            )
        })
        .collect();
    // Each round can only shrink a must set or grow a may set, so this ends;
    // the bound is a guard against a bug, not a tuning knob.
    let bound = 2 + 2 * methods.len() * (fields.params.len() + 1);
    for _ in 0..bound {
        let mut changed = false;
        for (name, f) in methods {
            let summary =
                flow::walk_method(fields, sites, methods, &summaries, None, must, f).summary;
            if summaries[name] != summary {
                summaries.insert(name.clone(), summary);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    summaries
}

fn report_missing_forward(cx: &Ctxt, imp: &ItemImpl) {
    let other_forward = imp.items.iter().find_map(|item| match item {
        ImplItem::Fn(f) if f.sig.ident.unraw() == "forward" => Some(f),
        _ => None,
    });
    match other_forward {
        Some(f) => cx.error_spanned_by(
            &f.sig,
            "`forward` must take `&self` for `#[ddp_model]` to instrument it",
        ),
        None => {
            let self_ty = &imp.self_ty;
            cx.error_spanned_by(
                self_ty,
                "this impl block has no `forward` method\n\
                 help: put `#[ddp_model]` on the impl block that defines `fn forward(&self, ...)`",
            );
        }
    }
}

#[cfg(test)]
mod tests;
