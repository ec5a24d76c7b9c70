//! Writes `models.rs`: random `#[ddp_model]` models whose `forward` bodies
//! come from a grammar of the constructs people route with — `if`/`else`,
//! `match`, early `return`, `let … else`, expert loops with `break` and
//! `continue`, `while let` over a held iterator, counted `loop`/`while` with
//! an index variable, iterator adaptors (`enumerate`, `filter`, `filter_map`,
//! `skip`, `take`, `rev`, `take_while`, `zip` with a shorter partner, `fold`),
//! `Option` adaptors and `match` guards, references held in locals, closures,
//! helper methods, and nested `#[ddp_model]` children.
//!
//! Every parameter use feeds the running value `y`, which every exit returns,
//! so a parameter gets a gradient exactly when its use runs: the test can
//! hold the plan and the records to autodiff's real gradients.
//!
//! The output is checked in; `tests/generated_programs_source.rs` fails when
//! it differs from what this generator writes. Regenerate with
//! `MASKDDP_BLESS=1 cargo test --test generated_programs_source`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::shared::Rng;

/// How many models the file holds.
pub const MODELS: u64 = 300;
/// Elements of every `Vec` field.
pub const N: usize = 4;
/// Length of the routing input `r` every `forward` takes.
pub const R: usize = 8;
/// Routing values are drawn from `0..R_MAX`.
pub const R_MAX: usize = 6;

/// A parameter field of a generated model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    /// `lK: Linear<B>`.
    Lin(u8),
    /// `p: Param<Tensor<B, 2>>`.
    Param,
    /// `ex: Vec<Linear<B>>`.
    Experts,
    /// `opt: Option<Linear<B>>` (`None` in some models).
    Opt,
    /// `ch: Child<B>`, a nested `#[ddp_model]`.
    Child,
    /// `kids: Vec<Child<B>>`.
    Kids,
    /// `oc: Option<Child<B>>` (`None` in some models).
    OptChild,
}

impl Field {
    fn decl(self) -> String {
        match self {
            Field::Lin(k) => format!("l{k}: Linear<B>"),
            Field::Param => "p: Param<Tensor<B, 2>>".into(),
            Field::Experts => "ex: Vec<Linear<B>>".into(),
            Field::Opt => "opt: Option<Linear<B>>".into(),
            Field::Child => "ch: Child<B>".into(),
            Field::Kids => "kids: Vec<Child<B>>".into(),
            Field::OptChild => "oc: Option<Child<B>>".into(),
        }
    }

    fn name(self) -> String {
        match self {
            Field::Lin(k) => format!("l{k}"),
            Field::Param => "p".into(),
            Field::Experts => "ex".into(),
            Field::Opt => "opt".into(),
            Field::Child => "ch".into(),
            Field::Kids => "kids".into(),
            Field::OptChild => "oc".into(),
        }
    }
}

/// What a local binding refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `&Linear<B>`: `b.forward(y)`.
    Linear,
    /// A `&Child<B>`: `b.forward(y, c)`.
    Child,
    /// A closure `Fn(Tensor) -> Tensor`: `b(y)`.
    Closure,
}

#[derive(Debug, Clone)]
struct Binding {
    name: String,
    kind: Kind,
    /// The field its uses consume.
    field: Field,
}

/// Where a statement is generated.
#[derive(Debug, Clone, Default)]
struct Scope {
    bindings: Vec<Binding>,
    /// Index variables of enclosing loops (usable in conditions).
    indices: Vec<String>,
    /// Inside a loop body: `break`/`continue` are allowed.
    in_loop: bool,
    /// Inside a helper method, or the model has none to call.
    no_helpers: bool,
}

struct Gen {
    rng: Rng,
    fields: Vec<Field>,
    consumed: BTreeSet<Field>,
    fresh: usize,
    helpers: Vec<String>,
    /// Helpers some statement calls.
    called: BTreeSet<String>,
    /// Whether some statement hands a layer to the `apply` helper.
    apply: bool,
    /// Whether some statement calls the child's uninstrumented method, which
    /// records all of the child (over-recording: bytes, not semantics).
    loose: bool,
}

fn indent(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|line| format!("    {line}"))
        .collect()
}

impl Gen {
    fn has(&self, field: Field) -> bool {
        self.fields.contains(&field)
    }

    fn name(&mut self, prefix: &str) -> String {
        self.fresh += 1;
        format!("{prefix}{}", self.fresh)
    }

    fn routing(&mut self) -> String {
        format!("r[{}]", self.rng.below(R))
    }

    /// A boolean over the routing input and the enclosing loop indices; each
    /// comparison holds with a probability between 1/6 and 5/6.
    fn cond(&mut self, scope: &Scope, depth: u32) -> String {
        let pick = self.rng.below(if depth > 0 { 9 } else { 7 });
        match pick {
            0 => format!("{} % 2 == 0", self.routing()),
            1 => format!("{} > {}", self.routing(), self.rng.below(R_MAX - 1)),
            2 => format!("{} == {}", self.routing(), self.rng.below(R_MAX)),
            3 => format!("{} < {}", self.routing(), 1 + self.rng.below(R_MAX - 1)),
            4 => format!("({} + {}) % 3 != 0", self.routing(), self.rng.below(3)),
            5 | 6 if !scope.indices.is_empty() => {
                let k = scope.indices[self.rng.below(scope.indices.len())].clone();
                match self.rng.below(3) {
                    0 => format!("{k} == {} % {N}", self.routing()),
                    1 => format!("{k} % 2 == {} % 2", self.routing()),
                    _ => format!("{k} < {} % {N}", self.routing()),
                }
            }
            5 | 6 => format!("{} != {}", self.routing(), self.rng.below(R_MAX)),
            7 => format!(
                "{} && {}",
                self.cond(scope, depth - 1),
                self.cond(scope, depth - 1)
            ),
            _ => format!(
                "({} || !({}))",
                self.cond(scope, depth - 1),
                self.cond(scope, depth - 1)
            ),
        }
    }

    fn index(&mut self) -> String {
        format!("{} % {N}", self.routing())
    }

    /// One use of a binding that feeds `y`.
    fn use_binding(&mut self, scope: &Scope, b: &Binding) -> String {
        self.consumed.insert(b.field);
        match b.kind {
            Kind::Linear => format!("y = {}.forward(y).tanh();", b.name),
            Kind::Child => {
                let c = self.cond(scope, 0);
                format!("y = {}.forward(y, {c}).tanh();", b.name)
            }
            Kind::Closure => format!("y = {}(y);", b.name),
        }
    }

    /// One use of a field (or of a binding in scope) that feeds `y`.
    fn atom(&mut self, scope: &Scope) -> Vec<String> {
        if !scope.bindings.is_empty() && self.rng.chance(0.4) {
            let b = scope.bindings[self.rng.below(scope.bindings.len())].clone();
            return vec![self.use_binding(scope, &b)];
        }
        let field = self.fields[self.rng.below(self.fields.len())];
        self.consumed.insert(field);
        match field {
            Field::Lin(k) => match self.rng.below(6) {
                0 => vec![format!("y = y.clone() + self.l{k}.forward(y).tanh();")],
                1 => {
                    self.apply = true;
                    vec![format!("y = self.apply(&self.l{k}, y);")]
                }
                2 => {
                    let f = self.name("run");
                    let c = self.cond(scope, 1);
                    vec![
                        format!("let {f} = |m: &Linear<B>, t: Tensor<B, 2>| m.forward(t).tanh();"),
                        format!("if {c} {{"),
                        format!("    y = {f}(&self.l{k}, y);"),
                        "}".into(),
                    ]
                }
                _ => vec![format!("y = self.l{k}.forward(y).tanh();")],
            },
            Field::Param => vec!["y = y.matmul(self.p.val()).tanh();".into()],
            Field::Experts => match self.rng.below(4) {
                0 => {
                    let i = self.routing();
                    vec![
                        format!("if let Some(e) = self.ex.get({i} % {}) {{", N + 2),
                        "    y = e.forward(y).tanh();".into(),
                        "}".into(),
                    ]
                }
                1 => {
                    let i = self.index();
                    vec![format!("y = self.ex[{i}].forward(y).tanh();")]
                }
                2 => {
                    let (i, j) = (self.index(), self.index());
                    vec![format!(
                        "y = self.ex[{i}].forward(y.clone()).tanh() + self.ex[{j}].forward(y).tanh();"
                    )]
                }
                _ => {
                    let e = self.name("e");
                    let i = self.routing();
                    vec![
                        format!("let Some({e}) = self.ex.get({i} % {}) else {{", N + 1),
                        "    return y;".into(),
                        "};".into(),
                        format!("y = {e}.forward(y).tanh();"),
                    ]
                }
            },
            Field::Opt => match self.rng.below(4) {
                0 => vec![
                    "if let Some(h) = &self.opt {".into(),
                    "    y = h.forward(y).tanh();".into(),
                    "}".into(),
                ],
                1 => {
                    let c = self.cond(scope, 0);
                    vec![
                        "match &self.opt {".into(),
                        format!("    Some(h) if {c} => y = h.forward(y).tanh(),"),
                        "    _ => {}".into(),
                        "}".into(),
                    ]
                }
                2 => {
                    let c = self.cond(scope, 0);
                    vec![format!(
                        "y = self.opt.as_ref().filter(|_| {c}).map(|h| h.forward(y.clone()).tanh()).unwrap_or(y);"
                    )]
                }
                _ => vec![
                    "y = self.opt.as_ref().map(|h| h.forward(y.clone()).tanh()).unwrap_or(y);"
                        .into(),
                ],
            },
            Field::Child => {
                if self.rng.chance(0.3) {
                    // A method outside the child's `#[ddp_model]` block.
                    self.loose = true;
                    return vec!["y = self.ch.head_only(y).tanh();".into()];
                }
                let c = self.cond(scope, 1);
                vec![format!("y = self.ch.forward(y, {c}).tanh();")]
            }
            Field::Kids => {
                let (i, c) = (self.index(), self.cond(scope, 0));
                vec![format!("y = self.kids[{i}].forward(y, {c}).tanh();")]
            }
            Field::OptChild => {
                let c = self.cond(scope, 0);
                if self.rng.chance(0.5) {
                    vec![
                        "if let Some(oc) = &self.oc {".into(),
                        format!("    y = oc.forward(y, {c}).tanh();"),
                        "}".into(),
                    ]
                } else {
                    vec![format!(
                        "y = self.oc.as_ref().map(|oc| oc.forward(y.clone(), {c}).tanh()).unwrap_or(y);"
                    )]
                }
            }
        }
    }

    /// A loop over `ex` or `kids` whose body uses the element.
    fn element_loop(&mut self, scope: &Scope, depth: u32) -> Vec<String> {
        let over_kids =
            self.has(Field::Kids) && (!self.has(Field::Experts) || self.rng.chance(0.3));
        let (field, kind, container) = if over_kids {
            (Field::Kids, Kind::Child, "kids")
        } else {
            (Field::Experts, Kind::Linear, "ex")
        };
        self.consumed.insert(field);
        let e = self.name("e");
        let k = self.name("k");
        let use_e = match kind {
            Kind::Child => {
                let c = self.cond(scope, 0);
                format!("{e}.forward(y, {c}).tanh()")
            }
            _ => format!("{e}.forward(y).tanh()"),
        };
        let element = Binding {
            name: e.clone(),
            kind,
            field,
        };
        let mut inner = scope.clone();
        inner.in_loop = true;
        inner.indices.push(k.clone());
        let folded = |acc: &str| use_e.replacen("(y", &format!("({acc}"), 1);
        match self.rng.below(16) {
            // for (k, e) in iter().enumerate() { body with break/continue }
            0..=2 => {
                let mut body = Vec::new();
                if self.rng.chance(0.5) {
                    let c = self.cond(&inner, 1);
                    let exit = if self.rng.chance(0.5) {
                        "break"
                    } else {
                        "continue"
                    };
                    body.push(format!("if {c} {{"));
                    body.push(format!("    {exit};"));
                    body.push("}".into());
                }
                if self.rng.chance(0.6) {
                    let c = self.cond(&inner, 1);
                    body.push(format!("if {c} {{"));
                    if self.rng.chance(0.5) {
                        // The usual accumulation: `out = out + expert(x)`.
                        body.push(format!("    y = y.clone() + {use_e};"));
                    } else {
                        body.push(format!("    y = {use_e};"));
                    }
                    body.push("}".into());
                } else {
                    body.push(format!("y = {use_e};"));
                }
                if depth > 0 && self.rng.chance(0.5) {
                    inner.bindings.push(element);
                    body.extend(self.stmt(&inner, depth - 1));
                }
                let mut out = vec![format!(
                    "for ({k}, {e}) in self.{container}.iter().enumerate() {{"
                )];
                out.extend(indent(body));
                out.push("}".into());
                out
            }
            // fold over an adaptor chain
            3 => {
                let c = self.cond(&inner, 0);
                let a = self.name("a");
                vec![format!(
                    "y = self.{container}.iter().enumerate().filter(|&({k}, _)| {c}).fold(y, |{a}, (_, {e})| {});",
                    folded(&a)
                )]
            }
            4 => {
                let a = self.name("a");
                let (adaptor, n) = match self.rng.below(3) {
                    0 => ("skip", self.routing()),
                    1 => ("take", self.routing()),
                    _ => ("rev().take", self.routing()),
                };
                vec![format!(
                    "y = self.{container}.iter().{adaptor}({n} % {}).fold(y, |{a}, {e}| {});",
                    N + 1,
                    folded(&a)
                )]
            }
            5 => {
                let c = self.cond(&inner, 0);
                let a = self.name("a");
                vec![format!(
                    "y = self.{container}.iter().enumerate().filter_map(|({k}, {e})| ({c}).then_some({e})).fold(y, |{a}, {e}| {});",
                    folded(&a)
                )]
            }
            // while let over a held iterator, stopped by a counter
            6 => {
                let it = self.name("it");
                let n = self.name("n");
                let stop = self.routing();
                vec![
                    format!("let mut {it} = self.{container}.iter();"),
                    format!("let mut {n} = 0;"),
                    format!("while let Some({e}) = {it}.next() {{"),
                    format!("    if {n} >= {stop} % {} {{", N + 1),
                    "        break;".into(),
                    "    }".into(),
                    format!("    {n} += 1;"),
                    format!("    y = {use_e};"),
                    "}".into(),
                ]
            }
            // zip with a shorter partner, take_while
            7 => {
                let g = self.name("g");
                let take = self.routing();
                if self.rng.chance(0.5) {
                    vec![
                        format!(
                            "for ({e}, {g}) in self.{container}.iter().zip(r.iter().take({take} % {})) {{",
                            N + 1
                        ),
                        format!("    if *{g} % 2 == 0 {{"),
                        format!("        y = {use_e};"),
                        "    }".into(),
                        "}".into(),
                    ]
                } else {
                    vec![
                        format!(
                            "for ({k}, {e}) in self.{container}.iter().enumerate().take_while(|({k}, _)| *{k} < {take} % {}) {{",
                            N + 1
                        ),
                        format!("    y = {use_e};"),
                        "}".into(),
                    ]
                }
            }
            9 => {
                let c = self.cond(scope, 1);
                let call = if kind == Kind::Linear && self.rng.chance(0.5) {
                    self.apply = true;
                    format!("self.apply({e}, y)")
                } else {
                    use_e.clone()
                };
                vec![
                    format!("for {e} in &self.{container} {{"),
                    format!("    if {c} {{"),
                    format!("        y = {call};"),
                    "    }".into(),
                    "}".into(),
                ]
            }
            // a slice by a range held in a variable
            10 => {
                let bound = self.routing();
                let range = if self.rng.chance(0.5) {
                    format!("..{k}")
                } else {
                    format!("{k}..")
                };
                vec![
                    format!("let {k} = {bound} % {};", N + 1),
                    format!("for {e} in &self.{container}[{range}] {{"),
                    format!("    y = {use_e};"),
                    "}".into(),
                ]
            }
            11 => {
                let pair = self.name("pair");
                let nth = self.routing();
                vec![
                    format!("if let Some({pair}) = self.{container}.chunks(2).nth({nth} % 3) {{"),
                    format!("    for {e} in {pair} {{"),
                    format!("        y = {use_e};"),
                    "    }".into(),
                    "}".into(),
                ]
            }
            12 => {
                let c = self.cond(&inner, 1);
                vec![
                    format!(
                        "if let Some(({k}, {e})) = self.{container}.iter().enumerate().find(|&({k}, _)| {c}) {{"
                    ),
                    format!("    y = {use_e};"),
                    "}".into(),
                ]
            }
            13 => {
                let c = self.cond(scope, 1);
                match self.rng.below(3) {
                    0 | 1 => {
                        let end = if self.rng.chance(0.5) {
                            "first"
                        } else {
                            "last"
                        };
                        vec![
                            format!("if let Some({e}) = self.{container}.{end}() {{"),
                            format!("    if {c} {{"),
                            format!("        y = {use_e};"),
                            "    }".into(),
                            "}".into(),
                        ]
                    }
                    _ => {
                        let shift = self.routing();
                        vec![
                            format!(
                                "let (_, {e}) = self.{container}.iter().enumerate().min_by_key(|&({k}, _)| ({k} + {shift}) % {N}).unwrap();"
                            ),
                            format!("y = {use_e};"),
                        ]
                    }
                }
            }
            // labeled `continue`/`break` out of an inner loop
            14 => {
                let label = self.name("'outer");
                let j = self.name("j");
                let mut both = inner.clone();
                both.indices.push(j.clone());
                let (skip, stop) = (self.cond(&both, 1), self.cond(&both, 1));
                vec![
                    format!("{label}: for ({k}, {e}) in self.{container}.iter().enumerate() {{"),
                    format!("    for {j} in 0..2usize {{"),
                    format!("        if {skip} {{"),
                    format!("            continue {label};"),
                    "        }".into(),
                    format!("        if {stop} {{"),
                    format!("            break {label};"),
                    "        }".into(),
                    "    }".into(),
                    format!("    y = {use_e};"),
                    "}".into(),
                ]
            }
            15 => {
                let (left, right, part) =
                    (self.name("left"), self.name("right"), self.name("part"));
                let (at, c) = (self.routing(), self.cond(scope, 1));
                vec![
                    format!(
                        "let ({left}, {right}) = self.{container}.split_at({at} % {});",
                        N + 1
                    ),
                    format!("let {part} = if {c} {{ {left} }} else {{ {right} }};"),
                    format!("for {e} in {part} {{"),
                    format!("    y = {use_e};"),
                    "}".into(),
                ]
            }
            // a counted loop indexing the container with a variable
            _ => {
                let stop = self.routing();
                let call = use_e.replacen(&e, &format!("self.{container}[{k}]"), 1);
                if self.rng.chance(0.5) {
                    vec![
                        format!("let mut {k} = 0;"),
                        "loop {".into(),
                        format!("    if {k} >= {stop} % {} {{", N + 1),
                        "        break;".into(),
                        "    }".into(),
                        format!("    y = {call};"),
                        format!("    {k} += 1;"),
                        "}".into(),
                    ]
                } else {
                    vec![
                        format!("let mut {k} = {stop} % {};", N + 1),
                        format!("while {k} < {N} {{"),
                        format!("    y = {call};"),
                        format!("    {k} += 2;"),
                        "}".into(),
                    ]
                }
            }
        }
    }

    /// A binding to a field, then statements that may use it.
    fn binding(&mut self, scope: &mut Scope) -> Vec<String> {
        let lins: Vec<Field> = self
            .fields
            .iter()
            .copied()
            .filter(|f| {
                matches!(
                    f,
                    Field::Lin(_) | Field::Child | Field::Experts | Field::Kids
                )
            })
            .collect();
        if lins.is_empty() {
            return Vec::new();
        }
        let field = lins[self.rng.below(lins.len())];
        let name = self.name("b");
        let (kind, value) = match field {
            Field::Lin(k) => {
                if self.rng.chance(0.4) {
                    // A closure capturing the field.
                    (
                        Kind::Closure,
                        format!("|t: Tensor<B, 2>| self.l{k}.forward(t).tanh()"),
                    )
                } else {
                    (Kind::Linear, format!("&self.l{k}"))
                }
            }
            Field::Child => (Kind::Child, "&self.ch".into()),
            Field::Experts => (Kind::Linear, format!("&self.ex[{}]", self.index())),
            _ => (Kind::Child, format!("&self.kids[{}]", self.index())),
        };
        let binding = Binding {
            name: name.clone(),
            kind,
            field,
        };
        scope.bindings.push(binding.clone());
        // Use it at once, possibly under a condition, so the field is
        // consumed somewhere; later statements may use it again.
        let mut out = vec![format!("let {name} = {value};")];
        let used = self.use_binding(scope, &binding);
        if self.rng.chance(0.6) {
            let c = self.cond(scope, 1);
            out.push(format!("if {c} {{"));
            out.push(format!("    {used}"));
            out.push("}".into());
        } else {
            out.push(used);
        }
        out
    }

    fn block(&mut self, scope: &Scope, depth: u32, len: usize) -> Vec<String> {
        let mut scope = scope.clone();
        let mut out = Vec::new();
        for _ in 0..len {
            if self.rng.chance(0.15) {
                out.extend(self.binding(&mut scope));
            } else {
                out.extend(self.stmt(&scope, depth));
            }
        }
        out
    }

    fn stmt(&mut self, scope: &Scope, depth: u32) -> Vec<String> {
        let pick = if depth == 0 { 0 } else { self.rng.below(11) };
        match pick {
            1 | 2 => {
                let c = self.cond(scope, 1);
                let mut out = vec![format!("if {c} {{")];
                let len = 1 + self.rng.below(2);
                out.extend(indent(self.block(scope, depth - 1, len)));
                if self.rng.chance(0.5) {
                    out.push("} else {".into());
                    out.extend(indent(self.block(scope, depth - 1, 1)));
                }
                out.push("}".into());
                out
            }
            3 => {
                let on = self.routing();
                let mut out = vec![format!("match {on} % 3 {{")];
                for arm in ["0", "1", "_"] {
                    out.push(format!("    {arm} => {{"));
                    let len = self.rng.below(2);
                    out.extend(indent(indent(self.block(scope, depth - 1, len))));
                    out.push("    }".into());
                }
                out.push("}".into());
                out
            }
            4 | 5 if self.has(Field::Experts) || self.has(Field::Kids) => {
                self.element_loop(scope, depth - 1)
            }
            6 => {
                let (exit, c) = if scope.in_loop && self.rng.chance(0.5) {
                    let exit = if self.rng.chance(0.5) {
                        "break"
                    } else {
                        "continue"
                    };
                    (exit, self.cond(scope, 1))
                } else {
                    // Rare, so that what follows runs in some of the runs.
                    let on = self.routing();
                    ("return y", format!("{on} == {}", self.rng.below(R_MAX)))
                };
                vec![format!("if {c} {{"), format!("    {exit};"), "}".into()]
            }
            7 if !scope.no_helpers && !self.helpers.is_empty() => {
                let helper = self.helpers[self.rng.below(self.helpers.len())].clone();
                self.called.insert(helper.clone());
                if self.rng.chance(0.5) {
                    let c = self.cond(scope, 1);
                    vec![
                        format!("if {c} {{"),
                        format!("    y = self.{helper}(y, r);"),
                        "}".into(),
                    ]
                } else {
                    vec![format!("y = self.{helper}(y, r);")]
                }
            }
            8 => {
                let mut out = vec!["{".into()];
                out.extend(indent(self.block(scope, depth - 1, 2)));
                out.push("}".into());
                out
            }
            _ => self.atom(scope),
        }
    }

    fn method(&mut self, name: &str, public: bool, scope: &Scope, len: usize) -> Vec<String> {
        let mut out = vec![format!(
            "{}fn {name}(&self, x: Tensor<B, 2>, r: &[usize]) -> Tensor<B, 2> {{",
            if public { "pub " } else { "" }
        )];
        let mut body = vec!["let mut y = x;".to_string()];
        body.extend(self.block(scope, 3, len));
        body.push("y".into());
        out.extend(indent(body));
        out.push("}".into());
        out
    }
}

/// One model: the struct, its `#[ddp_model]` impl, its constructor and test.
fn model(index: u64) -> String {
    let mut rng = Rng::new(0x6e6e_0000 + index);
    let mut fields: Vec<Field> = (0..3u8)
        .map(Field::Lin)
        .chain([
            Field::Param,
            Field::Experts,
            Field::Opt,
            Field::Child,
            Field::Kids,
            Field::OptChild,
        ])
        .filter(|_| rng.chance(0.55))
        .collect();
    if fields.is_empty() {
        fields.push(Field::Experts);
    }
    let helper_count = rng.below(3);
    let mut generator = Gen {
        rng,
        fields,
        consumed: BTreeSet::new(),
        fresh: 0,
        helpers: (0..helper_count).map(|h| format!("helper{h}")).collect(),
        called: BTreeSet::new(),
        apply: false,
        loose: false,
    };
    let helper_scope = Scope {
        no_helpers: true,
        ..Scope::default()
    };
    let helpers: Vec<Vec<String>> = (0..helper_count)
        .map(|h| {
            let len = 1 + generator.rng.below(2);
            generator.method(&format!("helper{h}"), false, &helper_scope, len)
        })
        .collect();
    let len = 2 + generator.rng.below(4);
    let mut forward = generator.method("forward", true, &Scope::default(), len);
    // Every helper is called (a field used only in an uncalled helper is
    // never used by `forward`): the uncalled ones run last, unconditionally.
    for helper in &generator.helpers {
        if !generator.called.contains(helper) {
            let at = forward.len() - 2;
            forward.insert(at, format!("    y = self.{helper}(y, r);"));
        }
    }
    if generator.consumed.is_empty() {
        // A model needs a parameter: use one last, unconditionally.
        let at = forward.len() - 2;
        let used = indent(generator.atom(&Scope::default()));
        forward.splice(at..at, used);
    }
    let with_opt = generator.rng.chance(0.7);
    let apply = generator.apply.then(|| {
        vec![
            "fn apply(&self, layer: &Linear<B>, y: Tensor<B, 2>) -> Tensor<B, 2> {".to_string(),
            "    layer.forward(y).tanh()".into(),
            "}".into(),
        ]
    });

    // Only fields the bodies consume: a field never used is a compile error.
    let fields: Vec<Field> = generator.consumed.iter().copied().collect();
    let name = format!("M{index:03}");
    let mut out = String::new();
    writeln!(out, "pub mod m{index:03} {{").unwrap();
    writeln!(out, "    use super::*;\n").unwrap();
    writeln!(out, "    #[maskddp::ddp_model]").unwrap();
    writeln!(out, "    #[derive(Module, Debug)]").unwrap();
    writeln!(out, "    pub struct {name}<B: Backend> {{").unwrap();
    for field in &fields {
        writeln!(out, "        {},", field.decl()).unwrap();
    }
    writeln!(out, "    }}\n").unwrap();
    writeln!(out, "    #[maskddp::ddp_model]").unwrap();
    writeln!(out, "    impl<B: Backend> {name}<B> {{").unwrap();
    for (i, method) in std::iter::once(forward)
        .chain(helpers)
        .chain(apply)
        .enumerate()
    {
        if i > 0 {
            out.push('\n');
        }
        for line in indent(indent(method)) {
            writeln!(out, "{line}").unwrap();
        }
    }
    writeln!(out, "    }}\n").unwrap();
    writeln!(out, "    impl Generated for {name}<Ad> {{").unwrap();
    writeln!(out, "        fn build(device: &Device<Ad>) -> Self {{").unwrap();
    writeln!(out, "            Self {{").unwrap();
    for field in &fields {
        let value = if matches!(field, Field::Opt | Field::OptChild) && !with_opt {
            "None".to_string()
        } else {
            "Make::make(device)".to_string()
        };
        writeln!(out, "                {}: {value},", field.name()).unwrap();
    }
    writeln!(out, "            }}").unwrap();
    writeln!(out, "        }}\n").unwrap();
    writeln!(
        out,
        "        fn run(&self, x: Tensor<Ad, 2>, r: &[usize]) -> Tensor<Ad, 2> {{"
    )
    .unwrap();
    writeln!(out, "            self.forward(x, r)").unwrap();
    writeln!(out, "        }}").unwrap();
    writeln!(out, "    }}\n").unwrap();
    writeln!(out, "    #[test]").unwrap();
    writeln!(out, "    fn m{index:03}() {{").unwrap();
    writeln!(
        out,
        "        check_model::<{name}<Ad>>(\"m{index:03}\", {index}, {});",
        if generator.loose { "Loose" } else { "Exact" }
    )
    .unwrap();
    writeln!(out, "    }}").unwrap();
    writeln!(out, "}}").unwrap();
    out
}

/// The whole of `models.rs`.
pub fn generate() -> String {
    let mut out = String::from(
        "// @generated by tests/generated_programs/generator.rs: do not edit.\n\
         // Regenerate with `MASKDDP_BLESS=1 cargo test --test generated_programs_source`.\n\
         //\n\
         // Generated code is written for coverage, not style.\n\
         #![allow(unused, clippy::all)]\n\
         \n\
         use super::*;\n\n",
    );
    writeln!(
        out,
        "/// Elements of every `Vec` field.\npub const N: usize = {N};"
    )
    .unwrap();
    writeln!(
        out,
        "/// Length of the routing input `r`.\npub const R: usize = {R};"
    )
    .unwrap();
    writeln!(
        out,
        "/// Routing values are drawn from `0..R_MAX`.\npub const R_MAX: usize = {R_MAX};"
    )
    .unwrap();
    for index in 0..MODELS {
        out.push('\n');
        out.push_str(&model(index));
    }
    out
}
