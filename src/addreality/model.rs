//! The AddReality device list, read defensively.
//!
//! Nothing about the API's answers is documented, so parsing is lenient where
//! it can be and strict only where it must: a page must be JSON with a
//! `data` array, but one odd device in it is skipped (and counted) rather than
//! failing the whole page. Unknown fields are kept in [`Listed::raw`].

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// One player as the API last described it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// Device id, unique within a platform.
    pub id: i64,
    /// Free text chosen by the customer: may contain anything.
    pub name: String,
    /// `"online"`, `"offline"` or something new; `None` when absent or null.
    pub connection_state: Option<String>,
    /// `"playback"`, `"pause"`, …; `None` when absent or null.
    pub player_status: Option<String>,
    /// When the player was last connected, as Unix seconds.
    pub last_online: Option<f64>,
    /// Whether the player is activated.
    pub activation_state: Option<bool>,
    /// Player software version.
    pub player_version: Option<String>,
    /// The player's UTC offset, e.g. `"+01:00"`.
    pub time_zone: Option<String>,
}

/// A device fresh from the API, with the object exactly as received (unknown
/// fields included) for the cache. Only the cache keeps `raw`; what the
/// exporter holds in memory is the [`Device`] alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The fields the exporter uses.
    pub device: Device,
    /// The JSON object as received.
    pub raw: String,
}

impl Device {
    /// An activated player, online and playing, for unit tests.
    #[cfg(test)]
    pub(crate) fn online_for_tests(id: i64, name: &str) -> Device {
        Device {
            id,
            name: name.to_owned(),
            connection_state: Some("online".into()),
            player_status: Some("playback".into()),
            last_online: Some(1_748_266_148.166),
            activation_state: Some(true),
            player_version: Some("4.1.76".into()),
            time_zone: Some("+01:00".into()),
        }
    }

    /// Whether the player is connected to the cloud.
    pub fn is_online(&self) -> bool {
        self.connection_state.as_deref() == Some("online")
    }

    /// Whether the player is playing content.
    pub(crate) fn is_playing(&self) -> bool {
        self.player_status.as_deref() == Some("playback")
    }
}

/// One page of `device/list`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Page {
    /// `pagination.total`, when the server sent a usable one.
    pub(crate) total: Option<u64>,
    /// Number of entries in `data`, good or bad.
    pub(crate) entries: usize,
    /// The devices that could be read.
    pub(crate) devices: Vec<Listed>,
    /// Entries that could not be read, with why.
    pub(crate) skipped: Vec<SkippedDevice>,
}

/// A `data[]` entry that was not a usable device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedDevice {
    /// Position in `data`.
    pub index: usize,
    /// Why it was skipped, e.g. `device has no integer "id"`.
    pub(crate) reason: String,
}

/// Why a whole page could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The body is not JSON at all (an HTML error page, a truncated answer).
    #[error("response is not valid JSON ({detail}); it starts with {start:?}")]
    NotJson {
        /// serde_json's description, with line and column.
        detail: String,
        /// The first characters of the body, to recognise an HTML page.
        start: String,
    },
    /// JSON, but without a `data` array.
    #[error("response has no \"data\" array")]
    NoData,
}

#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(default, borrow)]
    pagination: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<Vec<&'a RawValue>>,
}

/// How much of a body that is not JSON [`PageError::NotJson`] quotes.
pub(crate) const NOT_JSON_START_CHARS: usize = 40;

/// The first [`NOT_JSON_START_CHARS`] characters of `text`.
pub(crate) fn not_json_start(text: &str) -> String {
    text.chars().take(NOT_JSON_START_CHARS).collect()
}

/// Parses one `device/list` response body.
pub(crate) fn parse_page(body: &[u8]) -> Result<Page, PageError> {
    let raw: RawPage<'_> = serde_json::from_slice(body).map_err(|err| PageError::NotJson {
        detail: err.to_string(),
        start: not_json_start(&String::from_utf8_lossy(body)),
    })?;
    let data = raw.data.ok_or(PageError::NoData)?;
    let total = raw
        .pagination
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .and_then(|p| p.get("total").and_then(Value::as_u64));
    let mut devices = Vec::with_capacity(data.len());
    let mut skipped = Vec::new();
    for (index, entry) in data.iter().enumerate() {
        match parse_device(entry) {
            Ok(device) => devices.push(device),
            Err(reason) => skipped.push(SkippedDevice { index, reason }),
        }
    }
    Ok(Page { total, entries: data.len(), devices, skipped })
}

fn parse_device(entry: &RawValue) -> Result<Listed, String> {
    let value: Value = serde_json::from_str(entry.get()).map_err(|e| e.to_string())?;
    let object = value.as_object().ok_or("device is not a JSON object")?;
    let id = match object.get("id") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or("device has no integer \"id\"")?;
    let text = |key: &str| match object.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let activation_state = match object.get("activation_state") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::Number(n)) => n.as_i64().map(|n| n != 0),
        _ => None,
    };
    let last_online = text("last_online").and_then(|t| parse_timestamp(&t));
    let device = Device {
        id,
        name: text("name").unwrap_or_default(),
        connection_state: text("connection_state"),
        player_status: text("player_status"),
        last_online,
        activation_state,
        player_version: text("player_version"),
        time_zone: text("time_zone"),
    };
    Ok(Listed { device, raw: entry.get().to_string() })
}

/// RFC 3339 (with any offset, fractional seconds optional) to Unix seconds.
fn parse_timestamp(text: &str) -> Option<f64> {
    let ts: jiff::Timestamp = text.trim().parse().ok()?;
    Some(ts.as_millisecond() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_device_and_keeps_unknown_fields() {
        let body = br#"{"pagination":{"offset":0,"limit":300,"total":1},"data":[
            {"id":30785,"name":"Arzamas_Lesnaia_1","connection_state":"online",
             "player_status":"playback","last_online":"2025-05-26T13:29:08.166738Z",
             "activation_state":true,"player_version":"4.1.76","time_zone":"+01:00",
             "group":{"id":7}}]}"#;
        let page = parse_page(body).unwrap();
        assert_eq!(page.total, Some(1));
        assert_eq!(page.entries, 1);
        let device = &page.devices[0].device;
        assert_eq!(device.id, 30785);
        assert!(device.is_online() && device.is_playing());
        assert_eq!(device.last_online, Some(1_748_266_148.166));
        assert_eq!(device.activation_state, Some(true));
        assert!(page.devices[0].raw.contains("\"group\":{\"id\":7}"));
    }

    #[test]
    fn odd_devices_are_skipped_not_fatal() {
        let body = br#"{"pagination":{"total":4},"data":[
            {"id":1,"name":null,"connection_state":null,"last_online":null},
            {"name":"no id"},
            "not an object",
            {"id":"4","last_online":"yesterday","activation_state":1}]}"#;
        let page = parse_page(body).unwrap();
        let ids: Vec<i64> = page.devices.iter().map(|d| d.device.id).collect();
        assert_eq!(ids, [1, 4]);
        assert_eq!(page.devices[0].device.name, "");
        assert_eq!(page.devices[0].device.connection_state, None);
        assert_eq!(page.devices[1].device.last_online, None);
        assert_eq!(page.devices[1].device.activation_state, Some(true));
        let reasons: Vec<&str> = page.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(reasons, ["device has no integer \"id\"", "device is not a JSON object"]);
    }

    #[test]
    fn html_and_truncated_bodies_are_page_errors() {
        let err = parse_page(b"<html><body>502 Bad Gateway</body></html>").unwrap_err();
        assert!(
            err.to_string().contains("starts with \"<html><body>502 Bad Gateway</body></html\""),
            "{err}"
        );
        let err = parse_page(br#"{"pagination":{"total":2},"data":[{"id":1},"#).unwrap_err();
        assert!(matches!(err, PageError::NotJson { .. }), "{err}");
        assert_eq!(parse_page(br#"{"error":"x"}"#).unwrap_err(), PageError::NoData);
    }
}
