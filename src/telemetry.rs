//! Logging set-up shared by both daemons.
//!
//! Logs go to stderr, one event per line, which systemd's journal stores as
//! is. Under systemd (no terminal) timestamps and colours are left out: the
//! journal adds its own timestamp and would show escape codes verbatim.
//! `RUST_LOG` overrides the level given on the command line.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is a default filter such as
/// `"info"` or `"signage_watchdog=debug"`.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(on_terminal)
        .with_target(false);
    // try_init: a second call (tests) is harmless.
    let _ = if under_systemd { builder.without_time().try_init() } else { builder.try_init() };
}

/// The lowest-level cause of an error: for a transport failure, the one a
/// sysadmin can act on (`Connection refused`, a DNS or certificate error),
/// where the outer messages only repeat the URL — with its query string,
/// which may hold a key (reqwest's own text does), so it is never shown.
pub fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// An error followed by its causes, joined with `: `. Library errors keep
/// their cause in `source()` rather than in their message, so without this
/// the reason SQLite gave ("unable to open database file") would be lost.
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
