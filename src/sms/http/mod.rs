//! The `http` backend: any HTTP SMS API, described in the rules file.
//!
//! Most SMS providers and home-made gateways take one HTTP request per
//! message, differing only in method, URL, where the phone, text and key go,
//! and how they say "error". Rather than one backend per provider, `[sms.http]`
//! describes the request with structured templates: each value of `headers`,
//! `query`, `form` or `json` may use the placeholders `{phone}`
//! (`+79991234567`), `{phone_digits}` (`79991234567`), `{text}` and `{key}`
//! (`{{` and `}}` are literal braces). Values are substituted first and then
//! encoded by the request builder (URL-encoding for query and form, JSON
//! escaping for JSON), never concatenated into a body, so a text like
//! `#12#0#1#1#` or `Перезагрузка & reset` arrives intact.
//!
//! The key is read from `key_file` or `key_env`, never written in the rules
//! file. Every error message and reference is scrubbed of it in every form
//! the request carried it (`mask`: as read, form- and percent-encoded,
//! JSON-escaped, in basic auth's base64), so a gateway that echoes the
//! request does not put it in the journal; headers carrying it are marked
//! sensitive, and URLs are shown without their query string.
//!
//! Whether a message left is judged strictly (see [`super::SendError`]):
//!
//! - connection refused, DNS or TLS failure, HTTP status outside
//!   `success_status` (any 2xx by default), a `failure_*` match, or a 2xx
//!   without the configured `success_*` marker: **definite** failure;
//! - no answer within `timeout` once connected, a connection dropped after the
//!   request was written, an unreadable 2xx body, or HTTP 504 (a proxy gave
//!   up waiting for the service, which may have sent it): **uncertain**.
//!
//! Redirects are not followed (a redirected POST would silently become a GET)
//! and connections are not reused (a pooled connection the server closed
//! would turn a clean failure into an uncertain one).
//!
//! # Presets
//!
//! `preset = "gateway"` is the gateway the older system used:
//! `POST {url}/send?number=<+phone>&text=<text>` with header
//! `Authorization: <key>`; a 2xx answer whose JSON `/status` is `"error"` is
//! a failure, explained by its `/message`. Any field written next to `preset`
//! replaces the preset's value of that field as a whole (a `headers` table
//! replaces all of the preset's headers).
//!
//! ```toml
//! [sms.http]
//! preset = "gateway"
//! url = "http://sms-gateway.example:8080"
//! key_file = "/etc/jobctl/sms.key"
//! ```
//!
//! `twilio`, `smsru`, `smsc` and `vonage` are SMS providers (`provider`):
//! the preset knows the provider's URL, request and answers; the file
//! gives the key (Auth Token, api_id, password, API secret), `account`
//! where the credentials have a second, public part (Account SID, login,
//! API key) and `from`. Their answers are judged as each provider documents
//! them, so the answer rules (`success_*`, `failure_*`, `message_pointers`,
//! `reference_pointer`) are refused next to them; and for them an HTTP 5xx
//! is uncertain, not a failure.
//!
//! ```toml
//! [sms.http]
//! preset = "twilio"
//! account = "ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
//! from = "+15005550006"
//! key_file = "/etc/jobctl/twilio.token"
//! ```
//!
//! # The parts
//!
//! `config` is the `[sms.http]` table as written, with its presets;
//! `provider` fills in and judges the providers' presets; `request` and
//! `answer` turn it into the request's templates and the rules an answer
//! is judged by; `settings` checks the whole table before
//! the key is read; `mask` hides the key in what is quoted. This file
//! sends: one request per message, its answer read up to a cap and judged.

mod answer;
mod config;
mod mask;
mod provider;
mod request;
mod settings;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use self::answer::{scalar_text, AnswerRules};
use self::config::err;
pub(crate) use self::config::HttpConfig;
use self::mask::KeyMask;
use self::provider::{Advice, Provider, Refusal, Verdict};
use self::request::RequestTemplate;
use self::settings::{load_key, Settings};
use super::template::Values;
use super::{Delivered, Message, SendError, SendFuture, SendOutcome, Sender, SmsConfigError};
use crate::secret::{Secret, SecretSource};

/// Most of an answer body that is read; enough for any SMS API's reply.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most characters of a gateway's answer quoted in an error.
const MAX_DETAIL_CHARS: usize = 200;

/// Sends each message as one HTTP request; see the module documentation.
pub(crate) struct HttpSender {
    client: reqwest::Client,
    request: RequestTemplate,
    answer: AnswerRules,
    timeout: Duration,
    key: Option<Secret>,
    /// Where the key came from, named in "check the key" advice.
    key_source: Option<SecretSource>,
}

impl fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSender")
            .field("method", &self.request.method)
            .field("url", &self.request.shown_url)
            .field("key", &self.key_source)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpSender {
    /// The backend name in the journal.
    pub(crate) const NAME: &'static str = "http";

    /// Validates `[sms.http]`, loads the key (relative `key_file` paths are
    /// taken from `base_dir`) and prepares the client.
    pub(crate) fn from_config(
        config: &HttpConfig,
        base_dir: &Path,
    ) -> Result<HttpSender, SmsConfigError> {
        let Settings { request, answer, key_source, timeout, connect_timeout } =
            Settings::from_config(config, base_dir)?;
        let key = key_source.as_ref().map(load_key).transpose()?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .user_agent(concat!("signage-watchdog/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                err(
                    "url",
                    format!("cannot set up the HTTP client: {}", crate::error::innermost_cause(&e)),
                    None,
                )
            })?;
        let key_source = key_source.map(|k| k.source);
        Ok(HttpSender { client, request, answer, timeout, key, key_source })
    }

    /// The checks of [`HttpSender::from_config`] that read no key: the URL,
    /// the templates, the answer rules, where the key comes from, the
    /// timeouts.
    pub(crate) fn check(config: &HttpConfig) -> Result<(), SmsConfigError> {
        Settings::from_config(config, Path::new("")).map(drop)
    }

    /// Sends `message` and masks the key, in every form the request carried
    /// it, in what the outcome quotes.
    async fn deliver_masked(&self, message: &Message) -> SendOutcome {
        let key = self.key.as_ref().map_or("", Secret::expose);
        let credentials = self.request.basic_credentials(&Values::of(message, key));
        let mask = KeyMask::new(key, credentials.as_deref());
        match self.deliver(message, &mask).await {
            Ok(Delivered { backend, reference }) => {
                Ok(Delivered { backend, reference: reference.map(|r| mask.apply(&r)) })
            }
            Err(SendError::Definite { reason }) => {
                Err(SendError::Definite { reason: mask.apply(&reason) })
            }
            Err(SendError::Uncertain { reason }) => {
                Err(SendError::Uncertain { reason: mask.apply(&reason) })
            }
        }
    }

    /// One request and its answer judged; the key may still be in the
    /// outcome's text ([`HttpSender::deliver_masked`] masks it).
    async fn deliver(&self, message: &Message, mask: &KeyMask) -> SendOutcome {
        let values = Values {
            phone: &message.phone,
            phone_digits: message.phone.trim_start_matches('+'),
            text: &message.text,
            key: self.key.as_ref().map_or("", Secret::expose),
        };
        let request =
            self.request.build(&self.client, &values).map_err(|why| self.definite(why))?;
        tracing::debug!(url = %self.request.shown_url, phone = %message.phone, "sending SMS over HTTP");
        let mut response = request.send().await.map_err(|e| self.request_failed(&e))?;
        let status = response.status();
        let body = read_capped(&mut response).await;
        self.judge(status, body, &values, mask)
    }

    fn judge(
        &self,
        status: StatusCode,
        body: Result<Vec<u8>, reqwest::Error>,
        values: &Values<'_>,
        mask: &KeyMask,
    ) -> SendOutcome {
        let rules = &self.answer;
        if let Some(provider) = rules.provider {
            return self.judge_by(provider, status, body, values, mask);
        }
        let accepted = if rules.success_status.is_empty() {
            status.is_success()
        } else {
            rules.success_status.contains(&status)
        };
        let url = &self.request.shown_url;
        if !accepted {
            let detail =
                body.as_deref().map(|b| self.gateway_words(b, values, mask)).unwrap_or_default();
            if status == StatusCode::GATEWAY_TIMEOUT {
                return Err(self.uncertain(format!(
                    "{url} answered HTTP {status}{detail}: a proxy stopped waiting for the SMS service, which may still have sent it"
                )));
            }
            let advice = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => match &self.key_source {
                    Some(source) => format!("; check the key ({source})"),
                    None => "; check the credentials".to_string(),
                },
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                    "; check url, path and method".to_string()
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    "; the gateway is limiting the rate of messages".to_string()
                }
                _ => String::new(),
            };
            return Err(self.definite(format!("{url} answered HTTP {status}{detail}{advice}")));
        }
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                return Err(self.uncertain(format!(
                "{url} accepted the request (HTTP {status}) but its answer could not be read: {}",
                crate::error::innermost_cause(&e)
            )))
            }
        };
        let text = String::from_utf8_lossy(&body);
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let failed = |why: &str| {
            self.definite(format!(
                "{url} answered HTTP {status} but {why}{}",
                self.gateway_words(&body, values, mask)
            ))
        };
        if let Some(marker) = &rules.failure_body_contains {
            if text.contains(marker.as_str()) {
                return Err(failed(&format!("the answer contains {marker:?}")));
            }
        }
        if let Some(check) = &rules.failure_json {
            if check.matches(json.as_ref(), values) {
                return Err(failed(&format!("reported a failure ({})", check.describe(values))));
            }
        }
        if let Some(marker) = &rules.success_body_contains {
            if !text.contains(marker.as_str()) {
                return Err(failed(&format!("the answer lacks {marker:?}")));
            }
        }
        if let Some(check) = &rules.success_json {
            if !check.matches(json.as_ref(), values) {
                return Err(failed(&format!("the answer lacks {}", check.describe(values))));
            }
        }
        let reference = rules
            .reference_pointer
            .as_ref()
            .and_then(|p| json.as_ref()?.pointer(&p.render(values)).and_then(scalar_text));
        Ok(Delivered { backend: Self::NAME.to_string(), reference })
    }

    /// The outcome a provider's answer means; see [`provider`].
    fn judge_by(
        &self,
        provider: Provider,
        status: StatusCode,
        body: Result<Vec<u8>, reqwest::Error>,
        values: &Values<'_>,
        mask: &KeyMask,
    ) -> SendOutcome {
        let url = &self.request.shown_url;
        let name = provider.name();
        let body = match body {
            Ok(body) => body,
            Err(e) if status.is_success() || status.is_server_error() => {
                return Err(self.uncertain(format!(
                    "{url} answered HTTP {status} but its answer could not be read ({}); {name} may have sent the message",
                    crate::error::innermost_cause(&e)
                )))
            }
            Err(_) => Vec::new(),
        };
        let quoted = |words: Option<&str>| match words {
            Some(words) => self.quote(words, mask),
            None => self.quote(&String::from_utf8_lossy(&body), mask),
        };
        if status.is_server_error() {
            return Err(self.uncertain(format!(
                "{url} answered HTTP {status}{}; {name} may have sent the message",
                quoted(None)
            )));
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let explain = |refusal: &Refusal| {
            let code = refusal
                .code
                .as_ref()
                .map(|code| format!(" ({} {code})", provider.code_label()))
                .unwrap_or_default();
            let advice = match refusal.advice {
                Advice::None => String::new(),
                Advice::Say(words) => words.to_string(),
                Advice::CheckKey => {
                    let what = provider.key_is();
                    let what = if provider.has_account() {
                        format!("account and {what}")
                    } else {
                        what.to_string()
                    };
                    match &self.key_source {
                        Some(source) => format!("; check {what} ({source})"),
                        None => format!("; check {what}"),
                    }
                }
            };
            format!(
                "{url} answered HTTP {status}{}{code}{advice}",
                quoted(refusal.words.as_deref())
            )
        };
        match provider.judge(status, json.as_ref(), values) {
            Verdict::Sent { reference } => {
                Ok(Delivered { backend: Self::NAME.to_string(), reference })
            }
            Verdict::Refused(refusal) => Err(self.definite(explain(&refusal))),
            Verdict::Unsure(refusal) => Err(self.uncertain(explain(&refusal))),
            Verdict::Unrecognised => Err(self.uncertain(format!(
                "{url} answered HTTP {status} but not as {name} documents, so the message may have left{}",
                quoted(None)
            ))),
        }
    }

    /// `": <words>"` with the key masked (before the words are cut to
    /// length, so that no part of it is left at the cut), or nothing when
    /// there are no words.
    fn quote(&self, words: &str, mask: &KeyMask) -> String {
        let words = super::text::sanitize(mask.apply(words).trim(), false, MAX_DETAIL_CHARS);
        if words.is_empty() {
            String::new()
        } else {
            format!(": {words}")
        }
    }

    /// `": <the gateway's words>"`, or nothing when the answer is empty.
    /// The key is masked before the words are cut to length, so that no
    /// part of it is left at the cut.
    fn gateway_words(&self, body: &[u8], values: &Values<'_>, mask: &KeyMask) -> String {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let words = self
            .answer
            .message_pointers
            .iter()
            .find_map(|p| json.as_ref()?.pointer(&p.render(values)).filter(|v| !v.is_null()))
            .map_or_else(
                || String::from_utf8_lossy(body).into_owned(),
                |v| scalar_text(v).unwrap_or_else(|| v.to_string()),
            );
        self.quote(&words, mask)
    }

    fn request_failed(&self, error: &reqwest::Error) -> SendError {
        let url = &self.request.shown_url;
        let cause = crate::error::innermost_cause(error);
        if error.is_builder() {
            self.definite(format!("cannot build the request to {url}: {cause}"))
        } else if error.is_connect() {
            self.definite(format!("cannot connect to {url}: {cause}"))
        } else if error.is_timeout() {
            self.uncertain(format!(
                "no answer from {url} within {}; the gateway may have sent the message",
                humantime::format_duration(self.timeout)
            ))
        } else {
            self.uncertain(format!(
                "the connection to {url} failed after the request was sent ({cause}); the gateway may have sent the message"
            ))
        }
    }

    fn definite(&self, reason: String) -> SendError {
        SendError::Definite { reason }
    }

    fn uncertain(&self, reason: String) -> SendError {
        SendError::Uncertain { reason }
    }
}

impl Sender for HttpSender {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(self.deliver_masked(message))
    }
}

/// Reads at most [`MAX_BODY_BYTES`] of an answer.
async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_BODY_BYTES {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use reqwest::Method;

    use super::*;

    fn config(text: &str) -> HttpConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn explicit_fields_override_the_preset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "s3cret\n").unwrap();
        let sender = HttpSender::from_config(
            &config(
                "preset = \"gateway\"\nurl = \"http://127.0.0.1:1/api/\"\nkey_file = \"key\"\npath = \"/v2/send\"\nmethod = \"put\"\n",
            ),
            dir.path(),
        )
        .unwrap();
        assert_eq!(sender.request.url.as_str(), "http://127.0.0.1:1/api/v2/send");
        assert_eq!(sender.request.method, Method::PUT);
        assert_eq!(
            sender.request.query.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["number", "text"]
        );
        assert_eq!(sender.key.as_ref().unwrap().expose(), "s3cret");
        let debug = format!("{sender:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
