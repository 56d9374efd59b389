//! The `log` backend: nothing leaves, every message is written to the log.
//!
//! For trying jobctl (rules, `for` timers, cooldowns, the journal) on a
//! machine with no gateway and no modem, and for a first week of watching
//! what a new rule would do before it powers anything off. It reports
//! [`Delivered`] so the journal and limits behave exactly as in production.

use super::{Delivered, Message, SendFuture, Sender};

/// Records messages as `tracing` info lines instead of sending them.
#[derive(Debug, Default)]
pub struct LogSender;

impl LogSender {
    /// The backend name in the journal.
    pub(crate) const NAME: &'static str = "log";

    /// A new log sender.
    pub fn new() -> LogSender {
        LogSender
    }
}

impl Sender for LogSender {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::info!(
                phone = %message.phone,
                text = %message.text,
                "SMS recorded, not sent (backend \"log\")"
            );
            Ok(Delivered { backend: Self::NAME.to_string(), reference: None })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_and_reports_delivered_without_reference() {
        let message = Message { phone: "+79991234567".into(), text: "#12#0#1#1#".into() };
        let outcome = LogSender::new().send(&message).await;
        assert_eq!(outcome, Ok(Delivered { backend: "log".into(), reference: None }));
    }
}
