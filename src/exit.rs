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
//!
//! It also holds how both binaries write to stdout ([`out!`], [`outln!`]):
//! a reader that went away (`jobctl check | head -1`) is not a failure, as
//! for other Unix tools. Rust ignores SIGPIPE, so such a write returns
//! `BrokenPipe`, which `println!` turns into a panic (exit 101 and a
//! backtrace). Here the rest of the output is dropped quietly and the command
//! runs to its end with its usual exit code; any other write error (a full
//! disk behind `> file`) ends it with [`Exit::Runtime`] and a message.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

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
///
/// A command whose stdout could not be written (other than a reader that
/// went away) and that did not fail otherwise ends with [`Exit::Runtime`]
/// and says why.
pub(crate) fn finish<E: CliError>(result: Result<Exit, E>) -> Exit {
    let exit = result.unwrap_or_else(|err| report(&err));
    match STDOUT_ERROR.get() {
        Some(err) if exit == Exit::Ok => {
            eprintln!("{}: cannot write to stdout: {err}", E::PROGRAM);
            Exit::Runtime
        }
        _ => exit,
    }
}

/// Set once stdout failed: nothing more is written to it.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// The first stdout failure other than `BrokenPipe`, for [`finish`].
static STDOUT_ERROR: OnceLock<std::io::Error> = OnceLock::new();

/// Writes formatted text to stdout (what [`out!`] and [`outln!`] expand to).
pub(crate) fn write_stdout_fmt(args: std::fmt::Arguments<'_>) {
    stdout_result(|out| out.write_fmt(args));
}

/// Flushes stdout (a prompt without a newline).
pub(crate) fn flush_stdout() {
    stdout_result(Write::flush);
}

/// Runs one write on stdout unless it already failed, and records how it
/// failed: `BrokenPipe` quietly, anything else for [`finish`] to report.
fn stdout_result(write: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    if let Err(err) = write(&mut std::io::stdout().lock()) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_ERROR.set(err);
        }
    }
}

/// `print!` for the command lines: see the module's documentation.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::exit::write_stdout_fmt(format_args!($($arg)*))
    };
}

/// `println!` for the command lines: see the module's documentation.
macro_rules! outln {
    () => {
        $crate::exit::write_stdout_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::exit::write_stdout_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

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
