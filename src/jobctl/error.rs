//! Everything that can stop a `jobctl` subcommand, each kind with its exit
//! code (the README's table).
//!
//! Subcommands return `Result<Exit, Error>` and never print an error
//! themselves: [`crate::exit::report`] prints it, once, with its causes,
//! every line prefixed with `jobctl: `.

use std::fmt;
use std::net::SocketAddr;

use crate::config_file::{ConfigError, ConfigErrors};
use crate::engine::EngineError;
use crate::exit::{CliError, Exit};
use crate::journal::{Execution, JournalError, SilenceId};
use crate::prometheus_api::PromError;
use crate::rules::socket::CommandError;
use crate::secret::SecretError;

/// Why a `jobctl` subcommand stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The rules are invalid, or Prometheus rejects one of their queries
    /// (`check`): one error per line, each at its `file:line:column`.
    #[error(transparent)]
    Rules(#[from] ConfigErrors),
    /// The `[sms]` settings cannot be used, or a secret they name cannot be
    /// loaded: the message, placed in the rules file, as the SMS set-up
    /// gives it.
    #[error(transparent)]
    Sms(#[from] ConfigError),
    /// A `[prometheus]` credential cannot be loaded. The secret's error
    /// already says why, so it is shown in this message, not as a cause.
    #[error("[prometheus] {0}")]
    PrometheusSecret(SecretError),
    /// A `[source]` credential cannot be loaded.
    #[error("[source] {0}")]
    SourceSecret(SecretError),
    /// The `[prometheus]` settings cannot make a client.
    #[error(transparent)]
    Prometheus(#[from] PromError),
    /// The `[source]` settings cannot make a scrape client.
    #[error(transparent)]
    Scrape(crate::prometheus_api::scrape::ScrapeError),
    /// The journal cannot be opened, read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The engine could not start (it reads the journal).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// `man DIR`: the pages cannot be written there.
    #[error("cannot write the manual pages into {}", path.display())]
    Write {
        /// The directory.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `run --web.config.file`: the web configuration cannot be used; its
    /// message names the file and the key.
    #[error(transparent)]
    WebConfig(#[from] crate::http::WebConfigError),
    /// `run --listen`: the address cannot be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `test-rule`, `silence add --job`: no job of that name.
    #[error("no job {job:?} in the rules; jobs: {}", quoted(known))]
    UnknownJob {
        /// The name asked for.
        job: String,
        /// The jobs the rules have.
        known: Vec<String>,
    },
    /// `send`, `silence add --socket`: no socket of that name.
    #[error("no socket {socket:?} in the rules; sockets: {}", known.join(", "))]
    UnknownSocket {
        /// The name asked for.
        socket: String,
        /// The sockets the rules have.
        known: Vec<String>,
    },
    /// `send`: a parameter without `=`.
    #[error("parameter {0:?} must be NAME=VALUE, e.g. minutes=1")]
    Parameter(String),
    /// `send`: the socket cannot send this command with these parameters.
    #[error("socket {socket}: {}", joined(errors))]
    Command {
        /// The socket's name.
        socket: String,
        /// Everything wrong with the command, at once.
        errors: Vec<CommandError>,
    },
    /// `history --since` is neither a duration nor a time.
    #[error("--since: {0}")]
    Since(String),
    /// `test-rule --replay`: the range asked for cannot be replayed.
    #[error("{0}")]
    Replay(String),
    /// `test-rule --replay`: Prometheus did not answer, or has no data.
    #[error(transparent)]
    ReplayFailed(crate::engine::replay::ReplayError),
    /// `test-rule --send` without `--yes`, and nobody at a terminal to ask.
    #[error("refusing to send without confirmation: stdin is not a terminal; add --yes")]
    Unconfirmed,
    /// `send`: the message was not sent (failed, uncertain, over budget).
    #[error("{}", Outcome(.0))]
    NotSent(Box<Execution>),
    /// `silence add` without anything to match.
    #[error(
        "a silence must say what it holds: --job NAME, --device LABEL=VALUE or --socket NAME \
         (all must match when several are given); --everything holds every action of every job"
    )]
    SilenceMatchesNothing,
    /// `silence add --device`: not a usable LABEL=VALUE.
    #[error("--device {matcher:?}: {why}")]
    SilenceDevice {
        /// What was typed.
        matcher: String,
        /// What is wrong with it.
        why: String,
    },
    /// `explain --device`: not a usable LABEL=VALUE, or not naming one
    /// device by the device key.
    #[error("--device {matcher:?}: {why}")]
    Device {
        /// What was typed.
        matcher: String,
        /// What is wrong with it.
        why: String,
    },
    /// `silence add --for`: not a usable duration.
    #[error("--for {text:?}: {why}")]
    SilenceDuration {
        /// What was typed.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// `silence add --comment`, `--author`: missing or unusable text.
    #[error("{flag}: {why}")]
    SilenceText {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        why: String,
    },
    /// `silence expire`: not a silence number.
    #[error("{0:?} is not a silence number; `jobctl silence list --all` shows them (#3 or 3)")]
    SilenceId(String),
    /// `demo`: its rules cannot run in the demo (not the `demo` SMS
    /// backend, a scrape target off loopback).
    #[error("{0}")]
    Demo(String),
    /// `demo`: its directory cannot be made.
    #[error("cannot make the demo's directory {}", dir.display())]
    DemoDir {
        /// The directory (its random part as `…`).
        dir: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `demo`: a loopback socket for the simulated account cannot be made.
    #[error("cannot serve the demo's simulated account on loopback")]
    DemoIo(#[source] std::io::Error),
    /// `demo`: the exporter cannot start on the simulated account.
    #[error("cannot start the demo's exporter")]
    DemoExporter(#[source] crate::exporter::StartError),
    /// `silence expire`: no silence of that number in the journal.
    #[error("no silence {0} in the journal; `jobctl silence list --all` shows them")]
    UnknownSilence(SilenceId),
}

impl CliError for Error {
    const PROGRAM: &'static str = "jobctl";

    fn code(&self) -> Exit {
        match self {
            Error::Rules(_)
            | Error::Sms(_)
            | Error::PrometheusSecret(_)
            | Error::SourceSecret(_)
            | Error::Prometheus(_)
            | Error::Scrape(_)
            | Error::WebConfig(_)
            | Error::Demo(_) => Exit::Config,
            Error::Journal(_) | Error::Engine(EngineError::Journal(_)) => Exit::Database,
            Error::Listen { .. } => Exit::Listen,
            Error::UnknownJob { .. }
            | Error::UnknownSocket { .. }
            | Error::Parameter(_)
            | Error::Command { .. }
            | Error::Since(_)
            | Error::Unconfirmed
            | Error::Replay(_)
            | Error::SilenceMatchesNothing
            | Error::SilenceDevice { .. }
            | Error::Device { .. }
            | Error::SilenceDuration { .. }
            | Error::SilenceText { .. }
            | Error::SilenceId(_)
            | Error::UnknownSilence(_) => Exit::Usage,
            Error::ReplayFailed(_) => Exit::Upstream,
            Error::Write { .. }
            | Error::DemoDir { .. }
            | Error::DemoIo(_)
            | Error::DemoExporter(_) => Exit::Runtime,
            Error::NotSent(_) => Exit::NotSent,
        }
    }
}

/// The line a manual send ends with: on stdout when the message was sent,
/// as [`Error::NotSent`] otherwise.
pub(super) struct Outcome<'a>(pub(super) &'a Execution);

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let execution = self.0;
        write!(
            f,
            "execution {}: {:?} to {} ({}): {}",
            execution.id, execution.text, execution.socket, execution.phone, execution.status
        )?;
        match &execution.detail {
            Some(detail) => write!(f, ": {detail}"),
            None => Ok(()),
        }
    }
}

/// `"a", "b"`: names as the rules file writes them.
fn quoted(names: &[String]) -> String {
    names.iter().map(|name| format!("{name:?}")).collect::<Vec<_>>().join(", ")
}

/// `first; second`: several errors on one line.
fn joined(errors: &[CommandError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
