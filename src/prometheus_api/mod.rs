//! A client of the Prometheus HTTP API (`/api/v1/query`, `/api/v1/query_range`,
//! `/api/v1/format_query`).
//!
//! jobctl decides whether to power-cycle a player from what Prometheus answers,
//! so this client is strict about what counts as an answer: anything that is
//! not a well-formed Prometheus API response (an HTML page from a proxy, JSON
//! cut short, a redirect, a timeout) is a typed [`PromError`], never an empty
//! result that a caller could mistake for "no device is offline". Each error
//! names the URL it talked to and says what to check; none ever contains the
//! basic-auth password or bearer token, which live in [`Secret`]s and are
//! redacted from any response text quoted back.
//!
//! This is not the `prometheus` crate, which the exporter uses to *expose*
//! metrics; this module *reads* them back.
//!
//! The same goes for an answer built from part of the data: engines that
//! spread series over several stores may answer with what the stores that
//! answered hold. Thanos does unless asked not to, so every query says
//! `partial_response=false` (Prometheus, Mimir and VictoriaMetrics ignore
//! it) and a store that fails makes Thanos answer an error; an answer
//! marked `"isPartial": true` (VictoriaMetrics cluster) is a
//! [`PromError::Partial`]. Either way the devices that depend on the query
//! are unknown, not false. `warnings` in a successful answer are logged and
//! the answer used: Prometheus sends them for things that leave the result
//! whole (a quantile out of range, say).
//!
//! The files: this one is the client (the URL and credentials, the HTTP
//! exchange, the API envelope with its `status`, `error`, `warnings` and
//! `isPartial`); `answer.rs` decodes what a successful answer holds in
//! `data` (instant and range answers alike), series by series, without
//! ever seeing a credential; `error.rs` has the one error type both
//! return; `promql.rs` judges PromQL syntax locally, for `jobctl check`
//! where the engine cannot. Beside it, for sites without a Prometheus:
//! `exposition.rs` reads the text format exporters serve, and `scrape.rs`
//! fetches their pages (the same credentials, one `Authorization` header).

mod answer;
mod error;
pub mod exposition;
mod promql;
pub mod scrape;

pub use answer::{InstantAnswer, Label, Point, RangeAnswer, Sample, Series};
pub use error::PromError;
pub use promql::check_syntax;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::header::{self, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::secret::Secret;
use answer::Success;

/// Answers larger than this are refused rather than buffered: a fleet of ten
/// thousand devices answers in a few megabytes, so anything near this size is
/// a runaway expression or not Prometheus at all.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// How much of a non-API answer (an HTML error page, say) is quoted in errors.
const EXCERPT_CHARS: usize = 200;

/// How jobctl proves its identity to Prometheus (or to the proxy in front of it).
#[derive(Debug, Clone)]
pub enum Auth {
    /// HTTP basic authentication.
    Basic {
        /// The user name; it may not contain `:`.
        username: String,
        /// The password.
        password: Secret,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
}

/// Which parser accepted an expression in [`PromClient::check_expr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The engine's `/api/v1/format_query`: its own parser, the judge.
    ByFormatQuery,
    /// The engine has no `format_query`; it evaluated the expression at the
    /// Unix epoch without an error, in whatever dialect it reads.
    ByEvaluation,
}

/// A client of one Prometheus server, built once and shared.
pub struct PromClient {
    http: reqwest::Client,
    query_url: Url,
    query_range_url: Url,
    format_query_url: Url,
    timeout: Duration,
    authorization: Option<HeaderValue>,
    /// Texts that must never be quoted back from an answer: the password or
    /// token, and the encoded `Authorization` value.
    redactions: Vec<String>,
    /// Set once the engine answered `/api/v1/format_query` as one without
    /// it (Prometheus before 2.38, VictoriaMetrics, Thanos), so later
    /// checks go straight to the fallback.
    format_query_missing: AtomicBool,
}

impl fmt::Debug for PromClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromClient")
            .field("query_url", &self.query_url.as_str())
            .field("timeout", &self.timeout)
            .field("authorization", &self.authorization.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl PromClient {
    /// Builds a client for the Prometheus at `base` (e.g. `http://127.0.0.1:9090`,
    /// or `https://host/prometheus` behind a proxy). Every request gives up
    /// after `timeout`, which is also passed to Prometheus so that it stops
    /// evaluating too.
    ///
    /// Credentials in the URL are refused (they would end up in logs and
    /// configuration files): pass them as `auth`, loaded from a secret file.
    pub fn new(base: &str, timeout: Duration, auth: Option<Auth>) -> Result<Self, PromError> {
        let config_error =
            |reason: &str| PromError::Config { url: redact_url(base), reason: reason.to_string() };
        let mut url = Url::parse(base.trim()).map_err(|err| {
            config_error(&format!("{err}; write it as http://host:9090 or https://host/prefix"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_error("only http:// and https:// URLs are supported"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(config_error(
                "credentials in the URL are not allowed; configure basic auth or a bearer token read from a secret file",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(config_error("the URL may not have a ?query or #fragment"));
        }
        if url.path().trim_end_matches('/').ends_with("/api/v1") {
            return Err(config_error("give the Prometheus base URL, without /api/v1"));
        }
        if timeout.is_zero() {
            return Err(config_error("the query timeout must be longer than zero"));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let endpoint = |path: &str| url.join(path).expect("a relative path joins onto an http URL");

        let http = reqwest::Client::builder()
            .timeout(timeout)
            // A redirected POST turns into a GET without the query; report
            // the redirect instead of sending a broken request.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("signage-watchdog/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| config_error(&format!("cannot set up the HTTP client: {err}")))?;

        let (authorization, redactions) =
            authorization(&http, &url, auth.as_ref()).map_err(config_error)?;

        Ok(PromClient {
            http,
            query_url: endpoint("api/v1/query"),
            query_range_url: endpoint("api/v1/query_range"),
            format_query_url: endpoint("api/v1/format_query"),
            timeout,
            authorization,
            redactions: redactions.into_iter().filter(|s| !s.is_empty()).collect(),
            format_query_missing: AtomicBool::new(false),
        })
    }

    /// Instant query at the current time (POST `/api/v1/query`).
    ///
    /// An instant vector gives one [`Sample`] per series; a scalar gives one
    /// sample with no labels. A range vector or a string is a
    /// [`PromError::WrongResultType`].
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, PromError> {
        self.instant_query(expr, None).await?.samples()
    }

    /// Instant query at the current time, its answer kept as Prometheus
    /// sent it: [`InstantAnswer::for_each_sample`] then walks the series
    /// without building a label map for each. This is what the engine uses,
    /// where a cycle's answers describe every device of the fleet.
    pub(crate) async fn query_answer(&self, expr: &str) -> Result<InstantAnswer, PromError> {
        self.instant_query(expr, None).await
    }

    /// Instant query evaluated at `time` rather than now.
    pub async fn query_at(
        &self,
        expr: &str,
        time: jiff::Timestamp,
    ) -> Result<Vec<Sample>, PromError> {
        self.instant_query(expr, Some(time)).await?.samples()
    }

    async fn instant_query(
        &self,
        expr: &str,
        time: Option<jiff::Timestamp>,
    ) -> Result<InstantAnswer, PromError> {
        let mut form = vec![
            ("query", expr.to_string()),
            ("timeout", self.timeout_param()),
            ("partial_response", "false".to_string()),
        ];
        if let Some(time) = time {
            form.push(("time", time.to_string()));
        }
        let answer = self.post(&self.query_url, &form, expr).await?;
        Ok(InstantAnswer(answer))
    }

    /// Range query (POST `/api/v1/query_range`) from `start` to `end` every
    /// `step`. Prometheus refuses more than 11,000 points per series.
    pub async fn query_range(
        &self,
        expr: &str,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
        step: Duration,
    ) -> Result<Vec<Series>, PromError> {
        self.query_range_answer(expr, start, end, step).await?.series()
    }

    /// Range query, its answer kept as Prometheus sent it:
    /// [`RangeAnswer::for_each_series`] then walks the series without a
    /// label map or a string per point. This is what `jobctl test-rule
    /// --replay` uses, where a chunk of history holds up to a million points.
    pub(crate) async fn query_range_answer(
        &self,
        expr: &str,
        start: jiff::Timestamp,
        end: jiff::Timestamp,
        step: Duration,
    ) -> Result<RangeAnswer, PromError> {
        let form = [
            ("query", expr.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("step", step.as_secs_f64().to_string()),
            ("timeout", self.timeout_param()),
            ("partial_response", "false".to_string()),
        ];
        Ok(RangeAnswer(self.post(&self.query_range_url, &form, expr).await?))
    }

    /// Asks the engine whether `expr` parses, without evaluating it over
    /// any data, and returns its own message (a [`PromError::Api`]) when it
    /// does not.
    ///
    /// Uses `/api/v1/format_query` (Prometheus 2.38 and later), whose
    /// parser is the judge: [`Parsed::ByFormatQuery`]. Engines without it
    /// answer there with an HTTP error and no API envelope: Prometheus
    /// before 2.38 and Thanos 404, VictoriaMetrics 400 `unsupported path
    /// requested`. The client then remembers that, and evaluates the
    /// expression at the Unix epoch instead, where no data exists, so the
    /// check costs the engine next to nothing: [`Parsed::ByEvaluation`].
    /// An engine evaluates what its own dialect allows (VictoriaMetrics
    /// takes MetricsQL), so the caller then also judges the syntax with
    /// [`check_syntax`]. Either way only parsing is checked: an expression
    /// that yields a range vector passes here and is reported by
    /// [`PromClient::query`].
    pub async fn check_expr(&self, expr: &str) -> Result<Parsed, PromError> {
        if self.has_format_query() {
            let form = [("query", expr.to_string())];
            match self.post(&self.format_query_url, &form, expr).await {
                Err(PromError::Http { status: 400 | 404 | 405 | 501, .. }) => {
                    self.format_query_missing.store(true, Ordering::Relaxed);
                }
                other => return other.map(|_| Parsed::ByFormatQuery),
            }
        }
        let form = [
            ("query", expr.to_string()),
            ("time", "0".to_string()),
            ("timeout", self.timeout_param()),
        ];
        self.post(&self.query_url, &form, expr).await.map(|_| Parsed::ByEvaluation)
    }

    /// False once the engine answered `/api/v1/format_query` as one that
    /// does not have it; true before (nothing is known yet) and after it
    /// answered there.
    pub fn has_format_query(&self) -> bool {
        !self.format_query_missing.load(Ordering::Relaxed)
    }

    /// The query timeout as Prometheus reads it: seconds, possibly fractional.
    fn timeout_param(&self) -> String {
        self.timeout.as_secs_f64().to_string()
    }

    /// Sends one API request and returns its successful answer, `data`
    /// not yet decoded.
    async fn post(
        &self,
        url: &Url,
        form: &[(&str, String)],
        expr: &str,
    ) -> Result<Success, PromError> {
        let send = || {
            let mut request = self.http.post(url.clone()).form(form);
            if let Some(authorization) = &self.authorization {
                request = request.header(header::AUTHORIZATION, authorization.clone());
            }
            request.send()
        };
        let mut response = match send().await {
            Ok(response) => response,
            // A kept-alive connection that Prometheus closed (it restarted,
            // or its idle timeout struck as the request left) fails with
            // "connection closed before message completed". Queries only
            // read, so the request goes once more, on a new connection.
            Err(err) if !err.is_timeout() && !err.is_connect() => {
                tracing::debug!(
                    "retrying a request to {url}: {}",
                    crate::error::innermost_cause(&err)
                );
                send().await.map_err(|err| self.transport_error(url, &err))?
            }
            Err(err) => return Err(self.transport_error(url, &err)),
        };
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);

        // Sized once when Prometheus says how much is coming, rather than
        // doubled as it arrives: a cycle holds several answers at once.
        let expected = response.content_length().unwrap_or(0).min(MAX_ANSWER_BYTES as u64);
        let mut body = Vec::with_capacity(expected as usize);
        while let Some(chunk) = response.chunk().await.map_err(|err| {
            if err.is_timeout() {
                self.transport_error(url, &err)
            } else {
                PromError::BadResponse {
                    url: url.to_string(),
                    reason: format!(
                        "the answer was cut short ({}); a proxy or the network may have dropped the connection",
                        crate::error::innermost_cause(&err)
                    ),
                }
            }
        })? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(PromError::BadResponse {
                    url: url.to_string(),
                    reason: format!(
                        "the answer is larger than {} MiB; narrow the expression with label matchers",
                        MAX_ANSWER_BYTES / (1024 * 1024)
                    ),
                });
            }
            body.extend_from_slice(&chunk);
        }

        let answer = Answer { status, content_type, location, body };
        let (success, warnings) = self.decode(url, answer)?;
        for warning in warnings {
            tracing::warn!("Prometheus at {url} warned about `{expr}`: {warning}");
        }
        Ok(success)
    }

    fn transport_error(&self, url: &Url, err: &reqwest::Error) -> PromError {
        if err.is_timeout() {
            PromError::Timeout { url: url.to_string(), timeout: self.timeout }
        } else {
            PromError::Unreachable {
                url: url.to_string(),
                reason: crate::error::innermost_cause(err),
            }
        }
    }

    /// Turns a complete HTTP answer into a successful API answer (with its
    /// warnings), or the error it stands for.
    fn decode(&self, url: &Url, answer: Answer) -> Result<(Success, Vec<String>), PromError> {
        let url_text = || url.to_string();
        let envelope = match serde_json::from_slice::<Envelope>(&answer.body) {
            Ok(envelope) => envelope,
            Err(err) => {
                return Err(if !answer.status.is_success() {
                    let detail = match (answer.status.is_redirection(), answer.location) {
                        (true, Some(location)) => format!("redirects to {}", redact_url(&location)),
                        _ => self.excerpt(&answer.body),
                    };
                    PromError::Http { url: url_text(), status: answer.status.as_u16(), detail }
                } else if !answer
                    .content_type
                    .as_deref()
                    .is_none_or(|t| t.to_ascii_lowercase().contains("json"))
                {
                    PromError::BadResponse {
                        url: url_text(),
                        reason: format!(
                            "it is {}, not JSON: {}",
                            answer.content_type.as_deref().unwrap_or_default(),
                            self.excerpt(&answer.body)
                        ),
                    }
                } else if err.is_eof() {
                    PromError::BadResponse {
                        url: url_text(),
                        reason: format!(
                            "the JSON ends early ({err}); a proxy or the network may have cut the answer"
                        ),
                    }
                } else {
                    PromError::BadResponse {
                        url: url_text(),
                        reason: format!("invalid JSON: {err}"),
                    }
                });
            }
        };
        match envelope.status {
            ApiStatus::Error => {
                let error_type = envelope.error_type.unwrap_or_else(|| "unknown".into());
                if error_type == "timeout" {
                    return Err(PromError::Timeout { url: url_text(), timeout: self.timeout });
                }
                Err(PromError::Api {
                    url: url_text(),
                    error_type,
                    error: envelope.error.unwrap_or_default(),
                })
            }
            ApiStatus::Success if envelope.is_partial == Some(true) => {
                Err(PromError::Partial { url: url_text() })
            }
            ApiStatus::Success => {
                let raw = envelope.data.ok_or_else(|| PromError::BadResponse {
                    url: url_text(),
                    reason: "\"status\" is \"success\" but there is no \"data\"".into(),
                })?;
                // `raw` borrows from the body: where it lies there is where
                // `data` is, to be decoded later without a copy.
                let start = raw.get().as_ptr() as usize - answer.body.as_ptr() as usize;
                let data = start..start + raw.get().len();
                let warnings = envelope.warnings.unwrap_or_default();
                Ok((Success { url: url.clone(), body: answer.body, data }, warnings))
            }
        }
    }

    /// The readable text of a non-API body (tags stripped, white space
    /// collapsed, shortened), with any credential blanked out.
    fn excerpt(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let mut plain = String::new();
        let mut in_tag = false;
        for c in text.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => {
                    in_tag = false;
                    plain.push(' ');
                }
                _ if !in_tag => plain.push(c),
                _ => {}
            }
        }
        let mut excerpt = plain.split_whitespace().collect::<Vec<_>>().join(" ");
        for secret in &self.redactions {
            excerpt = excerpt.replace(secret.as_str(), "***");
        }
        if excerpt.is_empty() {
            return "empty body".into();
        }
        match excerpt.char_indices().nth(EXCERPT_CHARS) {
            Some((cut, _)) => format!("{}…", &excerpt[..cut]),
            None => excerpt,
        }
    }
}

/// A complete HTTP answer, before it is interpreted.
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    location: Option<String>,
    body: Vec<u8>,
}

/// The outer object of every Prometheus API answer.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    status: ApiStatus,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    error_type: Option<String>,
    error: Option<String>,
    warnings: Option<Vec<String>>,
    /// VictoriaMetrics cluster's mark of an answer some storage nodes did
    /// not contribute to.
    is_partial: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ApiStatus {
    Success,
    Error,
}

/// A URL fit for a message: user name, password and query removed. Text that
/// does not parse as a URL has anything between `://` and `@` blanked out.
fn redact_url(text: &str) -> String {
    let text = text.trim();
    match Url::parse(text) {
        Ok(mut url) => {
            let had_credentials = !url.username().is_empty() || url.password().is_some();
            let _ = url.set_username("");
            let _ = url.set_password(None);
            let had_query = url.query().is_some();
            url.set_query(None);
            url.set_fragment(None);
            let mut shown = url.to_string();
            if had_credentials {
                shown = shown.replacen("://", "://***@", 1);
            }
            if had_query {
                shown.push_str("?…");
            }
            shown
        }
        Err(_) => match (text.find("://"), text.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}://***{}", &text[..scheme_end], &text[at..])
            }
            _ => text.to_string(),
        },
    }
}

/// The `Authorization` header for `auth`, and the texts to redact from
/// anything quoted back (the secret, and the encoded header value). Shared
/// by the Prometheus client and the scrape client: one way to authenticate.
fn authorization(
    http: &reqwest::Client,
    url: &Url,
    auth: Option<&Auth>,
) -> Result<(Option<HeaderValue>, Vec<String>), &'static str> {
    match auth {
        None => Ok((None, Vec::new())),
        Some(Auth::Basic { username, password }) => {
            if username.contains(':') {
                return Err("the basic-auth user name may not contain ':'");
            }
            // reqwest does the base64 encoding; the value is kept so that
            // each request reuses it and error excerpts can redact it.
            let request = http
                .get(url.clone())
                .basic_auth(username, Some(password.expose()))
                .build()
                .map_err(|_| "the basic-auth credentials cannot be encoded")?;
            let value = request.headers()[header::AUTHORIZATION].clone();
            let encoded = value.to_str().unwrap_or_default().trim_start_matches("Basic ");
            let redactions = vec![password.expose().to_string(), encoded.to_string()];
            Ok((Some(value), redactions))
        }
        Some(Auth::Bearer(token)) => {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(
                |_| "the bearer token contains characters that cannot go in an HTTP header (a line break?)",
            )?;
            value.set_sensitive(true);
            Ok((Some(value), vec![token.expose().to_string()]))
        }
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    fn client(auth: Option<Auth>) -> PromClient {
        PromClient::new("http://127.0.0.1:9/prom", Duration::from_secs(2), auth).unwrap()
    }

    fn answer(status: u16, content_type: &str, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            content_type: Some(content_type.into()),
            location: None,
            body: body.as_bytes().to_vec(),
        }
    }

    fn decode_query(answer: Answer) -> Result<Vec<Sample>, PromError> {
        let c = client(None);
        let (success, _) = c.decode(&c.query_url, answer)?;
        InstantAnswer(success).samples()
    }

    #[test]
    fn endpoints_keep_a_path_prefix() {
        let c = client(None);
        assert_eq!(c.query_url.as_str(), "http://127.0.0.1:9/prom/api/v1/query");
        assert_eq!(c.format_query_url.as_str(), "http://127.0.0.1:9/prom/api/v1/format_query");
        let c = PromClient::new("http://h:9090/", Duration::from_secs(1), None).unwrap();
        assert_eq!(c.query_range_url.as_str(), "http://h:9090/api/v1/query_range");
    }

    #[test]
    fn bad_base_urls_are_refused_without_echoing_credentials() {
        let err = |base: &str| {
            PromClient::new(base, Duration::from_secs(1), None).unwrap_err().to_string()
        };
        let message = err("http://admin:hunter2@prom:9090");
        assert_eq!(
            message,
            "cannot use Prometheus URL http://***@prom:9090/: credentials in the URL are not allowed; \
             configure basic auth or a bearer token read from a secret file"
        );
        assert!(
            err("http://prom:9090/?token=hunter2").ends_with("may not have a ?query or #fragment")
        );
        assert!(!err("http://prom:9090/?token=hunter2").contains("hunter2"));
        assert!(err("ftp://prom").contains("only http:// and https://"));
        assert!(err("http://prom:9090/api/v1").contains("without /api/v1"));
        assert!(err("prom:9090").starts_with("cannot use Prometheus URL prom:9090: "));
        assert!(!err("http://u:hunter2@[bad").contains("hunter2"));
        let zero = PromClient::new("http://p", Duration::ZERO, None).unwrap_err();
        assert!(zero.to_string().ends_with("the query timeout must be longer than zero"));
        assert_eq!(zero.label(), "config");
    }

    #[test]
    fn bad_credentials_are_refused_without_echoing_them() {
        let bearer = Auth::Bearer(Secret::new("hunter2\nX-Evil: 1"));
        let err = PromClient::new("http://p", Duration::from_secs(1), Some(bearer)).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("bearer token contains characters"), "{err}");
        let basic = Auth::Basic { username: "a:b".into(), password: Secret::new("hunter2") };
        let err = PromClient::new("http://p", Duration::from_secs(1), Some(basic)).unwrap_err();
        assert!(err.to_string().ends_with("may not contain ':'"), "{err}");
    }

    #[test]
    fn client_debug_hides_the_authorization() {
        let basic = Auth::Basic { username: "jobctl".into(), password: Secret::new("hunter2") };
        let shown = format!("{:?}", client(Some(basic)));
        assert!(!shown.contains("hunter2") && !shown.contains("Basic"), "{shown}");
        assert!(shown.contains("authorization: Some(\"***\")"), "{shown}");
    }

    #[test]
    fn the_envelope_hands_over_data_and_warnings_in_any_key_order() {
        let body = r#"{"data":{"result":[{"value":[1700000000,"1"],"metric":{"device_id":"7"}}],
            "resultType":"vector"},"warnings":["careful"],"status":"success"}"#;
        let c = client(None);
        let (success, warnings) =
            c.decode(&c.query_url, answer(200, "application/json", body)).unwrap();
        assert_eq!(warnings, ["careful"]);
        let samples = InstantAnswer(success).samples().unwrap();
        let labels = [("device_id".to_string(), "7".to_string())].into();
        assert_eq!(samples, [Sample { labels, value: 1.0 }]);
    }

    #[test]
    fn api_errors_keep_prometheus_message_and_timeouts_are_timeouts() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:4: parse error: unexpected end of input"}"#;
        match decode_query(answer(400, "application/json", body)).unwrap_err() {
            PromError::Api { url, error_type, error } => {
                assert_eq!(url, "http://127.0.0.1:9/prom/api/v1/query");
                assert_eq!(error_type, "bad_data");
                assert_eq!(
                    error,
                    "invalid parameter \"query\": 1:4: parse error: unexpected end of input"
                );
            }
            other => panic!("{other:?}"),
        }
        let body = r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#;
        let err = decode_query(answer(503, "application/json", body)).unwrap_err();
        assert_eq!(err.label(), "timeout");
        assert_eq!(
            err.to_string(),
            "Prometheus at http://127.0.0.1:9/prom/api/v1/query did not answer within 2s; it may be \
             overloaded or the query too expensive: raise the query timeout or simplify the expression"
        );
    }

    #[test]
    fn non_api_answers_are_described() {
        let html = "<html><head><title>502 Bad Gateway</title></head>\n<body><h1>502 Bad Gateway</h1><hr>nginx</body></html>";
        let err = decode_query(answer(502, "text/html", html)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Prometheus at http://127.0.0.1:9/prom/api/v1/query answered HTTP 502 (502 Bad Gateway 502 Bad Gateway nginx); \
             Prometheus, or a proxy in front of it, is failing; check that Prometheus is running and see its log"
        );
        let err = decode_query(answer(200, "text/html", "<p>Login</p>")).unwrap_err();
        assert!(err.to_string().contains("it is text/html, not JSON: Login;"), "{err}");
        let err = decode_query(answer(200, "application/json", r#"{"status":"success","da"#))
            .unwrap_err();
        assert!(err.to_string().contains("the JSON ends early (EOF while parsing"), "{err}");
        assert_eq!(err.label(), "bad_response");
        let err =
            decode_query(answer(200, "application/json", r#"{"status":"success"}"#)).unwrap_err();
        assert!(err.to_string().contains("there is no \"data\""), "{err}");
        let mut redirect = answer(302, "text/html", "");
        redirect.location = Some("https://sso.example/login?next=x".into());
        let err = decode_query(redirect).unwrap_err();
        assert!(
            err.to_string().contains(
                "answered HTTP 302 (redirects to https://sso.example/login?…); set the Prometheus URL"
            ),
            "{err}"
        );
    }

    #[test]
    fn excerpts_are_short_and_redacted() {
        let basic = Auth::Basic { username: "jobctl".into(), password: Secret::new("hunter2") };
        let c = client(Some(basic));
        let encoded = c.authorization.as_ref().unwrap().to_str().unwrap().to_string();
        let body = format!("<pre>password hunter2, header {encoded}</pre>{}", "x".repeat(500));
        let excerpt = c.excerpt(body.as_bytes());
        assert!(excerpt.starts_with("password ***, header Basic *** xxx"), "{excerpt}");
        assert_eq!(excerpt.chars().count(), EXCERPT_CHARS + 1);
        assert_eq!(c.excerpt(b"  "), "empty body");
    }
}
