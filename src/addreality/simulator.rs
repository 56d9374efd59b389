//! A stand-in for the AddReality device-list API, served over real HTTP.
//!
//! The tests need the failures the real service may show (refused tokens,
//! rate limits, 5xx, HTML and truncated bodies, ignored offsets, wrong
//! totals, slowness) on demand, and the exporter's `--demo` mode needs a
//! believable fleet whose players go offline and come back without an
//! account. Both use this one simulator, so it is a real hyper server that
//! speaks the API as far as it is known (see the design notes): `POST
//! /public/v1/device/list` with `X-API-Token`, a `{"id", "limit", "offset"}`
//! body, and `{"pagination", "data"}` pages.
//!
//! The state sits behind a `std::sync::Mutex`: it is held for a few
//! microseconds to copy a page or flip a fault and never across an `.await`,
//! which is the case where the standard mutex is the right tool.
//!
//! Where the real API's behaviour is unknown the simulator is lenient and
//! says so in its docs: an empty body lists everything, a `limit` above the
//! cap is lowered to the cap, an offset past the end gives an empty page.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The path of the device list, as on the real service.
pub const DEVICE_LIST_PATH: &str = "/public/v1/device/list";

/// Page size when a request gives no `limit`.
pub(crate) const DEFAULT_LIMIT: u64 = 300;

/// Largest page served unless [`Simulator::set_max_limit`] says otherwise.
pub(crate) const DEFAULT_MAX_LIMIT: u64 = 300;

/// Requests kept for [`Simulator::requests`]; older ones are forgotten so
/// that a long `--demo` run does not grow without bound.
pub(crate) const REQUEST_LOG_SIZE: usize = 10_000;

/// Largest request body read; the real requests are a few dozen bytes.
const MAX_REQUEST_BODY: usize = 64 * 1024;

/// Offline players come back in [`Simulator::churn`] only if they were seen
/// within this long: older ones are dead and need a power cycle.
const REVIVABLE_WITHIN: Duration = Duration::from_secs(24 * 3600);

/// Per [`Simulator::churn`] step, the chance that a revivable offline player
/// comes back.
const CHANCE_BACK_ONLINE: f64 = 0.25;

/// Per step, the chance that an online player drops off: chosen so that about
/// one activated player in ten is offline at any time.
const CHANCE_GOING_OFFLINE: f64 = CHANCE_BACK_ONLINE * 0.1 / 0.9;

/// A failure or oddity the simulator can show.
///
/// Faults apply to device-list requests only, and before the token is
/// checked, as a proxy or rate limiter in front of the API would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 401 with a JSON error, whatever the token.
    Unauthorized,
    /// 403 with a JSON error, whatever the token.
    Forbidden,
    /// 429 with `Retry-After: {retry_after_secs}`.
    TooManyRequests {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: u32,
    },
    /// 500 with a JSON error.
    ServerError,
    /// 200 with an HTML maintenance page, as a proxy or CDN in front of the
    /// API may send: only the body tells the client something is wrong.
    HtmlErrorPage,
    /// 200 with the right page cut in the middle (the length header matches
    /// the cut body, so only parsing notices).
    TruncatedJson,
    /// Pages always start at the beginning, whatever `offset` says.
    IgnoreOffset,
    /// `pagination.total` announces `extra` more devices than exist.
    LieAboutTotal {
        /// Devices announced but never sent.
        extra: u64,
    },
    /// `pagination` has no `total`.
    OmitTotal,
    /// No answer until the fault is changed ([`Simulator::set_fault`]) or
    /// the simulator stops: a client sees its request time out.
    Hang,
    /// 200 with the right page padded to at least `bytes` bytes (a long
    /// `"padding"` string, so the body is still a valid page): only its
    /// size is wrong, as with a runaway proxy or a hostile server.
    OversizedPage {
        /// The least length of the body.
        bytes: usize,
    },
}

/// One request as the simulator saw it, for tests to check what a client
/// sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// Whether `X-API-Token` was the accepted token.
    pub token_ok: bool,
    /// Whether `Content-Type` was `application/json`.
    pub json_content_type: bool,
    /// `offset` from the body, if it had one.
    pub offset: Option<u64>,
    /// `limit` from the body, if it had one.
    pub limit: Option<u64>,
    /// `id` filter from the body (empty = all devices).
    pub ids: Vec<i64>,
    /// The fault applied to this request, if any.
    pub fault: Option<Fault>,
    /// The status answered.
    pub status: u16,
}

/// A simulated AddReality account. Clones share the same state, so one
/// handle can serve while another switches faults or churns devices.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

struct Shared {
    token: String,
    state: Mutex<State>,
    /// Bumped when the fault changes or the simulator stops: requests held
    /// by [`Fault::Hang`] are then answered.
    release: tokio::sync::watch::Sender<u64>,
}

struct State {
    devices: Vec<Value>,
    max_limit: u64,
    fault: Option<Fault>,
    queued: VecDeque<Fault>,
    requests: VecDeque<SeenRequest>,
    request_count: u64,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state();
        f.debug_struct("Simulator")
            .field("devices", &state.devices.len())
            .field("max_limit", &state.max_limit)
            .field("fault", &state.fault)
            .field("queued", &state.queued)
            .field("request_count", &state.request_count)
            .finish_non_exhaustive()
    }
}

/// What a device-list request asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct ListRequest {
    ids: Vec<i64>,
    limit: Option<u64>,
    offset: Option<u64>,
}

impl Simulator {
    /// An account with no devices that accepts only `token` in
    /// `X-API-Token`; any other token gets a 401 JSON error.
    pub fn new(token: &str) -> Simulator {
        let state = State {
            devices: Vec::new(),
            max_limit: DEFAULT_MAX_LIMIT,
            fault: None,
            queued: VecDeque::new(),
            requests: VecDeque::new(),
            request_count: 0,
        };
        Simulator {
            shared: Arc::new(Shared {
                token: token.to_string(),
                state: Mutex::new(state),
                release: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// The URL of the device list for a simulator listening on `addr`.
    pub fn device_list_url(addr: std::net::SocketAddr) -> String {
        format!("http://{addr}{DEVICE_LIST_PATH}")
    }

    /// A believable fleet of `count` devices, the same for the same `seed`
    /// (apart from timestamps, which are relative to now).
    ///
    /// Names look like `Arzamas_Lesnaia_1`; about one in eight is Cyrillic
    /// and a few hold quotes, backslashes, tabs or newlines. About 2% are not
    /// activated (never online, most fields null), about 10% of the others
    /// are offline (some for days), and some online players are paused.
    /// Every device also has fields the exporter does not use (`group`,
    /// `os`), as the real API sends more than is documented.
    pub fn demo_fleet(count: usize, seed: u64) -> Vec<Value> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let now = jiff::Timestamp::now().as_microsecond();
        let mut id = 30_000 + rng.i64(0..1_000);
        let mut numbers: HashMap<String, u32> = HashMap::new();
        (0..count)
            .map(|_| {
                id += rng.i64(1..=40);
                let city_index = rng.usize(..CITIES.len());
                let (city, time_zone) = CITIES[city_index];
                let roll = rng.u32(0..100);
                let base = if roll < 12 {
                    CYRILLIC_PLACES[rng.usize(..CYRILLIC_PLACES.len())].to_string()
                } else if roll < 15 {
                    AWKWARD_PLACES[rng.usize(..AWKWARD_PLACES.len())].to_string()
                } else {
                    format!("{city}_{}", STREETS[rng.usize(..STREETS.len())])
                };
                let number = numbers.entry(base.clone()).or_insert(0);
                *number += 1;
                let separator = if roll < 15 { " " } else { "_" };
                let name = format!("{base}{separator}{number}");
                let group = json!({ "id": 100 + city_index, "name": city });
                let os = match rng.u32(0..10) {
                    0..=6 => "android",
                    7..=8 => "windows",
                    _ => "linux",
                };
                if rng.u32(0..100) < 2 {
                    return json!({
                        "id": id, "name": name, "connection_state": "offline",
                        "player_status": null, "last_online": null, "activation_state": false,
                        "player_version": null, "time_zone": time_zone, "group": group, "os": os,
                    });
                }
                let online = rng.f64() >= 0.10;
                let seconds_ago = if online {
                    rng.i64(0..60)
                } else if rng.u32(0..10) < 6 {
                    rng.i64(300..6 * 3600)
                } else {
                    rng.i64(26 * 3600..7 * 24 * 3600)
                };
                let last_online = now - seconds_ago * 1_000_000 - rng.i64(0..1_000_000);
                let player_status = match rng.u32(0..100) {
                    0..=87 => "playback",
                    88..=97 => "pause",
                    _ => "stop",
                };
                let player_version = match rng.u32(0..10) {
                    0..=5 => "4.1.76",
                    6..=8 => "4.1.80",
                    _ => "4.0.59",
                };
                json!({
                    "id": id,
                    "name": name,
                    "connection_state": if online { "online" } else { "offline" },
                    "player_status": player_status,
                    "last_online": rfc3339(last_online),
                    "activation_state": true,
                    "player_version": player_version,
                    "time_zone": time_zone,
                    "group": group,
                    "os": os,
                })
            })
            .collect()
    }

    /// Replaces the account's devices. Anything is accepted, odd entries
    /// included, so that tests can check how a client copes.
    pub fn set_devices(&self, devices: Vec<Value>) {
        self.state().devices = devices;
    }

    /// A copy of the account's devices as they are now.
    #[cfg(test)]
    pub(crate) fn devices(&self) -> Vec<Value> {
        self.state().devices.clone()
    }

    /// Caps the page size: a `limit` above it is served as `max` (default
    /// [`DEFAULT_MAX_LIMIT`]).
    pub fn set_max_limit(&self, max: u64) {
        self.state().max_limit = max;
    }

    /// Applies `fault` to every request from now on (`None` to heal), except
    /// those that a [`Simulator::fail_next`] fault takes.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.state().fault = fault;
        self.shared.release.send_modify(|n| *n += 1);
    }

    /// Applies `fault` to the next `n` device-list requests only, after any
    /// faults already queued.
    pub fn fail_next(&self, n: u32, fault: Fault) {
        let mut state = self.state();
        state.queued.extend(std::iter::repeat_n(fault, n as usize));
    }

    /// The requests seen so far, oldest first (at most the last
    /// [`REQUEST_LOG_SIZE`]).
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state().requests.iter().cloned().collect()
    }

    /// How many requests were seen in all, forgotten ones included.
    pub fn request_count(&self) -> u64 {
        self.state().request_count
    }

    /// One step of life for `--demo`: a few online players drop off, some
    /// offline ones come back, and online players' `last_online` moves to
    /// now. Players offline for more than a day stay offline (they are the
    /// ones a power cycle is for), and players never activated stay so.
    /// The same `step` picks the same players, so demo runs repeat.
    pub fn churn(&self, step: u64) {
        let mut rng = fastrand::Rng::with_seed(step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC0FFEE);
        let now = jiff::Timestamp::now();
        let now_text = rfc3339(now.as_microsecond());
        let revivable_since = now.as_microsecond() - REVIVABLE_WITHIN.as_micros() as i64;
        let mut state = self.state();
        for device in state.devices.iter_mut().filter_map(Value::as_object_mut) {
            if device.get("activation_state") == Some(&Value::Bool(false)) {
                continue;
            }
            let online = device.get("connection_state").and_then(Value::as_str) == Some("online");
            if online {
                if rng.f64() < CHANCE_GOING_OFFLINE {
                    device.insert("connection_state".into(), "offline".into());
                }
                device.insert("last_online".into(), now_text.clone().into());
            } else {
                let last_seen = device
                    .get("last_online")
                    .and_then(Value::as_str)
                    .and_then(|text| text.parse::<jiff::Timestamp>().ok());
                let revivable =
                    last_seen.is_some_and(|seen| seen.as_microsecond() >= revivable_since);
                if revivable && rng.f64() < CHANCE_BACK_ONLINE {
                    device.insert("connection_state".into(), "online".into());
                    device.insert("player_status".into(), "playback".into());
                    device.insert("last_online".into(), now_text.clone().into());
                }
            }
        }
    }

    /// Serves the API on `listener` until `shutdown` completes, then lets
    /// in-flight requests finish (requests held by [`Fault::Hang`] are
    /// answered at once).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let shared = self.shared.clone();
        crate::http::serve_with(
            listener,
            move |req| {
                let simulator = self.clone();
                async move { simulator.handle(req).await }
            },
            async move {
                shutdown.await;
                shared.release.send_modify(|n| *n += 1);
            },
        )
        .await
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves consistent data behind (every
        // change is one assignment), so a poisoned lock is still usable.
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        // Subscribed before anything else, so that a change of fault while
        // the request is read still releases it.
        let released = self.shared.release.subscribe();
        let mut seen = SeenRequest {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            token_ok: req
                .headers()
                .get("x-api-token")
                .is_some_and(|value| value.as_bytes() == self.shared.token.as_bytes()),
            json_content_type: req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| value.trim_start().starts_with("application/json")),
            offset: None,
            limit: None,
            ids: Vec::new(),
            fault: None,
            status: 0,
        };
        let response = self.answer(req, &mut seen, released).await;
        seen.status = response.status().as_u16();
        tracing::debug!(
            path = seen.path,
            offset = seen.offset,
            limit = seen.limit,
            fault = ?seen.fault,
            status = seen.status,
            "simulator: answered a request"
        );
        let mut state = self.state();
        state.request_count += 1;
        if state.requests.len() == REQUEST_LOG_SIZE {
            state.requests.pop_front();
        }
        state.requests.push_back(seen);
        response
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
        seen: &mut SeenRequest,
        mut released: tokio::sync::watch::Receiver<u64>,
    ) -> Response<Full<Bytes>> {
        if seen.path != DEVICE_LIST_PATH {
            return json_error(StatusCode::NOT_FOUND, "not found");
        }
        if req.method() != Method::POST {
            let mut resp = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            return resp;
        }
        let body = match Limited::new(req.into_body(), MAX_REQUEST_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return json_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
        };
        let request = parse_list_request(&body);
        if let Ok(request) = &request {
            seen.offset = request.offset;
            seen.limit = request.limit;
            seen.ids = request.ids.clone();
        }
        let fault = {
            let mut state = self.state();
            state.queued.pop_front().or_else(|| state.fault.clone())
        };
        seen.fault = fault.clone();
        match fault {
            Some(Fault::Unauthorized) => {
                return json_error(StatusCode::UNAUTHORIZED, "invalid API token")
            }
            Some(Fault::Forbidden) => {
                return json_error(StatusCode::FORBIDDEN, "access to this platform is denied")
            }
            Some(Fault::TooManyRequests { retry_after_secs }) => {
                let mut resp = json_error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                return resp;
            }
            Some(Fault::ServerError) => {
                return json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal server error")
            }
            Some(Fault::HtmlErrorPage) => {
                let mut resp = Response::new(Full::new(Bytes::from_static(MAINTENANCE_PAGE)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                return resp;
            }
            Some(Fault::Hang) => {
                let _ = released.changed().await;
            }
            _ => {}
        }
        if !seen.token_ok {
            return json_error(StatusCode::UNAUTHORIZED, "invalid API token");
        }
        let request = match request {
            Ok(request) => request,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
        };
        let mut body = self.page(&request, fault.as_ref());
        match fault {
            Some(Fault::TruncatedJson) => body.truncate((body.len() / 2).max(1)),
            Some(Fault::OversizedPage { bytes }) => pad_page(&mut body, bytes),
            _ => {}
        }
        json_response(StatusCode::OK, body)
    }

    /// The page `request` asks for, as JSON.
    fn page(&self, request: &ListRequest, fault: Option<&Fault>) -> Vec<u8> {
        let state = self.state();
        let wanted: HashSet<i64> = request.ids.iter().copied().collect();
        let listed: Vec<&Value> = state
            .devices
            .iter()
            .filter(|device| {
                wanted.is_empty() || device_id(device).is_some_and(|id| wanted.contains(&id))
            })
            .collect();
        let limit = request.limit.unwrap_or(DEFAULT_LIMIT).min(state.max_limit);
        let offset = match fault {
            Some(Fault::IgnoreOffset) => 0,
            _ => request.offset.unwrap_or(0),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(listed.len());
        let end =
            start.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)).min(listed.len());
        let mut pagination = json!({ "offset": offset, "limit": limit });
        match fault {
            Some(Fault::OmitTotal) => {}
            Some(Fault::LieAboutTotal { extra }) => {
                pagination["total"] = (listed.len() as u64 + extra).into();
            }
            _ => pagination["total"] = listed.len().into(),
        }
        let page = json!({ "pagination": pagination, "data": &listed[start..end] });
        serde_json::to_vec(&page).expect("JSON values always serialize")
    }
}

/// Pads a JSON page to at least `bytes` bytes with a `"padding"` member
/// before its closing brace, so it stays a valid page.
fn pad_page(page: &mut Vec<u8>, bytes: usize) {
    let padding = bytes.saturating_sub(page.len()).saturating_add(16);
    if page.pop() == Some(b'}') {
        page.extend_from_slice(b",\"padding\":\"");
        page.resize(page.len() + padding, b' ');
        page.extend_from_slice(b"\"}");
    }
}

/// Reads a device-list request body. An empty body asks for everything.
fn parse_list_request(body: &[u8]) -> Result<ListRequest, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ListRequest::default());
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|err| format!("request body is not JSON: {err}"))?;
    let object = value.as_object().ok_or("request body is not a JSON object")?;
    let number = |key: &str| match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            value.as_u64().map(Some).ok_or(format!("\"{key}\" must be a non-negative integer"))
        }
    };
    let ids = match object.get("id") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(device_id)
            .collect::<Option<Vec<i64>>>()
            .ok_or("\"id\" must be an array of device ids")?,
        Some(_) => return Err("\"id\" must be an array of device ids".into()),
    };
    Ok(ListRequest { ids, limit: number("limit")?, offset: number("offset")? })
}

/// The id of a device object, or an id in a filter: an integer or a string
/// holding one.
fn device_id(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Object(object) => object.get("id").and_then(device_id),
        _ => None,
    }
}

fn rfc3339(microseconds: i64) -> String {
    jiff::Timestamp::from_microsecond(microseconds)
        .expect("timestamps near now are in range")
        .to_string()
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "error": { "code": status.as_u16(), "message": message } });
    json_response(status, body.to_string().into_bytes())
}

const MAINTENANCE_PAGE: &[u8] = b"<!DOCTYPE html>\n<html><head><title>Service temporarily \
unavailable</title></head>\n<body><h1>We'll be back soon</h1>\n<p>The service is undergoing \
maintenance.</p></body></html>\n";

/// Cities with their UTC offsets, for Latin names and `time_zone`.
const CITIES: &[(&str, &str)] = &[
    ("Arzamas", "+03:00"),
    ("Kstovo", "+03:00"),
    ("Dzerzhinsk", "+03:00"),
    ("Bor", "+03:00"),
    ("Vyksa", "+03:00"),
    ("Murom", "+03:00"),
    ("Sarov", "+03:00"),
    ("Kazan", "+03:00"),
    ("Ekaterinburg", "+05:00"),
    ("Kaliningrad", "+02:00"),
    ("Beograd", "+01:00"),
];

const STREETS: &[&str] = &[
    "Lesnaia",
    "Sovetskaia",
    "Lenina",
    "Mira",
    "Gagarina",
    "Pobedy",
    "Tsentralnaia",
    "Vokzalnaia",
    "Kirova",
];

const CYRILLIC_PLACES: &[&str] = &[
    "Нижний Новгород, Покровская",
    "Казань, ТЦ «Мега»",
    "Арзамас, ул. Лесная",
    "Екатеринбург, Вайнера",
];

/// Names that break naive quoting: quotes, a backslash, a tab, a newline.
const AWKWARD_PLACES: &[&str] = &[
    "Dzerzhinsk \"Pyaterochka\" kassa",
    "Bor\\Vokzalnaia",
    "Vyksa\nvitrina",
    "Murom 'Central'\thall",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_requests_are_read_leniently_but_not_blindly() {
        assert_eq!(parse_list_request(b""), Ok(ListRequest::default()));
        assert_eq!(
            parse_list_request(br#"{"id":[1,"2"],"limit":5,"offset":10}"#),
            Ok(ListRequest { ids: vec![1, 2], limit: Some(5), offset: Some(10) })
        );
        assert_eq!(
            parse_list_request(br#"{"limit":-1}"#),
            Err("\"limit\" must be a non-negative integer".to_string())
        );
        assert_eq!(
            parse_list_request(br#"{"id":"all"}"#),
            Err("\"id\" must be an array of device ids".to_string())
        );
        assert!(parse_list_request(b"[1]").is_err());
    }

    #[test]
    fn demo_fleets_are_repeatable_and_varied() {
        let fleet = Simulator::demo_fleet(273, 42);
        let again = Simulator::demo_fleet(273, 42);
        let names = |fleet: &[Value]| -> Vec<String> {
            fleet.iter().map(|d| d["name"].as_str().unwrap().to_string()).collect()
        };
        assert_eq!(names(&fleet), names(&again));
        assert_ne!(names(&fleet), names(&Simulator::demo_fleet(273, 43)));

        let ids: HashSet<i64> = fleet.iter().filter_map(device_id).collect();
        assert_eq!(ids.len(), 273);
        let unique_names: HashSet<String> = names(&fleet).into_iter().collect();
        assert_eq!(unique_names.len(), 273);
        let offline = fleet.iter().filter(|d| d["connection_state"] == "offline").count();
        assert!((10..=50).contains(&offline), "{offline} offline");
        assert!(fleet.iter().any(|d| d["player_status"] == "pause"));
        assert!(names(&fleet).iter().any(|n| n.chars().any(|c| ('а'..='я').contains(&c))));
        assert!(names(&fleet).iter().any(|n| n.contains(['"', '\\', '\n', '\t'])));
        for device in &fleet {
            for field in [
                "id",
                "name",
                "connection_state",
                "player_status",
                "last_online",
                "activation_state",
                "player_version",
                "time_zone",
                "group",
            ] {
                assert!(device.get(field).is_some(), "{field} missing in {device}");
            }
        }
    }

    #[test]
    fn churn_keeps_about_one_in_ten_offline_and_the_dead_dead() {
        let simulator = Simulator::new("t");
        let fleet = Simulator::demo_fleet(1000, 7);
        let dead: Vec<i64> = fleet
            .iter()
            .filter(|d| {
                d["connection_state"] == "offline"
                    && d["last_online"].as_str().is_none_or(|t| {
                        let seen: jiff::Timestamp = t.parse().unwrap();
                        jiff::Timestamp::now().duration_since(seen).as_secs() > 25 * 3600
                    })
            })
            .filter_map(device_id)
            .collect();
        assert!(!dead.is_empty());
        simulator.set_devices(fleet);
        let mut flips = 0;
        let mut before = simulator.devices();
        for step in 0..50 {
            simulator.churn(step);
            let after = simulator.devices();
            flips += before
                .iter()
                .zip(&after)
                .filter(|(b, a)| b["connection_state"] != a["connection_state"])
                .count();
            before = after;
        }
        assert!(flips > 100, "{flips} flips");
        let offline: Vec<i64> = before
            .iter()
            .filter(|d| d["connection_state"] == "offline")
            .filter_map(device_id)
            .collect();
        assert!((50..=200).contains(&offline.len()), "{} offline", offline.len());
        assert!(dead.iter().all(|id| offline.contains(id)));
    }
}
