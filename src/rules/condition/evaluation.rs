//! A job's condition and guards evaluated on one cycle's answers: a
//! verdict per device ([`JobEvaluation`], what the engine runs each cycle),
//! and the full [`DeviceVerdict`] with the values and labels behind it, on
//! demand ([`evaluate`] for a job on its own, as `jobctl test-rule` does).
//! The semantics are in [`super`]'s notes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use super::answers::{Answer, Answers, GuardIndex, Index, Series, StrId, View};
use super::freshness::FRESHNESS_QUERY;
use super::plan::Plan;
use super::term::{Condition, Guard, Term, Verdict};
use crate::prometheus_api::{Label, Sample};
use crate::rules::device::{DeviceId, DeviceKey, DeviceKeyLabels, DeviceTable, LabelMatchers};

/// Why a verdict is unknown, for logs and `jobctl test-rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnknownReason {
    /// The query has no answer this cycle (Prometheus unreachable or it
    /// returned an error).
    QueryFailed {
        /// The query.
        query: String,
    },
    /// The answer has no series for this device.
    NoSeries {
        /// The query.
        query: String,
    },
    /// A series of this device has the value NaN.
    NotANumber {
        /// The query.
        query: String,
    },
    /// A guard returned no series for this device.
    GuardNotMet {
        /// The guard.
        guard: String,
    },
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownReason::QueryFailed { query } => {
                write!(f, "no answer from Prometheus for {query}")
            }
            UnknownReason::NoSeries { query } => write!(f, "no series for this device in {query}"),
            UnknownReason::NotANumber { query } => write!(f, "{query} is NaN for this device"),
            UnknownReason::GuardNotMet { guard } => write!(f, "guard {guard} does not hold"),
        }
    }
}

/// A value seen for a device, for logs and the journal's trigger value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeenValue {
    /// The query that returned it.
    pub(crate) query: String,
    /// The value.
    pub(crate) value: f64,
}

/// One device's verdict with what led to it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceVerdict {
    /// The verdict.
    pub verdict: Verdict,
    /// Why it is unknown (the first reason found), when it is.
    pub(crate) unknown_because: Option<UnknownReason>,
    /// The values of the condition's series for this device.
    pub(crate) values: Vec<SeenValue>,
    /// The union of the labels of those series, for SMS templates.
    pub(crate) labels: BTreeMap<String, String>,
    /// When several targets serve the device (a term's answer has more
    /// than one of its series).
    pub(crate) several_targets: Option<SeveralTargets>,
}

/// A device with several series in a term's answer, as [`DeviceVerdict`]
/// tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeveralTargets {
    /// The most series of the device in one term's answer.
    pub(crate) series: usize,
    /// Whether only the freshest target's series counted (else all did,
    /// nothing telling them apart).
    pub(crate) freshest_chosen: bool,
}

/// A job's verdicts for one cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Devices that appear in at least one of the condition's answers.
    pub devices: BTreeMap<DeviceKey, DeviceVerdict>,
    /// The verdict for any other device (one the engine knew from earlier
    /// cycles): unknown for comparisons (their series is missing), false
    /// for a pure `expr` condition whose queries answered.
    pub(crate) absent: DeviceVerdict,
    /// Series ignored because they lack a device-key label.
    pub(crate) unkeyed_series: usize,
    /// Devices with more than one series in a term's answer (served by
    /// several targets, such as a pair of exporters).
    pub(crate) several_targets: usize,
    /// Of those, the devices whose targets' data differed in age, so that
    /// only the freshest target's series counted.
    pub(crate) freshest_chosen: usize,
}

impl Evaluation {
    /// The verdict for a device, present or not.
    #[cfg(test)]
    pub(crate) fn get(&self, device: &DeviceKey) -> &DeviceVerdict {
        self.devices.get(device).unwrap_or(&self.absent)
    }
}

/// Why a verdict is unknown, by position in the job's terms or guards;
/// turned into an [`UnknownReason`] only when someone reads it.
///
/// Positions are `u32` so that a [`Quick`] stays 12 bytes: a cycle makes
/// one per (job, device), hundreds of thousands, and one this small is
/// passed in registers rather than built on the stack and copied.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    QueryFailed { term: u32 },
    GuardQueryFailed { guard: u32 },
    NoSeries { term: u32 },
    NotANumber { term: u32 },
    GuardNotMet { guard: u32 },
}

/// A term's or guard's position, as a [`Why`] keeps it.
fn position(at: usize) -> u32 {
    u32::try_from(at).expect("fewer than 4 billion terms or guards in a job")
}

/// A device's verdict without the values and labels behind it.
///
/// The value behind it is not kept here but read on demand
/// ([`JobEvaluation::first_value`]): only the few devices whose state moves
/// need it, and without it a `Quick` is 12 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quick {
    /// The verdict.
    pub(crate) verdict: Verdict,
    /// Whether a series of the device has a value (the trigger value).
    valued: bool,
    why: Option<Why>,
}

impl Quick {
    /// The condition does not hold, with no value behind it: what the engine
    /// gives a device a job stops watching, so that an episode under way
    /// ends.
    pub(crate) const FALSE: Quick = Quick { verdict: Verdict::False, why: None, valued: false };
}

/// A term's outcome, with its reason when unknown.
#[derive(Clone, Copy)]
struct Outcome {
    verdict: Verdict,
    why: Option<Why>,
}

impl Outcome {
    fn known(truth: bool) -> Outcome {
        Outcome { verdict: if truth { Verdict::True } else { Verdict::False }, why: None }
    }

    fn unknown(why: Why) -> Outcome {
        Outcome { verdict: Verdict::Unknown, why: Some(why) }
    }
}

/// Combines the terms' outcomes as the condition says: a single term as it
/// is; `all` is false if one term is false, else unknown (with the first
/// unknown's reason) if one is unknown, else true; `any` likewise with true.
fn combine(condition: &Condition, mut outcomes: impl Iterator<Item = Outcome>) -> Outcome {
    let decisive = match condition {
        Condition::Single(_) => return outcomes.next().expect("one term"),
        Condition::All(_) => Verdict::False,
        Condition::Any(_) => Verdict::True,
    };
    let mut first_unknown = None;
    for outcome in outcomes {
        if outcome.verdict == decisive {
            return Outcome { verdict: decisive, why: None };
        }
        if outcome.verdict == Verdict::Unknown && first_unknown.is_none() {
            first_unknown = Some(outcome);
        }
    }
    first_unknown.unwrap_or_else(|| {
        Outcome::known(decisive == Verdict::False) // all: true; any: false
    })
}

/// One term as the evaluation reads it: its query, and its answer and view
/// unless the query failed.
struct TermInput<'a> {
    query: &'a str,
    read: Option<(&'a Answer, Arc<View>)>,
}

/// A job's condition and guards evaluated on one cycle's [`Index`]: every
/// device's [`Quick`] verdict, and its full [`DeviceVerdict`] on demand.
pub(crate) struct JobEvaluation<'a> {
    condition: &'a Condition,
    guards: &'a [Guard],
    answers: &'a Answers,
    terms: Vec<TermInput<'a>>,
    /// Devices in the answers, in id order.
    pub(crate) devices: Vec<(DeviceId, Quick)>,
    /// The verdict for any other device.
    pub(crate) absent: Quick,
    /// Series ignored because they lack a device-key label.
    pub(crate) unkeyed_series: usize,
    /// Devices with several series in a term's answer (the most of any
    /// term).
    pub(crate) several_targets: usize,
    /// Of those, the devices of which only the freshest target's series
    /// counted (the most of any term).
    pub(crate) freshest_chosen: usize,
}

impl<'a> JobEvaluation<'a> {
    /// Evaluates a condition and its guards for every device in `index`'s
    /// answers (the semantics are in the module notes): those of the
    /// `job`th job of the index's [`Plan`](super::Plan).
    pub(crate) fn new(
        index: &mut Index<'a>,
        job: usize,
        condition: &'a Condition,
        guards: &'a [Guard],
    ) -> JobEvaluation<'a> {
        let answers = index.answers();
        let plan = index.job(job);
        let terms: Vec<TermInput<'a>> = plan
            .terms
            .iter()
            .map(|(query, view)| TermInput { query, read: index.read(*view) })
            .collect();
        let guard_indexes = index.guards(&plan.guards);
        let mut evaluation = JobEvaluation {
            condition,
            guards,
            answers,
            unkeyed_series: terms.iter().filter_map(|t| t.read.as_ref()).map(|r| r.1.unkeyed).sum(),
            several_targets: terms
                .iter()
                .filter_map(|t| t.read.as_ref())
                .map(|r| r.1.several_targets)
                .max()
                .unwrap_or(0),
            freshest_chosen: terms
                .iter()
                .filter_map(|t| t.read.as_ref())
                .map(|r| r.1.freshest_chosen)
                .max()
                .unwrap_or(0),
            terms,
            devices: Vec::new(),
            absent: Quick { verdict: Verdict::Unknown, why: None, valued: false },
        };

        let absent =
            combine(condition, (0..evaluation.terms.len()).map(|i| evaluation.outcome(i, &[])));
        let guard_failed = guard_indexes.iter().position(|g| g.tuples.is_none());
        evaluation.absent = match guard_failed {
            Some(guard) => Quick {
                verdict: Verdict::Unknown,
                why: Some(Why::GuardQueryFailed { guard: position(guard) }),
                valued: false,
            },
            None => Quick { verdict: absent.verdict, why: absent.why, valued: false },
        };

        let mut found = Vec::new();
        if let [TermInput { read: Some((answer, view)), .. }] = evaluation.terms.as_slice() {
            // One term, the usual case: its view is the list of devices, and
            // `all` or `any` of one term is that term.
            found.reserve_exact(view.devices.len());
            for at in 0..view.devices.len() {
                let (device, run) = (view.devices[at].0, view.run(at));
                let outcome = evaluation.outcome_of(0, answer, run);
                let runs = [run];
                let valued = !run.is_empty();
                found.push((
                    device,
                    evaluation.judge(&guard_indexes, device, &runs, outcome, valued),
                ));
            }
            evaluation.devices = found;
            return evaluation;
        }

        // Walk the terms' views together, device by device.
        let mut cursors = vec![0usize; evaluation.terms.len()];
        let mut runs: Vec<&[u32]> = vec![&[]; evaluation.terms.len()];
        loop {
            let next = evaluation
                .terms
                .iter()
                .zip(&cursors)
                .filter_map(|(term, &at)| term.read.as_ref()?.1.devices.get(at).map(|d| d.0))
                .min();
            let Some(device) = next else { break };
            for (i, term) in evaluation.terms.iter().enumerate() {
                runs[i] = &[];
                let Some((_, view)) = &term.read else { continue };
                if view.devices.get(cursors[i]).is_some_and(|d| d.0 == device) {
                    runs[i] = view.run(cursors[i]);
                    cursors[i] += 1;
                }
            }
            let valued = runs.iter().any(|run| !run.is_empty());
            let outcome = combine(
                condition,
                runs.iter().enumerate().map(|(i, run)| evaluation.outcome(i, run)),
            );
            found.push((device, evaluation.judge(&guard_indexes, device, &runs, outcome, valued)));
        }
        evaluation.devices = found;
        evaluation
    }

    /// A present device's verdict: the condition's outcome, unless a guard
    /// does not hold.
    // Inlined into the per-device loops, whatever the optimiser would
    // choose: returned through memory, the verdict was stored field by
    // field and read back whole, a stall per (job, device) (`perf annotate`
    // on `cargo bench --bench jobctl`).
    #[inline(always)]
    fn judge(
        &self,
        guards: &[&GuardIndex],
        device: DeviceId,
        runs: &[&[u32]],
        outcome: Outcome,
        valued: bool,
    ) -> Quick {
        let failed =
            guards.iter().enumerate().find(|(g, index)| !self.guard_holds(*g, index, device, runs));
        match failed {
            Some((guard, index)) => Quick {
                verdict: Verdict::Unknown,
                why: Some(if index.tuples.is_none() {
                    Why::GuardQueryFailed { guard: position(guard) }
                } else {
                    Why::GuardNotMet { guard: position(guard) }
                }),
                valued,
            },
            None => Quick { verdict: outcome.verdict, why: outcome.why, valued },
        }
    }

    /// Term `term`'s outcome for a device whose series are `run`.
    fn outcome(&self, term: usize, run: &[u32]) -> Outcome {
        match &self.terms[term].read {
            Some((answer, _)) => self.outcome_of(term, answer, run),
            None => Outcome::unknown(Why::QueryFailed { term: position(term) }),
        }
    }

    /// Term `term`'s outcome for a device whose series of `answer` (the
    /// term's) are `run`.
    // Inlined into the per-device loops, whatever the optimiser would
    // choose: returned through memory, the verdict was stored field by
    // field and read back whole, a stall per (job, device) (`perf annotate`
    // on `cargo bench --bench jobctl`).
    #[inline(always)]
    fn outcome_of(&self, term: usize, answer: &Answer, run: &[u32]) -> Outcome {
        match &self.condition.terms()[term] {
            Term::Expr(_) => Outcome::known(!run.is_empty()),
            Term::Compare { op, value, .. } => {
                let values = run.iter().map(|&s| answer.series[s as usize].value);
                if run.is_empty() {
                    Outcome::unknown(Why::NoSeries { term: position(term) })
                } else if values.clone().any(f64::is_nan) {
                    Outcome::unknown(Why::NotANumber { term: position(term) })
                } else {
                    Outcome::known(values.clone().all(|v| op.holds(v, *value)))
                }
            }
        }
    }

    /// The first value seen for a device whose verdict is `quick` (the
    /// trigger value): its first series' in the first term that has one;
    /// `None` when it has none, or when its verdict was set without one
    /// ([`Quick::FALSE`]).
    pub(crate) fn first_value(&self, device: DeviceId, quick: &Quick) -> Option<f64> {
        if !quick.valued {
            return None;
        }
        self.terms.iter().find_map(|term| {
            let (answer, view) = term.read.as_ref()?;
            let first = view.run_of(device).first()?;
            Some(answer.series[*first as usize].value)
        })
    }

    /// Whether guard `guard` holds for a device whose series are `runs`: its
    /// query answered, and one of its series carries the device's values of
    /// the `on` labels (taken from the device's series, see [`Self::series_of`]).
    // Inlined into the per-device loops, whatever the optimiser would
    // choose: returned through memory, the verdict was stored field by
    // field and read back whole, a stall per (job, device) (`perf annotate`
    // on `cargo bench --bench jobctl`).
    #[inline(always)]
    fn guard_holds(
        &self,
        guard: usize,
        index: &GuardIndex,
        device: DeviceId,
        runs: &[&[u32]],
    ) -> bool {
        let Some(tuples) = &index.tuples else { return false };
        if let Some(by_device) = &index.by_device {
            return by_device.get(device.index()).copied().unwrap_or(false);
        }
        let answers = self.answers;
        let tuple: Option<Vec<StrId>> = self.guards[guard]
            .on
            .iter()
            .map(|label| {
                let name = answers.find(label)?;
                self.series_of(runs)
                    .find_map(|series| answers.labels(series).iter().find(|(n, _)| *n == name))
                    .map(|&(_, value)| value)
            })
            .collect();
        tuple.is_some_and(|t| tuples.contains(&t))
    }

    /// A device's series, term by term, each term's in answer order.
    fn series_of<'r>(&'r self, runs: &'r [&'r [u32]]) -> impl Iterator<Item = &'a Series> + 'r {
        self.terms.iter().zip(runs).flat_map(|(term, run)| {
            let answer = term.read.as_ref().map(|(answer, _)| *answer);
            run.iter().filter_map(move |&s| answer.map(|a| &a.series[s as usize]))
        })
    }

    /// The full verdict for a device (`None`: one not in the answers, whose
    /// verdict is [`Self::absent`]).
    pub(crate) fn device_verdict(&self, device: Option<DeviceId>) -> DeviceVerdict {
        let Some(device) = device else {
            return DeviceVerdict {
                verdict: self.absent.verdict,
                unknown_because: self.absent.why.map(|why| self.reason(why)),
                values: Vec::new(),
                labels: BTreeMap::new(),
                several_targets: None,
            };
        };
        let quick = match self.devices.binary_search_by_key(&device, |d| d.0) {
            Ok(at) => self.devices[at].1,
            Err(_) => return self.device_verdict(None),
        };
        let runs: Vec<&[u32]> = self
            .terms
            .iter()
            .map(|term| term.read.as_ref().map_or(&[][..], |(_, view)| view.run_of(device)))
            .collect();
        let mut values = Vec::new();
        let mut labels = BTreeMap::new();
        for (term, run) in self.terms.iter().zip(&runs) {
            let Some((answer, _)) = &term.read else { continue };
            for &s in *run {
                let series = &answer.series[s as usize];
                values.push(SeenValue { query: term.query.to_string(), value: series.value });
                for &(name, value) in self.answers.labels(series) {
                    labels
                        .entry(self.answers.text(name).to_string())
                        .or_insert_with(|| self.answers.text(value).to_string());
                }
            }
        }
        let several = self.terms.iter().filter_map(|term| term.read.as_ref()?.1.several_of(device));
        let several_targets =
            several.fold(None, |found: Option<SeveralTargets>, (series, chosen)| {
                let (most, any) = found.map_or((0, false), |f| (f.series, f.freshest_chosen));
                Some(SeveralTargets { series: most.max(series), freshest_chosen: any || chosen })
            });
        DeviceVerdict {
            verdict: quick.verdict,
            unknown_because: quick.why.map(|why| self.reason(why)),
            values,
            labels,
            several_targets,
        }
    }

    fn reason(&self, why: Why) -> UnknownReason {
        let query = |term: u32| self.terms[term as usize].query.to_string();
        match why {
            Why::QueryFailed { term } => UnknownReason::QueryFailed { query: query(term) },
            Why::GuardQueryFailed { guard } => UnknownReason::QueryFailed {
                query: self.guards[guard as usize].expr.trim().to_string(),
            },
            Why::NoSeries { term } => UnknownReason::NoSeries { query: query(term) },
            Why::NotANumber { term } => UnknownReason::NotANumber { query: query(term) },
            Why::GuardNotMet { guard } => {
                UnknownReason::GuardNotMet { guard: self.guards[guard as usize].to_string() }
            }
        }
    }
}

/// Evaluates a condition and its guards for every device in the answers.
///
/// `results` maps each query (as returned by [`Term::query`] and the
/// guards' `expr`) to its answer; a query missing from the map failed this
/// cycle.
pub(crate) fn evaluate(
    condition: &Condition,
    devices: &LabelMatchers,
    guards: &[Guard],
    results: &HashMap<String, Vec<Sample>>,
    key_labels: &DeviceKeyLabels,
) -> Evaluation {
    let mut table = DeviceTable::default();
    let mut answers = Answers::new(key_labels);
    let queries = condition.terms().iter().map(|t| t.query(devices));
    let guards_queries = guards.iter().map(|g| g.expr.trim().to_string());
    let freshness = std::iter::once(FRESHNESS_QUERY.to_string());
    for query in queries.chain(guards_queries).chain(freshness) {
        if answers.answer(&query).is_some() {
            continue;
        }
        if let Some(samples) = results.get(&query) {
            let filled = answers.insert(query, &mut table, |add| {
                for sample in samples {
                    let labels: Vec<Label<'_>> = sample
                        .labels
                        .iter()
                        .map(|(name, text)| (name.as_str().into(), text.as_str().into()))
                        .collect();
                    add(&labels, sample.value);
                }
                Ok::<_, std::convert::Infallible>(())
            });
            let Ok(()) = filled;
        }
    }
    let plan = Plan::new([(condition, devices, guards)]);
    let mut index = Index::new(&answers, &plan);
    let evaluation = JobEvaluation::new(&mut index, 0, condition, guards);
    Evaluation {
        devices: evaluation
            .devices
            .iter()
            .map(|&(device, _)| {
                let key = table.key(device).expect("a device of the answers has a key").clone();
                (key, evaluation.device_verdict(Some(device)))
            })
            .collect(),
        absent: evaluation.device_verdict(None),
        unkeyed_series: evaluation.unkeyed_series,
        several_targets: evaluation.several_targets,
        freshest_chosen: evaluation.freshest_chosen,
    }
}

#[cfg(test)]
mod tests {
    use super::super::term::Op;
    use super::*;

    fn sample(pairs: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
        }
    }

    fn key(platform: &str, device: &str) -> DeviceKey {
        DeviceKey::new(vec![
            ("platform_id".into(), platform.into()),
            ("device_id".into(), device.into()),
        ])
    }

    fn online(value: f64) -> Term {
        Term::Compare { metric: "online".into(), op: Op::Eq, value }
    }

    fn platform_guard() -> Guard {
        Guard { expr: "platform_up == 1".into(), on: vec!["platform_id".into()] }
    }

    #[test]
    fn comparisons_tell_false_from_missing() {
        let condition = Condition::Single(online(0.0));
        let mut results = HashMap::new();
        results.insert(
            "online".to_string(),
            vec![
                sample(&[("platform_id", "1"), ("device_id", "a")], 0.0),
                sample(&[("platform_id", "1"), ("device_id", "b")], 1.0),
                sample(&[("platform_id", "1")], 0.0),
            ],
        );
        let eval = evaluate(
            &condition,
            &LabelMatchers::default(),
            &[],
            &results,
            &DeviceKeyLabels::default(),
        );
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::True);
        assert_eq!(
            eval.get(&key("1", "a")).values,
            [SeenValue { query: "online".into(), value: 0.0 }]
        );
        assert_eq!(eval.get(&key("1", "b")).verdict, Verdict::False);
        assert_eq!(eval.get(&key("1", "c")).verdict, Verdict::Unknown);
        assert_eq!(
            eval.get(&key("1", "c")).unknown_because,
            Some(UnknownReason::NoSeries { query: "online".into() })
        );
        assert_eq!(eval.unkeyed_series, 1);

        let eval = evaluate(
            &condition,
            &LabelMatchers::default(),
            &[],
            &HashMap::new(),
            &DeviceKeyLabels::default(),
        );
        assert_eq!(
            eval.absent.unknown_because,
            Some(UnknownReason::QueryFailed { query: "online".into() })
        );
    }

    #[test]
    fn several_series_for_one_device_must_all_agree() {
        let condition = Condition::Single(online(0.0));
        let mut results = HashMap::new();
        results.insert(
            "online".to_string(),
            vec![
                sample(&[("platform_id", "1"), ("device_id", "a"), ("instance", "x")], 0.0),
                sample(&[("platform_id", "1"), ("device_id", "a"), ("instance", "y")], 1.0),
            ],
        );
        let eval = evaluate(
            &condition,
            &LabelMatchers::default(),
            &[],
            &results,
            &DeviceKeyLabels::default(),
        );
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::False);
    }

    /// The series of an HA pair of exporters: `online` for device a of
    /// platform 1 from each, and each exporter's last successful poll.
    fn pair(stale: (&str, f64), fresh: (&str, f64)) -> HashMap<String, Vec<Sample>> {
        let series = |instance: &str, value: f64| {
            let labels = [
                ("platform_id", "1"),
                ("device_id", "a"),
                ("instance", instance),
                ("job", "addreality"),
            ];
            sample(&labels, value)
        };
        let polled = |instance: &str, at: f64| {
            let labels = [
                ("__name__", FRESHNESS_QUERY),
                ("platform_id", "1"),
                ("instance", instance),
                ("job", "addreality"),
            ];
            sample(&labels, at)
        };
        let mut results = HashMap::new();
        results
            .insert("online".to_string(), vec![series(stale.0, stale.1), series(fresh.0, fresh.1)]);
        results.insert(
            FRESHNESS_QUERY.to_string(),
            vec![polled(stale.0, 1_000.0), polled(fresh.0, 1_600.5)],
        );
        results
    }

    #[test]
    fn the_freshest_target_wins_when_a_pair_of_exporters_disagree() {
        let condition = Condition::Single(online(0.0));
        let spec = DeviceKeyLabels::default();
        let none = LabelMatchers::default();
        // The stale exporter still says online, the fresh one offline: the
        // device is offline (before: false, as not every series said 0).
        for (stale, fresh) in [("x:1", "y:2"), ("y:2", "x:1")] {
            let results = pair((stale, 1.0), (fresh, 0.0));
            let eval = evaluate(&condition, &none, &[], &results, &spec);
            let a = eval.get(&key("1", "a"));
            assert_eq!(a.verdict, Verdict::True, "{stale} stale");
            assert_eq!(a.values, [SeenValue { query: "online".into(), value: 0.0 }]);
            assert_eq!(a.labels["instance"], fresh, "the labels are the fresh target's");
            let several = SeveralTargets { series: 2, freshest_chosen: true };
            assert_eq!(a.several_targets, Some(several));
            assert_eq!((eval.several_targets, eval.freshest_chosen), (1, 1));
        }
        // The stale one says offline, the fresh one online: not offline.
        let eval = evaluate(&condition, &none, &[], &pair(("x:1", 0.0), ("y:2", 1.0)), &spec);
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::False);
        // The fresh one has no value: unknown, whatever the stale one says.
        let results = pair(("x:1", 0.0), ("y:2", f64::NAN));
        let eval = evaluate(&condition, &none, &[], &results, &spec);
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::Unknown);
    }

    #[test]
    fn without_freshness_several_series_must_all_agree() {
        let condition = Condition::Single(online(0.0));
        let spec = DeviceKeyLabels::default();
        let none = LabelMatchers::default();
        // The freshness query failed: nothing tells the two apart.
        let mut results = pair(("x:1", 1.0), ("y:2", 0.0));
        results.remove(FRESHNESS_QUERY);
        let eval = evaluate(&condition, &none, &[], &results, &spec);
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::False);
        assert_eq!((eval.several_targets, eval.freshest_chosen), (1, 0));
        // Polled at the same time: the same.
        let mut results = pair(("x:1", 1.0), ("y:2", 0.0));
        results.get_mut(FRESHNESS_QUERY).unwrap()[1].value = 1_000.0;
        let eval = evaluate(&condition, &none, &[], &results, &spec);
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::False);
        // Both agree: one device, true.
        let eval = evaluate(&condition, &none, &[], &pair(("x:1", 0.0), ("y:2", 0.0)), &spec);
        assert_eq!(eval.devices.len(), 1);
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::True);
    }

    #[test]
    fn a_series_no_freshness_joins_is_older_than_one_it_joins() {
        let condition = Condition::Single(online(0.0));
        let mut results = pair(("x:1", 1.0), ("y:2", 0.0));
        // x's freshness series is for another platform: x is not dated.
        results.get_mut(FRESHNESS_QUERY).unwrap()[0]
            .labels
            .insert("platform_id".into(), "2".into());
        let spec = DeviceKeyLabels::default();
        let eval = evaluate(&condition, &LabelMatchers::default(), &[], &results, &spec);
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::True);
    }

    #[test]
    fn expressions_are_true_when_present_false_when_absent() {
        let condition = Condition::Single(Term::Expr("up == 0".into()));
        let mut results = HashMap::new();
        results.insert(
            "up == 0".to_string(),
            vec![sample(&[("platform_id", "1"), ("device_id", "a")], 0.0)],
        );
        let eval = evaluate(
            &condition,
            &LabelMatchers::default(),
            &[],
            &results,
            &DeviceKeyLabels::default(),
        );
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::True);
        assert_eq!(eval.get(&key("1", "b")).verdict, Verdict::False);
    }

    #[test]
    fn all_and_any_use_three_valued_logic() {
        let mut results = HashMap::new();
        let a = [("platform_id", "1"), ("device_id", "a")];
        results.insert("online".to_string(), vec![sample(&a, 0.0)]);
        results.insert("x".to_string(), vec![sample(&a, 1.0)]);
        let terms =
            vec![online(0.0), Term::Compare { metric: "missing".into(), op: Op::Gt, value: 1.0 }];
        let spec = DeviceKeyLabels::default();
        let none = LabelMatchers::default();
        // "missing" failed: all is unknown, any is true (one term is true).
        let all = evaluate(&Condition::All(terms.clone()), &none, &[], &results, &spec);
        assert_eq!(all.get(&key("1", "a")).verdict, Verdict::Unknown);
        let any = evaluate(&Condition::Any(terms), &none, &[], &results, &spec);
        assert_eq!(any.get(&key("1", "a")).verdict, Verdict::True);
        // A false term decides `all` even next to an unknown one.
        let terms =
            vec![online(5.0), Term::Compare { metric: "missing".into(), op: Op::Gt, value: 1.0 }];
        let all = evaluate(&Condition::All(terms), &none, &[], &results, &spec);
        assert_eq!(all.get(&key("1", "a")).verdict, Verdict::False);
    }

    #[test]
    fn guards_make_untrusted_data_unknown() {
        let condition = Condition::Single(online(0.0));
        let guards = [platform_guard()];
        let mut results = HashMap::new();
        results.insert(
            "online".to_string(),
            vec![
                sample(&[("platform_id", "1"), ("device_id", "a")], 0.0),
                sample(&[("platform_id", "2"), ("device_id", "b")], 1.0),
            ],
        );
        results.insert("platform_up == 1".to_string(), vec![sample(&[("platform_id", "1")], 1.0)]);
        let spec = DeviceKeyLabels::default();
        let eval = evaluate(&condition, &LabelMatchers::default(), &guards, &results, &spec);
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::True);
        let b = eval.get(&key("2", "b"));
        assert_eq!(b.verdict, Verdict::Unknown);
        assert_eq!(
            b.unknown_because.as_ref().unwrap().to_string(),
            "guard platform_up == 1 on (platform_id) does not hold"
        );

        results.remove("platform_up == 1");
        let eval = evaluate(&condition, &LabelMatchers::default(), &guards, &results, &spec);
        assert_eq!(eval.get(&key("1", "a")).verdict, Verdict::Unknown);
        assert_eq!(eval.absent.verdict, Verdict::Unknown);
    }

    #[test]
    fn device_matchers_filter_expression_answers() {
        let condition = Condition::Single(Term::Expr("up == 0".into()));
        let mut matchers = BTreeMap::new();
        matchers.insert("platform_id".to_string(), "1".to_string());
        let mut results = HashMap::new();
        results.insert(
            "up == 0".to_string(),
            vec![
                sample(&[("platform_id", "1"), ("device_id", "a")], 0.0),
                sample(&[("platform_id", "2"), ("device_id", "b")], 0.0),
            ],
        );
        let eval = evaluate(
            &condition,
            &LabelMatchers::new(matchers),
            &[],
            &results,
            &DeviceKeyLabels::default(),
        );
        assert_eq!(eval.devices.len(), 1);
        assert_eq!(eval.get(&key("2", "b")).verdict, Verdict::False);
    }

    /// The evaluation as it was before answers were indexed once per cycle:
    /// the new one must agree with it on any input.
    mod reference {
        use std::collections::{BTreeMap, HashMap, HashSet};

        use super::super::*;

        #[derive(Clone)]
        struct TermOutcome {
            verdict: Verdict,
            reason: Option<UnknownReason>,
        }

        impl TermOutcome {
            fn known(truth: bool) -> TermOutcome {
                TermOutcome {
                    verdict: if truth { Verdict::True } else { Verdict::False },
                    reason: None,
                }
            }

            fn unknown(reason: UnknownReason) -> TermOutcome {
                TermOutcome { verdict: Verdict::Unknown, reason: Some(reason) }
            }
        }

        fn combine(condition: &Condition, outcomes: Vec<TermOutcome>) -> TermOutcome {
            let decisive = match condition {
                Condition::Single(_) => return outcomes.into_iter().next().expect("one term"),
                Condition::All(_) => Verdict::False,
                Condition::Any(_) => Verdict::True,
            };
            if outcomes.iter().any(|o| o.verdict == decisive) {
                return TermOutcome { verdict: decisive, reason: None };
            }
            if let Some(unknown) = outcomes.iter().find(|o| o.verdict == Verdict::Unknown) {
                return unknown.clone();
            }
            let rest = if decisive == Verdict::True { Verdict::False } else { Verdict::True };
            TermOutcome { verdict: rest, reason: None }
        }

        /// Per device while reading the answers: which sample values each term saw.
        struct Seen {
            values: Vec<Vec<f64>>,
            labels: BTreeMap<String, String>,
            seen: Vec<SeenValue>,
        }

        /// Evaluates a condition and its guards for every device in the answers.
        ///
        /// `results` maps each query (as returned by [`Term::query`] and the
        /// guards' `expr`) to its answer; a query missing from the map failed this
        /// cycle.
        pub(super) fn evaluate(
            condition: &Condition,
            devices: &LabelMatchers,
            guards: &[Guard],
            results: &HashMap<String, Vec<Sample>>,
            key_labels: &DeviceKeyLabels,
        ) -> Evaluation {
            let terms = condition.terms();
            let queries: Vec<String> = terms.iter().map(|t| t.query(devices)).collect();
            let mut by_device: BTreeMap<DeviceKey, Seen> = BTreeMap::new();
            let mut unkeyed_series = 0;
            for (i, query) in queries.iter().enumerate() {
                let Some(samples) = results.get(query) else { continue };
                for sample in samples {
                    if !devices.matches(&sample.labels) {
                        continue;
                    }
                    let Some(key) = key_labels.key_of(&sample.labels) else {
                        unkeyed_series += 1;
                        continue;
                    };
                    let entry = by_device.entry(key).or_insert_with(|| Seen {
                        values: vec![Vec::new(); terms.len()],
                        labels: BTreeMap::new(),
                        seen: Vec::new(),
                    });
                    entry.values[i].push(sample.value);
                    entry.seen.push(SeenValue { query: query.clone(), value: sample.value });
                    for (name, value) in &sample.labels {
                        if !entry.labels.contains_key(name) {
                            entry.labels.insert(name.clone(), value.clone());
                        }
                    }
                }
            }

            let guard_sets: Vec<Option<HashSet<Vec<&str>>>> = guards
                .iter()
                .map(|guard| {
                    results.get(guard.expr.trim()).map(|samples| {
                        samples
                            .iter()
                            .filter_map(|s| {
                                guard
                                    .on
                                    .iter()
                                    .map(|l| s.labels.get(l).map(String::as_str))
                                    .collect()
                            })
                            .collect()
                    })
                })
                .collect();

            let term_outcome = |i: usize, values: &[f64]| -> TermOutcome {
                let query = &queries[i];
                if !results.contains_key(query) {
                    return TermOutcome::unknown(UnknownReason::QueryFailed {
                        query: query.clone(),
                    });
                }
                match &terms[i] {
                    Term::Expr(_) => TermOutcome::known(!values.is_empty()),
                    Term::Compare { op, value, .. } => {
                        if values.is_empty() {
                            TermOutcome::unknown(UnknownReason::NoSeries { query: query.clone() })
                        } else if values.iter().any(|v| v.is_nan()) {
                            TermOutcome::unknown(UnknownReason::NotANumber { query: query.clone() })
                        } else {
                            TermOutcome::known(values.iter().all(|v| op.holds(*v, *value)))
                        }
                    }
                }
            };

            let guard_failure =
                |labels: Option<&BTreeMap<String, String>>| -> Option<UnknownReason> {
                    for (guard, set) in guards.iter().zip(&guard_sets) {
                        let Some(set) = set else {
                            return Some(UnknownReason::QueryFailed {
                                query: guard.expr.trim().to_string(),
                            });
                        };
                        // An absent device has no labels to join on: only a failed guard
                        // query makes its verdict unknown.
                        let Some(labels) = labels else { continue };
                        let tuple: Option<Vec<&str>> =
                            guard.on.iter().map(|l| labels.get(l).map(String::as_str)).collect();
                        if !tuple.is_some_and(|t| set.contains(&t)) {
                            return Some(UnknownReason::GuardNotMet { guard: guard.to_string() });
                        }
                    }
                    None
                };

            let finish = |outcome: TermOutcome,
                          guard: Option<UnknownReason>,
                          values,
                          labels,
                          several_targets| match guard {
                Some(reason) => DeviceVerdict {
                    verdict: Verdict::Unknown,
                    unknown_because: Some(reason),
                    values,
                    labels,
                    several_targets,
                },
                None => DeviceVerdict {
                    verdict: outcome.verdict,
                    unknown_because: outcome.reason,
                    values,
                    labels,
                    several_targets,
                },
            };

            let several_targets = (0..terms.len())
                .map(|i| by_device.values().filter(|seen| seen.values[i].len() > 1).count())
                .max()
                .unwrap_or(0);
            let devices_out = by_device
                .into_iter()
                .map(|(key, seen)| {
                    let outcomes =
                        (0..terms.len()).map(|i| term_outcome(i, &seen.values[i])).collect();
                    let outcome = combine(condition, outcomes);
                    let guard = guard_failure(Some(&seen.labels));
                    let most = seen.values.iter().map(Vec::len).max().unwrap_or(0);
                    let several = (most > 1)
                        .then_some(SeveralTargets { series: most, freshest_chosen: false });
                    (key, finish(outcome, guard, seen.seen, seen.labels, several))
                })
                .collect();

            let absent_outcome =
                combine(condition, (0..terms.len()).map(|i| term_outcome(i, &[])).collect());
            let absent =
                finish(absent_outcome, guard_failure(None), Vec::new(), BTreeMap::new(), None);

            Evaluation {
                devices: devices_out,
                absent,
                unkeyed_series,
                several_targets,
                freshest_chosen: 0,
            }
        }
    }

    /// Random answers, conditions, matchers and guards over a few devices,
    /// with missing labels, NaN, several series per device and failed
    /// queries: the indexed evaluation gives exactly the old verdicts,
    /// reasons, values and labels.
    #[test]
    fn indexed_evaluation_agrees_with_the_reference() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pick = |rng: &mut fastrand::Rng, choices: &[&str]| {
            choices[rng.usize(..choices.len())].to_string()
        };
        for _ in 0..3000 {
            let term = |rng: &mut fastrand::Rng| {
                if rng.u8(..4) == 0 {
                    Term::Expr(pick(rng, &["e1", " e2 ", "m1"]))
                } else {
                    Term::Compare {
                        metric: pick(rng, &["m1", "m2"]),
                        op: Op::ALL[rng.usize(..6)],
                        value: f64::from(rng.u8(..3)),
                    }
                }
            };
            let count = rng.usize(1..4);
            let terms: Vec<Term> = (0..count).map(|_| term(&mut rng)).collect();
            let condition = match (count, rng.u8(..2)) {
                (1, 0) => Condition::Single(terms[0].clone()),
                (_, 0) => Condition::All(terms),
                _ => Condition::Any(terms),
            };
            let mut matchers = BTreeMap::new();
            for (label, values) in [("platform_id", ["1", "2"]), ("zone", ["n", ""])] {
                if rng.u8(..3) == 0 {
                    matchers.insert(label.to_string(), pick(&mut rng, &values));
                }
            }
            let devices = LabelMatchers::new(matchers);
            let guards: Vec<Guard> = (0..rng.usize(..3))
                .map(|_| {
                    let on = match rng.u8(..4) {
                        0 => vec![],
                        1 => vec!["platform_id".to_string()],
                        2 => vec!["zone".to_string()],
                        _ => vec!["device_id".to_string(), "platform_id".to_string()],
                    };
                    Guard { expr: pick(&mut rng, &["g1", "g2 "]), on }
                })
                .collect();
            let key_labels = if rng.u8(..5) == 0 {
                DeviceKeyLabels::new(vec!["device_id".into()])
            } else {
                DeviceKeyLabels::default()
            };
            let mut results = HashMap::new();
            let queries = condition.terms().iter().map(|t| t.query(&devices));
            for query in queries.chain(guards.iter().map(|g| g.expr.trim().to_string())) {
                if rng.u8(..8) == 0 {
                    continue; // failed
                }
                let series = (0..rng.usize(..8))
                    .map(|_| {
                        let mut labels = BTreeMap::new();
                        for (label, values) in [
                            ("platform_id", &["1", "2"][..]),
                            ("device_id", &["a", "b", "c"][..]),
                            ("zone", &["n", "s"][..]),
                            ("name", &["x", "y"][..]),
                        ] {
                            if rng.u8(..6) != 0 {
                                labels.insert(label.to_string(), pick(&mut rng, values));
                            }
                        }
                        let value = [0.0, 1.0, 2.0, f64::NAN][rng.usize(..4)];
                        Sample { labels, value }
                    })
                    .collect();
                results.insert(query, series);
            }
            let new = evaluate(&condition, &devices, &guards, &results, &key_labels);
            let old = reference::evaluate(&condition, &devices, &guards, &results, &key_labels);
            // Debug, not ==: NaN values must compare equal too.
            assert_eq!(
                format!("{new:?}"),
                format!("{old:?}"),
                "{condition:?} on {devices:?} with {guards:?}: {results:?}"
            );
        }
    }
}
