//! The walk over one method body: a forward "must use" dataflow over the
//! control flow, plus the may-use set with guard texts. What a use is was
//! decided by the value tracker ([`super::sites`]), which marked each
//! consumption with its site; this walk only places the marks on paths.
//!
//! `flow` is the set of fields used on every path reaching the current point
//! (`None`: the point is unreachable, e.g. after `return`). Branches start from
//! the same entry set and meet (intersect) where they join; early exits
//! (`return`, `?`) meet into `exits`; `break`s meet into their loop's frame.
//! Loop, closure and `while`/`for` bodies may run zero times, so nothing they
//! use reaches the must set after them.

use std::collections::BTreeSet;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt as _;
use syn::{Block, Expr, ExprMethodCall, ImplItemFn, Stmt};

use super::render::{clip, render_tokens};
use super::sites::{self, Site, is_self, mentions};
use super::{FieldSet, FieldTable, Methods, Summary};
use crate::attr;
use crate::ctxt::Ctxt;

/// Macros that never return.
const DIVERGING_MACROS: &[&str] = &["panic", "unreachable", "todo", "unimplemented"];

const USES_HELP: &str = "help: keep the code inside the `#[ddp_model]` impl block, \
                         or state the fields this statement uses with \
                         `#[ddp(uses(field, ...))]` on the statement";

/// Which uses reach the must set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Must {
    /// Every use of a field as a whole.
    AnyUse,
    /// Only calls of the field's `forward` ([`Site::forward_fields`]).
    ForwardCalls,
}

struct Frame {
    label: Option<String>,
    is_loop: bool,
    breaks: Option<FieldSet>,
}

struct Walker<'a> {
    fields: &'a FieldTable,
    sites: &'a [Site],
    methods: &'a Methods<'a>,
    summaries: &'a std::collections::BTreeMap<String, Summary>,
    diag: Option<&'a Ctxt>,
    must: Must,
    flow: Option<FieldSet>,
    exits: Option<FieldSet>,
    exit_note: Option<String>,
    guards: Vec<String>,
    frames: Vec<Frame>,
    summary: Summary,
    callees: BTreeSet<String>,
    method_name: String,
    /// An error that hides uses (`self` as a whole, a macro) was reported.
    opaque: bool,
}

/// Walks one method; returns its summary and the methods it calls.
/// With `diag`, constructs the analysis cannot see through are reported.
pub(super) fn walk_method(
    fields: &FieldTable,
    sites: &[Site],
    methods: &Methods<'_>,
    summaries: &std::collections::BTreeMap<String, Summary>,
    diag: Option<&Ctxt>,
    must: Must,
    f: &ImplItemFn,
) -> Walked {
    let mut w = Walker {
        fields,
        sites,
        methods,
        summaries,
        diag,
        must,
        flow: Some(FieldSet::new()),
        exits: None,
        exit_note: None,
        guards: Vec::new(),
        frames: Vec::new(),
        summary: Summary::default(),
        callees: BTreeSet::new(),
        method_name: f.sig.ident.unraw().to_string(),
        opaque: false,
    };
    w.block(&f.block);
    let end = meet(w.flow.take(), w.exits.take());
    w.summary.always = end.unwrap_or_else(|| (0..fields.params.len()).collect());
    Walked {
        summary: w.summary,
        callees: w.callees,
        opaque: w.opaque,
    }
}

/// What walking one method found.
pub(super) struct Walked {
    pub(super) summary: Summary,
    /// The methods of the block it calls.
    pub(super) callees: BTreeSet<String>,
    /// Whether an error hid some of its uses (no "never used" errors then).
    pub(super) opaque: bool,
}

fn meet(a: Option<FieldSet>, b: Option<FieldSet>) -> Option<FieldSet> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(a.intersection(&b).copied().collect()),
    }
}

impl Walker<'_> {
    fn error(&mut self, span_of: impl ToTokens, msg: String) {
        self.opaque = true;
        if let Some(cx) = self.diag {
            cx.error_spanned_by(span_of, msg);
        }
    }

    fn reason(&self) -> Option<String> {
        self.guards
            .last()
            .cloned()
            .or_else(|| self.exit_note.clone())
    }

    fn note_use(&mut self, field: usize, reason: Option<String>) {
        let entry = self.summary.uses.entry(field).or_insert(None);
        if entry.is_none() {
            *entry = reason;
        }
    }

    /// Site `n` (a consumption the value tracker marked) runs here.
    fn use_site(&mut self, n: usize) {
        let Some(site) = self.sites.get(n) else {
            return;
        };
        let reason = self.reason();
        for (&field, &whole) in &site.roots {
            // A part (`self.experts[i]`, an element of a loop) is a use of
            // the field, never one on every path.
            let reason = reason
                .clone()
                .or_else(|| (!whole).then(|| site.text.clone()));
            self.note_use(field, reason);
        }
        if let Some(flow) = &mut self.flow {
            flow.extend(match self.must {
                Must::AnyUse => site.whole_fields(),
                Must::ForwardCalls => site.forward_fields(),
            });
        }
    }

    /// Runs `f` on a path taken only sometimes: it starts from the current
    /// flow and meets it again afterwards.
    fn optional(&mut self, guard: String, f: impl FnOnce(&mut Self)) {
        let entry = self.flow.clone();
        let taken = self.branch(&entry, guard, f);
        self.flow = meet(entry, taken);
    }

    /// Runs `f` from `entry` under `guard`; returns the flow at its end.
    fn branch(
        &mut self,
        entry: &Option<FieldSet>,
        guard: String,
        f: impl FnOnce(&mut Self),
    ) -> Option<FieldSet> {
        self.flow = entry.clone();
        self.guards.push(guard);
        f(self);
        self.guards.pop();
        self.flow.take()
    }

    /// Code that runs later, any number of times, with its own returns and
    /// loops: closures and async blocks.
    fn detached(&mut self, guard: String, f: impl FnOnce(&mut Self)) {
        let flow = self.flow.clone();
        let exits = self.exits.take();
        let frames = std::mem::take(&mut self.frames);
        let note = self.exit_note.take();
        self.guards.push(guard);
        f(self);
        self.guards.pop();
        self.flow = flow;
        self.exits = exits;
        self.frames = frames;
        self.exit_note = note;
    }

    fn exit_here(&mut self, note: String) {
        let flow = self.flow.clone();
        self.exits = meet(self.exits.take(), flow);
        if self.exit_note.is_none() {
            self.exit_note = Some(note);
        }
    }

    fn block(&mut self, block: &Block) {
        for stmt in &block.stmts {
            self.stmt(stmt);
        }
    }

    fn stmt(&mut self, stmt: &Stmt) {
        let attrs = attr::stmt_attrs(stmt);
        if sites::is_opaque(attrs) {
            // `#[ddp(uses(..))]`: the statement before it stands for it.
            return;
        }
        if let Stmt::Macro(m) = stmt
            && let Some(n) = sites::stated_site(&m.mac)
        {
            self.use_site(n);
            return;
        }
        if let Some(cfg) = attrs.iter().find(|a| attr::is_cfg(a)) {
            // Compiled in or not depending on the build: a use in it is not
            // a use on every path of every build.
            self.optional(render_tokens(cfg), |w| w.stmt_inner(stmt));
            return;
        }
        self.stmt_inner(stmt);
    }

    fn stmt_inner(&mut self, stmt: &Stmt) {
        match stmt {
            Stmt::Local(local) => {
                if let Some(init) = &local.init {
                    self.expr(&init.expr);
                    if let Some((_, diverge)) = &init.diverge {
                        let entry = self.flow.clone();
                        let pat = render_tokens(&local.pat);
                        let _ = self
                            .branch(&entry, format!("let {pat} = … else"), |w| w.expr(diverge));
                        self.flow = entry;
                    }
                }
            }
            // A `macro_rules!` defined in the body can use `self` where it
            // expands; the analysis cannot follow it there.
            Stmt::Item(syn::Item::Macro(item))
                if self.param_use_in_tokens(item.mac.tokens.clone()) =>
            {
                let name = item
                    .ident
                    .as_ref()
                    .map_or_else(|| "this macro".to_owned(), |i| format!("`{i}!`"));
                self.error(
                    item,
                    format!(
                        "`#[ddp_model]` cannot follow {name} to where it expands, and its body \
                         mentions `self`\n\
                         help: write a `&self` method in this impl block instead, or compute the \
                         values outside the macro and pass them in"
                    ),
                );
            }
            Stmt::Item(_) => {}
            Stmt::Expr(expr, _) => self.expr(expr),
            Stmt::Macro(mac) => self.mac(&mac.mac),
        }
    }

    fn expr(&mut self, expr: &Expr) {
        self.expr_inner(expr);
        // After the operands: a `?` or `return` among them exits first.
        if let Some(n) = sites::site_of(attr::expr_attrs(expr)) {
            self.use_site(n);
        }
    }

    fn expr_inner(&mut self, expr: &Expr) {
        match expr {
            Expr::Array(e) => e.elems.iter().for_each(|x| self.expr(x)),
            Expr::Assign(e) => {
                self.expr(&e.left);
                self.expr(&e.right);
            }
            Expr::Async(e) => self.detached("async block".to_owned(), |w| w.block(&e.block)),
            Expr::Await(e) => self.expr(&e.base),
            Expr::Binary(e) => {
                self.expr(&e.left);
                match e.op {
                    syn::BinOp::And(_) | syn::BinOp::Or(_) => {
                        let op = e.op.to_token_stream().to_string();
                        let guard = format!("{} {op} …", render_tokens(&e.left));
                        self.optional(guard, |w| w.expr(&e.right));
                    }
                    _ => self.expr(&e.right),
                }
            }
            Expr::Block(e) => match &e.label {
                Some(label) => {
                    self.frames.push(Frame {
                        label: Some(label.name.ident.to_string()),
                        is_loop: false,
                        breaks: None,
                    });
                    self.block(&e.block);
                    let frame = self.frames.pop().map(|f| f.breaks);
                    self.flow = meet(self.flow.take(), frame.flatten());
                }
                None => self.block(&e.block),
            },
            Expr::Break(e) => {
                if let Some(value) = &e.expr {
                    self.expr(value);
                }
                let label = e.label.as_ref().map(|l| l.ident.to_string());
                let flow = self.flow.take();
                let frame = self.frames.iter_mut().rev().find(|f| match &label {
                    Some(label) => f.label.as_ref() == Some(label),
                    None => f.is_loop,
                });
                if let Some(frame) = frame {
                    frame.breaks = meet(frame.breaks.take(), flow);
                }
            }
            Expr::Call(e) => self.call(e),
            Expr::Cast(e) => self.expr(&e.expr),
            Expr::Closure(e) => {
                let inputs: Vec<String> = e.inputs.iter().map(render_tokens).collect();
                let guard = format!("closure |{}|", inputs.join(", "));
                self.detached(guard, |w| w.expr(&e.body));
            }
            Expr::Const(_) | Expr::Infer(_) | Expr::Lit(_) => {}
            Expr::Continue(_) => self.flow = None,
            // `self.f` itself is no use: the tracker marked where its value
            // is consumed.
            Expr::Field(e) => {
                if !is_self(&e.base) {
                    self.expr(&e.base);
                }
            }
            Expr::ForLoop(e) => {
                self.expr(&e.expr);
                let guard = format!(
                    "for {} in {}",
                    render_tokens(&e.pat),
                    render_tokens(&e.expr)
                );
                self.looping(e.label.as_ref(), guard, false, |w| w.block(&e.body));
            }
            Expr::Group(e) => self.expr(&e.expr),
            Expr::If(e) => {
                self.expr(&e.cond);
                let cond = render_tokens(&e.cond);
                let entry = self.flow.clone();
                let then = self.branch(&entry, format!("if {cond}"), |w| w.block(&e.then_branch));
                let other = match &e.else_branch {
                    Some((_, other)) => {
                        let guard = match &*e.cond {
                            Expr::Let(_) => format!("else of `if {cond}`"),
                            Expr::Path(_)
                            | Expr::Field(_)
                            | Expr::MethodCall(_)
                            | Expr::Call(_) => {
                                format!("if !{cond}")
                            }
                            _ => format!("if !({cond})"),
                        };
                        self.branch(&entry, guard, |w| w.expr(other))
                    }
                    None => entry,
                };
                self.flow = meet(then, other);
            }
            Expr::Index(e) => {
                self.expr(&e.index);
                self.expr(&e.expr);
            }
            Expr::Let(e) => self.expr(&e.expr),
            Expr::Loop(e) => {
                let guard = "loop".to_owned();
                self.looping(e.label.as_ref(), guard, true, |w| w.block(&e.body));
            }
            Expr::Macro(e) => self.mac(&e.mac),
            Expr::Match(e) => {
                self.expr(&e.expr);
                let scrutinee = render_tokens(&e.expr);
                let entry = self.flow.clone();
                let mut joined: Option<FieldSet> = None;
                for arm in &e.arms {
                    let mut guard = format!("match {scrutinee} => {}", render_tokens(&arm.pat));
                    if let Some((_, cond)) = &arm.guard {
                        guard = format!("{guard} if {}", render_tokens(cond));
                    }
                    let end = self.branch(&entry, clip(guard), |w| {
                        if let Some((_, cond)) = &arm.guard {
                            w.expr(cond);
                        }
                        w.expr(&arm.body);
                    });
                    joined = meet(joined, end);
                }
                self.flow = joined;
            }
            Expr::MethodCall(e) => self.method_call(e),
            Expr::Paren(e) => self.expr(&e.expr),
            Expr::Path(_) => {
                if is_self(expr) {
                    self.error(
                        expr,
                        format!(
                            "`self` is used as a whole here, so `#[ddp_model]` cannot tell which \
                             parameter fields `{}` uses through it\n{USES_HELP}",
                            self.method_name
                        ),
                    );
                }
            }
            Expr::Range(e) => {
                if let Some(start) = &e.start {
                    self.expr(start);
                }
                if let Some(end) = &e.end {
                    self.expr(end);
                }
            }
            Expr::RawAddr(e) => self.expr(&e.expr),
            Expr::Reference(e) => self.expr(&e.expr),
            Expr::Repeat(e) => {
                self.expr(&e.expr);
                self.expr(&e.len);
            }
            Expr::Return(e) => {
                if let Some(value) = &e.expr {
                    self.expr(value);
                }
                self.exit_here("after an early `return`".to_owned());
                self.flow = None;
            }
            Expr::Struct(e) => {
                for field in &e.fields {
                    self.expr(&field.expr);
                }
                if let Some(rest) = &e.rest {
                    self.expr(rest);
                }
            }
            Expr::Try(e) => {
                self.expr(&e.expr);
                self.exit_here(format!("after `{}`", render_tokens(e)));
            }
            Expr::TryBlock(e) => self.block(&e.block),
            Expr::Tuple(e) => e.elems.iter().for_each(|x| self.expr(x)),
            Expr::Unary(e) => self.expr(&e.expr),
            Expr::Unsafe(e) => self.block(&e.block),
            Expr::While(e) => {
                self.expr(&e.cond);
                let guard = format!("while {}", render_tokens(&e.cond));
                self.looping(e.label.as_ref(), guard, false, |w| w.block(&e.body));
            }
            Expr::Yield(e) => {
                if let Some(value) = &e.expr {
                    self.expr(value);
                }
            }
            other => {
                if mentions(other.to_token_stream(), "self") {
                    self.error(
                        other,
                        format!("`#[ddp_model]` cannot analyse this expression\n{USES_HELP}"),
                    );
                }
            }
        }
    }

    /// A loop: its body runs from the current flow; `runs_once` is true for
    /// `loop`, whose body runs at least until its first `break`.
    fn looping(
        &mut self,
        label: Option<&syn::Label>,
        guard: String,
        runs_once: bool,
        body: impl FnOnce(&mut Self),
    ) {
        self.frames.push(Frame {
            label: label.map(|l| l.name.ident.to_string()),
            is_loop: true,
            breaks: None,
        });
        let entry = self.flow.clone();
        // What the body's end carries goes back to the loop head: not an exit.
        let _ = self.branch(&entry, guard, body);
        let breaks = self.frames.pop().and_then(|f| f.breaks);
        self.flow = if runs_once {
            breaks
        } else {
            meet(entry, breaks)
        };
    }

    fn call(&mut self, e: &syn::ExprCall) {
        // `Self::helper(self, ...)` and `Detector::helper(self, ...)`.
        if let Expr::Path(p) = &*e.func
            && p.qself.is_none()
            && p.path.segments.len() == 2
            && {
                let owner = &p.path.segments[0].ident;
                owner == "Self" || *owner == self.fields.struct_name
            }
            && let Some(first) = e.args.first()
            && is_self(first)
        {
            let method = &p.path.segments[1].ident;
            for arg in e.args.iter().skip(1) {
                self.expr(arg);
            }
            self.self_call(&method.unraw().to_string(), e);
            return;
        }
        self.expr(&e.func);
        for arg in &e.args {
            self.expr(arg);
        }
    }

    fn method_call(&mut self, e: &ExprMethodCall) {
        if is_self(&e.receiver) {
            e.args.iter().for_each(|arg| self.expr(arg));
            self.self_call(&e.method.unraw().to_string(), e);
            return;
        }
        self.expr(&e.receiver);
        e.args.iter().for_each(|arg| self.expr(arg));
    }

    /// A call of `name` on `self`, at `site`.
    fn self_call(&mut self, name: &str, site: &dyn ToTokens) {
        match self.summaries.get(name) {
            Some(callee) if self.methods.contains_key(name) => {
                self.callees.insert(name.to_owned());
                let reason = self.reason();
                for (field, callee_reason) in &callee.uses {
                    self.note_use(*field, callee_reason.clone().or_else(|| reason.clone()));
                }
                if let Some(flow) = &mut self.flow {
                    flow.extend(callee.always.iter().copied());
                }
            }
            _ => self.error(
                site,
                format!(
                    "`#[ddp_model]` cannot see which parameters `{name}` uses: it is not a \
                     `&self` method of this `#[ddp_model]` impl block\n{USES_HELP}"
                ),
            ),
        }
    }

    fn mac(&mut self, mac: &syn::Macro) {
        let name = mac
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default();
        if self.param_use_in_tokens(mac.tokens.clone()) {
            self.error(
                mac,
                format!(
                    "`#[ddp_model]` cannot see inside the macro `{name}!`, and it mentions `self`\n\
                     help: compute the value outside the macro and pass that in, or state the \
                     fields this statement uses with `#[ddp(uses(field, ...))]` on the statement"
                ),
            );
        }
        if DIVERGING_MACROS.contains(&name.as_str()) {
            self.flow = None;
        }
    }

    /// Whether macro tokens hold a `self` that may use parameters: every
    /// `self` except `self.field` reads of parameter-free fields.
    fn param_use_in_tokens(&self, tokens: TokenStream) -> bool {
        let tts: Vec<TokenTree> = tokens.into_iter().collect();
        tts.iter().enumerate().any(|(i, tt)| match tt {
            TokenTree::Group(g) => self.param_use_in_tokens(g.stream()),
            TokenTree::Ident(ident) if ident == "self" => !self.harmless_self(&tts[i + 1..]),
            _ => false,
        })
    }

    /// `self.width` (a parameter-free field, not called): `after` holds the
    /// tokens following `self`.
    fn harmless_self(&self, after: &[TokenTree]) -> bool {
        let dot = matches!(after.first(), Some(TokenTree::Punct(p)) if p.as_char() == '.');
        let field = match after.get(1) {
            Some(TokenTree::Ident(f)) => {
                let name = syn::ext::IdentExt::unraw(f).to_string();
                self.fields.others.contains(&name)
            }
            Some(TokenTree::Literal(l)) => self.fields.others.contains(&l.to_string()),
            _ => false,
        };
        let called = matches!(
            after.get(2),
            Some(TokenTree::Group(g)) if g.delimiter() == proc_macro2::Delimiter::Parenthesis
        );
        dot && field && !called
    }
}
