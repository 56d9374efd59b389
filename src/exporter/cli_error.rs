//! Everything that can stop `addreality-exporter`, each kind with its exit
//! code (the README's table).
//!
//! The command line ([`super::cli`]) and the demo ([`super::demo`]) both
//! return this error and never print one themselves:
//! [`crate::exit::report`] prints it, once, with its causes, every line
//! prefixed with `addreality-exporter: `. It is a file of its own so that
//! the demo, which the command line runs, need not import the command line.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::cache::CacheError;
use super::StartError;
use crate::config_file::ConfigErrors;
use crate::exit::{CliError, Exit};
use crate::secret::SecretError;

/// Why `addreality-exporter` stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The configuration file is invalid: one error per line, each at its
    /// `file:line:column`.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// The web configuration file cannot be used; the message names the
    /// file and the key.
    #[error(transparent)]
    WebConfig(#[from] crate::http::WebConfigError),
    /// Platform tokens could not be loaded: one line per platform.
    #[error(transparent)]
    Tokens(TokenErrors),
    /// The cache cannot be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The exporter could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// `--once`: the exposition could not be written.
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
    /// `--once`: these platforms' polls failed (the log says why).
    #[error("poll failed for platform(s) {}; see the log above", .0.join(", "))]
    PollFailed(Vec<String>),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `--demo`: the listen address cannot be bound. The hint follows the
    /// operating system's reason, so the reason is in this message.
    #[error("cannot listen on {addr}: {error} (try --listen 127.0.0.1:0)")]
    DemoListen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// `--demo`: the simulated AddReality API cannot listen on loopback.
    #[error("cannot start the simulated API on loopback")]
    DemoApi(#[source] std::io::Error),
    /// `--demo`: the directory for its cache cannot be created.
    #[error("cannot create {}", dir.display())]
    DemoDir {
        /// The directory.
        dir: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("HTTP server failed")]
    Http(#[source] std::io::Error),
    /// `man DIR`: the pages cannot be written there.
    #[error("cannot write the manual pages into {}", dir.display())]
    Man {
        /// The directory.
        dir: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

impl CliError for Error {
    const PROGRAM: &'static str = "addreality-exporter";

    fn code(&self) -> Exit {
        match self {
            Error::Config(_) | Error::Tokens(_) | Error::WebConfig(_) => Exit::Config,
            Error::Cache(_) | Error::Start(StartError::Cache(_)) | Error::DemoDir { .. } => {
                Exit::Database
            }
            Error::Listen { .. } | Error::DemoListen { .. } => Exit::Listen,
            Error::PollFailed(_) => Exit::Upstream,
            Error::Start(StartError::Client(_))
            | Error::Stdout(_)
            | Error::DemoApi(_)
            | Error::Http(_)
            | Error::Man { .. } => Exit::Runtime,
        }
    }
}

/// A platform whose token cannot be loaded.
#[derive(Debug)]
pub(crate) struct TokenError {
    /// `file:line:column` of its `token_file` or `token_env`.
    pub(crate) at: String,
    /// The platform's id.
    pub(crate) platform: String,
    /// Why; its message says everything (see [`SecretError`]).
    pub(crate) error: SecretError,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: platform {}: {}", self.at, self.platform, self.error)
    }
}

/// Every platform whose token cannot be loaded, one per line, so that a
/// sysadmin fixes them all at once.
#[derive(Debug, thiserror::Error)]
pub(crate) struct TokenErrors(pub(crate) Vec<TokenError>);

impl fmt::Display for TokenErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}
