//! The HTTP SMS backend against a fake gateway on loopback: what goes over
//! the wire, and how each kind of failure is judged (definite or uncertain).

mod support;

use std::path::Path;

use signage_watchdog::sms::{Delivered, Sender, SmsConfig};
use support::fake_gateway::{Echo, FakeGateway, Fault, SentSms};
use support::sms::{definite, message, uncertain, PHONE};

/// A sender built from `[sms.http]` lines the way jobctl builds it, with
/// `key` in a mode-600 file next to the configuration.
fn sender(http_lines: &str, key: &str) -> (Box<dyn Sender>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    support::write_secret(&dir.path().join("sms.key"), &format!("{key}\n"));
    let text =
        format!("[sms]\nbackend = \"http\"\n[sms.http]\n{http_lines}\nkey_file = \"sms.key\"\n");
    (support::sms::sender(&text, dir.path()), dir)
}

fn gateway_sender(gateway: &FakeGateway) -> (Box<dyn Sender>, tempfile::TempDir) {
    sender(&format!("preset = \"gateway\"\nurl = \"{}\"", gateway.url()), gateway.key())
}

#[tokio::test]
async fn gateway_preset_sends_exactly_the_old_request() {
    let gateway = FakeGateway::start().await;
    let (sender, _dir) = gateway_sender(&gateway);

    let outcome = sender.send(&message("#12#0#1#1#")).await;

    assert_eq!(outcome, Ok(Delivered { backend: "http".into(), reference: None }));
    let received = gateway.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].method, "POST");
    assert_eq!(received[0].path, "/send");
    assert_eq!(
        received[0].query.as_deref(),
        Some("number=%2B79991234567&text=%2312%230%231%231%23")
    );
    assert_eq!(received[0].header("Authorization"), Some(gateway.key()));
    assert!(received[0].body.is_empty());
    assert_eq!(gateway.sent(), [SentSms { number: PHONE.into(), text: "#12#0#1#1#".into() }]);
}

#[tokio::test]
async fn cyrillic_and_reserved_characters_arrive_intact() {
    let gateway = FakeGateway::start().await;
    let (sender, _dir) = gateway_sender(&gateway);
    let text = "Перезагрузка «Лесная 1» & reset + 50% #2 a=b;c/d?";

    sender.send(&message(text)).await.unwrap();

    let query = gateway.received()[0].query.clone().unwrap();
    assert!(query.starts_with("number=%2B79991234567&text=%D0%9F%D0%B5"), "{query}");
    assert!(query.contains("+%2B+50%25+%232+"), "{query}");
    for raw in ["#", "&reset", "a=b", ";", "/", "?", "«"] {
        assert!(!query.contains(raw), "{raw:?} left unencoded in {query}");
    }
    assert_eq!(gateway.sent(), [SentSms { number: PHONE.into(), text: text.into() }]);
}

#[tokio::test]
async fn server_error_is_definite_and_only_that_request_fails() {
    let gateway = FakeGateway::start().await;
    let (sender, _dir) = gateway_sender(&gateway);
    gateway.fail_next(1, Fault::ServerError);

    let reason = definite(sender.send(&message("#01#0#")).await);
    assert_eq!(
        reason,
        format!(
            "{}/send answered HTTP 500 Internal Server Error: internal error: modem busy",
            gateway.url()
        )
    );
    assert!(gateway.sent().is_empty());

    sender.send(&message("#01#0#")).await.unwrap();
    assert_eq!(gateway.sent().len(), 1);
    assert_eq!(gateway.received().len(), 2);
}

#[tokio::test]
async fn an_error_inside_http_200_is_definite_with_the_gateways_words() {
    let gateway = FakeGateway::start().await;
    let (sender, _dir) = gateway_sender(&gateway);
    gateway.set_fault(Some(Fault::ErrorBody("insufficient funds".into())));

    let reason = definite(sender.send(&message("#02#0#")).await);

    assert_eq!(
        reason,
        format!(
            "{}/send answered HTTP 200 OK but reported a failure (/status = \"error\"): insufficient funds",
            gateway.url()
        )
    );
}

#[tokio::test]
async fn a_slow_answer_is_uncertain_because_the_message_left() {
    let gateway = FakeGateway::start().await;
    let (sender, _dir) = sender(
        &format!(
            "preset = \"gateway\"\nurl = \"{}\"\ntimeout = \"300ms\"\nconnect_timeout = \"100ms\"",
            gateway.url()
        ),
        gateway.key(),
    );
    gateway.set_fault(Some(Fault::Hang));

    let reason = uncertain(sender.send(&message("#12#0#1#1#")).await);

    assert_eq!(
        reason,
        format!(
            "no answer from {}/send within 300ms; the gateway may have sent the message",
            gateway.url()
        )
    );
    assert_eq!(gateway.sent().len(), 1, "the fake did send it: that is why it must not be retried");
}

#[tokio::test]
async fn connection_refused_is_definite() {
    let url = support::closed_url();
    let (sender, _dir) = sender(&format!("preset = \"gateway\"\nurl = \"{url}\""), "any-key-123");

    let reason = definite(sender.send(&message("#01#0#")).await);

    assert!(reason.starts_with(&format!("cannot connect to {url}/send: ")), "{reason}");
    assert!(reason.to_lowercase().contains("connection refused"), "{reason}");
}

#[tokio::test]
async fn a_wrong_key_is_definite_and_says_to_check_the_key() {
    let gateway = FakeGateway::start().await;
    let (sender, dir) =
        sender(&format!("preset = \"gateway\"\nurl = \"{}\"", gateway.url()), "wrong-key-0000");

    let reason = definite(sender.send(&message("#01#0#")).await);

    let key_file = dir.path().join("sms.key");
    assert_eq!(
        reason,
        format!(
            "{}/send answered HTTP 401 Unauthorized: invalid key; check the key (file {})",
            gateway.url(),
            key_file.display()
        )
    );
    assert!(gateway.sent().is_empty());
}

#[tokio::test]
async fn json_template_sends_a_typed_json_body() {
    let gateway = FakeGateway::start().await;
    let (sender, _dir) = sender(
        &format!(
            r#"url = "{}"
path = "/send"
headers = {{ Authorization = "{{key}}", X-Client = "watchdog {{{{v1}}}}" }}
json = {{ number = "{{phone}}", text = "{{text}}", flash = false, parts = 1, tags = ["watchdog", "{{phone_digits}}"] }}
reference_pointer = "/id""#,
            gateway.url()
        ),
        gateway.key(),
    );
    let text = "Reboot \"Lobby\" \\ {now}";

    let outcome = sender.send(&message(text)).await;

    assert_eq!(outcome, Ok(Delivered { backend: "http".into(), reference: Some("msg-1".into()) }));
    let received = &gateway.received()[0];
    assert_eq!(received.method, "POST");
    assert_eq!(received.query, None);
    assert_eq!(received.header("content-type"), Some("application/json"));
    assert_eq!(received.header("x-client"), Some("watchdog {v1}"));
    let body: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "number": PHONE, "text": text, "flash": false, "parts": 1, "tags": ["watchdog", "79991234567"]
        })
    );
}

#[tokio::test]
async fn form_template_sends_an_urlencoded_body() {
    let gateway = FakeGateway::start().await;
    let (sender, _dir) = sender(
        &format!(
            r#"url = "{}/send"
headers = {{ Authorization = "{{key}}" }}
form = {{ number = "{{phone}}", text = "{{text}}" }}"#,
            gateway.url()
        ),
        gateway.key(),
    );

    sender.send(&message("Перезагрузка & #12#0#1#1#")).await.unwrap();

    let received = &gateway.received()[0];
    assert_eq!(received.header("content-type"), Some("application/x-www-form-urlencoded"));
    assert_eq!(
        received.body_text(),
        "number=%2B79991234567&text=%D0%9F%D0%B5%D1%80%D0%B5%D0%B7%D0%B0%D0%B3%D1%80%D1%83%D0%B7%D0%BA%D0%B0+%26+%2312%230%231%231%23"
    );
    assert_eq!(
        gateway.sent(),
        [SentSms { number: PHONE.into(), text: "Перезагрузка & #12#0#1#1#".into() }]
    );
}

#[tokio::test]
async fn configured_status_and_body_rules_decide() {
    let gateway = FakeGateway::start().await;
    let base = format!("preset = \"gateway\"\nurl = \"{}\"", gateway.url());

    // The fake answers 200; a provider documented to answer 201 would not.
    let (strict, _d1) = sender(&format!("{base}\nsuccess_status = [201]"), gateway.key());
    let reason = definite(strict.send(&message("x")).await);
    assert!(
        reason.starts_with(&format!("{}/send answered HTTP 200 OK: ", gateway.url())),
        "{reason}"
    );

    let (marker, _d2) =
        sender(&format!("{base}\nsuccess_body_contains = \"queued\""), gateway.key());
    let reason = definite(marker.send(&message("x")).await);
    assert!(reason.contains("answered HTTP 200 OK but the answer lacks \"queued\": {"), "{reason}");

    let (json, _d3) = sender(
        &format!("{base}\nsuccess_json = {{ pointer = \"/status\", equals = \"OK\" }}"),
        gateway.key(),
    );
    assert!(json.send(&message("x")).await.is_ok(), "\"ok\" matches \"OK\" ignoring case");

    gateway.fail_next(1, Fault::ErrorBody("number blocked".into()));
    let (words, _d4) =
        sender(&format!("{base}\nfailure_body_contains = \"blocked\""), gateway.key());
    let reason = definite(words.send(&message("x")).await);
    assert!(reason.ends_with("but the answer contains \"blocked\": number blocked"), "{reason}");
}

#[tokio::test]
async fn the_key_never_appears_in_errors() {
    let key = "k3y-S3CRET+/=value";
    let gateway = FakeGateway::start_with_key(key).await;
    // The key also travels in the query, where it is URL-encoded.
    let (sender, _dir) = sender(
        &format!("preset = \"gateway\"\nurl = \"{}\"\nquery = {{ number = \"{{phone}}\", text = \"{{text}}\", api_key = \"{{key}}\" }}\ntimeout = \"300ms\"\nconnect_timeout = \"100ms\"", gateway.url()),
        key,
    );
    let encoded = "k3y-S3CRET%2B%2F%3Dvalue";
    let mut errors = Vec::new();
    for fault in [
        Fault::ServerError,
        Fault::Unauthorized,
        // A gateway that quotes the key back, as some do on errors.
        Fault::ErrorBody(format!("key {key} has no funds")),
        Fault::ErrorBody(format!("key {encoded} has no funds")),
        Fault::Hang,
    ] {
        gateway.fail_next(1, fault);
        errors.push(sender.send(&message("x")).await.unwrap_err());
    }
    assert_eq!(gateway.received()[0].query_param("api_key").as_deref(), Some(key));
    assert!(errors[2].reason().contains("key *** has no funds"), "{}", errors[2]);
    let debug_sender = format!("{sender:?}");
    for shown in errors.iter().flat_map(|e| [e.to_string(), format!("{e:?}")]).chain([debug_sender])
    {
        assert!(
            !shown.contains(key) && !shown.contains(encoded) && !shown.contains("S3CRET"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn fake_gateway_lists_replies_and_checks_the_key() {
    let gateway = FakeGateway::start().await;
    gateway.add_reply(PHONE, "Power off 1 min", "2025-05-26T13:29:08Z");
    let client = reqwest::Client::new();

    let answer: serde_json::Value = client
        .get(format!("{}/sms", gateway.url()))
        .header("Authorization", gateway.key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer,
        serde_json::json!({"sms_messages": [{"from": PHONE, "message": "Power off 1 min", "timestamp": "2025-05-26T13:29:08Z"}]})
    );
    let status = client.get(format!("{}/sms", gateway.url())).send().await.unwrap().status();
    assert_eq!(status, 401);
}

#[test]
fn key_files_are_read_relative_to_the_rules_file() {
    let (sender, _dir) = sender("preset = \"gateway\"\nurl = \"http://127.0.0.1:9\"", "abc");
    assert_eq!(sender.name(), "http");
    let err = SmsConfig::build(
        &toml::from_str::<SmsConfig>(
            "backend = \"http\"\n[http]\npreset = \"gateway\"\nurl = \"http://127.0.0.1:9\"\nkey_file = \"nope.key\"\n",
        )
        .unwrap(),
        Path::new("/etc/jobctl"),
    )
    .unwrap_err();
    assert_eq!(err.key, "sms.http.key_file");
    assert!(
        err.message.starts_with("cannot read secret file /etc/jobctl/nope.key"),
        "{}",
        err.message
    );
}

/// A key with every character that encodings change: `+ / = &`, spaces,
/// a quote and a backslash.
const AWKWARD_KEY: &str = r#"k3y +/=& "S3\CRET"#;

/// Every form [`AWKWARD_KEY`] can take in a request, and `user:key` in
/// basic auth's base64; none may be anywhere a person reads.
fn awkward_key_forms() -> Vec<String> {
    let form_upper = "k3y+%2B%2F%3D%26+%22S3%5CCRET";
    vec![
        AWKWARD_KEY.to_string(),
        form_upper.to_string(),
        "k3y+%2b%2f%3d%26+%22S3%5cCRET".to_string(),
        "k3y%20%2B%2F%3D%26%20%22S3%5CCRET".to_string(),
        r#"k3y +\/=& \"S3\\CRET"#.to_string(),
        r#"k3y +/=& \"S3\\CRET"#.to_string(),
        // base64 of `AC12:<key>`
        "QUMxMjprM3kgKy89JiAiUzNcQ1JFVA==".to_string(),
        // What is left of the key in any of those but base64.
        "CRET".to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_key_reaches_no_journal_row_and_no_history_in_any_encoding() {
    use support::rules_file;
    let gateway = FakeGateway::start_with_key(AWKWARD_KEY).await;
    let socket = rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785");
    // The key in a header, the query and a JSON body; then in a form body
    // and basic auth.
    let tables = [
        "query = { number = \"{phone}\", text = \"{text}\", api_key = \"{key}\" }\njson = { number = \"{phone}\", text = \"{text}\", key = \"{key}\" }\n",
        "form = { number = \"{phone}\", text = \"{text}\", api_key = \"{key}\" }\nbasic_auth = { username = \"AC12\", password = \"{key}\" }\n",
    ];
    let echoes = [Echo::Query, Echo::Body, Echo::Header("authorization")];
    let mut shown = Vec::new();
    for (site, table) in tables.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        support::write_secret(&dir.path().join("sms.key"), &format!("{AWKWARD_KEY}\n"));
        let rules = rules_file::head(&support::closed_url(), "1s", "1s", "journal.db")
            + &rules_file::gateway_sms(&gateway.url(), table)
            + &socket;
        std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
        let jobctl = |args: &[&str]| {
            let mut command = support::process::command(env!("CARGO_BIN_EXE_jobctl"), dir.path());
            command.args(["--config", "rules.toml"]).args(args).env("JOURNAL_STREAM", "8:1");
            support::process::run(&mut command)
        };
        // One send, three attempts (it is retried), each echoing a part.
        for echo in &echoes {
            gateway.fail_next(1, Fault::Echo(echo.clone()));
        }
        let ran = jobctl(&["send", "lobby", "power_cycle", "minutes=1"]);
        assert!(ran.stderr.contains("answered HTTP 400 Bad Request: got "), "{ran:?}");
        shown.push(ran.stderr);
        for format in ["table", "json"] {
            let ran = jobctl(&["history", "--format", format]);
            assert_eq!(ran.code, 0, "{ran:?}");
            assert!(ran.stdout.contains("got "), "{ran:?}");
            if format == "json" {
                // Each attempt, with its backend and the gateway's (masked) words.
                let rows: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
                let attempts = rows[0]["attempt_details"].as_array().unwrap();
                assert_eq!(rows[0]["attempts"], 3);
                assert_eq!(attempts.len(), 3, "{rows}");
                for attempt in attempts {
                    assert_eq!(
                        (&attempt["backend"], &attempt["outcome"]),
                        (&"http".into(), &"failed".into())
                    );
                    let detail = attempt["detail"].as_str().unwrap();
                    assert!(detail.contains("answered HTTP 400 Bad Request: got "), "{detail}");
                }
                if site == 0 {
                    let first = attempts[0]["detail"].as_str().unwrap();
                    assert!(
                        first.ends_with(
                            "got api_key=***&number=%2B79991234567&text=%2312%230%231%231%23"
                        ),
                        "{first}"
                    );
                }
            }
            shown.push(ran.stdout);
        }
        for name in ["journal.db", "journal.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
                shown.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    // The echoes did carry the key, each in the encoding of its part.
    let received = gateway.received();
    assert!(received[0].query.as_deref().unwrap().contains("k3y+%2B%2F%3D%26+%22S3%5CCRET"));
    assert!(received[1].body_text().contains(r#""k3y +/=& \"S3\\CRET""#));
    let basic = "Basic QUMxMjprM3kgKy89JiAiUzNcQ1JFVA==";
    assert!(received[5].headers.iter().any(|(n, v)| n == "authorization" && v == basic));
    for text in &shown {
        for form in awkward_key_forms() {
            assert!(!text.contains(&form), "{form:?} in:\n{text}");
        }
    }
}
