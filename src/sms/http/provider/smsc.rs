//! SMSC.RU's `send.php`.
//!
//! `POST https://smsc.ru/sys/send.php` with a form `login`, `psw` (the
//! key), `phones` (digits), `mes`, `fmt=3` (answer in JSON),
//! `charset=utf-8` (the default is windows-1251) and an optional approved
//! `sender`. The answer is HTTP 200 either way: `{"id": 42, "cnt": 1}`
//! when accepted, `{"error": "…", "error_code": N}` when not (1 bad
//! parameters, 2 bad login or password, 3 no money, 4 IP blocked, 6
//! message forbidden, 7 bad number, 8 cannot be delivered, 9 the same
//! request too often).

use reqwest::StatusCode;
use serde_json::Value;

use super::{
    advice_for_status, optional, required, text_of, Advice, Refusal, Verdict, CHECK_NUMBER,
    SLOW_DOWN, TOP_UP,
};
use crate::sms::http::config::{literal, HttpConfig, HttpPreset, PresetFields, Span};
use crate::sms::SmsConfigError;

/// What `preset = "smsc"` fills in.
pub(super) fn preset(config: &HttpConfig, span: Span) -> Result<PresetFields, SmsConfigError> {
    let preset = HttpPreset::Smsc;
    let (login, _) = required(
        preset,
        "account",
        &config.account,
        "the SMSC.RU login, like account = \"mylogin\" (the password goes in key_file or key_env)",
        &span,
    )?;
    let mut form: Vec<(String, String)> = vec![
        ("login".into(), literal(&login)),
        ("psw".into(), "{key}".into()),
        ("phones".into(), "{phone_digits}".into()),
        ("mes".into(), "{text}".into()),
        ("fmt".into(), "3".into()),
        ("charset".into(), "utf-8".into()),
    ];
    if let Some(from) = optional("from", &config.from)? {
        form.push(("sender".into(), literal(&from)));
    }
    Ok(PresetFields::provider_form(preset, "https://smsc.ru", "/sys/send.php".into(), form))
}

/// What SMSC.RU's answer says.
pub(super) fn judge(status: StatusCode, json: Option<&Value>) -> Verdict {
    let field = |name: &str| json.and_then(|j| j.get(name));
    let code = text_of(field("error_code"));
    let words = field("error").and_then(Value::as_str).map(str::to_string);
    if !status.is_success() {
        return Verdict::Refused(Refusal { words, code, advice: advice_for_status(status) });
    }
    if code.is_some() {
        let advice = match code.as_deref() {
            Some("2") => Advice::CheckKey,
            Some("3") => TOP_UP,
            Some("7" | "8") => CHECK_NUMBER,
            Some("9") => SLOW_DOWN,
            _ => Advice::None,
        };
        return Verdict::Refused(Refusal { words, code, advice });
    }
    match text_of(field("id")) {
        Some(id) => Verdict::Sent { reference: Some(id) },
        None => Verdict::Unrecognised,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_error_code_refuses_and_an_id_accepts() {
        let ok = StatusCode::OK;
        assert_eq!(
            judge(ok, Some(&json!({"id": 42, "cnt": 1}))),
            Verdict::Sent { reference: Some("42".into()) }
        );
        assert_eq!(
            judge(ok, Some(&json!({"error": "no money", "error_code": 3, "id": 42}))),
            Verdict::Refused(Refusal {
                words: Some("no money".into()),
                code: Some("3".into()),
                advice: TOP_UP
            })
        );
        assert_eq!(judge(ok, Some(&json!({"cnt": 1}))), Verdict::Unrecognised);
        assert_eq!(judge(ok, None), Verdict::Unrecognised);
    }
}
