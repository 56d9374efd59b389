//! Sending SMS: one [`Sender`] trait, one file per backend.
//!
//! jobctl power-cycles players by texting their GSM sockets, and the journal
//! must never resend a command that may already have gone out. So every
//! backend answers the one question the journal needs: did the message leave?
//!
//! - `Ok(`[`Delivered`]`)`: the backend accepted it (a gateway's 2xx with no
//!   error in the body, a modem's `+CMGS`, a file renamed into smsd's spool).
//! - [`SendError::Definite`]: it certainly did not leave (connection refused,
//!   an HTTP error status, the gateway's own error, a modem's error before
//!   the text was handed over). Safe to retry later or to hand to the next
//!   backend.
//! - [`SendError::Uncertain`]: it may have left (a timeout after the request
//!   was written, a modem silent after Ctrl-Z). Never retried blindly.
//!
//! Backends, each configured in its own `[sms.<name>]` table:
//!
//! - [`http`]: any HTTP SMS API, with a preset for the older gateway;
//! - [`modem`]: a GSM modem on a serial line, driven with AT commands;
//! - [`smstools`]: the outgoing spool directory of smstools3's smsd;
//! - [`gammu`]: gammu-smsd's queue, through `gammu-smsd-inject`;
//! - [`command`]: any program, given the phone and the text;
//! - [`log`]: records only, to try jobctl without a way to send;
//! - `demo`: the simulated sockets of `jobctl demo`, which that command
//!   provides itself; anywhere else it is refused when the sender is built
//!   ([`SmsConfig::is_demo`]), so a rules file written by the demo can be
//!   read (`check`, `history`, `report`) but never sends.
//!
//! `backend = "modem"` selects one; `backends = ["modem", "http"]` makes a
//! [`failover`] chain that hands a message which certainly did not leave to
//! the next backend, and reports every attempt ([`AttemptChain`]) so the
//! journal keeps one row per attempt. [`text`] makes texts safe for every
//! backend and counts their segments. The `[sms]` table of the rules file is
//! [`SmsConfig`]; [`SmsConfig::build`] turns it into a ready sender.

pub(crate) mod command;
pub(crate) mod failover;
pub(crate) mod gammu;
pub(crate) mod http;
pub mod log;
pub(crate) mod modem;
pub mod phone;
mod price;
pub(crate) mod smstools;
mod template;
pub(crate) mod text;

pub use failover::{AttemptChain, AttemptOutcome, FailoverSender};
pub use price::Price;

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config_file::{ConfigError, HumanDuration, SourceFile};

/// One SMS to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Recipient in E.164 form, `+` and digits only (`"+79991234567"`);
    /// normalised by the caller when the rules were loaded.
    pub phone: String,
    /// The text, already passed through [`text::sanitize`].
    pub text: String,
}

/// The backend accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// [`Sender::name`] of the backend that took it, for the journal.
    pub backend: String,
    /// The backend's own id for the message (a gateway's message id, a
    /// modem's `+CMGS` reference), when it gives one.
    pub reference: Option<String>,
}

/// Why a message was not confirmed, split by what the journal may do next.
///
/// `reason` is a short sentence for a sysadmin: it names the backend's URL or
/// device (never a key) and, where it helps, what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The message certainly did not leave: safe to retry or fail over.
    #[error("not sent: {reason}")]
    Definite {
        /// What went wrong.
        reason: String,
    },
    /// The message may have left: do not resend without a human deciding.
    #[error("may have been sent: {reason}")]
    Uncertain {
        /// What went wrong.
        reason: String,
    },
}

impl SendError {
    /// `"failed"` or `"uncertain"`, for metrics labels and the journal.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            SendError::Definite { .. } => "failed",
            SendError::Uncertain { .. } => "uncertain",
        }
    }

    /// The sysadmin's sentence, without the "not sent"/"may have been sent"
    /// prefix of `Display`.
    pub fn reason(&self) -> &str {
        match self {
            SendError::Definite { reason } | SendError::Uncertain { reason } => reason,
        }
    }

    /// True when the message certainly did not leave.
    #[cfg(test)]
    pub(crate) fn is_definite(&self) -> bool {
        matches!(self, SendError::Definite { .. })
    }
}

/// What one send attempt came to.
pub type SendOutcome = Result<Delivered, SendError>;

/// The future a [`Sender`] returns. Boxed so that senders can be held as
/// `Box<dyn Sender>` in an ordered failover list.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = SendOutcome> + Send + 'a>>;

/// The future [`Departure::leaving`] returns: `Err` with why the departure
/// could not be recorded (then the message must not leave).
pub type DepartureFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Told by a backend that a message's I/O starts now: the first byte, the
/// request, the rename into a spool, the program started. Until then the
/// message certainly has not left (a modem backend may wait minutes for its
/// device's lock), so whoever keeps the record (the outbox, which journals
/// the message `sending` and returns once that is on disk) learns the
/// moment after which a crash leaves the message's fate unknown.
pub trait Departure: Send + Sync {
    /// Records that the message leaves now; the backend starts its I/O only
    /// once this returned `Ok`.
    fn leaving(&self) -> DepartureFuture<'_>;
}

/// A [`Departure`] nobody records: [`Sender::send`] uses it.
#[derive(Debug, Clone, Copy)]
pub struct Unrecorded;

impl Departure for Unrecorded {
    fn leaving(&self) -> DepartureFuture<'_> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Tells `departure` that a message leaves through `backend` now; a
/// departure that cannot be recorded is a definite failure, since the
/// message is then not sent.
pub(crate) async fn announce(departure: &dyn Departure, backend: &str) -> Result<(), SendError> {
    departure.leaving().await.map_err(|why| SendError::Definite {
        reason: format!(
            "{backend}: cannot record that the message leaves ({why}), so it was not sent"
        ),
    })
}

/// A way to send SMS. Implementations must be honest about uncertainty: an
/// outcome that is not known is [`SendError::Uncertain`], never `Definite`.
pub trait Sender: fmt::Debug + Send + Sync {
    /// Backend name for the journal and logs (`"http"`, `"log"`).
    fn name(&self) -> &str;

    /// Sends one message. Cancel-safe only in the sense that dropping the
    /// future leaves the outcome unknown; callers journal before calling.
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a>;

    /// Sends one message, telling `departure` right before the I/O that may
    /// make it leave starts. The default tells it first and then calls
    /// [`Sender::send`], right for a backend whose I/O starts at once; a
    /// backend that may wait first (the modem, for its device's lock) tells
    /// it after the wait.
    fn send_departing<'a>(
        &'a self,
        message: &'a Message,
        departure: &'a dyn Departure,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            announce(departure, self.name()).await?;
            self.send(message).await
        })
    }

    /// The chain behind this sender when it is a failover of several
    /// backends; [`AttemptChain::new`] uses it to report each attempt.
    /// Backends keep the default, `None`.
    fn as_failover(&self) -> Option<&FailoverSender> {
        None
    }
}

/// A backend `[sms]` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BackendKind {
    /// An HTTP SMS API, configured in `[sms.http]`.
    Http,
    /// Nothing leaves; each message is written to the log.
    Log,
    /// A GSM modem driven with AT commands, configured in `[sms.modem]`.
    Modem,
    /// smstools3's spool directories, configured in `[sms.smstools]`.
    Smstools,
    /// gammu-smsd's queue via `gammu-smsd-inject`, in `[sms.gammu]`.
    Gammu,
    /// A program of your own, configured in `[sms.command]`.
    Command,
    /// The simulated sockets of `jobctl demo`: no table, and nothing ever
    /// leaves the process. Only the demo can build it.
    Demo,
}

impl BackendKind {
    /// The name as written in the file and in the journal.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BackendKind::Http => "http",
            BackendKind::Log => "log",
            BackendKind::Modem => "modem",
            BackendKind::Smstools => "smstools",
            BackendKind::Gammu => "gammu",
            BackendKind::Command => "command",
            BackendKind::Demo => "demo",
        }
    }
}

/// The `[sms]` table of the rules file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// The one backend that sends: `"http"`, `"modem"`, `"smstools"`,
    /// `"gammu"`, `"command"` or `"log"` (or `"demo"`, which only
    /// `jobctl demo` can use). Write this or `backends`; one of
    /// them is required, because a daemon that silently sends nothing
    /// because a line was missing would be worse than one that refuses to
    /// start.
    pub(crate) backend: Option<Spanned<BackendKind>>,
    /// Several backends, tried in this order: a message that certainly did
    /// not leave through one goes to the next (`["modem", "http"]`).
    pub(crate) backends: Option<Spanned<Vec<Spanned<BackendKind>>>>,
    /// Hand a message whose outcome is uncertain (it may have left) to the
    /// next backend too, accepting that it may arrive twice. Default
    /// [`failover::DEFAULT_RETRY_UNCERTAIN`] (`false`): never for power
    /// commands.
    pub(crate) retry_uncertain: Option<bool>,
    /// Settings of the `http` backend; required when it is selected, kept
    /// but unused otherwise (so switching to `log` for a test is one line).
    pub(crate) http: Option<http::HttpConfig>,
    /// Settings of the `modem` backend; required when it is selected.
    pub(crate) modem: Option<modem::ModemConfig>,
    /// Settings of the `smstools` backend; required when it is selected.
    pub(crate) smstools: Option<smstools::SmstoolsConfig>,
    /// Settings of the `gammu` backend; optional (every field has a default).
    pub(crate) gammu: Option<gammu::GammuConfig>,
    /// Settings of the `command` backend; required when it is selected.
    pub(crate) command: Option<command::CommandConfig>,
    /// The most SMS segments a notification (`action = { sms, to }`) may
    /// take; a longer text is cut to fit. Default
    /// [`DEFAULT_MAX_SEGMENTS`]: one, which every backend can send (the
    /// modem sends single segments only). Socket commands are always one.
    pub(crate) max_segments: Option<Spanned<u32>>,
    /// What one SMS segment costs (`{ per_message = 3.5, currency = "RUB" }`),
    /// for the cost estimate of `jobctl test-rule --replay`; no default.
    pub(crate) price: Option<price::RawPrice>,
}

/// Default of `[sms] max_segments`.
pub(crate) const DEFAULT_MAX_SEGMENTS: usize = 1;

/// A problem in the `[sms]` table found after parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SmsConfigError {
    /// Dotted key at fault, as written in the file (`"sms.http.url"`).
    pub key: String,
    /// What is wrong and what to do. Never contains a secret.
    pub message: String,
    /// Byte span of the offending value in the file, when known.
    pub(crate) span: Option<Range<usize>>,
}

impl SmsConfigError {
    /// An error about `key`, placed at `span` in the rules file when known.
    pub fn new(key: &str, message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        SmsConfigError { key: key.to_string(), message: message.into(), span }
    }

    /// The same error placed at its `line:column` in `file`.
    pub(crate) fn in_file(&self, file: &SourceFile) -> ConfigError {
        let message = format!("{}: {}", self.key, self.message);
        match &self.span {
            Some(span) => file.error_at(span.clone(), message),
            None => file.error(message),
        }
    }
}

/// A backend's duration setting (`key` is the dotted key, like
/// `"sms.gammu.timeout"`): the value written, or `default` when there is
/// none. A written zero is refused at its value: every timeout and interval
/// of a backend must leave time for something to happen.
pub(crate) fn positive_duration(
    key: &str,
    written: Option<&Spanned<HumanDuration>>,
    default: Duration,
) -> Result<Duration, SmsConfigError> {
    match written {
        None => Ok(default),
        Some(value) if value.get_ref().0.is_zero() => {
            Err(SmsConfigError::new(key, "must be longer than zero", Some(value.span())))
        }
        Some(value) => Ok(value.get_ref().0),
    }
}

/// A backend named in `[sms]`, with the span of its name.
type Selected = (BackendKind, Range<usize>);

impl SmsConfig {
    /// `max_segments`, checked: 1 to 10.
    pub(crate) fn max_segments(&self) -> Result<usize, SmsConfigError> {
        match &self.max_segments {
            None => Ok(DEFAULT_MAX_SEGMENTS),
            Some(n) if (1..=10).contains(n.get_ref()) => Ok(*n.get_ref() as usize),
            Some(n) => Err(SmsConfigError::new(
                "sms.max_segments",
                "must be between 1 and 10 segments",
                Some(n.span()),
            )),
        }
    }

    /// Whether this table selects exactly the `demo` backend (alone), the
    /// one `jobctl demo` replaces with its simulated sockets.
    pub(crate) fn is_demo(&self) -> bool {
        matches!(self.selected(), Ok((_, kinds)) if kinds.len() == 1 && kinds[0].0 == BackendKind::Demo)
    }

    /// `price`, checked, when the table has one.
    pub(crate) fn price(&self) -> Result<Option<Price>, SmsConfigError> {
        self.price.as_ref().map(price::RawPrice::check).transpose()
    }

    /// Every check of [`SmsConfig::build`] that needs no secret, file or
    /// device: `max_segments`, the backends named, their tables and the
    /// settings in them (URLs, templates, timeouts, which key or PIN source).
    /// The rules are loaded only when this finds nothing, so a broken
    /// `[sms]` is reported with the other errors of the file; what it leaves
    /// out (a secret that cannot be read, a missing spool, a program that is
    /// not there) is found by `build`.
    pub(crate) fn check(&self) -> Vec<SmsConfigError> {
        let mut errors: Vec<SmsConfigError> = self.max_segments().err().into_iter().collect();
        errors.extend(self.price().err());
        match self.selected() {
            Err(err) => errors.push(err),
            Ok((key, kinds)) => errors.extend(
                kinds.into_iter().filter_map(|(kind, span)| self.check_one(kind, key, span).err()),
            ),
        }
        errors
    }

    /// What `jobctl check` warns about but accepts in the selected
    /// backends: a `command` program that is a shell run with `-c`.
    pub(crate) fn warnings(&self) -> Vec<SmsConfigError> {
        let Ok((_, kinds)) = self.selected() else { return Vec::new() };
        kinds
            .iter()
            .filter(|(kind, _)| *kind == BackendKind::Command)
            .filter_map(|_| command::shell_warning(self.command.as_ref()?))
            .collect()
    }

    /// Builds the configured sender, loading its secrets: the backend
    /// itself for `backend = "…"` or a one-element `backends`, a
    /// [`FailoverSender`] for several. Relative paths (`key_file`,
    /// `pin_file`, `program`) are taken relative to `base_dir`, the
    /// directory of the rules file.
    pub fn build(&self, base_dir: &Path) -> Result<Box<dyn Sender>, SmsConfigError> {
        let (key, kinds) = self.selected()?;
        let mut senders = kinds
            .iter()
            .map(|(kind, span)| self.build_one(*kind, key, span.clone(), base_dir))
            .collect::<Result<Vec<_>, _>>()?;
        let retry_uncertain = self.retry_uncertain.unwrap_or(failover::DEFAULT_RETRY_UNCERTAIN);
        if senders.len() == 1 {
            return Ok(senders.remove(0));
        }
        Ok(Box::new(FailoverSender::new(senders, retry_uncertain)))
    }

    /// The selected backends in order, with the key that named them.
    fn selected(&self) -> Result<(&'static str, Vec<Selected>), SmsConfigError> {
        match (&self.backend, &self.backends) {
            (Some(one), None) => Ok(("sms.backend", vec![(*one.get_ref(), one.span())])),
            (None, Some(list)) => {
                if list.get_ref().is_empty() {
                    return Err(SmsConfigError::new(
                        "sms.backends",
                        "the list is empty; name at least one backend, like [\"modem\", \"http\"]",
                        Some(list.span()),
                    ));
                }
                let mut kinds: Vec<Selected> = Vec::new();
                for kind in list.get_ref() {
                    if kinds.iter().any(|(seen, _)| seen == kind.get_ref()) {
                        return Err(SmsConfigError::new(
                            "sms.backends",
                            format!("\"{}\" is listed twice; each backend is tried once", kind.get_ref().name()),
                            Some(kind.span()),
                        ));
                    }
                    kinds.push((*kind.get_ref(), kind.span()));
                }
                Ok(("sms.backends", kinds))
            }
            (Some(_), Some(list)) => Err(SmsConfigError::new(
                "sms.backends",
                "write either backend = \"…\" or backends = [\"…\", …], not both",
                Some(list.span()),
            )),
            (None, None) => Err(SmsConfigError::new(
                "sms.backend",
                "no backend: write backend = \"modem\" (or \"http\", \"smstools\", \"gammu\", \"command\", \"log\"), or backends = [\"modem\", \"http\"] for failover",
                None,
            )),
        }
    }

    fn build_one(
        &self,
        kind: BackendKind,
        key: &str,
        span: Range<usize>,
        base_dir: &Path,
    ) -> Result<Box<dyn Sender>, SmsConfigError> {
        Ok(match self.table(kind, key, span.clone())? {
            Table::Demo => {
                return Err(SmsConfigError::new(
                    key,
                    "backend \"demo\" is the simulated sockets of `jobctl demo` and sends \
                     nothing anywhere else; run this file with `jobctl demo --rules FILE`, or \
                     choose a real backend (\"modem\", \"http\", …) or \"log\"",
                    Some(span),
                ))
            }
            Table::Log => Box::new(log::LogSender::new()),
            Table::Http(config) => Box::new(http::HttpSender::from_config(config, base_dir)?),
            Table::Modem(config) => Box::new(modem::ModemSender::from_config(config, base_dir)?),
            Table::Smstools(config) => {
                Box::new(smstools::SmstoolsSender::from_config(config, base_dir)?)
            }
            Table::Gammu(config) => Box::new(gammu::GammuSender::from_config(&config, base_dir)?),
            Table::Command(config) => {
                Box::new(command::CommandSender::from_config(config, base_dir)?)
            }
        })
    }

    /// The checks of [`SmsConfig::build_one`] that need no secret, file or
    /// device.
    fn check_one(
        &self,
        kind: BackendKind,
        key: &str,
        span: Range<usize>,
    ) -> Result<(), SmsConfigError> {
        match self.table(kind, key, span)? {
            Table::Log | Table::Demo => Ok(()),
            Table::Http(config) => http::HttpSender::check(config),
            Table::Modem(config) => modem::ModemSender::check(config),
            Table::Smstools(config) => smstools::SmstoolsSender::check(config),
            Table::Gammu(config) => gammu::GammuSender::check(&config),
            Table::Command(config) => command::CommandSender::check(config),
        }
    }

    /// The settings table of a selected backend (`span` is where it was
    /// named), or why it is missing.
    fn table(
        &self,
        kind: BackendKind,
        key: &str,
        span: Range<usize>,
    ) -> Result<Table<'_>, SmsConfigError> {
        let missing = |what: &str| {
            SmsConfigError::new(
                key,
                format!(
                    "backend \"{}\" needs an [sms.{}] table ({what})",
                    kind.name(),
                    kind.name()
                ),
                Some(span.clone()),
            )
        };
        Ok(match kind {
            BackendKind::Log => Table::Log,
            BackendKind::Demo => Table::Demo,
            BackendKind::Http => {
                Table::Http(self.http.as_ref().ok_or_else(|| {
                    missing("at least `url`, or `preset` with `url` and `key_file`")
                })?)
            }
            BackendKind::Modem => {
                Table::Modem(self.modem.as_ref().ok_or_else(|| missing("at least `device`"))?)
            }
            BackendKind::Smstools => Table::Smstools(
                self.smstools.as_ref().ok_or_else(|| missing("at least `outgoing`"))?,
            ),
            BackendKind::Gammu => Table::Gammu(self.gammu.clone().unwrap_or_default()),
            BackendKind::Command => {
                Table::Command(self.command.as_ref().ok_or_else(|| missing("at least `program`"))?)
            }
        })
    }
}

/// A selected backend's settings table.
enum Table<'a> {
    Log,
    Demo,
    Http(&'a http::HttpConfig),
    Modem(&'a modem::ModemConfig),
    Smstools(&'a smstools::SmstoolsConfig),
    /// Every field has a default, so the table may be absent.
    Gammu(gammu::GammuConfig),
    Command(&'a command::CommandConfig),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct File {
        sms: SmsConfig,
    }

    #[test]
    fn log_backend_needs_nothing_else() {
        let file: File = toml::from_str("[sms]\nbackend = \"log\"\n").unwrap();
        let sender = file.sms.build(Path::new(".")).unwrap();
        assert_eq!(sender.name(), "log");
    }

    #[test]
    fn the_demo_backend_is_read_but_only_the_demo_sends_through_it() {
        let text = "[sms]\nbackend = \"demo\"\n";
        let file: File = toml::from_str(text).unwrap();
        assert_eq!(file.sms.check(), []);
        assert!(file.sms.is_demo());
        let err = file.sms.build(Path::new(".")).unwrap_err();
        assert_eq!(
            err.in_file(&SourceFile::from_text("rules.toml", text)).to_string(),
            "rules.toml:2:11: sms.backend: backend \"demo\" is the simulated sockets of `jobctl demo` and sends nothing anywhere else; run this file with `jobctl demo --rules FILE`, or choose a real backend (\"modem\", \"http\", …) or \"log\""
        );
        let chain: File = toml::from_str("[sms]\nbackends = [\"demo\", \"log\"]\n").unwrap();
        assert!(!chain.sms.is_demo());
        assert!(chain.sms.build(Path::new(".")).is_err());
        let log: File = toml::from_str("[sms]\nbackend = \"log\"\n").unwrap();
        assert!(!log.sms.is_demo());
    }

    #[test]
    fn max_segments_defaults_to_one_and_is_bounded() {
        let file: File = toml::from_str("[sms]\nbackend = \"log\"\n").unwrap();
        assert_eq!(file.sms.max_segments().unwrap(), 1);
        let file: File = toml::from_str("[sms]\nbackend = \"log\"\nmax_segments = 3\n").unwrap();
        assert_eq!(file.sms.max_segments().unwrap(), 3);
        let text = "[sms]\nbackend = \"log\"\nmax_segments = 0\n";
        let file: File = toml::from_str(text).unwrap();
        let err = file.sms.max_segments().unwrap_err();
        let placed = err.in_file(&SourceFile::from_text("rules.toml", text)).to_string();
        assert_eq!(placed, "rules.toml:3:16: sms.max_segments: must be between 1 and 10 segments");
    }

    #[test]
    fn http_backend_without_its_table_is_placed() {
        let text = "[sms]\nbackend = \"http\"\n";
        let file: File = toml::from_str(text).unwrap();
        let err = file.sms.build(Path::new(".")).unwrap_err();
        let placed = err.in_file(&SourceFile::from_text("rules.toml", text)).to_string();
        assert!(
            placed.starts_with(
                "rules.toml:2:11: sms.backend: backend \"http\" needs an [sms.http] table"
            ),
            "{placed}"
        );
    }

    #[test]
    fn unknown_backends_and_keys_are_rejected_by_the_parser() {
        let err = toml::from_str::<File>("[sms]\nbackend = \"pigeon\"\n").unwrap_err();
        assert!(err.message().contains("unknown variant `pigeon`"), "{err}");
        let err = toml::from_str::<File>("[sms]\nbackend = \"log\"\nspeed = 1\n").unwrap_err();
        assert!(err.message().contains("unknown field `speed`"), "{err}");
    }

    #[test]
    fn a_list_of_backends_builds_a_failover_chain() {
        let text = "[sms]\nbackends = [\"log\", \"gammu\"]\nretry_uncertain = true\n";
        let file: File = toml::from_str(text).unwrap();
        let sender = file.sms.build(Path::new(".")).unwrap();
        assert_eq!(sender.name(), "log,gammu");
        let chain = sender.as_failover().unwrap();
        assert!(chain.retry_uncertain());
        assert_eq!(chain.backends().map(super::Sender::name).collect::<Vec<_>>(), ["log", "gammu"]);

        let file: File = toml::from_str("[sms]\nbackends = [\"log\"]\n").unwrap();
        let sender = file.sms.build(Path::new(".")).unwrap();
        assert_eq!(sender.name(), "log");
        assert!(sender.as_failover().is_none());
    }

    #[test]
    fn backend_lists_that_cannot_work_are_placed() {
        let placed = |text: &str| {
            let file: File = toml::from_str(text).unwrap();
            let err = file.sms.build(Path::new(".")).unwrap_err();
            err.in_file(&SourceFile::from_text("rules.toml", text)).to_string()
        };
        assert_eq!(
            placed("[sms]\nbackends = []\n"),
            "rules.toml:2:12: sms.backends: the list is empty; name at least one backend, like [\"modem\", \"http\"]"
        );
        assert_eq!(
            placed("[sms]\nbackends = [\"log\", \"log\"]\n"),
            "rules.toml:2:20: sms.backends: \"log\" is listed twice; each backend is tried once"
        );
        assert_eq!(
            placed("[sms]\nbackend = \"log\"\nbackends = [\"log\"]\n"),
            "rules.toml:3:12: sms.backends: write either backend = \"…\" or backends = [\"…\", …], not both"
        );
        assert!(placed("[sms]\n")
            .starts_with("rules.toml: sms.backend: no backend: write backend = \"modem\""));
        assert_eq!(
            placed("[sms]\nbackends = [\"log\", \"modem\"]\n"),
            "rules.toml:2:20: sms.backends: backend \"modem\" needs an [sms.modem] table (at least `device`)"
        );
    }

    #[test]
    fn check_finds_what_build_finds_without_reading_secrets_or_files() {
        let placed = |text: &str| {
            let file: File = toml::from_str(text).unwrap();
            let source = SourceFile::from_text("rules.toml", text);
            file.sms.check().iter().map(|e| e.in_file(&source).to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            placed("[sms]\nbackends = [\"log\", \"smstools\"]\nmax_segments = 11\n"),
            [
                "rules.toml:3:16: sms.max_segments: must be between 1 and 10 segments",
                "rules.toml:2:20: sms.backends: backend \"smstools\" needs an [sms.smstools] table (at least `outgoing`)",
            ]
        );
        assert_eq!(
            placed("[sms]\nbackend = \"modem\"\n[sms.modem]\ndevice = \"ttyUSB0\"\n"),
            ["rules.toml:4:10: sms.modem.device: \"ttyUSB0\" is not a full path; write the device like \"/dev/ttyUSB0\" or \"/dev/serial/by-id/…\""]
        );
        // A key, PIN, spool or program that is not there is left to build.
        for text in [
            "[sms]\nbackend = \"http\"\n[sms.http]\npreset = \"gateway\"\nurl = \"http://gw\"\nkey_file = \"/nonexistent\"\n",
            "[sms]\nbackend = \"modem\"\n[sms.modem]\ndevice = \"/dev/nonexistent\"\npin_file = \"/nonexistent\"\n",
            "[sms]\nbackend = \"smstools\"\n[sms.smstools]\noutgoing = \"/nonexistent\"\n",
            "[sms]\nbackend = \"gammu\"\n[sms.gammu]\nprogram = \"/nonexistent/gammu-smsd-inject\"\n",
        ] {
            let file: File = toml::from_str(text).unwrap();
            assert_eq!(file.sms.check(), [], "{text}");
            assert!(file.sms.build(Path::new(".")).is_err(), "{text}");
        }
    }

    #[test]
    fn every_backend_places_its_duration_errors_at_the_value() {
        let spool = tempfile::tempdir().unwrap();
        for dir in ["outgoing", "sent", "failed"] {
            std::fs::create_dir(spool.path().join(dir)).unwrap();
        }
        let placed = |backend: &str, table: &str| {
            let text = format!("[sms]\nbackend = \"{backend}\"\n\n[sms.{backend}]\n{table}\n");
            let file: File = toml::from_str(&text).unwrap();
            let err = file.sms.build(spool.path()).unwrap_err();
            err.in_file(&SourceFile::from_text("rules.toml", text)).to_string()
        };
        let http = "url = \"http://127.0.0.1:1\"\nquery = { to = \"{phone}\", m = \"{text}\" }";
        assert_eq!(
            placed("http", &format!("{http}\ntimeout = \"0s\"")),
            "rules.toml:7:11: sms.http.timeout: must be longer than zero"
        );
        assert_eq!(
            placed("http", &format!("{http}\nconnect_timeout = \"0s\"")),
            "rules.toml:7:19: sms.http.connect_timeout: must be longer than zero"
        );
        assert_eq!(
            placed("http", &format!("{http}\ntimeout = \"2s\"\nconnect_timeout = \"5s\"")),
            "rules.toml:8:19: sms.http.connect_timeout: connect_timeout (5s) must be shorter than timeout (2s), or an unreachable gateway would be reported as an uncertain send"
        );
        assert_eq!(
            placed("http", &format!("{http}\ntimeout = \"1ns\"")),
            "rules.toml:7:11: sms.http.timeout: 1ns leaves no time to connect (connect_timeout defaults to half of it); write a longer timeout"
        );
        assert_eq!(
            placed("gammu", "timeout = \"0s\""),
            "rules.toml:5:11: sms.gammu.timeout: must be longer than zero"
        );
        assert_eq!(
            placed(
                "command",
                "program = \"send-sms\"\nargs = [\"{phone}\", \"{text}\"]\ntimeout = \"0ms\""
            ),
            "rules.toml:7:11: sms.command.timeout: must be longer than zero"
        );
        let modem = "device = \"/dev/ttyUSB0\"";
        assert_eq!(
            placed("modem", &format!("{modem}\ncommand_timeout = \"0s\"")),
            "rules.toml:6:19: sms.modem.command_timeout: must be longer than zero"
        );
        assert_eq!(
            placed("modem", &format!("{modem}\nsend_timeout = \"0s\"")),
            "rules.toml:6:16: sms.modem.send_timeout: must be longer than zero"
        );
        let smstools = "outgoing = \"outgoing\"\nsent = \"sent\"\nfailed = \"failed\"";
        assert_eq!(
            placed("smstools", &format!("{smstools}\noutcome_timeout = \"0s\"")),
            "rules.toml:8:19: sms.smstools.outcome_timeout: must be longer than zero"
        );
        assert_eq!(
            placed("smstools", &format!("{smstools}\npoll_interval = \"0s\"")),
            "rules.toml:8:17: sms.smstools.poll_interval: must be longer than zero"
        );
    }

    #[test]
    fn errors_say_whether_the_message_may_have_left() {
        let definite = SendError::Definite { reason: "HTTP 500".into() };
        let uncertain = SendError::Uncertain { reason: "no answer within 10s".into() };
        assert_eq!(definite.to_string(), "not sent: HTTP 500");
        assert_eq!(uncertain.to_string(), "may have been sent: no answer within 10s");
        assert_eq!((definite.label(), uncertain.label()), ("failed", "uncertain"));
        assert!(definite.is_definite() && !uncertain.is_definite());
        assert_eq!(uncertain.reason(), "no answer within 10s");
    }
}
