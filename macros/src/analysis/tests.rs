//! The analysis on parsed input: one construct per test.

use syn::{ItemImpl, ItemStruct, parse_quote};

use super::{FieldTable, FieldUsage, analyse};
use crate::ctxt::Ctxt;
use crate::model::Model;

fn model_struct() -> ItemStruct {
    parse_quote! {
        pub struct Net<B: Backend> {
            a: Linear<B>,
            b: Linear<B>,
            c: Linear<B>,
            experts: Vec<Mlp<B>>,
            width: usize,
            act: Relu,
        }
    }
}

/// `(field, verdict)` for the parameter fields, and the error messages.
fn run(imp: ItemImpl) -> (Vec<(String, FieldUsage)>, Vec<String>) {
    let strukt = model_struct();
    let cx = Ctxt::new();
    let model = Model::from_struct(&cx, &strukt).expect("model");
    let fields = FieldTable::from_model(&model);
    let mut imp = imp;
    let usage = analyse(&cx, &fields, &mut imp)
        .map(|a| a.usage)
        .unwrap_or_default();
    let errors = match cx.check() {
        Ok(()) => Vec::new(),
        Err(err) => err.into_iter().map(|e| e.to_string()).collect(),
    };
    (fields.params.iter().cloned().zip(usage).collect(), errors)
}

fn verdicts(imp: ItemImpl) -> Vec<(String, FieldUsage)> {
    let (verdicts, errors) = run(imp);
    assert!(errors.is_empty(), "unexpected errors: {errors:?}");
    verdicts
}

fn of(verdicts: &[(String, FieldUsage)], field: &str) -> FieldUsage {
    verdicts
        .iter()
        .find(|(f, _)| f == field)
        .map(|(_, u)| u.clone())
        .expect("field")
}

use FieldUsage::{Always, Never};

fn cond(text: &str) -> FieldUsage {
    FieldUsage::Conditional(text.to_owned())
}

#[test]
fn parameter_fields_mirror_burn_derive() {
    let strukt: ItemStruct = parse_quote! {
        struct S<B: Backend, M: Module<B>, T> where T: Clone {
            lin: Linear<B>,
            param: Param<Tensor<B, 1>>,
            tensor: Tensor<B, 2>,
            generic: M,
            plain_generic: T,
            opt: Option<Linear<B>>,
            n: usize,
            name: String,
            act: Relu,
            ignored: Ignored<Config>,
            #[module(skip)]
            skipped: Linear<B>,
        }
    };
    let cx = Ctxt::new();
    let model = Model::from_struct(&cx, &strukt).expect("model");
    cx.check().expect("no errors");
    let params: Vec<String> = model.param_fields().map(|f| f.name()).collect();
    assert_eq!(
        params,
        ["lin", "param", "tensor", "generic", "plain_generic", "opt"]
    );
}

#[test]
fn straight_line_is_always_and_unused_is_never() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T {
                let y = self.a.forward(x);
                self.act.forward(self.b.forward(y))
            }
        }
    });
    assert_eq!(of(&v, "a"), Always);
    assert_eq!(of(&v, "b"), Always);
    assert_eq!(of(&v, "c"), Never);
    assert_eq!(of(&v, "experts"), Never);
}

#[test]
fn if_else_branches() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, flag: bool) -> T {
                let y = if flag { self.a.forward(x) } else { self.b.forward(x) };
                if y.is_ok() { self.c.forward(y) } else { self.c.forward(y) }
            }
        }
    });
    assert_eq!(of(&v, "a"), cond("if flag"));
    assert_eq!(of(&v, "b"), cond("if !flag"));
    assert_eq!(of(&v, "c"), Always);
}

#[test]
fn if_let_and_let_chains() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, m: Option<T>) -> T {
                if let Some(m) = m && m.ok() { self.a.forward(m); }
                if let Some(k) = self.c.forward(x) { self.b.forward(k) } else { x }
            }
        }
    });
    assert_eq!(of(&v, "a"), cond("if let Some(m) = m && m.ok()"));
    assert_eq!(of(&v, "b"), cond("if let Some(k) = self.c.forward(x)"));
    assert_eq!(of(&v, "c"), Always);
}

#[test]
fn match_arms_and_guards() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, route: Route) -> T {
                let x = match route {
                    Route::A if x.big() => self.a.forward(x),
                    Route::A => self.c.forward(self.a.forward(x)),
                    _ => self.c.forward(x),
                };
                match x.kind() {
                    k if k > self.b.forward(x) => x,
                    _ => self.b.forward(x),
                }
            }
        }
    });
    assert_eq!(of(&v, "a"), cond("match route => Route::A if x.big()"));
    assert_eq!(of(&v, "c"), cond("match route => Route::A"));
    // Used in a guard of the first arm and the body of the other: every path.
    assert_eq!(of(&v, "b"), Always);
}

#[test]
fn loops_closures_and_iterators() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, n: usize) -> T {
                let mut x = x;
                for _ in 0..n { x = self.a.forward(x); }
                while x.bad() { x = self.b.forward(x); }
                let ys: Vec<_> = (0..n).map(|i| self.c.forward(x)).collect();
                loop { x = self.act.forward(x); if x.done() { break; } }
                x
            }
        }
    });
    assert_eq!(of(&v, "a"), cond("for _ in 0..n"));
    assert_eq!(of(&v, "b"), cond("while x.bad()"));
    assert_eq!(of(&v, "c"), cond("closure |i|"));
}

#[test]
fn loop_body_before_the_first_break_is_always() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T {
                let mut x = x;
                loop {
                    x = self.a.forward(x);
                    if x.done() { break; }
                    x = self.b.forward(x);
                }
                x
            }
        }
    });
    assert_eq!(of(&v, "a"), Always);
    assert_eq!(of(&v, "b"), cond("loop"));
}

#[test]
fn early_exits_make_later_uses_conditional() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, m: Option<T>) -> Result<T, E> {
                let y = self.a.forward(x);
                let z = y.check()?;
                let Some(m) = m else { return Ok(z); };
                let w = self.b.forward(m);
                if w.stop() { return Ok(w); }
                Ok(self.c.forward(w))
            }
        }
    });
    assert_eq!(of(&v, "a"), Always);
    assert_eq!(of(&v, "b"), cond("after `y.check()?`"));
    assert_eq!(of(&v, "c"), cond("after `y.check()?`"));
}

#[test]
fn dynamic_index_and_subsets_are_conditional() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, i: usize) -> T {
                let _ = self.experts.len();
                let y = self.experts[i].forward(x);
                y
            }
        }
    });
    assert_eq!(of(&v, "experts"), cond("self.experts[i]"));
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, k: usize) -> T {
                let y = self.experts.get(k).unwrap().forward(x);
                for e in self.experts.iter().take(k) { e.forward(y); }
                self.a.forward(y)
            }
        }
    });
    assert_eq!(of(&v, "experts"), cond("self.experts.get(k).unwrap()"));
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T {
                // Iterating over all of them: each is recorded as it is
                // used (the loop may stop early or run zero times).
                let mut x = x;
                for e in self.experts.iter() { x = e.forward(x); }
                x
            }
        }
    });
    assert_eq!(of(&v, "experts"), cond("for e in self.experts.iter()"));
}

#[test]
fn len_alone_is_not_a_use() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T { let _ = self.experts.len(); x }
        }
    });
    assert_eq!(of(&v, "experts"), Never);
}

#[test]
fn helper_methods_are_followed() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, flag: bool) -> T {
                let x = self.stem(x);
                if flag { Self::head(self, x) } else { x }
            }
            fn stem(&self, x: T) -> T { self.a.forward(x) }
            fn head(&self, x: T) -> T { self.b.forward(x) }
            fn unused(&self, x: T) -> T { self.c.forward(x) }
        }
    });
    assert_eq!(of(&v, "a"), Always);
    assert_eq!(of(&v, "b"), cond("if flag"));
    assert_eq!(of(&v, "c"), Never);
}

#[test]
fn recursion_reaches_a_fixpoint() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, depth: usize) -> T { self.even(x, depth) }
            fn even(&self, x: T, n: usize) -> T {
                let x = self.a.forward(x);
                if n == 0 { x } else { self.odd(x, n - 1) }
            }
            fn odd(&self, x: T, n: usize) -> T {
                let x = self.b.forward(x);
                if n == 0 { self.c.forward(x) } else { self.even(x, n - 1) }
            }
        }
    });
    assert_eq!(of(&v, "a"), Always);
    assert_eq!(of(&v, "b"), cond("if !(n == 0)"));
    assert_eq!(of(&v, "c"), cond("if n == 0"));
}

#[test]
fn cfg_statements_are_conditional() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T {
                #[cfg(feature = "aux")]
                let x = self.a.forward(x);
                x
            }
        }
    });
    assert_eq!(of(&v, "a"), cond("#[cfg(feature = \"aux\")]"));
}

#[test]
fn stated_uses_replace_the_look_inside() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T {
                #[ddp(uses(a, b))]
                let y = external(self, x);
                y
            }
        }
    });
    // Used whole on every path; which part of a nested model `external`
    // uses is not known, so only a plain module is always.
    assert!(matches!(of(&v, "a"), FieldUsage::AlwaysIfPlain(_)));
    assert!(matches!(of(&v, "b"), FieldUsage::AlwaysIfPlain(_)));
}

#[test]
fn unanalysable_uses_are_errors() {
    let (_, errors) = run(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T {
                let y = external(self, x);
                let z = self.clone();
                println!("{:?}", self.a);
                assert_eq!(x.width(), self.width);
                self.b.forward(y)
            }
        }
    });
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with("`self` is used as a whole here"));
    assert!(errors[1].contains("`clone` uses"));
    assert!(errors[2].contains("inside the macro `println!`"));
}

#[test]
fn missing_forward_is_reported() {
    let (_, errors) = run(parse_quote! {
        impl<B: Backend> Net<B> {
            fn predict(&self, x: T) -> T { x }
        }
    });
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("no `forward` method"));
}

#[test]
fn macro_rules_in_a_body_using_self_is_an_error() {
    let (_, errors) = run(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, flag: bool) -> T {
                macro_rules! head { ($x:expr) => { self.b.forward($x) } }
                // Only parameter-free fields: fine.
                macro_rules! width { () => { self.width } }
                let _ = width!();
                let y = self.a.forward(x);
                let y = self.c.forward(y);
                self.experts[0].forward(if flag { head!(y) } else { y })
            }
        }
    });
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("`#[ddp_model]` cannot follow `head!` to where it expands"),
        "{errors:#?}"
    );
}

fn errors(imp: ItemImpl) -> Vec<String> {
    run(imp).1
}

#[test]
fn async_forward_is_an_error() {
    let errs = errors(parse_quote! {
        impl<B: Backend> Net<B> {
            async fn forward(&self, x: T) -> T { self.a.forward(x) }
        }
    });
    assert!(
        errs.iter().any(|e| e.contains("`forward` is `async`")),
        "{errs:?}"
    );
}

#[test]
fn field_through_deref_is_an_error_without_cascade() {
    let errs = errors(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T { self.hidden.forward(x) }
        }
    });
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("`Net` has no field `hidden`"), "{errs:?}");
}

#[test]
fn escapes_from_forward_are_errors() {
    let errs = errors(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, xs: Vec<T>) -> impl Iterator<Item = T> + '_ {
                let _ = (self.b.forward(x), self.c.forward(x), self.experts[0].forward(x));
                xs.into_iter().map(move |x| self.a.forward(x))
            }
        }
    });
    assert!(
        errs.iter()
            .any(|e| e.contains("this iterator runs a closure")),
        "{errs:?}"
    );
    let errs = errors(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self) -> &Linear<B> {
                let _ = (self.b.forward(x), self.c.forward(x), self.experts[0].forward(x));
                &self.a
            }
        }
    });
    assert!(
        errs.iter().any(|e| e.contains("borrowed from `self.a`")),
        "{errs:?}"
    );
}

#[test]
fn threads_are_errors() {
    let errs = errors(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T) -> T {
                let _ = (self.b.forward(x), self.c.forward(x), self.experts[0].forward(x));
                std::thread::scope(|s| s.spawn(|| self.a.forward(x)).join().unwrap())
            }
        }
    });
    assert!(
        errs.iter()
            .any(|e| e.contains("`spawn` runs this on another thread")),
        "{errs:?}"
    );
}

#[test]
fn values_are_followed_to_their_consumption() {
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            fn forward(&self, x: T, mask: Vec<bool>, c: bool) -> T {
                let head = &self.a;
                let y = self.b.forward(x);
                let y = if c { head.forward(y) } else { y };
                let mut out = y;
                for (i, e) in self.experts.iter().enumerate() {
                    if mask[i] { out = e.forward(out); }
                }
                match (&self.c, c) {
                    (c, true) => c.forward(out),
                    _ => out,
                }
            }
        }
    });
    assert_eq!(of(&v, "a"), cond("if c"));
    assert_eq!(of(&v, "b"), Always);
    assert_eq!(of(&v, "c"), cond("match (&self.c, c) => (c, true)"));
    assert_eq!(of(&v, "experts"), cond("if mask[i]"));
}

#[test]
fn parameter_free_phantom_data_is_never_never_used() {
    let strukt: ItemStruct = parse_quote! {
        struct S<B: Backend> { lin: Linear<B>, marker: PhantomData<B> }
    };
    let cx = Ctxt::new();
    let model = Model::from_struct(&cx, &strukt).expect("model");
    let holds: Vec<bool> = model.fields.iter().map(|f| f.holds_params).collect();
    cx.check().expect("no errors");
    assert_eq!(holds, [true, false]);
}

#[test]
fn a_method_other_than_forward_keeps_a_nested_split_from_holding() {
    // `a` is reached on every path, on one only through `encode`: a plain
    // module's call uses all of it, a nested model's may skip what its
    // `forward` always uses.
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            pub fn forward(&self, x: Tensor<B, 2>, k: bool) -> Tensor<B, 2> {
                let x = self.b.forward(x);
                let x = if k { self.a.forward(x) } else { self.a.encode(x) };
                self.c.encode(x)
            }
        }
    });
    assert_eq!(of(&v, "b"), Always);
    assert_eq!(
        of(&v, "a"),
        FieldUsage::AlwaysIfPlain(
            "some path uses `self.a` other than through its `forward`".into()
        )
    );
    assert!(matches!(of(&v, "c"), FieldUsage::AlwaysIfPlain(_)));
}

#[test]
fn raw_method_names_are_the_plain_ones() {
    // `fn r#forward` is `forward`, and `self.r#helper()` calls `fn helper`.
    let v = verdicts(parse_quote! {
        impl<B: Backend> Net<B> {
            pub fn r#forward(&self, x: Tensor<B, 2>, k: bool) -> Tensor<B, 2> {
                let x = self.a.forward(x);
                if k { self.r#helper(x) } else { x }
            }

            fn helper(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
                self.b.forward(x)
            }
        }
    });
    assert_eq!(of(&v, "a"), Always);
    assert_eq!(of(&v, "b"), cond("if k"));
}
