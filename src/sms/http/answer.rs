//! How a gateway's answer is judged: which statuses mean "accepted", the
//! markers and JSON checks of success and failure, where the gateway's own
//! words and the message's reference are found.
//!
//! The rules are checked when `[sms.http]` is loaded; the sender applies
//! them to each answer.

use reqwest::StatusCode;
use serde_json::Value;
use toml::Spanned;

use super::config::{err, preset_template, HttpConfig, JsonCheck, PresetAnswer, PresetFields};
use super::provider::Provider;
use crate::sms::template::{Template, Values, Var};
use crate::sms::SmsConfigError;

/// How an answer is judged.
#[derive(Debug)]
pub(super) struct AnswerRules {
    /// Empty: any 2xx.
    pub(super) success_status: Vec<StatusCode>,
    pub(super) success_body_contains: Option<String>,
    pub(super) failure_body_contains: Option<String>,
    pub(super) success_json: Option<ResolvedCheck>,
    pub(super) failure_json: Option<ResolvedCheck>,
    pub(super) message_pointers: Vec<Template>,
    pub(super) reference_pointer: Option<Template>,
    /// A provider preset's: the provider judges the answer, and the rules
    /// above are empty.
    pub(super) provider: Option<Provider>,
}

/// A [`JsonCheck`] with its pointer parsed as a template.
#[derive(Debug)]
pub(super) struct ResolvedCheck {
    pointer: Template,
    equals: Option<Value>,
}

impl ResolvedCheck {
    /// The check as an error message names it (`/status = "error"`).
    pub(super) fn describe(&self, values: &Values<'_>) -> String {
        let pointer = self.pointer.render(values);
        match &self.equals {
            Some(expected) => format!("{pointer} = {expected}"),
            None => format!("{pointer} present"),
        }
    }

    /// Whether the answer's JSON passes the check; no JSON never does.
    pub(super) fn matches(&self, json: Option<&Value>, values: &Values<'_>) -> bool {
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

/// A JSON string, number or boolean as text; `None` for the rest.
pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A JSON pointer template, which may name the number but not the text.
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

/// A written [`JsonCheck`], its pointer checked.
fn check(key: &str, written: &Spanned<JsonCheck>) -> Result<ResolvedCheck, SmsConfigError> {
    Ok(ResolvedCheck {
        pointer: pointer(key, &written.get_ref().pointer, written.span())?,
        equals: written.get_ref().equals.clone(),
    })
}

impl AnswerRules {
    /// The answer rules `[sms.http]` (and its preset) describe, checked.
    pub(super) fn from_config(
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
        let (preset_failure, preset_pointers) = match preset.map(|p| &p.answer) {
            Some(PresetAnswer::Rules { failure_json, message_pointers }) => {
                (Some(*failure_json), *message_pointers)
            }
            Some(PresetAnswer::Provider) | None => (None, &[][..]),
        };
        let failure_json = match (&config.failure_json, preset_failure) {
            (Some(c), _) => Some(check("failure_json", c)?),
            (None, Some((pointer, equals))) => Some(ResolvedCheck {
                pointer: preset_template(pointer),
                equals: Some(Value::String(equals.to_string())),
            }),
            (None, None) => None,
        };
        let message_pointers = match &config.message_pointers {
            Some(list) => list
                .get_ref()
                .iter()
                .map(|p| pointer("message_pointers", p, list.span()))
                .collect::<Result<_, _>>()?,
            None => preset_pointers.iter().map(|p| preset_template(p)).collect(),
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
            provider: preset.and_then(|p| Provider::of(p.preset)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
