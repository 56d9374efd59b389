//! Mass outages: when many of a job's devices go bad together, the cause
//! is upstream of them (the site's uplink, the AddReality platform), and
//! power-cycling each of them is wrong. The job then sends no socket
//! command and escalates once.
//!
//! Each cycle, before the job's states advance, [`MassOutages::assess`]
//! counts the job's devices in this cycle's answers: *known* are those
//! whose verdict is true or false, *bad* those whose verdict is true (they
//! are pending or firing after this cycle). Unknown devices are left out of
//! both: unknown is neither bad nor good, so a Prometheus hiccup that loses
//! half the series neither starts an outage (counting them bad) nor hides
//! one (counting them good). An outage begins when at least `min_devices`
//! and at least `share` of the known devices are bad, and ends at the first
//! cycle that finds fewer. A cycle that knows no device of the job
//! (Prometheus down, the job's query failing) changes nothing: an outage in
//! course stays open until a cycle *sees* it over, so one outage is one
//! escalation however the data comes and goes.
//!
//! While it lasts, every action of the job that falls due is held
//! ([`crate::rules::state::ActionHeld::MassOutage`]): it stays due and
//! leaves at the first cycle after the outage, if the device is still bad.
//! Only socket commands are held; a job whose action is an SMS to a person
//! has no mass-outage hold at all (the rules leave it out).
//!
//! The journal keeps one row per outage (`mass_outages`), written when it
//! begins, and the escalation is raised once that row is committed; a
//! restart reads the rows still open and carries them on without raising
//! again. Held actions are journalled in `held_actions` (reason
//! `mass_outage`) once per (job, device, episode).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use super::escalation::Escalation;
use super::metrics::EngineMetrics;
use super::outbox::blocking;
use crate::clock::elapsed;
use crate::error::with_causes;
use crate::journal::{Journal, OutageChange, OutageHeldAction};
use crate::rules::condition::JobEvaluation;
use crate::rules::{Job, Verdict};

/// A job's devices in one cycle's answers, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Share {
    /// Devices whose condition is true.
    pub(super) bad: usize,
    /// Devices whose verdict is true or false.
    pub(super) known: usize,
}

impl Share {
    /// Counts the devices of a job's evaluation.
    pub(super) fn of(evaluation: &JobEvaluation<'_>) -> Share {
        Share::count(evaluation.devices.iter().map(|(_, quick)| quick.verdict))
    }

    /// Counts verdicts.
    fn count(verdicts: impl Iterator<Item = Verdict>) -> Share {
        let mut share = Share::default();
        for verdict in verdicts {
            match verdict {
                Verdict::True => {
                    share.bad += 1;
                    share.known += 1;
                }
                Verdict::False => share.known += 1,
                Verdict::Unknown => {}
            }
        }
        share
    }
}

/// An outage in course.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Open {
    since: Timestamp,
    share: Share,
    /// Actions held in it so far (by this process).
    held: usize,
}

/// The engine's mass outages: the ones in course, and what is still to be
/// journalled.
#[derive(Debug, Default)]
pub(super) struct MassOutages {
    /// Job name → its outage in course.
    open: HashMap<String, Open>,
    /// Changes not yet journalled (a write that failed is tried again with
    /// the next cycle's).
    changes: Vec<OutageChange>,
    /// Held actions not yet journalled.
    held: Vec<OutageHeldAction>,
    /// Holds already noted, (job, device, episode), while their job's
    /// outage lasts.
    noted: HashSet<(String, String, u64)>,
}

impl MassOutages {
    /// The outages a previous run left open: carried on, never escalated
    /// again. A journal that cannot be read starts with none (logged): an
    /// outage in course is then found again, and escalated, at the first
    /// cycle.
    pub(super) async fn load(journal: &Arc<Mutex<Journal>>) -> MassOutages {
        let mut outages = MassOutages::default();
        match blocking(journal, |journal| journal.open_outages()).await {
            Ok(records) => {
                for record in records {
                    let share = Share {
                        bad: usize::try_from(record.bad).unwrap_or(usize::MAX),
                        known: usize::try_from(record.known).unwrap_or(usize::MAX),
                    };
                    tracing::info!(
                        "job {:?}: mass outage since {} carried on ({} of {} devices bad when last counted); its socket commands stay held until a cycle finds fewer bad",
                        record.job,
                        record.since,
                        share.bad,
                        share.known
                    );
                    outages.open.insert(record.job, Open { since: record.since, share, held: 0 });
                }
            }
            Err(err) => tracing::error!(
                "cannot read the mass outages in course: {}; an outage still in course is escalated again",
                with_causes(&err)
            ),
        }
        outages
    }

    /// Whether `job` is in a mass outage this cycle, given its devices'
    /// `share`: since when, if it is. Begins and ends outages as the module
    /// docs say; what changed is journalled by [`MassOutages::record`].
    pub(super) fn assess(
        &mut self,
        job: &Job,
        share: Share,
        now: Timestamp,
        metrics: &EngineMetrics,
    ) -> Option<Timestamp> {
        let name = job.name.as_str();
        let Some(_) = job.mass_outage else {
            // Switched off by a reload: an outage in course ends now.
            if self.open.contains_key(name) {
                self.end(name, now, share, "the job's mass-outage hold was switched off", metrics);
            }
            return None;
        };
        if share.known == 0 {
            return self.open.get(name).map(|open| open.since);
        }
        let since = self.open.get(name).map(|open| open.since);
        let holds = outage_after(job.mass_outage, share, since, now).is_some();
        match (self.open.get_mut(name), holds) {
            (None, true) => {
                self.open.insert(name.to_string(), Open { since: now, share, held: 0 });
                self.changes.push(OutageChange::Began {
                    job: name.to_string(),
                    since: now,
                    bad: share.bad as u64,
                    known: share.known as u64,
                });
                metrics.set_mass_outage(name, true);
                Some(now)
            }
            (Some(open), true) => {
                if open.share != share {
                    open.share = share;
                    self.changes.push(OutageChange::Counts {
                        job: name.to_string(),
                        bad: share.bad as u64,
                        known: share.known as u64,
                    });
                }
                metrics.set_mass_outage(name, true);
                Some(open.since)
            }
            (Some(_), false) => {
                self.end(name, now, share, "below the threshold", metrics);
                None
            }
            (None, false) => {
                metrics.set_mass_outage(name, false);
                None
            }
        }
    }

    /// Ends `job`'s outage at `now`, logging why.
    fn end(&mut self, job: &str, now: Timestamp, share: Share, why: &str, metrics: &EngineMetrics) {
        let Some(open) = self.open.remove(job) else { return };
        tracing::info!(
            "job {job:?}: mass outage over after {} ({} of {} devices bad, {why}); {} actions it held leave now where their devices are still bad",
            humantime::format_duration(std::time::Duration::from_secs(
                elapsed(open.since, now).as_secs()
            )),
            share.bad,
            share.known,
            open.held
        );
        self.noted.retain(|(j, _, _)| j != job);
        self.changes.push(OutageChange::Ended {
            job: job.to_string(),
            at: now,
            bad: share.bad as u64,
            known: share.known as u64,
        });
        metrics.set_mass_outage(job, false);
    }

    /// Ends the outages of jobs that are no longer run (removed or
    /// disabled by a reload), and drops their metric series.
    pub(super) fn keep_jobs(
        &mut self,
        running: &HashSet<&str>,
        now: Timestamp,
        metrics: &EngineMetrics,
    ) {
        let gone: Vec<String> =
            self.open.keys().filter(|job| !running.contains(job.as_str())).cloned().collect();
        for job in gone {
            let share = self.open[&job].share;
            self.end(&job, now, share, "the job is no longer run", metrics);
            metrics.forget_mass_outage(&job);
        }
    }

    /// Notes an action `job`'s outage held back on `device` (`who` in
    /// words), to be logged, counted and journalled once per (job, device,
    /// episode).
    pub(super) fn held(
        &mut self,
        job: &str,
        device: &str,
        who: &str,
        (episode, attempt): (u64, u32),
        metrics: &EngineMetrics,
    ) {
        if !self.noted.insert((job.to_string(), device.to_string(), episode)) {
            return;
        }
        if let Some(open) = self.open.get_mut(job) {
            open.held += 1;
        }
        // One line per device at debug: the escalation says it for all.
        tracing::debug!(
            "job {job:?}: device {who}: action {attempt} of episode {episode} held by the job's mass outage"
        );
        metrics.action_held(job, "mass_outage");
        self.held.push(OutageHeldAction {
            job: job.to_string(),
            device_key: device.to_string(),
            episode,
            attempt,
        });
    }

    /// Journals the cycle's outage changes and holds, then returns the
    /// escalation of each outage whose row was written now (once per
    /// outage: a replayed beginning writes nothing). A dry run journals
    /// nothing. A write that fails is tried again with the next cycle's,
    /// and its escalations wait for it.
    pub(super) async fn record(
        &mut self,
        journal: &Arc<Mutex<Journal>>,
        metrics: &EngineMetrics,
        dry_run: bool,
    ) -> Vec<Escalation> {
        if self.changes.is_empty() && self.held.is_empty() {
            return Vec::new();
        }
        let changes = std::mem::take(&mut self.changes);
        let held = std::mem::take(&mut self.held);
        if dry_run {
            return changes.iter().filter_map(|change| escalate(change, metrics)).collect();
        }
        let (result, changes, held) = blocking(journal, move |journal| {
            (journal.record_outages(&changes, &held), changes, held)
        })
        .await;
        match result {
            Ok(applied) => changes
                .iter()
                .zip(applied)
                .filter(|(_, applied)| *applied)
                .filter_map(|(change, _)| escalate(change, metrics))
                .collect(),
            Err(err) => {
                tracing::error!(
                    "cannot journal {} mass-outage changes and {} held actions: {}; tried again next cycle",
                    changes.len(),
                    held.len(),
                    with_causes(&err)
                );
                self.changes = changes;
                self.held = held;
                Vec::new()
            }
        }
    }
}

/// Whether a job whose hold is `threshold` is in a mass outage after a
/// cycle that found `share`, given since when it was in one (`open`): since
/// when, if it is. A cycle that knows none of its devices changes nothing.
/// The daemon ([`MassOutages::assess`]) and the replay decide with this.
pub(super) fn outage_after(
    threshold: Option<crate::rules::job::MassOutage>,
    share: Share,
    open: Option<Timestamp>,
    now: Timestamp,
) -> Option<Timestamp> {
    let threshold = threshold?;
    if share.known == 0 {
        return open;
    }
    threshold.holds(share.bad, share.known).then(|| open.unwrap_or(now))
}

/// The escalation of an outage that began, counted.
fn escalate(change: &OutageChange, metrics: &EngineMetrics) -> Option<Escalation> {
    let OutageChange::Began { job, since, bad, known } = change else { return None };
    metrics.mass_outage_began(job);
    Some(Escalation::MassOutage { job: job.clone(), bad: *bad, known: *known, since: *since })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::job::MassOutage;

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + minute * 60).unwrap()
    }

    #[test]
    fn the_shared_decision_begins_keeps_and_ends_an_outage() {
        let hold = Some(MassOutage { share: 0.5, min_devices: 5 });
        let share = |bad, known| Share { bad, known };
        assert_eq!(outage_after(hold, share(6, 10), None, t(0)), Some(t(0)), "begins");
        assert_eq!(outage_after(hold, share(7, 10), Some(t(0)), t(1)), Some(t(0)), "goes on");
        assert_eq!(outage_after(hold, share(0, 0), Some(t(0)), t(2)), Some(t(0)), "nothing known");
        assert_eq!(outage_after(hold, share(4, 10), Some(t(0)), t(3)), None, "below the share");
        assert_eq!(outage_after(hold, share(4, 4), None, t(4)), None, "below min_devices");
        assert_eq!(outage_after(None, share(10, 10), Some(t(0)), t(5)), None, "switched off");
    }

    /// A job over platform 12 with `mass_outage` as written.
    fn job(mass_outage: &str) -> Job {
        let text = format!(
            "[prometheus]\nurl = \"http://127.0.0.1:9090\"\n\n\
             [[sockets]]\nname = \"lobby\"\nphone = \"+79991234567\"\nmodel = \"simpal-d210\"\n\
             powers = {{ platform_id = \"12\", device_id = \"1\" }}\n\n\
             [[jobs]]\nname = \"offline\"\ndevices = {{ platform_id = \"12\" }}\n\
             metric = \"addreality_device_online\"\nop = \"==\"\nvalue = 0\n\
             action = {{ command = \"power_cycle\", minutes = 1 }}\n{mass_outage}"
        );
        crate::rules::parse(&text, "rules.toml").unwrap().jobs.remove(0)
    }

    fn share(bad: usize, known: usize) -> Share {
        Share { bad, known }
    }

    #[test]
    fn an_outage_begins_once_lasts_through_blind_cycles_and_ends_when_seen_below() {
        let job = job("");
        let metrics = EngineMetrics::new();
        let mut outages = MassOutages::default();
        assert_eq!(outages.assess(&job, share(4, 40), t(0), &metrics), None);
        assert_eq!(outages.assess(&job, share(30, 40), t(1), &metrics), Some(t(1)));
        assert_eq!(outages.assess(&job, share(31, 40), t(2), &metrics), Some(t(1)), "one outage");
        // Prometheus down: nothing known, the outage stays open.
        assert_eq!(outages.assess(&job, share(0, 0), t(3), &metrics), Some(t(1)));
        outages.held("offline", "d=1", "d=1", (1, 1), &metrics);
        outages.held("offline", "d=1", "d=1", (1, 1), &metrics);
        assert_eq!(outages.held.len(), 1, "each hold noted once");
        assert_eq!(outages.assess(&job, share(2, 40), t(4), &metrics), None, "seen below");
        assert_eq!(outages.assess(&job, share(25, 40), t(5), &metrics), Some(t(5)), "a new one");
        let kinds: Vec<&str> = outages
            .changes
            .iter()
            .map(|c| match c {
                OutageChange::Began { .. } => "began",
                OutageChange::Counts { .. } => "counts",
                OutageChange::Ended { .. } => "ended",
            })
            .collect();
        assert_eq!(kinds, ["began", "counts", "ended", "began"]);
    }

    #[test]
    fn switched_off_or_gone_an_outage_ends() {
        let metrics = EngineMetrics::new();
        let mut outages = MassOutages::default();
        assert!(outages.assess(&job(""), share(30, 40), t(0), &metrics).is_some());
        assert_eq!(
            outages.assess(&job("mass_outage = false\n"), share(30, 40), t(1), &metrics),
            None
        );
        assert!(outages.open.is_empty());
        assert!(outages.assess(&job(""), share(30, 40), t(2), &metrics).is_some());
        outages.keep_jobs(&HashSet::new(), t(3), &metrics);
        assert!(outages.open.is_empty());
        assert!(
            matches!(outages.changes.last(), Some(OutageChange::Ended { at, .. }) if *at == t(3))
        );
    }

    #[test]
    fn unknown_devices_are_neither_bad_nor_known() {
        let verdicts = [Verdict::True, Verdict::Unknown, Verdict::False, Verdict::True];
        assert_eq!(Share::count(verdicts.into_iter()), Share { bad: 2, known: 3 });
        assert_eq!(Share::count([Verdict::Unknown].into_iter()), Share::default());
    }

    #[test]
    fn an_outage_needs_the_share_and_the_minimum_both() {
        let half = MassOutage { share: 0.5, min_devices: 5 };
        assert!(half.holds(30, 40));
        assert!(half.holds(20, 40), "at least half: exactly half is an outage");
        assert!(!half.holds(19, 40));
        assert!(!half.holds(4, 4), "every device, but fewer than min_devices");
        assert!(half.holds(5, 5));
        assert!(!half.holds(0, 0), "nothing known is no outage");
        let all = MassOutage { share: 1.0, min_devices: 1 };
        assert!(all.holds(3, 3));
        assert!(!all.holds(2, 3), "share = 1 means every known device");
        let third = MassOutage { share: 0.3, min_devices: 1 };
        assert!(third.holds(3, 10), "0.3 × 10 is not rounded above 3");
    }
}
