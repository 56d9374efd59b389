//! A webhook receiver, as a real HTTP/1.1 server on loopback, so that the
//! jobctl engine's webhooks are tested over real sockets.
//!
//! It records every request it reads in full ([`FakeWebhook::received`])
//! and answers `200 OK`, unless a fault is switched on: HTTP 500, a hang
//! (the request is read, no answer comes until the fault changes or the
//! receiver stops: the client cannot know whether it was taken), or a close
//! (the request is read, then the connection is closed without an answer).
//! It is written over raw TCP so that the close is a real one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Something going wrong at the receiver, for every request from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WebhookFault {
    /// HTTP 500.
    ServerError,
    /// No answer until the fault changes or the receiver stops.
    Hang,
    /// The connection is closed without an answer.
    Close,
}

/// One request as the receiver read it.
#[derive(Debug, Clone)]
pub(crate) struct WebhookRequest {
    /// `POST /path HTTP/1.1`.
    pub request_line: String,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
    /// When the receiver had read it, for a benchmark timing what it caused.
    pub at: Instant,
}

impl WebhookRequest {
    /// The first value of a header (name in any case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the signature is the HMAC-SHA256 under `key` of the
    /// timestamp header, `.`, and the body, as the README tells a receiver
    /// to check it (compared in constant time by `verify_slice`).
    pub(crate) fn signed_with(&self, key: &str) -> bool {
        let (Some(timestamp), Some(signature)) = (
            self.header("x-signage-watchdog-timestamp"),
            self.header("x-signage-watchdog-signature"),
        ) else {
            return false;
        };
        let Some(hex) = signature.strip_prefix("sha256=") else { return false };
        let Some(expected) = decode_hex(hex) else { return false };
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(self.body.as_bytes());
        mac.verify_slice(&expected).is_ok()
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

#[derive(Default)]
struct State {
    received: Vec<WebhookRequest>,
    fault: Option<WebhookFault>,
}

/// The running receiver; stops when dropped.
pub(crate) struct FakeWebhook {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Bumped when the fault changes: hanging requests are let go.
    release: Arc<watch::Sender<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWebhook {
    fn drop(&mut self) {
        self.task.abort();
        self.release.send_modify(|n| *n += 1);
    }
}

impl FakeWebhook {
    /// Starts on `127.0.0.1:0`.
    pub(crate) async fn start() -> FakeWebhook {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let release = Arc::new(watch::Sender::new(0));
        let (task_state, task_release) = (state.clone(), release.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, released) = (task_state.clone(), task_release.subscribe());
                tokio::spawn(handle(stream, state, released));
            }
        });
        FakeWebhook { addr, state, release, task }
    }

    /// The URL to post to: `http://127.0.0.1:<port>/hooks/watchdog`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/hooks/watchdog", self.addr)
    }

    /// Every request read so far, in order (faulted ones included).
    pub(crate) fn received(&self) -> Vec<WebhookRequest> {
        self.state.lock().unwrap().received.clone()
    }

    /// Applies `fault` to every following request until set to `None`;
    /// requests hanging until now are let go (their connection closed).
    pub(crate) fn set_fault(&self, fault: Option<WebhookFault>) {
        self.state.lock().unwrap().fault = fault;
        self.release.send_modify(|n| *n += 1);
    }
}

async fn handle(
    mut stream: TcpStream,
    state: Arc<Mutex<State>>,
    mut released: watch::Receiver<u64>,
) {
    let Some(request) = read_request(&mut stream).await else { return };
    let fault = {
        let mut state = state.lock().unwrap();
        state.received.push(request);
        state.fault
    };
    let status = match fault {
        None => "200 OK",
        Some(WebhookFault::ServerError) => "500 Internal Server Error",
        Some(WebhookFault::Close) => return,
        Some(WebhookFault::Hang) => {
            let _ = released.changed().await;
            return;
        }
    };
    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads one request: head up to the blank line, then `content-length`
/// bytes of body.
async fn read_request(stream: &mut TcpStream) -> Option<WebhookRequest> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(WebhookRequest {
        request_line,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    })
}
