//! Sending SMS: one [`Sender`] trait, one file per backend.
//!
//! jobctl power-cycles players by texting their GSM sockets, and the journal
//! must never resend a command that may already have gone out. So every
//! backend answers the one question the journal needs: did the message leave?
//!
//! - `Ok(`[`Delivered`]`)`: the backend accepted it (a gateway's 2xx with no
//!   error in the body, a modem's `+CMGS`).
//! - [`SendError::Definite`]: it certainly did not leave (connection refused,
//!   an HTTP error status, the gateway's own error). Safe to retry later or to
//!   hand to the next backend.
//! - [`SendError::Uncertain`]: it may have left (a timeout after the request
//!   was written). Never retried blindly.
//!
//! Backends here: [`http`] (any HTTP SMS API, with a preset for the gateway
//! the older system used) and [`log`] (records only, to try jobctl without a
//! gateway). [`text`] makes texts safe for every backend and counts their
//! segments. The `[sms]` table of the rules file is [`SmsConfig`];
//! [`SmsConfig::build`] turns it into a ready sender.

pub mod http;
pub mod log;
pub mod phone;
pub mod text;

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;

use serde::Deserialize;
use toml::Spanned;

use crate::config_file::{ConfigError, SourceFile};

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

impl Delivered {
    /// `"delivered"`, the metrics label of a success (see [`SendError::label`]).
    pub fn label(&self) -> &'static str {
        "delivered"
    }
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
    pub fn label(&self) -> &'static str {
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
    pub fn is_definite(&self) -> bool {
        matches!(self, SendError::Definite { .. })
    }
}

/// What one send attempt came to.
pub type SendOutcome = Result<Delivered, SendError>;

/// The future a [`Sender`] returns. Boxed so that senders can be held as
/// `Box<dyn Sender>` in an ordered failover list.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = SendOutcome> + Send + 'a>>;

/// A way to send SMS. Implementations must be honest about uncertainty: an
/// outcome that is not known is [`SendError::Uncertain`], never `Definite`.
pub trait Sender: fmt::Debug + Send + Sync {
    /// Backend name for the journal and logs (`"http"`, `"log"`).
    fn name(&self) -> &str;

    /// Sends one message. Cancel-safe only in the sense that dropping the
    /// future leaves the outcome unknown; callers journal before calling.
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a>;
}

/// Which backend `[sms]` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// An HTTP SMS API, configured in `[sms.http]`.
    Http,
    /// Nothing leaves; each message is written to the log.
    Log,
}

/// The `[sms]` table of the rules file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// Which backend sends: `"http"` or `"log"`. Required: a daemon that
    /// silently sends nothing because a line was missing would be worse than
    /// one that refuses to start.
    pub backend: Spanned<BackendKind>,
    /// Settings of the `http` backend; required when `backend = "http"`,
    /// kept but unused otherwise (so switching to `log` for a test is one
    /// line).
    pub http: Option<http::HttpConfig>,
}

/// A problem in the `[sms]` table found after parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SmsConfigError {
    /// Dotted key at fault, as written in the file (`"sms.http.url"`).
    pub key: String,
    /// What is wrong and what to do. Never contains a secret.
    pub message: String,
    /// Byte span of the offending value in the file, when known.
    pub span: Option<Range<usize>>,
}

impl SmsConfigError {
    pub(crate) fn new(key: &str, message: impl Into<String>, span: Option<Range<usize>>) -> Self {
        SmsConfigError { key: key.to_string(), message: message.into(), span }
    }

    /// The same error placed at its `line:column` in `file`.
    pub fn in_file(&self, file: &SourceFile) -> ConfigError {
        let message = format!("{}: {}", self.key, self.message);
        match &self.span {
            Some(span) => file.error_at(span.clone(), message),
            None => file.error(message),
        }
    }
}

impl SmsConfig {
    /// Builds the configured sender, loading its secret. Relative paths
    /// (`key_file`) are taken relative to `base_dir`, the directory of the
    /// rules file.
    pub fn build(&self, base_dir: &Path) -> Result<Box<dyn Sender>, SmsConfigError> {
        match self.backend.get_ref() {
            BackendKind::Log => Ok(Box::new(log::LogSender::new())),
            BackendKind::Http => match &self.http {
                Some(http) => Ok(Box::new(http::HttpSender::from_config(http, base_dir)?)),
                None => Err(SmsConfigError::new(
                    "sms.backend",
                    "backend \"http\" needs an [sms.http] table (at least `url`, or `preset` with `url` and `key_file`)",
                    Some(self.backend.span()),
                )),
            },
        }
    }
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
