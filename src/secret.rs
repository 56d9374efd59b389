//! Secrets (API tokens, SMS gateway keys, Prometheus credentials).
//!
//! Secrets never live in a configuration file: a file names where to find
//! one (`token_file` or `token_env`), and this module reads it. A [`Secret`]
//! cannot be printed by accident: its `Debug` and `Display` show `***`, so it
//! never reaches a log line, an error or a metric.

use std::fmt;
use std::path::{Path, PathBuf};

/// A secret value. Only [`Secret::expose`] gives the text, at the point of use.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value (tests and simulators).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret text, for the one header or argument that needs it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret comes from, as written in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file whose whole content (trimmed of surrounding white space) is the secret.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Why a secret could not be loaded. Never contains the secret itself.
///
/// Its message says everything, cause included, and `source()` is always
/// empty: the callers place it inside messages of their own that carry text,
/// not a chain (`sms.http.key_file: …` at a `file:line:column`,
/// `platform 12: …`, `[prometheus] …`).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {error}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error, shown in the message.
        error: std::io::Error,
    },
    /// The variable is not set (or not valid Unicode).
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file or variable holds nothing but white space.
    #[error("{0} is empty")]
    Empty(SecretSource),
}

/// A loaded secret and whether its file is open to more than its owner and
/// a group that reads it.
#[derive(Debug)]
pub struct LoadedSecret {
    /// The secret.
    pub(crate) secret: Secret,
    /// Set when other users may read (or write) a secret file, or its group
    /// may write it; callers log it as a warning, as ssh does for private
    /// keys. Mode 0640 is fine: a group that must read the file (the
    /// service's, under systemd) is the normal way to share it.
    pub(crate) loose_permissions: Option<String>,
}

impl SecretSource {
    /// Reads the secret. Relative file paths are taken relative to `base`
    /// (the directory of the configuration file that named them).
    pub fn load(&self, base: &Path) -> Result<LoadedSecret, SecretError> {
        match self {
            SecretSource::File(path) => {
                let path = base.join(path);
                let text = std::fs::read_to_string(&path)
                    .map_err(|error| SecretError::Unreadable { path: path.clone(), error })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(SecretError::Empty(SecretSource::File(path)));
                }
                Ok(LoadedSecret {
                    secret: Secret::new(value),
                    loose_permissions: loose_permissions(&path),
                })
            }
            SecretSource::Env(name) => {
                let value =
                    std::env::var(name).map_err(|_| SecretError::MissingEnv(name.clone()))?;
                let value = value.trim();
                if value.is_empty() {
                    return Err(SecretError::Empty(self.clone()));
                }
                Ok(LoadedSecret { secret: Secret::new(value), loose_permissions: None })
            }
        }
    }
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        Some(format!(
            "secret file {} is open to other users (mode {mode:03o}); run chmod o-rwx on it (600, or 640 for a group that must read it)",
            path.display()
        ))
    } else if mode & 0o020 != 0 {
        Some(format!(
            "secret file {} can be changed by its group (mode {mode:03o}); run chmod g-w on it",
            path.display()
        ))
    } else {
        None
    }
}

#[cfg(not(unix))]
fn loose_permissions(_path: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "*** Secret(***)");
    }

    #[test]
    fn file_secrets_are_trimmed_and_loose_modes_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loaded = SecretSource::File("token".into()).load(dir.path()).unwrap();
        assert_eq!(loaded.secret.expose(), "abc123");
        let warning = loaded.loose_permissions.unwrap();
        assert!(
            warning.contains("is open to other users (mode 644); run chmod o-rwx"),
            "{warning}"
        );

        for (mode, warned) in [
            (0o600, None),
            (0o400, None),
            (0o640, None),
            (0o440, None),
            (0o604, Some("is open to other users (mode 604)")),
            (0o602, Some("is open to other users (mode 602)")),
            (0o660, Some("can be changed by its group (mode 660); run chmod g-w on it")),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let loaded = SecretSource::File(path.clone()).load(dir.path()).unwrap();
            match (warned, loaded.loose_permissions) {
                (None, None) => {}
                (Some(expected), Some(warning)) => assert!(warning.contains(expected), "{warning}"),
                (expected, got) => panic!("mode {mode:o}: expected {expected:?}, got {got:?}"),
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

        std::fs::write(&path, "  \n").unwrap();
        let err = SecretSource::File(path).load(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("token is empty"), "{err}");
    }

    #[test]
    fn an_unreadable_file_says_why_once() {
        let err =
            SecretSource::File("no-such-token".into()).load(Path::new("/nonexistent")).unwrap_err();
        assert_eq!(
            crate::error::with_causes(&err),
            "cannot read secret file /nonexistent/no-such-token: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn missing_env_is_named() {
        let err =
            SecretSource::Env("SW_TEST_SURELY_UNSET".into()).load(Path::new(".")).unwrap_err();
        assert_eq!(err.to_string(), "environment variable SW_TEST_SURELY_UNSET is not set");
    }
}
