//! What the integration tests share: real servers on loopback standing in
//! for the services signage-watchdog talks to, and the helpers that more
//! than one test file needs (running the binaries, waiting, rules files,
//! SMS senders), so that each is written once. `benches/reaction.rs`
//! includes it too, for the same servers.
#![allow(
    dead_code,
    reason = "each integration test binary compiles this module and uses only part of it"
)]

pub(crate) mod addreality;
pub(crate) mod alertmanager;
pub(crate) mod engine;
pub(crate) mod exposition;
pub(crate) mod fake_gateway;
pub(crate) mod fake_modem;
pub(crate) mod fake_provider;
pub(crate) mod fake_webhook;
pub(crate) mod limited_server;
pub(crate) mod logs;
pub(crate) mod postgres;
pub(crate) mod process;
pub(crate) mod prometheus;
pub(crate) mod rules_file;
pub(crate) mod sms;
pub(crate) mod tls;
pub(crate) mod victoria;
pub(crate) mod wait;

use std::net::SocketAddr;
use std::path::Path;

/// Whether a program a test needs is there (`found`). When it is not,
/// prints why the calling test is skipped and returns false; under CI (the
/// `CI` environment variable is set, as `.ci/run` does) panics instead, so
/// that a missing package fails the run rather than hiding tests.
pub(crate) fn installed(found: bool, missing: &str) -> bool {
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{missing} (CI is set, so the tests that need it must not be skipped)");
    }
    eprintln!("skipping: {missing}");
    false
}

/// Whether `program --version` runs, for [`installed`].
pub(crate) fn runs(program: &str) -> bool {
    std::process::Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Writes `text` to `path` readable by its owner only (mode 600), as a
/// secret file must be for the binaries to read it without a warning.
pub(crate) fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A loopback address that was free a moment ago (bound to port 0, then
/// released): connections to it are refused at once.
pub(crate) fn unused_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback port")
}

/// `http://` and an [`unused_addr`]: a URL where nothing listens.
pub(crate) fn closed_url() -> String {
    format!("http://{}", unused_addr())
}

/// What `groff` says about a manual page (nothing when it is well formed),
/// or `None` when groff is not installed (`.ci/run` installs it). `-k`
/// reads the page as UTF-8, as `man` does.
pub(crate) fn groff_warnings(page: &Path) -> Option<String> {
    let rendered = std::process::Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output();
    let found = rendered.as_ref().is_ok_and(|out| out.status.success());
    if !installed(found, "groff not found; install Debian's groff-base package") {
        return None;
    }
    Some(String::from_utf8_lossy(&rendered.unwrap().stderr).into_owned())
}
