//! The small HTTP server both daemons run: `/`, `/metrics` and `/healthz`.
//!
//! It is deliberately tiny: three read-only pages, HTTP/1.1, no routing
//! framework. A daemon describes its pages with [`Pages`]; the server never
//! computes anything expensive itself. The exporter hands it a pre-rendered
//! [`Exposition`], so a scrape costs one clone of a reference-counted buffer
//! (and, when the scraper accepts gzip, one compression per poll, not per
//! scrape).
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and only the binaries install signal handlers. Every
//! connection is bounded by [`Limits`] (a header-read timeout, an idle
//! keep-alive timeout, a connection cap), so slow or idle clients cannot
//! starve the scrapes; [`serve_limited`] and [`serve_with_limits`] take them
//! as a parameter, for tests that need small values.
//!
//! A daemon's listener may be secured by a web configuration file
//! ([`WebConfig`], the Prometheus exporter-toolkit's format): TLS, client
//! certificates, basic auth and security headers. [`serve_configured`]
//! takes it; the TLS handshake runs in the connection's own task, within the
//! header-read timeout, so a client that never finishes one holds nothing
//! but its own slot.

mod basic_auth;
mod key_error;
mod tls;
pub mod web_config;

pub use web_config::{WebConfig, WebConfigError};

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Duration, Instant};

/// `Content-Type` of the Prometheus text format.
pub(crate) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A rendered metrics page, served byte for byte to every scrape.
#[derive(Debug, Default)]
pub struct Exposition {
    plain: Bytes,
    gzip: OnceLock<Bytes>,
}

impl Exposition {
    /// Wraps rendered exposition text.
    pub fn new(text: impl Into<Bytes>) -> Exposition {
        Exposition { plain: text.into(), gzip: OnceLock::new() }
    }

    /// The uncompressed text.
    pub fn plain(&self) -> &Bytes {
        &self.plain
    }

    /// The gzip-compressed text, compressed on first use and then kept.
    pub fn gzip(&self) -> &Bytes {
        self.gzip.get_or_init(|| {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&self.plain).expect("writing to a Vec cannot fail");
            Bytes::from(encoder.finish().expect("writing to a Vec cannot fail"))
        })
    }
}

/// What `/healthz` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// 200, with a short plain-text explanation.
    Healthy(String),
    /// 503, with the reason a sysadmin needs.
    Unhealthy(String),
}

/// The pages a daemon serves.
pub trait Pages: Send + Sync + 'static {
    /// Human name of the daemon, for the landing page.
    fn title(&self) -> &str;
    /// The current metrics. Must be cheap: it runs inside every scrape.
    fn exposition(&self) -> Arc<Exposition>;
    /// The current health.
    fn health(&self) -> Health;
}

/// How long a client may take to send a request's head, by default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may wait for its next request, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many connections a server holds at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// How often at most a refused connection or a failed `accept` is logged.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The bounds a server keeps, so that slow or idle clients cannot starve the
/// scrapes that matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a complete request head, counted from the
    /// moment the server waits for it (the connection opened, or the previous
    /// answer was sent). hyper closes the connection when it runs out, so an
    /// idle or half-sent request never holds a connection longer.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may stay quiet after its last answer was
    /// handed over; then it is closed. A client that stops reading its answer
    /// gets `header_read_timeout` more to finish, then loses the connection.
    pub idle_timeout: Duration,
    /// Connections held at once. One more is accepted and closed at once, so
    /// the client learns at once instead of waiting in the kernel's queue.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `pages` on `listener` with the default [`Limits`] until `shutdown`
/// completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    pages: Arc<dyn Pages>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_limited(listener, pages, Limits::default(), shutdown).await
}

/// [`serve`] with the given limits.
pub async fn serve_limited(
    listener: TcpListener,
    pages: Arc<dyn Pages>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_configured(listener, pages, None, limits, shutdown).await
}

/// [`serve_limited`] secured by a web configuration (TLS, basic auth,
/// headers), when there is one. The configuration is read once per
/// connection for TLS and once per request for the rest, so a
/// [`WebConfig::reload`] takes effect without restarting the server.
pub async fn serve_configured(
    listener: TcpListener,
    pages: Arc<dyn Pages>,
    web: Option<Arc<WebConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let handler = move |req| {
        let pages = pages.clone();
        async move { respond(&*pages, &req) }
    };
    match web {
        None => accept_loop(listener, handler, limits, None, shutdown).await,
        Some(web) => {
            let tls = web.clone();
            let guarded = move |req| {
                let web = web.clone();
                let handler = handler.clone();
                async move { web.answer(req, handler).await }
            };
            accept_loop(listener, guarded, limits, Some(tls), shutdown).await
        }
    }
}

/// The accept loop under [`serve`], for any request handler, with the default
/// [`Limits`]. The AddReality simulator serves its API through it too.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve_with_limits(listener, handler, Limits::default(), shutdown).await
}

/// HTTP/1.1 on `listener` within `limits` until `shutdown` completes; then
/// in-flight requests get up to five seconds and idle keep-alive connections
/// are closed at once.
pub async fn serve_with_limits<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    accept_loop(listener, handler, limits, None, shutdown).await
}

/// The accept loop: each connection in a task of its own, over TLS when
/// `web` says so at the moment it is accepted.
async fn accept_loop<H, F>(
    listener: TcpListener,
    handler: H,
    limits: Limits,
    web: Option<Arc<WebConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    // One permit per connection held; all of them back means all closed.
    let slots = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    let (stop, stopping) = watch::channel(false);
    let mut accept_errors = RateLimitedLog::default();
    let mut refusals = RateLimitedLog::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: log (once a
                        // second at most), back off a little, keep serving.
                        if let Some(suppressed) = accept_errors.record(Instant::now()) {
                            tracing::warn!(
                                "accepting an HTTP connection failed: {err}{}",
                                suppressed_note(suppressed, "accept errors")
                            );
                        }
                        // A shutdown ends the back-off too.
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                            () = &mut shutdown => break,
                        }
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Closed at once: the client fails fast, the kernel's
                    // queue keeps draining, and the next client gets a slot
                    // as soon as one frees.
                    drop(stream);
                    if let Some(suppressed) = refusals.record(Instant::now()) {
                        tracing::warn!(
                            "refused an HTTP connection: {} connections already open{}",
                            limits.max_connections,
                            suppressed_note(suppressed, "refusals")
                        );
                    }
                    continue;
                };
                // Each answer is written whole at once: Nagle's algorithm
                // would only hold its last segment back until the client's
                // acknowledgement (nginx serves keep-alive connections the
                // same way). Failing to set it changes nothing else.
                let _ = stream.set_nodelay(true);
                let activity =
                    Arc::new(std::sync::Mutex::new(Activity { busy: 0, since: Instant::now() }));
                let quiet = activity.clone();
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |req| {
                    let busy = Busy::start(activity.clone());
                    let answer = handler(req);
                    async move {
                        let answer = answer.await;
                        drop(busy);
                        Ok::<_, Infallible>(answer)
                    }
                });
                match web.as_ref().and_then(|web| web.current().tls.clone()) {
                    None => {
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        tokio::spawn(run_connection(conn, quiet, limits, stopping.clone(), slot));
                    }
                    Some(acceptor) => {
                        let http = http.clone();
                        let stopping = stopping.clone();
                        tokio::spawn(async move {
                            // The handshake counts against the time a client
                            // has for its request head.
                            let handshake = tokio::time::timeout(
                                limits.header_read_timeout,
                                acceptor.accept(stream),
                            );
                            let stream = match handshake.await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(err)) => {
                                    tracing::debug!("TLS handshake failed: {err}");
                                    return;
                                }
                                Err(_elapsed) => {
                                    tracing::debug!("TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = http.serve_connection(TokioIo::new(stream), service);
                            run_connection(conn, quiet, limits, stopping, slot).await;
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let all = u32::try_from(limits.max_connections.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(Duration::from_secs(5), slots.acquire_many(all)).await;
    Ok(())
}

/// Drives one connection until it ends, goes quiet for too long, or the
/// server stops; `_slot` goes back to the server when it returns.
///
/// Requests only write down what they do in `activity`; this task is not
/// woken by them (at thousands of scrapes a second, two wake-ups and a new
/// timer per request were a measurable share of a scrape). It wakes when the
/// connection could first have been quiet for `idle_timeout`, and looks.
async fn run_connection<I, S>(
    conn: hyper::server::conn::http1::Connection<TokioIo<I>, S>,
    activity: Arc<std::sync::Mutex<Activity>>,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    let look_again = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(look_again);
    let ended = loop {
        tokio::select! {
            ended = conn.as_mut() => break Some(ended),
            () = look_again.as_mut() => {
                let now = *activity.lock().expect("activity lock poisoned");
                // While a request is being answered the connection is not idle.
                let quiet_until = if now.busy == 0 {
                    now.since + limits.idle_timeout
                } else {
                    Instant::now() + limits.idle_timeout
                };
                if quiet_until <= Instant::now() {
                    break None;
                }
                look_again.as_mut().reset(quiet_until);
            }
            _ = stopping.wait_for(|stop| *stop) => break None,
        }
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            // Idle: closed at once. Mid-answer: the answer may finish, but
            // within the header timeout, so a client that stopped reading
            // cannot hold the connection.
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.header_read_timeout, conn).await {
                Ok(ended) => ended,
                Err(_elapsed) => return,
            }
        }
    };
    if let Err(err) = ended {
        tracing::debug!("HTTP connection ended with an error: {err}");
    }
}

/// What one connection is doing: how many requests it is answering, and
/// since when it has been quiet (the last answer handed over, or its start).
#[derive(Debug, Clone, Copy)]
struct Activity {
    busy: usize,
    since: Instant,
}

/// A request being answered; dropping it (answer ready, or the connection
/// gone) marks the connection quiet from now.
struct Busy(Arc<std::sync::Mutex<Activity>>);

impl Busy {
    fn start(activity: Arc<std::sync::Mutex<Activity>>) -> Busy {
        activity.lock().expect("activity lock poisoned").busy += 1;
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Never panics in a drop: nothing panics while holding the lock.
        let mut now = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        now.busy = now.busy.saturating_sub(1);
        now.since = Instant::now();
    }
}

/// At most one log line per [`LOG_EVERY`] for a repeated event, with the
/// number of events not logged since the previous line.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last_line: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// Records an event at `now`: `Some(suppressed)` when a line is due,
    /// `None` when this one is counted instead.
    fn record(&mut self, now: Instant) -> Option<u64> {
        match self.last_line {
            Some(last) if now.saturating_duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_line = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn suppressed_note(suppressed: u64, what: &str) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} more {what} not logged since the previous line)")
    }
}

fn respond(pages: &dyn Pages, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are supported\n");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => metrics(pages, req),
        "/healthz" => match pages.health() {
            Health::Healthy(reason) => text(StatusCode::OK, format!("ok: {reason}\n")),
            Health::Unhealthy(reason) => {
                text(StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {reason}\n"))
            }
        },
        "/" => landing(pages),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics or /healthz\n"),
    }
}

fn metrics(pages: &dyn Pages, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let exposition = pages.exposition();
    let gzip = prefers_gzip(req.headers());
    let body = if gzip { exposition.gzip().clone() } else { exposition.plain().clone() };
    let mut resp = Response::new(Full::new(body));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

/// Whether the request's `Accept-Encoding` asks for gzip rather than the
/// plain text (RFC 9110, section 12.5.3): gzip (`gzip`, `x-gzip`, or `*`
/// when neither is named) must weigh more than `q=0`, and no less than the
/// plain text when the header weighs that too (`identity`, or `*` when it
/// is not named). A coding with a malformed weight is ignored; no header,
/// or nothing usable in it, means plain.
fn prefers_gzip(headers: &hyper::HeaderMap) -> bool {
    let (mut gzip, mut identity, mut any) = (None, None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for coding in value.split(',') {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let mut weight = Some(1.0);
            for parameter in parts {
                let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
                if key.trim().eq_ignore_ascii_case("q") {
                    weight = qvalue(value.trim());
                }
            }
            let Some(weight) = weight else { continue };
            let slot = if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                &mut gzip
            } else if name.eq_ignore_ascii_case("identity") {
                &mut identity
            } else if name == "*" {
                &mut any
            } else {
                continue;
            };
            *slot = Some(slot.map_or(weight, |seen: f32| seen.max(weight)));
        }
    }
    let gzip = gzip.or(any).unwrap_or(0.0);
    let identity = identity.or(any).unwrap_or(0.0);
    gzip > 0.0 && gzip >= identity
}

/// A weight as RFC 9110 writes it: `0` to `1` with at most three decimals.
fn qvalue(text: &str) -> Option<f32> {
    let (whole, decimals) = text.split_once('.').unwrap_or((text, ""));
    let well_formed = matches!(whole, "0" | "1")
        && decimals.len() <= 3
        && decimals.bytes().all(|b| b.is_ascii_digit())
        && (whole == "0" || decimals.bytes().all(|b| b == b'0'));
    well_formed.then(|| text.parse().ok()).flatten()
}

fn landing(pages: &dyn Pages) -> Response<Full<Bytes>> {
    let title = html_escape(pages.title());
    let version = env!("CARGO_PKG_VERSION");
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>{title}</h1>\n<p>signage-watchdog {version}</p>\n\
         <ul><li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/healthz\">/healthz</a></li></ul>\n\
         </body></html>\n"
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct Fixed(Arc<Exposition>, Health);
    impl Pages for Fixed {
        fn title(&self) -> &str {
            "Test <daemon>"
        }
        fn exposition(&self) -> Arc<Exposition> {
            self.0.clone()
        }
        fn health(&self) -> Health {
            self.1.clone()
        }
    }

    async fn start(
        health: Health,
    ) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let pages = Arc::new(Fixed(Arc::new(Exposition::new("up 1\n")), health));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve(listener, pages, async { stopped.await.unwrap_or(()) }).await.unwrap();
        });
        (base, stop, task)
    }

    #[test]
    fn a_repeated_event_is_logged_once_a_second_with_the_count_of_the_rest() {
        let start = Instant::now();
        let mut log = RateLimitedLog::default();
        assert_eq!(log.record(start), Some(0));
        for ms in [1, 200, 999] {
            assert_eq!(log.record(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.record(start + Duration::from_millis(1000)), Some(3));
        assert_eq!(log.record(start + Duration::from_millis(1500)), None);
        assert_eq!(log.record(start + Duration::from_millis(2100)), Some(1));
        assert_eq!(suppressed_note(0, "refusals"), "");
        assert_eq!(
            suppressed_note(3, "accept errors"),
            " (3 more accept errors not logged since the previous line)"
        );
    }

    #[test]
    fn accept_encoding_is_read_with_its_weights() {
        let cases: [(&[&str], bool); 22] = [
            (&[], false),
            (&["gzip"], true),
            (&["GZip"], true),
            (&["x-gzip"], true),
            (&["gzip, deflate, br"], true),
            (&["deflate", "gzip"], true),
            (&["br, gzip;q=0.8"], true),
            (&["gzip;q=0"], false),
            (&["gzip; Q=0.000"], false),
            (&["gzip;q=0.001"], true),
            (&["gzip;q=0.5, identity"], false),
            (&["gzip;q=1.0, identity;q=0.5"], true),
            (&["identity"], false),
            (&["deflate"], false),
            (&["*"], true),
            (&["*;q=0"], false),
            (&["gzip;q=0, *"], false),
            (&["identity;q=0, *;q=0.1"], true),
            (&["gzip;q=abc"], false),
            (&["gzip;q=1.5"], false),
            (&["gzip;q=0.5, gzip;q=0"], true),
            (&[""], false),
        ];
        for (values, expected) in cases {
            let mut headers = hyper::HeaderMap::new();
            for value in values {
                headers.append(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            }
            assert_eq!(prefers_gzip(&headers), expected, "Accept-Encoding: {values:?}");
        }
        assert_eq!(qvalue("0.25"), Some(0.25));
        assert_eq!(qvalue("1.000"), Some(1.0));
        for bad in ["", "1.001", "0.1234", "-0", "+1", "inf", "NaN", "1e0", ".5", "2"] {
            assert_eq!(qvalue(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn serves_metrics_plain_and_gzip_health_and_landing() {
        let (base, stop, task) = start(Health::Unhealthy("platform 12 failing".into())).await;
        let client = reqwest::Client::builder().no_gzip().build().unwrap();

        let resp = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], METRICS_CONTENT_TYPE);
        assert_eq!(resp.text().await.unwrap(), "up 1\n");

        let resp = client
            .get(format!("{base}/metrics"))
            .header(header::ACCEPT_ENCODING, "deflate, gzip;q=0.9")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        let compressed = resp.bytes().await.unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&compressed[..]).read_to_string(&mut text).unwrap();
        assert_eq!(text, "up 1\n");

        // Refused by weight: the plain text, and caches told it varies.
        let resp = client
            .get(format!("{base}/metrics"))
            .header(header::ACCEPT_ENCODING, "gzip;q=0")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers().get(header::CONTENT_ENCODING), None);
        assert_eq!(resp.headers()[header::VARY], "Accept-Encoding");
        assert_eq!(resp.text().await.unwrap(), "up 1\n");

        let resp = client.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.text().await.unwrap(), "unhealthy: platform 12 failing\n");

        let page = client.get(format!("{base}/")).send().await.unwrap().text().await.unwrap();
        assert!(page.contains("<h1>Test &lt;daemon&gt;</h1>"), "{page}");
        assert!(page.contains("href=\"/metrics\""));

        let resp = client.get(format!("{base}/nope")).send().await.unwrap();
        assert_eq!(resp.status(), 404);
        let resp = client.post(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 405);

        stop.send(()).unwrap();
        task.await.unwrap();
    }
}
