//! The silences as the running engine sees them: read from the journal
//! only when a `jobctl silence` command changed it, matched against the
//! actions that fall due, and each hold recorded once.
//!
//! Silences are written by other processes while the daemon runs, so the
//! engine asks SQLite each cycle whether another connection committed
//! (`PRAGMA data_version`, a counter read without touching a table) and
//! rereads the silences that have not ended only then. Ending by time needs
//! no reread: every cycle keeps the silences active at its own `now`.
//!
//! Matching costs nothing for the vast majority of (job, device) pairs: only
//! an action that the state machine finds due is matched, and only against
//! the silences that can hold its job. A held action is logged, counted and
//! journalled once per (job, device, episode, silence), not every cycle.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use super::metrics::EngineMetrics;
use super::outbox::blocking;
use super::states::HeldBySilence;
use crate::error::with_causes;
use crate::journal::{HeldAction, Journal, Silence, SilenceId};
use crate::rules::condition::JobEvaluation;
use crate::rules::device::{DeviceId, DeviceTable};
use crate::rules::state::SilenceHold;
use crate::rules::RuleSet;

/// The engine's view of the journal's silences.
#[derive(Debug, Default)]
pub(super) struct Silences {
    /// The journal's `data_version` when the silences were last read;
    /// `None` before the first read.
    version: Option<i64>,
    /// The silences that had not ended when last read, oldest first.
    unended: Vec<Silence>,
    /// Holds already logged and journalled, kept while their silence lasts.
    noted: HashSet<(String, String, u64, SilenceId)>,
    /// Whether the last read failed, so a failing journal is logged once.
    failing: bool,
}

impl Silences {
    /// Rereads the unended silences if another connection committed since
    /// the last read. A read that fails keeps the silences known so far
    /// (a silence never lapses because the journal hiccupped) and is logged
    /// when it starts failing.
    pub(super) async fn refresh(&mut self, journal: &Arc<Mutex<Journal>>, now: Timestamp) {
        let known = self.version;
        let read = blocking(journal, move |journal| {
            let version = journal.data_version()?;
            if known == Some(version) {
                return Ok(None);
            }
            journal.unended_silences(now).map(|silences| Some((version, silences)))
        })
        .await;
        let failed = read.is_err();
        match read {
            Ok(None) => {}
            Ok(Some((version, silences))) => {
                let added = silences.iter().filter(|s| !self.unended.contains(s)).count();
                if known.is_some() && added > 0 {
                    tracing::info!("{added} new or changed silences read from the journal");
                }
                self.version = Some(version);
                self.unended = silences;
            }
            Err(err) if !self.failing => tracing::warn!(
                "cannot read the silences: {}; the silences known so far stay in force",
                with_causes(&err)
            ),
            Err(_) => {}
        }
        self.failing = failed;
        // Holds by a silence that ended will never be noted again.
        self.noted
            .retain(|(_, _, _, id)| self.unended.iter().any(|s| s.id == *id && s.is_active(now)));
    }

    /// Silences known in advance, never reread: the replay's, every silence
    /// the journal ever held, each in force over its own
    /// [created_at, ends_at).
    pub(super) fn fixed(silences: Vec<Silence>) -> Silences {
        Silences { version: Some(0), unended: silences, noted: HashSet::new(), failing: false }
    }

    /// How many silences are in force at `now`.
    pub(super) fn active_count(&self, now: Timestamp) -> usize {
        self.unended.iter().filter(|s| s.is_active(now)).count()
    }

    /// The silences in force at `now` that may hold `job`'s actions.
    pub(super) fn for_job(&self, job: &str, now: Timestamp) -> JobSilences<'_> {
        JobSilences::of(&self.unended, job, now)
    }

    /// Whether a hold is new (not yet logged and journalled); remembers it.
    fn note(&mut self, job: &str, device: &str, held: &HeldBySilence) -> bool {
        self.noted.insert((job.to_string(), device.to_string(), held.episode, held.hold.id))
    }

    /// Logs, counts and journals each action a silence held back in a
    /// cycle, once per (job, device, episode, silence); a dry run only logs
    /// and counts. Holds that cannot be journalled are tried again at the
    /// next cycle that finds them.
    pub(super) async fn record(
        &mut self,
        silenced: Vec<(String, String, HeldBySilence)>,
        journal: &Arc<Mutex<Journal>>,
        metrics: &EngineMetrics,
        dry_run: bool,
    ) {
        let mut new = Vec::new();
        for (job, device, held) in silenced {
            if !self.note(&job, &device, &held) {
                continue;
            }
            tracing::info!(
                "job {job:?}: device {device}: action {} of episode {} held by silence {} until {}",
                held.attempt,
                held.episode,
                held.hold.id,
                held.hold.until
            );
            metrics.action_held(&job, "silenced");
            new.push(HeldAction {
                job,
                device_key: device,
                episode: held.episode,
                attempt: held.attempt,
                silence: held.hold.id,
            });
        }
        if new.is_empty() || dry_run {
            return;
        }
        let (result, new) =
            blocking(journal, move |journal| (journal.record_held(&new), new)).await;
        if let Err(err) = result {
            tracing::warn!(
                "cannot journal {} held actions: {}; tried again next cycle",
                new.len(),
                with_causes(&err)
            );
            self.unnote(&new);
        }
    }

    /// Forgets holds that could not be journalled, so the next cycle that
    /// finds them held tries again.
    fn unnote(&mut self, held: &[HeldAction]) {
        for action in held {
            self.noted.remove(&(
                action.job.clone(),
                action.device_key.clone(),
                action.episode,
                action.silence,
            ));
        }
    }
}

/// The silences that may hold one job's actions in one cycle.
#[derive(Debug)]
pub(super) struct JobSilences<'s> {
    silences: Vec<&'s Silence>,
}

/// The silence of `unended` that holds `job`'s actions on a device with
/// these labels, powered by `socket`, at `now`, if one does: the engine's
/// own matching, for `jobctl explain`.
pub(crate) fn silence_holding(
    unended: &[Silence],
    job: &str,
    labels: &BTreeMap<String, String>,
    socket: Option<&str>,
    now: Timestamp,
) -> Option<SilenceHold> {
    JobSilences::of(unended, job, now).holding(labels, socket)
}

impl<'s> JobSilences<'s> {
    /// The silences of `unended` in force at `now` that may hold `job`'s
    /// actions.
    fn of(unended: &'s [Silence], job: &str, now: Timestamp) -> JobSilences<'s> {
        let silences = unended
            .iter()
            .filter(|s| s.is_active(now) && s.job.as_deref().is_none_or(|j| j == job))
            .collect();
        JobSilences { silences }
    }

    /// Whether none may.
    pub(super) fn is_empty(&self) -> bool {
        self.silences.is_empty()
    }

    /// The silence holding a device with these labels, powered by `socket`:
    /// of those that match, the one that ends last (the oldest of those).
    pub(super) fn holding(
        &self,
        labels: &BTreeMap<String, String>,
        socket: Option<&str>,
    ) -> Option<SilenceHold> {
        self.silences
            .iter()
            .filter(|s| s.socket.as_deref().is_none_or(|want| socket == Some(want)))
            .filter(|s| s.devices.iter().all(|(name, value)| labels.get(name) == Some(value)))
            .max_by_key(|s| (s.ends_at, std::cmp::Reverse(s.id)))
            .map(|s| SilenceHold { id: s.id, until: s.ends_at })
    }

    /// The silence holding `device` of this cycle's `evaluation`, matched on
    /// its series' labels and the socket that powers it: what the cycle and
    /// the replay hand `advance_job`.
    pub(super) fn holding_device(
        &self,
        rules: &RuleSet,
        devices: &DeviceTable,
        evaluation: &JobEvaluation<'_>,
        device: DeviceId,
    ) -> Option<SilenceHold> {
        if self.is_empty() {
            return None;
        }
        let socket = devices.key(device).and_then(|key| rules.socket_for(key));
        let labels = evaluation.device_verdict(Some(device)).labels;
        self.holding(&labels, socket.map(|s| s.name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + minute * 60).unwrap()
    }

    fn silence(id: i64, job: Option<&str>, socket: Option<&str>, site: Option<&str>) -> Silence {
        Silence {
            id: SilenceId(id),
            job: job.map(str::to_string),
            socket: socket.map(str::to_string),
            devices: site.map(|s| ("site".to_string(), s.to_string())).into_iter().collect(),
            author: "anna".into(),
            comment: "works".into(),
            created_at: t(0),
            ends_at: t(60 + id),
            expired_by: None,
            held: 0,
        }
    }

    fn labels(site: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("site".to_string(), site.to_string()), ("device_id".into(), "1".into())])
    }

    #[test]
    fn every_matcher_of_a_silence_must_match_and_the_longest_wins() {
        let silences = Silences {
            unended: vec![
                silence(1, Some("offline"), None, Some("arzamas")),
                silence(2, None, Some("hall"), None),
                silence(3, Some("frozen"), None, None),
            ],
            ..Silences::default()
        };
        let offline = silences.for_job("offline", t(1));
        let id = |hold: Option<SilenceHold>| hold.map(|h| h.id.0);
        assert_eq!(id(offline.holding(&labels("arzamas"), None)), Some(1));
        assert_eq!(id(offline.holding(&labels("kazan"), None)), None);
        assert_eq!(id(offline.holding(&labels("kazan"), Some("lobby"))), None);
        assert_eq!(id(offline.holding(&labels("kazan"), Some("hall"))), Some(2));
        assert_eq!(id(offline.holding(&labels("arzamas"), Some("hall"))), Some(2), "ends last");
        assert_eq!(id(silences.for_job("frozen", t(1)).holding(&labels("x"), None)), Some(3));
        assert!(silences.for_job("offline", t(62)).is_empty(), "#1 and #2 ended");
        assert_eq!(silences.active_count(t(62)), 1);
    }
}
