//! Support for the code `#[ddp_model]` generates. Not public API.
//!
//! Nested models are told apart from plain burn modules, and both from
//! slices of modules, by autoref specialization: the `&&&Field` impl applies
//! only when the value's type implements [`DdpModel`]; otherwise method
//! lookup derefs once and finds the plain-module impl on `&&Field`, and once
//! more for the slice impl on `&Field`. The generated touch is always
//! `(&&&Field::<Backend, _>::new(value)).__maskddp_…(…)`, where `value` is
//! `&self.field`, `&self.field[i]` or a binding's value normalised by
//! [`ModuleRef`].

use core::marker::PhantomData;

use burn::module::Module;
use burn::tensor::backend::Backend;

pub use crate::model::DdpModel;
pub use crate::plan::PlanBuilder;
use crate::plan::for_each_param_id;
use crate::recorder::{is_recording, record_id};
pub use burn::module::Module as BurnModule;
pub use burn::tensor::backend::Backend as BurnBackend;

/// Names the backend type parameter of a `#[ddp_model]` struct, so code
/// generated for its impl blocks need not know how the user spelled it.
#[diagnostic::on_unimplemented(
    message = "the struct `{Self}` is missing `#[ddp_model]`",
    label = "this impl block has `#[ddp_model]`, its struct does not",
    note = "put `#[ddp_model]` on the struct definition too, above its `#[derive(Module)]`"
)]
pub trait ModelBackend {
    /// The struct's backend.
    type Backend: Backend;
}

/// A field of a model (or a part of one: an element, a slice of elements),
/// seen from generated code.
#[allow(missing_debug_implementations)]
pub struct Field<'a, B, M: ?Sized>(&'a M, PhantomData<B>);

impl<'a, B, M: ?Sized> Field<'a, B, M> {
    /// Wraps a reference to a field.
    pub fn new(module: &'a M) -> Self {
        Field(module, PhantomData)
    }
}

/// Strips any number of references from a value the analysis knows to be a
/// module or a slice of modules (a binding of `&&Expert` in a `filter`
/// closure, `&Linear` from `if let Some(p) = &self.proj`): method lookup
/// derefs until it reaches the module, so `(&value).__maskddp_module_ref()`
/// is `&M` or `&[M]` whatever the binding's reference depth.
pub trait ModuleRef<B> {
    #[allow(missing_docs)]
    fn __maskddp_module_ref(&self) -> &Self;
}

impl<B: Backend, M: Module<B>> ModuleRef<B> for M {
    #[inline(always)]
    fn __maskddp_module_ref(&self) -> &Self {
        self
    }
}

impl<B: Backend, M: Module<B>> ModuleRef<B> for [M] {
    #[inline(always)]
    fn __maskddp_module_ref(&self) -> &Self {
        self
    }
}

/// Records every parameter of `module` into the active scope.
pub fn record_module<B: Backend, M: Module<B>>(module: &M) {
    if is_recording() {
        for_each_param_id(module, record_id);
    }
}

/// Recording one evaluated use of a parameter field (or of an element of
/// one), chosen at compile time: the generated code calls the method for the
/// kind of use and for the field's classification, and gets the field back.
///
/// - A *call* is `self.f.method(..)` or `self.f[i].method(..)`: the field is
///   the receiver of a method call named `method`.
/// - Any other use (`&self.f`, an argument, a projection `self.f.g`, an
///   element yielded by `iter()` or `get(i)`) is a plain *touch*.
///
/// The `_always` variants are for fields `forward` uses on every path; the
/// `_always_if_plain` ones for fields it uses on every path, but on some only
/// through methods other than their `forward` (always for a plain module,
/// conditional for a nested model, whose own split may not hold there).
///
/// For a nested `#[ddp_model]`, only a call of one of its instrumented
/// methods ([`DdpModel::instruments`]) lets it record its own conditional
/// parameters; every other use records all of them.
pub trait TouchNested<'a, M> {
    #[allow(missing_docs)]
    fn __maskddp_touch_call(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_call_always(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch(self) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_always(self) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_call_always_if_plain(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_always_if_plain(self) -> &'a M;
}

impl<'a, B: Backend, M: DdpModel<B>> TouchNested<'a, M> for &&&Field<'a, B, M> {
    #[inline]
    fn __maskddp_touch_call(self, method: &str) -> &'a M {
        if !M::instruments(method) {
            record_module::<B, M>(self.0);
        } else if is_recording() {
            self.0.record_always_used();
        }
        self.0
    }

    #[inline]
    fn __maskddp_touch_call_always(self, method: &str) -> &'a M {
        // Its always-used parameters are always used by the parent too.
        if !M::instruments(method) {
            record_module::<B, M>(self.0);
        }
        self.0
    }

    #[inline]
    fn __maskddp_touch(self) -> &'a M {
        record_module::<B, M>(self.0);
        self.0
    }

    #[inline]
    fn __maskddp_touch_always(self) -> &'a M {
        record_module::<B, M>(self.0);
        self.0
    }

    #[inline]
    fn __maskddp_touch_call_always_if_plain(self, method: &str) -> &'a M {
        self.__maskddp_touch_call(method)
    }

    #[inline]
    fn __maskddp_touch_always_if_plain(self) -> &'a M {
        self.__maskddp_touch()
    }
}

/// See [`TouchNested`]: a plain burn module records all its parameters when
/// used conditionally, nothing when used on every path.
pub trait TouchPlain<'a, M> {
    #[allow(missing_docs)]
    fn __maskddp_touch_call(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_call_always(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch(self) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_always(self) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_call_always_if_plain(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_always_if_plain(self) -> &'a M;
}

impl<'a, B: Backend, M: Module<B>> TouchPlain<'a, M> for &&Field<'a, B, M> {
    #[inline]
    fn __maskddp_touch_call(self, _method: &str) -> &'a M {
        record_module::<B, M>(self.0);
        self.0
    }

    #[inline(always)]
    fn __maskddp_touch_call_always(self, _method: &str) -> &'a M {
        self.0
    }

    #[inline]
    fn __maskddp_touch(self) -> &'a M {
        record_module::<B, M>(self.0);
        self.0
    }

    #[inline(always)]
    fn __maskddp_touch_always(self) -> &'a M {
        self.0
    }

    #[inline(always)]
    fn __maskddp_touch_call_always_if_plain(self, _method: &str) -> &'a M {
        self.0
    }

    #[inline(always)]
    fn __maskddp_touch_always_if_plain(self) -> &'a M {
        self.0
    }
}

/// See [`TouchNested`]: a slice of modules (`&self.experts[a..b]`, or an
/// index held in a variable that turns out to be a range) records every
/// parameter of its elements when used conditionally. Used on every path,
/// it records them too: its elements may be nested models whose own
/// conditional parameters a plain slice cannot tell apart.
pub trait TouchSlice<'a, M: ?Sized> {
    #[allow(missing_docs)]
    fn __maskddp_touch_call(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_call_always(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch(self) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_always(self) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_call_always_if_plain(self, method: &str) -> &'a M;
    #[allow(missing_docs)]
    fn __maskddp_touch_always_if_plain(self) -> &'a M;
}

impl<'a, B: Backend, M: Module<B>> TouchSlice<'a, [M]> for &Field<'a, B, [M]> {
    #[inline]
    fn __maskddp_touch_call(self, _method: &str) -> &'a [M] {
        self.__maskddp_touch()
    }

    #[inline]
    fn __maskddp_touch_call_always(self, _method: &str) -> &'a [M] {
        self.__maskddp_touch()
    }

    #[inline]
    fn __maskddp_touch(self) -> &'a [M] {
        for module in self.0 {
            record_module::<B, M>(module);
        }
        self.0
    }

    #[inline]
    fn __maskddp_touch_always(self) -> &'a [M] {
        self.__maskddp_touch()
    }

    #[inline]
    fn __maskddp_touch_call_always_if_plain(self, _method: &str) -> &'a [M] {
        self.__maskddp_touch()
    }

    #[inline]
    fn __maskddp_touch_always_if_plain(self) -> &'a [M] {
        self.__maskddp_touch()
    }
}

/// Describing an always-used nested `#[ddp_model]`: it keeps its own split
/// when every path calls its `forward`; when some path reaches it only
/// through other methods, all of it is conditional.
pub trait PlanNested {
    #[allow(missing_docs)]
    fn __maskddp_plan_always(self, plan: &mut PlanBuilder);
    #[allow(missing_docs)]
    fn __maskddp_plan_always_if_plain(self, plan: &mut PlanBuilder, branch: &'static str);
}

impl<B: Backend, M: DdpModel<B>> PlanNested for &&Field<'_, B, M> {
    fn __maskddp_plan_always(self, plan: &mut PlanBuilder) {
        self.0.build_plan(plan);
    }

    fn __maskddp_plan_always_if_plain(self, plan: &mut PlanBuilder, branch: &'static str) {
        plan.conditional::<B, M>(self.0, branch);
    }
}

/// Describing an always-used plain burn module: all its parameters are always.
pub trait PlanPlain {
    #[allow(missing_docs)]
    fn __maskddp_plan_always(self, plan: &mut PlanBuilder);
    #[allow(missing_docs)]
    fn __maskddp_plan_always_if_plain(self, plan: &mut PlanBuilder, branch: &'static str);
}

impl<B: Backend, M: Module<B>> PlanPlain for &Field<'_, B, M> {
    fn __maskddp_plan_always(self, plan: &mut PlanBuilder) {
        plan.always::<B, M>(self.0);
    }

    fn __maskddp_plan_always_if_plain(self, plan: &mut PlanBuilder, _branch: &'static str) {
        plan.always::<B, M>(self.0);
    }
}

/// Recording, for a parent that uses this model conditionally, the parts
/// `forward` uses always: nested models add their own always-used parts,
/// plain modules all their parameters.
///
/// A nested model planned conditional by [`PlanNested`] records nothing
/// here: the parent's uses of it record what they touch.
pub trait RecordNested {
    #[allow(missing_docs)]
    fn __maskddp_record_always(self);
    #[allow(missing_docs)]
    fn __maskddp_record_always_if_plain(self);
}

impl<B: Backend, M: DdpModel<B>> RecordNested for &&Field<'_, B, M> {
    fn __maskddp_record_always(self) {
        self.0.record_always_used();
    }

    fn __maskddp_record_always_if_plain(self) {}
}

/// See [`RecordNested`].
pub trait RecordPlain {
    #[allow(missing_docs)]
    fn __maskddp_record_always(self);
    #[allow(missing_docs)]
    fn __maskddp_record_always_if_plain(self);
}

impl<B: Backend, M: Module<B>> RecordPlain for &Field<'_, B, M> {
    fn __maskddp_record_always(self) {
        record_module::<B, M>(self.0);
    }

    fn __maskddp_record_always_if_plain(self) {
        record_module::<B, M>(self.0);
    }
}
