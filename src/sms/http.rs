//! The `http` backend: any HTTP SMS API, described in the rules file.
//!
//! Most SMS providers and home-made gateways take one HTTP request per
//! message, differing only in method, URL, where the phone, text and key go,
//! and how they say "error". Rather than one backend per provider, `[sms.http]`
//! describes the request with structured templates: each value of `headers`,
//! `query`, `form` or `json` may use the placeholders `{phone}`
//! (`+79991234567`), `{phone_digits}` (`79991234567`), `{text}` and `{key}`
//! (`{{` and `}}` are literal braces). Values are substituted first and then
//! encoded by the request builder (URL-encoding for query and form, JSON
//! escaping for JSON), never concatenated into a body, so a text like
//! `#12#0#1#1#` or `Перезагрузка & reset` arrives intact.
//!
//! The key is read from `key_file` or `key_env`, never written in the rules
//! file. Every error message is scrubbed of it, headers carrying it are marked
//! sensitive, and URLs are shown without their query string.
//!
//! Whether a message left is judged strictly (see [`super::SendError`]):
//!
//! - connection refused, DNS or TLS failure, HTTP status outside
//!   `success_status` (any 2xx by default), a `failure_*` match, or a 2xx
//!   without the configured `success_*` marker: **definite** failure;
//! - no answer within `timeout` once connected, a connection dropped after the
//!   request was written, an unreadable 2xx body, or HTTP 504 (a proxy gave
//!   up waiting for the service, which may have sent it): **uncertain**.
//!
//! Redirects are not followed (a redirected POST would silently become a GET)
//! and connections are not reused (a pooled connection the server closed
//! would turn a clean failure into an uncertain one).
//!
//! # Presets
//!
//! `preset = "gateway"` is the gateway the older system used:
//! `POST {url}/send?number=<+phone>&text=<text>` with header
//! `Authorization: <key>`; a 2xx answer whose JSON `/status` is `"error"` is
//! a failure, explained by its `/message`. Any field written next to `preset`
//! replaces the preset's value of that field as a whole (a `headers` table
//! replaces all of the preset's headers).
//!
//! ```toml
//! [sms.http]
//! preset = "gateway"
//! url = "http://sms-gateway.example:8080"
//! key_file = "/etc/jobctl/sms.key"
//! ```
//!
//! # Two public SMS APIs
//!
//! Twilio (form POST with basic auth; answers 201 with the message `sid`,
//! errors as JSON with a `message`):
//!
//! ```toml
//! [sms.http]
//! url = "https://api.twilio.com/2010-04-01/Accounts/ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/Messages.json"
//! method = "POST"
//! key_file = "/etc/jobctl/twilio.token"          # the Auth Token
//! basic_auth = { username = "ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", password = "{key}" }
//! form = { To = "{phone}", From = "+15005550006", Body = "{text}" }
//! message_pointers = ["/message"]
//! reference_pointer = "/sid"
//! ```
//!
//! SMS.RU (GET with query; HTTP 200 even for errors, so the JSON status of the
//! number decides):
//!
//! ```toml
//! [sms.http]
//! url = "https://sms.ru/sms/send"
//! method = "GET"
//! key_env = "SMSRU_API_ID"
//! query = { api_id = "{key}", to = "{phone_digits}", msg = "{text}", json = "1" }
//! success_json = { pointer = "/sms/{phone_digits}/status", equals = "OK" }
//! message_pointers = ["/sms/{phone_digits}/status_text", "/status_text"]
//! reference_pointer = "/sms/{phone_digits}/sms_id"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::template::{Template, Values, Var};
use super::{
    positive_duration, Delivered, Message, SendError, SendFuture, SendOutcome, Sender,
    SmsConfigError,
};
use crate::config_file::HumanDuration;
use crate::secret::{Secret, SecretSource};

/// How long a request may take from start to the end of the answer, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long connecting (DNS, TCP, TLS) may take, by default. Shorter than the
/// whole timeout so that a gateway that cannot be reached is reported as a
/// definite failure, not an uncertain one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The method when neither the file nor a preset names one.
pub const DEFAULT_METHOD: &str = "POST";
/// Most of an answer body that is read; enough for any SMS API's reply.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most characters of a gateway's answer quoted in an error.
const MAX_DETAIL_CHARS: usize = 200;

/// Known HTTP gateways whose settings need not be spelled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpPreset {
    /// The gateway of the older system: `POST {url}/send?number=&text=` with
    /// `Authorization: <key>`.
    Gateway,
}

/// A check on the JSON answer of a gateway.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonCheck {
    /// RFC 6901 JSON pointer (`"/status"`, `"/sms/{phone_digits}/status"`);
    /// may use `{phone}` and `{phone_digits}`.
    pub pointer: String,
    /// The value expected there, compared as text ignoring ASCII case (`"OK"`
    /// matches `"ok"`, `100` matches `"100"`). Absent: the pointer must lead
    /// to a value that is not `null`.
    pub equals: Option<Value>,
}

/// HTTP basic authentication; values are templates (usually `password = "{key}"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    /// The user name (for Twilio, the Account SID).
    pub username: String,
    /// The password; write `"{key}"` so that it comes from `key_file`/`key_env`.
    pub password: String,
}

/// The `[sms.http]` table, as written. Every field but `url` is optional;
/// fields left out take the preset's value, then the documented default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Start from a known gateway's settings (`"gateway"`); fields written
    /// here override the preset's.
    pub preset: Option<Spanned<HttpPreset>>,
    /// Where requests go (`https://…`). With a preset, the gateway's base URL.
    pub url: Spanned<String>,
    /// Appended to `url` (preset "gateway": `"/send"`). Default: nothing.
    pub path: Option<Spanned<String>>,
    /// HTTP method. Default: the preset's, else [`DEFAULT_METHOD`].
    pub method: Option<Spanned<String>>,
    /// File holding the key (`{key}`); relative to the rules file. Keep it
    /// mode 600.
    pub key_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the key, instead of `key_file`.
    pub key_env: Option<Spanned<String>>,
    /// Request headers; values are templates (`Authorization = "Bearer {key}"`).
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    /// Query parameters, URL-encoded, in alphabetical order of name.
    pub query: Option<Spanned<BTreeMap<String, String>>>,
    /// A form body (`application/x-www-form-urlencoded`). Not with `json`.
    pub form: Option<Spanned<BTreeMap<String, String>>>,
    /// A JSON body: any TOML value whose strings are templates. Not with `form`.
    pub json: Option<Spanned<Value>>,
    /// HTTP basic authentication.
    pub basic_auth: Option<Spanned<BasicAuthConfig>>,
    /// Statuses meaning "accepted". Default: any 2xx.
    pub success_status: Option<Spanned<Vec<u16>>>,
    /// The answer must contain this text to count as accepted.
    pub success_body_contains: Option<String>,
    /// An answer containing this text is a failure, whatever its status.
    pub failure_body_contains: Option<String>,
    /// The JSON answer must pass this check to count as accepted.
    pub success_json: Option<Spanned<JsonCheck>>,
    /// A JSON answer passing this check is a failure, whatever its status.
    pub failure_json: Option<Spanned<JsonCheck>>,
    /// JSON pointers tried in order to quote the gateway's own words in an
    /// error (`["/message"]`). Default: the preset's, else none (the start of
    /// the body is quoted).
    pub message_pointers: Option<Spanned<Vec<String>>>,
    /// JSON pointer to the gateway's message id, journalled as the reference.
    pub reference_pointer: Option<Spanned<String>>,
    /// Time for the whole request and answer, longer than zero. Default
    /// [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Spanned<HumanDuration>>,
    /// Time to connect (DNS, TCP, TLS). Default [`DEFAULT_CONNECT_TIMEOUT`]
    /// or half of `timeout`, whichever is shorter; must be longer than zero
    /// and shorter than `timeout`, so that "cannot connect" is never
    /// mistaken for "sent, no answer".
    pub connect_timeout: Option<Spanned<HumanDuration>>,
}

/// What a preset fills in.
struct PresetFields {
    path: &'static str,
    method: &'static str,
    headers: &'static [(&'static str, &'static str)],
    query: &'static [(&'static str, &'static str)],
    failure_json: (&'static str, &'static str),
    message_pointers: &'static [&'static str],
}

impl HttpPreset {
    fn fields(self) -> PresetFields {
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

/// A JSON body whose strings are templates.
#[derive(Debug, Clone, PartialEq)]
enum JsonTemplate {
    Fixed(Value),
    String(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    fn parse(value: &Value) -> Result<JsonTemplate, String> {
        Ok(match value {
            Value::String(text) => JsonTemplate::String(Template::parse(text, &Var::ALL)?),
            Value::Array(items) => JsonTemplate::Array(
                items.iter().map(JsonTemplate::parse).collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => JsonTemplate::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), JsonTemplate::parse(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => JsonTemplate::Fixed(other.clone()),
        })
    }

    fn templates<'a>(&'a self, out: &mut Vec<&'a Template>) {
        match self {
            JsonTemplate::Fixed(_) => {}
            JsonTemplate::String(template) => out.push(template),
            JsonTemplate::Array(items) => items.iter().for_each(|item| item.templates(out)),
            JsonTemplate::Object(fields) => fields.iter().for_each(|(_, v)| v.templates(out)),
        }
    }

    fn render(&self, values: &Values<'_>) -> Value {
        match self {
            JsonTemplate::Fixed(value) => value.clone(),
            JsonTemplate::String(template) => Value::String(template.render(values)),
            JsonTemplate::Array(items) => {
                Value::Array(items.iter().map(|item| item.render(values)).collect())
            }
            JsonTemplate::Object(fields) => {
                Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.render(values))).collect())
            }
        }
    }
}

#[derive(Debug)]
struct ResolvedCheck {
    pointer: Template,
    equals: Option<Value>,
}

impl ResolvedCheck {
    fn describe(&self, values: &Values<'_>) -> String {
        let pointer = self.pointer.render(values);
        match &self.equals {
            Some(expected) => format!("{pointer} = {expected}"),
            None => format!("{pointer} present"),
        }
    }

    fn matches(&self, json: Option<&Value>, values: &Values<'_>) -> bool {
        let Some(found) = json.and_then(|json| json.pointer(&self.pointer.render(values))) else {
            return false;
        };
        match &self.equals {
            None => !found.is_null(),
            Some(expected) => match (scalar_text(found), scalar_text(expected)) {
                (Some(found), Some(expected)) => found.eq_ignore_ascii_case(&expected),
                _ => found == expected,
            },
        }
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Sends each message as one HTTP request; see the module documentation.
pub struct HttpSender {
    client: reqwest::Client,
    request: RequestTemplate,
    answer: AnswerRules,
    timeout: Duration,
    key: Option<Secret>,
    /// Where the key came from, named in "check the key" advice.
    key_source: Option<SecretSource>,
}

impl fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSender")
            .field("method", &self.request.method)
            .field("url", &self.request.shown_url)
            .field("key", &self.key_source)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The request, with placeholders still in it.
#[derive(Debug)]
struct RequestTemplate {
    method: Method,
    url: Url,
    /// `url` without query string, for messages.
    shown_url: String,
    headers: Vec<(HeaderName, Template)>,
    query: Vec<(String, Template)>,
    body: Body,
    basic_auth: Option<(Template, Template)>,
}

#[derive(Debug)]
enum Body {
    None,
    Form(Vec<(String, Template)>),
    Json(JsonTemplate),
}

/// How an answer is judged.
#[derive(Debug)]
struct AnswerRules {
    /// Empty: any 2xx.
    success_status: Vec<StatusCode>,
    success_body_contains: Option<String>,
    failure_body_contains: Option<String>,
    success_json: Option<ResolvedCheck>,
    failure_json: Option<ResolvedCheck>,
    message_pointers: Vec<Template>,
    reference_pointer: Option<Template>,
}

type Span = Option<std::ops::Range<usize>>;

fn err(key: &str, message: impl Into<String>, span: Span) -> SmsConfigError {
    SmsConfigError::new(&format!("sms.http.{key}"), message, span)
}

fn preset_template(text: &str) -> Template {
    Template::parse(text, &Var::ALL).expect("presets are valid templates")
}

/// A templated table: the file's, else the preset's, else empty.
fn table(
    key: &str,
    written: &Option<Spanned<BTreeMap<String, String>>>,
    preset: &[(&str, &str)],
) -> Result<Vec<(String, Template)>, SmsConfigError> {
    match written {
        Some(map) => map
            .get_ref()
            .iter()
            .map(|(name, value)| {
                let template = Template::parse(value, &Var::ALL)
                    .map_err(|message| err(&format!("{key}.{name}"), message, Some(map.span())))?;
                Ok((name.clone(), template))
            })
            .collect(),
        None => Ok(preset.iter().map(|(n, v)| (n.to_string(), preset_template(v))).collect()),
    }
}

fn pointer(
    key: &str,
    text: &str,
    span: std::ops::Range<usize>,
) -> Result<Template, SmsConfigError> {
    if !text.is_empty() && !text.starts_with('/') {
        return Err(err(
            key,
            format!("{text:?} is not a JSON pointer; write it like \"/status\" or \"/data/0/id\""),
            Some(span),
        ));
    }
    Template::parse(text, &Var::IN_POINTERS).map_err(|message| err(key, message, Some(span)))
}

fn check(key: &str, written: &Spanned<JsonCheck>) -> Result<ResolvedCheck, SmsConfigError> {
    Ok(ResolvedCheck {
        pointer: pointer(key, &written.get_ref().pointer, written.span())?,
        equals: written.get_ref().equals.clone(),
    })
}

impl RequestTemplate {
    fn from_config(
        config: &HttpConfig,
        preset: Option<&PresetFields>,
        preset_span: &Span,
    ) -> Result<RequestTemplate, SmsConfigError> {
        let (url, shown_url) = Self::url(config, preset)?;

        let (method_text, method_span) = match (&config.method, preset) {
            (Some(m), _) => (m.get_ref().to_ascii_uppercase(), Some(m.span())),
            (None, Some(preset)) => (preset.method.to_string(), preset_span.clone()),
            (None, None) => (DEFAULT_METHOD.to_string(), None),
        };
        let method = match method_text.as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            other => {
                return Err(err(
                    "method",
                    format!("unsupported method {other:?}; use GET, POST, PUT or PATCH"),
                    method_span,
                ))
            }
        };

        let header_span = config.headers.as_ref().map(Spanned::span).or(preset_span.clone());
        let mut headers = Vec::new();
        for (name, template) in
            table("headers", &config.headers, preset.map_or(&[], |p| p.headers))?
        {
            let key = format!("headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                err(&key, format!("{name:?} is not a valid header name"), header_span.clone())
            })?;
            let sample = Values { phone: "+1", phone_digits: "1", text: "x", key: "k" };
            if HeaderValue::from_str(&template.render(&sample)).is_err() {
                return Err(err(
                    &key,
                    "the value contains characters not allowed in a header (line breaks, control characters)",
                    header_span,
                ));
            }
            headers.push((header, template));
        }

        let query = table("query", &config.query, preset.map_or(&[], |p| p.query))?;
        let body = match (&config.form, &config.json) {
            (Some(_), Some(json)) => {
                return Err(err(
                    "json",
                    "set either form or json, not both: a request has one body",
                    Some(json.span()),
                ))
            }
            (Some(_), None) => Body::Form(table("form", &config.form, &[])?),
            (None, Some(json)) => Body::Json(
                JsonTemplate::parse(json.get_ref())
                    .map_err(|m| err("json", m, Some(json.span())))?,
            ),
            (None, None) => Body::None,
        };
        if method == Method::GET && !matches!(body, Body::None) {
            return Err(err(
                if config.form.is_some() { "form" } else { "json" },
                "a GET request carries no body; use query, or method = \"POST\"",
                method_span,
            ));
        }
        let basic_auth = match &config.basic_auth {
            Some(auth) => {
                let parse = |text: &str| {
                    Template::parse(text, &Var::ALL)
                        .map_err(|m| err("basic_auth", m, Some(auth.span())))
                };
                Some((parse(&auth.get_ref().username)?, parse(&auth.get_ref().password)?))
            }
            None => None,
        };

        let request = RequestTemplate { method, url, shown_url, headers, query, body, basic_auth };
        let whole = preset_span.clone().or(Some(config.url.span()));
        if request.place_using(|t| t.uses(Var::Text)).is_none() {
            return Err(err(
                "url",
                "no header, query, form or json value uses {text}: the SMS text would never be sent",
                whole,
            ));
        }
        if request.place_using(|t| t.uses(Var::Phone) || t.uses(Var::PhoneDigits)).is_none() {
            return Err(err(
                "url",
                "no header, query, form or json value uses {phone} or {phone_digits}: the recipient would never be named",
                whole,
            ));
        }
        Ok(request)
    }

    /// `url` joined with `path`, checked, and the same without its query for
    /// messages.
    fn url(
        config: &HttpConfig,
        preset: Option<&PresetFields>,
    ) -> Result<(Url, String), SmsConfigError> {
        let path = match (&config.path, preset) {
            (Some(path), _) => path.get_ref().as_str(),
            (None, Some(preset)) => preset.path,
            (None, None) => "",
        };
        let base = config.url.get_ref();
        let joined = if path.is_empty() {
            base.clone()
        } else {
            format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
        };
        let span = Some(config.url.span());
        let url = Url::parse(&joined)
            .map_err(|e| err("url", format!("{joined:?} is not a URL: {e}"), span.clone()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(
                "url",
                format!("{joined:?}: only http:// and https:// are supported"),
                span,
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "url",
                "credentials in the URL would be logged; use basic_auth with password = \"{key}\" and key_file",
                span,
            ));
        }
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        Ok((url, shown.to_string()))
    }

    /// The first place whose template matches `wanted` ("header authorization").
    fn place_using(&self, wanted: impl Fn(&Template) -> bool) -> Option<String> {
        let mut places: Vec<(String, &Template)> = Vec::new();
        places.extend(self.headers.iter().map(|(n, t)| (format!("header {n}"), t)));
        places.extend(self.query.iter().map(|(n, t)| (format!("query parameter {n}"), t)));
        match &self.body {
            Body::Form(pairs) => {
                places.extend(pairs.iter().map(|(n, t)| (format!("form field {n}"), t)))
            }
            Body::Json(json) => {
                let mut templates = Vec::new();
                json.templates(&mut templates);
                places.extend(templates.into_iter().map(|t| ("the json body".to_string(), t)));
            }
            Body::None => {}
        }
        if let Some((user, password)) = &self.basic_auth {
            places.extend([("basic_auth".to_string(), user), ("basic_auth".to_string(), password)]);
        }
        places.into_iter().find(|(_, t)| wanted(t)).map(|(place, _)| place)
    }

    /// The request for one message; `Err` names the header that cannot carry it.
    fn build(
        &self,
        client: &reqwest::Client,
        values: &Values<'_>,
    ) -> Result<reqwest::RequestBuilder, String> {
        let mut request = client.request(self.method.clone(), self.url.clone());
        for (name, template) in &self.headers {
            let mut value = HeaderValue::from_str(&template.render(values)).map_err(|_| {
                format!("header {name} cannot carry this message (it contains a line break or control character)")
            })?;
            value.set_sensitive(template.uses(Var::Key));
            request = request.header(name.clone(), value);
        }
        let render = |pairs: &[(String, Template)]| -> Vec<(String, String)> {
            pairs.iter().map(|(n, t)| (n.clone(), t.render(values))).collect()
        };
        if !self.query.is_empty() {
            request = request.query(&render(&self.query));
        }
        match &self.body {
            Body::None => {}
            Body::Form(fields) => request = request.form(&render(fields)),
            Body::Json(json) => request = request.json(&json.render(values)),
        }
        if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user.render(values), Some(password.render(values)));
        }
        Ok(request)
    }
}

impl AnswerRules {
    fn from_config(
        config: &HttpConfig,
        preset: Option<&PresetFields>,
    ) -> Result<AnswerRules, SmsConfigError> {
        let success_status = match &config.success_status {
            Some(list) => list
                .get_ref()
                .iter()
                .map(|&code| {
                    StatusCode::from_u16(code)
                        .ok()
                        .filter(|s| (100..600).contains(&s.as_u16()))
                        .ok_or_else(|| {
                            err(
                                "success_status",
                                format!("{code} is not an HTTP status"),
                                Some(list.span()),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let failure_json = match (&config.failure_json, preset) {
            (Some(c), _) => Some(check("failure_json", c)?),
            (None, Some(preset)) => Some(ResolvedCheck {
                pointer: preset_template(preset.failure_json.0),
                equals: Some(Value::String(preset.failure_json.1.to_string())),
            }),
            (None, None) => None,
        };
        let message_pointers = match (&config.message_pointers, preset) {
            (Some(list), _) => list
                .get_ref()
                .iter()
                .map(|p| pointer("message_pointers", p, list.span()))
                .collect::<Result<_, _>>()?,
            (None, Some(preset)) => {
                preset.message_pointers.iter().map(|p| preset_template(p)).collect()
            }
            (None, None) => Vec::new(),
        };
        Ok(AnswerRules {
            success_status,
            success_body_contains: config.success_body_contains.clone(),
            failure_body_contains: config.failure_body_contains.clone(),
            success_json: config
                .success_json
                .as_ref()
                .map(|c| check("success_json", c))
                .transpose()?,
            failure_json,
            message_pointers,
            reference_pointer: config
                .reference_pointer
                .as_ref()
                .map(|p| pointer("reference_pointer", p.get_ref(), p.span()))
                .transpose()?,
        })
    }
}

/// Where the key is read from, when the request uses one.
struct KeySource {
    source: SecretSource,
    /// `key_file` or `key_env`, for messages.
    key: &'static str,
    span: Span,
}

/// Where the key is, when the request uses it; refuses a key that is
/// missing or never used. Nothing is read yet.
fn key_source(
    config: &HttpConfig,
    request: &RequestTemplate,
    base_dir: &Path,
    preset_span: Span,
) -> Result<Option<KeySource>, SmsConfigError> {
    let (source, key, span) = match (&config.key_file, &config.key_env) {
        (Some(_), Some(env)) => {
            return Err(err("key_env", "set key_file or key_env, not both", Some(env.span())))
        }
        // Joined with the base directory so that messages name the real file.
        (Some(file), None) => {
            (SecretSource::File(base_dir.join(file.get_ref())), "key_file", Some(file.span()))
        }
        (None, Some(env)) => {
            (SecretSource::Env(env.get_ref().clone()), "key_env", Some(env.span()))
        }
        (None, None) => match request.place_using(|t| t.uses(Var::Key)) {
            Some(place) => {
                return Err(err(
                    "key_file",
                    format!("{place} uses {{key}}, but neither key_file nor key_env is set"),
                    preset_span.or(Some(config.url.span())),
                ))
            }
            None => return Ok(None),
        },
    };
    if request.place_using(|t| t.uses(Var::Key)).is_none() {
        return Err(err(
            key,
            "the key is never used; put {key} where the API expects it (a header, query, form, json or basic_auth value)",
            span,
        ));
    }
    Ok(Some(KeySource { source, key, span }))
}

/// Loads the key.
fn load_key(key: &KeySource) -> Result<Secret, SmsConfigError> {
    // The path is already joined with base_dir, so messages name the real file.
    let loaded = key
        .source
        .load(Path::new(""))
        .map_err(|e| err(key.key, e.to_string(), key.span.clone()))?;
    if let Some(warning) = loaded.loose_permissions {
        tracing::warn!("{warning}");
    }
    Ok(loaded.secret)
}

/// The whole-request and connect timeouts, checked against each other.
fn timeouts(config: &HttpConfig) -> Result<(Duration, Duration), SmsConfigError> {
    let timeout_span = config.timeout.as_ref().map(Spanned::span);
    let timeout = positive_duration("sms.http.timeout", config.timeout.as_ref(), DEFAULT_TIMEOUT)?;
    let connect = positive_duration(
        "sms.http.connect_timeout",
        config.connect_timeout.as_ref(),
        DEFAULT_CONNECT_TIMEOUT.min(timeout / 2),
    )?;
    if connect.is_zero() {
        // Only a default can be zero here: half of a timeout of 1ns.
        return Err(err(
            "timeout",
            format!(
                "{} leaves no time to connect (connect_timeout defaults to half of it); write a longer timeout",
                humantime::format_duration(timeout)
            ),
            timeout_span,
        ));
    }
    if connect >= timeout {
        let span = config.connect_timeout.as_ref().map(Spanned::span).or(timeout_span);
        return Err(err(
            "connect_timeout",
            format!(
                "connect_timeout ({}) must be shorter than timeout ({}), or an unreachable gateway would be reported as an uncertain send",
                humantime::format_duration(connect),
                humantime::format_duration(timeout)
            ),
            span,
        ));
    }
    Ok((timeout, connect))
}

/// `[sms.http]` checked, before the key is read.
struct Settings {
    request: RequestTemplate,
    answer: AnswerRules,
    key_source: Option<KeySource>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl Settings {
    fn from_config(config: &HttpConfig, base_dir: &Path) -> Result<Settings, SmsConfigError> {
        let preset = config.preset.as_ref().map(|p| p.get_ref().fields());
        let preset_span = config.preset.as_ref().map(Spanned::span);
        let request = RequestTemplate::from_config(config, preset.as_ref(), &preset_span)?;
        let answer = AnswerRules::from_config(config, preset.as_ref())?;
        let key_source = key_source(config, &request, base_dir, preset_span)?;
        let (timeout, connect_timeout) = timeouts(config)?;
        Ok(Settings { request, answer, key_source, timeout, connect_timeout })
    }
}

impl HttpSender {
    /// The backend name in the journal.
    pub const NAME: &'static str = "http";

    /// Validates `[sms.http]`, loads the key (relative `key_file` paths are
    /// taken from `base_dir`) and prepares the client.
    pub fn from_config(config: &HttpConfig, base_dir: &Path) -> Result<HttpSender, SmsConfigError> {
        let Settings { request, answer, key_source, timeout, connect_timeout } =
            Settings::from_config(config, base_dir)?;
        let key = key_source.as_ref().map(load_key).transpose()?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .user_agent(concat!("signage-watchdog/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                err(
                    "url",
                    format!("cannot set up the HTTP client: {}", crate::error::innermost_cause(&e)),
                    None,
                )
            })?;
        let key_source = key_source.map(|k| k.source);
        Ok(HttpSender { client, request, answer, timeout, key, key_source })
    }

    /// The checks of [`HttpSender::from_config`] that read no key: the URL,
    /// the templates, the answer rules, where the key comes from, the
    /// timeouts.
    pub(crate) fn check(config: &HttpConfig) -> Result<(), SmsConfigError> {
        Settings::from_config(config, Path::new("")).map(drop)
    }

    async fn deliver(&self, message: &Message) -> SendOutcome {
        let values = Values {
            phone: &message.phone,
            phone_digits: message.phone.trim_start_matches('+'),
            text: &message.text,
            key: self.key.as_ref().map_or("", Secret::expose),
        };
        let request =
            self.request.build(&self.client, &values).map_err(|why| self.definite(why))?;
        tracing::debug!(url = %self.request.shown_url, phone = %message.phone, "sending SMS over HTTP");
        let mut response = request.send().await.map_err(|e| self.request_failed(&e))?;
        let status = response.status();
        let body = read_capped(&mut response).await;
        self.judge(status, body, &values)
    }

    fn judge(
        &self,
        status: StatusCode,
        body: Result<Vec<u8>, reqwest::Error>,
        values: &Values<'_>,
    ) -> SendOutcome {
        let rules = &self.answer;
        let accepted = if rules.success_status.is_empty() {
            status.is_success()
        } else {
            rules.success_status.contains(&status)
        };
        let url = &self.request.shown_url;
        if !accepted {
            let detail = body.as_deref().map(|b| self.gateway_words(b, values)).unwrap_or_default();
            if status == StatusCode::GATEWAY_TIMEOUT {
                return Err(self.uncertain(format!(
                    "{url} answered HTTP {status}{detail}: a proxy stopped waiting for the SMS service, which may still have sent it"
                )));
            }
            let advice = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => match &self.key_source {
                    Some(source) => format!("; check the key ({source})"),
                    None => "; check the credentials".to_string(),
                },
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                    "; check url, path and method".to_string()
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    "; the gateway is limiting the rate of messages".to_string()
                }
                _ => String::new(),
            };
            return Err(self.definite(format!("{url} answered HTTP {status}{detail}{advice}")));
        }
        let body = match body {
            Ok(body) => body,
            Err(e) => {
                return Err(self.uncertain(format!(
                "{url} accepted the request (HTTP {status}) but its answer could not be read: {}",
                crate::error::innermost_cause(&e)
            )))
            }
        };
        let text = String::from_utf8_lossy(&body);
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let failed = |why: &str| {
            self.definite(format!(
                "{url} answered HTTP {status} but {why}{}",
                self.gateway_words(&body, values)
            ))
        };
        if let Some(marker) = &rules.failure_body_contains {
            if text.contains(marker.as_str()) {
                return Err(failed(&format!("the answer contains {marker:?}")));
            }
        }
        if let Some(check) = &rules.failure_json {
            if check.matches(json.as_ref(), values) {
                return Err(failed(&format!("reported a failure ({})", check.describe(values))));
            }
        }
        if let Some(marker) = &rules.success_body_contains {
            if !text.contains(marker.as_str()) {
                return Err(failed(&format!("the answer lacks {marker:?}")));
            }
        }
        if let Some(check) = &rules.success_json {
            if !check.matches(json.as_ref(), values) {
                return Err(failed(&format!("the answer lacks {}", check.describe(values))));
            }
        }
        let reference = rules
            .reference_pointer
            .as_ref()
            .and_then(|p| json.as_ref()?.pointer(&p.render(values)).and_then(scalar_text))
            .map(|r| self.mask(r));
        Ok(Delivered { backend: Self::NAME.to_string(), reference })
    }

    /// `": <the gateway's words>"`, or nothing when the answer is empty.
    fn gateway_words(&self, body: &[u8], values: &Values<'_>) -> String {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let words = self
            .answer
            .message_pointers
            .iter()
            .find_map(|p| json.as_ref()?.pointer(&p.render(values)).filter(|v| !v.is_null()))
            .map(|v| scalar_text(v).unwrap_or_else(|| v.to_string()))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        let words = super::text::sanitize(words.trim(), false, MAX_DETAIL_CHARS);
        if words.is_empty() {
            String::new()
        } else {
            format!(": {words}")
        }
    }

    fn request_failed(&self, error: &reqwest::Error) -> SendError {
        let url = &self.request.shown_url;
        let cause = crate::error::innermost_cause(error);
        if error.is_builder() {
            self.definite(format!("cannot build the request to {url}: {cause}"))
        } else if error.is_connect() {
            self.definite(format!("cannot connect to {url}: {cause}"))
        } else if error.is_timeout() {
            self.uncertain(format!(
                "no answer from {url} within {}; the gateway may have sent the message",
                humantime::format_duration(self.timeout)
            ))
        } else {
            self.uncertain(format!(
                "the connection to {url} failed after the request was sent ({cause}); the gateway may have sent the message"
            ))
        }
    }

    fn definite(&self, reason: String) -> SendError {
        SendError::Definite { reason: self.mask(reason) }
    }

    fn uncertain(&self, reason: String) -> SendError {
        SendError::Uncertain { reason: self.mask(reason) }
    }

    /// Removes the key, as written and URL-encoded, from text shown to people.
    fn mask(&self, text: String) -> String {
        let Some(key) = self.key.as_ref().map(Secret::expose).filter(|k| !k.is_empty()) else {
            return text;
        };
        let mut text = text.replace(key, "***");
        let encoded: String = key
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if encoded != key {
            text = text.replace(&encoded, "***");
        }
        text
    }
}

impl Sender for HttpSender {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(self.deliver(message))
    }
}

/// Reads at most [`MAX_BODY_BYTES`] of an answer.
async fn read_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_BODY_BYTES {
            break;
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> HttpConfig {
        toml::from_str(text).unwrap()
    }

    fn build_error(text: &str) -> String {
        HttpSender::from_config(&config(text), Path::new(".")).unwrap_err().to_string()
    }

    #[test]
    fn pointers_may_name_the_number_but_not_the_text() {
        assert!(Template::parse("/sms/{phone_digits}/status", &Var::IN_POINTERS).is_ok());
        let err = Template::parse("/sms/{text}", &Var::IN_POINTERS).unwrap_err();
        assert_eq!(
            err,
            "unknown placeholder {text} in \"/sms/{text}\"; use {phone} or {phone_digits}"
        );
    }

    #[test]
    fn json_templates_keep_types_and_substitute_strings() {
        let value: Value =
            serde_json::json!({"to": ["{phone}"], "text": "{text}", "flash": false, "n": 1});
        let template = JsonTemplate::parse(&value).unwrap();
        let values =
            Values { phone: "+7999", phone_digits: "7999", text: "\"quoted\" {x}", key: "" };
        assert_eq!(
            template.render(&values),
            serde_json::json!({"to": ["+7999"], "text": "\"quoted\" {x}", "flash": false, "n": 1})
        );
    }

    #[test]
    fn json_checks_compare_as_text_ignoring_case() {
        let check = ResolvedCheck {
            pointer: Template::parse("/sms/{phone_digits}/status_code", &Var::IN_POINTERS).unwrap(),
            equals: Some(Value::String("100".into())),
        };
        let values = Values { phone: "+7999", phone_digits: "7999", text: "", key: "" };
        let answer = serde_json::json!({"sms": {"7999": {"status_code": 100}}});
        assert!(check.matches(Some(&answer), &values));
        assert!(!check.matches(Some(&serde_json::json!({"sms": {}})), &values));
        assert!(!check.matches(None, &values));
        let present =
            ResolvedCheck { pointer: Template::parse("/error", &[]).unwrap(), equals: None };
        assert!(!present.matches(Some(&serde_json::json!({"error": null})), &values));
        assert!(present.matches(Some(&serde_json::json!({"error": "no money"})), &values));
        let status = ResolvedCheck {
            pointer: Template::parse("/status", &[]).unwrap(),
            equals: Some(Value::String("error".into())),
        };
        assert!(status.matches(Some(&serde_json::json!({"status": "ERROR"})), &values));
    }

    #[test]
    fn incomplete_or_contradictory_configs_are_refused() {
        let err = build_error("preset = \"gateway\"\nurl = \"http://127.0.0.1:1\"\n");
        assert_eq!(err, "sms.http.key_file: header authorization uses {key}, but neither key_file nor key_env is set");
        let err = build_error("url = \"http://127.0.0.1:1\"\nquery = { to = \"{phone}\" }\n");
        assert!(err.contains("uses {text}: the SMS text would never be sent"), "{err}");
        let err = build_error("url = \"http://127.0.0.1:1\"\nquery = { msg = \"{text}\" }\n");
        assert!(err.contains("the recipient would never be named"), "{err}");
        let err = build_error("url = \"http://127.0.0.1:1\"\nquery = { to = \"{phone}\", m = \"{text}\" }\nkey_env = \"X\"\n");
        assert!(err.starts_with("sms.http.key_env: the key is never used"), "{err}");
        let err = build_error(
            "url = \"http://127.0.0.1:1\"\nmethod = \"get\"\nform = { to = \"{phone}\", m = \"{text}\" }\n",
        );
        assert_eq!(
            err,
            "sms.http.form: a GET request carries no body; use query, or method = \"POST\""
        );
        let err = build_error(
            "url = \"http://u:p@127.0.0.1:1\"\nquery = { to = \"{phone}\", m = \"{text}\" }\n",
        );
        assert!(err.starts_with("sms.http.url: credentials in the URL would be logged"), "{err}");
        let err = build_error(
            "url = \"ftp://127.0.0.1\"\nquery = { to = \"{phone}\", m = \"{text}\" }\n",
        );
        assert!(err.contains("only http:// and https://"), "{err}");
        let err = build_error(
            "url = \"http://127.0.0.1:1\"\nquery = { to = \"{phone}\", m = \"{text}\" }\ntimeout = \"2s\"\nconnect_timeout = \"5s\"\n",
        );
        assert!(
            err.starts_with(
                "sms.http.connect_timeout: connect_timeout (5s) must be shorter than timeout (2s)"
            ),
            "{err}"
        );
        let err = build_error(
            "url = \"http://127.0.0.1:1\"\nquery = { to = \"{phone}\", m = \"{text}\" }\nsuccess_json = { pointer = \"status\" }\n",
        );
        assert!(err.contains("\"status\" is not a JSON pointer"), "{err}");
        let err = build_error(
            "url = \"http://127.0.0.1:1\"\nquery = { to = \"{phone}\", m = \"{txt}\" }\n",
        );
        assert!(err.starts_with("sms.http.query.m: unknown placeholder {txt}"), "{err}");
    }

    #[test]
    fn errors_carry_the_span_of_the_value() {
        let text = "url = \"http://127.0.0.1:1\"\nquery = { to = \"{phone}\", m = \"{text}\", k = \"{key}\" }\nkey_file = \"missing.key\"\n";
        let error = HttpSender::from_config(&config(text), Path::new("/nonexistent")).unwrap_err();
        assert_eq!(error.key, "sms.http.key_file");
        assert!(
            error.message.starts_with("cannot read secret file /nonexistent/missing.key"),
            "{}",
            error.message
        );
        assert_eq!(&text[error.span.unwrap()], "\"missing.key\"");
    }

    #[test]
    fn explicit_fields_override_the_preset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "s3cret\n").unwrap();
        let sender = HttpSender::from_config(
            &config(
                "preset = \"gateway\"\nurl = \"http://127.0.0.1:1/api/\"\nkey_file = \"key\"\npath = \"/v2/send\"\nmethod = \"put\"\n",
            ),
            dir.path(),
        )
        .unwrap();
        assert_eq!(sender.request.url.as_str(), "http://127.0.0.1:1/api/v2/send");
        assert_eq!(sender.request.method, Method::PUT);
        assert_eq!(
            sender.request.query.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["number", "text"]
        );
        assert_eq!(sender.key.as_ref().unwrap().expose(), "s3cret");
        let debug = format!("{sender:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert_eq!(sender.mask("key s3cret, encoded s3cret".into()), "key ***, encoded ***");
    }
}
