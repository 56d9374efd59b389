//! The daemons under systemd's notification protocol, as `Type=notify`
//! with `WatchdogSec=` runs them: the test is systemd, a Unix datagram
//! socket named by `NOTIFY_SOCKET`, and reads what each daemon says: READY
//! with a status line once it works, WATCHDOG pings from the loop doing the
//! work (which stop when that loop stalls), RELOADING around a SIGHUP and
//! STOPPING on SIGTERM.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use support::fake_gateway::{FakeGateway, DEFAULT_KEY};
use support::rules_file::{self, POWER_CYCLE_ACTION};
use support::wait::DEADLINE;
use tokio::net::UnixDatagram;

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// systemd's end of the protocol: the socket the daemon writes to.
struct FakeSystemd {
    dir: tempfile::TempDir,
    socket: UnixDatagram,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let socket = UnixDatagram::bind(dir.path().join("notify")).unwrap();
        FakeSystemd { dir, socket }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("notify")
    }

    /// The next message, if one comes within `wait`.
    async fn within(&self, wait: Duration) -> Option<String> {
        let mut buffer = vec![0; 4096];
        let n = tokio::time::timeout(wait, self.socket.recv(&mut buffer)).await.ok()?.unwrap();
        Some(String::from_utf8(buffer[..n].to_vec()).unwrap())
    }

    /// The next message that starts with `prefix`, skipping others.
    async fn next(&self, prefix: &str) -> String {
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                let message = self.within(DEADLINE).await?;
                if message.starts_with(prefix) {
                    return Some(message);
                }
            }
        });
        match found.await {
            Ok(Some(message)) => message,
            _ => panic!("no message starting with {prefix:?} within {DEADLINE:?}"),
        }
    }

    /// Waits until no message comes for `gap`: the daemon stopped pinging.
    async fn silent_for(&self, gap: Duration) {
        let silence =
            tokio::time::timeout(DEADLINE, async { while self.within(gap).await.is_some() {} });
        silence.await.unwrap_or_else(|_| panic!("the daemon never went {gap:?} without a word"));
    }
}

/// A Prometheus answering every instant query with no series, or, while
/// `hang` is set, never answering.
async fn fake_prometheus(hang: Arc<AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handler = move |_request| {
        let hang = hang.clone();
        async move {
            if hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
            let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
    };
    tokio::spawn(signage_watchdog::http::serve_with(listener, handler, std::future::pending()));
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobctl_is_ready_pings_from_its_cycle_loop_and_says_when_it_reloads_and_stops() {
    let hang = Arc::new(AtomicBool::new(false));
    let prometheus = fake_prometheus(hang.clone()).await;
    let gateway = FakeGateway::start().await;
    let dir = tempfile::tempdir().unwrap();
    support::write_secret(&dir.path().join("sms.key"), &format!("{DEFAULT_KEY}\n"));
    // A cycle every 5 s whose query may take 5 s: a hung Prometheus holds
    // the cycle, and the loop, that long.
    let rules = rules_file::head(&prometheus, "5s", "5s", "journal.db")
        + &rules_file::gateway_sms(&gateway.url(), "")
        + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785")
        + &rules_file::offline_job("reboot frozen", "12", Some("1m"), POWER_CYCLE_ACTION);
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    let systemd = FakeSystemd::new();
    let mut command = support::process::command(JOBCTL, dir.path());
    command
        .args(["--config", "rules.toml", "run"])
        .env("JOURNAL_STREAM", "8:1")
        .env("NOTIFY_SOCKET", systemd.path())
        .env("WATCHDOG_USEC", "400000");
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let mut jobctl = command.spawn().unwrap();

    let ready = systemd.next("READY=1").await;
    assert!(ready.starts_with("READY=1\nSTATUS=1 job, "), "{ready:?}");
    assert!(ready.ends_with(", 0 firing"), "{ready:?}");
    // Pinged every 200 ms, half the watchdog's period, with the status
    // (the first ping may come before the first cycle has ended).
    for _ in 0..3 {
        let ping = systemd.next("WATCHDOG=1").await;
        assert!(ping.starts_with("WATCHDOG=1\nSTATUS=1 job, "), "{ping:?}");
    }
    systemd.next("WATCHDOG=1\nSTATUS=1 job, last cycle ").await;

    let pid = jobctl.id().unwrap();
    support::process::signal(pid, "HUP");
    systemd.next("RELOADING=1").await;
    systemd.next("READY=1\nSTATUS=1 job, ").await;

    // The next cycle hangs on Prometheus for up to 5 s: no pings meanwhile.
    hang.store(true, Ordering::SeqCst);
    systemd.silent_for(Duration::from_secs(2)).await;
    // Once the query times out, the loop goes on, and so do the pings.
    hang.store(false, Ordering::SeqCst);
    systemd.next("WATCHDOG=1").await;

    support::process::signal(pid, "TERM");
    systemd.next("STOPPING=1").await;
    let status = tokio::time::timeout(DEADLINE, jobctl.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}
