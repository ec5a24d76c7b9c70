use burn::module::Module;
use burn::tensor::backend::Backend;

use crate::layout::ParamLayout;
use crate::plan::{PlanBuilder, UsagePlan};

/// A burn module whose `forward` was analysed by `#[ddp_model]`.
///
/// The attribute implements this trait; writing it by hand is possible but
/// then nothing checks that the plan matches what `forward` does.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `#[ddp_model]`",
    note = "put `#[ddp_model]` on the struct and on the impl block that holds its `forward`"
)]
pub trait DdpModel<B: Backend>: Module<B> {
    /// Appends how `forward` uses each parameter this model owns.
    ///
    /// Every parameter reached by `Module::visit` must be described exactly
    /// once; the order does not matter (entries are keyed by parameter id).
    fn build_plan(&self, plan: &mut PlanBuilder);

    /// Records, into the active usage scope, the parameters `forward` uses on
    /// every path. A parent that uses this model only in some branches calls
    /// this; the model's own instrumented methods record the conditional rest.
    ///
    /// Called by generated code; hidden from the documentation because a
    /// user has no reason to call it.
    #[doc(hidden)]
    fn record_always_used(&self);

    /// Whether `method` is one of this model's instrumented methods (a
    /// `&self` method of its `#[ddp_model]` impl block), which record the
    /// conditional parameters they use. A parent calling any other method, or
    /// reaching the model any other way, records all of its parameters.
    ///
    /// The default, `false`, is right for hand-written implementations and
    /// for containers: a method called on an `Option<M>` or `Vec<M>` is never
    /// one of `M`'s. Called by generated code, hence hidden.
    #[doc(hidden)]
    fn instruments(method: &str) -> bool {
        let _ = method;
        false
    }

    /// The per-slot usage plan of this model instance (slots in `Module::visit`
    /// order, with paths and shapes).
    fn usage_plan(&self) -> UsagePlan {
        let mut builder = PlanBuilder::default();
        self.build_plan(&mut builder);
        UsagePlan::new(ParamLayout::of(self), builder)
    }
}

// Containers of nested models keep each element's own split: without these,
// an `Option<Child>` or `Vec<Child>` field would fall back to the plain-module
// path and mark the child's conditional parameters as always used.

impl<B: Backend, M: DdpModel<B>> DdpModel<B> for Option<M> {
    fn build_plan(&self, plan: &mut PlanBuilder) {
        if let Some(model) = self {
            model.build_plan(plan);
        }
    }

    fn record_always_used(&self) {
        if let Some(model) = self {
            model.record_always_used();
        }
    }
}

impl<B: Backend, M: DdpModel<B>> DdpModel<B> for Vec<M> {
    fn build_plan(&self, plan: &mut PlanBuilder) {
        self.iter().for_each(|model| model.build_plan(plan));
    }

    fn record_always_used(&self) {
        self.iter().for_each(DdpModel::record_always_used);
    }
}

impl<B: Backend, M: DdpModel<B>, const N: usize> DdpModel<B> for [M; N] {
    fn build_plan(&self, plan: &mut PlanBuilder) {
        self.iter().for_each(|model| model.build_plan(plan));
    }

    fn record_always_used(&self) {
        self.iter().for_each(DdpModel::record_always_used);
    }
}
