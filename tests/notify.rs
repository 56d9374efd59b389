//! The daemons under systemd's notification protocol, as `Type=notify`
//! with `WatchdogSec=` runs them: the test is systemd, a Unix datagram
//! socket named by `NOTIFY_SOCKET`, and reads what each daemon says: READY
//! with a status line once it works, WATCHDOG pings from the loop doing the
//! work (which stop when that loop stalls), RELOADING around a SIGHUP and
//! STOPPING on SIGTERM.
//!
//! The exporter polls the simulated AddReality API (`support::addreality`)
//! and pings only while every platform's poll loop makes progress: a slow
//! API that times out and is retried keeps the pings going; a poll stuck
//! beyond the client's limits (here its cache write, blocked by a lock the
//! test holds) stops them.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use signage_watchdog::addreality::simulator::Fault;
use support::addreality::{device, SimulatedApi};
use support::fake_gateway::{FakeGateway, DEFAULT_KEY};
use support::rules_file::{self, POWER_CYCLE_ACTION};
use support::wait::{wait_until_async, DEADLINE};
use tokio::io::AsyncBufReadExt;
use tokio::net::UnixDatagram;

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");
const EXPORTER: &str = env!("CARGO_BIN_EXE_addreality-exporter");
const TOKEN: &str = "notify-t0ken-81c2";

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

/// The exporter binary under `systemd`, its stderr collected as it comes
/// (read to the end, so that logging never blocks it).
struct Exporter {
    child: tokio::process::Child,
    log: Arc<std::sync::Mutex<String>>,
}

impl Exporter {
    /// Starts `--config config.toml` in `dir` with a watchdog of 400 ms
    /// (pings every 200 ms).
    fn start(dir: &std::path::Path, systemd: &FakeSystemd) -> Exporter {
        Exporter::start_with(dir, systemd, &["--config", "config.toml"])
    }

    /// Starts the exporter with `args` in `dir`, under `systemd`.
    fn start_with(dir: &std::path::Path, systemd: &FakeSystemd, args: &[&str]) -> Exporter {
        let mut command = support::process::command(EXPORTER, dir);
        command
            .args(args)
            .env("JOURNAL_STREAM", "8:1")
            .env("NOTIFY_SOCKET", systemd.path())
            .env("WATCHDOG_USEC", "400000");
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = collected.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Exporter { child, log }
    }

    /// The first log line containing `pattern`, once it is written.
    async fn log_line(&self, pattern: &str) -> String {
        wait_until_async(&format!("a log line with {pattern:?}"), || {
            let log = self.log.lock().unwrap();
            let line = log.lines().find(|line| line.contains(pattern)).map(str::to_string);
            async move { line }
        })
        .await
    }

    /// How many log lines so far contain `pattern`.
    fn log_count(&self, pattern: &str) -> usize {
        self.log.lock().unwrap().lines().filter(|line| line.contains(pattern)).count()
    }

    /// The address from the "listening on http://ADDR/metrics" line.
    async fn listening(&self) -> std::net::SocketAddr {
        let prefix = "listening on http://";
        let line = self.log_line(prefix).await;
        let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
        rest[..rest.find('/').unwrap()].parse().unwrap()
    }

    fn signal(&self, name: &str) {
        support::process::signal(self.child.id().unwrap(), name);
    }

    /// SIGTERM: STOPPING=1, then a clean exit.
    async fn stop(mut self, systemd: &FakeSystemd) {
        self.signal("TERM");
        systemd.next("STOPPING=1").await;
        let status = tokio::time::timeout(DEADLINE, self.child.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(0), "{}", self.log.lock().unwrap());
    }
}

/// `config.toml` in `dir` for the API at `url`, with the token in the file
/// `token` and the cache in `cache.db`.
fn exporter_config(dir: &std::path::Path, url: &str, poll_interval: &str, request_timeout: &str) {
    let text = format!(
        "listen = \"127.0.0.1:0\"\napi_url = \"{url}\"\npoll_interval = \"{poll_interval}\"\n\
         request_timeout = \"{request_timeout}\"\ncache = \"cache.db\"\n\n\
         [[platforms]]\nid = 12\ntoken_file = \"token\"\n"
    );
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

fn three_devices() -> Vec<serde_json::Value> {
    vec![device(1, "Lobby", true), device(2, "Cafe", false), device(3, "Hall", true)]
}

/// The value of `series` on the exporter's /metrics.
async fn metric(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    support::exposition::value(&text, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_is_ready_pings_and_a_sighup_puts_a_rotated_token_in_force() {
    let api = SimulatedApi::start(TOKEN, three_devices()).await;
    let dir = tempfile::tempdir().unwrap();
    exporter_config(dir.path(), &api.url, "200ms", "2s");
    // An old token, which the API refuses.
    support::write_secret(&dir.path().join("token"), "revoked-t0ken\n");
    let systemd = FakeSystemd::new();
    let exporter = Exporter::start(dir.path(), &systemd);

    // Ready once listening with the (empty) cache loaded, before any poll.
    // (The first poll may already have been refused by then.)
    let ready = systemd.next("READY=1").await;
    assert!(ready.starts_with("READY=1\nSTATUS=0 devices, "), "{ready:?}");
    let refused = "STATUS=0 devices, no successful poll yet for platform 12; last poll failed for platform 12";
    systemd.next(&format!("WATCHDOG=1\n{refused}")).await;

    // The token is rotated on disk and SIGHUP puts it in force.
    support::write_secret(&dir.path().join("token"), &format!("{TOKEN}\n"));
    exporter.signal("HUP");
    let reloading = systemd.next("RELOADING=1").await;
    let usec = reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").expect(&reloading);
    assert!(usec.parse::<u64>().is_ok_and(|usec| usec > 0), "{reloading}");
    systemd.next("READY=1\nSTATUS=0 devices").await;
    exporter.log_line("configuration reloaded: new token for platform 12").await;
    let polled = systemd.next("WATCHDOG=1\nSTATUS=3 devices, last poll ").await;
    assert!(polled.ends_with(" s ago"), "{polled:?}");
    let addr = exporter.listening().await;
    let successful = "addreality_exporter_config_last_reload_successful";
    assert_eq!(metric(addr, successful).await, Some(1.0));

    // A reload that cannot read a token keeps the running one, says so in
    // the log and the metric, and still ends in READY.
    std::fs::remove_file(dir.path().join("token")).unwrap();
    exporter.signal("HUP");
    systemd.next("RELOADING=1").await;
    systemd.next("READY=1\nSTATUS=3 devices, last poll ").await;
    let rejected = exporter.log_line("reload rejected: ").await;
    let missing = "config.toml:9:14: platform 12: cannot read secret file token: ";
    assert!(rejected.contains(missing), "{rejected}");
    exporter.log_line("reload rejected: the previous settings keep running").await;
    assert_eq!(metric(addr, successful).await, Some(0.0));
    let requests = api.simulator.request_count();
    wait_until_async("a poll with the token kept", || {
        let polled = api.simulator.request_count() > requests;
        let refused = api.simulator.requests().iter().rev().take(1).any(|r| !r.token_ok);
        async move { (polled && !refused).then_some(()) }
    })
    .await;

    exporter.stop(&systemd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_pings_through_a_slow_api_but_not_through_a_stalled_poll() {
    let api = SimulatedApi::start(TOKEN, three_devices()).await;
    let dir = tempfile::tempdir().unwrap();
    // Bound without progress: 200 ms + 4 × 100 ms + 3 waits of 1 s = 3.6 s.
    exporter_config(dir.path(), &api.url, "200ms", "100ms");
    support::write_secret(&dir.path().join("token"), &format!("{TOKEN}\n"));
    let systemd = FakeSystemd::new();
    let exporter = Exporter::start(dir.path(), &systemd);
    systemd.next("READY=1").await;
    systemd.next("WATCHDOG=1\nSTATUS=3 devices, last poll ").await;

    // An API that never answers: each request times out and is retried,
    // polls fail, and every message is still a ping.
    api.simulator.set_fault(Some(Fault::Hang));
    let failed = "platform 12: poll failed: ";
    let failed_before = exporter.log_count(failed);
    let until = std::time::Instant::now() + DEADLINE;
    let mut pings = 0;
    while exporter.log_count(failed) < failed_before + 2 {
        assert!(std::time::Instant::now() < until, "no two failed polls within {DEADLINE:?}");
        let message = systemd.next("").await;
        assert!(message.starts_with("WATCHDOG=1\nSTATUS=3 devices, "), "{message:?}");
        pings += 1;
    }
    assert!(pings >= 2, "only {pings} pings while two polls timed out");
    api.simulator.set_fault(None);

    // A poll whose cache write waits on a lock (5 s) goes past the bound:
    // the status says so and carries no ping.
    let mut lock = rusqlite::Connection::open(dir.path().join("cache.db")).unwrap();
    let held = lock.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    // Pings carry the status; a status alone is sent only while stuck.
    let stuck = systemd.next("STATUS=").await;
    assert!(!stuck.contains("WATCHDOG=1"), "{stuck:?}");
    assert!(stuck.contains("platform 12 stuck for "), "{stuck:?}");
    assert!(stuck.ends_with(" (limit 3s 600ms): watchdog pings stopped"), "{stuck:?}");
    exporter.log_line("platform 12: its poll loop has shown no progress for ").await;

    // The lock released, the loop goes on and so do the pings.
    held.rollback().unwrap();
    exporter.log_line("platform 12: poll loop going again; watchdog pings resumed").await;
    systemd.next("WATCHDOG=1\nSTATUS=3 devices, last poll ").await;

    exporter.stop(&systemd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_ready_pings_and_answers_a_sighup_as_the_daemon_does() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = FakeSystemd::new();
    let demo = Exporter::start_with(dir.path(), &systemd, &["--demo", "--listen", "127.0.0.1:0"]);
    // Ready with an empty cache, usually before the first poll has ended.
    let ready = systemd.next("READY=1").await;
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready:?}");
    assert!(ready.contains(" devices, "), "{ready:?}");
    systemd.next("WATCHDOG=1\nSTATUS=273 devices, last poll ").await;
    demo.signal("HUP");
    systemd.next("RELOADING=1\nMONOTONIC_USEC=").await;
    systemd.next("READY=1\nSTATUS=273 devices, last poll ").await;
    demo.log_line("the demo has no configuration to reload").await;
    demo.stop(&systemd).await;
}
