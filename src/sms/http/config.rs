//! The `[sms.http]` table as the rules file writes it, and the presets that
//! fill in what it leaves out.
//!
//! This is the schema a sysadmin reads (every field documented with its
//! default); turning it into a request and answer rules is left to the
//! files beside it, so the schema reads on its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::config_file::HumanDuration;
use crate::sms::template::{Template, Var};
use crate::sms::SmsConfigError;

/// How long a request may take from start to the end of the answer, by default.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long connecting (DNS, TCP, TLS) may take, by default. Shorter than the
/// whole timeout so that a gateway that cannot be reached is reported as a
/// definite failure, not an uncertain one.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The method when neither the file nor a preset names one.
pub(crate) const DEFAULT_METHOD: &str = "POST";

/// Known HTTP gateways whose settings need not be spelled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HttpPreset {
    /// The gateway of the older system: `POST {url}/send?number=&text=` with
    /// `Authorization: <key>`.
    Gateway,
}

/// A check on the JSON answer of a gateway.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonCheck {
    /// RFC 6901 JSON pointer (`"/status"`, `"/sms/{phone_digits}/status"`);
    /// may use `{phone}` and `{phone_digits}`.
    pub(crate) pointer: String,
    /// The value expected there, compared as text ignoring ASCII case (`"OK"`
    /// matches `"ok"`, `100` matches `"100"`). Absent: the pointer must lead
    /// to a value that is not `null`.
    pub(crate) equals: Option<Value>,
}

/// HTTP basic authentication; values are templates (usually `password = "{key}"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BasicAuthConfig {
    /// The user name (for Twilio, the Account SID).
    pub(crate) username: String,
    /// The password; write `"{key}"` so that it comes from `key_file`/`key_env`.
    pub(crate) password: String,
}

/// The `[sms.http]` table, as written. Every field but `url` is optional;
/// fields left out take the preset's value, then the documented default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpConfig {
    /// Start from a known gateway's settings (`"gateway"`); fields written
    /// here override the preset's.
    pub(crate) preset: Option<Spanned<HttpPreset>>,
    /// Where requests go (`https://…`). With a preset, the gateway's base URL.
    pub(crate) url: Spanned<String>,
    /// Appended to `url` (preset "gateway": `"/send"`). Default: nothing.
    pub(crate) path: Option<Spanned<String>>,
    /// HTTP method. Default: the preset's, else [`DEFAULT_METHOD`].
    pub(crate) method: Option<Spanned<String>>,
    /// File holding the key (`{key}`); relative to the rules file. Keep it
    /// mode 600.
    pub(crate) key_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the key, instead of `key_file`.
    pub(crate) key_env: Option<Spanned<String>>,
    /// Request headers; values are templates (`Authorization = "Bearer {key}"`).
    pub(crate) headers: Option<Spanned<BTreeMap<String, String>>>,
    /// Query parameters, URL-encoded, in alphabetical order of name.
    pub(crate) query: Option<Spanned<BTreeMap<String, String>>>,
    /// A form body (`application/x-www-form-urlencoded`). Not with `json`.
    pub(crate) form: Option<Spanned<BTreeMap<String, String>>>,
    /// A JSON body: any TOML value whose strings are templates. Not with `form`.
    pub(crate) json: Option<Spanned<Value>>,
    /// HTTP basic authentication.
    pub(crate) basic_auth: Option<Spanned<BasicAuthConfig>>,
    /// Statuses meaning "accepted". Default: any 2xx.
    pub(crate) success_status: Option<Spanned<Vec<u16>>>,
    /// The answer must contain this text to count as accepted.
    pub(crate) success_body_contains: Option<String>,
    /// An answer containing this text is a failure, whatever its status.
    pub(crate) failure_body_contains: Option<String>,
    /// The JSON answer must pass this check to count as accepted.
    pub(crate) success_json: Option<Spanned<JsonCheck>>,
    /// A JSON answer passing this check is a failure, whatever its status.
    pub(crate) failure_json: Option<Spanned<JsonCheck>>,
    /// JSON pointers tried in order to quote the gateway's own words in an
    /// error (`["/message"]`). Default: the preset's, else none (the start of
    /// the body is quoted).
    pub(crate) message_pointers: Option<Spanned<Vec<String>>>,
    /// JSON pointer to the gateway's message id, journalled as the reference.
    pub(crate) reference_pointer: Option<Spanned<String>>,
    /// Time for the whole request and answer, longer than zero. Default
    /// [`DEFAULT_TIMEOUT`].
    pub(crate) timeout: Option<Spanned<HumanDuration>>,
    /// Time to connect (DNS, TCP, TLS). Default [`DEFAULT_CONNECT_TIMEOUT`]
    /// or half of `timeout`, whichever is shorter; must be longer than zero
    /// and shorter than `timeout`, so that "cannot connect" is never
    /// mistaken for "sent, no answer".
    pub(crate) connect_timeout: Option<Spanned<HumanDuration>>,
}

/// What a preset fills in.
pub(super) struct PresetFields {
    pub(super) path: &'static str,
    pub(super) method: &'static str,
    pub(super) headers: &'static [(&'static str, &'static str)],
    pub(super) query: &'static [(&'static str, &'static str)],
    pub(super) failure_json: (&'static str, &'static str),
    pub(super) message_pointers: &'static [&'static str],
}

impl HttpPreset {
    /// The settings this preset fills in.
    pub(super) fn fields(self) -> PresetFields {
        match self {
            HttpPreset::Gateway => PresetFields {
                path: "/send",
                method: "POST",
                headers: &[("Authorization", "{key}")],
                query: &[("number", "{phone}"), ("text", "{text}")],
                failure_json: ("/status", "error"),
                message_pointers: &["/message"],
            },
        }
    }
}

/// Where in the rules file a value was written, when it was.
pub(super) type Span = Option<std::ops::Range<usize>>;

/// A refusal of `sms.http.<key>`.
pub(super) fn err(key: &str, message: impl Into<String>, span: Span) -> SmsConfigError {
    SmsConfigError::new(&format!("sms.http.{key}"), message, span)
}

/// A preset's template, known to be valid.
pub(super) fn preset_template(text: &str) -> Template {
    Template::parse(text, &Var::ALL).expect("presets are valid templates")
}
