//! The exporter end to end against the AddReality simulator on loopback:
//! what it logs, what `/metrics` says, and that the last good data survives
//! every fault the API can throw.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use signage_watchdog::addreality::simulator::{Fault, Simulator};
use signage_watchdog::exporter::cache::Cache;
use signage_watchdog::exporter::config::{ExporterConfig, PlatformConfig};
use signage_watchdog::exporter::Exporter;
use signage_watchdog::http::{Health, Pages};
use signage_watchdog::secret::{Secret, SecretSource};
use support::addreality::{device, SimulatedApi};
use support::exposition::{count, value};
use support::logs::Logs;
use tokio::net::TcpListener;

mod support;

const TOKEN: &str = "t0ken-for-tests";

/// The simulated API serving `devices` on this test's runtime.
async fn api(devices: Vec<Value>) -> SimulatedApi {
    SimulatedApi::start(TOKEN, devices).await
}

fn config(url: &str, cache: &Path, platforms: &[&str]) -> ExporterConfig {
    ExporterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_url: url.to_string(),
        poll_interval: Duration::from_secs(1),
        request_timeout: Duration::from_millis(300),
        cache: cache.to_path_buf(),
        page_size: 300,
        max_page_bytes: 64 * 1024 * 1024,
        forget_after: Duration::from_secs(3600),
        platforms: platforms
            .iter()
            .map(|id| PlatformConfig {
                id: id.to_string(),
                name: None,
                token: SecretSource::Env("unused".into()),
                token_at: "test".into(),
            })
            .collect(),
        base_dir: ".".into(),
        web_config_file: None,
    }
}

async fn exporter(config: &ExporterConfig, tokens: &[&str]) -> Exporter {
    let platforms =
        config.platforms.iter().cloned().zip(tokens.iter().map(|t| Secret::new(*t))).collect();
    Exporter::start(config, platforms, Cache::open(&config.cache).unwrap()).await.unwrap()
}

fn metrics(exporter: &Exporter) -> String {
    String::from_utf8(exporter.state().exposition().plain().to_vec()).unwrap()
}

#[tokio::test]
async fn every_device_of_1200_over_4_pages_is_exported() {
    let api = api(Simulator::demo_fleet(1200, 7)).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter(&config(&api.url, &dir.path().join("c.db"), &["12"]), &[TOKEN]).await;
    assert!(exporter.poll_all_once().await.is_empty());
    let text = metrics(&exporter);
    assert_eq!(count(&text, "addreality_device_online"), 1200);
    assert_eq!(count(&text, "addreality_device_info"), 1200);
    assert_eq!(value(&text, "addreality_platform_devices{platform_id=\"12\"}"), Some(1200.0));
    assert_eq!(value(&text, "addreality_requests_total{platform_id=\"12\"}"), Some(4.0));
    assert_eq!(value(&text, "addreality_platform_up{platform_id=\"12\"}"), Some(1.0));
    let offsets: Vec<_> = api.simulator.requests().iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [Some(0), Some(300), Some(600), Some(900)]);
}

#[tokio::test]
async fn every_fault_keeps_the_last_good_data_and_says_why() {
    let (logs, _guard) = Logs::capture();
    let api = api((1..=5).map(|id| device(id, &format!("player {id}"), true)).collect()).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter(&config(&api.url, &dir.path().join("c.db"), &["12"]), &[TOKEN]).await;
    assert!(exporter.poll_all_once().await.is_empty());
    logs.take();

    let cases: [(Fault, &str, &str); 6] = [
        (Fault::Unauthorized, "auth", "HTTP 401"),
        (Fault::TooManyRequests { retry_after_secs: 1 }, "status_429", "HTTP 429"),
        (Fault::ServerError, "status_5xx", "HTTP 500"),
        (Fault::HtmlErrorPage, "bad_response", "not valid JSON"),
        (Fault::TruncatedJson, "bad_response", "not valid JSON"),
        (Fault::Hang, "timeout", "did not answer"),
    ];
    for (fault, reason, said) in cases {
        api.simulator.set_fault(Some(fault.clone()));
        assert_eq!(exporter.poll_all_once().await, ["12"], "{fault:?}");
        let text = metrics(&exporter);
        let log = logs.take();
        assert!(log.contains("platform 12: poll failed:"), "{fault:?}: {log}");
        assert!(log.contains(said), "{fault:?} should say {said:?}: {log}");
        assert!(log.contains("serving 5 cached devices"), "{fault:?}: {log}");
        assert!(!log.contains(TOKEN) && !text.contains(TOKEN), "token leaked");
        assert_eq!(
            value(&text, "addreality_platform_up{platform_id=\"12\"}"),
            Some(0.0),
            "{fault:?}"
        );
        assert_eq!(count(&text, "addreality_device_online"), 5, "{fault:?}: last good data kept");
        let failures =
            format!("addreality_request_failures_total{{platform_id=\"12\",reason=\"{reason}\"}}");
        assert!(
            value(&text, &failures).unwrap_or(0.0) >= 1.0,
            "{fault:?}: {failures} missing in\n{text}"
        );
        assert!(
            matches!(exporter.state().health(), Health::Healthy(ref why) if why.contains("serving 5 cached devices"))
        );
    }
    let text = metrics(&exporter);
    assert_eq!(
        value(&text, "addreality_request_failures_total{platform_id=\"12\",reason=\"auth\"}"),
        Some(1.0),
        "401 is never retried"
    );

    api.simulator.set_fault(None);
    assert!(exporter.poll_all_once().await.is_empty());
    assert!(logs.take().contains("platform 12: API answering again; 5 devices"));
    assert_eq!(value(&metrics(&exporter), "addreality_platform_up{platform_id=\"12\"}"), Some(1.0));
}

#[tokio::test]
async fn a_page_over_max_page_bytes_fails_the_poll_and_keeps_the_cache() {
    let (logs, _guard) = Logs::capture();
    let api = api((1..=5).map(|id| device(id, &format!("player {id}"), true)).collect()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&api.url, &dir.path().join("c.db"), &["12"]);
    config.max_page_bytes = 64 * 1024;
    let exporter = exporter(&config, &[TOKEN]).await;
    assert!(exporter.poll_all_once().await.is_empty(), "a normal page fits");
    logs.take();

    // A valid page, only too long: 16 times the cap.
    api.simulator.set_fault(Some(Fault::OversizedPage { bytes: 1024 * 1024 }));
    let before = api.simulator.request_count();
    assert_eq!(exporter.poll_all_once().await, ["12"]);
    assert_eq!(api.simulator.request_count() - before, 1, "not retried");
    let log = logs.take();
    assert!(
        log.contains(&format!(
            "platform 12: poll failed: {} sent a device list page for platform 12 longer than \
             max_page_bytes (65536 bytes; it announced ",
            api.url
        )),
        "{log}"
    );
    assert!(log.contains("serving 5 cached devices"), "{log}");
    let text = metrics(&exporter);
    assert_eq!(
        value(
            &text,
            "addreality_request_failures_total{platform_id=\"12\",reason=\"page_too_large\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "addreality_polls_total{platform_id=\"12\",result=\"failure\"}"),
        Some(1.0)
    );
    assert_eq!(value(&text, "addreality_platform_up{platform_id=\"12\"}"), Some(0.0));
    assert_eq!(count(&text, "addreality_device_online"), 5, "the cached data is served");
    match exporter.state().health() {
        Health::Healthy(why) => {
            assert!(why.contains("serving 5 cached devices"), "{why}");
            assert!(why.contains("longer than max_page_bytes (65536 bytes"), "{why}");
        }
        unhealthy => panic!("expected healthy on cached data, got {unhealthy:?}"),
    }
    // The cache on disk still holds the last good poll.
    drop(exporter);
    let cached = Cache::open(&config.cache).unwrap().load().unwrap();
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].devices.len(), 5);
}

/// A server on loopback that answers every request with 200 and a chunked
/// body without a `Content-Length` that never ends: 8 MiB, then nothing
/// until the client hangs up (a client without a cap reads it all and then
/// times out). Returns its URL.
async fn endless_page_server() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Simulator::device_list_url(listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request is small; its first read is enough here.
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192));
                let _ = socket.write_all(b"6\r\n{\"a\":\"\r\n").await;
                for _ in 0..1024 {
                    if socket.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                while socket.read(&mut request).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    url
}

#[tokio::test]
async fn an_endless_page_is_read_only_up_to_max_page_bytes() {
    let (logs, _guard) = Logs::capture();
    let url = endless_page_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&url, &dir.path().join("c.db"), &["12"]);
    config.max_page_bytes = 64 * 1024;
    // Only the cap, not the timeout, can make this poll fail as asked.
    config.request_timeout = Duration::from_secs(10);
    let exporter = exporter(&config, &[TOKEN]).await;
    assert_eq!(exporter.poll_all_once().await, ["12"]);
    let log = logs.take();
    assert!(
        log.contains(
            "longer than max_page_bytes (65536 bytes) and it was not read further; lower page_size"
        ),
        "no Content-Length, so the cap is found while reading: {log}"
    );
    let text = metrics(&exporter);
    assert_eq!(
        value(
            &text,
            "addreality_request_failures_total{platform_id=\"12\",reason=\"page_too_large\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn odd_devices_are_skipped_and_awkward_names_escaped() {
    let (logs, _guard) = Logs::capture();
    let api = api(vec![
        device(1, "Say \"hi\"\\ back\nnow", true),
        device(2, "Арзамас Лесная 1", false),
        json!({"id": 3, "name": null, "connection_state": null, "player_status": null, "last_online": null}),
        json!({"name": "no id at all"}),
        json!("not even an object"),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter(&config(&api.url, &dir.path().join("c.db"), &["12"]), &[TOKEN]).await;
    assert!(exporter.poll_all_once().await.is_empty());
    let text = metrics(&exporter);
    assert!(text.contains(
        "addreality_device_online{platform_id=\"12\",device_id=\"1\",name=\"Say \\\"hi\\\"\\\\ back\\nnow\"} 1\n"
    ), "{text}");
    assert!(text.contains("addreality_device_online{platform_id=\"12\",device_id=\"2\",name=\"Арзамас Лесная 1\"} 0\n"));
    assert!(
        text.contains("addreality_device_online{platform_id=\"12\",device_id=\"3\",name=\"\"} 0\n")
    );
    assert!(!text.contains(
        "addreality_device_last_online_timestamp_seconds{platform_id=\"12\",device_id=\"3\""
    ));
    assert_eq!(value(&text, "addreality_devices_skipped_total{platform_id=\"12\"}"), Some(2.0));
    let log = logs.take();
    assert!(log.contains("platform 12: skipped 2 unreadable device entries"), "{log}");
}

#[tokio::test]
async fn an_api_that_ignores_offset_is_reported_and_forgets_nothing() {
    let (logs, _guard) = Logs::capture();
    let api = api(Simulator::demo_fleet(600, 3)).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter(&config(&api.url, &dir.path().join("c.db"), &["12"]), &[TOKEN]).await;
    api.simulator.set_fault(Some(Fault::IgnoreOffset));
    assert!(exporter.poll_all_once().await.is_empty(), "paging anomalies keep the data");
    let text = metrics(&exporter);
    assert_eq!(count(&text, "addreality_device_online"), 300);
    assert_eq!(
        value(
            &text,
            "addreality_paging_anomalies_total{kind=\"offset_ignored\",platform_id=\"12\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(api.simulator.request_count() <= 3, "no endless loop");
    assert!(logs.take().contains("forgetting none this time"));
}

#[tokio::test]
async fn a_restart_during_an_outage_serves_the_cache_at_once() {
    let api = api((1..=3).map(|id| device(id, "p", true)).collect()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&api.url, &dir.path().join("c.db"), &["12"]);
    {
        let first = exporter(&config, &[TOKEN]).await;
        assert!(first.poll_all_once().await.is_empty());
    }
    api.simulator.set_fault(Some(Fault::ServerError));
    let second = exporter(&config, &[TOKEN]).await;
    // Before any poll: the cached devices are already served.
    let text = metrics(&second);
    assert_eq!(count(&text, "addreality_device_online"), 3, "{text}");
    assert!(
        value::<f64>(
            &text,
            "addreality_platform_last_success_timestamp_seconds{platform_id=\"12\"}"
        )
        .unwrap()
            > 1e9
    );
    assert_eq!(second.poll_all_once().await, ["12"]);
    assert_eq!(count(&metrics(&second), "addreality_device_online"), 3);
    assert!(matches!(second.state().health(), Health::Healthy(_)));
}

#[tokio::test]
async fn absent_devices_stay_until_forget_after_then_go() {
    let (logs, _guard) = Logs::capture();
    let api = api((1..=3).map(|id| device(id, "p", true)).collect()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&api.url, &dir.path().join("c.db"), &["12"]);
    let keeping = exporter(&config, &[TOKEN]).await;
    assert!(keeping.poll_all_once().await.is_empty());
    api.simulator.set_devices((1..=2).map(|id| device(id, "p", true)).collect());
    assert!(keeping.poll_all_once().await.is_empty());
    let text = metrics(&keeping);
    assert_eq!(count(&text, "addreality_device_online"), 3, "kept for an hour");
    assert_eq!(value(&text, "addreality_platform_devices_missing{platform_id=\"12\"}"), Some(1.0));
    drop(keeping);

    // Zero: anything this poll does not list has been absent long enough.
    config.forget_after = Duration::ZERO;
    let forgetting = exporter(&config, &[TOKEN]).await;
    assert!(forgetting.poll_all_once().await.is_empty());
    let text = metrics(&forgetting);
    assert_eq!(count(&text, "addreality_device_online"), 2);
    assert!(!text.contains("device_id=\"3\""));
    assert_eq!(value(&text, "addreality_devices_forgotten_total{platform_id=\"12\"}"), Some(1.0));
    assert!(logs.take().contains("platform 12: forgot 1 devices"));
    let cached = Cache::open(&config.cache).unwrap().load().unwrap();
    assert_eq!(cached[0].devices.len(), 2, "gone from the cache too");
}

#[tokio::test]
async fn one_broken_platform_never_holds_back_another() {
    let api = api((1..=4).map(|id| device(id, "p", true)).collect()).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter =
        exporter(&config(&api.url, &dir.path().join("c.db"), &["12", "31"]), &[TOKEN, "revoked"])
            .await;
    assert_eq!(exporter.poll_all_once().await, ["31"]);
    let text = metrics(&exporter);
    assert_eq!(value(&text, "addreality_platform_up{platform_id=\"12\"}"), Some(1.0));
    assert_eq!(value(&text, "addreality_platform_up{platform_id=\"31\"}"), Some(0.0));
    assert_eq!(value(&text, "addreality_platform_devices{platform_id=\"12\"}"), Some(4.0));
    assert_eq!(value(&text, "addreality_platform_devices{platform_id=\"31\"}"), Some(0.0));
    match exporter.state().health() {
        Health::Unhealthy(why) => {
            assert!(why.starts_with("platform 31: no data to serve; last poll failed:"), "{why}");
            assert!(why.contains("401"), "{why}");
        }
        healthy => panic!("expected unhealthy, got {healthy:?}"),
    }
}

#[tokio::test]
async fn promtool_finds_nothing_to_complain_about() {
    if !support::installed(
        support::runs("promtool"),
        "promtool not found; install Debian's prometheus package",
    ) {
        return;
    }
    let mut devices = Simulator::demo_fleet(50, 9);
    devices.push(device(1, "q\"uote \\ back\nline Кириллица", false));
    let api = api(devices).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter =
        exporter(&config(&api.url, &dir.path().join("c.db"), &["12", "31"]), &[TOKEN, "bad"]).await;
    exporter.poll_all_once().await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(exporter.state().exposition().plain()).unwrap();
    let out = child.wait_with_output().unwrap();
    let findings =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics:\n{findings}"
    );
}

#[tokio::test]
async fn scrapes_are_served_over_http_plain_and_gzip() {
    let api = api((1..=3).map(|id| device(id, "p", true)).collect()).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter(&config(&api.url, &dir.path().join("c.db"), &["12"]), &[TOKEN]).await;
    exporter.poll_all_once().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(exporter.run(listener, async { stopped.await.unwrap_or(()) }));

    let client = reqwest::Client::new();
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    // The running pollers may have re-rendered since: compare content, not bytes.
    assert_eq!(count(&text, "addreality_device_online"), 3, "{text}");
    assert!(text
        .contains("addreality_device_online{platform_id=\"12\",device_id=\"1\",name=\"p\"} 1\n"));
    assert_eq!(value(&text, "addreality_platform_up{platform_id=\"12\"}"), Some(1.0));
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok: 1 platform(s) polled successfully\n");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// What Prometheus asks for by default: the same exposition, gzip-compressed.
#[tokio::test]
async fn a_gzip_scrape_is_the_plain_exposition_compressed_and_q0_refuses_it() {
    use std::io::Read;

    let api = api(Simulator::demo_fleet(300, 7)).await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = exporter(&config(&api.url, &dir.path().join("c.db"), &["12"]), &[TOKEN]).await;
    assert!(exporter.poll_all_once().await.is_empty());
    // No pollers run: the exposition stays the one rendered by that poll.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pages: std::sync::Arc<dyn Pages> = exporter.state();
    let server = tokio::spawn(signage_watchdog::http::serve(listener, pages, async {
        stopped.await.unwrap_or(());
    }));
    let client = reqwest::Client::new();
    let scrape = |accept: Option<&'static str>| {
        let mut request = client.get(format!("{base}/metrics"));
        if let Some(accept) = accept {
            request = request.header("Accept-Encoding", accept);
        }
        request.send()
    };

    let plain = scrape(None).await.unwrap();
    assert_eq!(plain.headers().get("content-encoding"), None);
    let plain = plain.bytes().await.unwrap();
    assert_eq!(count(std::str::from_utf8(&plain).unwrap(), "addreality_device_online"), 300);

    // Prometheus's own header.
    let gzip = scrape(Some("gzip")).await.unwrap();
    assert_eq!(gzip.headers()["content-encoding"], "gzip");
    assert_eq!(gzip.headers()["vary"], "Accept-Encoding");
    let compressed = gzip.bytes().await.unwrap();
    assert!(compressed.len() * 4 < plain.len(), "{} of {} bytes", compressed.len(), plain.len());
    let mut decompressed = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut decompressed).unwrap();
    assert!(decompressed == plain, "the gzip body is not the plain body compressed");

    for refused in ["gzip;q=0", "identity, gzip;q=0", "*;q=0, identity"] {
        let answer = scrape(Some(refused)).await.unwrap();
        assert_eq!(answer.headers().get("content-encoding"), None, "{refused}");
        assert!(answer.bytes().await.unwrap() == plain, "{refused}");
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
