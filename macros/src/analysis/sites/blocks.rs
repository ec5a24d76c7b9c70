//! Blocks and statements, and the values leaving a method.

use syn::{Expr, Stmt};

use super::shape::Shape;
use super::tracker::Tracker;
use super::{Form, Kind, Site};
use crate::analysis::render::render_tokens;

impl Tracker<'_> {
    pub(super) fn body(&mut self, block: &mut syn::Block) {
        let tail = self.block(block);
        if let Some((tail_expr, shape)) = tail {
            self.returned(tail_expr, shape);
        }
    }

    /// A value leaving the method (tail or `return`).
    pub(super) fn returned(&mut self, expr: &mut Expr, shape: Option<Shape>) {
        if self.closures == 0 {
            self.check_escape(expr, shape.as_ref());
        }
        if let Some(shape) = shape {
            // A helper handing back `&self.experts[i]`: its caller's uses
            // are not followed, so the value counts as used here.
            self.site(expr, shape, Kind::Other);
        }
    }

    /// Walks a block in its own scope; returns its tail expression and the
    /// tail's shape, unconsumed.
    pub(super) fn block<'b>(
        &mut self,
        block: &'b mut syn::Block,
    ) -> Option<(&'b mut Expr, Option<Shape>)> {
        self.scopes.push(Vec::new());
        let count = block.stmts.len();
        let mut stmts = std::mem::take(&mut block.stmts);
        let mut out = Vec::with_capacity(count);
        let mut tail_is_opaque = false;
        for (i, mut stmt) in stmts.drain(..).enumerate() {
            let is_last = i + 1 == count;
            if let Some(stated) = self.stated_uses(&mut stmt) {
                out.push(stated);
                out.push(stmt);
                tail_is_opaque = is_last;
                continue;
            }
            if let Stmt::Macro(m) = &stmt {
                // `println!("{:?}", expert)`: the expansion is not seen, so
                // the derived bindings it names are used there.
                let roots = self.macro_roots(&m.mac);
                if !roots.is_empty() {
                    let text = format!("{}!", render_tokens(&m.mac.path));
                    out.push(self.stated_stmt(Site {
                        roots,
                        kind: Kind::Other,
                        form: Form::Roots,
                        text,
                        every_root: true,
                    }));
                }
            }
            let is_tail = is_last && matches!(stmt, Stmt::Expr(_, None));
            if !is_tail {
                self.stmt(&mut stmt);
            }
            out.push(stmt);
        }
        block.stmts = out;
        let result = match block.stmts.last_mut() {
            Some(Stmt::Expr(tail, None)) if !tail_is_opaque => {
                // The shape is computed before the scope ends: the tail may
                // name bindings of this block.
                let shape = self.value(tail);
                Some((tail, shape))
            }
            _ => None,
        };
        self.scopes.pop();
        result
    }

    /// A block whose value is not used (loop bodies).
    pub(super) fn block_stmts(&mut self, block: &mut syn::Block) {
        if let Some((tail, Some(shape))) = self.block(block) {
            self.site(tail, shape, Kind::Other);
        }
    }

    fn stmt(&mut self, stmt: &mut Stmt) {
        match stmt {
            Stmt::Local(local) => {
                let shape = match &mut local.init {
                    Some(init) => {
                        let shape = self.value(&mut init.expr);
                        if let Some((_, diverge)) = &mut init.diverge {
                            self.expr(diverge);
                        }
                        shape
                    }
                    None => None,
                };
                self.bind(&local.pat, shape);
            }
            Stmt::Expr(expr, _) => self.expr(expr),
            // Macro statements are handled by `block` (they cannot be marked).
            Stmt::Macro(_) | Stmt::Item(_) => {}
        }
    }
}
