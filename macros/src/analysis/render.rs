//! Source text of guarding conditions for the plan table, rebuilt from
//! tokens (spans carry no text in every context, so this is deterministic).

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

/// The longest text kept; plan tables stay one line per parameter.
const MAX_CHARS: usize = 72;

#[derive(Clone, Copy, PartialEq)]
enum Last {
    Start,
    /// Identifier, literal, closing delimiter: binary operators follow.
    Word,
    /// Keyword that takes an expression after it (`if`, `in`, `match`, ...).
    Keyword,
    /// Binary operator or separator: a space follows.
    Op,
    /// `.`, `::`, unary operator, opening `#`: nothing follows with a space.
    Tight,
}

pub(crate) fn render(tokens: TokenStream) -> String {
    let mut out = String::new();
    render_into(tokens, &mut out);
    clip(out)
}

/// Shortens `text` to at most `MAX_CHARS` characters.
pub(crate) fn clip(text: String) -> String {
    if text.chars().count() > MAX_CHARS {
        text.chars().take(MAX_CHARS - 1).collect::<String>() + "…"
    } else {
        text
    }
}

pub(crate) fn render_tokens<T: quote::ToTokens>(node: &T) -> String {
    render(node.to_token_stream())
}

/// Whether `tt` is the bracket group of a mark the value tracker put on an
/// expression (`#[__maskddp_site(3)]`): never shown to users.
fn is_mark(tt: Option<&TokenTree>) -> bool {
    match tt {
        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Bracket => {
            matches!(g.stream().into_iter().next(),
                Some(TokenTree::Ident(i)) if i == crate::analysis::sites::SITE_ATTR)
        }
        _ => false,
    }
}

fn render_into(tokens: TokenStream, out: &mut String) {
    let mut last = Last::Start;
    let mut iter = tokens.into_iter().peekable();
    while let Some(tt) = iter.next() {
        if matches!(&tt, TokenTree::Punct(p) if p.as_char() == '#') && is_mark(iter.peek()) {
            iter.next();
            continue;
        }
        match tt {
            TokenTree::Ident(ident) => {
                if matches!(last, Last::Word | Last::Keyword | Last::Op) {
                    out.push(' ');
                }
                let text = ident.to_string();
                out.push_str(&text);
                last = if matches!(
                    text.as_str(),
                    "if" | "in"
                        | "match"
                        | "return"
                        | "while"
                        | "for"
                        | "let"
                        | "else"
                        | "mut"
                        | "move"
                        | "as"
                        | "ref"
                ) {
                    Last::Keyword
                } else {
                    Last::Word
                };
            }
            TokenTree::Literal(lit) => {
                if matches!(last, Last::Word | Last::Keyword | Last::Op) {
                    out.push(' ');
                }
                out.push_str(&lit.to_string());
                last = Last::Word;
            }
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{ ", " }"),
                    Delimiter::None => ("", ""),
                };
                let spaced = match group.delimiter() {
                    Delimiter::Brace => last != Last::Start && last != Last::Tight,
                    _ => matches!(last, Last::Keyword | Last::Op),
                };
                if spaced {
                    out.push(' ');
                }
                out.push_str(open);
                render_into(group.stream(), out);
                out.push_str(close);
                last = Last::Word;
            }
            TokenTree::Punct(punct) => {
                // Gather a multi-character operator (`::`, `&&`, `=>`, `..=`).
                let mut op = String::from(punct.as_char());
                let mut spacing = punct.spacing();
                while spacing == Spacing::Joint {
                    match iter.peek() {
                        Some(TokenTree::Punct(next)) => {
                            op.push(next.as_char());
                            spacing = next.spacing();
                            iter.next();
                        }
                        _ => break,
                    }
                }
                last = push_op(out, &op, last);
            }
        }
    }
}

fn push_op(out: &mut String, op: &str, last: Last) -> Last {
    match op {
        "." | "::" | ".." | "..=" => {
            out.push_str(op);
            Last::Tight
        }
        "," | ";" => {
            out.push_str(op);
            Last::Op
        }
        "?" => {
            out.push_str(op);
            Last::Word
        }
        "'" | "#" => {
            if matches!(last, Last::Word | Last::Keyword | Last::Op) {
                out.push(' ');
            }
            out.push_str(op);
            Last::Tight
        }
        "!" if last == Last::Word => {
            // A macro call: `vec!`.
            out.push('!');
            Last::Tight
        }
        _ if last != Last::Word => {
            // Unary: `&x`, `*x`, `-x`, `!x`.
            if matches!(last, Last::Keyword | Last::Op) {
                out.push(' ');
            }
            out.push_str(op);
            Last::Tight
        }
        _ => {
            out.push(' ');
            out.push_str(op);
            Last::Op
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn renders_like_source() {
        assert_eq!(render(quote!(if has_masks)), "if has_masks");
        assert_eq!(render(quote!(self.experts[expert])), "self.experts[expert]");
        assert_eq!(render(quote!(match route)), "match route");
        assert_eq!(
            render(quote!(if let Some(m) = masks && m.len() > 0)),
            "if let Some(m) = masks && m.len() > 0"
        );
        assert_eq!(render(quote!(for i in 0..n)), "for i in 0..n");
        assert_eq!(render(quote!(if !self.flag(x)?)), "if !self.flag(x)?");
        assert_eq!(
            render(quote!(Route::Mask { id } => x)),
            "Route::Mask { id } => x"
        );
        assert_eq!(render(quote!(f(&x, -1))), "f(&x, -1)");
    }

    #[test]
    fn truncates_long_text() {
        let long = render(
            quote!(if a_very_long_condition_name && another_very_long_condition_name && a_third_one),
        );
        assert!(long.ends_with('…'));
        assert_eq!(long.chars().count(), MAX_CHARS);
    }
}
