//! A metrics server with test-sized [`Limits`], and a raw HTTP/1.1 client
//! that can hold a connection, send half a request, or tell a refused
//! connection from an answered one.

use std::sync::Arc;

use signage_watchdog::http::{Exposition, Health, Limits, Pages};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::wait::wait_until_async;
use super::wait::DEADLINE;

struct Fixed;

impl Pages for Fixed {
    fn title(&self) -> &str {
        "limits test"
    }
    fn exposition(&self) -> Arc<Exposition> {
        Arc::new(Exposition::new("up 1\n"))
    }
    fn health(&self) -> Health {
        Health::Healthy("fine".into())
    }
}

/// A running server; stops when dropped.
pub(crate) struct Server {
    pub(crate) addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts `signage_watchdog::http::serve_limited` on `127.0.0.1:0`.
pub(crate) async fn start(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(signage_watchdog::http::serve_limited(listener, Arc::new(Fixed), limits, async {
        let _ = stopped.await;
    }));
    Server { addr, _stop: stop }
}

/// The head of a `GET path` that keeps the connection open.
pub(crate) fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

/// Sends `GET path` on `stream` and reads one answer (head and
/// `Content-Length` body); `None` when the server closed the connection
/// instead of answering.
pub(crate) async fn get(stream: &mut TcpStream, path: &str) -> Option<String> {
    if stream.write_all(request(path).as_bytes()).await.is_err() {
        return None;
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned)
                })
                .map_or(0, |v| v.trim().parse().unwrap());
            if seen.len() >= end + 4 + length {
                return Some(String::from_utf8_lossy(&seen[..end + 4 + length]).to_string());
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads until the server closes `stream` (end of file or reset), within
/// [`DEADLINE`]; returns what it sent before closing. Panics when the
/// connection is still open at the deadline.
pub(crate) async fn closed_by_server(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(DEADLINE, read_all).await.is_err() {
        panic!("{what}: the server still holds the connection after {DEADLINE:?}");
    }
    seen
}

/// Opens new connections and asks for `/metrics` until one is answered,
/// within [`DEADLINE`] (a refused connection is closed at once, so each try
/// ends by itself). Panics at the deadline.
pub(crate) async fn metrics_answered(addr: std::net::SocketAddr) -> String {
    wait_until_async("an answer to /metrics", || async move {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        tokio::time::timeout(DEADLINE, get(&mut stream, "/metrics")).await.ok().flatten()
    })
    .await
}
