//! What the SMS tests send and how they build senders: one phone number,
//! messages to it, senders built from `[sms]` text the way jobctl builds
//! them, and the reason out of a failed send.

use std::path::Path;

use signage_watchdog::sms::{Delivered, Message, SendError, Sender, SmsConfig};

/// The number every test message goes to.
pub(crate) const PHONE: &str = "+79991234567";

/// A message with `text` to [`PHONE`].
pub(crate) fn message(text: &str) -> Message {
    Message { phone: PHONE.to_string(), text: text.to_string() }
}

/// The `[sms]` table of a rules file's `text`, read as jobctl reads it;
/// panics with the text when it does not parse.
pub(crate) fn config(text: &str) -> SmsConfig {
    #[derive(serde::Deserialize)]
    struct File {
        sms: SmsConfig,
    }
    let file: File = toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    file.sms
}

/// The sender jobctl builds from the `[sms]` table in `text`, for a rules
/// file in `dir`; panics with the error and the text when it cannot.
pub(crate) fn sender(text: &str, dir: &Path) -> Box<dyn Sender> {
    config(text).build(dir).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The reason of a failure known not to have sent; panics on any other outcome.
#[track_caller]
pub(crate) fn definite(outcome: Result<Delivered, SendError>) -> String {
    match outcome {
        Err(SendError::Definite { reason }) => reason,
        other => panic!("expected a definite failure, got {other:?}"),
    }
}

/// The reason of a failure that may have sent; panics on any other outcome.
#[track_caller]
pub(crate) fn uncertain(outcome: Result<Delivered, SendError>) -> String {
    match outcome {
        Err(SendError::Uncertain { reason }) => reason,
        other => panic!("expected an uncertain failure, got {other:?}"),
    }
}
