//! Fetching every device of one AddReality account, page by page.
//!
//! The API's paging and its failures are undocumented (see the design notes),
//! so this client assumes little and never trusts the server to end a loop:
//!
//! - It sends `offset` and `limit` and stops when `offset` reaches
//!   `pagination.total`, or, without a total, at the first short page. A page
//!   that mostly repeats devices already seen means the server ignores
//!   `offset`; an empty page before `total` means the total was wrong; and a
//!   hard cap on pages ends anything else. Each of these is reported as a
//!   [`PagingAnomaly`] next to the devices that were read, so the exporter can
//!   say so in a metric instead of silently dropping devices (as the earlier
//!   Python exporter dropped everything beyond the first 300).
//! - Each request is retried when the failure is likely to pass (timeouts,
//!   refused connections, 429, 5xx, an HTML or truncated body), with
//!   exponential backoff and full jitter, honouring `Retry-After`. A refused
//!   token (401/403) is never retried: hammering the API with a bad token
//!   helps nobody, and the sysadmin has to fix the token.
//! - A page is read chunk by chunk and never beyond `max_page_bytes`: a
//!   server that sends more (or announces more in `Content-Length`) fails
//!   the poll with [`FetchError::PageTooLarge`], whatever it sends, and the
//!   memory a poll takes stays bounded. An error body is read only as far as
//!   its quote needs.
//! - The token travels in one header only. Errors and log lines name the URL
//!   without user info, query or fragment, and anything the server echoes back
//!   is scrubbed of the token before it is shown.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use reqwest::header::{self, HeaderValue};
use reqwest::{StatusCode, Url};

use super::model::{parse_page, Listed, Page, PageError, SkippedDevice};
use crate::secret::Secret;

/// No fetch ever reads more pages than this, whatever the server says
/// (3 million devices at 300 a page).
pub(crate) const MAX_PAGES: u32 = 10_000;

/// How many characters of an error body are quoted in an error message.
const BODY_QUOTE_CHARS: usize = 160;

/// How much of an error body is read: enough for its quote (UTF-8 and
/// leading whitespace included), never the whole of a huge one.
const ERROR_BODY_READ: usize = 16 * 1024;

/// Where and how to fetch device lists. The defaults a sysadmin gets are
/// the exporter configuration's (`crate::exporter::config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The device-list endpoint.
    pub url: String,
    /// Devices asked for per request. The server may
    /// send fewer; paging follows what it actually sends.
    pub page_size: u32,
    /// Limit for one request, from connecting to the last byte of the body.
    pub request_timeout: Duration,
    /// The longest page body read, in bytes; a longer page fails the
    /// request with [`FetchError::PageTooLarge`].
    pub max_page_bytes: u64,
    /// When to try a failed request again.
    pub retry: RetryPolicy,
}

/// Retries of one request: exponential backoff with full jitter.
///
/// Before attempt `n + 1` the client waits a random time between zero and
/// `min(max_delay, base_delay × 2^(n-1))`, or what the server asked for in
/// `Retry-After` (capped at `max_delay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included (at least 1; default 4).
    pub max_attempts: u32,
    /// Upper bound of the first wait (default 1 s).
    pub base_delay: Duration,
    /// Upper bound of any wait, `Retry-After` included (default 30 s).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The longest one page can take with this policy when each request
    /// is cut at `request_timeout`: every attempt times out and every
    /// wait between two attempts is the longest allowed.
    pub(crate) fn longest_page(&self, request_timeout: Duration) -> Duration {
        let waits = self.max_attempts.saturating_sub(1);
        request_timeout
            .saturating_mul(self.max_attempts)
            .saturating_add(self.max_delay.saturating_mul(waits))
    }

    /// The longest wait after failed attempt `attempt` (1-based), before
    /// jitter: `min(max_delay, base_delay × 2^(attempt-1))`.
    pub(crate) fn delay_bound(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// A wait drawn uniformly from zero to [`RetryPolicy::delay_bound`]
    /// ("full jitter"), so that many exporters failing together do not retry
    /// together.
    fn backoff(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let bound = u64::try_from(self.delay_bound(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=bound))
    }
}

/// Why a [`Client`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL does not parse or is not http(s).
    #[error("invalid AddReality API URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, without user info or query.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting that cannot work, such as a page size of zero.
    #[error("invalid AddReality client setting: {0}")]
    InvalidSetting(&'static str),
    /// The HTTP stack could not be set up (TLS roots, for instance).
    #[error("cannot set up the HTTP client for the AddReality API")]
    Http(#[source] reqwest::Error),
}

/// A device-list client, built once and shared by every platform: it keeps
/// one connection pool. Cloning it is cheap.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    url: Url,
    /// `url` as shown in errors and logs.
    shown_url: String,
    page_size: u32,
    request_timeout: Duration,
    max_page_bytes: u64,
    retry: RetryPolicy,
}

/// Everything one [`Client::fetch_all`] did, failed or not, for logs and
/// metrics.
#[derive(Debug)]
pub struct FetchReport {
    /// The devices, or why they could not all be fetched. A failure discards
    /// the pages already read: a partial fleet would look like deleted devices.
    pub outcome: Result<Fleet, FetchError>,
    /// HTTP requests sent, retries included.
    pub requests: u32,
    /// One [`FetchError::reason`] label per failed attempt, in order.
    pub failures: Vec<&'static str>,
}

/// Every device of one account, as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// Devices with distinct ids, in the order the server sent them.
    pub devices: Vec<Listed>,
    /// Entries that could not be read; their `index` is the position in the
    /// whole list (page offset plus position in the page).
    pub skipped: Vec<SkippedDevice>,
    /// Pages read.
    pub pages: u32,
    /// Set when paging ended abnormally; `devices` then holds what was read.
    pub anomaly: Option<PagingAnomaly>,
}

/// A way in which paging ended that means devices may be missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagingAnomaly {
    /// A page mostly repeated devices already seen: the server does not
    /// honour `offset`, so only the first page's worth can be read.
    OffsetIgnored {
        /// The page that repeated (1-based).
        page: u32,
        /// The offset that was sent for it.
        offset: u64,
        /// How many of its devices had been seen before.
        repeated: usize,
    },
    /// The list ran out before `pagination.total` entries.
    TotalNotReached {
        /// What the server announced.
        total: u64,
        /// Entries actually received.
        received: u64,
    },
    /// The page cap was hit before the list ended.
    TooManyPages {
        /// Pages read.
        pages: u32,
        /// The last `pagination.total`, if any.
        total: Option<u64>,
    },
}

impl PagingAnomaly {
    /// A short label for a metric, e.g. `offset_ignored`.
    pub fn label(&self) -> &'static str {
        match self {
            PagingAnomaly::OffsetIgnored { .. } => "offset_ignored",
            PagingAnomaly::TotalNotReached { .. } => "total_not_reached",
            PagingAnomaly::TooManyPages { .. } => "too_many_pages",
        }
    }
}

impl fmt::Display for PagingAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagingAnomaly::OffsetIgnored { page, offset, repeated } => write!(
                f,
                "the server seems to ignore \"offset\": page {page} (offset {offset}) repeated \
                 {repeated} devices already seen, so paging stopped and later devices are missing"
            ),
            PagingAnomaly::TotalNotReached { total, received } => write!(
                f,
                "the server announced {total} devices but the list ran out after {received} entries"
            ),
            PagingAnomaly::TooManyPages { pages, total: Some(total) } => write!(
                f,
                "paging stopped after {pages} pages, more than {total} announced devices need; \
                 the list may be incomplete"
            ),
            PagingAnomaly::TooManyPages { pages, total: None } => {
                write!(f, "paging stopped after {pages} pages without reaching the end of the list")
            }
        }
    }
}

/// Why the device list of one platform could not be fetched.
///
/// Every message names the platform and the URL (never the token).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// 401 or 403: the token was refused. Never retried.
    #[error(
        "{url} refused the token for platform {platform_id} (HTTP {status}); \
         check the token for platform {platform_id}"
    )]
    Auth {
        /// The platform whose token was refused.
        platform_id: String,
        /// The endpoint.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// The token cannot be sent at all: it holds characters an HTTP header
    /// cannot carry (a stray newline, for instance). Never retried.
    #[error(
        "the token for platform {platform_id} contains characters that cannot be sent in an \
         HTTP header; check the token for platform {platform_id}"
    )]
    UnusableToken {
        /// The platform.
        platform_id: String,
    },
    /// Any other non-success status. 408, 429 and 5xx are retried.
    #[error("{url} answered HTTP {status} to the device list request for platform {platform_id}{detail}")]
    Status {
        /// The platform.
        platform_id: String,
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Where a redirect points, or how the body starts; empty when there
        /// is nothing useful. Starts with `"; "` when not empty.
        detail: String,
    },
    /// The request took longer than the configured timeout. Retried.
    #[error("{url} did not answer the device list request for platform {platform_id} within {}", humantime::format_duration(*.timeout))]
    Timeout {
        /// The platform.
        platform_id: String,
        /// The endpoint.
        url: String,
        /// The configured request timeout.
        timeout: Duration,
    },
    /// No connection could be made (refused, DNS, TLS). Retried.
    #[error("cannot connect to {url} to fetch the devices of platform {platform_id}")]
    Connect {
        /// The platform.
        platform_id: String,
        /// The endpoint.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// The connection broke during the exchange. Retried.
    #[error("the connection to {url} failed while fetching the devices of platform {platform_id}")]
    Transport {
        /// The platform.
        platform_id: String,
        /// The endpoint.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// A page longer than `max_page_bytes`, announced in `Content-Length`
    /// or found while reading. Not retried: the next answer would be as
    /// long, and reading it again costs as much.
    #[error(
        "{url} sent a device list page for platform {platform_id} longer than max_page_bytes \
         ({limit} bytes{}) and it was not read further; lower page_size, or raise \
         max_page_bytes if the API's pages really are this long",
        announced_length(*.announced)
    )]
    PageTooLarge {
        /// The platform.
        platform_id: String,
        /// The endpoint.
        url: String,
        /// The configured `max_page_bytes`.
        limit: u64,
        /// The `Content-Length` the server announced, when it did.
        announced: Option<u64>,
    },
    /// A success status with a body that is not a device list (an HTML page,
    /// truncated JSON). Retried.
    #[error("{url} sent an unreadable device list for platform {platform_id}")]
    BadResponse {
        /// The platform.
        platform_id: String,
        /// The endpoint.
        url: String,
        /// Why the body could not be read.
        #[source]
        source: PageError,
    },
}

impl FetchError {
    /// A short label for logs and metrics: `auth`, `status_429`,
    /// `status_5xx`, `status_4xx`, `status_3xx`, `timeout`, `connect`,
    /// `transport`, `bad_response` or `page_too_large`.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::Auth { .. } | FetchError::UnusableToken { .. } => "auth",
            FetchError::Status { status: 429, .. } => "status_429",
            FetchError::Status { status: 500..=599, .. } => "status_5xx",
            FetchError::Status { status: 400..=499, .. } => "status_4xx",
            FetchError::Status { .. } => "status_3xx",
            FetchError::Timeout { .. } => "timeout",
            FetchError::Connect { .. } => "connect",
            FetchError::Transport { .. } => "transport",
            FetchError::BadResponse { .. } => "bad_response",
            FetchError::PageTooLarge { .. } => "page_too_large",
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Auth { .. }
            | FetchError::UnusableToken { .. }
            | FetchError::PageTooLarge { .. } => false,
            FetchError::Status { status, .. } => {
                *status == 408 || *status == 429 || (500..=599).contains(status)
            }
            FetchError::Timeout { .. }
            | FetchError::Connect { .. }
            | FetchError::Transport { .. }
            | FetchError::BadResponse { .. } => true,
        }
    }
}

/// What one failed attempt produced: the error and the server's
/// `Retry-After`, if it sent one.
struct Failed {
    error: FetchError,
    retry_after: Option<Duration>,
}

/// Requests sent and failures seen during one fetch.
struct Tally {
    requests: u32,
    failures: Vec<&'static str>,
    rng: fastrand::Rng,
}

impl Client {
    /// Builds the client (one connection pool, rustls).
    ///
    /// Redirects are not followed: a redirect would resend the token header,
    /// possibly to another host, and would turn the POST into a GET. A
    /// redirect is reported with its target so the URL can be corrected.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let url = Url::parse(&config.url).map_err(|err| ClientError::InvalidUrl {
            url: redact_unparsed(&config.url),
            reason: err.to_string(),
        })?;
        let shown_url = redact(&url);
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl {
                url: shown_url,
                reason: "only http and https are supported".into(),
            });
        }
        if config.page_size == 0 {
            return Err(ClientError::InvalidSetting("page_size must be at least 1"));
        }
        if config.retry.max_attempts == 0 {
            return Err(ClientError::InvalidSetting("retry max_attempts must be at least 1"));
        }
        if config.max_page_bytes == 0 {
            return Err(ClientError::InvalidSetting("max_page_bytes must be at least 1"));
        }
        if config.request_timeout.is_zero() {
            return Err(ClientError::InvalidSetting("request_timeout must be longer than zero"));
        }
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("signage-watchdog/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ClientError::Http)?;
        Ok(Client {
            http,
            url,
            shown_url,
            page_size: config.page_size,
            request_timeout: config.request_timeout,
            max_page_bytes: config.max_page_bytes,
            retry: config.retry,
        })
    }

    /// The endpoint as shown in errors and logs: no user info, query or
    /// fragment.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Fetches every device of one account, page by page.
    ///
    /// Never fails outright: the [`FetchReport`] carries the devices or the
    /// error, and the requests and failures either way. Every failed attempt
    /// is logged as a warning; so is a [`PagingAnomaly`], once per fetch.
    pub async fn fetch_all(&self, platform_id: &str, token: &Secret) -> FetchReport {
        self.fetch_all_noting_pages(platform_id, token, &|| {}).await
    }

    /// [`Client::fetch_all`], calling `page_read` each time a page has
    /// been read: the exporter's watchdog takes it as proof that the poll
    /// goes on. Between two calls (or the start and the first, or the last
    /// and the end) one page is fetched, which takes at most
    /// `max_attempts × request_timeout` plus the waits between attempts
    /// (each at most `max_delay`), whatever the server does.
    pub async fn fetch_all_noting_pages(
        &self,
        platform_id: &str,
        token: &Secret,
        page_read: &(dyn Fn() + Sync),
    ) -> FetchReport {
        let mut tally = Tally { requests: 0, failures: Vec::new(), rng: fastrand::Rng::new() };
        let mut pager = Pager::new(self.page_size);
        let outcome = loop {
            match self.fetch_page(platform_id, token, pager.offset, &mut tally).await {
                Ok(page) => {
                    page_read();
                    if let Some(end) = pager.accept(page) {
                        break Ok(pager.into_fleet(end.anomaly));
                    }
                }
                Err(error) => break Err(error),
            }
        };
        // Anomalies and skipped entries are logged by the caller, which
        // says what it does with them (keeps, forgets nothing).
        if let Ok(fleet) = &outcome {
            tracing::debug!(
                platform = platform_id,
                devices = fleet.devices.len(),
                pages = fleet.pages,
                requests = tally.requests,
                "fetched the device list"
            );
        }
        FetchReport { outcome, requests: tally.requests, failures: tally.failures }
    }

    /// One page, with retries.
    async fn fetch_page(
        &self,
        platform_id: &str,
        token: &Secret,
        offset: u64,
        tally: &mut Tally,
    ) -> Result<Page, FetchError> {
        let max = self.retry.max_attempts;
        let mut attempt = 1;
        loop {
            tally.requests += 1;
            let Failed { error, retry_after } =
                match self.request_page(platform_id, token, offset).await {
                    Ok(page) => return Ok(page),
                    Err(failed) => failed,
                };
            let reason = error.reason();
            tally.failures.push(reason);
            let delay = (error.is_transient() && attempt < max).then(|| match retry_after {
                Some(asked) => asked.min(self.retry.max_delay),
                None => self.retry.backoff(attempt, &mut tally.rng),
            });
            let next = match delay {
                Some(delay) => format!("retrying in {}", humantime::format_duration(round(delay))),
                None if error.is_transient() => "giving up".to_string(),
                None => "not retrying".to_string(),
            };
            tracing::warn!(
                platform = platform_id,
                attempt = format_args!("{attempt}/{max}"),
                reason,
                offset,
                "{}; {next}",
                crate::error::with_causes(&error),
            );
            // The exporter aborts its poll tasks on SIGTERM, which ends this
            // backoff too, as it ends a poll hung on the API (exporter_cli.rs).
            match delay {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(error),
            }
            attempt += 1;
        }
    }

    /// One HTTP request for one page.
    async fn request_page(
        &self,
        platform_id: &str,
        token: &Secret,
        offset: u64,
    ) -> Result<Page, Failed> {
        let fail = |error| Failed { error, retry_after: None };
        let mut token_header = HeaderValue::from_str(token.expose()).map_err(|_| {
            fail(FetchError::UnusableToken { platform_id: platform_id.to_string() })
        })?;
        token_header.set_sensitive(true);
        let body = serde_json::json!({ "id": [], "limit": self.page_size, "offset": offset });
        let mut response = self
            .http
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-API-Token", token_header)
            .body(body.to_string())
            .send()
            .await
            .map_err(|err| fail(self.transport_error(platform_id, err)))?;

        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(fail(FetchError::Auth {
                platform_id: platform_id.to_string(),
                url: self.shown_url.clone(),
                status: status.as_u16(),
            }));
        }
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| parse_retry_after(value, jiff::Timestamp::now()));
            let location =
                response.headers().get(header::LOCATION).and_then(|value| value.to_str().ok()).map(
                    |target| match self.url.join(target) {
                        Ok(target) => redact(&target),
                        Err(_) => redact_unparsed(target),
                    },
                );
            // The body of an error is only quoted; if it cannot be read the
            // status alone is the error.
            let text = read_capped(&mut response, ERROR_BODY_READ).await.unwrap_or_default().bytes;
            let detail = match location {
                Some(target) => format!("; it redirects to {target}: set that URL instead"),
                None => match quote_body(&text, token) {
                    Some(quote) => format!("; the body starts with {quote:?}"),
                    None => String::new(),
                },
            };
            let error = FetchError::Status {
                platform_id: platform_id.to_string(),
                url: self.shown_url.clone(),
                status: status.as_u16(),
                detail,
            };
            return Err(Failed { error, retry_after });
        }
        let too_large = |announced| {
            fail(FetchError::PageTooLarge {
                platform_id: platform_id.to_string(),
                url: self.shown_url.clone(),
                limit: self.max_page_bytes,
                announced,
            })
        };
        let announced = response.content_length();
        if announced.is_some_and(|length| length > self.max_page_bytes) {
            return Err(too_large(announced));
        }
        let cap = usize::try_from(self.max_page_bytes).unwrap_or(usize::MAX);
        let body = read_capped(&mut response, cap)
            .await
            .map_err(|err| fail(self.transport_error(platform_id, err)))?;
        if body.cut {
            return Err(too_large(announced));
        }
        let body = body.bytes;
        parse_page(&body).map_err(|err| {
            fail(FetchError::BadResponse {
                platform_id: platform_id.to_string(),
                url: self.shown_url.clone(),
                source: scrub_page_error(err, &body, token),
            })
        })
    }

    /// Sorts a reqwest failure into timeout, connect or transport. The URL is
    /// removed from reqwest's error: the message names it already, and the
    /// configured URL may carry credentials.
    fn transport_error(&self, platform_id: &str, err: reqwest::Error) -> FetchError {
        let platform_id = platform_id.to_string();
        let url = self.shown_url.clone();
        if err.is_timeout() {
            FetchError::Timeout { platform_id, url, timeout: self.request_timeout }
        } else if err.is_connect() {
            FetchError::Connect { platform_id, url, source: err.without_url() }
        } else {
            FetchError::Transport { platform_id, url, source: err.without_url() }
        }
    }
}

/// A body as read by [`read_capped`]: at most `cap` bytes.
#[derive(Debug, Default, PartialEq, Eq)]
struct CappedBody {
    /// The bytes read, never more than `cap`.
    bytes: Vec<u8>,
    cap: usize,
    /// Whether the body went on beyond `cap` (what was beyond was dropped).
    cut: bool,
}

impl CappedBody {
    /// An empty body, with room for what the server announced (up to `cap`).
    fn new(cap: usize, announced: Option<u64>) -> CappedBody {
        let expected = announced.and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
        CappedBody { bytes: Vec::with_capacity(expected.min(cap)), cap, cut: false }
    }

    /// Appends what fits of `chunk`; returns whether reading may go on (false
    /// once the body is longer than `cap`).
    fn push(&mut self, chunk: &[u8]) -> bool {
        let room = self.cap - self.bytes.len();
        if chunk.len() > room {
            self.bytes.extend_from_slice(&chunk[..room]);
            self.cut = true;
            return false;
        }
        self.bytes.extend_from_slice(chunk);
        true
    }
}

/// Reads a response body chunk by chunk and stops at `cap` bytes: the rest
/// is never read (the connection is dropped with the response).
async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<CappedBody, reqwest::Error> {
    let mut body = CappedBody::new(cap, response.content_length());
    while let Some(chunk) = response.chunk().await? {
        if !body.push(&chunk) {
            break;
        }
    }
    Ok(body)
}

/// `"; it announced N"` for a [`FetchError::PageTooLarge`] message.
fn announced_length(announced: Option<u64>) -> String {
    announced.map_or(String::new(), |n| format!("; it announced {n}"))
}

/// How a fetch ended.
#[derive(Debug, PartialEq, Eq)]
struct End {
    anomaly: Option<PagingAnomaly>,
}

/// The paging decisions of one fetch, apart from HTTP so that they can be
/// tested page by page.
#[derive(Debug)]
struct Pager {
    /// The `limit` sent with every request.
    limit: u32,
    /// The `offset` of the next request.
    offset: u64,
    pages: u32,
    /// Entries in the first page (the server's real page size, which may be
    /// below `limit`) and the total it announced: together they bound the
    /// number of pages, even if later pages announce ever larger totals.
    first_entries: Option<u64>,
    first_total: Option<Option<u64>>,
    seen: HashSet<i64>,
    devices: Vec<Listed>,
    skipped: Vec<SkippedDevice>,
}

impl Pager {
    fn new(limit: u32) -> Pager {
        Pager {
            limit,
            offset: 0,
            pages: 0,
            first_entries: None,
            first_total: None,
            seen: HashSet::new(),
            devices: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Takes in the page fetched at `self.offset`; `None` means fetch the next
    /// one at the new `self.offset`.
    fn accept(&mut self, page: Page) -> Option<End> {
        self.pages += 1;
        let entries = page.entries as u64;
        let page_offset = self.offset;
        // Repeats of earlier pages, not duplicates within this one.
        let repeated = page.devices.iter().filter(|d| self.seen.contains(&d.device.id)).count();
        for listed in page.devices {
            if self.seen.insert(listed.device.id) {
                self.devices.push(listed);
            }
        }
        if entries == 0 {
            let anomaly = page
                .total
                .filter(|total| page_offset < *total)
                .map(|total| PagingAnomaly::TotalNotReached { total, received: page_offset });
            return Some(End { anomaly });
        }
        if repeated > 0 && repeated * 2 >= page.entries {
            // The server sent (mostly) a page it had sent before. Its
            // unreadable entries are repeats too, and not recorded again.
            let anomaly =
                PagingAnomaly::OffsetIgnored { page: self.pages, offset: page_offset, repeated };
            return Some(End { anomaly: Some(anomaly) });
        }
        self.skipped.extend(page.skipped.into_iter().map(|skip| SkippedDevice {
            index: usize::try_from(page_offset).unwrap_or(usize::MAX).saturating_add(skip.index),
            reason: skip.reason,
        }));
        self.offset += entries;
        let first_entries = *self.first_entries.get_or_insert(entries);
        let finished = match page.total {
            Some(total) => self.offset >= total,
            None => entries < u64::from(self.limit),
        };
        if finished {
            return Some(End { anomaly: None });
        }
        let cap = match *self.first_total.get_or_insert(page.total) {
            Some(total) => {
                total.div_ceil(first_entries).saturating_add(2).min(u64::from(MAX_PAGES))
            }
            None => u64::from(MAX_PAGES),
        };
        if u64::from(self.pages) >= cap {
            let anomaly = PagingAnomaly::TooManyPages { pages: self.pages, total: page.total };
            return Some(End { anomaly: Some(anomaly) });
        }
        None
    }

    fn into_fleet(self, anomaly: Option<PagingAnomaly>) -> Fleet {
        Fleet { devices: self.devices, skipped: self.skipped, pages: self.pages, anomaly }
    }
}

/// Reads a `Retry-After` value: delay seconds or an HTTP date (IMF-fixdate,
/// e.g. `Wed, 21 Oct 2015 07:28:00 GMT`). A date in the past means now.
/// The obsolete RFC 850 and asctime date forms are not understood; the
/// client then falls back to its own backoff.
fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Absurdly long numbers are capped by max_delay anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(value).ok()?;
    let wait = now.duration_until(at);
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// The URL without user info, query or fragment.
fn redact(url: &Url) -> String {
    let mut url = url.clone();
    // Only fails for URLs that cannot have user info, which then have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// Best-effort [`redact`] for text that is not a valid URL.
pub(crate) fn redact_unparsed(text: &str) -> String {
    let text = text.split(['?', '#']).next().unwrap_or("");
    match text.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => text.to_string(),
    }
}

/// The start of an error body, on one line, without the token, or `None`
/// when there is nothing to quote.
fn quote_body(body: &[u8], token: &Secret) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let text = scrub(&text, token);
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let quote: String = words.chars().take(BODY_QUOTE_CHARS).collect();
    (!quote.is_empty()).then_some(quote)
}

/// The text with every occurrence of the token replaced by `***`.
fn scrub(text: &str, token: &Secret) -> String {
    let secret = token.expose();
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "***")
    }
}

/// `err` without the token in the body it quotes. The quote is taken again
/// from the scrubbed body: cut first, a token straddling the cut would
/// leave its first characters behind.
fn scrub_page_error(err: PageError, body: &[u8], token: &Secret) -> PageError {
    match err {
        PageError::NotJson { detail, .. } => {
            let scrubbed = scrub(&String::from_utf8_lossy(body), token);
            PageError::NotJson { detail, start: super::model::not_json_start(&scrubbed) }
        }
        other => other,
    }
}

/// A delay rounded to milliseconds, for a readable log line.
fn round(delay: Duration) -> Duration {
    Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = at("2015-10-21T07:27:30Z");
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(30))
        );
        // A date already past: retry now.
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-1", "1.5", "soon", "2015-10-21T07:28:00Z"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_stays_within_the_exponential_bound() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let bounds: Vec<u128> = (1..=6).map(|n| policy.delay_bound(n).as_millis()).collect();
        assert_eq!(bounds, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.delay_bound(u32::MAX), Duration::from_secs(1));

        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 1..=6 {
            let delays: Vec<Duration> =
                (0..200).map(|_| policy.backoff(attempt, &mut rng)).collect();
            let bound = policy.delay_bound(attempt);
            assert!(delays.iter().all(|d| *d <= bound), "attempt {attempt}");
            // Full jitter: spread over the whole range, not clustered at the top.
            assert!(delays.iter().any(|d| *d < bound / 4), "attempt {attempt}");
            assert!(delays.iter().any(|d| *d > bound * 3 / 4), "attempt {attempt}");
        }
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        let url = Url::parse("https://user:pw@api.example/v1/list?token=abc#x").unwrap();
        assert_eq!(redact(&url), "https://api.example/v1/list");
        assert_eq!(redact_unparsed("https://user:pw@exa mple/v1?token=abc"), "https://exa mple/v1");
        let err = Client::new(ClientConfig {
            url: "ftp://u:p@host/x?t=1".into(),
            page_size: 300,
            request_timeout: Duration::from_secs(15),
            max_page_bytes: 1 << 20,
            retry: RetryPolicy::default(),
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid AddReality API URL ftp://host/x: only http and https are supported"
        );
    }

    #[test]
    fn error_bodies_are_quoted_short_and_scrubbed() {
        let token = Secret::new("s3cret");
        let body = format!("<html>\n<body>bad token s3cret {}</body>", "x".repeat(500));
        let quote = quote_body(body.as_bytes(), &token).unwrap();
        assert!(quote.starts_with("<html> <body>bad token *** xxx"), "{quote}");
        assert_eq!(quote.chars().count(), BODY_QUOTE_CHARS);
        assert_eq!(quote_body(b" \n ", &token), None);
    }

    #[test]
    fn a_token_across_the_quoted_start_of_a_non_json_body_is_scrubbed_whole() {
        let token = Secret::new("tok-0123456789abcdef");
        // The token starts at character 30: a quote cut at 40 would hold
        // its first ten characters.
        let body = format!("<html>Unauthorised request for {} </html>", token.expose());
        let err = parse_page(body.as_bytes()).unwrap_err();
        let shown = scrub_page_error(err, body.as_bytes(), &token).to_string();
        assert!(
            shown.ends_with("it starts with \"<html>Unauthorised request for *** </htm\""),
            "{shown}"
        );
        assert!(!shown.contains("tok-0123"), "{shown}");
    }

    fn page(total: Option<u64>, ids: impl IntoIterator<Item = i64>) -> Page {
        let devices: Vec<Listed> = ids
            .into_iter()
            .map(|id| Listed {
                device: super::super::model::Device {
                    id,
                    name: format!("d{id}"),
                    connection_state: None,
                    player_status: None,
                    last_online: None,
                    activation_state: None,
                    player_version: None,
                    time_zone: None,
                },
                raw: format!("{{\"id\":{id}}}"),
            })
            .collect();
        Page { total, entries: devices.len(), devices, skipped: Vec::new() }
    }

    #[test]
    fn pager_follows_what_the_server_sends() {
        // The server caps pages at 2 although 3 were asked for.
        let mut pager = Pager::new(3);
        assert_eq!(pager.accept(page(Some(5), [1, 2])), None);
        assert_eq!(pager.offset, 2);
        assert_eq!(pager.accept(page(Some(5), [3, 4])), None);
        assert_eq!(pager.accept(page(Some(5), [5])), Some(End { anomaly: None }));
        assert_eq!(pager.into_fleet(None).devices.len(), 5);

        // Without a total, a short page ends the list.
        let mut pager = Pager::new(2);
        assert_eq!(pager.accept(page(None, [1, 2])), None);
        assert_eq!(pager.accept(page(None, [3])), Some(End { anomaly: None }));

        // An empty first page is an empty fleet.
        let mut pager = Pager::new(2);
        assert_eq!(pager.accept(page(Some(0), [])), Some(End { anomaly: None }));
    }

    #[test]
    fn pager_dedupes_a_shifted_list_but_stops_on_a_repeated_page() {
        // A device inserted between two requests shifts the list by one: one
        // repeat is deduped and paging goes on.
        let mut pager = Pager::new(4);
        assert_eq!(pager.accept(page(Some(9), [1, 2, 3, 4])), None);
        assert_eq!(pager.accept(page(Some(9), [4, 5, 6, 7])), None);
        assert_eq!(pager.accept(page(Some(9), [8, 9])), Some(End { anomaly: None }));
        let ids: Vec<i64> = pager.devices.iter().map(|d| d.device.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7, 8, 9]);

        let mut pager = Pager::new(4);
        assert_eq!(pager.accept(page(Some(9), [1, 2, 3, 4])), None);
        let end = pager.accept(page(Some(9), [1, 2, 3, 4])).unwrap();
        assert_eq!(
            end.anomaly,
            Some(PagingAnomaly::OffsetIgnored { page: 2, offset: 4, repeated: 4 })
        );
        assert_eq!(pager.into_fleet(end.anomaly).devices.len(), 4);
    }

    #[test]
    fn pager_caps_pages() {
        // A total that keeps growing: capped relative to the announced total.
        let mut pager = Pager::new(1);
        let mut end = None;
        for id in 0..100 {
            end = pager.accept(page(Some(id as u64 + 3), [id]));
            if end.is_some() {
                break;
            }
        }
        assert_eq!(
            end.unwrap().anomaly,
            Some(PagingAnomaly::TooManyPages { pages: 5, total: Some(7) })
        );

        // No total and full pages forever: the absolute cap.
        let mut pager = Pager::new(1);
        let mut end = None;
        for id in 0.. {
            end = pager.accept(page(None, [id]));
            if end.is_some() {
                break;
            }
        }
        assert_eq!(
            end.unwrap().anomaly,
            Some(PagingAnomaly::TooManyPages { pages: MAX_PAGES, total: None })
        );
    }

    #[test]
    fn a_capped_body_never_holds_more_than_its_cap() {
        // Chunks as a server may send them, in all sizes.
        let mut body = CappedBody::new(10, Some(1_000_000));
        assert!(body.bytes.capacity() <= 10 + 16, "preallocates at most the cap");
        assert!(body.push(b"abcd"));
        assert!(body.push(b""));
        assert!(body.push(b"efghij"), "exactly the cap still fits");
        assert!(!body.cut);
        assert!(!body.push(b"k"), "one byte more stops reading");
        assert!(body.cut);
        assert_eq!(body.bytes, b"abcdefghij");

        // An endless stream of large chunks: stopped at the first that
        // does not fit, and what is kept never exceeds the cap.
        let mut body = CappedBody::new(1000, None);
        let chunk = [b'x'; 300];
        let mut pushed = 0;
        while body.push(&chunk) {
            pushed += 1;
            assert!(pushed < 10, "reading must stop");
        }
        assert_eq!(pushed, 3);
        assert_eq!(body.bytes.len(), 1000);
        assert!(body.cut);

        let err = FetchError::PageTooLarge {
            platform_id: "12".into(),
            url: "http://api.example/list".into(),
            limit: 1000,
            announced: Some(5000),
        };
        assert_eq!(err.reason(), "page_too_large");
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "http://api.example/list sent a device list page for platform 12 longer than \
             max_page_bytes (1000 bytes; it announced 5000) and it was not read further; lower \
             page_size, or raise max_page_bytes if the API's pages really are this long"
        );
    }

    #[test]
    fn anomalies_read_as_sentences() {
        let anomaly = PagingAnomaly::TotalNotReached { total: 1300, received: 1200 };
        assert_eq!(anomaly.label(), "total_not_reached");
        assert_eq!(
            anomaly.to_string(),
            "the server announced 1300 devices but the list ran out after 1200 entries"
        );
    }
}
