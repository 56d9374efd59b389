//! Vonage's (formerly Nexmo's) SMS API.
//!
//! `POST https://rest.nexmo.com/sms/json` with a form `api_key`,
//! `api_secret` (the key), `from`, `to` (digits), `text`, and `type`:
//! `unicode` when the text has characters GSM-7 cannot carry (Cyrillic),
//! else `text`. The answer is HTTP 200 with one entry per part of the
//! message: `{"message-count": "1", "messages": [{"status": "0",
//! "message-id": "…", …}]}`; a non-zero `status` with `error-text` means
//! that part was refused (1 throttled, 2 missing parameters, 3 invalid
//! parameters, 4 invalid credentials, 5 internal error, 6 invalid message,
//! 7 number barred, 8 account barred, 9 partner quota exceeded, i.e. no
//! balance, 29 non-whitelisted destination).

use reqwest::StatusCode;
use serde_json::Value;

use super::{
    advice_for_status, required, text_of, Advice, Refusal, Verdict, CHECK_NUMBER, SLOW_DOWN, TOP_UP,
};
use crate::sms::http::config::{
    literal, HttpConfig, HttpPreset, PresetFields, Span, TextKindField,
};
use crate::sms::SmsConfigError;

/// What `preset = "vonage"` fills in.
pub(super) fn preset(config: &HttpConfig, span: Span) -> Result<PresetFields, SmsConfigError> {
    let preset = HttpPreset::Vonage;
    let (api_key, _) = required(
        preset,
        "account",
        &config.account,
        "the API key from the Vonage dashboard, like account = \"a1b2c3d4\" (the API secret goes in key_file or key_env)",
        &span,
    )?;
    let (from, _) = required(
        preset,
        "from",
        &config.from,
        "the sender, a Vonage number like from = \"447700900000\" or an alphanumeric sender ID",
        &span,
    )?;
    let form = vec![
        ("api_key".into(), literal(&api_key)),
        ("api_secret".into(), "{key}".into()),
        ("from".into(), literal(&from)),
        ("to".into(), "{phone_digits}".into()),
        ("text".into(), "{text}".into()),
    ];
    let fields =
        PresetFields::provider_form(preset, "https://rest.nexmo.com", "/sms/json".into(), form);
    // Plain text unless it needs Unicode, which costs more parts.
    let text_kind = Some(TextKindField { name: "type", gsm7: "text", unicode: "unicode" });
    Ok(PresetFields { text_kind, ..fields })
}

/// The advice for a Vonage status.
fn advice(status: &str) -> Advice {
    match status {
        "1" => SLOW_DOWN,
        "4" => Advice::CheckKey,
        "9" => TOP_UP,
        "6" | "7" => CHECK_NUMBER,
        _ => Advice::None,
    }
}

/// What Vonage's answer says: every part accepted is sent, every part
/// refused is refused, some of each (or an internal error) may have left.
pub(super) fn judge(status: StatusCode, json: Option<&Value>) -> Verdict {
    if !status.is_success() {
        return Verdict::Refused(Refusal {
            words: None,
            code: None,
            advice: advice_for_status(status),
        });
    }
    let Some(parts) = json.and_then(|j| j.get("messages")).and_then(Value::as_array) else {
        return Verdict::Unrecognised;
    };
    let statuses: Option<Vec<String>> = parts.iter().map(|p| text_of(p.get("status"))).collect();
    let Some(statuses) = statuses.filter(|s| !s.is_empty()) else {
        return Verdict::Unrecognised;
    };
    let Some(refused) = statuses.iter().position(|s| s != "0") else {
        let ids: Vec<String> = parts.iter().filter_map(|p| text_of(p.get("message-id"))).collect();
        return Verdict::Sent { reference: (!ids.is_empty()).then(|| ids.join(",")) };
    };
    let code = statuses[refused].clone();
    let words = parts[refused].get("error-text").and_then(Value::as_str).map(str::to_string);
    if statuses.iter().any(|s| s == "0") {
        let refusal = Refusal {
            words,
            code: Some(code),
            advice: Advice::Say(
                "; other parts of the message were accepted, so it may have arrived in part",
            ),
        };
        return Verdict::Unsure(refusal);
    }
    if code == "5" {
        let refusal = Refusal {
            words,
            code: Some(code),
            advice: Advice::Say(
                "; an internal error of Vonage's, which may have sent the message anyway",
            ),
        };
        return Verdict::Unsure(refusal);
    }
    Verdict::Refused(Refusal { words, advice: advice(&code), code: Some(code) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_part_must_be_accepted() {
        let ok = StatusCode::OK;
        let answer = |parts: Value| json!({"message-count": "2", "messages": parts});
        assert_eq!(
            judge(
                ok,
                Some(&answer(
                    json!([{"status": "0", "message-id": "A"}, {"status": "0", "message-id": "B"}])
                ))
            ),
            Verdict::Sent { reference: Some("A,B".into()) }
        );
        assert!(matches!(
            judge(
                ok,
                Some(&answer(json!([{"status": "0"}, {"status": "1", "error-text": "Throttled"}])))
            ),
            Verdict::Unsure(_)
        ));
        assert_eq!(
            judge(
                ok,
                Some(&answer(json!([{"status": "9", "error-text": "Quota Exceeded - rejected"}])))
            ),
            Verdict::Refused(Refusal {
                words: Some("Quota Exceeded - rejected".into()),
                code: Some("9".into()),
                advice: TOP_UP
            })
        );
        assert_eq!(judge(ok, Some(&answer(json!([])))), Verdict::Unrecognised);
        assert_eq!(judge(ok, None), Verdict::Unrecognised);
    }
}
