//! The checks of `[[webhooks]]`, of the `escalate` lists (top-level and per
//! job) and of `webhooks_on_action`: every webhook a list names exists,
//! URLs are `http://` or `https://`, and each webhook names its signing key.
//! The key itself is read when it is needed (`jobctl check`, `jobctl run`,
//! each delivery), as the SMS gateway's is.

use std::collections::HashSet;

use toml::Spanned;

use crate::rules::checker::Checker;
use crate::rules::config::{RawLabels, RawWebhook};
use crate::rules::escalate::{EscalationTarget, Webhook, DEFAULT_WEBHOOK_TIMEOUT};
use crate::rules::template::Template;
use crate::secret::SecretSource;
use crate::sms::phone::PhoneNumber;

/// The example written in messages about an `escalate` list.
const EXAMPLE: &str =
    "escalate = [{ sms = \"{job}: {name} still offline\", to = [\"+79991234567\"] }, { webhook = \"ops\" }]";

/// Checks `[[webhooks]]`; names are unique.
pub(crate) fn webhooks(ck: &mut Checker<'_>, raw: &[Spanned<RawWebhook>]) -> Vec<Webhook> {
    let mut out: Vec<Webhook> = Vec::new();
    for (index, entry) in raw.iter().enumerate() {
        let r = entry.get_ref();
        let label = match &r.name {
            Some(n) if !n.get_ref().trim().is_empty() => format!("webhook {:?}", n.get_ref()),
            _ => format!("webhook #{}", index + 1),
        };
        let name = match &r.name {
            None => {
                ck.at(entry.span(), format!("{label}: name is missing; add name = \"ops\""));
                None
            }
            Some(n) => match ck.non_empty(n, &format!("{label}: name")) {
                Some(name) if out.iter().any(|w| w.name == name) => {
                    ck.at(n.span(), format!("{label}: name is already used by another webhook"));
                    None
                }
                name => name,
            },
        };
        let url = match &r.url {
            None => {
                ck.at(
                    entry.span(),
                    format!(
                        "{label}: url is missing; add url = \"https://ops.example/hooks/watchdog\""
                    ),
                );
                None
            }
            Some(url) => match reqwest::Url::parse(url.get_ref().trim()) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
                    Some((parsed, url.span()))
                }
                Ok(_) => {
                    ck.at(
                        url.span(),
                        format!("{label}: url: only http:// and https:// URLs with a host are posted to"),
                    );
                    None
                }
                Err(err) => {
                    ck.at(
                        url.span(),
                        format!("{label}: url is not a URL ({err}); write it like \"https://ops.example/hooks/watchdog\""),
                    );
                    None
                }
            },
        };
        let secret = match (&r.secret_file, &r.secret_env) {
            (Some(file), None) => Some((SecretSource::File(file.get_ref().into()), file.span())),
            (None, Some(env)) => Some((SecretSource::Env(env.get_ref().clone()), env.span())),
            (Some(_), Some(env)) => {
                ck.at(
                    env.span(),
                    format!("{label}: secret_file and secret_env are both set; keep one"),
                );
                None
            }
            (None, None) => {
                ck.at(
                    entry.span(),
                    format!("{label}: no signing key; add secret_file = \"/etc/signage-watchdog/ops.key\" (or secret_env) holding a random key that the receiver shares"),
                );
                None
            }
        };
        let timeout = match &r.timeout {
            None => Some(DEFAULT_WEBHOOK_TIMEOUT),
            Some(t) if t.get_ref().0.is_zero() => {
                ck.at(t.span(), format!("{label}: timeout must be longer than 0s"));
                None
            }
            Some(t) => Some(t.get_ref().0),
        };
        if let (Some(name), Some((url, url_span)), Some((secret, secret_span)), Some(timeout)) =
            (name, url, secret, timeout)
        {
            out.push(Webhook { name, url, secret, secret_span, url_span, timeout });
        }
    }
    out
}

/// Checks an `escalate` list; `what` begins its messages (`job "offline":
/// escalate`, `escalate`).
pub(crate) fn escalate_list(
    ck: &mut Checker<'_>,
    what: &str,
    raw: &Spanned<Vec<Spanned<RawLabels>>>,
    webhooks: &[Webhook],
) -> Option<Vec<EscalationTarget>> {
    let mut ok = true;
    let mut targets = Vec::new();
    for (index, entry) in raw.get_ref().iter().enumerate() {
        let what = format!("{what}[{index}]");
        match target(ck, &what, entry, webhooks) {
            Some(target) => targets.push(target),
            None => ok = false,
        }
    }
    ok.then_some(targets)
}

fn target(
    ck: &mut Checker<'_>,
    what: &str,
    raw: &Spanned<RawLabels>,
    webhooks: &[Webhook],
) -> Option<EscalationTarget> {
    let map = raw.get_ref();
    let find = |key: &str| map.iter().find(|(k, _)| k.get_ref() == key);
    if let Some((key, _)) =
        map.iter().find(|(k, _)| !matches!(k.get_ref().as_str(), "sms" | "to" | "webhook"))
    {
        ck.at(
            key.span(),
            format!(
                "{what}: no key {:?}; a target is {{ sms, to }} or {{ webhook }}, like {EXAMPLE}",
                key.get_ref()
            ),
        );
        return None;
    }
    match (find("sms"), find("webhook")) {
        (Some(_), Some((key, _))) => {
            ck.at(key.span(), format!("{what}: sms and webhook in one target; write two targets"));
            None
        }
        (None, None) => {
            ck.at(
                raw.span(),
                format!("{what}: a target needs sms (with to) or webhook, like {EXAMPLE}"),
            );
            None
        }
        (None, Some((_, name))) => {
            if let Some((key, _)) = find("to") {
                ck.at(key.span(), format!("{what}: to only goes with sms"));
                return None;
            }
            let name = webhook_name(ck, what, name, webhooks)?;
            Some(EscalationTarget::Webhook { name })
        }
        (Some((_, text)), None) => {
            let text = match text.get_ref() {
                toml::Value::String(s) if s.trim().is_empty() => {
                    ck.at(text.span(), format!("{what}.sms is empty"));
                    None
                }
                toml::Value::String(s) => match Template::parse(s) {
                    Ok(t) => Some(t),
                    Err(err) => {
                        ck.at(text.span(), format!("{what}.sms: {err}"));
                        None
                    }
                },
                _ => {
                    ck.at(text.span(), format!("{what}.sms must be a string"));
                    None
                }
            };
            let Some((key, to)) = find("to") else {
                ck.at(
                    raw.span(),
                    format!("{what}: sms needs to = [\"+79991234567\"], the people to tell"),
                );
                return None;
            };
            let to = phones(ck, what, key.span(), to)?;
            Some(EscalationTarget::Sms { text: text?, to })
        }
    }
}

/// `to`: one number or a non-empty list of them, each once.
fn phones(
    ck: &mut Checker<'_>,
    what: &str,
    key: std::ops::Range<usize>,
    raw: &Spanned<toml::Value>,
) -> Option<Vec<PhoneNumber>> {
    let values: Vec<&toml::Value> = match raw.get_ref() {
        toml::Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    if values.is_empty() {
        ck.at(key, format!("{what}.to is empty; name at least one phone number"));
        return None;
    }
    let mut ok = true;
    let mut out: Vec<PhoneNumber> = Vec::new();
    for value in values {
        match value {
            toml::Value::String(s) => match PhoneNumber::parse(s) {
                Ok(phone) if out.contains(&phone) => {
                    ck.at(raw.span(), format!("{what}.to names {phone} twice"));
                    ok = false;
                }
                Ok(phone) => out.push(phone),
                Err(err) => {
                    ck.at(raw.span(), format!("{what}.to: {err}"));
                    ok = false;
                }
            },
            _ => {
                ck.at(raw.span(), format!("{what}.to must be phone numbers in strings"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A webhook's name, which must be a `[[webhooks]]` entry's.
fn webhook_name(
    ck: &mut Checker<'_>,
    what: &str,
    raw: &Spanned<toml::Value>,
    webhooks: &[Webhook],
) -> Option<String> {
    let toml::Value::String(name) = raw.get_ref() else {
        ck.at(
            raw.span(),
            format!("{what}.webhook must be the name of a [[webhooks]] entry, in a string"),
        );
        return None;
    };
    known_webhook(ck, what, raw.span(), name, webhooks)
}

fn known_webhook(
    ck: &mut Checker<'_>,
    what: &str,
    span: std::ops::Range<usize>,
    name: &str,
    webhooks: &[Webhook],
) -> Option<String> {
    if webhooks.iter().any(|w| w.name == name) {
        return Some(name.to_string());
    }
    let known: Vec<String> = webhooks.iter().map(|w| format!("{:?}", w.name)).collect();
    let hint = if known.is_empty() {
        "no [[webhooks]] entry is configured in the main file".to_string()
    } else {
        format!("the webhooks are {}", known.join(", "))
    };
    ck.at(span, format!("{what}: unknown webhook {name:?}; {hint}"));
    None
}

/// `webhooks_on_action`: names of webhooks, each known and named once.
pub(crate) fn webhooks_on_action(
    ck: &mut Checker<'_>,
    what: &str,
    raw: &Spanned<Vec<Spanned<String>>>,
    webhooks: &[Webhook],
) -> Option<Vec<String>> {
    let mut ok = true;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in raw.get_ref() {
        if !seen.insert(name.get_ref().clone()) {
            ck.at(name.span(), format!("{what}: webhook {:?} is named twice", name.get_ref()));
            ok = false;
            continue;
        }
        match known_webhook(ck, what, name.span(), name.get_ref(), webhooks) {
            Some(name) => out.push(name),
            None => ok = false,
        }
    }
    ok.then_some(out)
}
