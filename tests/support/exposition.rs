//! Reading the Prometheus text exposition that the exporter and jobctl
//! serve, line by line, as a scrape would see it.

use std::str::FromStr;

/// How many series of `family` the text holds (lines `family{…} value`).
pub(crate) fn count(text: &str, family: &str) -> usize {
    text.lines().filter(|line| line.starts_with(&format!("{family}{{"))).count()
}

/// The value of the one series whose line starts with `series` (its name
/// and labels, as written); `None` when there is no such line or its value
/// does not parse as `T`.
pub(crate) fn value<T: FromStr>(text: &str, series: &str) -> Option<T> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
