//! A client that scrapes exporters' `/metrics` pages directly, for sites
//! without a Prometheus (`[source] scrape = [...]` in jobctl's rules).
//!
//! One [`ScrapeClient::scrape`] fetches every target at once (each bounded
//! by the timeout and [`MAX_PAGE_BYTES`], gzip accepted), reads each page
//! with the [`super::exposition`] parser, and merges the series of the
//! targets that answered into one [`Scraped`]. A target that fails
//! (unreachable, slow, an HTTP error, a page that is not the text format)
//! contributes nothing, and its failure is kept in [`TargetOutcome`]: its
//! series are missing, so the devices they describe are unknown to the
//! rules, never true. A page is taken whole or not at all: a line that does
//! not parse fails the whole page, as it does for Prometheus.
//!
//! Credentials are the same [`Auth`] as for the Prometheus API, sent as
//! the same `Authorization` header, and never quoted back.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use reqwest::header::{self, HeaderValue};
use reqwest::Url;

use super::exposition::{self, ExpositionError};
use super::Auth;

/// Pages larger than this (after gzip is undone) are refused: an
/// exporter of ten thousand devices serves about 2 MiB.
pub const MAX_PAGE_BYTES: usize = 32 * 1024 * 1024;

/// Why a target gave no samples.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// The settings cannot make a client.
    #[error("cannot scrape {target}: {reason}")]
    Config {
        /// The target.
        target: String,
        /// What is wrong.
        reason: String,
    },
    /// No HTTP exchange (connection refused, DNS, TLS, reset).
    #[error("cannot reach {target}: {reason}; check that the exporter is running and that the URL is right")]
    Unreachable {
        /// The target.
        target: String,
        /// The lowest-level cause.
        reason: String,
    },
    /// No complete page within the timeout.
    #[error("{target} did not answer within {}; raise [source] timeout or check the exporter", humantime::format_duration(*.timeout))]
    Timeout {
        /// The target.
        target: String,
        /// The timeout.
        timeout: Duration,
    },
    /// An HTTP status other than 200.
    #[error("{target} answered HTTP {status}; {}", status_hint(*.status))]
    Http {
        /// The target.
        target: String,
        /// The status code.
        status: u16,
    },
    /// A page that is not the text format (or not gzip when it says so, or
    /// too large).
    #[error("{target}: {reason}")]
    BadPage {
        /// The target.
        target: String,
        /// What is wrong, with its line when a line is to blame.
        reason: String,
    },
}

impl ScrapeError {
    /// A short, stable name of the kind of failure, for a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            ScrapeError::Config { .. } => "config",
            ScrapeError::Unreachable { .. } => "unreachable",
            ScrapeError::Timeout { .. } => "timeout",
            ScrapeError::Http { .. } => "http",
            ScrapeError::BadPage { .. } => "bad_page",
        }
    }
}

fn status_hint(status: u16) -> &'static str {
    match status {
        300..=399 => "set the target to where it redirects",
        401 | 403 => "check the basic-auth credentials or bearer token in [source]",
        404 => "check the path (usually /metrics)",
        _ => "check the exporter and its log",
    }
}

/// One series of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapedSeries {
    /// Its labels as the page wrote them, plus `instance` (the target's
    /// `host:port`) when the page did not set one, as Prometheus adds it.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// How one target's scrape went.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetOutcome {
    /// The target's URL.
    pub target: String,
    /// Samples read from it; `Err` when it failed.
    pub result: Result<usize, ScrapeError>,
}

/// The merged series of one scrape of every target, by metric name.
#[derive(Debug, Default)]
pub struct Scraped {
    /// Each target, in the configured order.
    pub targets: Vec<TargetOutcome>,
    by_metric: HashMap<String, Vec<ScrapedSeries>>,
}

impl Scraped {
    /// The series of `metric`, from every target that answered.
    pub fn series(&self, metric: &str) -> &[ScrapedSeries] {
        self.by_metric.get(metric).map_or(&[], Vec::as_slice)
    }

    /// Whether at least one target answered; when none did, nothing of the
    /// scrape can be believed, not even that a series is missing.
    pub fn answered(&self) -> bool {
        self.targets.iter().any(|t| t.result.is_ok())
    }

    /// Adds a page read from `target` (whose `host:port` is `instance`).
    /// Nothing of the page is kept when a line of it does not parse.
    pub fn add_page(&mut self, page: &str, instance: &str) -> Result<usize, ExpositionError> {
        let mut read: Vec<(String, ScrapedSeries)> = Vec::new();
        let count = exposition::parse(page, |sample| {
            let mut labels: Vec<(String, String)> =
                sample.labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            if !labels.iter().any(|(name, _)| name == "instance") {
                labels.push(("instance".to_string(), instance.to_string()));
            }
            read.push((sample.name.to_string(), ScrapedSeries { labels, value: sample.value }));
        })?;
        for (name, series) in read {
            self.by_metric.entry(name).or_default().push(series);
        }
        Ok(count)
    }
}

/// A client of every scrape target, built once and shared.
#[derive(Debug)]
pub struct ScrapeClient {
    http: reqwest::Client,
    targets: Vec<Url>,
    timeout: Duration,
    authorization: Option<HeaderValue>,
    /// Texts never to quote back (the secret and its encoded header).
    redactions: Vec<String>,
}

impl ScrapeClient {
    /// A client of `targets` (`http://` or `https://` URLs without
    /// credentials), each scrape giving up after `timeout`.
    pub fn new(
        targets: &[Url],
        timeout: Duration,
        auth: Option<Auth>,
    ) -> Result<Self, ScrapeError> {
        let config_error = |target: &Url, reason: &str| ScrapeError::Config {
            target: target.to_string(),
            reason: reason.to_string(),
        };
        let Some(first) = targets.first() else {
            return Err(ScrapeError::Config {
                target: "[source] scrape".to_string(),
                reason: "no target to scrape".to_string(),
            });
        };
        for target in targets {
            if !matches!(target.scheme(), "http" | "https") {
                return Err(config_error(target, "only http:// and https:// URLs are supported"));
            }
            if !target.username().is_empty() || target.password().is_some() {
                return Err(config_error(target, "credentials in the URL are not allowed"));
            }
        }
        if timeout.is_zero() {
            return Err(config_error(first, "the timeout must be longer than zero"));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("signage-watchdog/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| config_error(first, &format!("cannot set up the HTTP client: {err}")))?;
        let (authorization, redactions) = super::authorization(&http, first, auth.as_ref())
            .map_err(|why| config_error(first, why))?;
        Ok(ScrapeClient {
            http,
            targets: targets.to_vec(),
            timeout,
            authorization,
            redactions: redactions.into_iter().filter(|s| !s.is_empty()).collect(),
        })
    }

    /// The targets, as configured.
    pub fn targets(&self) -> &[Url] {
        &self.targets
    }

    /// Scrapes every target at once and merges what they serve.
    pub async fn scrape(&self) -> Scraped {
        let mut fetching = tokio::task::JoinSet::new();
        for (index, target) in self.targets.iter().enumerate() {
            let (http, target) = (self.http.clone(), target.clone());
            let (authorization, timeout) = (self.authorization.clone(), self.timeout);
            fetching
                .spawn(async move { (index, fetch(&http, &target, authorization, timeout).await) });
        }
        let mut pages: Vec<Option<Result<Vec<u8>, ScrapeError>>> = vec![None; self.targets.len()];
        while let Some(done) = fetching.join_next().await {
            if let Ok((index, page)) = done {
                pages[index] = Some(page);
            }
        }
        let mut scraped = Scraped::default();
        for (target, page) in self.targets.iter().zip(pages) {
            let name = target.to_string();
            let bad = |reason: String| ScrapeError::BadPage {
                target: name.clone(),
                reason: self.redact(reason),
            };
            let result = match page {
                None => Err(bad("the scrape failed unexpectedly".to_string())),
                Some(Err(err)) => Err(err),
                Some(Ok(bytes)) => exposition::utf8(&bytes)
                    .and_then(|page| scraped.add_page(page, &instance(target)))
                    .map_err(|err| bad(format!("not the Prometheus text format: {err}"))),
            };
            scraped.targets.push(TargetOutcome { target: name, result });
        }
        scraped
    }

    fn redact(&self, mut text: String) -> String {
        for secret in &self.redactions {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }
}

/// `host:port` of a target, as Prometheus's `instance` label.
fn instance(target: &Url) -> String {
    let host = target.host_str().unwrap_or_default();
    match target.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// One target's page, gzip undone, at most [`MAX_PAGE_BYTES`].
async fn fetch(
    http: &reqwest::Client,
    target: &Url,
    authorization: Option<HeaderValue>,
    timeout: Duration,
) -> Result<Vec<u8>, ScrapeError> {
    let name = || target.to_string();
    let transport = |err: reqwest::Error| {
        if err.is_timeout() {
            ScrapeError::Timeout { target: name(), timeout }
        } else {
            ScrapeError::Unreachable { target: name(), reason: crate::error::innermost_cause(&err) }
        }
    };
    let mut request = http
        .get(target.clone())
        .header(header::ACCEPT, "text/plain;version=0.0.4;q=1,*/*;q=0.1")
        .header(header::ACCEPT_ENCODING, "gzip");
    if let Some(authorization) = authorization {
        request = request.header(header::AUTHORIZATION, authorization);
    }
    let mut response = request.send().await.map_err(transport)?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(ScrapeError::Http { target: name(), status: status.as_u16() });
    }
    let gzipped = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let too_large = || ScrapeError::BadPage {
        target: name(),
        reason: format!("the page is larger than {} MiB", MAX_PAGE_BYTES / (1024 * 1024)),
    };
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if !gzipped {
        return Ok(body);
    }
    let mut page = Vec::with_capacity(body.len() * 4);
    let limit = MAX_PAGE_BYTES as u64 + 1;
    flate2::read::GzDecoder::new(&body[..]).take(limit).read_to_end(&mut page).map_err(|err| {
        ScrapeError::BadPage {
            target: name(),
            reason: format!("the gzip body does not decode: {err}"),
        }
    })?;
    if page.len() > MAX_PAGE_BYTES {
        return Err(too_large());
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_merge_and_a_bad_page_adds_nothing() {
        let mut scraped = Scraped::default();
        scraped.add_page("m{a=\"1\"} 1\nm{a=\"2\"} 0\n", "one:9747").unwrap();
        scraped.add_page("m{a=\"3\",instance=\"x\"} 5\n", "two:9747").unwrap();
        let err = scraped.add_page("m{a=\"4\"} 1\nbroken{\n", "three:9747").unwrap_err();
        assert_eq!(err.line, 2);
        let series = scraped.series("m");
        assert_eq!(series.len(), 3, "the broken page's first line is not kept");
        assert_eq!(series[0].labels[1], ("instance".to_string(), "one:9747".to_string()));
        assert_eq!(series[2].labels[1], ("instance".to_string(), "x".to_string()));
        assert!(scraped.series("other").is_empty());
    }

    #[test]
    fn instance_is_host_and_port() {
        assert_eq!(
            instance(&Url::parse("http://127.0.0.1:9747/metrics").unwrap()),
            "127.0.0.1:9747"
        );
        assert_eq!(
            instance(&Url::parse("https://shop.example/metrics").unwrap()),
            "shop.example:443"
        );
    }
}
