//! Running this package's binaries the way a sysadmin does, so that tests
//! check their exit codes and exact words: an environment that does not
//! depend on the shell running the tests, a finished run read back as code,
//! stdout and stderr, signals sent as systemd or Ctrl-C send them, and the
//! end of a server's log for a failure message.

use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

use super::wait::DEADLINE;

/// `program` to be started in `dir` with stdin closed and stdout and
/// stderr captured, without the environment that changes what it prints:
/// no `RUST_LOG`, and not under systemd (no `JOURNAL_STREAM`; set it again
/// for log lines without timestamps).
pub(crate) fn command(program: &str, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// How a run ended.
#[derive(Debug)]
pub(crate) struct Ran {
    /// The exit code.
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Ran {
    /// A run that exited with `status` after writing `stdout` and `stderr`.
    /// Panics if a signal ended it, or if stderr holds an ANSI escape: logs
    /// go to the journal or a file when stderr is not a terminal, and colour
    /// codes would show there verbatim.
    pub(crate) fn new(status: ExitStatus, stdout: String, stderr: String) -> Ran {
        assert!(!stderr.contains('\x1b'), "ANSI escape in stderr:\n{stderr}");
        let code = status.code().unwrap_or_else(|| panic!("killed rather than exited: {status}"));
        Ran { code, stdout, stderr }
    }

    fn from_output(output: Output) -> Ran {
        let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
        let stderr = String::from_utf8(output.stderr).expect("stderr is UTF-8");
        Ran::new(output.status, stdout, stderr)
    }
}

/// Runs `command` to its end.
pub(crate) fn run(command: &mut Command) -> Ran {
    let output = command.output().unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    Ran::from_output(output)
}

/// Runs `command` to its end without blocking the runtime's thread, which
/// may be serving a fake the command talks to; panics after [`DEADLINE`].
pub(crate) async fn run_async(mut command: tokio::process::Command) -> Ran {
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{command:?} did not finish within {DEADLINE:?}"))
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    Ran::from_output(output)
}

/// Sends the signal named `name` (`TERM` as systemd sends it, `INT` as
/// Ctrl-C, `HUP` for a reload) to process `pid`, with kill(1).
pub(crate) fn signal(pid: u32, name: &str) {
    let pid = pid.to_string();
    let status = Command::new("kill").args(["-s", name, &pid]).status().expect("kill runs");
    assert!(status.success(), "kill -s {name} {pid}: {status}");
}

/// The last `lines` lines of the log file at `path` (empty if there is
/// none), for the failure message of a server a test started.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
