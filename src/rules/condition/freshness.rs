//! Which of a device's series to believe when several targets serve it: a
//! pair of exporters on the same accounts (for redundancy), scraped by one
//! Prometheus or by jobctl itself, gives every device one series per
//! exporter, differing only in the target's labels (`instance`, `job`).
//!
//! They describe one device (the device key ignores those labels), and
//! they usually agree. When they do not, one exporter's cache is older
//! than the other's: its AddReality polls fail (a bad token, a network
//! problem on its host) while it goes on serving what it last saw. Its
//! series look as fresh as the other's to Prometheus (a sample is stamped
//! with the time of the scrape, and an instant query answers with the time
//! of the query, not of the sample), so the age of the *data* must come
//! from the exporter: each serves
//! [`FRESHNESS_QUERY`]`{platform_id}`, the Unix time of its last
//! successful poll of that account.
//!
//! The rule, one for both sources and for the replay and the onset dating
//! (they all read answers through [`super::answers::View`]): of a device's
//! series in one answer, only those whose target polled the device's
//! account most recently count. A series is joined to the freshness series
//! whose labels, `__name__` aside, it all carries (`instance`, `job` and
//! `platform_id` with Prometheus; `instance` and `platform_id` when jobctl
//! scrapes). A series no freshness series joins is older than any that
//! one joins. When nothing tells them apart (the freshness query failed,
//! or the same time), every one of them counts, as without a pair: a
//! comparison is then true only when all of them satisfy it.
//!
//! A stale exporter therefore neither fires a job (its `online 0` loses to
//! the other's fresh `online 1`) nor ends an episode (its `online 1` loses
//! to the other's `online 0`); unknown stays unknown, as a device's only
//! series is unknown when its exporter is down. A raw `expr` answers with
//! the series for which it holds, so a stale exporter's series may be the
//! only one there: use `metric`/`op`/`value` comparisons (which query the
//! bare selector) where exporters run in pairs.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::answers::{Answer, Answers, StrId};

/// The query whose answer dates each target's data: the AddReality
/// exporter's time of its last successful poll, per account. Sent with
/// every cycle's queries (and fetched over the range the onset dating and
/// the replay walk).
pub(crate) const FRESHNESS_QUERY: &str = "addreality_platform_last_success_timestamp_seconds";

/// `queries` with [`FRESHNESS_QUERY`] added at the end, unless it is there
/// already or there is nothing to ask.
pub(crate) fn with_freshness(mut queries: Vec<String>) -> Vec<String> {
    if !queries.is_empty() && !queries.iter().any(|q| q == FRESHNESS_QUERY) {
        queries.push(FRESHNESS_QUERY.to_string());
    }
    queries
}

/// One cycle's [`FRESHNESS_QUERY`] answer, indexed for joining: the
/// freshness series grouped by their label names, each group's times by
/// their label values.
#[derive(Default)]
pub(super) struct Freshness {
    groups: Vec<Group>,
}

/// The freshness series that carry the same label names.
struct Group {
    /// The label names (`__name__` aside), in the series' order.
    names: Vec<StrId>,
    /// The newest time for each tuple of those labels' values.
    times: HashMap<Vec<StrId>, f64, RandomState>,
}

impl Freshness {
    /// The index of this cycle's freshness answer; empty when the query
    /// failed or was not asked.
    pub(super) fn new(answers: &Answers) -> Freshness {
        let mut freshness = Freshness::default();
        let Some(answer) = answers.answer(FRESHNESS_QUERY) else { return freshness };
        let metric_name = answers.find("__name__");
        for series in &answer.series {
            if series.value.is_nan() {
                continue;
            }
            let labels = answers.labels(series);
            let names: Vec<StrId> = labels
                .iter()
                .map(|&(name, _)| name)
                .filter(|&name| Some(name) != metric_name)
                .collect();
            let values: Vec<StrId> = labels
                .iter()
                .filter(|&&(name, _)| Some(name) != metric_name)
                .map(|&(_, value)| value)
                .collect();
            let at = match freshness.groups.iter().position(|g| g.names == names) {
                Some(at) => at,
                None => {
                    freshness.groups.push(Group { names, times: HashMap::default() });
                    freshness.groups.len() - 1
                }
            };
            let time = freshness.groups[at].times.entry(values).or_insert(series.value);
            *time = time.max(series.value);
        }
        freshness
    }

    /// The time of the newest poll behind a series with these labels;
    /// `None` when no freshness series joins it.
    fn of(&self, labels: &[(StrId, StrId)], tuple: &mut Vec<StrId>) -> Option<f64> {
        let mut newest: Option<f64> = None;
        for group in &self.groups {
            tuple.clear();
            for name in &group.names {
                match labels.iter().find(|(n, _)| n == name) {
                    Some(&(_, value)) => tuple.push(value),
                    None => break,
                }
            }
            if tuple.len() < group.names.len() {
                continue;
            }
            if let Some(&time) = group.times.get(tuple.as_slice()) {
                newest = Some(newest.map_or(time, |n| n.max(time)));
            }
        }
        newest
    }

    /// Appends to `kept` those of one device's series (`run`: indices into
    /// `answer`, more than one) that count: those of the freshest target,
    /// or every one when nothing tells them apart. Returns whether some
    /// were left out.
    pub(super) fn keep_freshest(
        &self,
        answers: &Answers,
        answer: &Answer,
        run: &[u32],
        kept: &mut Vec<u32>,
    ) -> bool {
        if self.groups.is_empty() {
            kept.extend_from_slice(run);
            return false;
        }
        let mut tuple = Vec::new();
        let times: Vec<Option<f64>> = run
            .iter()
            .map(|&s| self.of(answers.labels(&answer.series[s as usize]), &mut tuple))
            .collect();
        let Some(newest) = times.iter().flatten().copied().reduce(f64::max) else {
            kept.extend_from_slice(run);
            return false;
        };
        let before = kept.len();
        kept.extend(run.iter().zip(&times).filter(|(_, t)| **t == Some(newest)).map(|(&s, _)| s));
        kept.len() - before < run.len()
    }
}
