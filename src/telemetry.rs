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
