//! The `gammu` backend: hand messages to gammu-smsd with `gammu-smsd-inject`.
//!
//! Where gammu-smsd already owns the modem (and also receives the sockets'
//! answers), jobctl must not open the modem itself: it queues each message
//! with gammu's own tool and lets the daemon send it.
//!
//! ```text
//! gammu-smsd-inject [-c <config>] TEXT +79991234567 -text '#12#0#1#1#'
//! ```
//!
//! The program is run directly, never through a shell, with `LC_ALL=C` so
//! that its messages are the English ones this backend reads, and with a
//! cleared environment like the `command` backend's (only `PATH` and `LANG`
//! are kept): jobctl's own variables, a gateway key among them, stay behind. Texts outside
//! ASCII are passed with `-textutf8` (gammu reads `-text` in the locale's
//! character set), texts that need UCS-2 add `-unicode`, and a notification
//! longer than one SMS adds `-autolen <characters>` so gammu splits it
//! instead of cutting it at 160.
//!
//! - It prints `Written message with ID <id>` (and exits 0): delivered to
//!   gammu-smsd's queue, `<id>` is the journal's reference. gammu-smsd sends
//!   it on its next pass; failures after that are in gammu-smsd's own log
//!   and tables, not in jobctl's journal.
//! - It exits 0 without that line: delivered, without a reference.
//! - It exits with another status: definitely not queued; its own words are
//!   quoted (e.g. "Failed to open database").
//! - It does not finish within `timeout`: killed, uncertain (it may have
//!   written the message).
//!
//! ```toml
//! [sms]
//! backend = "gammu"
//!
//! [sms.gammu]
//! program = "/usr/bin/gammu-smsd-inject"
//! config = "/etc/gammu-smsdrc"
//! timeout = "30s"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::command::{check_program, resolve_program, Run};
use super::text::{self, Encoding};
use super::{
    positive_duration, Delivered, Message, SendError, SendFuture, SendOutcome, Sender,
    SmsConfigError,
};
use crate::config_file::HumanDuration;

/// The program when `program` is not set, looked up in `PATH`.
pub(crate) const DEFAULT_PROGRAM: &str = "gammu-smsd-inject";
/// How long `gammu-smsd-inject` may run, by default. It only writes to
/// gammu-smsd's queue (files or a database), so seconds are plenty.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// What `gammu-smsd-inject` prints once the message is in the queue.
const WRITTEN: &str = "Written message with ID ";

/// The `[sms.gammu]` table, as written. It may be left out: every field has
/// a default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GammuConfig {
    /// Path of `gammu-smsd-inject` (relative paths from the rules file).
    /// Default [`DEFAULT_PROGRAM`], looked up in `PATH`.
    pub(crate) program: Option<Spanned<PathBuf>>,
    /// gammu-smsd's configuration file, passed as `-c`. Default: gammu's
    /// own default (`/etc/gammu-smsdrc`).
    pub(crate) config: Option<Spanned<PathBuf>>,
    /// Time `gammu-smsd-inject` may run before it is killed and the send
    /// counted as uncertain; longer than zero. Default [`DEFAULT_TIMEOUT`].
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
}

/// Queues messages with `gammu-smsd-inject`; see the module documentation.
#[derive(Debug)]
pub(crate) struct GammuSender {
    program: PathBuf,
    config: Option<PathBuf>,
    timeout: Duration,
}

impl GammuSender {
    /// The backend name in the journal.
    pub(crate) const NAME: &'static str = "gammu";

    /// Validates `[sms.gammu]`.
    pub(crate) fn from_config(
        config: &GammuConfig,
        base_dir: &Path,
    ) -> Result<GammuSender, SmsConfigError> {
        let program = match &config.program {
            Some(program) => resolve_program("sms.gammu.program", program, base_dir)?,
            None => PathBuf::from(DEFAULT_PROGRAM),
        };
        Self::with_program(config, base_dir, program)
    }

    /// The checks of [`GammuSender::from_config`] that leave the file system
    /// alone: a program is named, the timeout.
    pub(crate) fn check(config: &GammuConfig) -> Result<(), SmsConfigError> {
        if let Some(program) = &config.program {
            check_program("sms.gammu.program", program)?;
        }
        Self::with_program(config, Path::new(""), PathBuf::new()).map(drop)
    }

    /// `[sms.gammu]` checked, running `program`.
    fn with_program(
        config: &GammuConfig,
        base_dir: &Path,
        program: PathBuf,
    ) -> Result<GammuSender, SmsConfigError> {
        let timeout =
            positive_duration("sms.gammu.timeout", config.timeout.as_ref(), DEFAULT_TIMEOUT)?;
        Ok(GammuSender {
            program,
            config: config.config.as_ref().map(|c| base_dir.join(c.get_ref())),
            timeout,
        })
    }

    /// The arguments for one message.
    fn args(&self, message: &Message) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(config) = &self.config {
            args.push("-c".to_string());
            args.push(config.display().to_string());
        }
        args.push("TEXT".to_string());
        args.push(message.phone.clone());
        let count = text::segments(&message.text);
        if count.encoding == Encoding::Ucs2 {
            args.push("-unicode".to_string());
        }
        args.push(if message.text.is_ascii() { "-text" } else { "-textutf8" }.to_string());
        args.push(message.text.clone());
        if !count.is_single() {
            args.push("-autolen".to_string());
            args.push(message.text.chars().count().to_string());
        }
        args
    }

    async fn deliver(&self, message: &Message) -> SendOutcome {
        let what = format!("{}", self.program.display());
        let run = Run {
            program: self.program.clone(),
            args: self.args(message),
            env: vec![("LC_ALL".to_string(), "C".to_string())],
            timeout: self.timeout,
        };
        tracing::debug!(program = %what, phone = %message.phone, "queueing SMS with gammu-smsd-inject");
        let finished = run.run().await.map_err(|e| e.into_send_error(&what))?;
        let reference = [&finished.stdout, &finished.stderr].into_iter().find_map(|output| {
            output.lines().find_map(|line| {
                let id = line.split_once(WRITTEN)?.1.trim();
                (!id.is_empty()).then(|| id.to_string())
            })
        });
        match finished.status.code() {
            Some(0) => Ok(Delivered { backend: Self::NAME.to_string(), reference }),
            // It said it wrote the message: the queue has it, whatever came after.
            Some(_) if reference.is_some() => {
                Ok(Delivered { backend: Self::NAME.to_string(), reference })
            }
            Some(code) => Err(SendError::Definite {
                reason: format!("{what} exited with status {code}{}", finished.quoted()),
            }),
            None => Err(finished.killed_by_signal(&what)),
        }
    }
}

impl Sender for GammuSender {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(self.deliver(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(config: &str) -> GammuSender {
        let config: GammuConfig = toml::from_str(config).unwrap();
        GammuSender::from_config(&config, Path::new("/etc/jobctl")).unwrap()
    }

    fn message(text: &str) -> Message {
        Message { phone: "+79991234567".into(), text: text.into() }
    }

    #[test]
    fn arguments_follow_the_text() {
        let plain = sender("");
        assert_eq!(plain.program, PathBuf::from("gammu-smsd-inject"));
        assert_eq!(
            plain.args(&message("#12#0#1#1#")),
            ["TEXT", "+79991234567", "-text", "#12#0#1#1#"]
        );
        assert_eq!(plain.args(&message("Ärger")), ["TEXT", "+79991234567", "-textutf8", "Ärger"]);
        assert_eq!(
            plain.args(&message("Перезагрузка")),
            ["TEXT", "+79991234567", "-unicode", "-textutf8", "Перезагрузка"]
        );
        let long = "a".repeat(200);
        assert_eq!(
            plain.args(&message(&long)),
            ["TEXT", "+79991234567", "-text", long.as_str(), "-autolen", "200"]
        );
        let configured = sender("config = \"gammu-smsdrc\"\n");
        assert_eq!(
            configured.args(&message("x")),
            ["-c", "/etc/jobctl/gammu-smsdrc", "TEXT", "+79991234567", "-text", "x"]
        );
    }
}
