//! The shape of a derived value, and the sets of root fields it comes from.

use super::Roots;

/// The shape of a derived value, as far as syntax tells.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Shape {
    /// Derefs to a module or a slice of modules: the field, an element.
    Module(Roots),
    /// Yields values of the inner shape: an iterator, a slice, an `Option`,
    /// a collection.
    Seq(Box<Shape>),
    /// A tuple; `None` for components not derived from a field.
    Tuple(Vec<Option<Shape>>),
    /// Derived, of unknown type: only its roots are known.
    Opaque(Roots),
}

impl Shape {
    pub(super) fn roots(&self) -> Roots {
        let mut out = Roots::new();
        self.collect_roots(&mut out);
        out
    }

    fn collect_roots(&self, out: &mut Roots) {
        match self {
            Shape::Module(roots) | Shape::Opaque(roots) => merge(out, roots.clone()),
            Shape::Seq(item) => item.collect_roots(out),
            Shape::Tuple(parts) => parts.iter().flatten().for_each(|p| p.collect_roots(out)),
        }
    }

    /// The values a `for` loop, `Some(..)` pattern or adaptor yields.
    pub(super) fn item(&self) -> Shape {
        match self {
            Shape::Seq(item) => (**item).clone(),
            // A container field (`Vec`, array, `Option`) or a slice: its
            // elements are modules, parts of the field.
            Shape::Module(roots) => Shape::Module(parts(roots)),
            other => Shape::Opaque(parts(&other.roots())),
        }
    }

    /// This shape where a value may be one of two: `if c { &self.a } else { &self.b }`.
    pub(super) fn union(self, other: Shape) -> Shape {
        match (self, other) {
            (Shape::Module(mut a), Shape::Module(b)) => {
                merge(&mut a, b);
                Shape::Module(a)
            }
            (Shape::Seq(a), Shape::Seq(b)) => Shape::Seq(Box::new(a.union(*b))),
            (Shape::Tuple(a), Shape::Tuple(b)) if a.len() == b.len() => {
                Shape::Tuple(a.into_iter().zip(b).map(|(a, b)| union(a, b)).collect())
            }
            (a, b) => {
                let mut roots = a.roots();
                merge(&mut roots, b.roots());
                Shape::Opaque(roots)
            }
        }
    }
}

pub(super) fn union(a: Option<Shape>, b: Option<Shape>) -> Option<Shape> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.union(b)),
        (a, b) => a.or(b),
    }
}

pub(super) fn merge(into: &mut Roots, from: Roots) {
    for (field, whole) in from {
        let entry = into.entry(field).or_insert(whole);
        *entry &= whole;
    }
}

/// The same fields, as parts (elements) rather than wholes.
pub(super) fn parts(roots: &Roots) -> Roots {
    roots.keys().map(|&field| (field, false)).collect()
}
