//! When a condition became true, as Prometheus's data shows it.
//!
//! A `for` timer started by the evaluation that first sees the condition is
//! late by however long the condition had already held when jobctl looked:
//! up to one `interval`. So when a (job, device) enters pending, the engine
//! asks Prometheus for the job's queries over the time since the job's
//! previous evaluation (at most one `interval` back), every
//! 1/[`ONSET_STEPS`] of it, evaluates the job at each step exactly as a
//! cycle does (the same [`JobEvaluation`], guards and `all`/`any`
//! included), and dates the onset at the first step from which the device
//! was true at every step up to now. That step is never earlier than the
//! first sample that showed the condition: a step sees a sample only once
//! the sample exists. A step where the device is unknown breaks the run, as
//! a live unknown pauses the timer, so an unknown gap never counts as held.
//!
//! The timer then counts from the onset plus [`INGESTION_GRACE`]: a scrape
//! is stamped with the time it started and becomes visible to queries only
//! once Prometheus has stored it, so for a moment after a sample's time a
//! query still answers with the sample before. Counting from a little after
//! the onset means the evaluation that finds `for` elapsed comes after the
//! scrape that may have ended the condition is in: a condition that ended
//! before `for` is not mistaken for one still holding.
//!
//! [`History`] is the range of history both this and the replay walk step
//! by step.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use jiff::Timestamp;

use super::states::DeviceEvent;
use super::{CycleReport, Engine};
use crate::error::with_causes;
use crate::prometheus_api::{Label, PromClient, PromError};
use crate::rules::condition::{
    with_freshness, Answers, Index, JobEvaluation, Plan, FRESHNESS_QUERY,
};
use crate::rules::device::{DeviceId, DeviceTable};
use crate::rules::state::{JobState, PhaseName};
use crate::rules::{Job, RuleSet, Verdict};

/// Steps into which the time since a job's previous evaluation is cut to
/// date an onset: the onset is known to 1/20 of that time (50 ms when a
/// job is evaluated every second, 3 s every minute).
pub(super) const ONSET_STEPS: u32 = 20;

/// The finest step an onset is dated to.
pub(super) const MIN_ONSET_STEP: Duration = Duration::from_millis(10);

/// How long after a sample's time jobctl assumes Prometheus may still be
/// storing the scrape it came from; the `for` timer counts from this long
/// after the onset (see the module docs).
pub(super) const INGESTION_GRACE: Duration = Duration::from_millis(100);

/// Some queries' answers over a range of steps, read step by step.
pub(super) struct History {
    queries: Vec<(String, Vec<HistorySeries>)>,
}

/// One series of one query's range answer.
struct HistorySeries {
    labels: Vec<Label<'static>>,
    /// (time in Unix milliseconds, value), oldest first.
    points: Vec<(i64, f64)>,
    /// The first point not yet read.
    next: usize,
}

impl History {
    /// Asks Prometheus for each of `queries` every `step` from `start` to
    /// `end`. The first query that fails is returned with its error.
    pub(super) async fn fetch(
        prometheus: &PromClient,
        queries: &[String],
        start: Timestamp,
        end: Timestamp,
        step: Duration,
    ) -> Result<History, (String, PromError)> {
        let mut fetched = Vec::with_capacity(queries.len());
        for query in queries {
            let failed = |err| (query.clone(), err);
            let answer =
                prometheus.query_range_answer(query, start, end, step).await.map_err(failed)?;
            let mut series = Vec::new();
            answer
                .for_each_series(|labels, points| {
                    let labels = labels.iter().map(|(name, value)| {
                        (Cow::Owned(name.to_string()), Cow::Owned(value.to_string()))
                    });
                    series.push(HistorySeries {
                        labels: labels.collect(),
                        points: points.iter().map(|p| (p.time.as_millisecond(), p.value)).collect(),
                        next: 0,
                    });
                })
                .map_err(failed)?;
            fetched.push((query.clone(), series));
        }
        Ok(History { queries: fetched })
    }

    /// How many series the queries returned, all together.
    pub(super) fn series(&self) -> usize {
        self.queries.iter().map(|(_, series)| series.len()).sum()
    }

    /// Whether any query returned any point (the exporters' freshness
    /// aside: it says nothing of a job's devices).
    pub(super) fn has_points(&self) -> bool {
        let jobs = self.queries.iter().filter(|(query, _)| query != FRESHNESS_QUERY);
        jobs.into_iter().any(|(_, series)| series.iter().any(|s| !s.points.is_empty()))
    }

    /// Fills `answers` (reset first) with every query's answer at `at`: the
    /// series that have a point at that step. Steps must be read in order.
    pub(super) fn answers_at(
        &mut self,
        at: Timestamp,
        answers: &mut Answers,
        rules: &RuleSet,
        devices: &mut DeviceTable,
    ) {
        let at = at.as_millisecond();
        answers.reset(&rules.device_key);
        for (query, series) in &mut self.queries {
            let filled = answers.insert(query.clone(), devices, |add| {
                for series in series.iter_mut() {
                    while series.points.get(series.next).is_some_and(|(t, _)| *t < at) {
                        series.next += 1;
                    }
                    if let Some(&(t, value)) = series.points.get(series.next) {
                        if t == at {
                            add(&series.labels, value);
                        }
                    }
                }
                Ok::<(), Infallible>(())
            });
            filled.unwrap_or_else(|never| match never {});
        }
    }
}

/// The steps of an onset search: every `step` from `start` up to `end`,
/// as Prometheus evaluates a range query (in whole milliseconds; callers
/// round `start` and `step` to them, [`to_millis`] and [`step_for`]).
pub(super) fn steps(start: Timestamp, end: Timestamp, step: Duration) -> Vec<Timestamp> {
    let mut steps = Vec::new();
    let mut at = start;
    while at <= end && !step.is_zero() {
        steps.push(at);
        at = crate::clock::after(at, step);
    }
    steps
}

/// `at` rounded down to the millisecond, the finest time Prometheus keeps.
pub(super) fn to_millis(at: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(at.as_millisecond()).unwrap_or(at)
}

/// The step of an onset search over `window` (whole milliseconds), `None`
/// when the window is too short to date anything within it.
pub(super) fn step_for(window: Duration) -> Option<Duration> {
    let millis = u64::try_from((window / ONSET_STEPS).as_millis()).unwrap_or(u64::MAX);
    let step = Duration::from_millis(millis);
    (step >= MIN_ONSET_STEP).then_some(step)
}

/// For each job of `jobs` and each of its wanted devices (in id order,
/// each found newly true by the evaluation just after the last step), since
/// when `history` shows the job's condition true at every step up to the
/// last. A device that is not true at the last step is left out: the
/// history does not confirm it. The answers of each step are indexed once
/// for every job, as a cycle's are.
pub(super) fn onsets(
    rules: &RuleSet,
    jobs: &[(&Job, &[DeviceId])],
    history: &mut History,
    steps: &[Timestamp],
    devices: &mut DeviceTable,
) -> Vec<Vec<(DeviceId, Timestamp)>> {
    let mut answers = Answers::new(&rules.device_key);
    let mut runs: Vec<Vec<Option<Timestamp>>> =
        jobs.iter().map(|(_, wanted)| vec![None; wanted.len()]).collect();
    let plan =
        Plan::new(jobs.iter().map(|(job, _)| (&job.condition, &job.devices, &job.guards[..])));
    for &at in steps {
        history.answers_at(at, &mut answers, rules, devices);
        let mut index = Index::new(&answers, &plan);
        for (nth, ((job, wanted), runs)) in jobs.iter().zip(&mut runs).enumerate() {
            let evaluation = JobEvaluation::new(&mut index, nth, &job.condition, &job.guards);
            for (device, run) in wanted.iter().zip(runs) {
                let found = evaluation.devices.binary_search_by_key(device, |(d, _)| *d);
                let quick = found.map_or(evaluation.absent, |at| evaluation.devices[at].1);
                if quick.verdict == Verdict::True {
                    run.get_or_insert(at);
                } else {
                    *run = None;
                }
            }
        }
    }
    let found = jobs.iter().zip(runs).map(|((_, wanted), runs)| {
        wanted.iter().zip(runs).filter_map(|(device, run)| Some((*device, run?))).collect()
    });
    found.collect()
}

/// The devices of a job that a cycle found newly true and left pending,
/// whose onset is still to date.
pub(super) struct NewlyPending {
    job: usize,
    /// When the job was evaluated before this cycle.
    previous_at: Option<Timestamp>,
    /// In id order.
    devices: Vec<DeviceId>,
}

impl NewlyPending {
    /// The devices of `events` (job number `job`) that entered pending and
    /// stayed there, if there are any and the job has a `for` to count.
    pub(super) fn of(
        job: usize,
        rules: &Job,
        previous_at: Option<Timestamp>,
        events: &[DeviceEvent],
    ) -> Option<NewlyPending> {
        if rules.hold_for.is_zero() {
            return None;
        }
        let entered = |event: &&DeviceEvent| {
            event.transitions.last().is_some_and(|t| {
                t.to == PhaseName::Pending
                    && matches!(t.from, PhaseName::Inactive | PhaseName::Resolved)
            })
        };
        let mut devices: Vec<DeviceId> = events.iter().filter(entered).map(|e| e.device).collect();
        devices.sort_unstable();
        (!devices.is_empty()).then_some(NewlyPending { job, previous_at, devices })
    }
}

impl Engine {
    /// Dates the onset of every newly pending device from Prometheus's
    /// history since its job's previous evaluation (at most one `interval`
    /// back) and counts its `for` from there (see the module docs). The
    /// jobs of one cycle were evaluated together before too, so they share
    /// one window: each distinct query is asked once for all of them. Jobs
    /// whose history cannot be read keep counting from now.
    pub(super) async fn date_onsets(
        &mut self,
        rules: &RuleSet,
        newly: Vec<NewlyPending>,
        now: Timestamp,
        report: &mut CycleReport,
    ) {
        // A scrape source keeps no history: its scrape that first showed
        // the condition is the onset (see `source`).
        let super::Source::Prometheus(prometheus) = &self.source else { return };
        let prometheus = prometheus.clone();
        let back = jiff::SignedDuration::try_from(rules.source.interval()).unwrap_or_default();
        let earliest = now.checked_sub(back).ok();
        let mut windows: BTreeMap<Timestamp, Vec<NewlyPending>> = BTreeMap::new();
        for newly in newly {
            let from = match (newly.previous_at, earliest) {
                (Some(previous), Some(earliest)) => previous.max(earliest),
                (Some(previous), None) => previous,
                (None, Some(earliest)) => earliest,
                (None, None) => continue,
            };
            windows.entry(to_millis(from)).or_default().push(newly);
        }
        let to = to_millis(now);
        for (from, group) in windows {
            let Some(step) = step_for(crate::clock::elapsed(from, to)) else { continue };
            let mut queries: Vec<String> =
                group.iter().flat_map(|newly| rules.jobs[newly.job].queries()).collect();
            queries.sort_unstable();
            queries.dedup();
            let queries = with_freshness(queries);
            let querying = std::time::Instant::now();
            let fetched = History::fetch(&prometheus, &queries, from, to, step).await;
            report.onset_queries += queries.len();
            report.query_time += querying.elapsed();
            (0..queries.len()).for_each(|_| self.metrics.query_sent());
            let mut history = match fetched {
                Ok(history) => history,
                Err((query, err)) => {
                    self.metrics.query_failed(err.label());
                    let devices: usize = group.iter().map(|newly| newly.devices.len()).sum();
                    tracing::debug!(
                        "cannot date the onset of {devices} newly pending devices ({query:?}: {}); their `for` counts from now",
                        with_causes(&err)
                    );
                    continue;
                }
            };
            let steps = steps(from, to, step);
            let jobs: Vec<(&Job, &[DeviceId])> =
                group.iter().map(|newly| (&rules.jobs[newly.job], &newly.devices[..])).collect();
            let found = onsets(rules, &jobs, &mut history, &steps, &mut self.devices);
            for ((job, _), found) in jobs.iter().zip(found) {
                let timing = super::timing(job);
                let Some(states) = self.states.get_mut(&job.name) else { continue };
                for (device, onset) in found {
                    let counting_from = crate::clock::after(onset, INGESTION_GRACE);
                    let dated = |state: &JobState| state.pending_from(onset, counting_from);
                    if states.update(device, &timing, dated) {
                        tracing::debug!(
                            "job {:?}: device {}: pending since {onset}, as Prometheus's data shows",
                            job.name,
                            self.devices.text(device)
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules with one job over platform 12: offline (`online == 0`), guarded
    /// by the platform being up.
    fn rules() -> RuleSet {
        let text = "[prometheus]\nurl = \"http://127.0.0.1:9090\"\n\n\
             [[sockets]]\nname = \"lobby\"\nphone = \"+79991234567\"\nmodel = \"simpal-d210\"\n\
             powers = { platform_id = \"12\", device_id = \"1\" }\n\n\
             [[jobs]]\nname = \"offline\"\ndevices = { platform_id = \"12\" }\n\
             metric = \"addreality_device_online\"\nop = \"==\"\nvalue = 0\nfor = \"10s\"\n\
             guards = [{ expr = \"addreality_platform_up == 1\", on = [\"platform_id\"] }]\n\
             action = { command = \"power_cycle\", minutes = 1 }\n";
        crate::rules::parse(text, "rules.toml").unwrap()
    }

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(1_700_000_000_000 + ms).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<Label<'static>> {
        let owned = |s: &str| Cow::Owned(s.to_string());
        pairs.iter().map(|(name, value)| (owned(name), owned(value))).collect()
    }

    fn series(device: &str, values: &[Option<f64>]) -> HistorySeries {
        let labels = labels(&[("platform_id", "12"), ("device_id", device)]);
        let points = (values.iter().enumerate())
            .filter_map(|(step, value)| Some((at(step as i64 * 100).as_millisecond(), (*value)?)))
            .collect();
        HistorySeries { labels, points, next: 0 }
    }

    #[test]
    fn the_onset_is_the_first_step_of_the_last_run_of_true_steps() {
        let rules = rules();
        let job = &rules.jobs[0];
        let (up, down) = (Some(1.0), Some(0.0));
        let mut history = History {
            queries: vec![
                (
                    job.queries()[0].clone(),
                    vec![
                        // Bad since step 2.
                        series("1", &[up, up, down, down, down, down]),
                        // Bad, fine for a step, bad again from step 3.
                        series("2", &[down, up, down, down, down, down]),
                        // Bad throughout.
                        series("3", &[down, down, down, down, down, down]),
                        // No sample at step 4 (unknown): the run starts after it.
                        series("4", &[down, down, down, down, None, down]),
                        // Bad, but fine at the last step: not confirmed.
                        series("5", &[down, down, down, down, down, up]),
                    ],
                ),
                (
                    job.queries()[1].clone(),
                    vec![HistorySeries {
                        labels: labels(&[("platform_id", "12")]),
                        points: (0..6).map(|step| (at(step * 100).as_millisecond(), 1.0)).collect(),
                        next: 0,
                    }],
                ),
            ],
        };
        let mut devices = DeviceTable::default();
        let wanted: Vec<DeviceId> = ["1", "2", "3", "4", "5", "6"]
            .iter()
            .map(|id| devices.intern_text(&format!("{{platform_id=\"12\", device_id=\"{id}\"}}")))
            .collect();
        let steps = steps(at(0), at(500), Duration::from_millis(100));
        assert_eq!(steps.len(), 6);
        let found = onsets(&rules, &[(job, &wanted[..])], &mut history, &steps, &mut devices);
        let expected = vec![
            (wanted[0], at(200)),
            (wanted[1], at(200)),
            (wanted[2], at(0)),
            (wanted[3], at(500)),
        ];
        assert_eq!(found, [expected], "device 5 not true at the end, device 6 never seen");
    }

    #[test]
    fn with_a_pair_of_exporters_the_onset_follows_the_freshest() {
        let rules = rules();
        let job = &rules.jobs[0];
        let (up, down) = (Some(1.0), Some(0.0));
        let every_step = |labels: Vec<Label<'static>>, value: f64| HistorySeries {
            labels,
            points: (0..6).map(|step| (at(step * 100).as_millisecond(), value)).collect(),
            next: 0,
        };
        let exporter = |instance: &str, values: &[Option<f64>]| {
            let mut series = series("1", values);
            series.labels.extend(labels(&[("instance", instance)]));
            series
        };
        let polled = |instance: &str, at: f64| {
            every_step(labels(&[("instance", instance), ("platform_id", "12")]), at)
        };
        let mut history = History {
            queries: vec![
                (
                    job.queries()[0].clone(),
                    vec![
                        // The fresh exporter sees the device go at step 2;
                        exporter("a:9747", &[up, up, down, down, down, down]),
                        // the stale one still says it is there.
                        exporter("b:9747", &[up, up, up, up, up, up]),
                    ],
                ),
                (job.queries()[1].clone(), vec![every_step(labels(&[("platform_id", "12")]), 1.0)]),
                (
                    FRESHNESS_QUERY.to_string(),
                    vec![polled("a:9747", 1_700_000_000.0), polled("b:9747", 1_699_990_000.0)],
                ),
            ],
        };
        let mut devices = DeviceTable::default();
        let wanted = [devices.intern_text("{platform_id=\"12\", device_id=\"1\"}")];
        let steps = steps(at(0), at(500), Duration::from_millis(100));
        let found = onsets(&rules, &[(job, &wanted[..])], &mut history, &steps, &mut devices);
        assert_eq!(found, [vec![(wanted[0], at(200))]]);
    }

    #[test]
    fn a_guard_that_fails_breaks_the_run_and_short_windows_are_not_searched() {
        let rules = rules();
        let job = &rules.jobs[0];
        let down = Some(0.0);
        // The guard is an expression: a series means it holds.
        let platform = |up: &[bool]| HistorySeries {
            labels: labels(&[("platform_id", "12")]),
            points: (up.iter().enumerate())
                .filter(|(_, up)| **up)
                .map(|(step, _)| (at(step as i64 * 100).as_millisecond(), 1.0))
                .collect(),
            next: 0,
        };
        let mut history = History {
            queries: vec![
                (job.queries()[0].clone(), vec![series("1", &[down, down, down, down])]),
                (job.queries()[1].clone(), vec![platform(&[true, false, true, true])]),
            ],
        };
        let mut devices = DeviceTable::default();
        let wanted = [devices.intern_text("{platform_id=\"12\", device_id=\"1\"}")];
        let steps = steps(at(0), at(300), Duration::from_millis(100));
        let found = onsets(&rules, &[(job, &wanted[..])], &mut history, &steps, &mut devices);
        assert_eq!(found, [vec![(wanted[0], at(200))]], "the platform was down at step 1");
        assert_eq!(step_for(Duration::from_secs(1)), Some(Duration::from_millis(50)));
        assert_eq!(step_for(Duration::from_secs(60)), Some(Duration::from_secs(3)));
        assert_eq!(step_for(Duration::from_millis(100)), None, "too short to date within");
    }
}
