//! The provider presets of the HTTP backend (`twilio`, `smsru`, `smsc`,
//! `vonage`) against loopback fakes of the providers: the request each
//! sends, and what each documented answer means (sent, failed, uncertain)
//! in the words a sysadmin reads, never with the secret in them.

mod support;

use signage_watchdog::sms::{Delivered, Message, SendError, Sender};
use support::fake_gateway::SentSms;
use support::fake_provider::{
    base64, decode, FakeProvider, Kind, ProviderFault, SECRET, TWILIO_SID,
};
use support::sms::{message, PHONE};

/// The key a sysadmin got wrong; no more to be shown than the right one.
const WRONG_SECRET: &str = "wr0ng+s3cret";

/// What the `from` of a preset is in these tests, when it needs one.
fn from(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Twilio => Some("+15005550006"),
        Kind::Vonage => Some("WATCHDOG"),
        Kind::Smsru | Kind::Smsc => None,
    }
}

/// A sender with `preset = <kind>` pointed at `fake`, its secret `key` in
/// a mode-600 file `sms.key`.
fn sender(fake: &FakeProvider, kind: Kind, key: &str) -> (Box<dyn Sender>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    support::write_secret(&dir.path().join("sms.key"), &format!("{key}\n"));
    let mut lines = format!("preset = \"{}\"\nurl = \"{}\"\n", kind.preset(), fake.url());
    if let Some(account) = kind.account() {
        lines += &format!("account = \"{account}\"\n");
    }
    if let Some(from) = from(kind) {
        lines += &format!("from = \"{from}\"\n");
    }
    let text = format!("[sms]\nbackend = \"http\"\n[sms.http]\n{lines}key_file = \"sms.key\"\n");
    (support::sms::sender(&text, dir.path()), dir)
}

/// The fields of the one form the fake received.
fn form_of(fake: &FakeProvider) -> Vec<(String, String)> {
    let received = fake.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let request = &received[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", fake.kind().path().as_str())
    );
    assert_eq!(request.query, None, "the secret stays out of the URL");
    assert_eq!(request.header("content-type"), Some("application/x-www-form-urlencoded"));
    decode(&request.body_text())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

const CYRILLIC: &str = "Перезагрузка «Лесная 1» & #12#0#1#1#";

#[tokio::test]
async fn twilio_posts_a_form_with_basic_auth_and_keeps_the_sid() {
    let fake = FakeProvider::start(Kind::Twilio).await;
    let (sender, _dir) = sender(&fake, Kind::Twilio, SECRET);

    let outcome = sender.send(&message(CYRILLIC)).await;

    assert_eq!(
        outcome,
        Ok(Delivered {
            backend: "http".into(),
            reference: Some("SM0123456789abcdef0123456789abcdef".into())
        })
    );
    assert_eq!(
        form_of(&fake),
        pairs(&[("To", PHONE), ("From", "+15005550006"), ("Body", CYRILLIC)])
    );
    let basic = format!("Basic {}", base64(&format!("{TWILIO_SID}:{SECRET}")));
    assert_eq!(fake.received()[0].header("authorization"), Some(basic.as_str()));
    assert_eq!(fake.sent(), [SentSms { number: PHONE.into(), text: CYRILLIC.into() }]);
}

#[tokio::test]
async fn twilio_takes_a_messaging_service_as_the_sender() {
    let fake = FakeProvider::start(Kind::Twilio).await;
    let dir = tempfile::tempdir().unwrap();
    support::write_secret(&dir.path().join("sms.key"), SECRET);
    let service = "MG0123456789abcdef0123456789abcdef";
    let text = format!(
        "[sms]\nbackend = \"http\"\n[sms.http]\npreset = \"twilio\"\nurl = \"{}\"\naccount = \"{TWILIO_SID}\"\nfrom = \"{service}\"\nkey_file = \"sms.key\"\n",
        fake.url()
    );
    let sender = support::sms::sender(&text, dir.path());

    sender.send(&message("#01#0#")).await.unwrap();

    assert_eq!(
        form_of(&fake),
        pairs(&[("To", PHONE), ("MessagingServiceSid", service), ("Body", "#01#0#")])
    );
}

#[tokio::test]
async fn smsru_posts_the_api_id_in_the_form_and_keeps_the_sms_id() {
    let fake = FakeProvider::start(Kind::Smsru).await;
    let (sender, _dir) = sender(&fake, Kind::Smsru, SECRET);

    let outcome = sender.send(&message(CYRILLIC)).await;

    assert_eq!(
        outcome,
        Ok(Delivered { backend: "http".into(), reference: Some("000000-10000001".into()) })
    );
    assert_eq!(
        form_of(&fake),
        pairs(&[("api_id", SECRET), ("to", "79991234567"), ("msg", CYRILLIC), ("json", "1")])
    );
}

#[tokio::test]
async fn smsc_posts_login_and_password_as_utf8_json_and_keeps_the_id() {
    let fake = FakeProvider::start(Kind::Smsc).await;
    let (sender, _dir) = sender(&fake, Kind::Smsc, SECRET);

    let outcome = sender.send(&message(CYRILLIC)).await;

    assert_eq!(outcome, Ok(Delivered { backend: "http".into(), reference: Some("4242".into()) }));
    assert_eq!(
        form_of(&fake),
        pairs(&[
            ("login", "watchdog-login"),
            ("psw", SECRET),
            ("phones", "79991234567"),
            ("mes", CYRILLIC),
            ("fmt", "3"),
            ("charset", "utf-8"),
        ])
    );
}

#[tokio::test]
async fn vonage_posts_key_and_secret_and_says_unicode_only_when_needed() {
    let fake = FakeProvider::start(Kind::Vonage).await;
    let (sender, _dir) = sender(&fake, Kind::Vonage, SECRET);

    let outcome = sender.send(&message(CYRILLIC)).await;
    sender.send(&message("#12#0#1#1# {ok} [x]")).await.unwrap();

    assert_eq!(
        outcome,
        Ok(Delivered { backend: "http".into(), reference: Some("0A0000001234ABCD".into()) })
    );
    let forms: Vec<_> = fake.received().iter().map(|r| decode(&r.body_text())).collect();
    let expected = |text: &str, kind: &str| {
        pairs(&[
            ("api_key", "a1b2c3d4"),
            ("api_secret", SECRET),
            ("from", "WATCHDOG"),
            ("to", "79991234567"),
            ("text", text),
            ("type", kind),
        ])
    };
    assert_eq!(forms, [expected(CYRILLIC, "unicode"), expected("#12#0#1#1# {ok} [x]", "text")]);
    assert_eq!(fake.sent().len(), 2);
}

/// What one send came to, as the journal would have it.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Failed(String),
    Uncertain(String),
}

/// Sends through a fake of `kind` in each documented trouble, and returns
/// each outcome with `{url}` and `{key}` standing for the send call's URL
/// and the key file. Checks that nothing shown has the secret in it, and
/// that nothing was sent.
async fn troubles(kind: Kind) -> Vec<Seen> {
    let fake = FakeProvider::start(kind).await;
    let (good, dir) = sender(&fake, kind, SECRET);
    let (wrong, wrong_dir) = sender(&fake, kind, WRONG_SECRET);
    let mut outcomes = vec![wrong.send(&message("x")).await];
    outcomes.push(good.send(&Message { phone: "+70001234567".into(), text: "x".into() }).await);
    for fault in [
        ProviderFault::NoBalance,
        ProviderFault::RateLimit,
        ProviderFault::ServerError,
        ProviderFault::NotTheApi,
        ProviderFault::Echo,
    ] {
        fake.set_fault(Some(fault));
        outcomes.push(good.send(&message("x")).await);
    }
    let secrets = [
        "s3cr".to_string(),
        "wr0ng".to_string(),
        base64(&format!("{TWILIO_SID}:{SECRET}")),
        base64(&format!("{TWILIO_SID}:{WRONG_SECRET}")),
    ];
    let key = dir.path().join("sms.key").display().to_string();
    let wrong_key = wrong_dir.path().join("sms.key").display().to_string();
    let seen = outcomes
        .into_iter()
        .map(|outcome| {
            let shown = format!("{outcome:?}");
            for secret in &secrets {
                assert!(!shown.contains(secret.as_str()), "{secret} in {shown}");
            }
            let tidy = |reason: String| {
                reason
                    .replace(&fake.send_url(), "{url}")
                    .replace(&wrong_key, "{key}")
                    .replace(&key, "{key}")
            };
            match outcome {
                Err(SendError::Definite { reason }) => Seen::Failed(tidy(reason)),
                Err(SendError::Uncertain { reason }) => Seen::Uncertain(tidy(reason)),
                Ok(delivered) => panic!("{kind:?}: sent despite the trouble: {delivered:?}"),
            }
        })
        .collect();
    assert!(fake.sent().is_empty(), "{:?}", fake.sent());
    seen
}

fn failed(text: &str) -> Seen {
    Seen::Failed(text.to_string())
}

fn uncertain(text: &str) -> Seen {
    Seen::Uncertain(text.to_string())
}

#[tokio::test]
async fn twilio_refusals_fail_and_server_errors_are_uncertain() {
    assert_eq!(
        troubles(Kind::Twilio).await,
        [
            failed("{url} answered HTTP 401 Unauthorized: Authenticate (Twilio error 20003); check account and the Auth Token (file {key})"),
            failed("{url} answered HTTP 400 Bad Request: The 'To' number +70001234567 is not a valid phone number. (Twilio error 21211); check the recipient's phone number"),
            failed("{url} answered HTTP 401 Unauthorized: Account not active (Twilio error 20005); top up the account"),
            failed("{url} answered HTTP 429 Too Many Requests: Too Many Requests (Twilio error 20429); the provider is limiting the rate of messages"),
            uncertain("{url} answered HTTP 500 Internal Server Error: upstream error; Twilio may have sent the message"),
            uncertain("{url} answered HTTP 200 OK but not as Twilio documents, so the message may have left: <html><body>Maintenance</body></html>"),
            failed("{url} answered HTTP 400 Bad Request: got To=%2B79991234567&From=%2B15005550006&Body=x Basic ***"),
        ]
    );
}

#[tokio::test]
async fn smsru_errors_inside_http_200_fail_and_server_errors_are_uncertain() {
    assert_eq!(
        troubles(Kind::Smsru).await,
        [
            failed("{url} answered HTTP 200 OK: Неправильный api_id (SMS.RU status_code 200); check the api_id (file {key})"),
            failed("{url} answered HTTP 200 OK: Неправильно указан номер телефона получателя, либо на него нет маршрута (SMS.RU status_code 202); check the recipient's phone number"),
            failed("{url} answered HTTP 200 OK: Не хватает средств на лицевом счету (SMS.RU status_code 201); top up the account"),
            failed("{url} answered HTTP 200 OK: Превышен лимит одинаковых сообщений на этот номер в минуту (SMS.RU status_code 231); the provider is limiting the rate of messages"),
            uncertain("{url} answered HTTP 500 Internal Server Error: upstream error; SMS.RU may have sent the message"),
            uncertain("{url} answered HTTP 200 OK but not as SMS.RU documents, so the message may have left: <html><body>Maintenance</body></html>"),
            failed("{url} answered HTTP 400 Bad Request: got api_id=***&to=79991234567&msg=x&json=1"),
        ]
    );
}

#[tokio::test]
async fn smsc_error_codes_fail_and_server_errors_are_uncertain() {
    assert_eq!(
        troubles(Kind::Smsc).await,
        [
            failed("{url} answered HTTP 200 OK: authorise error (SMSC.RU error_code 2); check account and the password (file {key})"),
            failed("{url} answered HTTP 200 OK: invalid number (SMSC.RU error_code 7); check the recipient's phone number"),
            failed("{url} answered HTTP 200 OK: no money (SMSC.RU error_code 3); top up the account"),
            failed("{url} answered HTTP 200 OK: duplicate request, wait a minute (SMSC.RU error_code 9); the provider is limiting the rate of messages"),
            uncertain("{url} answered HTTP 500 Internal Server Error: upstream error; SMSC.RU may have sent the message"),
            uncertain("{url} answered HTTP 200 OK but not as SMSC.RU documents, so the message may have left: <html><body>Maintenance</body></html>"),
            failed("{url} answered HTTP 400 Bad Request: got login=watchdog-login&psw=***&phones=79991234567&mes=x&fmt=3&charset=utf-8"),
        ]
    );
}

#[tokio::test]
async fn vonage_statuses_fail_and_server_errors_are_uncertain() {
    assert_eq!(
        troubles(Kind::Vonage).await,
        [
            failed("{url} answered HTTP 200 OK: Bad Credentials (Vonage status 4); check account and the API secret (file {key})"),
            failed("{url} answered HTTP 200 OK: Unroutable message - rejected (Vonage status 6); check the recipient's phone number"),
            failed("{url} answered HTTP 200 OK: Quota Exceeded - rejected (Vonage status 9); top up the account"),
            failed("{url} answered HTTP 200 OK: Throughput Rate Exceeded - please wait [ 1000 ] and retry (Vonage status 1); the provider is limiting the rate of messages"),
            uncertain("{url} answered HTTP 500 Internal Server Error: upstream error; Vonage may have sent the message"),
            uncertain("{url} answered HTTP 200 OK but not as Vonage documents, so the message may have left: <html><body>Maintenance</body></html>"),
            failed("{url} answered HTTP 400 Bad Request: got api_key=a1b2c3d4&api_secret=***&from=WATCHDOG&to=79991234567&text=x&type=text"),
        ]
    );
}

/// `jobctl send` through a provider preset: the provider's id is the
/// journalled reference, and a provider quoting the request back (key
/// included) reaches neither the journal nor `jobctl history` with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobctl_journals_the_providers_reference_and_never_its_secret() {
    use support::rules_file;
    for (kind, reference) in
        [(Kind::Twilio, "SM0123456789abcdef0123456789abcdef"), (Kind::Smsc, "4242")]
    {
        let fake = FakeProvider::start(kind).await;
        let dir = tempfile::tempdir().unwrap();
        support::write_secret(&dir.path().join("sms.key"), &format!("{SECRET}\n"));
        let mut http = format!("preset = \"{}\"\nurl = \"{}\"\n", kind.preset(), fake.url());
        if let Some(account) = kind.account() {
            http += &format!("account = \"{account}\"\n");
        }
        if let Some(from) = from(kind) {
            http += &format!("from = \"{from}\"\n");
        }
        let rules = rules_file::head(&support::closed_url(), "1s", "1s", "journal.db")
            + &format!("[sms]\nbackend = \"http\"\n\n[sms.http]\n{http}key_file = \"sms.key\"\n\n")
            + &rules_file::socket("lobby", "+7 999 123-45-67", "simpal-d210", "12", "30785");
        std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
        let jobctl = |args: &[&str]| {
            let mut command = support::process::command(env!("CARGO_BIN_EXE_jobctl"), dir.path());
            command.args(["--config", "rules.toml"]).args(args).env("JOURNAL_STREAM", "8:1");
            support::process::run(&mut command)
        };
        let mut shown = Vec::new();

        let sent = jobctl(&["send", "lobby", "power_cycle", "minutes=1"]);
        assert_eq!(sent.code, 0, "{sent:?}");
        fake.set_fault(Some(ProviderFault::Echo));
        let refused = jobctl(&["send", "lobby", "power_cycle", "minutes=1"]);
        assert!(refused.stderr.contains("answered HTTP 400 Bad Request: got "), "{refused:?}");
        shown.extend([sent.stdout, sent.stderr, refused.stdout, refused.stderr]);

        let history = jobctl(&["history", "--format", "json"]);
        assert_eq!(history.code, 0, "{history:?}");
        let rows: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
        let rows = rows.as_array().unwrap();
        let first = rows.iter().find(|r| r["outcome"] == "sent").expect("a sent row");
        assert_eq!(first["detail"], reference, "{first}");
        let failed = rows.iter().find(|r| r["outcome"] == "failed").expect("a failed row");
        let detail = failed["detail"].as_str().unwrap();
        assert!(detail.contains("***"), "{detail}");
        shown.push(history.stdout);
        for name in ["journal.db", "journal.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.path().join(name)) {
                shown.push(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
        let basic = base64(&format!("{TWILIO_SID}:{SECRET}"));
        for text in &shown {
            assert!(!text.contains("s3cr") && !text.contains(&basic), "{kind:?}: {text}");
        }
        assert_eq!(fake.sent().len(), 1);
    }
}
