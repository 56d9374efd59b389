//! Fakes of the SMS providers `[sms.http]` has presets for (Twilio,
//! SMS.RU, SMSC.RU, Vonage), as one real HTTP server on loopback that
//! speaks the chosen provider's documented send call.
//!
//! Each checks the request as its provider documents it (method, path,
//! credentials and the fields it requires) and answers as the provider
//! does: its success answer, and its error answers for bad credentials,
//! a bad number (any number starting `+7000` or `7000` is one), no
//! balance and a rate limit (switched on with [`ProviderFault`]). Two more
//! faults stand for what no provider documents: an HTTP 500, and a 200
//! whose body is not the documented answer. A last one echoes the request
//! (body and `Authorization` header) in a 400, credentials included.
//!
//! ```ignore
//! let fake = FakeProvider::start(Kind::Smsc).await;
//! fake.set_fault(Some(ProviderFault::NoBalance));
//! // … send through `preset = "smsc"`, url = fake.url(), account = fake.account() …
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::fake_gateway::{ReceivedRequest, SentSms};

/// The provider a fake speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Twilio,
    Smsru,
    Smsc,
    Vonage,
}

impl Kind {
    /// The preset's name in the rules file.
    pub(crate) fn preset(self) -> &'static str {
        match self {
            Kind::Twilio => "twilio",
            Kind::Smsru => "smsru",
            Kind::Smsc => "smsc",
            Kind::Vonage => "vonage",
        }
    }

    /// The path the provider's send call is at.
    pub(crate) fn path(self) -> String {
        match self {
            Kind::Twilio => format!("/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"),
            Kind::Smsru => "/sms/send".into(),
            Kind::Smsc => "/sys/send.php".into(),
            Kind::Vonage => "/sms/json".into(),
        }
    }

    /// The non-secret part of the credentials (`account`), if any.
    pub(crate) fn account(self) -> Option<&'static str> {
        match self {
            Kind::Twilio => Some(TWILIO_SID),
            Kind::Smsru => None,
            Kind::Smsc => Some("watchdog-login"),
            Kind::Vonage => Some("a1b2c3d4"),
        }
    }
}

/// The Account SID the Twilio fake expects.
pub(crate) const TWILIO_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// The secret every fake expects (Auth Token, api_id, password, API
/// secret), with characters that every encoding changes.
pub(crate) const SECRET: &str = "s3cr+t/k3y=&";

/// Something going wrong at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProviderFault {
    /// The account has no money left.
    NoBalance,
    /// Too many messages: the provider's rate limit.
    RateLimit,
    /// HTTP 500 with a plain-text body.
    ServerError,
    /// HTTP 200 with an HTML page instead of the documented answer.
    NotTheApi,
    /// HTTP 400 quoting the request's body and Authorization header.
    Echo,
}

#[derive(Default)]
struct State {
    received: Vec<ReceivedRequest>,
    sent: Vec<SentSms>,
    fault: Option<ProviderFault>,
}

/// The running fake; stops when dropped.
pub(crate) struct FakeProvider {
    addr: SocketAddr,
    kind: Kind,
    state: Arc<Mutex<State>>,
    _stop: oneshot::Sender<()>,
}

impl FakeProvider {
    /// Starts a fake of `kind` on `127.0.0.1:0`, expecting [`SECRET`].
    pub(crate) async fn start(kind: Kind) -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task_state = state.clone();
        let handler = move |req| {
            let state = task_state.clone();
            async move { handle(kind, req, &state).await }
        };
        tokio::spawn(signage_watchdog::http::serve_with(listener, handler, async move {
            let _ = stopped.await;
        }));
        FakeProvider { addr, kind, state, _stop: stop }
    }

    /// Base URL, `http://127.0.0.1:<port>`, what `url` replaces.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The provider it fakes.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The URL of the send call, as errors show it.
    pub(crate) fn send_url(&self) -> String {
        format!("{}{}", self.url(), self.kind.path())
    }

    /// Every request received so far.
    pub(crate) fn received(&self) -> Vec<ReceivedRequest> {
        self.state.lock().unwrap().received.clone()
    }

    /// The messages the fake accepted.
    pub(crate) fn sent(&self) -> Vec<SentSms> {
        self.state.lock().unwrap().sent.clone()
    }

    /// Applies `fault` to every following request until set to `None`.
    pub(crate) fn set_fault(&self, fault: Option<ProviderFault>) {
        self.state.lock().unwrap().fault = fault;
    }
}

async fn handle(kind: Kind, req: Request<Incoming>, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let received = ReceivedRequest::read(req).await;
    let fault = {
        let mut state = state.lock().unwrap();
        state.received.push(received.clone());
        state.fault
    };
    match fault {
        Some(ProviderFault::ServerError) => {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "upstream error\n".into())
        }
        Some(ProviderFault::NotTheApi) => {
            return reply(StatusCode::OK, "<html><body>Maintenance</body></html>".into())
        }
        Some(ProviderFault::Echo) => {
            let auth = received.header("authorization").unwrap_or("").to_string();
            return reply(StatusCode::BAD_REQUEST, format!("got {} {auth}", received.body_text()));
        }
        _ => {}
    }
    if received.method != "POST" {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into());
    }
    if received.path != kind.path() {
        return reply(StatusCode::NOT_FOUND, "not found".into());
    }
    let form = if received
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
    {
        decode(&received.body_text())
    } else {
        Vec::new()
    };
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let answer = match kind {
        Kind::Twilio => twilio(&received, &field, fault),
        Kind::Smsru => smsru(&field, fault),
        Kind::Smsc => smsc(&field, fault),
        Kind::Vonage => vonage(&field, fault),
    };
    match answer {
        Answer::Sent { number, text, reply: (status, body) } => {
            state.lock().unwrap().sent.push(SentSms { number, text });
            reply(status, body.to_string())
        }
        Answer::Refused(status, body) => reply(status, body.to_string()),
    }
}

enum Answer {
    Sent { number: String, text: String, reply: (StatusCode, Value) },
    Refused(StatusCode, Value),
}

fn bad_number(number: &str) -> bool {
    number.trim_start_matches('+').starts_with("7000")
}

fn twilio(
    req: &ReceivedRequest,
    field: &dyn Fn(&str) -> Option<String>,
    fault: Option<ProviderFault>,
) -> Answer {
    let error = |status: StatusCode, code: u32, message: &str| {
        Answer::Refused(
            status,
            json!({"code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()}),
        )
    };
    let expected = format!("Basic {}", base64(&format!("{TWILIO_SID}:{SECRET}")));
    if req.header("authorization") != Some(expected.as_str()) {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let (Some(to), Some(body)) = (field("To"), field("Body")) else {
        return error(StatusCode::BAD_REQUEST, 21604, "A 'To' phone number is required.");
    };
    if field("From").is_none() && field("MessagingServiceSid").is_none() {
        return error(StatusCode::BAD_REQUEST, 21603, "A 'From' phone number is required.");
    }
    match fault {
        Some(ProviderFault::NoBalance) => {
            return error(StatusCode::UNAUTHORIZED, 20005, "Account not active")
        }
        Some(ProviderFault::RateLimit) => {
            return error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests")
        }
        _ => {}
    }
    if bad_number(&to) {
        return error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    let reply = json!({
        "sid": "SM0123456789abcdef0123456789abcdef", "status": "queued",
        "to": to, "body": body, "account_sid": TWILIO_SID, "error_code": null,
    });
    Answer::Sent { number: to, text: body, reply: (StatusCode::CREATED, reply) }
}

fn smsru(field: &dyn Fn(&str) -> Option<String>, fault: Option<ProviderFault>) -> Answer {
    let error = |code: u32, text: &str| {
        Answer::Refused(
            StatusCode::OK,
            json!({"status": "ERROR", "status_code": code, "status_text": text}),
        )
    };
    if field("api_id").as_deref() != Some(SECRET) {
        return error(200, "Неправильный api_id");
    }
    if field("json").as_deref() != Some("1") {
        // Without json=1 the answer is lines of text, not JSON.
        return Answer::Refused(StatusCode::OK, json!("200"));
    }
    let (Some(to), Some(msg)) = (field("to"), field("msg")) else {
        return error(203, "Нет текста сообщения");
    };
    if fault == Some(ProviderFault::NoBalance) {
        return error(201, "Не хватает средств на лицевом счету");
    }
    let number = |status: Value| json!({"status": "OK", "status_code": 100, "sms": {to.clone(): status}, "balance": 4.5});
    if fault == Some(ProviderFault::RateLimit) {
        return Answer::Refused(
            StatusCode::OK,
            number(
                json!({"status": "ERROR", "status_code": 231, "status_text": "Превышен лимит одинаковых сообщений на этот номер в минуту"}),
            ),
        );
    }
    if bad_number(&to) {
        return Answer::Refused(
            StatusCode::OK,
            number(
                json!({"status": "ERROR", "status_code": 202, "status_text": "Неправильно указан номер телефона получателя, либо на него нет маршрута"}),
            ),
        );
    }
    let reply = number(json!({"status": "OK", "status_code": 100, "sms_id": "000000-10000001"}));
    Answer::Sent { number: to, text: msg, reply: (StatusCode::OK, reply) }
}

fn smsc(field: &dyn Fn(&str) -> Option<String>, fault: Option<ProviderFault>) -> Answer {
    let error = |code: u32, text: &str| {
        Answer::Refused(StatusCode::OK, json!({"error": text, "error_code": code}))
    };
    if field("fmt").as_deref() != Some("3") || field("charset").as_deref() != Some("utf-8") {
        return error(1, "parameters error");
    }
    if field("login").as_deref() != Kind::Smsc.account() || field("psw").as_deref() != Some(SECRET)
    {
        return error(2, "authorise error");
    }
    let (Some(phones), Some(mes)) = (field("phones"), field("mes")) else {
        return error(1, "parameters error");
    };
    match fault {
        Some(ProviderFault::NoBalance) => return error(3, "no money"),
        Some(ProviderFault::RateLimit) => return error(9, "duplicate request, wait a minute"),
        _ => {}
    }
    if bad_number(&phones) {
        return error(7, "invalid number");
    }
    Answer::Sent {
        number: phones,
        text: mes,
        reply: (StatusCode::OK, json!({"id": 4242, "cnt": 1})),
    }
}

fn vonage(field: &dyn Fn(&str) -> Option<String>, fault: Option<ProviderFault>) -> Answer {
    let error = |status: &str, text: &str| {
        Answer::Refused(
            StatusCode::OK,
            json!({"message-count": "1", "messages": [{"status": status, "error-text": text}]}),
        )
    };
    let (Some(from), Some(to), Some(text)) = (field("from"), field("to"), field("text")) else {
        return error("2", "Missing from param");
    };
    if field("api_key").as_deref() != Kind::Vonage.account()
        || field("api_secret").as_deref() != Some(SECRET)
    {
        return error("4", "Bad Credentials");
    }
    let _ = from;
    match fault {
        Some(ProviderFault::NoBalance) => return error("9", "Quota Exceeded - rejected"),
        Some(ProviderFault::RateLimit) => {
            return error("1", "Throughput Rate Exceeded - please wait [ 1000 ] and retry")
        }
        _ => {}
    }
    if bad_number(&to) {
        return error("6", "Unroutable message - rejected");
    }
    let reply = json!({"message-count": "1", "messages": [{
        "to": to, "message-id": "0A0000001234ABCD", "status": "0",
        "remaining-balance": "3.14159265", "message-price": "0.03330000", "network": "25001",
    }]});
    Answer::Sent { number: to, text, reply: (StatusCode::OK, reply) }
}

/// Decoded `application/x-www-form-urlencoded` pairs.
pub(crate) fn decode(encoded: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://fake.invalid/?{encoded}")).expect("form parses");
    url.query_pairs().map(|(n, v)| (n.into_owned(), v.into_owned())).collect()
}

/// Standard base64 with padding, as basic auth sends it.
pub(crate) fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let json = body.starts_with('{') || body.starts_with('"');
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let content_type = if json { "application/json" } else { "text/html; charset=utf-8" };
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
