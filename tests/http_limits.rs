//! The HTTP listener both daemons run keeps its bounds: a request head must
//! arrive within the header timeout, a quiet keep-alive connection is
//! closed, and past the connection cap new connections are refused while
//! `/metrics` answers again as soon as a slot frees. Real sockets on
//! loopback, with test-sized limits; every wait has a generous deadline and
//! nothing asserts speed.

use std::time::Duration;

use signage_watchdog::http::Limits;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod support;

use support::limited_server::{closed_by_server, get, metrics_answered, start};

const LONG: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn idle_and_half_sent_requests_are_closed_after_the_header_timeout() {
    let server =
        start(Limits { header_read_timeout: SHORT, idle_timeout: LONG, max_connections: 512 })
            .await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut half_sent = TcpStream::connect(server.addr).await.unwrap();
    half_sent.write_all(b"GET /metrics HTTP/1.1\r\nHost: te").await.unwrap();

    let said = closed_by_server(&mut silent, "a connection that sends nothing").await;
    assert!(!String::from_utf8_lossy(&said).contains("200 OK"), "{said:?}");
    let said = closed_by_server(&mut half_sent, "a half-sent request head").await;
    assert!(!String::from_utf8_lossy(&said).contains("200 OK"), "{said:?}");
}

#[tokio::test]
async fn a_quiet_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server =
        start(Limits { header_read_timeout: LONG, idle_timeout: SHORT, max_connections: 512 })
            .await;

    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let answer = get(&mut stream, "/healthz").await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let said = closed_by_server(&mut stream, "a keep-alive connection left quiet").await;
    assert!(said.is_empty(), "{said:?}");
}

#[tokio::test]
async fn past_the_cap_connections_are_refused_and_metrics_answers_once_a_slot_frees() {
    let cap = 4;
    let server =
        start(Limits { header_read_timeout: LONG, idle_timeout: LONG, max_connections: cap }).await;

    // Each holder is answered once, so the server has taken it, then holds
    // its keep-alive connection.
    let mut holders = Vec::new();
    for _ in 0..cap {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert!(
            get(&mut stream, "/healthz").await.is_some(),
            "a connection under the cap is answered"
        );
        holders.push(stream);
    }

    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        get(&mut extra, "/metrics").await,
        None,
        "a connection past the cap is closed unanswered"
    );
    assert!(closed_by_server(&mut extra, "a refused connection").await.is_empty());

    // The holders are still served on their own connections.
    let answer = get(&mut holders[0], "/metrics").await.expect("a held connection keeps working");
    assert!(answer.ends_with("up 1\n"), "{answer}");

    drop(holders.pop());
    let answer = metrics_answered(server.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("up 1\n"), "{answer}");
}
