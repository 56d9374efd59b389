//! Twilio's Messages API.
//!
//! `POST https://api.twilio.com/2010-04-01/Accounts/{AccountSid}/Messages.json`
//! with a form `To`, `From` (or `MessagingServiceSid` for a Messaging
//! Service `MG…`) and `Body`, HTTP basic auth Account SID : Auth Token.
//! Accepted: HTTP 201 with the message resource, whose `sid` is the
//! reference. Refused: a 4xx with `{"code": 21211, "message": "…",
//! "more_info": "…", "status": 400}` (20003 bad credentials, 20005 account
//! not active, 20429 too many requests, 21211 invalid `To`, 21614 not a
//! mobile number).

use reqwest::StatusCode;
use serde_json::Value;

use super::{
    advice_for_status, required, text_of, Advice, Refusal, Verdict, CHECK_NUMBER, SLOW_DOWN, TOP_UP,
};
use crate::sms::http::config::{err, literal, HttpConfig, HttpPreset, PresetFields, Span};
use crate::sms::SmsConfigError;

/// What `preset = "twilio"` fills in.
pub(super) fn preset(config: &HttpConfig, span: Span) -> Result<PresetFields, SmsConfigError> {
    let preset = HttpPreset::Twilio;
    let (sid, sid_span) = required(
        preset,
        "account",
        &config.account,
        "the Account SID (AC followed by 32 hex digits, on the Twilio Console), like account = \"ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"",
        &span,
    )?;
    if !is_sid(&sid, "AC") {
        return Err(err(
            "account",
            format!("{sid:?} is not a Twilio Account SID: AC followed by 32 hex digits, as the Twilio Console shows it"),
            sid_span,
        ));
    }
    let (from, _) = required(
        preset,
        "from",
        &config.from,
        "the sender, a Twilio number like from = \"+15005550006\", an alphanumeric sender ID, or a Messaging Service SID (MG…)",
        &span,
    )?;
    let from_field = if is_sid(&from, "MG") { "MessagingServiceSid" } else { "From" };
    let form = vec![
        ("To".into(), "{phone}".into()),
        (from_field.into(), literal(&from)),
        ("Body".into(), "{text}".into()),
    ];
    let path = format!("/2010-04-01/Accounts/{sid}/Messages.json");
    let fields = PresetFields::provider_form(preset, "https://api.twilio.com", path, form);
    Ok(PresetFields { basic_auth: Some((sid, "{key}".into())), ..fields })
}

/// Whether `text` is a Twilio SID with `prefix`: two letters and 32 hex digits.
fn is_sid(text: &str, prefix: &str) -> bool {
    text.len() == 34 && text.starts_with(prefix) && text[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// What Twilio's answer says.
pub(super) fn judge(status: StatusCode, json: Option<&Value>) -> Verdict {
    let field = |name: &str| json.and_then(|j| j.get(name));
    if status.is_success() {
        return match field("sid").and_then(Value::as_str) {
            Some(sid) if !sid.is_empty() => Verdict::Sent { reference: Some(sid.to_string()) },
            _ => Verdict::Unrecognised,
        };
    }
    let code = text_of(field("code"));
    let advice = match code.as_deref() {
        Some("20003") => Advice::CheckKey,
        Some("20005" | "10001") => TOP_UP,
        Some("20429" | "14107") => SLOW_DOWN,
        Some("21211" | "21614" | "21217") => CHECK_NUMBER,
        _ => advice_for_status(status),
    };
    let words = field("message").and_then(Value::as_str).map(str::to_string);
    Verdict::Refused(Refusal { words, code, advice })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sids_are_two_letters_and_32_hex_digits() {
        assert!(is_sid("AC0123456789abcdef0123456789ABCDEF", "AC"));
        assert!(!is_sid("AC0123456789abcdef0123456789ABCDE", "AC"));
        assert!(!is_sid("MG0123456789abcdef0123456789abcdef", "AC"));
        assert!(!is_sid("AC0123456789abcdef0123456789abcdeg", "AC"));
    }

    #[test]
    fn answers_map_to_verdicts() {
        assert_eq!(
            judge(StatusCode::CREATED, Some(&json!({"sid": "SM1", "status": "queued"}))),
            Verdict::Sent { reference: Some("SM1".into()) }
        );
        assert_eq!(judge(StatusCode::CREATED, None), Verdict::Unrecognised);
        assert_eq!(
            judge(StatusCode::BAD_REQUEST, Some(&json!({"code": 21211, "message": "bad To"}))),
            Verdict::Refused(Refusal {
                words: Some("bad To".into()),
                code: Some("21211".into()),
                advice: CHECK_NUMBER
            })
        );
        assert_eq!(
            judge(StatusCode::UNAUTHORIZED, None),
            Verdict::Refused(Refusal { words: None, code: None, advice: Advice::CheckKey })
        );
    }
}
