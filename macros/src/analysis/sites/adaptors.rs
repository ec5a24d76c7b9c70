//! Method calls on derived values: the method-name tables, and what a call
//! of each method on a derived value is (a consumption, a read of its
//! length, or an adaptor whose result is tracked in turn).

use syn::Expr;
use syn::ext::IdentExt as _;

use super::shape::{Shape, parts, union};
use super::tracker::Tracker;
use super::{Kind, is_self};

/// Methods that read a value's length or presence, not its parameters.
const NON_USE: &[&str] = &[
    "len",
    "is_empty",
    "is_some",
    "is_none",
    "num_params",
    "count",
];
/// Methods that return part of a container field, or the same values.
const TAKE_PART: &[&str] = &[
    "iter",
    "into_iter",
    "get",
    "first",
    "last",
    "as_ref",
    "as_deref",
    "as_slice",
    "unwrap",
    "expect",
];
/// Iterator and `Option` adaptors that yield (some of) the same values.
const SAME_ITEMS: &[&str] = &[
    "iter",
    "into_iter",
    "by_ref",
    "rev",
    "skip",
    "take",
    "step_by",
    "peekable",
    "fuse",
    "cycle",
    "copied",
    "cloned",
    "as_ref",
    "as_deref",
    "as_slice",
    "collect",
    "to_vec",
    "filter",
    "skip_while",
    "take_while",
    "inspect",
    "or",
    "or_else",
    "xor",
];
/// Adaptors returning one of the values (as an `Option`).
const ONE_ITEM: &[&str] = &[
    "next",
    "next_back",
    "nth",
    "nth_back",
    "last",
    "first",
    "get",
    "peek",
    "find",
    "max_by_key",
    "min_by_key",
    "max_by",
    "min_by",
];
/// Adaptors that unwrap an `Option`.
const UNWRAP: &[&str] = &["unwrap", "expect", "unwrap_unchecked"];
/// Adaptors whose closure's result becomes the values.
const MAP: &[&str] = &["map"];
/// Adaptors whose closure returns an `Option` or iterator of the values.
const FLAT_MAP: &[&str] = &[
    "filter_map",
    "flat_map",
    "and_then",
    "map_while",
    "find_map",
];
/// Consumers that only drive the closures they are given.
const DRIVE: &[&str] = &[
    "for_each",
    "fold",
    "try_fold",
    "try_for_each",
    "any",
    "all",
    "position",
    "rposition",
    "is_some_and",
    "is_none_or",
];
/// Adaptors returning sub-slices.
const CHUNKS: &[&str] = &[
    "chunks",
    "chunks_exact",
    "rchunks",
    "windows",
    "split",
    "splitn",
];
/// Lazy adaptors: a closure given to one of them runs when the result is
/// iterated, possibly after `forward` returned.
pub(super) const LAZY: &[&str] = &[
    "map",
    "filter",
    "filter_map",
    "flat_map",
    "map_while",
    "take_while",
    "skip_while",
    "inspect",
    "scan",
    "zip",
    "chain",
    "enumerate",
    "peekable",
    "rev",
    "skip",
    "take",
    "step_by",
    "cycle",
    "fuse",
    "iter",
    "into_iter",
];

impl Tracker<'_> {
    /// An argument of an adaptor: a closure literal's parameters get
    /// `params`, and its result is returned (`track`) or consumed; any
    /// other argument is consumed.
    fn closure_arg(
        &mut self,
        arg: &mut Expr,
        params: &[Option<Shape>],
        track: bool,
    ) -> Option<Shape> {
        match arg {
            Expr::Closure(c) if track => self.closure(c, params),
            Expr::Closure(c) => {
                self.closure_consumed(c, params);
                None
            }
            other => {
                self.expr(other);
                None
            }
        }
    }

    /// A method call: a call on `self` (another method; the flow analysis
    /// follows it), an adaptor over a derived value (tracked), a read of
    /// its length (nothing), or a consumption.
    pub(super) fn method_call(&mut self, expr: &mut Expr) -> Option<Shape> {
        let Expr::MethodCall(call) = expr else {
            return None;
        };
        let method = call.method.unraw().to_string();
        self.check_threads(&method, &call.args);
        if is_self(&call.receiver) {
            call.args.iter_mut().for_each(|a| self.expr(a));
            return None;
        }
        let Some(receiver) = self.value(&mut call.receiver) else {
            // Not derived; a `map` closure may still return derived values.
            return self.adaptor(call, None, &method).flatten();
        };
        if NON_USE.contains(&method.as_str()) {
            call.args.iter_mut().for_each(|a| self.expr(a));
            return None;
        }
        if let Some(result) = self.adaptor(call, Some(&receiver), &method) {
            return result;
        }
        // A consumption: `expert.forward(x)`.
        call.args.iter_mut().for_each(|a| self.expr(a));
        self.site(expr, receiver, Kind::Call(method));
        None
    }

    /// Method `m` as an adaptor of a value of shape `receiver` (`None`: not
    /// derived): `Some(result shape)` with the arguments walked, or `None`
    /// when `m` is not an adaptor of such a value (arguments untouched).
    fn adaptor(
        &mut self,
        call: &mut syn::ExprMethodCall,
        receiver: Option<&Shape>,
        m: &str,
    ) -> Option<Option<Shape>> {
        let args = &mut call.args;
        if m == "then_some" && args.len() == 1 {
            // `(k == i).then_some(expert)`: an `Option` of the value.
            let inner = self.value(&mut args[0]);
            return Some(inner.map(|s| Shape::Seq(Box::new(s))));
        }
        if m == "then" && args.len() == 1 {
            let inner = self.closure_arg(&mut args[0], &[], true);
            return Some(inner.map(|s| Shape::Seq(Box::new(s))));
        }
        // `map` and its kin over an iterator or `Option`, derived or not:
        // the closure's result becomes the values.
        let mapped = (MAP.contains(&m) || FLAT_MAP.contains(&m)) && args.len() == 1;
        if mapped && !matches!(receiver, Some(Shape::Module(_))) {
            let item = receiver.map(Shape::item);
            let out = self.closure_arg(&mut args[0], &[item], true);
            let flat = FLAT_MAP.contains(&m);
            return Some(out.map(|s| Shape::Seq(Box::new(if flat { s.item() } else { s }))));
        }
        let Some(receiver) = receiver else {
            args.iter_mut().for_each(|a| self.expr(a));
            return Some(None);
        };
        if let Shape::Module(roots) = receiver {
            let part = Shape::Module(parts(roots));
            return match m {
                "clone" if args.is_empty() => Some(Some(receiver.clone())),
                _ if UNWRAP.contains(&m) => {
                    args.iter_mut().for_each(|a| self.expr(a));
                    Some(Some(part))
                }
                _ if TAKE_PART.contains(&m) || CHUNKS.contains(&m) => {
                    args.iter_mut().for_each(|a| self.expr(a));
                    Some(Some(Shape::Seq(Box::new(part))))
                }
                // Two slices, or an element and the slice of the rest.
                "split_at" => {
                    args.iter_mut().for_each(|a| self.expr(a));
                    Some(Some(Shape::Tuple(vec![Some(part.clone()), Some(part)])))
                }
                "split_first" | "split_last" => {
                    let pair = Shape::Tuple(vec![Some(part.clone()), Some(part)]);
                    Some(Some(Shape::Seq(Box::new(pair))))
                }
                _ => None,
            };
        }
        let Shape::Seq(item) = receiver else {
            return None;
        };
        let item = (**item).clone();
        match (m, args.len()) {
            ("fold" | "try_fold", 2) => {
                self.expr(&mut args[0]);
                self.closure_arg(&mut args[1], &[None, Some(item)], false);
                Some(None)
            }
            _ if DRIVE.contains(&m) => {
                for arg in args.iter_mut() {
                    self.closure_arg(arg, &[Some(item.clone())], false);
                }
                Some(None)
            }
            _ if SAME_ITEMS.contains(&m) => {
                let mut out = receiver.clone();
                for arg in args.iter_mut() {
                    if matches!(arg, Expr::Closure(_)) {
                        // `filter(|e| ..)` sees (a reference to) the item.
                        self.closure_arg(arg, &[Some(item.clone())], false);
                    } else if let Some(other) = self.value(arg) {
                        // `a.or(b)`: either value may come out.
                        out = out.union(other);
                    }
                }
                Some(Some(out))
            }
            _ if ONE_ITEM.contains(&m) => {
                for arg in args.iter_mut() {
                    let params = [Some(item.clone()), Some(item.clone())];
                    self.closure_arg(arg, &params, false);
                }
                Some(Some(Shape::Seq(Box::new(item))))
            }
            _ if UNWRAP.contains(&m) => {
                args.iter_mut().for_each(|a| self.expr(a));
                Some(Some(item))
            }
            ("unwrap_or", 1) => {
                let other = self.value(&mut args[0]);
                Some(union(Some(item), other))
            }
            ("enumerate", 0) => Some(Some(Shape::Seq(Box::new(Shape::Tuple(vec![
                None,
                Some(item),
            ]))))),
            ("zip", 1) => {
                let other = self.value(&mut args[0]).map(|s| s.item());
                Some(Some(Shape::Seq(Box::new(Shape::Tuple(vec![
                    Some(item),
                    other,
                ])))))
            }
            ("chain", 1) => {
                let other = self.value(&mut args[0]).map(|s| s.item());
                Some(union(
                    Some(receiver.clone()),
                    other.map(|o| Shape::Seq(Box::new(o))),
                ))
            }
            _ if CHUNKS.contains(&m) => {
                args.iter_mut().for_each(|a| self.expr(a));
                Some(Some(Shape::Seq(Box::new(receiver.clone()))))
            }
            ("split_at", 1) => {
                self.expr(&mut args[0]);
                Some(Some(Shape::Tuple(vec![
                    Some(receiver.clone()),
                    Some(receiver.clone()),
                ])))
            }
            _ => None,
        }
    }
}
