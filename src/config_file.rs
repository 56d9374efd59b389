//! Configuration files and the errors that point into them.
//!
//! Every configuration error a sysadmin sees names the file and the
//! `line:column` of the offending value, whether the problem is TOML syntax,
//! an unknown key (both reported by `toml` itself) or a check made after
//! parsing (a zero duration, an unknown socket). Parsers keep [`toml::Spanned`]
//! values for the latter (durations as [`HumanDuration`]) and turn spans into
//! positions here.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The text of one configuration file, kept so that byte spans can be turned
/// into `line:column` positions after parsing.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path as the user gave it; used verbatim in messages.
    pub(crate) path: PathBuf,
    /// The whole file.
    pub(crate) text: String,
    /// The byte offset at which each line starts (the first is 0), built
    /// once, so that turning a span into `line:column` is a binary search
    /// and a column count on one line: a rules file with thousands of jobs,
    /// each keeping its position, loads in linear time.
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Reads a file, naming it in the error when that fails.
    pub(crate) fn read(path: &Path) -> Result<SourceFile, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(SourceFile::from_text(path, text)),
            Err(err) => Err(ConfigError::unreadable(path, &err)),
        }
    }

    /// Wraps text that did not come from disk (tests, embedded defaults).
    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> SourceFile {
        let text = text.into();
        let line_starts =
            std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        SourceFile { path: path.into(), text, line_starts }
    }

    /// One-based line and column (in characters) of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // The last line starting at or before the offset; there is always
        // one, the first line starting at 0.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        let column = self.text.get(line_start..offset).map_or_else(
            // An offset inside a character (toml's spans never are one):
            // count what comes before it.
            || String::from_utf8_lossy(&self.text.as_bytes()[line_start..offset]).chars().count(),
            |before| before.chars().count(),
        ) + 1;
        (line, column)
    }

    /// An error at a span of this file.
    pub(crate) fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            path: self.path.clone(),
            location: Some((line, column)),
            message: message.into(),
        }
    }

    /// An error about the file as a whole (a missing section, say).
    pub(crate) fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError { path: self.path.clone(), location: None, message: message.into() }
    }

    /// Deserializes the file, turning `toml`'s error into a positioned one.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|err| self.toml_error(&err))
    }

    /// Converts a `toml` error (syntax, unknown field, wrong type) into a
    /// positioned one with `toml`'s own message, without its source excerpt.
    pub(crate) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim_end().to_string();
        match err.span() {
            Some(span) => self.error_at(span, message),
            None => self.error(message),
        }
    }
}

/// A problem in a configuration file, with where it is.
///
/// Displays as `path:line:column: message`, the shape compilers use, so
/// editors and terminals can jump to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file at fault.
    pub(crate) path: PathBuf,
    /// One-based line and column, when the problem has a place.
    pub(crate) location: Option<(usize, usize)>,
    /// What is wrong and, where it helps, what to do.
    pub(crate) message: String,
}

impl ConfigError {
    /// The file could not be read at all.
    pub(crate) fn unreadable(path: &Path, err: &std::io::Error) -> ConfigError {
        ConfigError {
            path: path.to_path_buf(),
            location: None,
            message: format!("cannot read file: {err}"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, column)) => {
                write!(f, "{}:{line}:{column}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Several configuration errors found in one pass, shown one per line, so a
/// sysadmin fixes them all at once rather than one per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{err}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(err: ConfigError) -> Self {
        ConfigErrors(vec![err])
    }
}

/// A duration as a sysadmin writes it (`"30s"`, `"10m"`, `"1h30m"`, `"7d"`),
/// read with [`duration::deserialize`].
///
/// A plain [`Duration`] read through `deserialize_with` cannot be
/// [`toml::Spanned`], so a check made after parsing (zero, longer than
/// another setting) could not say where the value is. Declare such a field
/// as `Option<Spanned<HumanDuration>>` and give the value's span to the
/// error.
///
/// [`Duration`]: std::time::Duration
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HumanDuration(pub std::time::Duration);

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        duration::deserialize(de).map(HumanDuration)
    }
}

/// Serde helper: a humantime duration (`"30s"`, `"10m"`, `"7d"`). Fields
/// checked after parsing use [`HumanDuration`] instead, which keeps a span.
pub(crate) mod duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes `"90s"`-style text into a [`Duration`], with humantime's
    /// own message on error (which `toml` then places at the value).
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(de)?;
        humantime::parse_duration(&text).map_err(|err| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {err} (write it like \"30s\", \"10m\", \"1h30m\", \"7d\")"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let file = SourceFile::from_text("x.toml", "a = 1\nимя = \"x\"\n");
        assert_eq!(file.position(0), (1, 1));
        assert_eq!(file.position(6), (2, 1));
        let quote = file.text.find('"').unwrap();
        assert_eq!(file.position(quote), (2, 7));
    }

    #[test]
    fn positions_agree_with_a_rescan_everywhere() {
        let text = "a = 1\n\nимя = \"x\"\r\n# ok\nlast";
        let file = SourceFile::from_text("x.toml", text);
        for offset in (0..=text.len() + 2).filter(|&o| o >= text.len() || text.is_char_boundary(o))
        {
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before[start..].chars().count() + 1;
            assert_eq!(file.position(offset), (line, column), "offset {offset}");
        }
    }

    #[test]
    fn toml_errors_keep_their_position() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code, reason = "the fields are read by serde only")]
        struct Raw {
            a: u32,
        }
        let file = SourceFile::from_text("x.toml", "a = 1\nb = 2\n");
        let err = file.parse::<Raw>().unwrap_err();
        assert_eq!(err.to_string(), "x.toml:2:1: unknown field `b`, expected `a`");
    }

    #[test]
    fn bad_durations_are_placed_at_the_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code, reason = "the fields are read by serde only")]
        struct Raw {
            #[serde(deserialize_with = "duration::deserialize")]
            every: std::time::Duration,
        }
        let file = SourceFile::from_text("x.toml", "every = \"10 parsecs\"\n");
        let err = file.parse::<Raw>().unwrap_err().to_string();
        assert!(err.starts_with("x.toml:1:9: invalid duration \"10 parsecs\""), "{err}");
    }

    #[test]
    fn a_spanned_duration_points_at_its_value() {
        #[derive(Debug, serde::Deserialize)]
        struct Raw {
            timeout: Option<toml::Spanned<HumanDuration>>,
        }
        let file = SourceFile::from_text("x.toml", "# wait\ntimeout = \"1m30s\"\n");
        let timeout = file.parse::<Raw>().unwrap().timeout.unwrap();
        assert_eq!(timeout.get_ref().0, std::time::Duration::from_secs(90));
        let err = file.error_at(timeout.span(), "timeout: too long");
        assert_eq!(err.to_string(), "x.toml:2:11: timeout: too long");
        let file = SourceFile::from_text("x.toml", "timeout = \"soon\"\n");
        let err = file.parse::<Raw>().unwrap_err().to_string();
        assert!(err.starts_with("x.toml:1:11: invalid duration \"soon\""), "{err}");
    }
}
