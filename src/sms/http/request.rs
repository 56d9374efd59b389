//! The request a message is sent with, as templates: method, URL,
//! headers, query, body and basic auth, with placeholders still in them.
//!
//! Built once from `[sms.http]` (and its preset) when the rules are loaded,
//! so a mistake in the table is refused before any message is due; filled
//! in with each message's values when it is sent.

use std::collections::BTreeMap;

use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde_json::Value;
use toml::Spanned;

use super::config::{
    err, preset_template, HttpConfig, PresetFields, Span, TextKindField, DEFAULT_METHOD,
};
use crate::sms::template::{Template, Values, Var};
use crate::sms::text::gsm7_septets;
use crate::sms::SmsConfigError;

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

/// The request, with placeholders still in it.
#[derive(Debug)]
pub(super) struct RequestTemplate {
    pub(super) method: Method,
    pub(super) url: Url,
    /// `url` without query string, for messages.
    pub(super) shown_url: String,
    headers: Vec<(HeaderName, Template)>,
    pub(super) query: Vec<(String, Template)>,
    body: Body,
    basic_auth: Option<(Template, Template)>,
}

#[derive(Debug)]
enum Body {
    None,
    /// Fields, and one whose value depends on the text (a preset's).
    Form(Vec<(String, Template)>, Option<TextKindField>),
    Json(JsonTemplate),
}

/// A templated table: the file's, else the preset's, else empty.
fn table(
    key: &str,
    written: &Option<Spanned<BTreeMap<String, String>>>,
    preset: &[(String, String)],
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
        None => Ok(preset.iter().map(|(n, v)| (n.clone(), preset_template(v))).collect()),
    }
}

impl RequestTemplate {
    /// The request `[sms.http]` describes, checked: a method it supports,
    /// a URL without credentials, valid headers, one body at most, and the
    /// text and the number each used somewhere.
    pub(super) fn from_config(
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
            table("headers", &config.headers, preset.map_or(&[], |p| &p.headers))?
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

        let query = table("query", &config.query, preset.map_or(&[], |p| &p.query))?;
        let preset_form = preset.map_or(&[][..], |p| &p.form);
        let body = match (&config.form, &config.json) {
            (Some(_), Some(json)) => {
                return Err(err(
                    "json",
                    "set either form or json, not both: a request has one body",
                    Some(json.span()),
                ))
            }
            (Some(_), None) => Body::Form(table("form", &config.form, &[])?, None),
            (None, None) if !preset_form.is_empty() => {
                Body::Form(table("form", &None, preset_form)?, preset.and_then(|p| p.text_kind))
            }
            (None, Some(json)) => Body::Json(
                JsonTemplate::parse(json.get_ref())
                    .map_err(|m| err("json", m, Some(json.span())))?,
            ),
            (None, None) => Body::None,
        };
        if method == Method::GET && !matches!(body, Body::None) {
            return Err(err(
                if config.json.is_some() { "json" } else { "form" },
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
            None => preset
                .and_then(|p| p.basic_auth.as_ref())
                .map(|(user, password)| (preset_template(user), preset_template(password))),
        };

        let request = RequestTemplate { method, url, shown_url, headers, query, body, basic_auth };
        let whole = preset_span.clone().or(config.url.as_ref().map(Spanned::span));
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
            (None, Some(preset)) => preset.path.as_str(),
            (None, None) => "",
        };
        let (base, span) = match (&config.url, preset.and_then(|p| p.url)) {
            (Some(url), _) => (url.get_ref().as_str(), Some(url.span())),
            (None, Some(default)) => (default, None),
            (None, None) => return Err(err(
                "url",
                "missing: write where requests go, like url = \"https://sms-gateway.example:8443\"",
                config.preset.as_ref().map(Spanned::span),
            )),
        };
        let joined = if path.is_empty() {
            base.to_string()
        } else {
            format!("{}/{}", base.trim_end_matches('/'), path.trim_start_matches('/'))
        };
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
    pub(super) fn place_using(&self, wanted: impl Fn(&Template) -> bool) -> Option<String> {
        let mut places: Vec<(String, &Template)> = Vec::new();
        places.extend(self.headers.iter().map(|(n, t)| (format!("header {n}"), t)));
        places.extend(self.query.iter().map(|(n, t)| (format!("query parameter {n}"), t)));
        match &self.body {
            Body::Form(pairs, _) => {
                places.extend(pairs.iter().map(|(n, t)| (format!("form field {n}"), t)));
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

    /// `user:password` as basic auth sends them for one message, when they
    /// carry the key (so that its base64 can be masked in answers).
    pub(super) fn basic_credentials(&self, values: &Values<'_>) -> Option<String> {
        let (user, password) = self.basic_auth.as_ref()?;
        (user.uses(Var::Key) || password.uses(Var::Key))
            .then(|| format!("{}:{}", user.render(values), password.render(values)))
    }

    /// The request for one message; `Err` names the header that cannot carry it.
    pub(super) fn build(
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
            Body::Form(fields, text_kind) => {
                let mut fields = render(fields);
                if let Some(kind) = text_kind {
                    let gsm7 = values.text.chars().all(|c| gsm7_septets(c).is_some());
                    let value = if gsm7 { kind.gsm7 } else { kind.unicode };
                    fields.push((kind.name.to_string(), value.to_string()));
                }
                request = request.form(&fields);
            }
            Body::Json(json) => request = request.json(&json.render(values)),
        }
        if let Some((user, password)) = &self.basic_auth {
            request = request.basic_auth(user.render(values), Some(password.render(values)));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
