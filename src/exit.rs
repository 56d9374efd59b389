//! How a command line ends: the exit codes of both binaries, and the one
//! place an error becomes a message on stderr and one of them.
//!
//! Each command line has its own error enum (`jobctl`'s, the exporter's),
//! in the manner of `just`'s `Error::code()`: every variant knows its exit
//! code, so no call site picks one, and a new kind of failure cannot be
//! added without deciding its code. Both enums implement `CliError`, and
//! `report` prints them.
//!
//! This is a file of its own at the top of the crate, rather than part of
//! either command line, because both use it and neither may import the
//! other; it is named after the one concept it holds (a `cli.rs` would
//! invite everything command-line to gather here, and would read like
//! `exporter::cli`). It imports nothing but [`crate::error`], so it is the
//! floor of the command-line layer.

use std::process::ExitCode;

use crate::error::with_causes;

/// Exit codes, documented in the README for each binary. The two binaries
/// share the numbers: 4 is always the binary's own SQLite file, 6 always a
/// service it reads that did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success: a clean shutdown, a valid configuration, every platform
    /// polled, every message sent.
    Ok = 0,
    /// An unexpected runtime failure (the HTTP server died, stdout closed).
    Runtime = 1,
    /// Bad command line (clap's own code); for `jobctl` also an unknown job,
    /// socket or command, or `--send` without confirmation.
    Usage = 2,
    /// The configuration or rules are invalid (syntax, schema, PromQL, SMS
    /// settings), or a secret is unreadable, missing or empty.
    Config = 3,
    /// The binary's SQLite file (the exporter's cache, `jobctl`'s journal)
    /// cannot be opened, read or written.
    Database = 4,
    /// The listen address cannot be bound.
    Listen = 5,
    /// A service the binary reads did not answer everything: a platform's
    /// poll (`addreality-exporter --once`), Prometheus (`jobctl run --once`,
    /// `jobctl test-rule`).
    Upstream = 6,
    /// `jobctl`: a message was not sent (failed, uncertain, over budget).
    NotSent = 7,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// An error a command line can end with.
pub(crate) trait CliError: std::error::Error {
    /// The program's name, the prefix of every line it prints on stderr.
    const PROGRAM: &'static str;

    /// The exit code this error ends the program with.
    fn code(&self) -> Exit;
}

/// The exit code of a command that ran to its end (`Ok`, the code of what
/// it reported itself on stdout) or stopped at an error, printed by
/// [`report`].
pub(crate) fn finish<E: CliError>(result: Result<Exit, E>) -> Exit {
    result.unwrap_or_else(|err| report(&err))
}

/// Prints `err` on stderr with its causes, each line prefixed with the
/// program's name (several configuration errors read and grep the same
/// way), and returns its exit code. The one place either binary prints an
/// error: a command that goes on after an error (`jobctl test-rule --send`
/// after one send failed) reports it here too, right after that send's own
/// log lines.
pub(crate) fn report<E: CliError>(err: &E) -> Exit {
    for line in with_causes(err).lines() {
        eprintln!("{}: {line}", E::PROGRAM);
    }
    err.code()
}
