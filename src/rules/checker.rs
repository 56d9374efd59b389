//! The error list that every check of the rules writes to, and the helpers
//! the checks of settings, sockets and jobs share.
//!
//! Checks never stop at the first problem: each one records its error (with
//! the file, `line:column`, the job or socket, and what to write instead)
//! through a [`Checker`] and goes on, so `jobctl check` lists everything at
//! once. It lives apart from the checks themselves so that the socket checks
//! (in [`super::socket`]) and the job checks (in [`super::validate`]) use it
//! without using each other.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::config::RawLabels;
use super::device::is_label_name;
use crate::config_file::{ConfigError, SourceFile};

/// Records errors against one file.
pub(crate) struct Checker<'a> {
    /// The file the spans point into.
    pub(crate) file: &'a SourceFile,
    /// Every error found so far, in every file.
    pub(crate) errors: &'a mut Vec<ConfigError>,
}

impl Checker<'_> {
    /// An error at a span of the file.
    pub(crate) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(self.file.error_at(span, message));
    }

    /// An error about the file as a whole.
    pub(crate) fn whole(&mut self, message: impl Into<String>) {
        self.errors.push(self.file.error(message));
    }

    /// `file:line:column` of a span, for messages that point at a second place.
    pub(crate) fn position(&self, span: Range<usize>) -> String {
        let (line, column) = self.file.position(span.start);
        format!("{}:{line}:{column}", self.file.path.display())
    }

    /// A non-empty string, or an error `"{what} is empty"`.
    pub(crate) fn non_empty(&mut self, value: &Spanned<String>, what: &str) -> Option<String> {
        if value.get_ref().trim().is_empty() {
            self.at(value.span(), format!("{what} is empty"));
            None
        } else {
            Some(value.get_ref().clone())
        }
    }
}

/// Why `name` is not a label name.
pub(crate) fn not_a_label(name: &str) -> String {
    format!("{name:?} is not a label name (letters, digits and _, not starting with a digit)")
}

/// Label matchers (`devices`, `powers`): names checked, values strings or
/// integers.
pub(crate) fn labels(
    ck: &mut Checker<'_>,
    raw: &RawLabels,
    prefix: &str,
    what: &str,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (name, value) in raw {
        if !is_label_name(name.get_ref()) {
            ck.at(name.span(), format!("{prefix}: {what}: {}", not_a_label(name.get_ref())));
            ok = false;
            continue;
        }
        let text = match value.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            _ => {
                ck.at(
                    value.span(),
                    format!("{prefix}: {what}.{} must be a string or an integer", name.get_ref()),
                );
                ok = false;
                continue;
            }
        };
        out.insert(name.get_ref().clone(), text);
    }
    ok.then_some(out)
}
