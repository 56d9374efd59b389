//! `addreality-exporter` as a sysadmin runs it: the real binary, its exit
//! codes and the exact words it prints for every mistake the README
//! documents, and what it leaves on disk.
//!
//! The AddReality API is the [`Simulator`] served from this test process on
//! `127.0.0.1:0`; the exporter listens on `127.0.0.1:0` too and says where in
//! its "listening on" line, which the tests read from its stderr instead of
//! sleeping. The library-level behaviour (faults, paging, forgetting) is in
//! `tests/exporter.rs`; this file checks the command line around it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use serde_json::Value;
use signage_watchdog::addreality::simulator::Fault;
use signage_watchdog::exporter::cache::Cache;
use support::addreality::{device, SimulatedApi};
use support::exposition::count;
use support::process::{run, Ran};
use support::prometheus::{PrometheusOptions, TestPrometheus};
use support::tls::{client, served_certificate, TestCa};
use support::wait::{wait_until, DEADLINE};

mod support;

const EXPORTER: &str = env!("CARGO_BIN_EXE_addreality-exporter");
const EXAMPLE: &str = include_str!("../addreality-exporter.example.toml");
const TOKEN: &str = "cli-t0ken-4f9a2c";
const TOKEN_ENV: &str = "SW_TEST_ADDREALITY_TOKEN";

// --- running the binary ----------------------------------------------------

/// The binary in `dir`, with an environment that does not depend on the
/// shell running the tests: no `RUST_LOG`, not under systemd, no tokens.
fn exporter(dir: &Path) -> Command {
    let mut command = support::process::command(EXPORTER, dir);
    command.env_remove(TOKEN_ENV).env_remove("ADDREALITY_TOKEN_12");
    command
}

/// Asserts the exit code and the exact stderr of a failed run.
#[track_caller]
fn assert_fails(run: &Ran, code: i32, stderr: &str) {
    assert_eq!((run.code, run.stderr.as_str()), (code, stderr), "stdout:\n{}", run.stdout);
}

/// A daemon running in the background, its stderr read line by line by a
/// thread so that the test can wait for a line rather than for a time.
struct Daemon {
    child: Child,
    lines: Receiver<String>,
    stderr: String,
}

impl Daemon {
    fn spawn(command: &mut Command) -> Daemon {
        let mut child = command.spawn().expect("the exporter binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                if send.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                    break;
                }
                line.clear();
            }
        });
        Daemon { child, lines, stderr: String::new() }
    }

    /// Reads stderr until a line contains `pattern`, and returns that line.
    fn wait_for_line(&mut self, pattern: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.stderr.push_str(&line);
                    if line.contains(pattern) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no {pattern:?} on stderr within {DEADLINE:?}:\n{}", self.stderr)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!("exited ({status:?}) before saying {pattern:?}:\n{}", self.stderr)
                }
            }
        }
    }

    /// The address from the `listening on http://ADDR/metrics` line (or
    /// `https://` over TLS), which the daemon and the demo log once they
    /// have bound it.
    fn listening(&mut self) -> SocketAddr {
        let prefix = "listening on ";
        let line = self.wait_for_line(prefix);
        let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
        let rest = rest.split_once("://").map_or(rest, |(_, rest)| rest);
        rest[..rest.find('/').unwrap()].parse().unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// Sends `signal` (`TERM` is what systemd sends, `INT` is Ctrl-C) and
    /// waits for the exit.
    fn stop_with(&mut self, signal: &str) -> Ran {
        support::process::signal(self.child.id(), signal);
        self.finish()
    }

    /// Reads stderr to its end and waits for the exit.
    fn finish(&mut self) -> Ran {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => self.stderr.push_str(&line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("still running {DEADLINE:?} later:\n{}", self.stderr)
                }
            }
        }
        let status = self.child.wait().expect("the exporter is reaped");
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout).expect("stdout is UTF-8");
        }
        Ran::new(status, stdout, std::mem::take(&mut self.stderr))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A failed assertion must not leave a daemon behind; once reaped,
        // this does nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- the AddReality API and HTTP -------------------------------------------

/// The simulated API with `devices`, served by a runtime of its own while
/// the test thread blocks on the child process.
fn api(devices: Vec<Value>) -> SimulatedApi {
    SimulatedApi::start_on_own_runtime(TOKEN, devices)
}

fn three_devices() -> Vec<Value> {
    vec![device(1, "Lobby", true), device(2, "Кафе \"Север\"", false), device(3, "Hall", true)]
}

/// A configuration for the simulator at `api_url`, listening on a port the
/// kernel picks, with its cache next to it.
fn write_config(dir: &Path, api_url: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "listen = \"127.0.0.1:0\"\napi_url = \"{api_url}\"\npoll_interval = \"1s\"\n\
         request_timeout = \"2s\"\ncache = \"cache.db\"\n\n\
         [[platforms]]\nid = 12\nname = \"Test fleet\"\ntoken_env = \"{TOKEN_ENV}\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `GET path` over plain HTTP/1.1: status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, body.to_string())
}

// --- --help, --version, bad command lines -----------------------------------

#[test]
fn help_names_every_flag_and_version_prints_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let help = run(exporter(dir.path()).arg("--help"));
    assert_eq!(help.code, 0);
    for flag in [
        "--config",
        "-c,",
        "--check-config",
        "--once",
        "--demo",
        "--listen",
        "--log-level",
        "--log-format",
        "--help",
        "--version",
    ] {
        assert!(help.stdout.contains(flag), "--help does not mention {flag}:\n{}", help.stdout);
    }
    assert!(
        help.stdout.starts_with("Polls the AddReality API for every configured account"),
        "--help should describe this binary, not the whole package:\n{}",
        help.stdout
    );
    let version = run(exporter(dir.path()).arg("--version"));
    assert_eq!(version.code, 0);
    assert_eq!(version.stdout, format!("addreality-exporter {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_bad_command_line_exits_2_and_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["--once", "--demo"],
            "error: the argument '--once' cannot be used with '--demo'\n\n\
             Usage: addreality-exporter --once\n\nFor more information, try '--help'.\n",
        ),
        (
            &["--listen", "localhost"],
            "error: invalid value 'localhost' for '--listen <ADDR:PORT>': invalid socket address syntax\n\n\
             For more information, try '--help'.\n",
        ),
        (
            &["--log-level", "warning"],
            "error: invalid value 'warning' for '--log-level <LEVEL>'\n  \
             [possible values: error, warn, info, debug, trace]\n\n\
             \x20 tip: a similar value exists: 'warn'\n\n\
             For more information, try '--help'.\n",
        ),
    ];
    for (args, stderr) in cases {
        assert_fails(&run(exporter(dir.path()).args(args)), 2, stderr);
    }
}

// --- configuration -----------------------------------------------------------

#[test]
fn the_shipped_example_configuration_checks_out() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, EXAMPLE).unwrap();
    // The token file and variable the example names; the file is found
    // next to the configuration, wherever the exporter is started from.
    let token_file = dir.path().join("31.token");
    std::fs::write(&token_file, "token-of-31\n").unwrap();
    let chmod = |mode| {
        std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
    };
    chmod(0o600);
    let elsewhere = tempfile::tempdir().unwrap();
    let check = || {
        run(exporter(elsewhere.path())
            .arg("--config")
            .arg(&config)
            .arg("--check-config")
            .env("ADDREALITY_TOKEN_12", "token-of-12"))
    };
    let checked = check();
    assert_eq!((checked.code, checked.stderr.as_str()), (0, ""));
    assert_eq!(
        checked.stdout,
        format!(
            "{}: OK\n\
             \x20 listen 0.0.0.0:9747, poll every 1m, cache /var/lib/addreality-exporter/cache.db\n\
             \x20 platform 12 (Main fleet): token from environment variable ADDREALITY_TOKEN_12\n\
             \x20 platform 31: token from file 31.token\n",
            config.display()
        )
    );

    chmod(0o644);
    let checked = check();
    assert_eq!(checked.code, 0, "a loose token file is a warning, not an error");
    let warning = format!(
        " WARN platform 31: secret file {} is open to other users (mode 644); \
         run chmod o-rwx on it (600, or 640 for a group that must read it)\n",
        token_file.display()
    );
    assert!(checked.stderr.ends_with(&warning), "{}", checked.stderr);
    for text in [&checked.stdout, &checked.stderr] {
        assert!(!text.contains("token-of-"), "a token was printed:\n{text}");
    }
}

/// The example documents every key the exporter accepts: the keys are taken
/// from the exporter's own "unknown field" message, so a new key fails this
/// test until the example shows it.
#[test]
fn the_shipped_example_shows_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for (file, text) in
        [("top.toml", "no_such_key = 1\n"), ("platform.toml", "[[platforms]]\nno_such_key = 1\n")]
    {
        std::fs::write(dir.path().join(file), text).unwrap();
        let refused = run(exporter(dir.path()).args(["-c", file, "--check-config"]));
        assert_eq!(refused.code, 3, "{}", refused.stderr);
        let expected = refused.stderr.split("expected one of ").nth(1).expect(&refused.stderr);
        keys.extend(expected.trim().split(", ").map(|key| key.trim_matches('`').to_string()));
    }
    assert!(keys.len() > 10, "{keys:?}");
    for key in keys {
        // A key without a default (web_config_file) is shown commented out.
        let shown = EXAMPLE.lines().any(|line| {
            line.starts_with(&format!("{key} ="))
                || line.starts_with(&format!("# {key} ="))
                || line.starts_with(&format!("[[{key}]]"))
        });
        assert!(shown, "addreality-exporter.example.toml does not show `{key}`");
    }
}

#[test]
fn every_configuration_mistake_exits_3_naming_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let platform = format!("[[platforms]]\nid = 12\ntoken_env = \"{TOKEN_ENV}\"\n");
    let cases: [(&str, Option<String>, &str); 7] = [
        (
            "syntax.toml",
            Some(format!("listen = \"127.0.0.1:9747\n{platform}")),
            "addreality-exporter: syntax.toml:1:25: invalid basic string, expected `\"`\n",
        ),
        (
            "unknown_key.toml",
            Some(format!("poll_intervall = \"60s\"\n{platform}")),
            "addreality-exporter: unknown_key.toml:1:1: unknown field `poll_intervall`, expected one of \
             `listen`, `api_url`, `poll_interval`, `request_timeout`, `cache`, `page_size`, `max_page_bytes`, \
             `forget_after`, `web_config_file`, `platforms`\n",
        ),
        (
            "wrong_type.toml",
            Some(format!("{platform}\n[[platforms]]\nid = 31\ntoken_env = \"{TOKEN_ENV}\"\nname = 31\n")),
            "addreality-exporter: wrong_type.toml:8:8: invalid type: integer `31`, expected a string\n",
        ),
        (
            "bad_duration.toml",
            Some(format!("poll_interval = \"10 parsecs\"\n{platform}")),
            "addreality-exporter: bad_duration.toml:1:17: invalid duration \"10 parsecs\": unknown \
             time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, \
             months, years (and few variations) (write it like \"30s\", \"10m\", \"1h30m\", \"7d\")\n",
        ),
        (
            "twice.toml",
            Some(format!("{platform}[[platforms]]\nid = \"12\"\ntoken_file = \"12.token\"\n")),
            "addreality-exporter: twice.toml:5:6: platform 12 is configured twice\n",
        ),
        (
            "token_file.toml",
            Some("[[platforms]]\nid = 31\ntoken_file = \"secrets/31.token\"\n".into()),
            "addreality-exporter: token_file.toml:3:14: platform 31: cannot read secret file secrets/31.token: \
             No such file or directory (os error 2)\n",
        ),
        (
            "missing.toml",
            None,
            "addreality-exporter: missing.toml: cannot read file: No such file or directory (os error 2)\n",
        ),
    ];
    for (file, text, stderr) in cases {
        if let Some(text) = text {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        let refused =
            run(exporter(dir.path()).args(["-c", file, "--check-config"]).env(TOKEN_ENV, TOKEN));
        assert_fails(&refused, 3, stderr);
    }

    // Every mistake at once, each on a line of its own that says whose it is.
    std::fs::write(
        dir.path().join("two.toml"),
        format!("poll_interval = \"0s\"\npage_size = 0\n{platform}"),
    )
    .unwrap();
    let refused = run(exporter(dir.path()).args(["-c", "two.toml", "--check-config"]));
    assert_fails(
        &refused,
        3,
        "addreality-exporter: two.toml:1:17: poll_interval must be longer than zero\n\
         addreality-exporter: two.toml:2:13: page_size must be between 1 and 10000 (the API's own page is 300)\n",
    );

    // A token variable that is set but blank is as good as none.
    std::fs::write(dir.path().join("empty_env.toml"), &platform).unwrap();
    let refused = run(exporter(dir.path())
        .args(["-c", "empty_env.toml", "--check-config"])
        .env(TOKEN_ENV, " \n"));
    assert_fails(
        &refused,
        3,
        &format!(
            "addreality-exporter: empty_env.toml:3:13: platform 12: environment variable {TOKEN_ENV} is empty\n"
        ),
    );
    // The daemon itself refuses the same way before binding anything.
    let refused = run(exporter(dir.path()).args(["-c", "empty_env.toml"]));
    assert_fails(
        &refused,
        3,
        &format!(
            "addreality-exporter: empty_env.toml:3:13: platform 12: environment variable {TOKEN_ENV} is not set\n"
        ),
    );
}

// --- --once ------------------------------------------------------------------

#[test]
fn once_prints_the_devices_and_never_creates_the_cache() {
    let api = api(three_devices());
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &api.url);
    let once =
        run(exporter(dir.path()).args(["-c", "config.toml", "--once"]).env(TOKEN_ENV, TOKEN));
    assert_eq!((once.code, once.stderr.as_str()), (0, ""), "nothing to say when all went well");
    let metrics = &once.stdout;
    assert_eq!(count(metrics, "addreality_device_online"), 3, "{metrics}");
    for line in [
        "addreality_device_online{platform_id=\"12\",device_id=\"1\",name=\"Lobby\"} 1\n",
        "addreality_device_online{platform_id=\"12\",device_id=\"2\",name=\"Кафе \\\"Север\\\"\"} 0\n",
        "addreality_platform_up{platform_id=\"12\"} 1\n",
        "addreality_platform_devices{platform_id=\"12\"} 3\n",
        "addreality_platform_info{name=\"Test fleet\",platform_id=\"12\"} 1\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in:\n{metrics}");
    }
    assert!(!dir.path().join("cache.db").exists(), "--once created the cache file");
    assert_eq!(api.simulator.request_count(), 1);
}

/// Runs `command` with its stdout a pipe whose reading end is closed before
/// anything is written (`… | head -1` at its most impatient).
fn run_into_a_closed_pipe(command: &mut Command) -> Ran {
    let mut child = command.spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    Ran::new(output.status, String::new(), String::from_utf8(output.stderr).unwrap())
}

#[test]
fn once_into_a_closed_pipe_exits_quietly_with_the_polls_code() {
    let api = api(three_devices());
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &api.url);
    let once = run_into_a_closed_pipe(
        exporter(dir.path()).args(["-c", "config.toml", "--once"]).env(TOKEN_ENV, TOKEN),
    );
    assert_eq!((once.code, once.stderr.as_str()), (0, ""), "no panic, no message");

    let once = run_into_a_closed_pipe(
        exporter(dir.path()).args(["-c", "config.toml", "--once"]).env(TOKEN_ENV, "wrong"),
    );
    assert_eq!(once.code, 6, "a failed poll still says so: {}", once.stderr);
    assert!(!once.stderr.contains("panicked"), "{}", once.stderr);
}

#[test]
fn once_with_a_refused_token_exits_6_and_never_shows_the_token() {
    let api = api(three_devices());
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &api.url);
    let wrong = "revoked-t0ken-77e1d0";
    let once = run(exporter(dir.path())
        .args(["-c", "config.toml", "--once", "--log-level", "debug"])
        .env(TOKEN_ENV, wrong));
    assert_eq!(once.code, 6, "{}", once.stderr);
    let refused = format!(
        "platform 12: poll failed: {} refused the token for platform 12 (HTTP 401); \
         check the token for platform 12",
        api.url
    );
    assert!(once.stderr.contains(&refused), "{}", once.stderr);
    assert!(
        once.stderr
            .ends_with("addreality-exporter: poll failed for platform(s) 12; see the log above\n"),
        "{}",
        once.stderr
    );
    assert!(once.stdout.contains("addreality_platform_up{platform_id=\"12\"} 0\n"));
    assert!(
        once.stdout
            .contains("addreality_request_failures_total{platform_id=\"12\",reason=\"auth\"} 1\n"),
        "{}",
        once.stdout
    );
    for (stream, text) in [("stdout", &once.stdout), ("stderr", &once.stderr)] {
        assert!(!text.contains(wrong), "the token is in {stream}:\n{text}");
    }
    assert_eq!(api.simulator.request_count(), 1, "a refused token is not retried");
    assert!(!dir.path().join("cache.db").exists());
}

// --- the cache -----------------------------------------------------------------

#[test]
fn a_corrupt_cache_exits_4_and_is_left_byte_for_byte() {
    let api = api(three_devices());
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &api.url);
    let mut rng = fastrand::Rng::with_seed(20);
    let garbage: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(8192).collect();
    let cache = dir.path().join("cache.db");
    std::fs::write(&cache, &garbage).unwrap();

    let refused = run(exporter(dir.path()).args(["-c", "config.toml"]).env(TOKEN_ENV, TOKEN));
    assert_fails(
        &refused,
        4,
        "addreality-exporter: cache.db is not a usable device cache (file is not a database); \
         it was left untouched: move it away and restart, the next polls fill a new cache\n",
    );
    assert_eq!(std::fs::read(&cache).unwrap(), garbage, "the cache file was changed");
    assert_eq!(api.simulator.request_count(), 0, "nothing polled");
    // --once does not read the cache file at all.
    let once =
        run(exporter(dir.path()).args(["-c", "config.toml", "--once"]).env(TOKEN_ENV, TOKEN));
    assert_eq!(once.code, 0, "{}", once.stderr);
    assert_eq!(std::fs::read(&cache).unwrap(), garbage, "the cache file was changed");
    let mut files: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    files.sort();
    assert_eq!(files, ["cache.db", "config.toml"], "no journal or WAL files left beside it");
}

#[test]
fn a_cache_in_a_missing_directory_exits_4_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9/public/v1/device/list");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("cache.db", "no/such/dir/cache.db")).unwrap();
    let refused = run(exporter(dir.path()).args(["-c", "config.toml"]).env(TOKEN_ENV, TOKEN));
    assert_fails(
        &refused,
        4,
        "addreality-exporter: cannot open the device cache no/such/dir/cache.db; make sure its \
         directory exists and is writable by the user the exporter runs as: unable to open \
         database file: no/such/dir/cache.db: Error code 14: Unable to open the database file\n",
    );
}

// --- listening -------------------------------------------------------------------

#[test]
fn a_listen_address_in_use_exits_5() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "http://127.0.0.1:9/public/v1/device/list");
    let refused = run(exporter(dir.path())
        .args(["-c", "config.toml", "--listen", &addr.to_string()])
        .env(TOKEN_ENV, TOKEN));
    assert_fails(
        &refused,
        5,
        &format!(
            "addreality-exporter: cannot listen on {addr}: Address already in use (os error 98)\n"
        ),
    );
    let refused = run(exporter(dir.path()).args(["--demo", "--listen", &addr.to_string()]));
    assert_fails(
        &refused,
        5,
        &format!(
            "addreality-exporter: cannot listen on {addr}: Address already in use (os error 98) \
             (try --listen 127.0.0.1:0)\n"
        ),
    );
}

// --- the daemon ------------------------------------------------------------------

#[test]
fn the_daemon_serves_stops_on_sigterm_and_its_cache_survives_a_restart() {
    let api = api(three_devices());
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &api.url);
    // Started from another directory: the cache is still found next to the
    // configuration, as the README says.
    let elsewhere = tempfile::tempdir().unwrap();
    let start = || {
        let mut daemon = Daemon::spawn(
            exporter(elsewhere.path())
                .arg("-c")
                .arg(dir.path().join("config.toml"))
                .env(TOKEN_ENV, TOKEN),
        );
        let addr = daemon.listening();
        (daemon, addr)
    };

    let (mut daemon, addr) = start();
    assert_ne!(addr.port(), 0, "the log names the port actually bound");
    // Wait on /metrics, not /healthz: the health is updated a moment before
    // the exposition is re-rendered.
    let metrics = wait_until("the first poll on /metrics", || {
        let (status, metrics) = get(addr, "/metrics");
        (status == 200 && metrics.contains("addreality_platform_up{platform_id=\"12\"} 1\n"))
            .then_some(metrics)
    });
    assert_eq!(count(&metrics, "addreality_device_online"), 3, "{metrics}");
    let health = get(addr, "/healthz");
    assert_eq!(health, (200, "ok: 1 platform(s) polled successfully\n".to_string()));
    let (status, landing) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(landing.contains(env!("CARGO_PKG_VERSION")), "{landing}");
    let stopped = daemon.stop_with("TERM");
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    assert!(stopped.stderr.contains("SIGTERM received, shutting down"), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("INFO stopped\n"), "{}", stopped.stderr);
    assert!(!stopped.stderr.contains(TOKEN));

    let cached = Cache::open(&dir.path().join("cache.db")).unwrap().load().unwrap();
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].platform_id, "12");
    let names: Vec<_> = cached[0].devices.iter().map(|d| d.device.name.as_str()).collect();
    assert_eq!(names, ["Lobby", "Кафе \"Север\"", "Hall"]);

    // The API hangs: the restarted daemon serves the cache before its first
    // poll can return, and a stop does not wait for that poll.
    api.simulator.set_fault(Some(Fault::Hang));
    let (mut daemon, addr) = start();
    assert!(daemon.stderr.contains("serving 3 cached devices until the first polls return"));
    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(count(&metrics, "addreality_device_online"), 3, "{metrics}");
    assert!(metrics.contains(
        "addreality_device_online{platform_id=\"12\",device_id=\"1\",name=\"Lobby\"} 1\n"
    ));
    // Healthy either way: the cached poll is recent (within three intervals)
    // or, if the test machine is slow, "first poll in progress".
    let (status, health) = get(addr, "/healthz");
    assert_eq!(status, 200, "{health}");
    assert!(health.starts_with("ok: "), "{health}");
    let stopped = daemon.stop_with("INT");
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    assert!(stopped.stderr.contains("SIGINT received, shutting down"), "{}", stopped.stderr);
    assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0, "nothing in the cwd");
}

#[test]
fn the_demo_serves_273_players_and_cleans_up_after_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Daemon::spawn(
        exporter(tmp.path()).args(["--demo", "--listen", "127.0.0.1:0"]).env("TMPDIR", tmp.path()),
    );
    let addr = demo.listening();
    let metrics = wait_until("273 devices on /metrics", || {
        let (status, metrics) = get(addr, "/metrics");
        (status == 200 && count(&metrics, "addreality_device_online") == 273).then_some(metrics)
    });
    assert!(metrics.contains(
        "addreality_platform_info{name=\"Demo fleet (simulated)\",platform_id=\"1\"} 1\n"
    ));
    // A fresh directory, private, not named after the process.
    let dirs: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().path()).collect();
    let [work] = dirs.as_slice() else { panic!("one demo directory expected: {dirs:?}") };
    let name = work.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("addreality-exporter-demo-"), "{name}");
    assert_ne!(name, format!("addreality-exporter-demo-{}", demo.child.id()));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(work).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
    assert!(work.join("cache.db").exists(), "the demo keeps a real cache in {}", work.display());
    let (status, health) = get(addr, "/healthz");
    assert_eq!((status, health.as_str()), (200, "ok: 1 platform(s) polled successfully\n"));

    let stopped = demo.stop_with("TERM");
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    assert!(stopped.stderr.contains("SIGTERM received, shutting down"), "{}", stopped.stderr);
    assert!(!work.exists(), "{} left behind", work.display());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing left in TMPDIR");
}

#[test]
fn log_format_json_writes_one_object_per_line_and_no_time_under_the_journal() {
    for (journal, timestamped) in [(false, true), (true, false)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut command = exporter(tmp.path());
        command.args(["--log-format", "json", "--demo", "--listen", "127.0.0.1:0"]);
        command.env("TMPDIR", tmp.path());
        if journal {
            command.env("JOURNAL_STREAM", "8:1");
        }
        let mut demo = Daemon::spawn(&mut command);
        demo.listening();
        let stopped = demo.stop_with("TERM");
        assert_eq!(stopped.code, 0, "{}", stopped.stderr);
        let lines: Vec<Value> = (stopped.stderr.lines())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
            .collect();
        assert!(lines.len() >= 3, "{}", stopped.stderr);
        for line in &lines {
            assert_eq!(line["level"], "INFO", "{line}");
            assert!(line["message"].is_string(), "{line}");
            assert_eq!(line.get("timestamp").is_some(), timestamped, "{line}");
        }
        let last = lines.last().unwrap();
        assert_eq!(last["message"], "SIGTERM received, shutting down");
    }
}

#[test]
fn completions_and_manual_pages_are_made_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let ran = run(exporter(dir.path()).args(["completions", shell]));
        assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{shell}");
        for flag in ["check-config", "once", "demo", "listen", "log-format"] {
            assert!(ran.stdout.contains(flag), "{shell} does not complete --{flag}");
        }
    }
    let man = dir.path().join("man1");
    let ran = run(exporter(dir.path()).args(["man", man.to_str().unwrap()]));
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""));
    let names =
        ["addreality-exporter", "addreality-exporter-completions", "addreality-exporter-man"];
    let pages: Vec<String> = names.iter().map(|n| format!("{}/{n}.1", man.display())).collect();
    assert_eq!(ran.stdout.lines().collect::<Vec<_>>(), pages);
    let main = std::fs::read_to_string(&pages[0]).unwrap();
    for flag in ["check\\-config", "once", "demo", "listen", "log\\-format"] {
        assert!(main.contains(&format!("\\-\\-{flag}")), "the page lacks --{flag}:\n{main}");
    }
    for page in &pages {
        if let Some(warnings) = support::groff_warnings(Path::new(page)) {
            assert_eq!(warnings, "", "{page}");
        }
    }
    let ran = run(exporter(dir.path()).args(["man", "/proc/self/no/such"]));
    assert_fails(
        &ran,
        1,
        "addreality-exporter: cannot write the manual pages into /proc/self/no/such: No such file or directory (os error 2)\n",
    );
}

// --- the listener secured by a web configuration ------------------------------

/// `dir/web.yml` with TLS (`server.crt`/`.key` from `ca`, made here) and
/// basic auth for `prometheus` with `password`.
fn write_web_config(dir: &Path, ca: &TestCa, password: &str) -> String {
    ca.server("exporter one", 1).write(dir, "server");
    let hash = bcrypt::hash(password, 4).unwrap();
    let text = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {hash}\n"
    );
    std::fs::write(dir.join("web.yml"), &text).unwrap();
    hash
}

#[test]
fn the_web_config_is_checked_at_start_and_a_bad_one_exits_3_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:9/");
    let ca = TestCa::new("test CA");
    write_web_config(dir.path(), &ca, "pw");
    // The key in the configuration: found next to it, wherever the exporter
    // runs from, and described by --check-config.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("web_config_file = \"web.yml\"\n{text}")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let checked = run(exporter(elsewhere.path())
        .arg("-c")
        .arg(&config)
        .arg("--check-config")
        .env(TOKEN_ENV, TOKEN));
    assert_eq!((checked.code, checked.stderr.as_str()), (0, ""));
    let line = format!(
        "  web config {}: TLS, basic auth for 1 user\n",
        dir.path().join("web.yml").display()
    );
    assert!(checked.stdout.contains(&line), "{}", checked.stdout);

    // Each mistake: exit 3, the file and the key named, no hash shown.
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let cases = [
        (
            format!("{tls}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            "addreality-exporter: web config bad.yml:4:3: unknown field `cipher_suites`, expected one of cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version\n".to_string(),
        ),
        (
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: server.key\n".to_string(),
            "addreality-exporter: web config bad.yml: tls_server_config.cert_file: cannot read nowhere.crt: No such file or directory (os error 2)\n".to_string(),
        ),
        (
            "basic_auth_users:\n  prometheus: $2y$10$0123456789abcdefghijk\n".to_string(),
            "addreality-exporter: web config bad.yml: basic_auth_users.prometheus: not a bcrypt hash (expected $2y$…, 60 characters; make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)\n".to_string(),
        ),
        (
            format!("{tls}  client_auth_type: Always\n"),
            "addreality-exporter: web config bad.yml: tls_server_config.client_auth_type: unknown policy \"Always\": expected one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert\n".to_string(),
        ),
    ];
    for (yaml, stderr) in cases {
        std::fs::write(dir.path().join("bad.yml"), &yaml).unwrap();
        let refused = run(exporter(dir.path())
            .args(["-c", "config.toml", "--web.config.file", "bad.yml"])
            .env(TOKEN_ENV, TOKEN));
        assert_fails(&refused, 3, &stderr);
        assert!(!refused.stderr.contains("0123456789"), "a hash was printed");
    }
    // Neither the demo nor --once serve, so neither takes one.
    let refused = run(exporter(dir.path()).args(["--demo", "--web.config.file", "web.yml"]));
    assert_eq!(refused.code, 2, "{}", refused.stderr);
}

/// The exporter's listener over TLS with basic auth, scraped by a real
/// Prometheus as the README shows; a certificate renewed on disk is served
/// after SIGHUP, and a broken web config at SIGHUP changes nothing.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth_and_a_renewed_certificate_is_served_after_sighup() {
    if !TestPrometheus::available() {
        return;
    }
    let api = api(three_devices());
    // The simulator has its own runtime; this one is for the test's clients
    // and Prometheus, while the test thread also reads the daemon's stderr.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &api.url);
    let ca = TestCa::new("exporter test CA");
    let ca_file = ca.write(dir.path(), "ca.crt");
    let password = "scrape-over-tls";
    let hash = write_web_config(dir.path(), &ca, password);
    support::write_secret(&dir.path().join("password"), password);
    let mut daemon = Daemon::spawn(
        exporter(dir.path())
            .args(["-c", "config.toml", "--web.config.file", "web.yml"])
            .env(TOKEN_ENV, TOKEN),
    );
    let addr = daemon.listening();
    assert!(
        daemon.stderr.contains(&format!(
            "listening on https://{addr}/metrics (TLS, basic auth for 1 user, from web.yml)"
        )),
        "{}",
        daemon.stderr
    );
    let url = format!("https://{addr}/metrics");
    let https = client(Some(&ca), None);
    let scrape = || {
        let request = https.get(&url).basic_auth("prometheus", Some(password));
        runtime.block_on(async { request.send().await.unwrap() })
    };
    let metrics = wait_until("the first poll over https", || {
        let text = runtime.block_on(scrape().text()).ok()?;
        text.contains("addreality_platform_up{platform_id=\"12\"} 1\n").then_some(text)
    });
    assert_eq!(count(&metrics, "addreality_device_online"), 3, "{metrics}");
    let refused = runtime.block_on(async { https.get(&url).send().await.unwrap() });
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Basic");

    // Prometheus scrapes it as the README says: https, the CA, basic auth
    // with a password file.
    let options = PrometheusOptions {
        scrape_configs: Some(format!(
            "  - job_name: 'addreality-tls'\n    scheme: https\n    tls_config:\n      ca_file: '{}'\n    basic_auth:\n      username: prometheus\n      password_file: '{}'\n    static_configs:\n      - targets: ['{addr}']\n",
            ca_file.display(),
            dir.path().join("password").display()
        )),
        ..PrometheusOptions::default()
    };
    runtime.block_on(async {
        let prometheus = options.start(&[]).await;
        prometheus
            .wait_until_query("up{job='addreality-tls'} == 1", |up| up.len() == 1, DEADLINE)
            .await;
        prometheus
            .wait_until_query(
                "count(addreality_device_online{job='addreality-tls'})",
                |samples| samples.len() == 1 && samples[0].value == 3.0,
                DEADLINE,
            )
            .await;
    });

    // A renewed certificate on disk: served once SIGHUP has been handled.
    let first = served_certificate(&scrape());
    let renewed = ca.server("exporter two", 2);
    renewed.write(dir.path(), "server");
    assert_eq!(served_certificate(&scrape()), first, "nothing changes before the SIGHUP");
    support::process::signal(daemon.child.id(), "HUP");
    let line = daemon.wait_for_line("web config web.yml reloaded");
    assert!(
        line.ends_with(" INFO web config web.yml reloaded: TLS, basic auth for 1 user\n"),
        "{line}"
    );
    assert_eq!(served_certificate(&scrape()), renewed.der, "serial 2, CN exporter two");

    // A broken file at the next SIGHUP: logged, and the settings in force stay.
    std::fs::write(dir.path().join("web.yml"), "tls_server_config:\n  cert_file: server.crt\n")
        .unwrap();
    support::process::signal(daemon.child.id(), "HUP");
    let line = daemon.wait_for_line("reload rejected");
    assert!(
        line.ends_with(" ERROR reload rejected: web config web.yml: tls_server_config.key_file: missing: TLS needs both cert_file and key_file\n"),
        "{line}"
    );
    let line = daemon.wait_for_line("reload rejected: the previous");
    assert!(
        line.ends_with(" ERROR reload rejected: the previous settings keep running\n"),
        "{line}"
    );
    let answer = scrape();
    assert_eq!(answer.status(), 200);
    assert_eq!(served_certificate(&answer), renewed.der);

    let stopped = daemon.stop_with("TERM");
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    for secret in [password, hash.as_str(), TOKEN] {
        assert!(!stopped.stderr.contains(secret), "{secret} in the log:\n{}", stopped.stderr);
    }
}
