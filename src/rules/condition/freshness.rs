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
//! (they all read answers through `answers::View`, which applies it with
//! the cycle's freshness answer indexed for the join): of a device's
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

/// Appends to `kept` those of one device's series (`run`, more than one)
/// that count, given the time of the newest poll behind each (`times`, in
/// `run`'s order; `None` when no freshness series joins it): those of the
/// freshest target, or every one when nothing tells them apart. Returns
/// whether some were left out.
pub(super) fn keep_freshest(run: &[u32], times: &[Option<f64>], kept: &mut Vec<u32>) -> bool {
    let Some(newest) = times.iter().flatten().copied().reduce(f64::max) else {
        kept.extend_from_slice(run);
        return false;
    };
    let before = kept.len();
    kept.extend(run.iter().zip(times).filter(|(_, t)| **t == Some(newest)).map(|(&s, _)| s));
    kept.len() - before < run.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_poll_wins_and_ties_keep_every_series() {
        let mut kept = Vec::new();
        assert!(keep_freshest(&[4, 7, 9], &[Some(10.0), None, Some(20.0)], &mut kept));
        assert_eq!(kept, [9]);
        kept.clear();
        assert!(!keep_freshest(&[4, 7], &[Some(20.0), Some(20.0)], &mut kept));
        assert_eq!(kept, [4, 7], "polled at the same time: both count");
        kept.clear();
        assert!(!keep_freshest(&[4, 7], &[None, None], &mut kept));
        assert_eq!(kept, [4, 7], "no freshness: both count");
        assert_eq!(with_freshness(vec![]), Vec::<String>::new());
        assert_eq!(with_freshness(vec!["up".into()]), ["up", FRESHNESS_QUERY]);
        assert_eq!(with_freshness(vec![FRESHNESS_QUERY.into()]), [FRESHNESS_QUERY]);
    }
}
