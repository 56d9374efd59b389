//! The Prometheus API client against a real Prometheus (Debian's package,
//! started by the tests on a loopback port) and against small loopback fakes
//! for the failures a real one does not produce on demand: proxy error pages,
//! answers cut short, answers that never come, and authentication.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use signage_watchdog::prometheus_api::{Auth, Parsed, PromClient, PromError, Sample};
use signage_watchdog::secret::Secret;
use support::prometheus::{PrometheusOptions, TestPrometheus, TestTarget};
use support::wait::DEADLINE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn value_of(samples: &[Sample], label: &str, value: &str) -> f64 {
    samples
        .iter()
        .find(|s| s.labels.get(label).map(String::as_str) == Some(value))
        .unwrap_or_else(|| panic!("no sample with {label}={value:?} in {samples:?}"))
        .value
}

#[tokio::test]
async fn vector_keeps_quoted_and_cyrillic_label_values_and_special_values() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    target.set(concat!(
        "# TYPE addreality_device_online gauge\n",
        "addreality_device_online{platform_id=\"12\",device_id=\"1\",name=\"Арзамас \\\"Лесная\\\" 1\\\\\"} 0\n",
        "addreality_device_online{platform_id=\"12\",device_id=\"2\",name=\"line\\nbreak\"} 1\n",
        "special{kind=\"nan\"} NaN\n",
        "special{kind=\"inf\"} +Inf\n",
        "special{kind=\"-inf\"} -Inf\n",
    ));
    let prometheus = TestPrometheus::start(&[&target]).await;
    eprintln!(
        "Prometheus was ready in {:?} and had scraped its target {:?} later",
        prometheus.startup_time(),
        prometheus.first_scrapes_time()
    );

    let mut samples = prometheus.client().query("addreality_device_online").await.unwrap();
    samples.sort_by(|a, b| a.labels["device_id"].cmp(&b.labels["device_id"]));
    assert_eq!(samples.len(), 2, "{samples:?}");
    assert_eq!(samples[0].labels["name"], "Арзамас \"Лесная\" 1\\");
    assert_eq!(samples[0].labels["platform_id"], "12");
    assert_eq!(samples[0].labels["__name__"], "addreality_device_online");
    assert_eq!(samples[0].labels["job"], "test");
    assert_eq!(samples[0].labels["instance"], target.instance());
    assert_eq!(samples[0].value, 0.0);
    assert_eq!(samples[1].labels["name"], "line\nbreak");
    assert_eq!(samples[1].value, 1.0);

    let by_name = prometheus
        .client()
        .query(r#"addreality_device_online{name="Арзамас \"Лесная\" 1\\"}"#)
        .await
        .unwrap();
    assert_eq!(by_name.len(), 1, "{by_name:?}");

    let special = prometheus.client().query("special").await.unwrap();
    assert!(value_of(&special, "kind", "nan").is_nan());
    assert_eq!(value_of(&special, "kind", "inf"), f64::INFINITY);
    assert_eq!(value_of(&special, "kind", "-inf"), f64::NEG_INFINITY);
}

#[tokio::test]
async fn target_changes_reach_queries_and_failing_targets_go_down() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::with_job("addreality");
    target.set("addreality_device_online{device_id=\"1\"} 1\n");
    let prometheus = TestPrometheus::start(&[&target]).await;
    let up = prometheus.client().query("up").await.unwrap();
    assert_eq!((up[0].labels["job"].as_str(), up[0].value), ("addreality", 1.0));

    target.set("addreality_device_online{device_id=\"1\"} 0\n");
    target.wait_scrapes(1).await;
    let expr = "addreality_device_online == 0";
    prometheus.wait_until_query(expr, |s| s.len() == 1, DEADLINE).await;

    // A series the target stops exposing is marked stale at the next scrape.
    target.set("other 1\n");
    prometheus.wait_until_query("addreality_device_online", <[_]>::is_empty, DEADLINE).await;

    target.set_failing(true);
    let down = prometheus.wait_until_query("up == 0", |s| s.len() == 1, DEADLINE).await;
    assert_eq!(down[0].labels["job"], "addreality");
    prometheus.wait_until_query("other", <[_]>::is_empty, DEADLINE).await;
}

#[tokio::test]
async fn scalar_is_one_sample_without_labels_at_any_time() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = TestPrometheus::start(&[]).await;
    let samples = prometheus.client().query("scalar(vector(2.5)) * 2").await.unwrap();
    assert_eq!(samples, vec![Sample { labels: Default::default(), value: 5.0 }]);
    let infinite = prometheus.client().query("1/0").await.unwrap();
    assert_eq!(infinite[0].value, f64::INFINITY);
    let at: jiff::Timestamp = "2025-05-26T13:29:08.166Z".parse().unwrap();
    let then = prometheus.client().query_at("time()", at).await.unwrap();
    assert_eq!(then[0].value, 1_748_266_148.166);
}

#[tokio::test]
async fn strings_and_range_vectors_are_not_instant_vectors() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = TestPrometheus::start(&[]).await;
    let err = prometheus.client().query("up[1m]").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the expression yields a range vector where an instant vector is needed; write an \
         expression that yields one number per series (no [range] selector; wrap one in a \
         function such as last_over_time() or rate())"
    );
    assert_eq!(err.label(), "wrong_result_type");
    let err = prometheus.client().query("\"text\"").await.unwrap_err();
    assert!(matches!(err, PromError::WrongResultType { found: "a string", .. }), "{err:?}");
}

#[tokio::test]
async fn bad_expressions_are_api_errors_with_prometheus_message() {
    if !TestPrometheus::available() {
        return;
    }
    let prometheus = TestPrometheus::start(&[]).await;
    let client = prometheus.client();
    let parsed = client.check_expr("sum by (platform_id) (rate(up[5m])) > 0").await.unwrap();
    assert_eq!(parsed, Parsed::ByFormatQuery);

    let url = format!("{}/api/v1/format_query", prometheus.url());
    match client.check_expr("sum(up").await.unwrap_err() {
        PromError::Api { url: reported, error_type, error } => {
            assert_eq!(reported, url);
            assert_eq!(error_type, "bad_data");
            assert_eq!(
                error,
                "invalid parameter \"query\": 1:7: parse error: unclosed left parenthesis"
            );
        }
        other => panic!("{other:?}"),
    }
    let err = client.check_expr("rate(up)").await.unwrap_err();
    assert!(
        err.to_string().contains("expected type range vector in call to function \"rate\""),
        "{err}"
    );

    let err = client.query("sum(up").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Prometheus at {}/api/v1/query refused the query (bad_data): invalid parameter \
             \"query\": 1:7: parse error: unclosed left parenthesis",
            prometheus.url()
        )
    );
    assert_eq!(err.label(), "api");

    // Parses, but fails while evaluating (HTTP 422): two series on one side
    // of a one-to-one match.
    let many = r#"vector(1) + on() (vector(1) or label_replace(vector(2), "a", "b", "", ""))"#;
    client.check_expr(many).await.unwrap();
    match client.query(many).await.unwrap_err() {
        PromError::Api { error_type, error, .. } => {
            assert_eq!(error_type, "execution");
            assert!(error.contains("many-to-many matching not allowed"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stopped_prometheus_is_unreachable_and_a_restart_recovers() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    target.set("addreality_device_online{device_id=\"1\"} 1\n");
    let mut prometheus = TestPrometheus::start(&[&target]).await;

    prometheus.stop();
    let err = prometheus.client().query("addreality_device_online").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach Prometheus at {}/api/v1/query: Connection refused (os error 111); \
             check that Prometheus is running and that the URL is right",
            prometheus.url()
        )
    );
    assert_eq!(err.label(), "unreachable");

    prometheus.restart().await;
    eprintln!("Prometheus restarted in {:?}", prometheus.startup_time());
    // What was scraped before the kill is still there.
    let samples = prometheus.client().query("addreality_device_online").await.unwrap();
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert_eq!(samples[0].value, 1.0);
}

#[tokio::test]
async fn query_range_returns_points() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    target.set("addreality_device_online{device_id=\"1\"} 1\n");
    let prometheus = TestPrometheus::start(&[&target]).await;
    let first = jiff::Timestamp::now();
    target.wait_scrapes(3).await;
    prometheus.wait_until_query("count_over_time(up[10s]) >= 4", |s| s.len() == 1, DEADLINE).await;

    let end = jiff::Timestamp::now();
    let start = first - jiff::SignedDuration::from_secs(1);
    let series = prometheus
        .client()
        .query_range("addreality_device_online", start, end, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].labels["device_id"], "1");
    let points = &series[0].points;
    assert!(points.len() >= 3, "{points:?}");
    assert!(points.windows(2).all(|w| w[0].time < w[1].time), "{points:?}");
    assert!(points.iter().all(|p| p.value == 1.0 && p.time >= start && p.time <= end));

    let err = prometheus
        .client()
        .query_range("up", start, end, Duration::from_secs(0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("zero or negative query resolution step"), "{err}");
}

#[tokio::test]
async fn short_lookback_delta_is_passed_to_prometheus() {
    if !TestPrometheus::available() {
        return;
    }
    let target = TestTarget::start();
    target.set("kept 1\n");
    let options =
        PrometheusOptions { lookback_delta: Duration::from_secs(1), ..Default::default() };
    let mut prometheus = options.start(&[&target]).await;
    let flags: serde_json::Value =
        reqwest::get(format!("{}/api/v1/status/flags", prometheus.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(flags["data"]["query.lookback-delta"], "1s", "{flags}");
    // Killed, Prometheus writes no staleness markers: only the lookback
    // delta makes the series vanish after a restart without the target.
    drop(target);
    prometheus.restart().await;
    prometheus.wait_until_query("kept", <[_]>::is_empty, DEADLINE).await;
}

/// One request as a fake server received it.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: String,
}

/// A loopback HTTP server that answers every request with bytes the test
/// chooses (or, for `None`, never: it holds the connection until the client
/// hangs up) and records what it received.
struct Fake {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Fake {
    async fn start(respond: impl Fn(&Received) -> Option<Vec<u8>> + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let respond = Arc::new(respond);
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let request = read_request(&mut stream).await;
                    log.lock().unwrap().push(request.clone());
                    match respond(&request) {
                        Some(answer) => {
                            let _ = stream.write_all(&answer).await;
                            let _ = stream.shutdown().await;
                        }
                        // Until the client gives up and closes its end.
                        None => while stream.read(&mut [0; 512]).await.is_ok_and(|n| n > 0) {},
                    }
                });
            }
        });
        Fake { url, received }
    }

    /// A fake that always sends `answer` at once.
    async fn answering(answer: &str) -> Fake {
        let answer = answer.as_bytes().to_vec();
        Fake::start(move |_| Some(answer.clone())).await
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Received {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes);
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_string();
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if n == 0 || bytes.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&bytes[end + 4..]).to_string();
                return Received { head, body };
            }
        }
        if n == 0 {
            panic!("connection closed mid-request: {:?}", String::from_utf8_lossy(&bytes));
        }
    }
}

fn http(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn client(url: &str, auth: Option<Auth>) -> PromClient {
    PromClient::new(url, Duration::from_millis(500), auth).unwrap()
}

#[tokio::test]
async fn html_error_page_from_a_proxy_is_an_http_error() {
    let page = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n";
    let fake = Fake::answering(&http("502 Bad Gateway", "text/html", page)).await;
    let err = client(&fake.url, None).query("up").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "Prometheus at {}/api/v1/query answered HTTP 502 (502 Bad Gateway 502 Bad Gateway \
             nginx/1.22.1); Prometheus, or a proxy in front of it, is failing; check that \
             Prometheus is running and see its log",
            fake.url
        )
    );
    assert_eq!(err.label(), "http");
}

#[tokio::test]
async fn truncated_json_is_a_bad_response() {
    let cut = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a""#;
    let fake = Fake::answering(&http("200 OK", "application/json", cut)).await;
    let err = client(&fake.url, None).query("up").await.unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with(&format!("Prometheus at {}/api/v1/query sent an answer", fake.url)));
    assert!(message.contains("the JSON ends early (EOF while parsing"), "{message}");
    assert_eq!(err.label(), "bad_response");

    // The connection closes before the promised Content-Length arrived.
    let short = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{cut}"
    );
    let fake = Fake::answering(&short).await;
    let err = client(&fake.url, None).query("up").await.unwrap_err();
    assert!(err.to_string().contains("the answer was cut short"), "{err}");
    assert_eq!(err.label(), "bad_response");
}

#[tokio::test]
async fn slow_answer_is_a_timeout() {
    let fake = Fake::start(|_| None).await;
    let started = std::time::Instant::now();
    let err = client(&fake.url, None).query("up").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        err.to_string(),
        format!(
            "Prometheus at {}/api/v1/query did not answer within 500ms; it may be overloaded or \
             the query too expensive: raise the query timeout or simplify the expression",
            fake.url
        )
    );
    assert_eq!(err.label(), "timeout");
}

#[tokio::test]
async fn api_errors_with_any_status_and_warnings_are_understood() {
    let unavailable = r#"{"status":"error","errorType":"unavailable","error":"TSDB not ready"}"#;
    let fake =
        Fake::answering(&http("503 Service Unavailable", "application/json", unavailable)).await;
    match client(&fake.url, None).query("up").await.unwrap_err() {
        PromError::Api { error_type, error, .. } => {
            assert_eq!((error_type.as_str(), error.as_str()), ("unavailable", "TSDB not ready"));
        }
        other => panic!("{other:?}"),
    }
}

/// Engines past one Prometheus (Thanos, Mimir, VictoriaMetrics cluster)
/// may answer from part of their data. Thanos is asked not to
/// (`partial_response=false`, so a failing store is an API error); an
/// answer marked partial all the same is an error, so the devices it
/// concerns are unknown; `warnings` on a whole answer are logged and the
/// answer used.
#[tokio::test]
async fn partial_answers_are_errors_and_warnings_are_logged() {
    let (logs, _guard) = support::logs::Logs::capture();
    let warned = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"device_id":"7"},"value":[1700000000,"3"]}]},"warnings":["quantile value should be between 0 and 1"]}"#;
    let fake = Fake::answering(&http("200 OK", "application/json", warned)).await;
    let samples = client(&fake.url, None).query("up").await.unwrap();
    assert_eq!(samples[0].labels["device_id"], "7");
    assert_eq!(samples[0].value, 3.0);
    assert_eq!(
        logs.take(),
        format!(
            " WARN Prometheus at {}/api/v1/query warned about `up`: quantile value should be between 0 and 1\n",
            fake.url
        )
    );
    assert_eq!(fake.received()[0].body, "query=up&timeout=0.5&partial_response=false");

    // What Thanos answers with partial_response=false when a store fails.
    let thanos = r#"{"status":"error","errorType":"server_error","error":"receive series from Addr: 10.0.0.7:10901: rpc error: code = Unavailable"}"#;
    let fake = Fake::answering(&http("503 Service Unavailable", "application/json", thanos)).await;
    let start = "2026-11-01T00:00:00Z".parse().unwrap();
    let end = "2026-11-01T01:00:00Z".parse().unwrap();
    let step = Duration::from_secs(60);
    let err = client(&fake.url, None).query_range("up", start, end, step).await.unwrap_err();
    assert!(matches!(&err, PromError::Api { error_type, .. } if error_type == "server_error"));
    let body = &fake.received()[0].body;
    assert!(body.ends_with("&step=60&timeout=0.5&partial_response=false"), "{body}");

    // VictoriaMetrics cluster marks what some storage nodes did not answer.
    let partial = r#"{"status":"success","isPartial":true,"data":{"resultType":"vector","result":[{"metric":{"device_id":"7"},"value":[1700000000,"1"]}]}}"#;
    let fake = Fake::answering(&http("200 OK", "application/json", partial)).await;
    let err = client(&fake.url, None).query("up").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the engine at {}/api/v1/query answered from part of its data only (a store or storage node did not answer); \
             the devices this query watches are unknown until it answers whole: check the engine's stores",
            fake.url
        )
    );
    assert_eq!(err.label(), "partial");
    let whole = partial.replace("true", "false");
    let fake = Fake::answering(&http("200 OK", "application/json", &whole)).await;
    assert_eq!(client(&fake.url, None).query("up").await.unwrap().len(), 1);
}

/// Engines without `/api/v1/format_query` answer there with an HTTP
/// error and no API envelope: Prometheus before 2.38 and Thanos 404,
/// VictoriaMetrics 400 in plain text (what 1.79 sends, verbatim). The
/// client then evaluates at the epoch, and says so.
#[tokio::test]
async fn check_expr_falls_back_when_format_query_is_missing() {
    let missing = [
        http("404 Not Found", "text/plain", "404 page not found\n"),
        http(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "remoteAddr: \"127.0.0.1:37424\"; requestURI: /api/v1/format_query?query=up; unsupported path requested: \"/api/v1/format_query\"\n",
        ),
    ];
    for answer in missing {
        let fake = Fake::start(move |request| {
            let answer = if request.head.starts_with("POST /api/v1/format_query ") {
                answer.clone()
            } else {
                http(
                    "200 OK",
                    "application/json",
                    r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                )
            };
            Some(answer.into_bytes())
        })
        .await;
        let client = client(&fake.url, None);
        assert!(client.has_format_query());
        assert_eq!(client.check_expr("up").await.unwrap(), Parsed::ByEvaluation);
        assert!(!client.has_format_query());
        assert_eq!(client.check_expr("up == 0").await.unwrap(), Parsed::ByEvaluation);
        let paths: Vec<String> = fake
            .received()
            .iter()
            .map(|r| format!("{} {}", r.head.split(' ').nth(1).unwrap(), r.body))
            .collect();
        assert_eq!(
            paths,
            [
                "/api/v1/format_query query=up",
                "/api/v1/query query=up&time=0&timeout=0.5",
                "/api/v1/query query=up+%3D%3D+0&time=0&timeout=0.5",
            ]
        );
    }
}

#[tokio::test]
async fn credentials_are_sent_and_never_shown() {
    // A misbehaving proxy that echoes the request, Authorization included,
    // in its error page.
    let fake = Fake::start(|request| {
        let page = format!("<html><body><pre>{}</pre></body></html>", request.head);
        Some(http("401 Unauthorized", "text/html", &page).into_bytes())
    })
    .await;
    let prefixed = format!("{}/prometheus", fake.url);

    let basic = Auth::Basic { username: "jobctl".into(), password: Secret::new("s3cret-pw") };
    let err = client(&prefixed, Some(basic)).query("up").await.unwrap_err();
    let request = &fake.received()[0];
    assert!(request.head.starts_with("POST /prometheus/api/v1/query HTTP/1.1\r\n"), "{request:?}");
    // base64("jobctl:s3cret-pw")
    assert!(
        request.head.contains("authorization: Basic am9iY3RsOnMzY3JldC1wdw==\r\n"),
        "{request:?}"
    );
    assert!(
        request.head.contains("content-type: application/x-www-form-urlencoded"),
        "{request:?}"
    );
    assert_eq!(request.body, "query=up&timeout=0.5&partial_response=false");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(
            !shown.contains("s3cret-pw") && !shown.contains("am9iY3RsOnMzY3JldC1wdw=="),
            "{shown}"
        );
    }
    assert!(err.to_string().contains("authorization: Basic ***"), "{err}");
    assert!(
        err.to_string().ends_with("; check the basic-auth credentials or bearer token"),
        "{err}"
    );

    let bearer = Auth::Bearer(Secret::new("tok-123456"));
    let err = client(&prefixed, Some(bearer)).check_expr("up").await.unwrap_err();
    let request = &fake.received()[1];
    assert!(request.head.starts_with("POST /prometheus/api/v1/format_query "), "{request:?}");
    assert!(request.head.contains("authorization: Bearer tok-123456\r\n"), "{request:?}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("tok-123456"), "{shown}");
    }
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let url = support::closed_url();
    let err = client(&url, None).check_expr("up").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach Prometheus at {url}/api/v1/format_query: Connection refused (os error 111); \
             check that Prometheus is running and that the URL is right"
        )
    );
}
