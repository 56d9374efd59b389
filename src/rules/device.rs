//! Which device a series belongs to, and how jobs and sockets select devices.
//!
//! jobctl works with any exporter, so a "device" is not an AddReality
//! concept here: it is whatever a configurable set of labels identifies
//! (`device_key`, by default `platform_id` + `device_id`; `mac` for
//! exporters that label players by MAC address). Jobs keep state per
//! [`DeviceKey`], sockets name the devices they power by it, and the journal
//! stores it. Selection is by label equality only ([`LabelMatchers`]): it
//! is enough to say "platform 12" or "this player", it can be checked
//! against sockets at check time, and anything fancier belongs in a PromQL
//! `expr`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

/// The labels that identify one device, in the order the file gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeyLabels(Vec<String>);

impl DeviceKeyLabels {
    /// The labels the AddReality exporter puts on every device series.
    pub(crate) const DEFAULT: [&'static str; 2] = ["platform_id", "device_id"];

    /// Wraps validated label names (non-empty, distinct).
    pub fn new(labels: Vec<String>) -> DeviceKeyLabels {
        DeviceKeyLabels(labels)
    }

    /// The label names.
    pub(crate) fn labels(&self) -> &[String] {
        &self.0
    }

    /// The key of a series, or `None` when it lacks one of the labels (such a
    /// series cannot be attributed to a device and is ignored).
    pub(crate) fn key_of(&self, labels: &BTreeMap<String, String>) -> Option<DeviceKey> {
        let mut pairs = Vec::with_capacity(self.0.len());
        for name in &self.0 {
            pairs.push((name.clone(), labels.get(name)?.clone()));
        }
        Some(DeviceKey(pairs))
    }
}

impl Default for DeviceKeyLabels {
    fn default() -> Self {
        DeviceKeyLabels(Self::DEFAULT.iter().map(std::string::ToString::to_string).collect())
    }
}

impl fmt::Display for DeviceKeyLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// One device: the values of the device-key labels, in key order.
///
/// Displays as `{platform_id="12", device_id="30785"}` (values escaped as in
/// PromQL), which is unambiguous and stable, so it doubles as the journal's
/// text form of a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey(Vec<(String, String)>);

impl DeviceKey {
    /// Builds a key from label/value pairs, in key order.
    pub fn new(pairs: Vec<(String, String)>) -> DeviceKey {
        DeviceKey(pairs)
    }

    /// The value of one label of the key.
    pub(crate) fn get(&self, label: &str) -> Option<&str> {
        self.0.iter().find(|(name, _)| name == label).map(|(_, value)| value.as_str())
    }
}

impl fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}=\"{}\"", escape_label_value(value))?;
        }
        f.write_str("}")
    }
}

/// A small number standing for a device in a [`DeviceTable`], so that the
/// engine's per-cycle work compares integers rather than label maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct DeviceId(u32);

impl DeviceId {
    /// The id at a position in the table.
    pub(crate) fn from_index(index: usize) -> DeviceId {
        DeviceId(u32::try_from(index).expect("fewer than 4 billion devices"))
    }

    /// Its position in the table.
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// Every device the engine knows, each under a [`DeviceId`] that stays the
/// same from one cycle to the next (until [`DeviceTable::retain`]).
///
/// A device is known by its text form (the journal's), and by its
/// [`DeviceKey`] once it has been seen in an answer; a device known only
/// from the journal has no key yet.
#[derive(Debug, Default)]
pub(crate) struct DeviceTable {
    texts: Vec<Arc<str>>,
    keys: Vec<Option<DeviceKey>>,
    /// foldhash: every device of every answer is looked up here each cycle.
    by_text: HashMap<Arc<str>, DeviceId, foldhash::fast::RandomState>,
}

impl DeviceTable {
    /// The id of a device seen in an answer.
    pub(crate) fn intern_key(&mut self, key: DeviceKey) -> DeviceId {
        let id = self.intern_text(&key.to_string());
        let slot = &mut self.keys[id.index()];
        if slot.is_none() {
            *slot = Some(key);
        }
        id
    }

    /// The id of a device known by its text form.
    pub(crate) fn intern_text(&mut self, text: &str) -> DeviceId {
        if let Some(&id) = self.by_text.get(text) {
            return id;
        }
        let id = DeviceId(u32::try_from(self.texts.len()).expect("fewer than 4 billion devices"));
        let text: Arc<str> = Arc::from(text);
        self.texts.push(text.clone());
        self.keys.push(None);
        self.by_text.insert(text, id);
        id
    }

    /// The id of a device known by its text form, if it is known.
    pub(crate) fn find(&self, text: &str) -> Option<DeviceId> {
        self.by_text.get(text).copied()
    }

    /// The device's text form: `{platform_id="12", device_id="30785"}`.
    pub(crate) fn text(&self, id: DeviceId) -> &str {
        &self.texts[id.index()]
    }

    /// The device's key, when it has been seen in an answer.
    pub(crate) fn key(&self, id: DeviceId) -> Option<&DeviceKey> {
        self.keys[id.index()].as_ref()
    }

    /// How many devices the table holds.
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    /// Forgets every device for which `keep` is false and renumbers the
    /// others, keeping their order; returns each old id's new id.
    pub(crate) fn retain(&mut self, keep: &[bool]) -> Vec<Option<DeviceId>> {
        let mut renumbered = Vec::with_capacity(self.texts.len());
        let (texts, keys) = (std::mem::take(&mut self.texts), std::mem::take(&mut self.keys));
        self.by_text.clear();
        for ((text, key), keep) in texts.into_iter().zip(keys).zip(keep) {
            renumbered.push(keep.then(|| {
                let id = DeviceId(self.texts.len() as u32);
                self.by_text.insert(text.clone(), id);
                self.texts.push(text);
                self.keys.push(key);
                id
            }));
        }
        self.by_text.shrink_to_fit();
        renumbered
    }
}

/// Label equality matchers: `{ platform_id = "12" }` selects every series
/// whose `platform_id` is `12`. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelMatchers(BTreeMap<String, String>);

impl LabelMatchers {
    /// Wraps validated label names and their values.
    pub fn new(matchers: BTreeMap<String, String>) -> LabelMatchers {
        LabelMatchers(matchers)
    }

    /// The matchers, by label name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether a series with these labels is selected.
    #[cfg(test)]
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(name, value)| labels.get(name) == Some(value))
    }

    /// Whether a device with this key could be selected: no matcher on a
    /// key label contradicts it. (Matchers on other labels cannot be judged
    /// from the key alone and are taken as possible.)
    pub(crate) fn may_select(&self, key: &DeviceKey) -> bool {
        self.0.iter().all(|(name, value)| key.get(name).is_none_or(|v| v == value))
    }

    /// A PromQL selector: `metric{a="1",b="2"}`, labels sorted and values
    /// escaped, so equal selections give byte-equal queries.
    pub fn selector(&self, metric: &str) -> String {
        if self.0.is_empty() {
            return metric.to_string();
        }
        let inner: Vec<String> = self
            .0
            .iter()
            .map(|(name, value)| format!("{name}=\"{}\"", escape_label_value(value)))
            .collect();
        format!("{metric}{{{}}}", inner.join(","))
    }
}

impl fmt::Display for LabelMatchers {
    /// `device_id=30785, platform_id=12`, labels sorted; `all devices` when
    /// empty. Used in generated job names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("all devices");
        }
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// Escapes a label value for a double-quoted PromQL string: backslash,
/// quote and line breaks, and any other control character as `\u00XX`, so a
/// device name from the API can never end the string or the query early.
pub(crate) fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub(crate) fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_follow_the_configured_labels() {
        let spec = DeviceKeyLabels::default();
        let key = spec
            .key_of(&labels(&[("device_id", "30785"), ("platform_id", "12"), ("job", "x")]))
            .unwrap();
        assert_eq!(key.to_string(), r#"{platform_id="12", device_id="30785"}"#);
        assert!(spec.key_of(&labels(&[("platform_id", "12")])).is_none());
    }

    #[test]
    fn selectors_escape_values_and_sort_labels() {
        let m = LabelMatchers::new(labels(&[("platform_id", "12"), ("name", "a\"b\\c\nd\u{1a}")]));
        assert_eq!(m.selector("up"), r#"up{name="a\"b\\c\nd\u001a",platform_id="12"}"#);
        assert_eq!(LabelMatchers::default().selector("up"), "up");
    }

    #[test]
    fn may_select_judges_only_key_labels() {
        let key = DeviceKey::new(vec![("platform_id".into(), "12".into())]);
        assert!(
            LabelMatchers::new(labels(&[("platform_id", "12"), ("zone", "x")])).may_select(&key)
        );
        assert!(!LabelMatchers::new(labels(&[("platform_id", "13")])).may_select(&key));
    }

    #[test]
    fn names() {
        assert!(is_label_name("platform_id") && is_label_name("_x1"));
        assert!(!is_label_name("1x") && !is_label_name("a-b") && !is_label_name(""));
        assert!(is_metric_name("job:rate5m") && !is_metric_name("a b"));
    }
}
