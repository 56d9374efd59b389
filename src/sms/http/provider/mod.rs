//! The SMS providers `[sms.http]` has presets for: Twilio, SMS.RU, SMSC.RU
//! and Vonage, each one file.
//!
//! A provider preset fills in the request the provider documents (its URL,
//! method, fields and where the secret goes) from two values a sysadmin
//! writes, `account` and `from`, and judges the answer by what the provider
//! documents rather than by answer rules in the file: which answers mean
//! "accepted", which mean "refused" (definitely not sent: bad credentials,
//! a bad number, no balance, a rate limit), and which leave it open. Those
//! APIs answer one send call; delivery reports come later by a poll or a
//! callback and are not read here, so "sent" means "the provider accepted
//! it".
//!
//! Every provider is judged the same way at the HTTP level: an HTTP 5xx is
//! uncertain (the provider may have queued the message before failing),
//! any other status outside 2xx is a refusal, and a 2xx whose body is not
//! the documented answer is uncertain. Each file reads the body.

pub(super) mod smsc;
pub(super) mod smsru;
pub(super) mod twilio;
pub(super) mod vonage;

use reqwest::StatusCode;
use serde_json::Value;

use super::config::{err, gateway_fields, HttpConfig, HttpPreset, PresetFields, Span};
use crate::sms::template::Values;
use crate::sms::SmsConfigError;

/// A provider with a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Provider {
    /// `twilio`: [`twilio`].
    Twilio,
    /// `smsru`: [`smsru`].
    Smsru,
    /// `smsc`: [`smsc`].
    Smsc,
    /// `vonage`: [`vonage`].
    Vonage,
}

/// What a provider's answer says about one message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Accepted; the provider's id of the message, when it gave one.
    Sent { reference: Option<String> },
    /// Refused: the message certainly did not leave.
    Refused(Refusal),
    /// Reported as failed, but the message may have left anyway (an
    /// internal error, a message sent in part).
    Unsure(Refusal),
    /// A 2xx that is not the documented answer: it may have left.
    Unrecognised,
}

/// The provider's explanation of a refusal.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    /// The provider's words; `None`: quote the start of the body.
    pub(super) words: Option<String>,
    /// The provider's error code.
    pub(super) code: Option<String>,
    pub(super) advice: Advice,
}

/// What a sysadmin can do about a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Advice {
    /// Nothing to add to the provider's words.
    None,
    /// The credentials are wrong: names where the key comes from.
    CheckKey,
    /// Words of advice, starting with `"; "`.
    Say(&'static str),
}

/// No balance, or an account suspended for it.
pub(super) const TOP_UP: Advice = Advice::Say("; top up the account");
/// A rate limit, before the message was accepted.
pub(super) const SLOW_DOWN: Advice = Advice::Say("; the provider is limiting the rate of messages");
/// The recipient's number is invalid or cannot be reached.
pub(super) const CHECK_NUMBER: Advice = Advice::Say("; check the recipient's phone number");
/// Nothing answers at that address and method.
pub(super) const CHECK_URL: Advice = Advice::Say("; check url and path");

impl Provider {
    /// The provider behind `preset`, if it is one.
    pub(super) fn of(preset: HttpPreset) -> Option<Provider> {
        match preset {
            HttpPreset::Gateway => None,
            HttpPreset::Twilio => Some(Provider::Twilio),
            HttpPreset::Smsru => Some(Provider::Smsru),
            HttpPreset::Smsc => Some(Provider::Smsc),
            HttpPreset::Vonage => Some(Provider::Vonage),
        }
    }

    /// The provider's name in messages.
    pub(super) fn name(self) -> &'static str {
        match self {
            Provider::Twilio => "Twilio",
            Provider::Smsru => "SMS.RU",
            Provider::Smsc => "SMSC.RU",
            Provider::Vonage => "Vonage",
        }
    }

    /// How an error code is named in messages (`"Twilio error 21211"`).
    pub(super) fn code_label(self) -> &'static str {
        match self {
            Provider::Twilio => "Twilio error",
            Provider::Smsru => "SMS.RU status_code",
            Provider::Smsc => "SMSC.RU error_code",
            Provider::Vonage => "Vonage status",
        }
    }

    /// What the key is, in messages.
    pub(super) fn key_is(self) -> &'static str {
        match self {
            Provider::Twilio => "the Auth Token",
            Provider::Smsru => "the api_id",
            Provider::Smsc => "the password",
            Provider::Vonage => "the API secret",
        }
    }

    /// Whether the credentials have a part in `account` (named in "check
    /// the key" advice).
    pub(super) fn has_account(self) -> bool {
        self != Provider::Smsru
    }

    /// What the provider's answer says. HTTP 5xx never reaches here (it is
    /// uncertain for every provider); `json` is the body when it is JSON.
    pub(super) fn judge(
        self,
        status: StatusCode,
        json: Option<&Value>,
        values: &Values<'_>,
    ) -> Verdict {
        match self {
            Provider::Twilio => twilio::judge(status, json),
            Provider::Smsru => smsru::judge(status, json, values),
            Provider::Smsc => smsc::judge(status, json),
            Provider::Vonage => vonage::judge(status, json),
        }
    }
}

/// What `preset` fills in, its provider's fields checked.
pub(super) fn preset_fields(
    preset: HttpPreset,
    config: &HttpConfig,
    span: Span,
) -> Result<PresetFields, SmsConfigError> {
    let Some(provider) = Provider::of(preset) else {
        no_provider_fields(config)?;
        return Ok(gateway_fields());
    };
    refuse_answer_rules(provider, preset, config, &span)?;
    match provider {
        Provider::Twilio => twilio::preset(config, span),
        Provider::Smsru => smsru::preset(config, span),
        Provider::Smsc => smsc::preset(config, span),
        Provider::Vonage => vonage::preset(config, span),
    }
}

/// Refuses `account` and `from` where no provider preset uses them.
pub(super) fn no_provider_fields(config: &HttpConfig) -> Result<(), SmsConfigError> {
    for (key, written) in [("account", &config.account), ("from", &config.from)] {
        if let Some(value) = written {
            return Err(err(
                key,
                format!("only the provider presets (twilio, smsru, smsc, vonage) use {key}; without one, write it in query, form or json"),
                Some(value.span()),
            ));
        }
    }
    Ok(())
}

/// A provider preset judges answers itself: answer rules in the file
/// would be silently ignored, so they are refused.
fn refuse_answer_rules(
    provider: Provider,
    preset: HttpPreset,
    config: &HttpConfig,
    span: &Span,
) -> Result<(), SmsConfigError> {
    let spans: [(&str, Option<Span>); 7] = [
        ("success_status", config.success_status.as_ref().map(|s| Some(s.span()))),
        ("success_body_contains", config.success_body_contains.as_ref().map(|_| span.clone())),
        ("failure_body_contains", config.failure_body_contains.as_ref().map(|_| span.clone())),
        ("success_json", config.success_json.as_ref().map(|s| Some(s.span()))),
        ("failure_json", config.failure_json.as_ref().map(|s| Some(s.span()))),
        ("message_pointers", config.message_pointers.as_ref().map(|s| Some(s.span()))),
        ("reference_pointer", config.reference_pointer.as_ref().map(|s| Some(s.span()))),
    ];
    for (key, written) in spans {
        if let Some(at) = written {
            return Err(err(
                key,
                format!(
                    "preset \"{}\" judges {}'s answers as {} documents them; remove {key}, or drop the preset to describe the answers yourself",
                    preset.name(),
                    provider.name(),
                    provider.name()
                ),
                at,
            ));
        }
    }
    Ok(())
}

/// The value of `key` (`account` or `from`), required by `preset` and
/// checked: not empty, no control characters or spaces.
pub(super) fn required(
    preset: HttpPreset,
    key: &str,
    written: &Option<toml::Spanned<String>>,
    what: &str,
    span: &Span,
) -> Result<(String, Span), SmsConfigError> {
    match written {
        None => {
            Err(err(key, format!("preset \"{}\" needs {key}: {what}", preset.name()), span.clone()))
        }
        Some(value) => Ok((checked(key, value)?, Some(value.span()))),
    }
}

/// The value of an optional `from`, checked.
pub(super) fn optional(
    key: &str,
    written: &Option<toml::Spanned<String>>,
) -> Result<Option<String>, SmsConfigError> {
    written.as_ref().map(|value| checked(key, value)).transpose()
}

fn checked(key: &str, value: &toml::Spanned<String>) -> Result<String, SmsConfigError> {
    let text = value.get_ref().trim();
    if text.is_empty() {
        return Err(err(key, "is empty", Some(value.span())));
    }
    if text.chars().any(char::is_control) {
        return Err(err(key, "contains a control character", Some(value.span())));
    }
    Ok(text.to_string())
}

/// Refuses `account` where `preset` has no use for it.
pub(super) fn no_account(preset: HttpPreset, config: &HttpConfig) -> Result<(), SmsConfigError> {
    match &config.account {
        Some(account) => Err(err(
            "account",
            format!(
                "preset \"{}\" has no account: the key (key_file or key_env) identifies it",
                preset.name()
            ),
            Some(account.span()),
        )),
        None => Ok(()),
    }
}

/// A JSON string or number as text (codes come as either).
pub(super) fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The advice HTTP itself gives for a refusal.
pub(super) fn advice_for_status(status: StatusCode) -> Advice {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Advice::CheckKey,
        StatusCode::TOO_MANY_REQUESTS => SLOW_DOWN,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => CHECK_URL,
        _ => Advice::None,
    }
}
