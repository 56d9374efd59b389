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
//! Backends here: [`log`] (records only, to try jobctl without a gateway).
//! [`text`] makes texts safe for every backend and counts their segments.

pub mod log;
pub mod text;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

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

#[cfg(test)]
mod tests {
    use super::*;

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
