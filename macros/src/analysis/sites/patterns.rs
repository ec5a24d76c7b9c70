//! Patterns: the part of a derived value each name in a pattern binds.

use syn::Pat;

use super::shape::Shape;
use super::tracker::Tracker;

impl Tracker<'_> {
    /// Binds the names of `pat` to the parts of a value of shape `shape`.
    pub(super) fn bind(&mut self, pat: &Pat, shape: Option<Shape>) {
        match pat {
            Pat::Ident(p) => {
                let name = p.ident.to_string();
                // `None`, constants and unit variants are paths, not bindings.
                if !name.starts_with(|c: char| c.is_uppercase()) {
                    self.bind_name(name, shape.clone());
                }
                if let Some((_, sub)) = &p.subpat {
                    self.bind(sub, shape);
                }
            }
            Pat::Tuple(t) => {
                let has_rest = t.elems.iter().any(|p| matches!(p, Pat::Rest(_)));
                match shape {
                    Some(Shape::Tuple(parts)) if !has_rest && parts.len() == t.elems.len() => {
                        for (p, part) in t.elems.iter().zip(parts) {
                            self.bind(p, part);
                        }
                    }
                    other => {
                        let opaque = other.map(|s| Shape::Opaque(s.roots()));
                        t.elems.iter().for_each(|p| self.bind(p, opaque.clone()));
                    }
                }
            }
            Pat::TupleStruct(ts) => {
                let is_some = ts.qself.is_none() && ts.path.is_ident("Some") && ts.elems.len() == 1;
                let inner = match &shape {
                    Some(s) if is_some => Some(s.item()),
                    other => other.as_ref().map(|s| Shape::Opaque(s.roots())),
                };
                ts.elems.iter().for_each(|p| self.bind(p, inner.clone()));
            }
            Pat::Reference(r) => self.bind(&r.pat, shape),
            Pat::Paren(p) => self.bind(&p.pat, shape),
            Pat::Type(t) => self.bind(&t.pat, shape),
            Pat::Or(or) => or.cases.iter().for_each(|p| self.bind(p, shape.clone())),
            Pat::Slice(s) => {
                let item = shape.as_ref().map(Shape::item);
                for p in &s.elems {
                    match p {
                        // `rest @ ..` is a slice of the same values.
                        Pat::Ident(id)
                            if matches!(id.subpat.as_ref().map(|s| &*s.1), Some(Pat::Rest(_))) =>
                        {
                            self.bind_name(id.ident.to_string(), shape.clone());
                        }
                        p => self.bind(p, item.clone()),
                    }
                }
            }
            Pat::Struct(s) => {
                let opaque = shape.map(|s| Shape::Opaque(s.roots()));
                s.fields
                    .iter()
                    .for_each(|f| self.bind(&f.pat, opaque.clone()));
            }
            _ => {}
        }
    }
}
