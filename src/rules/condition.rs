//! What a job's condition asks Prometheus, and how the answers become a
//! verdict per device.
//!
//! The engine must tell *false* from *missing*: unknown is never true, and a
//! player whose series vanished must not be power-cycled (nor declared
//! recovered). A comparison `metric op value` is therefore not sent as
//! `metric == 0` (which drops the series that are not 0, making "fine" and
//! "missing" look alike) but as the bare selector `metric{devices…}`; the
//! comparison is made here, so a device with a series is true or false and a
//! device without one is unknown.
//!
//! A raw `expr` cannot be taken apart that way. Its meaning is PromQL's: a
//! series returned for a device means true (its value is shown), no series
//! means false. Only a failed query makes it unknown. Prefer `metric`/`op`/
//! `value` where you can; use `expr` for what needs PromQL (rates,
//! aggregations, joins).
//!
//! `all` and `any` combine terms per device with three-valued logic: `all`
//! is false if one term is false, else unknown if one is unknown; `any` is
//! true if one term is true, else unknown if one is unknown.
//!
//! Guards decide whether the data can be trusted at all. Each guard is an
//! expression joined on labels (`addreality_platform_up == 1` on
//! `platform_id`): it holds for a device when it returns a series whose
//! `on` labels equal the device's. A guard that does not hold, or whose
//! query failed, makes the device's verdict unknown whatever the condition
//! says, so stale data neither fires nor resolves anything. With `on = []`
//! a guard holds for every device as soon as it returns any series.
//!
//! A device's verdict only counts the series that carry every device-key
//! label; when a device has several series for one comparison (scraped
//! twice, say), the comparison is true only when all of them satisfy it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::device::{DeviceKey, DeviceKeyLabels, LabelMatchers};

/// One series of an instant-query answer, as the Prometheus client returns it.
pub use crate::prometheus_api::Sample;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

impl Op {
    /// Every operator, as written.
    pub const ALL: [Op; 6] = [Op::Eq, Op::Ne, Op::Gt, Op::Ge, Op::Lt, Op::Le];

    /// Reads `==`, `!=`, `>`, `>=`, `<` or `<=`.
    pub fn parse(text: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }

    /// Whether `left op right` holds (`==` is exact float equality, as in
    /// PromQL).
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Eq => left == right,
            Op::Ne => left != right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Lt => left < right,
            Op::Le => left <= right,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition term.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// `metric op value`, compared here (see the module notes).
    Compare {
        /// Metric name.
        metric: String,
        /// Operator.
        op: Op,
        /// Threshold.
        value: f64,
    },
    /// Raw PromQL: a series returned for a device means true.
    Expr(String),
}

impl Term {
    /// The query this term needs, given the job's device matchers.
    pub fn query(&self, devices: &LabelMatchers) -> String {
        match self {
            Term::Compare { metric, .. } => devices.selector(metric),
            Term::Expr(expr) => expr.trim().to_string(),
        }
    }
}

impl fmt::Display for Term {
    /// `addreality_device_online == 0`, or the expression with its white
    /// space collapsed; used in generated job names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Compare { metric, op, value } => write!(f, "{metric} {op} {value}"),
            Term::Expr(expr) => f.write_str(&expr.split_whitespace().collect::<Vec<_>>().join(" ")),
        }
    }
}

/// A job's condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `metric`/`op`/`value` or `expr` directly in the job.
    Single(Term),
    /// `all = [...]`: every term holds.
    All(Vec<Term>),
    /// `any = [...]`: at least one term holds.
    Any(Vec<Term>),
}

impl Condition {
    /// The terms, in order.
    pub fn terms(&self) -> &[Term] {
        match self {
            Condition::Single(term) => std::slice::from_ref(term),
            Condition::All(terms) | Condition::Any(terms) => terms,
        }
    }
}

impl fmt::Display for Condition {
    /// Terms joined by ` and ` / ` or `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joiner = match self {
            Condition::Single(term) => return term.fmt(f),
            Condition::All(_) => " and ",
            Condition::Any(_) => " or ",
        };
        for (i, term) in self.terms().iter().enumerate() {
            if i > 0 {
                f.write_str(joiner)?;
            }
            term.fmt(f)?;
        }
        Ok(())
    }
}

/// A guard: an expression that must return a series for the device (joined
/// on `on`) before the job's verdict is believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The PromQL expression.
    pub expr: String,
    /// Labels joining its series to a device; empty = any series will do.
    pub on: Vec<String>,
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.on.is_empty() {
            write!(f, "{}", self.expr.trim())
        } else {
            write!(f, "{} on ({})", self.expr.trim(), self.on.join(", "))
        }
    }
}

/// Three-valued truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The condition holds and the data is trusted.
    True,
    /// The condition does not hold and the data is trusted.
    False,
    /// Missing data, a failed query or a guard that does not hold.
    Unknown,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::True => "true",
            Verdict::False => "false",
            Verdict::Unknown => "unknown",
        })
    }
}

/// Why a verdict is unknown, for logs and `jobctl test-rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownReason {
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
pub struct SeenValue {
    /// The query that returned it.
    pub query: String,
    /// The value.
    pub value: f64,
}

/// One device's verdict with what led to it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceVerdict {
    /// The verdict.
    pub verdict: Verdict,
    /// Why it is unknown (the first reason found), when it is.
    pub unknown_because: Option<UnknownReason>,
    /// The values of the condition's series for this device.
    pub values: Vec<SeenValue>,
    /// The union of the labels of those series, for SMS templates.
    pub labels: BTreeMap<String, String>,
}

/// A job's verdicts for one cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Devices that appear in at least one of the condition's answers.
    pub devices: BTreeMap<DeviceKey, DeviceVerdict>,
    /// The verdict for any other device (one the engine knew from earlier
    /// cycles): unknown for comparisons (their series is missing), false
    /// for a pure `expr` condition whose queries answered.
    pub absent: DeviceVerdict,
    /// Series ignored because they lack a device-key label.
    pub unkeyed_series: usize,
}

impl Evaluation {
    /// The verdict for a device, present or not.
    pub fn get(&self, device: &DeviceKey) -> &DeviceVerdict {
        self.devices.get(device).unwrap_or(&self.absent)
    }
}

#[derive(Clone)]
struct TermOutcome {
    verdict: Verdict,
    reason: Option<UnknownReason>,
}

impl TermOutcome {
    fn known(truth: bool) -> TermOutcome {
        TermOutcome { verdict: if truth { Verdict::True } else { Verdict::False }, reason: None }
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
pub(crate) fn evaluate(
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
                        guard.on.iter().map(|l| s.labels.get(l).map(String::as_str)).collect()
                    })
                    .collect()
            })
        })
        .collect();

    let term_outcome = |i: usize, values: &[f64]| -> TermOutcome {
        let query = &queries[i];
        if !results.contains_key(query) {
            return TermOutcome::unknown(UnknownReason::QueryFailed { query: query.clone() });
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

    let guard_failure = |labels: Option<&BTreeMap<String, String>>| -> Option<UnknownReason> {
        for (guard, set) in guards.iter().zip(&guard_sets) {
            let Some(set) = set else {
                return Some(UnknownReason::QueryFailed { query: guard.expr.trim().to_string() });
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

    let finish = |outcome: TermOutcome, guard: Option<UnknownReason>, values, labels| match guard {
        Some(reason) => DeviceVerdict {
            verdict: Verdict::Unknown,
            unknown_because: Some(reason),
            values,
            labels,
        },
        None => DeviceVerdict {
            verdict: outcome.verdict,
            unknown_because: outcome.reason,
            values,
            labels,
        },
    };

    let devices_out = by_device
        .into_iter()
        .map(|(key, seen)| {
            let outcomes = (0..terms.len()).map(|i| term_outcome(i, &seen.values[i])).collect();
            let outcome = combine(condition, outcomes);
            let guard = guard_failure(Some(&seen.labels));
            (key, finish(outcome, guard, seen.seen, seen.labels))
        })
        .collect();

    let absent_outcome =
        combine(condition, (0..terms.len()).map(|i| term_outcome(i, &[])).collect());
    let absent = finish(absent_outcome, guard_failure(None), Vec::new(), BTreeMap::new());

    Evaluation { devices: devices_out, absent, unkeyed_series }
}

#[cfg(test)]
mod tests {
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
}
