//! The `command` backend: a program of your own sends the message.
//!
//! For whatever the other backends do not cover (a vendor's CLI, a script
//! that calls an API with its own signing, a second site reached over SSH),
//! `[sms.command]` names a program and its arguments. Arguments and
//! environment values are templates: `{phone}` (`+79991234567`),
//! `{phone_digits}` (`79991234567`) and `{text}`; `{{` and `}}` are literal
//! braces. The program is started directly, **never through a shell**, and
//! each argument reaches it as one `argv` entry whatever the text holds
//! (quotes, `;`, `$(…)`, spaces), so a device name cannot run anything. A
//! text can still begin with `-`: put `--` before it if the program takes
//! options.
//!
//! The program's exit status is its answer:
//!
//! - `0`: delivered;
//! - a status listed in `uncertain_exit_codes` (e.g. 75 for "my own request
//!   timed out"): uncertain;
//! - any other status: definitely not sent;
//! - killed by a signal it did not get from jobctl: uncertain;
//! - still running after `timeout`: killed (its whole process group, so a
//!   shell script's children go too) and uncertain.
//!
//! The end of its standard error (else of its standard output) is quoted in
//! the reason, so the journal shows the program's own words. Standard input
//! is empty. The environment is **not** jobctl's (which may hold a gateway
//! key or a token in `*_env` variables): it is cleared, and the program gets
//! only `PATH` and `LANG` (when jobctl has them) plus what `env` names: a
//! program that needs more is given it by name there.
//!
//! A `program` that is a shell run with `-c` (`program = "sh"`,
//! `args = ["-c", "send {text}"]`) defeats all of this: the device name in
//! the text reaches a shell. [`shell_warning`] says so in `jobctl check`.
//!
//! ```toml
//! [sms]
//! backend = "command"
//!
//! [sms.command]
//! program = "/usr/local/bin/send-sms"
//! args = ["--to", "{phone}", "--", "{text}"]
//! env = { SMS_SENDER = "jobctl" }
//! timeout = "30s"
//! uncertain_exit_codes = [75]
//! ```

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use toml::Spanned;

use super::template::{Template, Values, Var};
use super::{
    positive_duration, Delivered, Message, SendError, SendFuture, SendOutcome, Sender,
    SmsConfigError,
};
use crate::config_file::HumanDuration;

/// How long the program may run, by default.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes kept from the end of each of the program's outputs.
const MAX_OUTPUT_BYTES: usize = 4096;
/// Most characters of the program's output quoted in a reason.
const MAX_QUOTED_CHARS: usize = 200;
/// How long output is still read once the program ended (a child it left
/// behind may hold the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// The `[sms.command]` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandConfig {
    /// The program: a full path, a path relative to the rules file
    /// (`./send-sms`), or a bare name looked up in `PATH`.
    pub(crate) program: Spanned<PathBuf>,
    /// Its arguments, each a template (`"{phone}"`, `"{text}"`). Default:
    /// none (then `env` must carry the phone and the text).
    pub(crate) args: Option<Spanned<Vec<String>>>,
    /// Environment variables set for it, values are templates
    /// (`SMS_TO = "{phone}"`). Default: none.
    pub(crate) env: Option<Spanned<BTreeMap<String, String>>>,
    /// Time the program may run before it is killed and the send counted
    /// as uncertain; longer than zero. Default [`DEFAULT_TIMEOUT`].
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
    /// Exit statuses that mean "it may have been sent" rather than "it was
    /// not". Default: none, every status other than 0 is a definite failure.
    pub(crate) uncertain_exit_codes: Option<Spanned<Vec<i32>>>,
}

/// Runs the configured program for each message; see the module documentation.
#[derive(Debug)]
pub(crate) struct CommandSender {
    program: PathBuf,
    args: Vec<Template>,
    env: Vec<(String, Template)>,
    timeout: Duration,
    uncertain_exit_codes: Vec<i32>,
}

fn err(
    key: &str,
    message: impl Into<String>,
    span: Option<std::ops::Range<usize>>,
) -> SmsConfigError {
    SmsConfigError::new(&format!("sms.command.{key}"), message, span)
}

/// The check of [`resolve_program`] that needs no file: a program is named.
pub(crate) fn check_program(key: &str, program: &Spanned<PathBuf>) -> Result<(), SmsConfigError> {
    if program.get_ref().as_os_str().is_empty() {
        return Err(SmsConfigError::new(key, "the program is empty", Some(program.span())));
    }
    Ok(())
}

/// Resolves a configured program: a bare name is left for `PATH`, a path is
/// taken relative to `base_dir` and must be an executable file.
pub(crate) fn resolve_program(
    key: &str,
    program: &Spanned<PathBuf>,
    base_dir: &Path,
) -> Result<PathBuf, SmsConfigError> {
    use std::os::unix::fs::PermissionsExt;
    check_program(key, program)?;
    let written = program.get_ref();
    if written.components().count() == 1 && !written.is_absolute() {
        return Ok(written.clone());
    }
    let path = base_dir.join(written);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(path),
        Ok(meta) if meta.is_file() => Err(SmsConfigError::new(
            key,
            format!("{} is not executable; run chmod +x on it", path.display()),
            Some(program.span()),
        )),
        Ok(_) => Err(SmsConfigError::new(
            key,
            format!("{} is not a file", path.display()),
            Some(program.span()),
        )),
        Err(e) => Err(SmsConfigError::new(
            key,
            format!("cannot use {}: {e}", path.display()),
            Some(program.span()),
        )),
    }
}

impl CommandSender {
    /// The backend name in the journal.
    pub(crate) const NAME: &'static str = "command";

    /// Validates `[sms.command]`: the program exists (when given as a path),
    /// the templates parse, and the phone and the text reach the program.
    pub(crate) fn from_config(
        config: &CommandConfig,
        base_dir: &Path,
    ) -> Result<CommandSender, SmsConfigError> {
        let program = resolve_program("sms.command.program", &config.program, base_dir)?;
        Self::with_program(config, program)
    }

    /// The checks of [`CommandSender::from_config`] that leave the file
    /// system alone: a program is named, the templates parse, and the phone
    /// and the text reach the program.
    pub(crate) fn check(config: &CommandConfig) -> Result<(), SmsConfigError> {
        check_program("sms.command.program", &config.program)?;
        Self::with_program(config, PathBuf::new()).map(drop)
    }

    /// `[sms.command]` checked, running `program`.
    fn with_program(
        config: &CommandConfig,
        program: PathBuf,
    ) -> Result<CommandSender, SmsConfigError> {
        let args = match &config.args {
            None => Vec::new(),
            Some(args) => args
                .get_ref()
                .iter()
                .enumerate()
                .map(|(i, arg)| {
                    Template::parse(arg, &Var::MESSAGE)
                        .map_err(|m| err(&format!("args[{i}]"), m, Some(args.span())))
                })
                .collect::<Result<_, _>>()?,
        };
        let env = match &config.env {
            None => Vec::new(),
            Some(env) => env
                .get_ref()
                .iter()
                .map(|(name, value)| {
                    if name.is_empty() || name.contains(['=', '\0']) {
                        return Err(err(
                            &format!("env.{name}"),
                            format!("{name:?} is not an environment variable name"),
                            Some(env.span()),
                        ));
                    }
                    let template = Template::parse(value, &Var::MESSAGE)
                        .map_err(|m| err(&format!("env.{name}"), m, Some(env.span())))?;
                    Ok((name.clone(), template))
                })
                .collect::<Result<_, _>>()?,
        };
        let all = || args.iter().chain(env.iter().map(|(_, t)| t));
        let span =
            config.args.as_ref().map(Spanned::span).or(config.env.as_ref().map(Spanned::span));
        if !all().any(|t| t.uses(Var::Phone) || t.uses(Var::PhoneDigits)) {
            return Err(err(
                "args",
                "no argument or env value uses {phone} or {phone_digits}: the program would not learn the number",
                span,
            ));
        }
        if !all().any(|t| t.uses(Var::Text)) {
            return Err(err(
                "args",
                "no argument or env value uses {text}: the program would not learn the text",
                span,
            ));
        }
        let timeout =
            positive_duration("sms.command.timeout", config.timeout.as_ref(), DEFAULT_TIMEOUT)?;
        let uncertain_exit_codes =
            config.uncertain_exit_codes.as_ref().map(|c| c.get_ref().clone()).unwrap_or_default();
        if let Some(codes) = &config.uncertain_exit_codes {
            if codes.get_ref().contains(&0) {
                return Err(err(
                    "uncertain_exit_codes",
                    "0 means the program sent the message; it cannot be uncertain",
                    Some(codes.span()),
                ));
            }
        }
        Ok(CommandSender { program, args, env, timeout, uncertain_exit_codes })
    }

    async fn deliver(&self, message: &Message) -> SendOutcome {
        let shown = self.program.display().to_string();
        let run = Run {
            program: self.program.clone(),
            args: self.args.iter().map(|t| t.render(&Values::of(message, ""))).collect(),
            env: self
                .env
                .iter()
                .map(|(n, t)| (n.clone(), t.render(&Values::of(message, ""))))
                .collect(),
            timeout: self.timeout,
        };
        tracing::debug!(program = %shown, phone = %message.phone, "sending SMS through a program");
        let finished =
            run.run().await.map_err(|e| e.into_send_error(&format!("program {shown}")))?;
        let words = finished.quoted();
        match finished.status.code() {
            Some(0) => Ok(Delivered { backend: Self::NAME.to_string(), reference: None }),
            Some(code) if self.uncertain_exit_codes.contains(&code) => Err(SendError::Uncertain {
                reason: format!("program {shown} exited with status {code}, which says it may have sent the message{words}"),
            }),
            Some(code) => Err(SendError::Definite {
                reason: format!("program {shown} exited with status {code}{words}"),
            }),
            None => Err(finished.killed_by_signal(&format!("program {shown}"))),
        }
    }
}

impl Sender for CommandSender {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(self.deliver(message))
    }
}

/// The variables of jobctl's own environment a program is given; every
/// other one (a gateway key in `key_env`, a token) stays behind.
pub(crate) const INHERITED_ENV: [&str; 2] = ["PATH", "LANG"];

/// Shells whose `-c` runs its argument as a command line.
const SHELLS: [&str; 9] = ["sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish"];

/// The warning `jobctl check` prints when `[sms.command]` runs a shell with
/// `-c`: the text, device names included, would then reach a shell.
pub(crate) fn shell_warning(config: &CommandConfig) -> Option<SmsConfigError> {
    let program = config.program.get_ref().file_name()?.to_str()?;
    let args = config.args.as_ref()?;
    let runs_a_command_line = SHELLS.contains(&program)
        && args
            .get_ref()
            .iter()
            .any(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('c'));
    runs_a_command_line.then(|| {
        err(
            "program",
            format!(
                "{program} -c runs its argument as a shell command line: a device name in the text (they come from the AddReality account) would reach the shell; call your program directly with {{phone}} and {{text}} as arguments of their own"
            ),
            Some(config.program.span()),
        )
    })
}

/// One run of a program with a deadline; shared with the `gammu` backend.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    /// The program's whole environment besides [`INHERITED_ENV`].
    pub(crate) env: Vec<(String, String)>,
    pub(crate) timeout: Duration,
}

/// A program that ran to its end.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// A program that could not be started or did not end in time.
#[derive(Debug)]
pub(crate) enum RunError {
    /// Not started: nothing was sent.
    Spawn(io::Error),
    /// Killed after the timeout: it may have sent the message.
    TimedOut { timeout: Duration, stdout: String, stderr: String },
    /// Started but could not be waited for.
    Wait(io::Error),
}

impl RunError {
    /// The send error; `what` names the program (`"program /usr/bin/x"`).
    pub(crate) fn into_send_error(self, what: &str) -> SendError {
        match self {
            RunError::Spawn(e) if e.kind() == io::ErrorKind::NotFound => SendError::Definite {
                reason: format!("{what} was not found; check the path (or PATH for a bare name)"),
            },
            RunError::Spawn(e) => {
                SendError::Definite { reason: format!("{what} could not be started: {e}") }
            }
            RunError::TimedOut { timeout, stdout, stderr } => SendError::Uncertain {
                reason: format!(
                    "{what} did not finish within {} and was killed; it may have sent the message{}",
                    humantime::format_duration(timeout),
                    quote(&stderr, &stdout)
                ),
            },
            RunError::Wait(e) => SendError::Uncertain {
                reason: format!("{what} was started but could not be waited for: {e}"),
            },
        }
    }
}

impl Finished {
    /// `": <last words>"` from stderr, else stdout; empty when both are.
    pub(crate) fn quoted(&self) -> String {
        quote(&self.stderr, &self.stdout)
    }

    /// A program killed by a signal jobctl did not send: it may have sent
    /// the message first.
    pub(crate) fn killed_by_signal(&self, what: &str) -> SendError {
        let signal = self.status.signal().map_or("a signal".to_string(), |s| format!("signal {s}"));
        SendError::Uncertain {
            reason: format!(
                "{what} was killed by {signal}; it may have sent the message{}",
                self.quoted()
            ),
        }
    }
}

/// The end of a program's output for a reason: `": <words>"`, on one line,
/// with control characters made spaces and at most [`MAX_QUOTED_CHARS`].
fn quote(stderr: &str, stdout: &str) -> String {
    let source = if stderr.trim().is_empty() { stdout } else { stderr };
    let visible: String = source.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let flat = visible.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return String::new();
    }
    let count = flat.chars().count();
    if count <= MAX_QUOTED_CHARS {
        format!(": {flat}")
    } else {
        let tail: String = flat.chars().skip(count - MAX_QUOTED_CHARS).collect();
        format!(": …{tail}")
    }
}

/// Kills a program's whole process group when dropped, unless disarmed:
/// a send that is cancelled or times out leaves nothing running.
struct GroupKiller {
    group: Option<rustix::process::Pid>,
}

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.group = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Run {
    /// Runs the program in a process group of its own, without a shell,
    /// with empty standard input and a cleared environment (only
    /// [`INHERITED_ENV`] and `env`), and waits for it at most `timeout`.
    pub(crate) async fn run(&self) -> Result<Finished, RunError> {
        let mut command = tokio::process::Command::new(&self.program);
        command.env_clear();
        for name in INHERITED_ENV {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(n, v)| (n, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(RunError::Spawn)?;
        let mut killer = GroupKiller {
            group: child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)),
        };
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            child.stdout.take().map(|pipe| tokio::spawn(read_tail(pipe, Arc::clone(&stdout)))),
            child.stderr.take().map(|pipe| tokio::spawn(read_tail(pipe, Arc::clone(&stderr)))),
        ];
        let waited = tokio::time::timeout(self.timeout, child.wait()).await;
        let status = match waited {
            Ok(status) => {
                killer.disarm();
                Some(status)
            }
            Err(_elapsed) => {
                killer.kill();
                let _ = child.wait().await;
                None
            }
        };
        // Once the group is gone (or the program ended), the pipes close;
        // a child left behind that keeps one open is not waited for long.
        for reader in readers.into_iter().flatten() {
            let _ = tokio::time::timeout(OUTPUT_GRACE, reader).await;
        }
        let text = |buffer: &Arc<Mutex<Vec<u8>>>| {
            String::from_utf8_lossy(
                &buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            )
            .into_owned()
        };
        let (stdout, stderr) = (text(&stdout), text(&stderr));
        match status {
            Some(Ok(status)) => Ok(Finished { status, stdout, stderr }),
            Some(Err(e)) => Err(RunError::Wait(e)),
            None => Err(RunError::TimedOut { timeout: self.timeout, stdout, stderr }),
        }
    }
}

/// Reads a pipe to its end, keeping the last [`MAX_OUTPUT_BYTES`].
async fn read_tail(mut pipe: impl AsyncRead + Unpin, into: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut kept = into.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > MAX_OUTPUT_BYTES {
                    let excess = kept.len() - MAX_OUTPUT_BYTES;
                    kept.drain(..excess);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message { phone: "+79991234567".into(), text: "Reboot \"lobby\"; $(rm -rf /)".into() }
    }

    #[test]
    fn templates_render_each_value_whole() {
        let t = Template::parse("to={phone_digits} {{raw}} {text}", &Var::MESSAGE).unwrap();
        assert_eq!(
            t.render(&Values::of(&message(), "")),
            "to=79991234567 {raw} Reboot \"lobby\"; $(rm -rf /)"
        );
        let unknown = Template::parse("{number}", &Var::MESSAGE).unwrap_err();
        assert!(unknown.contains("unknown placeholder {number}"));
        assert!(Template::parse("{text", &Var::MESSAGE).unwrap_err().contains("unclosed {"));
    }

    #[test]
    fn quotes_are_one_short_line() {
        assert_eq!(quote("", ""), "");
        assert_eq!(quote("\n error:\tno credit \x1b[0m\n", "ignored"), ": error: no credit [0m");
        assert_eq!(quote("  ", "sent 5"), ": sent 5");
        let long = quote(&"x".repeat(500), "");
        assert_eq!(long.chars().count(), 2 + 1 + MAX_QUOTED_CHARS);
    }

    fn build(text: &str) -> Result<CommandSender, SmsConfigError> {
        let config: CommandConfig = toml::from_str(text).unwrap();
        CommandSender::from_config(&config, Path::new("/"))
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let err = build("program = \"sh\"\nargs = [\"{text}\"]\n").unwrap_err();
        assert_eq!(err.key, "sms.command.args");
        assert!(err.message.contains("would not learn the number"), "{}", err.message);
        let err = build("program = \"sh\"\nenv = { TO = \"{phone}\" }\n").unwrap_err();
        assert!(err.message.contains("would not learn the text"), "{}", err.message);
        let err = build("program = \"/nonexistent/send\"\nargs = [\"{phone}\", \"{text}\"]\n")
            .unwrap_err();
        assert_eq!(err.key, "sms.command.program");
        assert!(err.message.starts_with("cannot use /nonexistent/send"), "{}", err.message);
        let err = build(
            "program = \"sh\"\nargs = [\"{phone}\", \"{text}\"]\nuncertain_exit_codes = [0]\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "sms.command.uncertain_exit_codes");
        let err = build("program = \"sh\"\nargs = [\"{phone}\", \"{txt}\"]\n").unwrap_err();
        assert_eq!(err.key, "sms.command.args[1]");
        assert!(build("program = \"sh\"\nargs = [\"-c\", \"true\"]\nenv = { A = \"{phone}\", B = \"{text}\" }\n").is_ok());
    }
}
