//! The queries a scrape source can answer without PromQL.
//!
//! With `[source] scrape = [...]` there is no Prometheus to evaluate a
//! query: jobctl answers the queries of the rules itself, from the series
//! it scraped. What a comparison term asks is the bare selector
//! `metric{label="value",…}` ([`super::Term::query`]), and a guard in the
//! metric/op/value form is `metric op number` (or `metric{…} op number`),
//! which keeps the series whose value satisfies the comparison, as PromQL's
//! filter does. [`ScrapeQuery`] reads exactly these forms; anything else
//! (a raw `expr`, a guard with functions or aggregations) needs
//! `[prometheus]`, and `jobctl check` says so where it is written.

use std::borrow::Cow;

use super::term::Op;
use crate::prometheus_api::scrape::Scraped;
use crate::prometheus_api::Label;
use crate::rules::device::is_metric_name;

/// A selector with equality matchers, and an optional comparison filter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ScrapeQuery {
    metric: String,
    matchers: Vec<(String, String)>,
    filter: Option<(Op, f64)>,
}

impl ScrapeQuery {
    /// Reads `metric`, `metric{a="x",…}`, optionally followed by
    /// `op number`; `None` for anything else.
    pub(crate) fn parse(query: &str) -> Option<ScrapeQuery> {
        let query = query.trim();
        let name_end = query.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let (metric, mut rest) = query.split_at(name_end.unwrap_or(query.len()));
        if !is_metric_name(metric) {
            return None;
        }
        let mut matchers = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = matchers_of(inner, &mut matchers)?;
        }
        let rest = rest.trim_start();
        let filter = if rest.is_empty() {
            None
        } else {
            let op_len = if rest.starts_with(['=', '!', '<', '>']) && rest[1..].starts_with('=') {
                2
            } else {
                1
            };
            let op = Op::parse(rest.get(..op_len)?)?;
            let number = rest[op_len..].trim();
            Some((op, number_of(number)?))
        };
        Some(ScrapeQuery { metric: metric.to_string(), matchers, filter })
    }

    /// Hands each scraped series this query selects to `add`, with its
    /// labels (`__name__` included for a bare selector, dropped by a
    /// comparison, as in PromQL).
    pub(crate) fn select(&self, scraped: &Scraped, add: &mut dyn FnMut(&[Label<'_>], f64)) {
        let mut labels: Vec<Label<'_>> = Vec::new();
        for series in scraped.series(&self.metric) {
            let selected = self.matchers.iter().all(|(name, value)| {
                let found = series.labels.iter().find(|(n, _)| n == name);
                // A missing label matches the empty value, as in PromQL.
                found.map_or(value.is_empty(), |(_, v)| v == value)
            });
            if !selected {
                continue;
            }
            if let Some((op, threshold)) = self.filter {
                if !op.holds(series.value, threshold) {
                    continue;
                }
            }
            labels.clear();
            if self.filter.is_none() {
                labels.push((Cow::Borrowed("__name__"), Cow::Borrowed(self.metric.as_str())));
            }
            labels.extend(
                series
                    .labels
                    .iter()
                    .map(|(n, v)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(v.as_str()))),
            );
            add(&labels, series.value);
        }
    }
}

/// The matchers after `{`, up to `}`; what follows `}`.
fn matchers_of<'a>(mut text: &'a str, out: &mut Vec<(String, String)>) -> Option<&'a str> {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Some(rest);
        }
        let name_end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
        let (name, rest) = text.split_at(name_end);
        if !crate::rules::device::is_label_name(name) {
            return None;
        }
        let rest = rest.trim_start().strip_prefix('=')?;
        // `=~`, `!=` and `!~` need PromQL's regular expressions and negation.
        let rest = rest.trim_start().strip_prefix('"')?;
        let (value, rest) = quoted(rest)?;
        out.push((name.to_string(), value));
        let rest = rest.trim_start();
        text = match rest.strip_prefix(',') {
            Some(after) => after,
            None if rest.starts_with('}') => rest,
            None => return None,
        };
    }
}

/// A double-quoted PromQL string after its `"`, with the escapes
/// [`crate::rules::device::LabelMatchers::selector`] writes; what follows.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                '\\' => value.push('\\'),
                '"' => value.push('"'),
                'n' => value.push('\n'),
                'r' => value.push('\r'),
                't' => value.push('\t'),
                'u' => {
                    let hex: String = (0..4).filter_map(|_| chars.next().map(|(_, c)| c)).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                _ => return None,
            },
            c => value.push(c),
        }
    }
    None
}

/// A PromQL number: decimal, exponent, `NaN`, `Inf` with a sign.
fn number_of(text: &str) -> Option<f64> {
    match text.to_ascii_lowercase().trim_start_matches('+') {
        "nan" => Some(f64::NAN),
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ if text.is_empty()
            || text.bytes().any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) =>
        {
            None
        }
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::device::LabelMatchers;
    use proptest::prelude::*;

    fn select(query: &str, page: &str) -> Vec<(Vec<(String, String)>, f64)> {
        let mut scraped = Scraped::default();
        scraped.add_page(page, "host:1").unwrap();
        let mut out = Vec::new();
        ScrapeQuery::parse(query).unwrap().select(&scraped, &mut |labels, value| {
            let labels = labels.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            out.push((labels, value));
        });
        out
    }

    #[test]
    fn selectors_and_comparisons_are_read_and_answered() {
        let page =
            "up{platform_id=\"1\"} 1\nup{platform_id=\"2\"} 0\nup{platform_id=\"3\",x=\"\"} 1\n";
        assert_eq!(select("up", page).len(), 3);
        let one = select("up{platform_id=\"1\"}", page);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0[0], ("__name__".to_string(), "up".to_string()));
        let filtered = select("up == 1", page);
        assert_eq!(filtered.len(), 2);
        assert_eq!(filtered[0].0[0].0, "platform_id", "a comparison drops the name");
        assert_eq!(select("up{platform_id=\"2\"} != 1", page).len(), 1);
        assert_eq!(select("up >= 0", page).len(), 3);
        assert_eq!(select("up{x=\"\"}", page).len(), 3, "a missing label matches \"\"");
    }

    #[test]
    fn what_needs_promql_is_not_read() {
        for query in [
            "rate(x[5m])",
            "up{a=~\"1\"}",
            "up{a!=\"1\"}",
            "up == bool 1",
            "sum(up)",
            "up == 1 and on() x",
            "up > up",
            "1",
            "up{a=\"1\"",
            "up == ",
        ] {
            assert_eq!(ScrapeQuery::parse(query), None, "{query}");
        }
        assert!(ScrapeQuery::parse("  addreality_platform_up == 1 ").is_some());
        assert!(ScrapeQuery::parse("m < -Inf").is_some());
        assert!(ScrapeQuery::parse("m{a=\"1\",} > 1e3").is_some());
    }

    proptest! {
        /// Whatever the device matchers hold, the selector the rules write
        /// for them reads back to the same metric and matchers.
        #[test]
        fn selectors_written_by_the_rules_read_back(
            values in proptest::collection::btree_map("[a-z_]{1,6}", any::<String>(), 0..4),
        ) {
            let matchers = LabelMatchers::new(values.clone().into_iter().collect());
            let query = ScrapeQuery::parse(&matchers.selector("job:metric_total")).unwrap();
            prop_assert_eq!(query.metric, "job:metric_total");
            let back: std::collections::BTreeMap<String, String> = query.matchers.into_iter().collect();
            prop_assert_eq!(back, values);
            prop_assert_eq!(query.filter, None);
        }
    }
}
