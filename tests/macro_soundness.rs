//! Soundness of `#[ddp_model]`'s usage analysis on awkward code, in both
//! directions and for every class of parameter: for each construct, an
//! instrumented forward runs under a usage scope with autodiff, and
//!
//! - every parameter that gets a gradient is planned always or recorded
//!   (missing one is the runtime's "the plan missed a use" error);
//! - every parameter planned always gets a gradient (an "always" the run
//!   can skip costs bytes and says something false in the plan);
//! - every recorded conditional parameter gets a gradient, except in the
//!   cases marked `loose`, whose construct is known to over-record: a value
//!   handed to a function or out of a helper, a projection into a nested
//!   model, a method outside the nested model's `#[ddp_model]` block, a
//!   macro naming a binding. Those record the whole value (bytes only: the
//!   reducer's result follows the real gradients).

// The constructs under test are written the way users write them.
#![allow(
    clippy::iter_nth,
    clippy::needless_borrow,
    clippy::while_let_on_iterator,
    clippy::get_first
)]

mod common;

use std::collections::BTreeSet;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use common::check_plan;
use maskddp::{DdpModel, Usage, record_usage};

type B = Autodiff<Flex>;
const W: usize = 3;
const N: usize = 4;

/// Builds any field type the cases use.
pub trait Make {
    fn make(device: &burn::tensor::Device<B>) -> Self;
}

impl Make for Linear<B> {
    fn make(device: &burn::tensor::Device<B>) -> Self {
        LinearConfig::new(W, W).init(device)
    }
}

impl Make for Param<Tensor<B, 2>> {
    fn make(device: &burn::tensor::Device<B>) -> Self {
        Param::from_tensor(Tensor::ones([W, W], device))
    }
}

impl<M: Make> Make for Option<M> {
    fn make(device: &burn::tensor::Device<B>) -> Self {
        Some(M::make(device))
    }
}

impl<M: Make> Make for Vec<M> {
    fn make(device: &burn::tensor::Device<B>) -> Self {
        (0..N).map(|_| M::make(device)).collect()
    }
}

fn input() -> Tensor<B, 2> {
    Tensor::ones([2, W], &Default::default())
}

fn has_grad(grads: &GradientsParams, id: burn::module::ParamId, dims: usize) -> bool {
    match dims {
        1 => grads.get::<Flex, 1>(id).is_some(),
        2 => grads.get::<Flex, 2>(id).is_some(),
        d => panic!("{d}-dimensional parameter in a test model"),
    }
}

/// Runs `forward` in a usage scope, backpropagates, and checks both
/// directions (see the module docs); with `exact`, also that nothing
/// conditional was recorded without getting a gradient. Returns how many
/// conditional parameters got a gradient (to show the case is not vacuous).
fn check<M: DdpModel<B> + AutodiffModule<B>>(
    model: &M,
    what: &str,
    exact: bool,
    forward: impl FnOnce() -> Tensor<B, 2>,
) -> usize {
    let (out, record) = record_usage(forward);
    let grads = GradientsParams::from_grads(out.sum().backward(), model);
    let plan = model.usage_plan();
    assert!(plan.undescribed().is_empty(), "{what}\n{}", plan.table());
    let check = check_plan(&plan, record.ids(), |slot| {
        has_grad(&grads, slot.id, slot.shape.len())
    });
    check.assert_holds(what, exact, &plan);
    check.conditional_with_grad
}

/// One model per construct: `fields` are built with [`Make`], `forward` is
/// `fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2>`,
/// run for every `c` and every `i < N`; some run must give a conditional
/// parameter a gradient.
macro_rules! case {
    (loose $($rest:tt)*) => { case!(@exact false, $($rest)*); };
    ($test:ident, $($rest:tt)*) => { case!(@exact true, $test, $($rest)*); };
    (@exact $exact:expr, $(#[$meta:meta])* $test:ident, { $($field:ident : $ty:ty),* $(,)? }, { $($body:tt)* }) => {
        mod $test {
            #[allow(unused_imports)]
            use super::*;

            #[maskddp::ddp_model]
            #[derive(Module, Debug)]
            pub struct Net<B: Backend> {
                $($field: $ty,)*
            }

            #[maskddp::ddp_model]
            impl<B: Backend> Net<B> {
                $($body)*
            }

            #[test]
            $(#[$meta])*
            fn $test() {
                let device = Default::default();
                let model: Net<super::B> = Net { $($field: Make::make(&device),)* };
                let mut exercised = 0;
                for c in [false, true] {
                    for i in 0..N {
                        let what = format!("{} (c = {c}, i = {i})", stringify!($test));
                        exercised += check(&model, &what, $exact, || model.forward(input(), c, i));
                    }
                }
                assert!(exercised > 0, "no conditional parameter got a gradient");
            }
        }
    };
}

case!(alias_through_local, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if i > 0 {
            let h = &self.head;
            if c {
                return h.forward(y);
            }
        }
        y
    }
});

case!(alias_in_match_binding, { trunk: Linear<B>, opt: Option<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if i > 1 {
            match &self.opt {
                Some(h) if c => h.forward(y),
                _ => y,
            }
        } else {
            y
        }
    }
});

case!(if_let_some_as_ref, { trunk: Linear<B>, opt: Option<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if c && let Some(h) = self.opt.as_ref() {
            return h.forward(y);
        }
        y
    }
});

case!(closure_called_conditionally, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let head = |y: Tensor<B, 2>| self.head.forward(y);
        let y = self.trunk.forward(x);
        if c { head(y) } else { y }
    }
});

case!(option_map_on_as_ref, { trunk: Linear<B>, opt: Option<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if c {
            self.opt.as_ref().map(|h| h.forward(y.clone())).unwrap_or(y)
        } else {
            y
        }
    }
});

case!(iter_zip_filter_map, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let keep = [c, !c, true, false];
        self.experts
            .iter()
            .zip(keep)
            .enumerate()
            .filter(|(k, (_, keep))| *keep && *k <= i)
            .map(|(_, (e, _))| e.forward(x.clone()))
            .fold(x.clone(), |a, b| a + b)
    }
});

case!(iter_zip_slices, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        if c {
            return x;
        }
        let ks = [0usize, 1, 2, 3];
        let mut y = x;
        for (e, k) in self.experts.iter().zip(ks.iter()) {
            if *k == i {
                y = e.forward(y);
            }
        }
        y
    }
});

case!(iter_skip, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, _c: bool, i: usize) -> Tensor<B, 2> {
        self.experts.iter().skip(i).fold(x, |y, e| e.forward(y))
    }
});

case!(iter_rev_take_one, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let k = usize::from(c);
        self.experts.iter().rev().take(k).fold(x, |y, e| e.forward(y))
    }
});

case!(iter_nth_and_last, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let e = if c { self.experts.iter().nth(i) } else { self.experts.iter().last() };
        e.unwrap().forward(x)
    }
});

case!(iter_enumerate_find, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, _c: bool, i: usize) -> Tensor<B, 2> {
        self.experts
            .iter()
            .enumerate()
            .find(|(k, _)| *k == i)
            .map(|(_, e)| e.forward(x.clone()))
            .unwrap_or(x)
    }
});

case!(first_and_last, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        if c {
            self.experts.first().unwrap().forward(x)
        } else {
            self.experts.last().unwrap().forward(x)
        }
    }
});

case!(split_at, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        if !c {
            return x;
        }
        let (front, back) = self.experts.split_at(i);
        match front.last() {
            Some(e) => e.forward(x),
            None => back[0].forward(x),
        }
    }
});

case!(chunks_nth, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        if c {
            return x;
        }
        let chunk = self.experts.chunks(2).nth(i % 2).unwrap();
        chunk[0].forward(x)
    }
});

case!(get_single_index, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, _c: bool, i: usize) -> Tensor<B, 2> {
        match self.experts.get(i) {
            Some(e) => e.forward(x),
            None => x,
        }
    }
});

case!(get_range_literal, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, _c: bool, i: usize) -> Tensor<B, 2> {
        self.experts.get(i..N).unwrap().iter().fold(x, |y, e| e.forward(y))
    }
});

case!(slice_by_range_index, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        if c {
            return x;
        }
        let y = self.experts[i..N].iter().fold(x, |y, e| e.forward(y));
        (&self.experts[..=i / 2]).iter().fold(y, |y, e| e.forward(y))
    }
});

case!(for_with_break, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        if i == 0 {
            return x;
        }
        let mut y = x;
        for (k, e) in self.experts.iter().enumerate() {
            if k > i {
                break;
            }
            y = e.forward(y);
        }
        for e in &self.experts {
            if c {
                break;
            }
            y = e.forward(y);
        }
        y
    }
});

case!(helper_taking_element_ref, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        if c { self.apply(&self.experts[i], x) } else { x }
    }

    fn apply(&self, e: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        e.forward(x)
    }
});

case!(self_method_called_from_closure, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let run = |y| self.head_of(y);
        let y = self.trunk.forward(x);
        if c { run(y) } else { y }
    }

    fn head_of(&self, y: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(y)
    }
});

case!(recursion_with_depth, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, _c: bool, i: usize) -> Tensor<B, 2> {
        self.deep(x, i)
    }

    fn deep(&self, x: Tensor<B, 2>, depth: usize) -> Tensor<B, 2> {
        if depth == 0 {
            return x;
        }
        self.deep(self.experts[depth].forward(x), depth - 1)
    }
});

case!(question_mark_in_helper, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        self.maybe(y.clone(), c).unwrap_or(y)
    }

    fn maybe(&self, y: Tensor<B, 2>, c: bool) -> Option<Tensor<B, 2>> {
        c.then_some(())?;
        Some(self.head.forward(y))
    }
});

case!(let_else_early_return, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        let true = c else {
            return y;
        };
        self.head.forward(y)
    }
});

case!(field_in_let_else_else, { head: Linear<B>, experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let Some(k) = c.then_some(i) else {
            return self.head.forward(x);
        };
        self.experts[k].forward(x)
    }
});

case!(labeled_breaks, { head: Linear<B>, experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = 'block: {
            if c {
                break 'block x;
            }
            self.head.forward(x)
        };
        let mut y = y;
        'outer: for (k, e) in self.experts.iter().enumerate() {
            for _ in 0..2 {
                if k == i {
                    break 'outer;
                }
            }
            y = e.forward(y);
        }
        y
    }
});

case!(field_in_match_guard, { trunk: Linear<B>, gate: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        match i {
            0 => y,
            _ if c && self.gate.forward(y.clone()).sum().into_scalar().to_f64() > -1e9 => {
                self.gate.forward(y)
            }
            1 => match c {
                true if i == 1 => self.head.forward(y),
                _ => y,
            },
            _ => y,
        }
    }
});

case!(clone_then_use, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if c {
            let h = self.head.clone();
            h.forward(y)
        } else {
            y
        }
    }
});

case!(helper_returning_field_ref, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        if c { self.pick(i).forward(x) } else { x }
    }

    fn pick(&self, i: usize) -> &Linear<B> {
        &self.experts[i]
    }
});

case!(loose helper_returning_lazy_iterator, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, _c: bool, i: usize) -> Tensor<B, 2> {
        self.active(i).fold(x, |y, e| e.forward(y))
    }

    fn active(&self, from: usize) -> impl Iterator<Item = &Linear<B>> + '_ {
        self.experts.iter().skip(from)
    }
});

case!(loose ufcs_and_reference_uses, { trunk: Linear<B>, head: Linear<B>, experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if !c {
            return y;
        }
        let y = Linear::forward(&self.head, y);
        let experts: &Vec<Linear<B>> = &self.experts;
        <[Linear<B>]>::iter(experts).take(i).fold(y, |y, e| e.forward(y))
    }
});

case!(param_field_conditional, { trunk: Linear<B>, scale: Param<Tensor<B, 2>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if c { y.matmul(self.scale.val()) } else { y }
    }
});

case!(immediately_called_closure_and_collect, { trunk: Linear<B>, experts: Vec<Linear<B>> }, {
    #[allow(clippy::redundant_closure_call)] // the construct under test
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        let outs: Vec<_> = (0..i).map(|k| self.experts[k].forward(y.clone())).collect();
        let y = outs.into_iter().fold(y, |a, b| a + b);
        (|| if c { self.experts[0].forward(y.clone()) } else { y.clone() })()
    }
});

// The forms of issue "exact usage": a value taken on every path but
// consumed only on some is recorded where it is consumed.

fn routed(c: bool, i: usize, k: usize) -> bool {
    (k + usize::from(c)) % N == i
}

case!(loop_idiom_enumerate_if, { trunk: Linear<B>, experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let x = self.trunk.forward(x);
        let mask: Vec<bool> = (0..N).map(|k| routed(c, i, k)).collect();
        let mut out = x.clone();
        for (k, expert) in self.experts.iter().enumerate() {
            if mask[k] {
                out = out + expert.forward(x.clone());
            }
        }
        out
    }
});

case!(loop_idiom_continue, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let mut out = x.clone();
        for (k, expert) in self.experts.iter().enumerate() {
            if !routed(c, i, k) {
                continue;
            }
            out = out + expert.forward(x.clone());
        }
        out
    }
});

case!(reference_held_then_used_conditionally, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let head = &self.head;
        let y = self.trunk.forward(x);
        if c { head.forward(y) } else { y }
    }
});

case!(tuple_scrutinee_bindings, { a: Linear<B>, b: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        match (&self.a, &self.b, c) {
            (a, _, true) if i > 0 => a.forward(x),
            (_, b, false) => b.forward(x),
            _ => x,
        }
    }
});

case!(option_filter_map, { trunk: Linear<B>, proj: Option<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        self.proj.as_ref().filter(|_| c).map(|p| p.forward(y.clone())).unwrap_or(y)
    }
});

case!(zip_with_shorter_partner, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let gates: Vec<bool> = (0..i).map(|k| c || k == 0).collect();
        let mut y = x;
        for (e, gate) in self.experts.iter().zip(gates.iter()) {
            if *gate {
                y = e.forward(y);
            }
        }
        y
    }
});

case!(filter_map_then_some, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        self.experts
            .iter()
            .enumerate()
            .filter_map(|(k, e)| routed(c, i, k).then_some(e))
            .fold(x, |y, e| e.forward(y))
    }
});

case!(take_while_for_each, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let mut y = x;
        self.experts
            .iter()
            .enumerate()
            .take_while(|(k, _)| *k < i || c)
            .for_each(|(_, e)| y = e.forward(y.clone()));
        y
    }
});

case!(while_let_over_held_iterator, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let mut it = self.experts.iter();
        let mut y = x;
        let mut k = 0;
        while let Some(e) = it.next() {
            if k == i && c {
                break;
            }
            if k % 2 == usize::from(c) {
                y = e.forward(y);
            }
            k += 1;
        }
        y
    }
});

case!(let_else_and_unwrap_or, { fallback: Linear<B>, experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let Some(e) = self.experts.get(i + usize::from(c)) else {
            return x;
        };
        let y = e.forward(x);
        let pick = if c { None } else { self.experts.get(0) };
        pick.unwrap_or(&self.fallback).forward(y)
    }
});

case!(rebound_reference, { a: Linear<B>, b: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let mut h = &self.a;
        if c {
            h = &self.b;
        }
        h.forward(x)
    }
});

case!(closure_capturing_binding, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let head = &self.head;
        let run = |y: Tensor<B, 2>| head.forward(y);
        let y = self.trunk.forward(x);
        if c { run(y) } else { y }
    }
});

case!(min_by_key_then_map, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let target = if c { i } else { N - 1 - i };
        self.experts
            .iter()
            .enumerate()
            .min_by_key(|(k, _)| k.abs_diff(target))
            .map(|(_, e)| e.forward(x.clone()))
            .unwrap_or(x)
    }
});

case!(range_held_in_variable, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let range = i..N;
        let y = if c { self.experts[range.clone()].iter().fold(x, |y, e| e.forward(y)) } else { x };
        match self.experts.get(range) {
            Some(tail) if !c => tail[0].forward(y),
            _ => y,
        }
    }
});

case!(loose helper_returning_slice_iter, { experts: Vec<Linear<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let mut it = self.all();
        if c { it.nth(i).unwrap().forward(x) } else { x }
    }

    fn all(&self) -> std::slice::Iter<'_, Linear<B>> {
        self.experts.iter()
    }
});

case!(loose macro_naming_binding, { trunk: Linear<B>, head: Linear<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let head = &self.head;
        let y = self.trunk.forward(x);
        if c {
            assert!(!format!("{head:?}").is_empty());
            head.forward(y)
        } else {
            y
        }
    }
});

/// A nested `#[ddp_model]` with a conditional part of its own.
pub mod child {
    use super::*;

    #[maskddp::ddp_model]
    #[derive(Module, Debug)]
    pub struct Child<B: Backend> {
        pub stem: Linear<B>,
        pub head: Linear<B>,
    }

    #[maskddp::ddp_model]
    impl<B: Backend> Child<B> {
        pub fn forward(&self, x: Tensor<B, 2>, c: bool) -> Tensor<B, 2> {
            let y = self.stem.forward(x);
            if c { self.head.forward(y) } else { y }
        }
    }

    impl Make for Child<B> {
        fn make(device: &burn::tensor::Device<B>) -> Self {
            Child {
                stem: Make::make(device),
                head: Make::make(device),
            }
        }
    }
}
use child::Child;

case!(nested_child_forward, { trunk: Linear<B>, child: Child<B>, kids: Vec<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.child.forward(self.trunk.forward(x), c);
        if i > 1 { self.kids[i].forward(y, !c) } else { y }
    }
});

// The parent reaches into the child's field: the child's own instrumentation
// never runs, so the parent must record the child's parameters itself.
case!(nested_child_field_projection, { trunk: Linear<B>, child: Child<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.child.forward(self.trunk.forward(x), false);
        if c { self.child.head.forward(y) } else { y }
    }
});

case!(loose nested_children_element_projection, { trunk: Linear<B>, kids: Vec<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if c { self.kids[i].head.forward(y) } else { y }
    }
});

impl<B: Backend> Child<B> {
    /// Not in the child's `#[ddp_model]` impl block: not instrumented.
    pub fn plain_method(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.head.forward(x)
    }
}

// A nested model reached through an alias, or through one of its methods
// outside its `#[ddp_model]` impl block: its own instrumentation never runs,
// so the parent records all of its parameters.
case!(nested_child_projection_through_alias, { trunk: Linear<B>, child: Child<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.child.forward(self.trunk.forward(x), false);
        let child = &self.child;
        if c { child.head.forward(y) } else { y }
    }
});

case!(nested_child_unannotated_method, { trunk: Linear<B>, child: Child<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.child.forward(self.trunk.forward(x), false);
        if c { self.child.plain_method(y) } else { y }
    }
});

// Reached on every path, but on one only through a method outside its
// `#[ddp_model]` block, which may skip what the child's `forward` always
// uses: all of the child is conditional, recorded whole there.
case!(loose nested_child_on_every_path_not_always_through_forward, { trunk: Linear<B>, child: Child<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if c { self.child.forward(y, false) } else { self.child.plain_method(y) }
    }
});

fn run_child_head<B: Backend>(child: &Child<B>, y: Tensor<B, 2>, c: bool) -> Tensor<B, 2> {
    if c {
        child.plain_method(y)
    } else {
        child.forward(y, false)
    }
}

case!(loose nested_child_passed_to_free_function, { trunk: Linear<B>, child: Child<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        run_child_head(&self.child, self.trunk.forward(x), c)
    }
});

case!(loose nested_children_alias_and_iteration, { trunk: Linear<B>, kids: Vec<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        let kid = &self.kids[i];
        let y = if c { kid.plain_method(y) } else { y };
        match self.kids.get(N - 1 - i) {
            Some(k) if !c => k.head.forward(y),
            _ => y,
        }
    }
});

// Bindings of `match`/`if let` on a nested model: calls of its instrumented
// methods keep its split; any other use of a binding records it in full.
case!(loose nested_child_binding_projection, { trunk: Linear<B>, opt: Option<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        match &self.opt {
            Some(k) if c => k.head.forward(y),
            Some(k) => k.forward(y, false),
            None => y,
        }
    }
});

case!(loose nested_child_binding_passed_on, { trunk: Linear<B>, opt: Option<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        if let Some(k) = &self.opt { run_child_head(k, y, c) } else { y }
    }
});

case!(loose nested_child_binding_unannotated_method, { trunk: Linear<B>, opt: Option<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        match self.opt {
            Some(ref k) if c => k.plain_method(y),
            Some(ref k) => k.forward(y, false),
            None => y,
        }
    }
});

case!(loose nested_child_binding_shadowed, { trunk: Linear<B>, opt: Option<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        match &self.opt {
            Some(k) => {
                let y = k.forward(y, false);
                let k = &k.head;
                if c { k.forward(y) } else { y }
            }
            None => y,
        }
    }
});

case!(loose nested_whole_binding, { trunk: Linear<B>, child: Child<B> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, _i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        match &self.child {
            k if c => Child::plain_method(k, y),
            k => k.forward(y, false),
        }
    }
});

case!(nested_children_loop_idiom, { trunk: Linear<B>, kids: Vec<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let x = self.trunk.forward(x);
        let mut out = x.clone();
        for (k, kid) in self.kids.iter().enumerate() {
            if routed(c, i, k) {
                out = out + kid.forward(x.clone(), c);
            }
        }
        out
    }
});

case!(nested_child_option_map, { trunk: Linear<B>, opt: Option<Child<B>> }, {
    pub fn forward(&self, x: Tensor<B, 2>, c: bool, i: usize) -> Tensor<B, 2> {
        let y = self.trunk.forward(x);
        self.opt.as_ref().filter(|_| i > 1).map(|k| k.forward(y.clone(), c)).unwrap_or(y)
    }
});

/// The recorded ids of one `forward`, as parameter paths.
fn recorded_paths<M: DdpModel<B>>(
    model: &M,
    forward: impl FnOnce() -> Tensor<B, 2>,
) -> Vec<String> {
    let (_, record) = record_usage(forward);
    let recorded: BTreeSet<_> = record.ids().iter().copied().collect();
    let plan = model.usage_plan();
    plan.layout()
        .slots()
        .iter()
        .filter(|slot| recorded.contains(&slot.id))
        .map(|slot| slot.path.clone())
        .collect()
}

/// A nested model called through one of its instrumented methods keeps its
/// exact split: the parent records only the child's conditional parts that
/// ran (and, when the child is itself used conditionally, its always part).
mod nested_split_kept {
    use super::*;

    #[maskddp::ddp_model]
    #[derive(Module, Debug)]
    pub struct Net<B: Backend> {
        trunk: Linear<B>,
        child: Child<B>,
        maybe: Child<B>,
        opt: Option<Child<B>>,
    }

    #[maskddp::ddp_model]
    impl<B: Backend> Net<B> {
        pub fn forward(&self, x: Tensor<B, 2>, c: bool, d: bool) -> Tensor<B, 2> {
            let y = self.child.forward(self.trunk.forward(x), c);
            let y = if d { self.maybe.forward(y, c) } else { y };
            match &self.opt {
                Some(k) => k.forward(y, c && d),
                None => y,
            }
        }
    }

    #[test]
    fn nested_child_direct_call_keeps_split() {
        let device = Default::default();
        let model: Net<super::B> = Net {
            trunk: Make::make(&device),
            child: Make::make(&device),
            maybe: Make::make(&device),
            opt: Make::make(&device),
        };
        let plan = model.usage_plan();
        let always: Vec<_> = plan
            .layout()
            .slots()
            .iter()
            .zip(plan.usage())
            .filter(|(_, usage)| **usage == Usage::Always)
            .map(|(slot, _)| slot.path.clone())
            .collect();
        assert_eq!(
            always,
            [
                "trunk.weight",
                "trunk.bias",
                "child.stem.weight",
                "child.stem.bias",
            ],
            "{}",
            plan.table()
        );
        // `opt` is used only in its `Some` arm: conditional, and its
        // always-used part is recorded whenever that arm calls it.
        let run = |c, d| recorded_paths(&model, || model.forward(input(), c, d));
        assert_eq!(run(false, false), ["opt.stem.weight", "opt.stem.bias"]);
        assert_eq!(
            run(true, false),
            [
                "child.head.weight",
                "child.head.bias",
                "opt.stem.weight",
                "opt.stem.bias"
            ]
        );
        assert_eq!(
            run(false, true),
            [
                "maybe.stem.weight",
                "maybe.stem.bias",
                "opt.stem.weight",
                "opt.stem.bias"
            ]
        );
        assert_eq!(
            run(true, true),
            [
                "child.head.weight",
                "child.head.bias",
                "maybe.stem.weight",
                "maybe.stem.bias",
                "maybe.head.weight",
                "maybe.head.bias",
                "opt.stem.weight",
                "opt.stem.bias",
                "opt.head.weight",
                "opt.head.bias",
            ]
        );
    }
}
