//! Who hears of what the engine cannot fix by itself: the `escalate` targets
//! of a job (or of the whole file) and the `[[webhooks]]` they may name.
//!
//! A target is either an SMS to people (through the configured `[sms]`
//! backends and budgets, never to a socket) or a webhook: a JSON payload
//! posted to a URL and signed with HMAC-SHA256 under a key read from a file
//! or the environment, so that a receiver can tell it came from jobctl.
//! This module holds the checked configuration only; the engine's outbox
//! delivers.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use super::template::Template;
use crate::secret::SecretSource;
use crate::sms::phone::PhoneNumber;

/// How long one webhook request may take by default: a receiver that has
/// not answered by then may still have the request, so the delivery is
/// journalled `uncertain` and never repeated.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// A `[[webhooks]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Its name, as `escalate` and `webhooks_on_action` name it.
    pub name: String,
    /// Where the payload is posted. May carry `user:password` (sent as basic
    /// auth); the journal and logs only ever show [`Webhook::shown_url`].
    pub(crate) url: reqwest::Url,
    /// Where the signing key is.
    pub(crate) secret: SecretSource,
    /// The span of `secret_file`/`secret_env` in the main file, so that a
    /// key that cannot be read is reported at its `line:column`.
    pub(crate) secret_span: Range<usize>,
    /// The span of `url`, for warnings about it.
    pub(crate) url_span: Range<usize>,
    /// How long one request may take (`timeout`).
    pub(crate) timeout: Duration,
}

impl Webhook {
    /// The URL without credentials, query or fragment: what the journal,
    /// logs and `jobctl history` show.
    pub fn shown_url(&self) -> String {
        shown_url(&self.url)
    }
}

/// A URL without its credentials, query or fragment (either may carry a
/// token).
pub(crate) fn shown_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// One element of an `escalate` list.
#[derive(Debug, Clone, PartialEq)]
pub enum EscalationTarget {
    /// `{ sms = "…", to = ["+7…", …] }`: an SMS to each person, its
    /// `{label}` placeholders filled from the device's labels, plus
    /// `{event}` and `{job}`.
    Sms {
        /// The text.
        text: Template,
        /// The people's numbers.
        to: Vec<PhoneNumber>,
    },
    /// `{ webhook = "name" }`: the versioned JSON payload, signed.
    Webhook {
        /// The `[[webhooks]]` entry's name.
        name: String,
    },
}

impl fmt::Display for EscalationTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EscalationTarget::Sms { text, to } => {
                let to: Vec<&str> = to.iter().map(PhoneNumber::as_str).collect();
                write!(f, "SMS {:?} to {}", text.as_str(), to.join(", "))
            }
            EscalationTarget::Webhook { name } => write!(f, "webhook {name:?}"),
        }
    }
}

/// Who a job escalates to, and where that list comes from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Escalate {
    /// The targets, in file order; empty = escalations are only logged.
    pub targets: Vec<EscalationTarget>,
    /// Whether the list is the file's top-level `escalate` (the job has
    /// none of its own).
    pub inherited: bool,
}

impl fmt::Display for Escalate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.targets.is_empty() {
            return f.write_str("nobody (logged only)");
        }
        let targets: Vec<String> = self.targets.iter().map(ToString::to_string).collect();
        f.write_str(&targets.join("; "))?;
        if self.inherited {
            f.write_str(" (the file's top-level escalate)")?;
        }
        Ok(())
    }
}
