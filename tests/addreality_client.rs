//! The AddReality client against the simulator, over real HTTP on loopback.
//!
//! Every test starts its own simulator on `127.0.0.1:0`; retries use
//! millisecond delays so the whole file runs in a couple of seconds (one test
//! honours a one-second `Retry-After`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use signage_watchdog::addreality::client::{
    Client, ClientConfig, FetchError, FetchReport, Fleet, PagingAnomaly, RetryPolicy,
};
use signage_watchdog::addreality::simulator::{Fault, Simulator, DEVICE_LIST_PATH};
use signage_watchdog::error::with_causes;
use signage_watchdog::secret::Secret;
use support::addreality::{device, SimulatedApi};

mod support;

const TOKEN: &str = "tok-3f9a-SECRET";

/// The simulated API serving `devices` on this test's runtime.
async fn start(devices: Vec<Value>) -> SimulatedApi {
    SimulatedApi::start(TOKEN, devices).await
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

fn config(url: &str) -> ClientConfig {
    ClientConfig {
        url: url.to_string(),
        page_size: 300,
        request_timeout: Duration::from_secs(5),
        max_page_bytes: 64 * 1024 * 1024,
        retry: fast_retry(4),
    }
}

fn client(url: &str) -> Client {
    Client::new(config(url)).unwrap()
}

/// `count` players online, numbered from 30 000.
fn numbered(count: i64) -> Vec<Value> {
    (0..count).map(|i| device(30_000 + i, &format!("Arzamas_Lesnaia_{i}"), true)).collect()
}

async fn fetch(client: &Client) -> FetchReport {
    client.fetch_all("12", &Secret::new(TOKEN)).await
}

fn fleet(report: FetchReport) -> Fleet {
    match report.outcome {
        Ok(fleet) => fleet,
        Err(err) => panic!("fetch failed: {err}"),
    }
}

fn ids(fleet: &Fleet) -> Vec<i64> {
    fleet.devices.iter().map(|d| d.device.id).collect()
}

#[tokio::test]
async fn fetches_1200_devices_over_4_pages() {
    let api = start(numbered(1200)).await;
    let report = fetch(&client(&api.url)).await;
    assert_eq!((report.requests, report.failures.len()), (4, 0));
    let fleet = fleet(report);
    assert_eq!(ids(&fleet), (30_000..31_200).collect::<Vec<i64>>());
    assert_eq!((fleet.pages, fleet.anomaly, fleet.skipped.len()), (4, None, 0));

    let seen = api.simulator.requests();
    let offsets: Vec<Option<u64>> = seen.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [Some(0), Some(300), Some(600), Some(900)]);
    for request in &seen {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", DEVICE_LIST_PATH));
        assert!(request.token_ok && request.json_content_type, "{request:?}");
        assert_eq!((request.limit, request.ids.len(), request.status), (Some(300), 0, 200));
    }
}

#[tokio::test]
async fn pages_smaller_than_asked_for_are_followed_to_the_total() {
    let api = start(numbered(250)).await;
    api.simulator.set_max_limit(100);
    let fleet = fleet(fetch(&client(&api.url)).await);
    assert_eq!((fleet.devices.len(), fleet.pages, fleet.anomaly), (250, 3, None));
}

#[tokio::test]
async fn without_a_total_a_short_page_ends_the_list() {
    let api = start(numbered(650)).await;
    api.simulator.set_fault(Some(Fault::OmitTotal));
    let fleet = fleet(fetch(&client(&api.url)).await);
    assert_eq!((fleet.devices.len(), fleet.pages, fleet.anomaly), (650, 3, None));
}

#[tokio::test]
async fn a_bad_token_is_an_auth_error_after_exactly_one_request() {
    let api = start(numbered(3)).await;
    let report = client(&api.url).fetch_all("12", &Secret::new("wrong-token")).await;
    assert_eq!((report.requests, report.failures), (1, vec!["auth"]));
    let err = report.outcome.unwrap_err();
    assert!(matches!(err, FetchError::Auth { status: 401, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{} refused the token for platform 12 (HTTP 401); check the token for platform 12",
            api.url
        )
    );
    assert_eq!(api.simulator.request_count(), 1);
    assert!(!api.simulator.requests()[0].token_ok);

    // 403 is refused the same way, also without a retry.
    api.simulator.fail_next(1, Fault::Forbidden);
    let report = fetch(&client(&api.url)).await;
    assert_eq!((report.requests, report.failures), (1, vec!["auth"]));
    assert!(matches!(report.outcome, Err(FetchError::Auth { status: 403, .. })));
}

#[tokio::test]
async fn rate_limit_retry_after_is_honoured() {
    let api = start(numbered(10)).await;
    api.simulator.fail_next(1, Fault::TooManyRequests { retry_after_secs: 1 });
    let mut config = config(&api.url);
    config.retry.max_delay = Duration::from_secs(5);
    let started = Instant::now();
    let report = fetch(&Client::new(config).unwrap()).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!((report.requests, report.failures.clone()), (2, vec!["status_429"]));
    assert_eq!(fleet(report).devices.len(), 10);
}

#[tokio::test]
async fn retry_after_is_capped_at_max_delay() {
    let api = start(numbered(10)).await;
    api.simulator.fail_next(1, Fault::TooManyRequests { retry_after_secs: 3600 });
    let started = Instant::now();
    let report = fetch(&client(&api.url)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!((report.requests, report.failures.clone()), (2, vec!["status_429"]));
    assert_eq!(fleet(report).devices.len(), 10);
}

#[tokio::test]
async fn transient_failures_are_retried_until_success() {
    for (fault, reason) in [
        (Fault::ServerError, "status_5xx"),
        (Fault::HtmlErrorPage, "bad_response"),
        (Fault::TruncatedJson, "bad_response"),
    ] {
        let api = start(numbered(400)).await;
        // Fails the first page twice, then the rest goes through.
        api.simulator.fail_next(2, fault.clone());
        let report = fetch(&client(&api.url)).await;
        assert_eq!(report.failures, [reason, reason], "{fault:?}");
        assert_eq!(report.requests, 4, "{fault:?}");
        assert_eq!(fleet(report).devices.len(), 400, "{fault:?}");
        let faults: Vec<Option<Fault>> =
            api.simulator.requests().into_iter().map(|r| r.fault).collect();
        assert_eq!(faults, [Some(fault.clone()), Some(fault), None, None]);
    }
}

#[tokio::test]
async fn a_persistent_server_error_gives_up_after_max_attempts() {
    let api = start(numbered(10)).await;
    api.simulator.set_fault(Some(Fault::ServerError));
    let report = fetch(&client(&api.url)).await;
    assert_eq!(report.requests, 4);
    assert_eq!(report.failures, ["status_5xx"; 4]);
    let err = report.outcome.unwrap_err();
    assert_eq!(err.reason(), "status_5xx");
    assert!(err.is_transient());
    assert_eq!(
        err.to_string(),
        format!(
            "{} answered HTTP 500 to the device list request for platform 12; the body starts \
             with \"{{\\\"error\\\":{{\\\"code\\\":500,\\\"message\\\":\\\"internal server \
             error\\\"}}}}\"",
            api.url
        )
    );
    assert_eq!(api.simulator.request_count(), 4);
}

#[tokio::test]
async fn odd_devices_and_awkward_names_round_trip() {
    let names = [
        "Kstovo \"Mega\" atrium",
        "Bor\\Vokzalnaia\\2",
        "Vyksa\nvitrina",
        "Нижний Новгород, ТЦ «Фантастика»",
        "tab\there ✓",
    ];
    let mut devices: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| json!({ "id": i + 1, "name": name, "connection_state": "online" }))
        .collect();
    devices.push(json!({
        "id": 6, "name": null, "connection_state": null, "player_status": null,
        "last_online": null, "activation_state": null, "player_version": null,
        "time_zone": null, "extra": {"nested": [1, 2]},
    }));
    devices.push(json!({ "id": 7 }));
    devices.push(json!({ "name": "no id" }));
    let api = start(devices).await;
    let fleet = fleet(fetch(&client(&api.url)).await);

    assert_eq!(ids(&fleet), [1, 2, 3, 4, 5, 6, 7]);
    for (listed, name) in fleet.devices.iter().zip(names) {
        assert_eq!(listed.device.name, name);
        let raw: Value = serde_json::from_str(&listed.raw).unwrap();
        assert_eq!(raw["name"], name);
    }
    let bare = &fleet.devices[5].device;
    assert_eq!((bare.name.as_str(), &bare.connection_state, bare.last_online), ("", &None, None));
    assert!(fleet.devices[5].raw.contains(r#""extra":{"nested":[1,2]}"#));
    assert_eq!(fleet.devices[6].device.player_status, None);
    assert_eq!(fleet.skipped.len(), 1);
    assert_eq!(fleet.skipped[0].index, 7);
}

#[tokio::test]
async fn an_ignored_offset_stops_paging_and_keeps_the_first_page() {
    let api = start(numbered(700)).await;
    api.simulator.set_fault(Some(Fault::IgnoreOffset));
    let report = fetch(&client(&api.url)).await;
    assert_eq!(report.requests, 2);
    let fleet = fleet(report);
    assert_eq!(ids(&fleet), (30_000..30_300).collect::<Vec<i64>>());
    let anomaly = fleet.anomaly.unwrap();
    assert_eq!(anomaly, PagingAnomaly::OffsetIgnored { page: 2, offset: 300, repeated: 300 });
    assert_eq!(anomaly.label(), "offset_ignored");
    assert!(anomaly.to_string().contains("ignore \"offset\""), "{anomaly}");
}

#[tokio::test]
async fn a_total_never_reached_is_an_anomaly_not_an_error() {
    let api = start(numbered(1200)).await;
    api.simulator.set_fault(Some(Fault::LieAboutTotal { extra: 100 }));
    let report = fetch(&client(&api.url)).await;
    assert_eq!(report.requests, 5);
    let fleet = fleet(report);
    assert_eq!(fleet.devices.len(), 1200);
    assert_eq!(fleet.anomaly, Some(PagingAnomaly::TotalNotReached { total: 1300, received: 1200 }));
}

#[tokio::test]
async fn a_request_left_unanswered_times_out_and_is_retried() {
    let api = start(numbered(10)).await;
    api.simulator.fail_next(1, Fault::Hang);
    let mut config = config(&api.url);
    config.request_timeout = Duration::from_millis(150);
    let report = fetch(&Client::new(config).unwrap()).await;
    assert_eq!((report.requests, report.failures.clone()), (2, vec!["timeout"]));
    assert_eq!(fleet(report).devices.len(), 10);

    api.simulator.set_fault(Some(Fault::Hang));
    let mut config = self::config(&api.url);
    config.request_timeout = Duration::from_millis(150);
    config.retry = fast_retry(2);
    let err = fetch(&Client::new(config).unwrap()).await.outcome.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} did not answer the device list request for platform 12 within 150ms", api.url)
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    let url = Simulator::device_list_url(support::unused_addr());
    let mut config = config(&url);
    config.retry = fast_retry(2);
    let report = fetch(&Client::new(config).unwrap()).await;
    assert_eq!(report.failures, ["connect", "connect"]);
    let err = report.outcome.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot connect to {url} to fetch the devices of platform 12")
    );
    // The cause is in the chain, once.
    let text = with_causes(&err);
    assert_eq!(text.matches(&url).count(), 1, "{text}");
}

#[tokio::test]
async fn the_token_and_url_credentials_never_appear_in_errors() {
    let api = start(numbered(10)).await;
    let port = api.url.split(':').nth(2).unwrap().split('/').next().unwrap();
    let url_with_secrets =
        format!("http://admin:pa55@127.0.0.1:{port}{DEVICE_LIST_PATH}?key=qu3ry#frag");
    let shown = format!("http://127.0.0.1:{port}{DEVICE_LIST_PATH}");
    let mut config = config(&url_with_secrets);
    config.retry = fast_retry(1);
    config.request_timeout = Duration::from_millis(150);
    let client = Client::new(config).unwrap();
    assert_eq!(client.shown_url(), shown);

    let mut errors = Vec::new();
    for fault in [
        Fault::Unauthorized,
        Fault::ServerError,
        Fault::HtmlErrorPage,
        Fault::TruncatedJson,
        Fault::Hang,
    ] {
        api.simulator.fail_next(1, fault);
        errors.push(fetch(&client).await.outcome.unwrap_err());
    }
    let unusable = client.fetch_all("12", &Secret::new("line\nbreak")).await;
    errors.push(unusable.outcome.unwrap_err());
    assert_eq!(
        errors.iter().map(FetchError::reason).collect::<Vec<_>>(),
        ["auth", "status_5xx", "bad_response", "bad_response", "timeout", "auth"]
    );
    for err in &errors {
        let text = format!("{} {err:?}", with_causes(err));
        for secret in [TOKEN, "pa55", "admin", "qu3ry", "frag", "line\nbreak"] {
            assert!(!text.contains(secret), "{secret:?} leaked: {text}");
        }
        assert!(text.contains("platform 12"), "{text}");
    }
    assert!(errors[0].to_string().contains(&shown));
}

#[tokio::test]
async fn the_simulator_filters_pages_and_refuses_like_the_api() {
    let api = start(numbered(400)).await;
    let http = reqwest::Client::new();
    let post = |token: &'static str, body: Value| {
        http.post(&api.url).header("X-API-Token", token).json(&body).send()
    };

    let resp = post(TOKEN, json!({ "id": [30_001, "30003", 99] })).await.unwrap();
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["pagination"], json!({ "offset": 0, "limit": 300, "total": 2 }));
    let names: Vec<&str> =
        page["data"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Arzamas_Lesnaia_1", "Arzamas_Lesnaia_3"]);

    // No limit: 300; a larger limit is capped.
    let page: Value = post(TOKEN, json!({})).await.unwrap().json().await.unwrap();
    assert_eq!(page["data"].as_array().unwrap().len(), 300);
    let page: Value =
        post(TOKEN, json!({ "limit": 1000, "offset": 350 })).await.unwrap().json().await.unwrap();
    assert_eq!(page["pagination"], json!({ "offset": 350, "limit": 300, "total": 400 }));
    assert_eq!(page["data"].as_array().unwrap().len(), 50);

    let resp = post("nope", json!({})).await.unwrap();
    assert_eq!(resp.status(), 401);
    let error: Value = resp.json().await.unwrap();
    assert_eq!(error["error"]["message"], "invalid API token");

    let resp = post(TOKEN, json!({ "limit": "all" })).await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http.get(&api.url).send().await.unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn a_churning_demo_fleet_is_fetched_whole_each_time() {
    let api = start(Simulator::demo_fleet(273, 1)).await;
    let client = client(&api.url);
    let before = fleet(fetch(&client).await);
    assert_eq!((before.devices.len(), before.pages, before.skipped.len()), (273, 1, 0));
    for step in 0..5 {
        api.simulator.churn(step);
    }
    let after = fleet(fetch(&client).await);
    assert_eq!(ids(&after), ids(&before));
    let flipped = before
        .devices
        .iter()
        .zip(&after.devices)
        .filter(|(b, a)| b.device.is_online() != a.device.is_online())
        .count();
    assert!(flipped > 0);
}
