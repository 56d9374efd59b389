//! `[sms.http]` checked as a whole, before the key is read: the request,
//! the answer rules, where the key comes from and the timeouts.
//!
//! Kept apart from the sender so that loading the rules
//! ([`crate::sms::SmsConfig::check`]) runs the very checks a sender is
//! built with, without reading a secret.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::answer::AnswerRules;
use super::config::{
    err, HttpConfig, PresetFields, Span, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT,
};
use super::provider::{no_provider_fields, preset_fields, Provider};
use super::request::RequestTemplate;
use crate::secret::{Secret, SecretSource};
use crate::sms::template::Var;
use crate::sms::{positive_duration, SmsConfigError};

/// `[sms.http]` checked, before the key is read.
pub(super) struct Settings {
    pub(super) request: RequestTemplate,
    pub(super) answer: AnswerRules,
    pub(super) key_source: Option<KeySource>,
    pub(super) timeout: Duration,
    pub(super) connect_timeout: Duration,
}

impl Settings {
    /// Every check of `[sms.http]` that reads no key; a relative
    /// `key_file` is taken from `base_dir`.
    pub(super) fn from_config(
        config: &HttpConfig,
        base_dir: &Path,
    ) -> Result<Settings, SmsConfigError> {
        let preset_span = config.preset.as_ref().map(Spanned::span);
        let preset = match &config.preset {
            Some(preset) => Some(preset_fields(*preset.get_ref(), config, preset_span.clone())?),
            None => {
                no_provider_fields(config)?;
                None
            }
        };
        let request = RequestTemplate::from_config(config, preset.as_ref(), &preset_span)?;
        let answer = AnswerRules::from_config(config, preset.as_ref())?;
        let key_source = key_source(config, &request, base_dir, preset.as_ref(), preset_span)?;
        let (timeout, connect_timeout) = timeouts(config)?;
        Ok(Settings { request, answer, key_source, timeout, connect_timeout })
    }
}

/// Where the key is read from, when the request uses one.
pub(super) struct KeySource {
    pub(super) source: SecretSource,
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
    preset: Option<&PresetFields>,
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
        (None, None) => {
            let provider = preset.and_then(|p| Some((p.preset, Provider::of(p.preset)?)));
            return match (request.place_using(|t| t.uses(Var::Key)), provider) {
                (Some(_), Some((preset, provider))) => Err(err(
                    "key_file",
                    format!(
                        "preset \"{}\" needs {}: set key_file (a file of mode 600) or key_env",
                        preset.name(),
                        provider.key_is()
                    ),
                    preset_span,
                )),
                (Some(place), None) => Err(err(
                    "key_file",
                    format!("{place} uses {{key}}, but neither key_file nor key_env is set"),
                    preset_span.or(config.url.as_ref().map(Spanned::span)),
                )),
                (None, _) => Ok(None),
            };
        }
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
pub(super) fn load_key(key: &KeySource) -> Result<Secret, SmsConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sms::http::HttpSender;

    fn config(text: &str) -> HttpConfig {
        toml::from_str(text).unwrap()
    }

    fn build_error(text: &str) -> String {
        HttpSender::from_config(&config(text), Path::new(".")).unwrap_err().to_string()
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
}
