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
//! `127.0.0.1:0` and only the binaries install signal handlers.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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

/// Serves `pages` on `listener` until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    pages: Arc<dyn Pages>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_with(
        listener,
        move |req| {
            let pages = pages.clone();
            async move { respond(&*pages, &req) }
        },
        shutdown,
    )
    .await
}

/// The accept loop under [`serve`], for any request handler: HTTP/1.1 on
/// `listener` until `shutdown` completes, then in-flight requests get up to
/// five seconds and idle keep-alive connections are closed at once. The
/// AddReality simulator serves its API through it too.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let http = hyper::server::conn::http1::Builder::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: log, back off
                        // a little, keep serving.
                        tracing::warn!("accepting an HTTP connection failed: {err}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |req| {
                    let answer = handler(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!("HTTP connection ended with an error: {err}");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
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
    let gzip = accepts_gzip(req);
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

fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers().get_all(header::ACCEPT_ENCODING).iter().any(|value| {
        value.to_str().unwrap_or("").split(',').any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim().strip_prefix("q=").is_some_and(|q| q.trim().parse::<f32>() == Ok(0.0))
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
    })
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
