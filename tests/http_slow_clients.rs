//! `/metrics` keeps answering while 400 slow clients hold connections to
//! the HTTP listener, in a process whose file-descriptor limit could not
//! hold a server-side socket for each of them.
//!
//! Scaled down from the daemons' numbers (a cap of 512 under systemd's
//! 1,024-descriptor soft limit): here the cap is 32 and the limit leaves
//! room for the 400 client sockets, the cap and a few more, not for 400
//! server-side sockets. Without a cap the server runs out of descriptors
//! and nothing answers; with it, the excess is refused at once and the
//! slow clients it took are closed after the (test-small) header timeout.
//! This test changes the process's descriptor limit, so it lives alone in
//! its own test binary.

use std::time::Duration;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use signage_watchdog::http::Limits;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod support;

use support::limited_server::{metrics_answered, start};

const SLOW_CLIENTS: usize = 400;
const CAP: usize = 32;

#[tokio::test]
async fn metrics_answers_while_400_slow_clients_hold_connections() {
    let server = start(Limits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: CAP,
    })
    .await;
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let limit = (open + SLOW_CLIENTS + CAP + 48) as u64;
    let old = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: Some(limit), maximum: old.maximum }).unwrap();

    let mut slow = Vec::new();
    for n in 0..SLOW_CLIENTS {
        let mut stream = TcpStream::connect(server.addr)
            .await
            .unwrap_or_else(|err| panic!("slow client {n} could not connect: {err}"));
        // Half a request head, never finished; a refused client may see
        // its write fail, which is fine.
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\nX-Pad: ").await;
        slow.push(stream);
    }

    let answer = metrics_answered(server.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("up 1\n"), "{answer}");
    assert_eq!(slow.len(), SLOW_CLIENTS, "the slow clients still hold their sockets");
}
