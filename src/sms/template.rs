//! Placeholders in SMS backend settings: `{phone}`, `{phone_digits}`,
//! `{text}` and `{key}`.
//!
//! The HTTP backend fills them into headers, query, form and JSON values;
//! the command backend into arguments and environment values. Both parse
//! the same way, once, when the configuration loads: an unknown placeholder
//! or an unclosed brace is a configuration error, never a surprise at send
//! time. `{{` and `}}` stand for literal braces.

use super::Message;

/// A placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    /// The recipient in E.164 form, `+79991234567`.
    Phone,
    /// The recipient without the `+`.
    PhoneDigits,
    /// The message text.
    Text,
    /// The backend's secret (HTTP only).
    Key,
}

impl Var {
    /// Every placeholder (HTTP requests).
    pub(crate) const ALL: [Var; 4] = [Var::Phone, Var::PhoneDigits, Var::Text, Var::Key];
    /// Those a program's arguments may use (no secret on a command line).
    pub(crate) const MESSAGE: [Var; 3] = [Var::Phone, Var::PhoneDigits, Var::Text];
    /// Those a JSON pointer into an answer may use.
    pub(crate) const IN_POINTERS: [Var; 2] = [Var::Phone, Var::PhoneDigits];

    fn name(self) -> &'static str {
        match self {
            Var::Phone => "phone",
            Var::PhoneDigits => "phone_digits",
            Var::Text => "text",
            Var::Key => "key",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Var(Var),
}

/// A string with placeholders, checked when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Piece>);

/// The values placeholders stand for in one message.
pub(crate) struct Values<'a> {
    pub(crate) phone: &'a str,
    pub(crate) phone_digits: &'a str,
    pub(crate) text: &'a str,
    pub(crate) key: &'a str,
}

impl<'a> Values<'a> {
    /// The values for `message`, with `key` (empty where there is none).
    pub(crate) fn of(message: &'a Message, key: &'a str) -> Values<'a> {
        Values {
            phone: &message.phone,
            phone_digits: message.phone.trim_start_matches('+'),
            text: &message.text,
            key,
        }
    }
}

impl Template {
    /// Parses `text`, accepting only the `allowed` placeholders.
    pub(crate) fn parse(text: &str, allowed: &[Var]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(format!(
                                    "unclosed {{ in {text:?} (write {{{{ for a literal brace)"
                                ))
                            }
                        }
                    }
                    let var = allowed.iter().find(|v| v.name() == name).ok_or_else(|| {
                        format!("unknown placeholder {{{name}}} in {text:?}; use {}", list(allowed))
                    })?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Var(*var));
                }
                '}' => return Err(format!("lone }} in {text:?} (write }}}} for a literal brace)")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template(pieces))
    }

    /// Whether the template uses `var`.
    pub(crate) fn uses(&self, var: Var) -> bool {
        self.0.contains(&Piece::Var(var))
    }

    /// The text with every placeholder filled in.
    pub(crate) fn render(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        for piece in &self.0 {
            out.push_str(match piece {
                Piece::Literal(text) => text,
                Piece::Var(Var::Phone) => values.phone,
                Piece::Var(Var::PhoneDigits) => values.phone_digits,
                Piece::Var(Var::Text) => values.text,
                Piece::Var(Var::Key) => values.key,
            });
        }
        out
    }
}

/// `{phone}, {phone_digits} or {text}`.
fn list(vars: &[Var]) -> String {
    let names: Vec<String> = vars.iter().map(|v| format!("{{{}}}", v.name())).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_braces_and_mistakes() {
        let template =
            Template::parse("Bearer {key} {{literal}} {phone_digits}", &Var::ALL).unwrap();
        let values = Values { phone: "+7999", phone_digits: "7999", text: "t", key: "K" };
        assert_eq!(template.render(&values), "Bearer K {literal} 7999");
        assert!(template.uses(Var::Key) && !template.uses(Var::Text));
        assert_eq!(
            Template::parse("{key}", &Var::MESSAGE).unwrap_err(),
            "unknown placeholder {key} in \"{key}\"; use {phone}, {phone_digits} or {text}"
        );
        assert!(Template::parse("{text", &Var::ALL).unwrap_err().starts_with("unclosed {"));
        assert!(Template::parse("a}b", &Var::ALL).unwrap_err().starts_with("lone }"));
    }
}
