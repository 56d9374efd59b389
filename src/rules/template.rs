//! Text with `{name}` placeholders: custom socket commands (`"#12#0#{minutes}#1#"`)
//! and SMS actions (`"Player {name} is offline"`).
//!
//! One small parser for both, so the rules are the same everywhere: a
//! placeholder is a label-like name in braces, `{{` and `}}` stand for
//! literal braces, and anything else with a brace is an error reported at
//! check time rather than a surprise in a sent message.

use std::fmt;

/// Parsed text with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

/// Why a template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TemplateError {
    /// `{` without its `}`.
    #[error("`{{` at character {at} is not closed; write {{{{ for a literal brace")]
    Unclosed {
        /// One-based character position in the template.
        at: usize,
    },
    /// `}` that closes nothing.
    #[error("`}}` at character {at} closes nothing; write }}}} for a literal brace")]
    StrayClose {
        /// One-based character position in the template.
        at: usize,
    },
    /// `{}` or `{ x }` or `{a-b}`.
    #[error(
        "placeholder {{{name}}} is not a name (letters, digits and _, not starting with a digit)"
    )]
    BadName {
        /// What was between the braces.
        name: String,
    },
}

impl Template {
    /// Parses `text`.
    pub(crate) fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().enumerate().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(TemplateError::StrayClose { at: i + 1 }),
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, c)) => name.push(c),
                            None => return Err(TemplateError::Unclosed { at: i + 1 }),
                        }
                    }
                    if !super::device::is_label_name(&name) {
                        return Err(TemplateError::BadName { name });
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(name));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { source: text.to_string(), pieces })
    }

    /// The placeholders, in order of first appearance, without repeats.
    pub(crate) fn fields(&self) -> Vec<&str> {
        let mut fields: Vec<&str> = Vec::new();
        for piece in &self.pieces {
            if let Piece::Field(name) = piece {
                if !fields.contains(&name.as_str()) {
                    fields.push(name);
                }
            }
        }
        fields
    }

    /// The text with every placeholder removed: what is certain to be sent.
    pub(crate) fn literal_text(&self) -> String {
        self.render(|_| Some(String::new()))
    }

    /// Fills the placeholders; `value` returns `None` for an unknown one,
    /// which is then rendered as `?`.
    pub(crate) fn render(&self, value: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(name) => match value(name) {
                    Some(v) => out.push_str(&v),
                    None => out.push('?'),
                },
            }
        }
        out
    }

    /// The template as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_escaped_braces() {
        let t = Template::parse("#12#0#{minutes}#1# {{x}} {minutes}").unwrap();
        assert_eq!(t.fields(), ["minutes"]);
        assert_eq!(t.render(|_| Some("5".into())), "#12#0#5#1# {x} 5");
        assert_eq!(t.literal_text(), "#12#0##1# {x} ");
        assert_eq!(Template::parse("{name} down").unwrap().render(|_| None), "? down");
    }

    #[test]
    fn malformed_braces_are_errors() {
        assert_eq!(Template::parse("a {name").unwrap_err(), TemplateError::Unclosed { at: 3 });
        assert_eq!(Template::parse("a }").unwrap_err(), TemplateError::StrayClose { at: 3 });
        assert_eq!(
            Template::parse("{device name}").unwrap_err().to_string(),
            "placeholder {device name} is not a name (letters, digits and _, not starting with a digit)"
        );
        assert!(Template::parse("{}").is_err());
    }
}
