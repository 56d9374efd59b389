//! Error cause chains, shown the one way every message in this crate uses.
//!
//! Library errors keep their cause in `source()` rather than repeating it in
//! their own message (the rule of ripgrep and `std`): the cause is then shown
//! once, by whoever prints the error. These two functions are that printer,
//! shared by the clients that put a cause into a log line or a journal row
//! and by the command lines that print an error before they exit.

/// The lowest-level cause of an error: for a transport failure, the one a
/// sysadmin can act on (`Connection refused`, a DNS or certificate error),
/// where the outer messages only repeat the URL — with its query string,
/// which may hold a key (reqwest's own text does), so it is never shown.
pub(crate) fn innermost_cause(err: &(dyn std::error::Error + 'static)) -> String {
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
