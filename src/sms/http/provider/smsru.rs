//! SMS.RU's `sms/send`.
//!
//! `POST https://sms.ru/sms/send` with a form `api_id` (the key), `to`
//! (digits, no `+`), `msg`, `json=1` and an optional approved sender
//! `from` (the service documents GET with the same parameters too; POST
//! keeps the key out of proxies' logs). The answer is HTTP 200 even for
//! errors: `{"status": "OK", "status_code": 100, "sms": {"79991234567":
//! {"status": "OK", "status_code": 100, "sms_id": "…"}}, "balance": …}`
//! when the request was read, each number then with its own status;
//! `{"status": "ERROR", "status_code": 200, "status_text": "…"}` when it
//! was not (200 wrong api_id, 201 low balance, 202 bad recipient, 206 daily
//! limit, 207 number not allowed, 220 service unavailable, 230–232 limits
//! per number, 300/301 authorisation).

use reqwest::StatusCode;
use serde_json::Value;

use super::{
    advice_for_status, no_account, optional, text_of, Advice, Refusal, Verdict, CHECK_NUMBER,
    SLOW_DOWN, TOP_UP,
};
use crate::sms::http::config::{literal, HttpConfig, HttpPreset, PresetFields, Span};
use crate::sms::template::Values;
use crate::sms::SmsConfigError;

/// What `preset = "smsru"` fills in.
pub(super) fn preset(config: &HttpConfig, _span: Span) -> Result<PresetFields, SmsConfigError> {
    let preset = HttpPreset::Smsru;
    no_account(preset, config)?;
    let mut form: Vec<(String, String)> = vec![
        ("api_id".into(), "{key}".into()),
        ("to".into(), "{phone_digits}".into()),
        ("msg".into(), "{text}".into()),
        ("json".into(), "1".into()),
    ];
    if let Some(from) = optional("from", &config.from)? {
        form.push(("from".into(), literal(&from)));
    }
    Ok(PresetFields::provider_form(preset, "https://sms.ru", "/sms/send".into(), form))
}

/// The advice for an SMS.RU status code.
fn advice(code: Option<&str>) -> Advice {
    match code {
        Some("200" | "300" | "301") => Advice::CheckKey,
        Some("201") => TOP_UP,
        Some("202" | "207" | "209") => CHECK_NUMBER,
        Some("206" | "230" | "231" | "232") => SLOW_DOWN,
        _ => Advice::None,
    }
}

/// The refusal an object with `status_code` and `status_text` states.
fn refusal(object: &Value) -> Refusal {
    let code = text_of(object.get("status_code"));
    Refusal {
        words: object.get("status_text").and_then(Value::as_str).map(str::to_string),
        advice: advice(code.as_deref()),
        code,
    }
}

/// What SMS.RU's answer says about the message to `values.phone_digits`.
pub(super) fn judge(status: StatusCode, json: Option<&Value>, values: &Values<'_>) -> Verdict {
    if !status.is_success() {
        return Verdict::Refused(match json {
            Some(json) => Refusal { advice: advice_for_status(status), ..refusal(json) },
            None => Refusal { words: None, code: None, advice: advice_for_status(status) },
        });
    }
    let Some(json) = json else { return Verdict::Unrecognised };
    let is = |object: &Value, expected: &str| {
        object
            .get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case(expected))
    };
    if is(json, "ERROR") {
        return Verdict::Refused(refusal(json));
    }
    if !is(json, "OK") {
        return Verdict::Unrecognised;
    }
    let Some(number) = json.get("sms").and_then(|sms| sms.get(values.phone_digits)) else {
        return Verdict::Unrecognised;
    };
    if is(number, "OK") {
        Verdict::Sent { reference: text_of(number.get("sms_id")) }
    } else if is(number, "ERROR") {
        Verdict::Refused(refusal(number))
    } else {
        Verdict::Unrecognised
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_number_decides_once_the_request_was_read() {
        let values = Values { phone: "+7999", phone_digits: "7999", text: "", key: "" };
        let ok = StatusCode::OK;
        let answer =
            |number: Value| json!({"status": "OK", "status_code": 100, "sms": {"7999": number}});
        assert_eq!(
            judge(
                ok,
                Some(&answer(json!({"status": "OK", "status_code": 100, "sms_id": "1-2"}))),
                &values
            ),
            Verdict::Sent { reference: Some("1-2".into()) }
        );
        assert_eq!(
            judge(
                ok,
                Some(&answer(json!({"status": "ERROR", "status_code": 202, "status_text": "bad"}))),
                &values
            ),
            Verdict::Refused(Refusal {
                words: Some("bad".into()),
                code: Some("202".into()),
                advice: CHECK_NUMBER
            })
        );
        assert_eq!(
            judge(ok, Some(&json!({"status": "OK", "sms": {}})), &values),
            Verdict::Unrecognised
        );
        assert_eq!(judge(ok, Some(&json!({"status": "maybe"})), &values), Verdict::Unrecognised);
        assert_eq!(
            judge(
                ok,
                Some(
                    &json!({"status": "ERROR", "status_code": 200, "status_text": "Неправильный api_id"})
                ),
                &values
            ),
            Verdict::Refused(Refusal {
                words: Some("Неправильный api_id".into()),
                code: Some("200".into()),
                advice: Advice::CheckKey
            })
        );
    }
}
