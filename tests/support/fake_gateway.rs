//! A fake of the SMS gateway the older system used, as a real HTTP server on
//! loopback, so senders and the jobctl engine are tested over real sockets.
//!
//! It speaks the gateway's API: `POST /send?number=+7…&text=…` with header
//! `Authorization: <key>` (number and text may also come as a form or JSON
//! body), and `GET /sms` → `{"sms_messages":[{"from","message","timestamp"}]}`.
//! It records every request it receives, keeps apart the messages it accepted
//! ([`FakeGateway::sent`]), and has faults to switch on: HTTP 500, a 200 that
//! carries an error, a slow answer, 401, a 400 echoing part of the request
//! as some gateways do (key included). Faults apply to every request,
//! whatever its path.
//!
//! ```ignore
//! let gateway = FakeGateway::start().await;
//! gateway.fail_next(1, Fault::ServerError);
//! // … send through a sender configured with gateway.url() and gateway.key() …
//! assert_eq!(gateway.sent().len(), 0);
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

/// The key [`FakeGateway::start`] expects.
pub(crate) const DEFAULT_KEY: &str = "fake-gateway-key-5d1c7e20";

/// Something going wrong at the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// HTTP 500 with a plain-text body; nothing is sent.
    ServerError,
    /// HTTP 200 with `{"status":"error","message":<this>}`; nothing is sent.
    ErrorBody(String),
    /// The request is handled normally (the SMS counts as sent) but no
    /// answer comes until the fault is changed or the gateway stops: the
    /// client, timing out, cannot know the message left.
    Hang,
    /// HTTP 401 whatever the key; nothing is sent.
    Unauthorized,
    /// HTTP 400 with a plain-text body quoting part of the request as it
    /// arrived, still encoded, as careless gateways do; nothing is sent.
    Echo(Echo),
}

/// The part of the request [`Fault::Echo`] quotes: `got <part>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Echo {
    /// The raw query string.
    Query,
    /// The raw body.
    Body,
    /// The value of this header (name in lower case).
    Header(&'static str),
}

/// One request as the gateway received it.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedRequest {
    /// `"POST"`, `"GET"`, …
    pub method: String,
    /// The path, without query.
    pub path: String,
    /// The raw (still encoded) query string, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// When the gateway had read it, for a benchmark timing what it caused.
    pub at: Instant,
}

impl ReceivedRequest {
    /// Reads a whole request as a fake received it, stamped now.
    pub(crate) async fn read(req: Request<Incoming>) -> ReceivedRequest {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
        let headers = parts.headers.iter().map(|(name, value)| {
            (name.as_str().to_string(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        });
        ReceivedRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: headers.collect(),
            body,
            at: Instant::now(),
        }
    }

    /// The first value of a header (name in any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The decoded query parameters, in order.
    pub(crate) fn query_pairs(&self) -> Vec<(String, String)> {
        decode_pairs(self.query.as_deref().unwrap_or(""))
    }

    /// The decoded value of one query parameter.
    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs().into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The body as text (lossy).
    pub(crate) fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A message the gateway accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentSms {
    /// The number as received (`"+79991234567"`).
    pub number: String,
    /// The text as received.
    pub text: String,
}

#[derive(Default)]
struct State {
    received: Vec<ReceivedRequest>,
    sent: Vec<SentSms>,
    fault: Option<Fault>,
    next_faults: VecDeque<Fault>,
    replies: Vec<serde_json::Value>,
}

/// The running fake; stops accepting connections when dropped.
pub(crate) struct FakeGateway {
    addr: SocketAddr,
    key: String,
    state: Arc<Mutex<State>>,
    /// Bumped when the fault changes or the gateway stops: held answers go.
    release: Arc<watch::Sender<u64>>,
    _stop: oneshot::Sender<()>,
}

impl FakeGateway {
    /// Starts on `127.0.0.1:0`, expecting [`DEFAULT_KEY`].
    pub(crate) async fn start() -> FakeGateway {
        FakeGateway::start_with_key(DEFAULT_KEY).await
    }

    /// Starts on `127.0.0.1:0`, expecting `key` in the Authorization header.
    pub(crate) async fn start_with_key(key: &str) -> FakeGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        let release = Arc::new(watch::Sender::new(0));
        let (task_state, task_key) = (state.clone(), Arc::<str>::from(key));
        let task_release = release.clone();
        let handler = move |req| {
            let (state, key) = (task_state.clone(), task_key.clone());
            let released = task_release.subscribe();
            async move { handle(req, &state, &key, released).await }
        };
        let stop_release = release.clone();
        tokio::spawn(signage_watchdog::http::serve_with(listener, handler, async move {
            let _ = stopped.await;
            stop_release.send_modify(|n| *n += 1);
        }));
        FakeGateway { addr, key: key.to_string(), state, release, _stop: stop }
    }

    /// Base URL, `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key the gateway accepts.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Every request received so far, in order (including failed ones).
    pub(crate) fn received(&self) -> Vec<ReceivedRequest> {
        self.state.lock().unwrap().received.clone()
    }

    /// The messages the gateway accepted (and, being a gateway, sent).
    pub(crate) fn sent(&self) -> Vec<SentSms> {
        self.state.lock().unwrap().sent.clone()
    }

    /// Applies `fault` to every following request until set to `None`.
    pub(crate) fn set_fault(&self, fault: Option<Fault>) {
        self.state.lock().unwrap().fault = fault;
        self.release.send_modify(|n| *n += 1);
    }

    /// Applies `fault` to the next `n` requests only, before any fault set
    /// with [`FakeGateway::set_fault`].
    pub(crate) fn fail_next(&self, n: usize, fault: Fault) {
        self.state.lock().unwrap().next_faults.extend(std::iter::repeat_n(fault, n));
    }

    /// Adds an incoming SMS (a socket's answer) to what `GET /sms` lists.
    pub(crate) fn add_reply(&self, from: &str, message: &str, timestamp: &str) {
        self.state.lock().unwrap().replies.push(serde_json::json!({
            "from": from, "message": message, "timestamp": timestamp,
        }));
    }
}

/// `released` is subscribed before the request is read, so that a change of
/// fault while it is read still releases it.
async fn handle(
    req: Request<Incoming>,
    state: &Mutex<State>,
    key: &str,
    mut released: watch::Receiver<u64>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let received = ReceivedRequest::read(req).await;
    let fault = {
        let mut state = state.lock().unwrap();
        state.received.push(received.clone());
        state.next_faults.pop_front().or_else(|| state.fault.clone())
    };
    let hang = match fault {
        Some(Fault::ServerError) => {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error: modem busy\n".into())
        }
        Some(Fault::ErrorBody(message)) => return error(StatusCode::OK, &message),
        Some(Fault::Unauthorized) => return error(StatusCode::UNAUTHORIZED, "invalid key"),
        Some(Fault::Echo(part)) => {
            let quoted = match part {
                Echo::Query => received.query.clone().unwrap_or_default(),
                Echo::Body => received.body_text(),
                Echo::Header(name) => received.header(name).unwrap_or_default().to_string(),
            };
            return reply(StatusCode::BAD_REQUEST, format!("got {quoted}"));
        }
        Some(Fault::Hang) => true,
        None => false,
    };
    let response = route(&method, &received, state, key);
    if hang {
        let _ = released.changed().await;
    }
    response
}

fn route(
    method: &Method,
    req: &ReceivedRequest,
    state: &Mutex<State>,
    key: &str,
) -> Response<Full<Bytes>> {
    if req.header("authorization") != Some(key) {
        return error(StatusCode::UNAUTHORIZED, "invalid key");
    }
    match (method, req.path.as_str()) {
        (&Method::POST, "/send") => match number_and_text(req) {
            Some((number, text)) => {
                let mut state = state.lock().unwrap();
                state.sent.push(SentSms { number, text });
                let id = format!("msg-{}", state.sent.len());
                reply(StatusCode::OK, serde_json::json!({"status": "ok", "id": id}).to_string())
            }
            None => error(StatusCode::BAD_REQUEST, "number and text are required"),
        },
        (&Method::GET, "/sms") => {
            let replies = state.lock().unwrap().replies.clone();
            reply(StatusCode::OK, serde_json::json!({ "sms_messages": replies }).to_string())
        }
        (_, "/send" | "/sms") => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Number and text from the query, else from a form or JSON body.
fn number_and_text(req: &ReceivedRequest) -> Option<(String, String)> {
    let content_type = req.header("content-type").unwrap_or("");
    let pairs = if req.query.is_some() {
        req.query_pairs()
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        decode_pairs(&req.body_text())
    } else if content_type.starts_with("application/json") {
        let json: serde_json::Value = serde_json::from_slice(&req.body).ok()?;
        ["number", "text"]
            .iter()
            .filter_map(|k| Some((k.to_string(), json.get(*k)?.as_str()?.to_string())))
            .collect()
    } else {
        Vec::new()
    };
    let get = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    Some((get("number")?, get("text")?))
}

fn decode_pairs(encoded: &str) -> Vec<(String, String)> {
    let url =
        reqwest::Url::parse(&format!("http://fake.invalid/?{encoded}")).expect("query parses");
    url.query_pairs().map(|(n, v)| (n.into_owned(), v.into_owned())).collect()
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, serde_json::json!({"status": "error", "message": message}).to_string())
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let json = body.starts_with('{');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let content_type = if json { "application/json" } else { "text/plain; charset=utf-8" };
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
