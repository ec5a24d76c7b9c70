use std::collections::HashMap;
use std::fmt;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::layout::ParamLayout;

/// How `forward` uses one parameter, as found at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    /// Used on every path through `forward`: reduced every step, never recorded.
    Always,
    /// Used on some paths only; `branch` is the source text of the condition
    /// (or the expression) that guards the use, for reports.
    Conditional {
        /// Source text of the guarding branch.
        branch: &'static str,
    },
    /// Declared frozen (`#[ddp(frozen)]`): `forward` never uses it, it never has
    /// a gradient and is never reduced.
    Frozen,
}

impl Usage {
    /// Whether the parameter is recorded per step.
    pub fn is_conditional(&self) -> bool {
        matches!(self, Usage::Conditional { .. })
    }

    /// When a parameter is described twice (tied weights), the stronger use wins.
    fn merge(self, other: Usage) -> Usage {
        match (self, other) {
            (Usage::Always, _) | (_, Usage::Always) => Usage::Always,
            (Usage::Conditional { branch }, _) | (_, Usage::Conditional { branch }) => {
                Usage::Conditional { branch }
            }
            (Usage::Frozen, Usage::Frozen) => Usage::Frozen,
        }
    }
}

/// Collects the usage of every parameter of a model, keyed by parameter id.
///
/// Generated `DdpModel::build_plan` implementations call these methods, one
/// per field.
#[derive(Debug, Default)]
pub struct PlanBuilder {
    usage: HashMap<ParamId, Usage>,
}

impl PlanBuilder {
    /// Every parameter of `module` is used on every path.
    pub fn always<B: Backend, M: Module<B>>(&mut self, module: &M) {
        self.describe(module, Usage::Always);
    }

    /// Every parameter of `module` is used only on the paths through `branch`.
    pub fn conditional<B: Backend, M: Module<B>>(&mut self, module: &M, branch: &'static str) {
        self.describe(module, Usage::Conditional { branch });
    }

    /// Every parameter of `module` is frozen: never used, never reduced.
    pub fn frozen<B: Backend, M: Module<B>>(&mut self, module: &M) {
        self.describe(module, Usage::Frozen);
    }

    fn describe<B: Backend, M: Module<B>>(&mut self, module: &M, usage: Usage) {
        for_each_param_id(module, |id| {
            self.usage
                .entry(id)
                .and_modify(|known| *known = known.merge(usage))
                .or_insert(usage);
        });
    }
}

/// Calls `f` with the id of every float parameter of `module`, in visit order.
pub(crate) fn for_each_param_id<B: Backend, M: Module<B>>(module: &M, f: impl FnMut(ParamId)) {
    struct Ids<F>(F);
    impl<B: Backend, F: FnMut(ParamId)> ModuleVisitor<B> for Ids<F> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            (self.0)(param.id);
        }
    }
    module.visit(&mut Ids(f));
}

/// The usage of every parameter slot of one model instance.
#[derive(Debug, Clone)]
pub struct UsagePlan {
    layout: ParamLayout,
    usage: Vec<Usage>,
    undescribed: Vec<usize>,
}

impl UsagePlan {
    /// Joins a layout with the usage a plan builder collected.
    ///
    /// A slot the builder did not describe is treated as [`Usage::Always`]
    /// (safe: it is reduced every step) and listed by [`Self::undescribed`].
    pub fn new(layout: ParamLayout, builder: PlanBuilder) -> Self {
        let mut undescribed = Vec::new();
        let usage = layout
            .slots()
            .iter()
            .enumerate()
            .map(|(slot, param)| {
                builder.usage.get(&param.id).copied().unwrap_or_else(|| {
                    undescribed.push(slot);
                    Usage::Always
                })
            })
            .collect();
        Self {
            layout,
            usage,
            undescribed,
        }
    }

    /// The parameter layout the plan describes.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The usage of each slot.
    pub fn usage(&self) -> &[Usage] {
        &self.usage
    }

    /// Slots whose usage no plan entry described (treated as always used).
    pub fn undescribed(&self) -> &[usize] {
        &self.undescribed
    }

    /// Slots used only in some branches, in slot order.
    pub fn conditional_slots(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.usage.len()).filter(|&slot| self.usage[slot].is_conditional())
    }

    /// Whether any slot is conditional (if none, ranks need not exchange usage).
    pub fn has_conditional(&self) -> bool {
        self.usage.iter().any(Usage::is_conditional)
    }

    /// A printable table: path, shape, usage, guarding branch.
    pub fn table(&self) -> PlanTable<'_> {
        PlanTable(self)
    }
}

/// The plan as a table; see [`UsagePlan::table`].
#[derive(Debug)]
pub struct PlanTable<'a>(&'a UsagePlan);

impl fmt::Display for PlanTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plan = self.0;
        let rows: Vec<[String; 4]> = plan
            .layout
            .slots()
            .iter()
            .zip(&plan.usage)
            .map(|(slot, usage)| {
                let (kind, branch) = match usage {
                    Usage::Always => ("always", String::new()),
                    Usage::Conditional { branch } => ("conditional", (*branch).to_owned()),
                    Usage::Frozen => ("frozen", String::new()),
                };
                [
                    slot.path.clone(),
                    format!("{:?}", slot.shape),
                    kind.to_owned(),
                    branch,
                ]
            })
            .collect();
        let header = ["parameter", "shape", "usage", "branch"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: [&str; 4]| {
            let text = format!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {}",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
            );
            writeln!(f, "{}", text.trim_end())
        };
        line(f, header)?;
        for row in &rows {
            line(f, [&row[0], &row[1], &row[2], &row[3]])?;
        }
        let conditional = plan.usage.iter().filter(|u| u.is_conditional()).count();
        write!(
            f,
            "{} parameters: {} always, {} conditional, {} frozen",
            rows.len(),
            plan.usage.iter().filter(|u| **u == Usage::Always).count(),
            conditional,
            plan.usage.iter().filter(|u| **u == Usage::Frozen).count(),
        )
    }
}
