//! Logging set-up shared by both daemons.
//!
//! Logs go to stderr, one event per line, which systemd's journal stores as
//! is. Under systemd (no terminal) timestamps and colours are left out: the
//! journal adds its own timestamp and would show escape codes verbatim.
//! `--log-format json` writes each event as one JSON object (`level`,
//! `message` and the event's fields at the top level, `timestamp` unless
//! the journal adds its own), for log shippers. `RUST_LOG` overrides the
//! level given on the command line.

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `level` is a default filter such as
/// `"info"` or `"signage_watchdog=debug"`.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(on_terminal && format == LogFormat::Text)
        .with_target(false);
    // try_init: a second call (tests) is harmless.
    let _ = match (format, under_systemd) {
        (LogFormat::Text, false) => builder.try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Json, false) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Json, true) => builder.json().flatten_event(true).without_time().try_init(),
    };
}
