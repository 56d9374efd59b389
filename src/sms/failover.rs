//! Failover: several backends tried in order, every attempt reported.
//!
//! `[sms] backends = ["modem", "http"]` sends through the modem and, when the
//! modem certainly did not send (no network, SIM missing, the device
//! unplugged before the text was handed over), through the HTTP gateway. A
//! message whose fate is **uncertain** (the modem went silent after Ctrl-Z)
//! stops the chain: handing it to the next backend could power-cycle a
//! player twice. `retry_uncertain = true` accepts that risk and moves on
//! anyway, for notifications where a duplicate costs nothing.
//!
//! The journal keeps one row per attempt. [`AttemptChain`] gives the caller
//! each attempt as it ends, so it can record it before the next one starts
//! (the engine's outbox journals each one this way):
//!
//! ```no_run
//! # async fn run(sender: &dyn signage_watchdog::sms::Sender,
//! #              message: &signage_watchdog::sms::Message) {
//! use signage_watchdog::sms::AttemptChain;
//! let mut chain = AttemptChain::new(sender, message);
//! while let Some(attempt) = chain.next_attempt().await {
//!     println!("{}: {:?}", attempt.backend, attempt.outcome); // one record per attempt
//!     if let Some(next) = chain.next_backend() {
//!         println!("handing it to {next}"); // the next backend is about to try
//!     }
//! }
//! let outcome = chain.outcome(); // what the chain as a whole came to
//! # let _ = outcome; }
//! ```
//!
//! The chain works on any [`Sender`]: a single backend is a chain of one, so
//! the engine has one code path whether failover is configured or not.
//! [`FailoverSender::send`] runs the same chain to its end for callers that
//! want only the final outcome (each attempt is then only logged).

use super::{Departure, Message, SendError, SendFuture, SendOutcome, Sender, Unrecorded};

/// Whether an uncertain outcome is handed to the next backend when
/// `retry_uncertain` is not set: no, a power command must not go out twice.
pub(crate) const DEFAULT_RETRY_UNCERTAIN: bool = false;

/// Backends tried in order; see the module documentation.
#[derive(Debug)]
pub struct FailoverSender {
    backends: Vec<Box<dyn Sender>>,
    retry_uncertain: bool,
    /// The backends' names joined with commas, e.g. `"modem,http"`.
    name: String,
}

impl FailoverSender {
    /// A chain of `backends`, tried in this order. `retry_uncertain` hands an
    /// uncertain outcome to the next backend too.
    ///
    /// # Panics
    ///
    /// When `backends` is empty: a chain must have somewhere to send.
    pub fn new(backends: Vec<Box<dyn Sender>>, retry_uncertain: bool) -> FailoverSender {
        assert!(!backends.is_empty(), "a failover chain needs at least one backend");
        let name = backends.iter().map(|b| b.name()).collect::<Vec<_>>().join(",");
        FailoverSender { backends, retry_uncertain, name }
    }

    /// The backends, in the order they are tried.
    pub(crate) fn backends(&self) -> impl Iterator<Item = &dyn Sender> {
        self.backends.iter().map(std::convert::AsRef::as_ref)
    }

    /// Whether an uncertain outcome moves on to the next backend.
    pub(crate) fn retry_uncertain(&self) -> bool {
        self.retry_uncertain
    }
}

impl Sender for FailoverSender {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        self.send_departing(message, &Unrecorded)
    }

    fn send_departing<'a>(
        &'a self,
        message: &'a Message,
        departure: &'a dyn Departure,
    ) -> SendFuture<'a> {
        Box::pin(async move {
            let mut chain = AttemptChain::new(self, message).departing(departure);
            while let Some(attempt) = chain.next_attempt().await {
                if let Err(error) = &attempt.outcome {
                    if chain.has_next() {
                        tracing::warn!(
                            phone = %message.phone,
                            "SMS backend {} failed ({error}); trying the next one",
                            attempt.backend
                        );
                    }
                }
            }
            chain.outcome().expect("a chain of at least one backend makes an attempt")
        })
    }

    fn as_failover(&self) -> Option<&FailoverSender> {
        Some(self)
    }
}

/// One backend's try at one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptOutcome {
    /// The backend's [`Sender::name`] (`"modem"`, `"http"`).
    pub backend: String,
    /// What it came to.
    pub outcome: SendOutcome,
}

/// One message going down a chain of backends, one attempt at a time; see
/// the module documentation for the loop that records each attempt.
pub struct AttemptChain<'a> {
    backends: Vec<&'a dyn Sender>,
    retry_uncertain: bool,
    message: &'a Message,
    /// Index of the next backend to try.
    next: usize,
    /// Every attempt so far, oldest first.
    attempts: Vec<AttemptOutcome>,
    /// Told by each backend right before its I/O starts.
    departure: &'a dyn Departure,
}

impl<'a> AttemptChain<'a> {
    /// The chain `sender` stands for: its backends when it is a
    /// [`FailoverSender`], else the sender alone.
    pub fn new(sender: &'a dyn Sender, message: &'a Message) -> AttemptChain<'a> {
        let (backends, retry_uncertain) = match sender.as_failover() {
            Some(failover) => (failover.backends().collect(), failover.retry_uncertain()),
            None => (vec![sender], DEFAULT_RETRY_UNCERTAIN),
        };
        AttemptChain {
            backends,
            retry_uncertain,
            message,
            next: 0,
            attempts: Vec::new(),
            departure: &Unrecorded,
        }
    }

    /// The same chain, each of whose backends tells `departure` right
    /// before its I/O starts (see [`Sender::send_departing`]): once per
    /// attempt that gets that far.
    #[must_use]
    pub fn departing(mut self, departure: &'a dyn Departure) -> AttemptChain<'a> {
        self.departure = departure;
        self
    }

    /// Whether another attempt would follow: nothing tried yet, or the last
    /// attempt failed definitely (or uncertainly, with `retry_uncertain`)
    /// and a backend remains.
    pub fn has_next(&self) -> bool {
        if self.next >= self.backends.len() {
            return false;
        }
        match self.attempts.last().map(|a| &a.outcome) {
            None => true,
            Some(Ok(_)) => false,
            Some(Err(SendError::Definite { .. })) => true,
            Some(Err(SendError::Uncertain { .. })) => self.retry_uncertain,
        }
    }

    /// The name of the backend the next attempt goes to, if any.
    pub fn next_backend(&self) -> Option<&str> {
        self.has_next().then(|| self.backends[self.next].name())
    }

    /// Tries the next backend and returns its outcome, or `None` when the
    /// chain is over (delivered, stopped on an uncertain outcome, or out of
    /// backends).
    pub async fn next_attempt(&mut self) -> Option<AttemptOutcome> {
        if !self.has_next() {
            return None;
        }
        let backend = self.backends[self.next];
        self.next += 1;
        let outcome = backend.send_departing(self.message, self.departure).await;
        let attempt = AttemptOutcome { backend: backend.name().to_string(), outcome };
        self.attempts.push(attempt.clone());
        Some(attempt)
    }

    /// Every attempt so far, oldest first.
    #[cfg(test)]
    pub(crate) fn attempts(&self) -> &[AttemptOutcome] {
        &self.attempts
    }

    /// What the chain came to so far; `None` before the first attempt.
    ///
    /// - Delivered by one backend: that backend's [`super::Delivered`].
    /// - Stopped on an uncertain outcome: that outcome, saying which backend
    ///   and that the rest were not tried.
    /// - Every backend failed definitely: one definite failure that lists
    ///   each backend's reason.
    ///
    /// A chain of one backend reports its outcome unchanged.
    pub fn outcome(&self) -> Option<SendOutcome> {
        let last = self.attempts.last()?;
        if self.backends.len() == 1 {
            return Some(last.outcome.clone());
        }
        Some(match &last.outcome {
            Ok(delivered) => Ok(delivered.clone()),
            Err(SendError::Uncertain { reason }) => {
                let untried: Vec<&str> =
                    self.backends[self.next..].iter().map(|b| b.name()).collect();
                let mut reason = format!("{}: {reason}", last.backend);
                if !untried.is_empty() {
                    reason.push_str(&format!(
                        "; not handed to {} (retry_uncertain is off)",
                        untried.join(", ")
                    ));
                }
                Err(SendError::Uncertain { reason })
            }
            Err(SendError::Definite { .. }) => {
                let reasons: Vec<String> = self
                    .attempts
                    .iter()
                    .map(|a| {
                        format!(
                            "{}: {}",
                            a.backend,
                            a.outcome.as_ref().err().map_or("", SendError::reason)
                        )
                    })
                    .collect();
                let uncertain = self
                    .attempts
                    .iter()
                    .any(|a| matches!(a.outcome, Err(SendError::Uncertain { .. })));
                let reason = reasons.join("; ");
                // With retry_uncertain, an earlier uncertain attempt still
                // means the message may have left.
                if uncertain {
                    Err(SendError::Uncertain { reason })
                } else {
                    Err(SendError::Definite { reason })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::sms::Delivered;

    /// A backend that answers from a script and counts its calls.
    #[derive(Debug)]
    struct Scripted {
        name: &'static str,
        outcome: SendOutcome,
        calls: Mutex<usize>,
    }

    impl Scripted {
        fn boxed(name: &'static str, outcome: SendOutcome) -> Box<dyn Sender> {
            Box::new(Scripted { name, outcome, calls: Mutex::new(0) })
        }
    }

    impl Sender for Scripted {
        fn name(&self) -> &str {
            self.name
        }

        fn send<'a>(&'a self, _message: &'a Message) -> SendFuture<'a> {
            *self.calls.lock().unwrap() += 1;
            let outcome = self.outcome.clone();
            Box::pin(async move { outcome })
        }
    }

    fn delivered(backend: &str) -> SendOutcome {
        Ok(Delivered { backend: backend.into(), reference: Some("7".into()) })
    }

    fn failed(reason: &str) -> SendOutcome {
        Err(SendError::Definite { reason: reason.into() })
    }

    fn uncertain(reason: &str) -> SendOutcome {
        Err(SendError::Uncertain { reason: reason.into() })
    }

    fn message() -> Message {
        Message { phone: "+79991234567".into(), text: "#12#0#1#1#".into() }
    }

    async fn run(sender: &dyn Sender) -> (Vec<AttemptOutcome>, SendOutcome) {
        let message = message();
        let mut chain = AttemptChain::new(sender, &message);
        let mut seen = Vec::new();
        while let Some(attempt) = chain.next_attempt().await {
            seen.push(attempt);
        }
        assert_eq!(chain.attempts(), seen.as_slice());
        (seen, chain.outcome().unwrap())
    }

    #[tokio::test]
    async fn a_definite_failure_moves_on_and_the_next_backend_delivers() {
        let sender = FailoverSender::new(
            vec![
                Scripted::boxed("modem", failed("no network service")),
                Scripted::boxed("http", delivered("http")),
                Scripted::boxed("log", delivered("log")),
            ],
            false,
        );
        assert_eq!(sender.name(), "modem,http,log");
        let (attempts, outcome) = run(&sender).await;
        assert_eq!(
            attempts,
            vec![
                AttemptOutcome { backend: "modem".into(), outcome: failed("no network service") },
                AttemptOutcome { backend: "http".into(), outcome: delivered("http") },
            ]
        );
        assert_eq!(outcome, delivered("http"));
    }

    #[tokio::test]
    async fn an_uncertain_outcome_stops_the_chain_unless_allowed() {
        let chain = || {
            vec![
                Scripted::boxed("modem", uncertain("silent after Ctrl-Z")),
                Scripted::boxed("http", delivered("http")),
            ]
        };
        let (attempts, outcome) = run(&FailoverSender::new(chain(), false)).await;
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            outcome,
            uncertain("modem: silent after Ctrl-Z; not handed to http (retry_uncertain is off)")
        );

        let (attempts, outcome) = run(&FailoverSender::new(chain(), true)).await;
        assert_eq!(attempts.len(), 2);
        assert_eq!(outcome, delivered("http"));
    }

    #[tokio::test]
    async fn when_every_backend_fails_each_reason_is_kept() {
        let sender = FailoverSender::new(
            vec![
                Scripted::boxed("modem", failed("SIM not inserted")),
                Scripted::boxed("http", failed("HTTP 500")),
            ],
            false,
        );
        let (attempts, outcome) = run(&sender).await;
        assert_eq!(attempts.len(), 2);
        assert_eq!(outcome, failed("modem: SIM not inserted; http: HTTP 500"));
        assert_eq!(sender.send(&message()).await, outcome);

        let sender = FailoverSender::new(
            vec![
                Scripted::boxed("modem", uncertain("silent")),
                Scripted::boxed("http", failed("HTTP 500")),
            ],
            true,
        );
        let (_, outcome) = run(&sender).await;
        assert_eq!(outcome, uncertain("modem: silent; http: HTTP 500"));
    }

    #[tokio::test]
    async fn a_plain_sender_is_a_chain_of_one_reported_unchanged() {
        let sender = Scripted::boxed("http", failed("HTTP 500"));
        let message = message();
        let mut chain = AttemptChain::new(sender.as_ref(), &message);
        assert_eq!(chain.next_backend(), Some("http"));
        let attempt = chain.next_attempt().await.unwrap();
        assert_eq!(attempt.outcome, failed("HTTP 500"));
        assert!(!chain.has_next());
        assert_eq!(chain.next_backend(), None);
        assert!(chain.next_attempt().await.is_none());
        assert_eq!(chain.outcome(), Some(failed("HTTP 500")));
    }
}
