//! The webhook channel's backend: one signed HTTP POST per try, its outcome
//! in the same terms as an SMS backend's (sent, certainly not sent, maybe
//! sent), so that the outbox journals and retries webhooks as it does SMS.
//!
//! # Signature
//!
//! Each request carries
//!
//! - `X-Signage-Watchdog-Timestamp`: Unix seconds when the request was made;
//! - `X-Signage-Watchdog-Signature`: `sha256=` and the lowercase hex
//!   HMAC-SHA256, under the webhook's key, of the timestamp, a `.` and the
//!   body's bytes;
//! - `X-Signage-Watchdog-Delivery`: the journal's execution id, the same on
//!   every retry of one message, for a receiver to drop duplicates.
//!
//! A connection not made within 5 s is a failure that is retried; no answer
//! within the webhook's `timeout` once connected is `uncertain`.
//!
//! A receiver recomputes the HMAC over `timestamp + "." + body`, compares it
//! in constant time, and refuses a timestamp more than a few minutes from
//! its own clock, so that a recorded request cannot be replayed later. The
//! key is read from its file (or variable) at each delivery: a key rotated
//! on disk is used from the next message on, and never appears in a log,
//! error or journal row.

use std::path::PathBuf;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::clock::Clock;
use crate::journal::ExecutionId;
use crate::rules::escalate::Webhook;
use crate::sms::{Delivered, Departure, SendError, SendOutcome};

/// The header with the Unix seconds the signature covers.
pub(crate) const TIMESTAMP_HEADER: &str = "X-Signage-Watchdog-Timestamp";
/// The header with `sha256=<hex>`.
pub(crate) const SIGNATURE_HEADER: &str = "X-Signage-Watchdog-Signature";
/// The header with the execution id, the same on every retry.
pub(crate) const DELIVERY_HEADER: &str = "X-Signage-Watchdog-Delivery";

/// How long a connection to a receiver may take. A connection not made
/// certainly carried nothing (a failure to retry), whereas the request's
/// own `timeout` running out may come after the request left (uncertain):
/// keeping this shorter lets an unreachable receiver be retried.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The backend name journalled on a webhook's attempts.
pub(super) const BACKEND: &str = "webhook";

/// The configured webhooks and what posting to them needs.
pub(super) struct Webhooks {
    hooks: Vec<Webhook>,
    /// The main rules file's directory: relative key files are taken from it.
    base_dir: PathBuf,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
}

impl Webhooks {
    /// The webhooks of a rule set.
    pub(super) fn new(hooks: Vec<Webhook>, base_dir: PathBuf, clock: Arc<dyn Clock>) -> Webhooks {
        // Redirects are not followed: the signature was made for this URL.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("signage-watchdog/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Webhooks { hooks, base_dir, client, clock }
    }

    /// Posts `body` to the webhook `name` once: the journal is told right
    /// before the request may leave (`departure`).
    pub(super) async fn post(
        &self,
        name: &str,
        body: &str,
        id: ExecutionId,
        departure: &dyn Departure,
    ) -> SendOutcome {
        let definite = |reason: String| Err(SendError::Definite { reason });
        let Some(hook) = self.hooks.iter().find(|h| h.name == name) else {
            return definite(format!(
                "webhook {name:?} is no longer in the rules; add it back to send this message"
            ));
        };
        let key = match hook.secret.load(&self.base_dir) {
            Ok(loaded) => loaded.secret,
            Err(err) => return definite(format!("webhook {name:?}: signing key: {err}")),
        };
        let timestamp = self.clock.now().as_second().to_string();
        let signature = sign(key.expose().as_bytes(), &timestamp, body.as_bytes());
        let mut request = self
            .client
            .post(hook.url.clone())
            .timeout(hook.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, &timestamp)
            .header(SIGNATURE_HEADER, format!("sha256={signature}"))
            .header(DELIVERY_HEADER, id.0.to_string())
            .body(body.to_string());
        if !hook.url.username().is_empty() {
            request = request.basic_auth(hook.url.username(), hook.url.password());
        }
        if let Err(reason) = departure.leaving().await {
            return definite(format!("not sent: the journal could not mark it sending: {reason}"));
        }
        let url = hook.shown_url();
        match request.send().await {
            Ok(answer) if answer.status().is_success() => Ok(Delivered {
                backend: BACKEND.to_string(),
                reference: Some(format!("HTTP {}", answer.status().as_u16())),
            }),
            // Any other answer means the receiver did not take it.
            Ok(answer) => definite(format!("{url} answered HTTP {}", answer.status())),
            Err(err) if err.is_connect() => definite(format!(
                "cannot connect to {url}: {}",
                crate::error::with_causes(&err.without_url())
            )),
            Err(err) if err.is_timeout() => Err(SendError::Uncertain {
                reason: format!(
                    "{url} did not answer within {}; it may have received the request",
                    humantime::format_duration(hook.timeout)
                ),
            }),
            Err(err) => Err(SendError::Uncertain {
                reason: format!(
                    "{url}: {}; it may have received the request",
                    crate::error::with_causes(&err.without_url())
                ),
            }),
        }
    }
}

/// The lowercase hex HMAC-SHA256 under `key` of `timestamp`, `.`, `body`.
pub(crate) fn sign(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::secret::SecretSource;
    use crate::sms::Unrecorded;

    /// A webhook `ops` at `url`, its key in `key` (relative to `dir`).
    fn webhooks(url: &str, key: &str, dir: &std::path::Path) -> Webhooks {
        let hook = Webhook {
            name: "ops".into(),
            url: reqwest::Url::parse(url).unwrap(),
            secret: SecretSource::File(key.into()),
            secret_span: 0..0,
            url_span: 0..0,
            timeout: std::time::Duration::from_secs(2),
        };
        let clock = Arc::new(ManualClock::at_unix_seconds(1_764_640_800));
        Webhooks::new(vec![hook], dir.to_path_buf(), clock)
    }

    #[tokio::test]
    async fn a_refused_connection_or_an_unreadable_key_certainly_did_not_send() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ops.key"), "k3y").unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let url = format!("http://user:pa55@{closed}/hooks?token=t0ken");
        let refused = webhooks(&url, "ops.key", dir.path())
            .post("ops", "{}", ExecutionId(1), &Unrecorded)
            .await
            .unwrap_err();
        let SendError::Definite { reason } = &refused else { panic!("{refused:?}") };
        assert!(
            reason.starts_with(&format!("cannot connect to http://{closed}/hooks: ")),
            "{reason}"
        );
        assert!(!reason.contains("pa55") && !reason.contains("t0ken"), "{reason}");

        let unreadable = webhooks(&url, "missing.key", dir.path())
            .post("ops", "{}", ExecutionId(1), &Unrecorded)
            .await
            .unwrap_err();
        let SendError::Definite { reason } = &unreadable else { panic!("{unreadable:?}") };
        assert!(
            reason.starts_with("webhook \"ops\": signing key: cannot read secret file"),
            "{reason}"
        );

        let gone = webhooks(&url, "ops.key", dir.path())
            .post("pager", "{}", ExecutionId(1), &Unrecorded)
            .await
            .unwrap_err();
        assert_eq!(
            gone,
            SendError::Definite {
                reason:
                    "webhook \"pager\" is no longer in the rules; add it back to send this message"
                        .into()
            }
        );
    }

    #[test]
    fn the_signature_is_what_openssl_computes_over_timestamp_dot_body() {
        // printf '%s' '1764640800.{"version":1}' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            sign(b"s3cret", "1764640800", br#"{"version":1}"#),
            "51c39fcbc2d2723a46f18dd52efe2094a3e32d130be136bff7f3053bb458cf5b"
        );
    }
}
