//! The `smstools` backend: drop message files into smstools3's spool.
//!
//! Where smsd (smstools3) owns the modem, a message is a small text file in
//! its `outgoing` directory:
//!
//! ```text
//! To: 79991234567
//!
//! #12#0#1#1#
//! ```
//!
//! `To:` holds the number's digits without `+`. Plain ASCII texts are
//! written as they are (smsd's default ISO alphabet is ASCII there); any
//! other text gets `Alphabet: UCS2` and is written as UTF-16 big-endian,
//! which every smstools3 version reads.
//!
//! smsd picks up any complete-looking file in `outgoing`, so a file must
//! appear there whole. It is written under `<name>.LOCK` in the same
//! directory — smsd never reads a `.LOCK` file, and treats `<name>` as
//! locked while it exists — flushed to disk, then renamed to `<name>`: one
//! atomic step on one filesystem. smsd never sees half a file, and a crash
//! leaves at most an ignored `.LOCK` file behind.
//!
//! # Learning the outcome
//!
//! With only `outgoing` set, a file renamed into place counts as delivered
//! (smsd has it; the reference is the file name). With `sent` and `failed`
//! set to smsd's directories of the same names, jobctl waits up to
//! `outcome_timeout` for smsd to move the file (it keeps file names unless
//! `keep_filename = no` is set in smsd.conf):
//!
//! - into `sent/`: delivered; the reference is the file's `Message_id:`
//!   header when smsd wrote one, else the file name;
//! - into `failed/`: definitely not sent; smsd's `Fail_reason:` is quoted;
//! - neither in time: uncertain — smsd took the file and may still send it
//!   (the reason says when the file still sits in `outgoing/`, i.e. smsd
//!   is probably not running).
//!
//! ```toml
//! [sms]
//! backend = "smstools"
//!
//! [sms.smstools]
//! outgoing = "/var/spool/sms/outgoing"
//! sent = "/var/spool/sms/sent"          # optional, with failed: wait for the outcome
//! failed = "/var/spool/sms/failed"
//! outcome_timeout = "2m"
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use toml::Spanned;

use super::phone::PhoneNumber;
use super::{
    positive_duration, Delivered, Message, SendError, SendFuture, SendOutcome, Sender,
    SmsConfigError,
};
use crate::config_file::HumanDuration;

/// How long to wait for smsd's verdict when `sent`/`failed` are set, by
/// default: a queue of a few messages through one modem.
pub(crate) const DEFAULT_OUTCOME_TIMEOUT: Duration = Duration::from_secs(120);
/// How often `sent/` and `failed/` are looked at, by default.
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// What smsd appends to a file name for its lock files, and ignores.
const LOCK_SUFFIX: &str = ".LOCK";
/// Most characters of smsd's `Fail_reason:` quoted.
const MAX_QUOTED_CHARS: usize = 200;

/// The `[sms.smstools]` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SmstoolsConfig {
    /// smsd's outgoing spool directory (`outgoing` in smsd.conf); relative
    /// paths from the rules file. jobctl must be able to write there.
    pub(crate) outgoing: Spanned<PathBuf>,
    /// smsd's `sent` directory. Set it with `failed` to wait for smsd's
    /// verdict; default: not set, a file handed to smsd counts as delivered.
    pub(crate) sent: Option<Spanned<PathBuf>>,
    /// smsd's `failed` directory; set with `sent`.
    pub(crate) failed: Option<Spanned<PathBuf>>,
    /// How long to wait for the file to reach `sent/` or `failed/` before
    /// the send counts as uncertain; longer than zero. Used only with
    /// `sent` and `failed`. Default [`DEFAULT_OUTCOME_TIMEOUT`].
    pub(crate) outcome_timeout: Option<Spanned<HumanDuration>>,
    /// How often to look for the file meanwhile; longer than zero. Default
    /// [`DEFAULT_POLL_INTERVAL`].
    pub(crate) poll_interval: Option<Spanned<HumanDuration>>,
}

/// Where to look for smsd's verdict.
#[derive(Debug, Clone)]
struct Watch {
    sent: PathBuf,
    failed: PathBuf,
    timeout: Duration,
    interval: Duration,
}

/// Writes message files into smsd's spool; see the module documentation.
#[derive(Debug)]
pub(crate) struct SmstoolsSender {
    outgoing: PathBuf,
    watch: Option<Watch>,
}

fn err(
    key: &str,
    message: impl Into<String>,
    span: Option<std::ops::Range<usize>>,
) -> SmsConfigError {
    SmsConfigError::new(&format!("sms.smstools.{key}"), message, span)
}

fn directory(
    key: &str,
    written: &Spanned<PathBuf>,
    base_dir: &Path,
) -> Result<PathBuf, SmsConfigError> {
    let path = base_dir.join(written.get_ref());
    match fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => {
            Err(err(key, format!("{} is not a directory", path.display()), Some(written.span())))
        }
        Err(e) => Err(err(
            key,
            format!(
                "cannot use {}: {e}; is smstools3 installed and this smsd's spool?",
                path.display()
            ),
            Some(written.span()),
        )),
    }
}

/// `sent` and `failed` as written, with the watch's timings.
struct WatchSettings<'a> {
    sent: &'a Spanned<PathBuf>,
    failed: &'a Spanned<PathBuf>,
    timeout: Duration,
    interval: Duration,
}

/// How the outcome of a message is watched, checked: `None` when `sent` and
/// `failed` are not set. The directories are not looked at.
fn watch_settings(config: &SmstoolsConfig) -> Result<Option<WatchSettings<'_>>, SmsConfigError> {
    match (&config.sent, &config.failed) {
        (None, None) => Ok(None),
        (Some(sent), Some(failed)) => {
            let timeout = positive_duration(
                "sms.smstools.outcome_timeout",
                config.outcome_timeout.as_ref(),
                DEFAULT_OUTCOME_TIMEOUT,
            )?;
            let interval = positive_duration(
                "sms.smstools.poll_interval",
                config.poll_interval.as_ref(),
                DEFAULT_POLL_INTERVAL,
            )?;
            Ok(Some(WatchSettings { sent, failed, timeout, interval }))
        }
        (Some(sent), None) => Err(err(
            "failed",
            "set failed too: with sent alone a failure would look like silence",
            Some(sent.span()),
        )),
        (None, Some(failed)) => Err(err(
            "sent",
            "set sent too: with failed alone a success would look like silence",
            Some(failed.span()),
        )),
    }
}

/// Names message files uniquely within one process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl SmstoolsSender {
    /// The backend name in the journal.
    pub(crate) const NAME: &'static str = "smstools";

    /// Validates `[sms.smstools]`: the directories exist.
    pub(crate) fn from_config(
        config: &SmstoolsConfig,
        base_dir: &Path,
    ) -> Result<SmstoolsSender, SmsConfigError> {
        let outgoing = directory("outgoing", &config.outgoing, base_dir)?;
        let watch = match watch_settings(config)? {
            None => None,
            Some(WatchSettings { sent, failed, timeout, interval }) => Some(Watch {
                sent: directory("sent", sent, base_dir)?,
                failed: directory("failed", failed, base_dir)?,
                timeout,
                interval,
            }),
        };
        Ok(SmstoolsSender { outgoing, watch })
    }

    /// The checks of [`SmstoolsSender::from_config`] that leave the spool
    /// alone: `sent` and `failed` go together, the timeouts.
    pub(crate) fn check(config: &SmstoolsConfig) -> Result<(), SmsConfigError> {
        watch_settings(config).map(drop)
    }

    async fn deliver(&self, message: &Message) -> SendOutcome {
        let phone = PhoneNumber::parse(&message.phone)
            .map_err(|e| SendError::Definite { reason: format!("{e}; no file was written") })?;
        let contents = message_file(&phone, &message.text);
        let name = file_name();
        let outgoing = self.outgoing.clone();
        let written = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || spool(&outgoing, &name, &contents)).await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(SendError::Definite {
                    reason: format!("cannot write {} into {}: {e}", name, self.outgoing.display()),
                })
            }
            Err(join) => {
                return Err(SendError::Uncertain {
                    reason: format!(
                        "writing {name} into {} ended abnormally ({join})",
                        self.outgoing.display()
                    ),
                })
            }
        }
        tracing::debug!(file = %name, phone = %phone, "SMS handed to smsd");
        match &self.watch {
            None => Ok(Delivered { backend: Self::NAME.to_string(), reference: Some(name) }),
            Some(watch) => self.await_outcome(watch, &name).await,
        }
    }

    /// Looks in `sent/` and `failed/` until smsd moved the file there or the
    /// time is up.
    async fn await_outcome(&self, watch: &Watch, name: &str) -> SendOutcome {
        let deadline = tokio::time::Instant::now() + watch.timeout;
        loop {
            let look = {
                let (watch, outgoing, name) =
                    (watch.clone(), self.outgoing.clone(), name.to_string());
                tokio::task::spawn_blocking(move || look(&watch, &outgoing, &name)).await
            };
            match look {
                Ok(Verdict::Sent { message_id }) => {
                    return Ok(Delivered {
                        backend: Self::NAME.to_string(),
                        reference: Some(message_id.unwrap_or_else(|| name.to_string())),
                    })
                }
                Ok(Verdict::Failed { reason }) => {
                    return Err(SendError::Definite {
                        reason: format!(
                            "smsd moved {name} to {}{}",
                            watch.failed.display(),
                            reason.map(|r| format!(": {r}")).unwrap_or_default()
                        ),
                    })
                }
                Ok(Verdict::Pending { still_outgoing }) => {
                    if tokio::time::Instant::now() >= deadline {
                        let hint = if still_outgoing {
                            format!(
                                "; it is still in {}: is smsd running?",
                                self.outgoing.display()
                            )
                        } else {
                            "; smsd took it and may still send it".to_string()
                        };
                        return Err(SendError::Uncertain {
                            reason: format!(
                                "{name} reached neither {} nor {} within {}{hint}",
                                watch.sent.display(),
                                watch.failed.display(),
                                humantime::format_duration(watch.timeout)
                            ),
                        });
                    }
                }
                Err(join) => {
                    return Err(SendError::Uncertain {
                        reason: format!(
                            "looking for smsd's verdict on {name} ended abnormally ({join})"
                        ),
                    })
                }
            }
            // smsd says nothing when it is done, so its directories are
            // looked at every `poll_interval`. On SIGTERM jobctl gives sends
            // under way a grace period and then aborts them, this wait with
            // them; the message, already with smsd, is then `uncertain`.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            tokio::time::sleep(watch.interval.min(left)).await;
        }
    }
}

impl Sender for SmstoolsSender {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(self.deliver(message))
    }
}

/// The bytes of a message file: headers, a blank line, the text (no
/// newline after it: smsd would send it).
pub(crate) fn message_file(phone: &PhoneNumber, text: &str) -> Vec<u8> {
    let mut file = format!("To: {}\n", phone.digits()).into_bytes();
    if text.is_ascii() {
        file.push(b'\n');
        file.extend_from_slice(text.as_bytes());
    } else {
        file.extend_from_slice(b"Alphabet: UCS2\n\n");
        for unit in text.encode_utf16() {
            file.extend_from_slice(&unit.to_be_bytes());
        }
    }
    file
}

/// A name no other message of any jobctl process will take:
/// `jobctl-<unix ms>-<pid>-<sequence>`.
fn file_name() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("jobctl-{millis}-{}-{sequence}", std::process::id())
}

/// Writes `<name>.LOCK`, flushes it, and renames it to `<name>`.
fn spool(outgoing: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let temporary = outgoing.join(format!("{name}{LOCK_SUFFIX}"));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, outgoing.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// What the spool says about one file.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Sent { message_id: Option<String> },
    Failed { reason: Option<String> },
    Pending { still_outgoing: bool },
}

fn look(watch: &Watch, outgoing: &Path, name: &str) -> Verdict {
    // smsd copies the file under a lock of the same name plus .LOCK; while
    // that exists the copy may be incomplete.
    let settled = |dir: &Path| -> Option<Vec<u8>> {
        if dir.join(format!("{name}{LOCK_SUFFIX}")).exists() {
            return None;
        }
        fs::read(dir.join(name)).ok()
    };
    if let Some(file) = settled(&watch.sent) {
        return Verdict::Sent { message_id: header(&file, "Message_id:") };
    }
    if let Some(file) = settled(&watch.failed) {
        return Verdict::Failed { reason: header(&file, "Fail_reason:") };
    }
    Verdict::Pending { still_outgoing: outgoing.join(name).exists() }
}

/// A header's value from a message file (headers end at the first blank
/// line), flattened to one short line.
fn header(file: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(file);
    let value = text
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .find_map(|line| line.strip_prefix(name))?
        .trim();
    let flat: String = value.chars().filter(|c| !c.is_control()).take(MAX_QUOTED_CHARS).collect();
    (!flat.is_empty()).then_some(flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_have_digits_a_blank_line_and_the_exact_text() {
        let phone = PhoneNumber::parse("+79991234567").unwrap();
        assert_eq!(message_file(&phone, "#12#0#1#1#"), b"To: 79991234567\n\n#12#0#1#1#");
        assert_eq!(
            message_file(&phone, "Жa\n"),
            b"To: 79991234567\nAlphabet: UCS2\n\n\x04\x16\x00a\x00\n"
        );
    }

    #[test]
    fn headers_are_read_up_to_the_blank_line() {
        let file = b"To: 79991234567\nFail_reason: +CMS ERROR: 331\x07\nMessage_id: 12\n\nFail_reason: body";
        assert_eq!(header(file, "Fail_reason:").as_deref(), Some("+CMS ERROR: 331"));
        assert_eq!(header(file, "Message_id:").as_deref(), Some("12"));
        assert_eq!(header(b"To: 1\n\nMessage_id: 3", "Message_id:"), None);
    }

    #[test]
    fn names_are_unique() {
        assert_ne!(file_name(), file_name());
    }
}
