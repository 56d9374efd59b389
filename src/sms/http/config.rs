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

/// Known HTTP gateways and SMS providers whose settings need not be
/// spelled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum HttpPreset {
    /// The gateway of the older system: `POST {url}/send?number=&text=` with
    /// `Authorization: <key>`.
    Gateway,
    /// Twilio's Messages API; the key is the Auth Token.
    Twilio,
    /// SMS.RU's `sms/send`; the key is the `api_id`.
    Smsru,
    /// SMSC.RU's `send.php`; the key is the password.
    Smsc,
    /// Vonage's (Nexmo's) SMS API; the key is the API secret.
    Vonage,
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
    /// Start from a known gateway's or provider's settings (`"gateway"`,
    /// `"twilio"`, `"smsru"`, `"smsc"`, `"vonage"`); request fields written
    /// here override the preset's.
    pub(crate) preset: Option<Spanned<HttpPreset>>,
    /// Where requests go (`https://…`). With a preset, the base URL; a
    /// provider preset has its provider's (a proxy or a test fake may
    /// replace it). Required otherwise.
    pub(crate) url: Option<Spanned<String>>,
    /// The part of a provider's credentials that is not secret: Twilio's
    /// Account SID, SMSC.RU's login, Vonage's API key. Provider presets only.
    pub(crate) account: Option<Spanned<String>>,
    /// The sender a provider shows: a number or an alphanumeric name the
    /// provider approved (Twilio: a number or a Messaging Service SID `MG…`).
    /// Provider presets only; Twilio and Vonage require it.
    pub(crate) from: Option<Spanned<String>>,
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

/// What a preset fills in. Values are templates: a value taken from the
/// file (`account`, `from`) has its braces doubled ([`literal`]).
pub(super) struct PresetFields {
    /// The preset these fields are of.
    pub(super) preset: HttpPreset,
    /// The base URL when the file names none.
    pub(super) url: Option<&'static str>,
    pub(super) path: String,
    pub(super) method: &'static str,
    pub(super) headers: Vec<(String, String)>,
    pub(super) query: Vec<(String, String)>,
    pub(super) form: Vec<(String, String)>,
    pub(super) basic_auth: Option<(String, String)>,
    /// A form field whose value depends on the text (Vonage's `type`).
    pub(super) text_kind: Option<TextKindField>,
    /// How the answer is judged.
    pub(super) answer: PresetAnswer,
}

impl PresetFields {
    /// A provider's API: a form POSTed to `path` under `url`, its answer
    /// judged by the provider's own rules; the other fields empty.
    pub(super) fn provider_form(
        preset: HttpPreset,
        url: &'static str,
        path: String,
        form: Vec<(String, String)>,
    ) -> PresetFields {
        PresetFields {
            preset,
            url: Some(url),
            path,
            method: "POST",
            headers: Vec::new(),
            query: Vec::new(),
            form,
            basic_auth: None,
            text_kind: None,
            answer: PresetAnswer::Provider,
        }
    }
}

/// A form field saying how the text is encoded, chosen per message.
#[derive(Debug, Clone, Copy)]
pub(super) struct TextKindField {
    pub(super) name: &'static str,
    /// The value when every character fits GSM-7.
    pub(super) gsm7: &'static str,
    /// The value otherwise.
    pub(super) unicode: &'static str,
}

/// How a preset's answers are judged.
pub(super) enum PresetAnswer {
    /// By the answer rules, with these defaults: a failure check and where
    /// the gateway's words are.
    Rules { failure_json: (&'static str, &'static str), message_pointers: &'static [&'static str] },
    /// By the provider's documented answers, in code (`provider`).
    Provider,
}

impl HttpPreset {
    /// The preset's name as the file writes it.
    pub(super) fn name(self) -> &'static str {
        match self {
            HttpPreset::Gateway => "gateway",
            HttpPreset::Twilio => "twilio",
            HttpPreset::Smsru => "smsru",
            HttpPreset::Smsc => "smsc",
            HttpPreset::Vonage => "vonage",
        }
    }
}

/// What `preset = "gateway"` fills in.
pub(super) fn gateway_fields() -> PresetFields {
    PresetFields {
        preset: HttpPreset::Gateway,
        url: None,
        path: "/send".into(),
        method: "POST",
        headers: vec![("Authorization".into(), "{key}".into())],
        query: vec![("number".into(), "{phone}".into()), ("text".into(), "{text}".into())],
        form: Vec::new(),
        basic_auth: None,
        text_kind: None,
        answer: PresetAnswer::Rules {
            failure_json: ("/status", "error"),
            message_pointers: &["/message"],
        },
    }
}

/// `text` as a template that stands for itself: braces doubled.
pub(super) fn literal(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
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
