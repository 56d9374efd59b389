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
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;

use super::device::{DeviceId, DeviceKey, DeviceKeyLabels, DeviceTable, LabelMatchers};
use crate::prometheus_api::Label;

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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// A label string's number within one cycle's [`Answers`].
type StrId = u32;

/// One cycle's answers, compacted and indexed once for every job.
///
/// Prometheus answers a selector with one label map per series; a fleet of
/// ten thousand devices gives tens of thousands of them per cycle, read by a
/// thousand jobs. Kept as maps and re-read per job, they cost hundreds of
/// megabytes and seconds per cycle. Here each label string is stored once
/// per cycle (a series' labels become pairs of numbers), each series is
/// attributed to its device once (a [`DeviceId`] from the engine's
/// [`DeviceTable`]), and jobs with the same query and device matchers share
/// one [`View`] of it (see [`Index`]). The engine keeps one `Answers` and
/// [`Answers::reset`]s it each cycle, so its buffers are not allocated anew.
#[derive(Default)]
pub(crate) struct Answers {
    /// Every label string of the cycle, end to end.
    text: String,
    /// Where each string ends in `text` (it starts where the previous ends).
    ends: Vec<u32>,
    /// A string's id by the hash of its text; ids whose texts share a hash
    /// are chained through `same_hash`.
    by_hash: HashMap<u64, StrId, BuildHasherDefault<AlreadyHashed>>,
    same_hash: Vec<StrId>,
    hasher: RandomState,
    /// The (name, value) pairs of every series, consecutive per series.
    /// Series with the same labels in several answers (a device's series
    /// in a per-platform and a fleet-wide query) share one run.
    pairs: Vec<(StrId, StrId)>,
    /// A run of `pairs` by the hash of its pairs (the first run seen with
    /// that hash; a different run with the same hash is not shared).
    runs: HashMap<u64, (u32, u32), BuildHasherDefault<AlreadyHashed>>,
    by_query: HashMap<String, Answer>,
    /// The device-key labels' names, in key order.
    key_names: Vec<StrId>,
    /// The device of each tuple of device-key label values seen.
    device_of: HashMap<Vec<StrId>, DeviceId>,
    /// The device-key label values of each device seen, by device index
    /// (`key_names.len()` values from `key_offsets[index]`).
    key_values: Vec<StrId>,
    key_offsets: Vec<u32>,
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// One query's answer: its series, in Prometheus's order.
struct Answer {
    series: Vec<Series>,
}

/// One series of an answer.
struct Series {
    /// `None` when it lacks a device-key label.
    device: Option<DeviceId>,
    value: f64,
    /// Its labels: `Answers::pairs[start..end]`.
    pairs: (u32, u32),
}

/// The end of a chain, and a device not seen.
const NONE: u32 = u32::MAX;

impl Answers {
    /// No answers yet; devices are identified by `key_labels`.
    pub(crate) fn new(key_labels: &DeviceKeyLabels) -> Answers {
        let mut answers = Answers::default();
        answers.reset(key_labels);
        answers
    }

    /// Forgets every answer (keeping the buffers) for a new cycle.
    pub(crate) fn reset(&mut self, key_labels: &DeviceKeyLabels) {
        self.text.clear();
        self.ends.clear();
        self.by_hash.clear();
        self.same_hash.clear();
        self.pairs.clear();
        self.runs.clear();
        self.by_query.clear();
        self.device_of.clear();
        self.key_values.clear();
        self.key_offsets.clear();
        self.key_names = key_labels.labels().iter().map(|name| self.intern(name)).collect();
    }

    /// Adds the answer to `query`: `fill` hands each series' labels and
    /// value to the function it is given. When `fill` fails, nothing of the
    /// answer is kept, and no device is taken from it.
    pub(crate) fn insert<E>(
        &mut self,
        query: String,
        devices: &mut DeviceTable,
        fill: impl FnOnce(&mut dyn FnMut(&[Label<'_>], f64)) -> Result<(), E>,
    ) -> Result<(), E> {
        let pairs_before = self.pairs.len();
        let key_count = self.key_names.len();
        let mut series = Vec::new();
        // The series that have every device-key label, and those labels'
        // values (`key_count` each): their devices are looked up once the
        // whole answer is in.
        let (mut keyed, mut tuples) = (Vec::new(), Vec::new());
        // Most labels repeat from one series to the next (`job`, `instance`,
        // `__name__`, `platform_id`): compare with the previous series'
        // before looking a string up.
        let mut previous: Vec<(StrId, StrId)> = Vec::new();
        let filled = fill(&mut |labels, value| {
            let start = self.pairs.len();
            for (position, (name, text)) in labels.iter().enumerate() {
                let before = previous.get(position).copied();
                let name = match before {
                    Some((id, _)) if self.text(id) == name => id,
                    _ => self.intern(name),
                };
                let text = match before {
                    Some((_, id)) if self.text(id) == text => id,
                    _ => self.intern(text),
                };
                self.pairs.push((name, text));
            }
            previous.clear();
            previous.extend_from_slice(&self.pairs[start..]);
            let mut pairs = (start as u32, self.pairs.len() as u32);
            let hash = self.hasher.hash_one(&previous);
            match self.runs.get(&hash) {
                Some(&(from, to)) if self.pairs[from as usize..to as usize] == previous[..] => {
                    self.pairs.truncate(start);
                    pairs = (from, to);
                }
                Some(_) => {}
                None => {
                    self.runs.insert(hash, pairs);
                }
            }
            let tuple_start = tuples.len();
            let has_key = self.key_names.iter().all(|name| {
                let found = previous.iter().find(|(n, _)| n == name);
                found.map(|&(_, text)| tuples.push(text)).is_some()
            });
            if has_key {
                keyed.push(series.len());
            } else {
                tuples.truncate(tuple_start);
            }
            series.push(Series { device: None, value, pairs });
        });
        if let Err(err) = filled {
            self.pairs.truncate(pairs_before);
            self.runs.retain(|_, &mut (from, _)| (from as usize) < pairs_before);
            return Err(err);
        }
        for (nth, &index) in keyed.iter().enumerate() {
            let tuple = &tuples[nth * key_count..(nth + 1) * key_count];
            series[index].device = Some(self.device(tuple, devices));
        }
        self.by_query.insert(query, Answer { series });
        Ok(())
    }

    fn intern(&mut self, text: &str) -> StrId {
        let hash = self.hasher.hash_one(text);
        let first = self.by_hash.get(&hash).copied();
        let mut id = first.unwrap_or(NONE);
        while id != NONE {
            if self.text(id) == text {
                return id;
            }
            id = self.same_hash[id as usize];
        }
        let id = StrId::try_from(self.ends.len()).expect("fewer than 4 billion label strings");
        self.text.push_str(text);
        self.ends.push(u32::try_from(self.text.len()).expect("under 4 GiB of label text"));
        self.same_hash.push(first.unwrap_or(NONE));
        self.by_hash.insert(hash, id);
        id
    }

    fn find(&self, text: &str) -> Option<StrId> {
        let mut id = *self.by_hash.get(&self.hasher.hash_one(text))?;
        while id != NONE {
            if self.text(id) == text {
                return Some(id);
            }
            id = self.same_hash[id as usize];
        }
        None
    }

    fn device(&mut self, tuple: &[StrId], devices: &mut DeviceTable) -> DeviceId {
        if let Some(&id) = self.device_of.get(tuple) {
            return id;
        }
        let pairs = self.key_names.iter().zip(tuple);
        let key = DeviceKey::new(
            pairs
                .map(|(&name, &text)| (self.text(name).to_string(), self.text(text).to_string()))
                .collect(),
        );
        let id = devices.intern_key(key);
        self.device_of.insert(tuple.to_vec(), id);
        if self.key_offsets.len() <= id.index() {
            self.key_offsets.resize(id.index() + 1, NONE);
        }
        self.key_offsets[id.index()] = self.key_values.len() as u32;
        self.key_values.extend_from_slice(tuple);
        id
    }

    /// The device-key label values of a device seen in these answers.
    fn key_of(&self, device: DeviceId) -> Option<&[StrId]> {
        let offset = *self.key_offsets.get(device.index())?;
        (offset != NONE)
            .then(|| &self.key_values[offset as usize..offset as usize + self.key_names.len()])
    }

    fn labels(&self, series: &Series) -> &[(StrId, StrId)] {
        &self.pairs[series.pairs.0 as usize..series.pairs.1 as usize]
    }

    fn text(&self, id: StrId) -> &str {
        let start = if id == 0 { 0 } else { self.ends[id as usize - 1] as usize };
        &self.text[start..self.ends[id as usize] as usize]
    }
}

/// The series of one answer that a job's device matchers select, grouped
/// by device in [`DeviceId`] order, each device's in answer order.
struct View {
    /// Each device and the end of its run in `series` (a run starts where
    /// the previous one ends).
    devices: Vec<(DeviceId, u32)>,
    /// Indices into the answer's series.
    series: Vec<u32>,
    /// Selected series that lack a device-key label.
    unkeyed: usize,
}

impl View {
    fn build(answers: &Answers, answer: &Answer, matchers: &LabelMatchers) -> View {
        // A matcher whose name or value no series has selects nothing.
        let wanted: Option<Vec<(StrId, StrId)>> = matchers
            .iter()
            .map(|(name, value)| Some((answers.find(name)?, answers.find(value)?)))
            .collect();
        let mut selected: Vec<(DeviceId, u32)> = Vec::new();
        let mut unkeyed = 0;
        if let Some(wanted) = wanted {
            for (index, series) in answer.series.iter().enumerate() {
                let labels = answers.labels(series);
                if !wanted.iter().all(|pair| labels.contains(pair)) {
                    continue;
                }
                match series.device {
                    Some(device) => selected.push((device, index as u32)),
                    None => unkeyed += 1,
                }
            }
        }
        // Stable: a device's series stay in answer order.
        selected.sort_by_key(|&(device, _)| device);
        let mut devices: Vec<(DeviceId, u32)> = Vec::new();
        for (end, &(device, _)) in selected.iter().enumerate() {
            match devices.last_mut() {
                Some((last, run_end)) if *last == device => *run_end = end as u32 + 1,
                _ => devices.push((device, end as u32 + 1)),
            }
        }
        View { devices, series: selected.into_iter().map(|(_, index)| index).collect(), unkeyed }
    }

    /// The run of `devices[at]`.
    fn run(&self, at: usize) -> &[u32] {
        let start = if at == 0 { 0 } else { self.devices[at - 1].1 as usize };
        &self.series[start..self.devices[at].1 as usize]
    }

    /// A device's run; empty when it has none.
    fn run_of(&self, device: DeviceId) -> &[u32] {
        match self.devices.binary_search_by_key(&device, |&(d, _)| d) {
            Ok(at) => self.run(at),
            Err(_) => &[],
        }
    }
}

/// A guard read against one cycle's answers.
struct GuardIndex {
    /// The tuples of `on` label values its series carry; `None` when its
    /// query failed.
    tuples: Option<HashSet<Vec<StrId>>>,
    /// When every `on` label is a device-key label, whether the guard holds
    /// depends on the device alone: here, by device index, for every device
    /// seen this cycle.
    by_device: Option<Vec<bool>>,
}

impl GuardIndex {
    fn build(answers: &Answers, guard: &Guard) -> GuardIndex {
        let tuples = answers.by_query.get(guard.expr.trim()).map(|answer| {
            let names: Option<Vec<StrId>> = guard.on.iter().map(|l| answers.find(l)).collect();
            let Some(names) = names else { return HashSet::new() };
            answer
                .series
                .iter()
                .filter_map(|series| {
                    let labels = answers.labels(series);
                    names
                        .iter()
                        .map(|name| labels.iter().find(|(n, _)| n == name).map(|&(_, v)| v))
                        .collect()
                })
                .collect()
        });
        let positions: Option<Vec<usize>> = guard
            .on
            .iter()
            .map(|label| answers.key_names.iter().position(|&k| answers.text(k) == label))
            .collect();
        let by_device = match (&tuples, positions) {
            (Some(tuples), Some(positions)) => {
                let mut tuple = Vec::with_capacity(positions.len());
                let holds = (0..answers.key_offsets.len())
                    .map(|index| {
                        let Some(key) = answers.key_of(DeviceId::from_index(index)) else {
                            return false;
                        };
                        tuple.clear();
                        tuple.extend(positions.iter().map(|&p| key[p]));
                        tuples.contains(&tuple)
                    })
                    .collect();
                Some(holds)
            }
            _ => None,
        };
        GuardIndex { tuples, by_device }
    }
}

/// One cycle's [`Answers`] with what jobs derive from them, computed once
/// for every job that needs it: a [`View`] per query and device matchers, a
/// [`GuardIndex`] per guard.
pub(crate) struct Index<'a> {
    answers: &'a Answers,
    views: HashMap<(String, LabelMatchers), Option<Arc<View>>>,
    guards: HashMap<Guard, GuardIndex>,
}

impl<'a> Index<'a> {
    /// An index over `answers`.
    pub(crate) fn new(answers: &'a Answers) -> Index<'a> {
        Index { answers, views: HashMap::new(), guards: HashMap::new() }
    }

    /// The view of `query`'s answer through `matchers`; `None` when the
    /// query failed.
    fn view(&mut self, query: String, matchers: &LabelMatchers) -> Option<Arc<View>> {
        let answers = self.answers;
        self.views
            .entry((query, matchers.clone()))
            .or_insert_with_key(|(query, matchers)| {
                let answer = answers.by_query.get(query)?;
                Some(Arc::new(View::build(answers, answer, matchers)))
            })
            .clone()
    }
}

/// Why a verdict is unknown, by position in the job's terms or guards;
/// turned into an [`UnknownReason`] only when someone reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Why {
    QueryFailed { term: usize },
    GuardQueryFailed { guard: usize },
    NoSeries { term: usize },
    NotANumber { term: usize },
    GuardNotMet { guard: usize },
}

/// A device's verdict without the values and labels behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quick {
    /// The verdict.
    pub(crate) verdict: Verdict,
    why: Option<Why>,
    /// The first value seen for the device (the trigger value).
    pub(crate) first_value: Option<f64>,
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
    query: String,
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
}

impl<'a> JobEvaluation<'a> {
    /// Evaluates a condition and its guards for every device in `index`'s
    /// answers (the semantics are in the module notes).
    pub(crate) fn new(
        index: &mut Index<'a>,
        condition: &'a Condition,
        devices: &LabelMatchers,
        guards: &'a [Guard],
    ) -> JobEvaluation<'a> {
        let answers = index.answers;
        let terms: Vec<TermInput<'a>> = condition
            .terms()
            .iter()
            .map(|term| {
                let query = term.query(devices);
                let view = index.view(query.clone(), devices);
                let read = view.map(|view| (&answers.by_query[&query], view));
                TermInput { query, read }
            })
            .collect();
        for guard in guards {
            if !index.guards.contains_key(guard) {
                index.guards.insert(guard.clone(), GuardIndex::build(answers, guard));
            }
        }
        let guard_indexes: Vec<&GuardIndex> = guards.iter().map(|g| &index.guards[g]).collect();
        let mut evaluation = JobEvaluation {
            condition,
            guards,
            answers,
            unkeyed_series: terms.iter().filter_map(|t| t.read.as_ref()).map(|r| r.1.unkeyed).sum(),
            terms,
            devices: Vec::new(),
            absent: Quick { verdict: Verdict::Unknown, why: None, first_value: None },
        };

        let absent =
            combine(condition, (0..evaluation.terms.len()).map(|i| evaluation.outcome(i, &[])));
        let guard_failed = guard_indexes.iter().position(|g| g.tuples.is_none());
        evaluation.absent = match guard_failed {
            Some(guard) => Quick {
                verdict: Verdict::Unknown,
                why: Some(Why::GuardQueryFailed { guard }),
                first_value: None,
            },
            None => Quick { verdict: absent.verdict, why: absent.why, first_value: None },
        };

        let mut found = Vec::new();
        if let [TermInput { read: Some((answer, view)), .. }] = evaluation.terms.as_slice() {
            // One term, the usual case: its view is the list of devices, and
            // `all` or `any` of one term is that term.
            found.reserve_exact(view.devices.len());
            for at in 0..view.devices.len() {
                let (device, run) = (view.devices[at].0, view.run(at));
                let first_value = run.first().map(|&s| answer.series[s as usize].value);
                let outcome = evaluation.outcome(0, run);
                let runs = [run];
                found.push((
                    device,
                    evaluation.judge(&guard_indexes, device, &runs, outcome, first_value),
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
            let first_value = evaluation.terms.iter().zip(&runs).find_map(|(term, run)| {
                let (answer, _) = term.read.as_ref()?;
                run.first().map(|&s| answer.series[s as usize].value)
            });
            let outcome = combine(
                condition,
                runs.iter().enumerate().map(|(i, run)| evaluation.outcome(i, run)),
            );
            found.push((
                device,
                evaluation.judge(&guard_indexes, device, &runs, outcome, first_value),
            ));
        }
        evaluation.devices = found;
        evaluation
    }

    /// A present device's verdict: the condition's outcome, unless a guard
    /// does not hold.
    fn judge(
        &self,
        guards: &[&GuardIndex],
        device: DeviceId,
        runs: &[&[u32]],
        outcome: Outcome,
        first_value: Option<f64>,
    ) -> Quick {
        let failed =
            guards.iter().enumerate().find(|(g, index)| !self.guard_holds(*g, index, device, runs));
        match failed {
            Some((guard, index)) => Quick {
                verdict: Verdict::Unknown,
                why: Some(if index.tuples.is_none() {
                    Why::GuardQueryFailed { guard }
                } else {
                    Why::GuardNotMet { guard }
                }),
                first_value,
            },
            None => Quick { verdict: outcome.verdict, why: outcome.why, first_value },
        }
    }

    /// Term `term`'s outcome for a device whose series are `run`.
    fn outcome(&self, term: usize, run: &[u32]) -> Outcome {
        let Some((answer, _)) = &self.terms[term].read else {
            return Outcome::unknown(Why::QueryFailed { term });
        };
        match &self.condition.terms()[term] {
            Term::Expr(_) => Outcome::known(!run.is_empty()),
            Term::Compare { op, value, .. } => {
                let values = run.iter().map(|&s| answer.series[s as usize].value);
                if run.is_empty() {
                    Outcome::unknown(Why::NoSeries { term })
                } else if values.clone().any(f64::is_nan) {
                    Outcome::unknown(Why::NotANumber { term })
                } else {
                    Outcome::known(values.clone().all(|v| op.holds(v, *value)))
                }
            }
        }
    }

    /// Whether guard `guard` holds for a device whose series are `runs`: its
    /// query answered, and one of its series carries the device's values of
    /// the `on` labels (taken from the device's labels, see [`Self::labels`]).
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
                values.push(SeenValue { query: term.query.clone(), value: series.value });
                for &(name, value) in self.answers.labels(series) {
                    labels
                        .entry(self.answers.text(name).to_string())
                        .or_insert_with(|| self.answers.text(value).to_string());
                }
            }
        }
        DeviceVerdict {
            verdict: quick.verdict,
            unknown_because: quick.why.map(|why| self.reason(why)),
            values,
            labels,
        }
    }

    fn reason(&self, why: Why) -> UnknownReason {
        let query = |term: usize| self.terms[term].query.clone();
        match why {
            Why::QueryFailed { term } => UnknownReason::QueryFailed { query: query(term) },
            Why::GuardQueryFailed { guard } => {
                UnknownReason::QueryFailed { query: self.guards[guard].expr.trim().to_string() }
            }
            Why::NoSeries { term } => UnknownReason::NoSeries { query: query(term) },
            Why::NotANumber { term } => UnknownReason::NotANumber { query: query(term) },
            Why::GuardNotMet { guard } => {
                UnknownReason::GuardNotMet { guard: self.guards[guard].to_string() }
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
    for query in queries.chain(guards.iter().map(|g| g.expr.trim().to_string())) {
        if answers.by_query.contains_key(&query) {
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
    let mut index = Index::new(&answers);
    let evaluation = JobEvaluation::new(&mut index, condition, devices, guards);
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
    }
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
    fn an_answer_that_fails_half_way_leaves_nothing_behind() {
        let labels = |device: &'static str| -> Vec<Label<'static>> {
            vec![("platform_id".into(), "1".into()), ("device_id".into(), device.into())]
        };
        let mut answers = Answers::new(&DeviceKeyLabels::default());
        let mut devices = DeviceTable::default();
        answers
            .insert("up".into(), &mut devices, |add| {
                add(&labels("a"), 1.0);
                Ok::<_, ()>(())
            })
            .unwrap();
        let pairs = answers.pairs.len();

        let failed = answers.insert("online".into(), &mut devices, |add| {
            add(&labels("a"), 1.0);
            add(&labels("b"), 0.0);
            Err("the third series has no value")
        });

        assert_eq!(failed, Err("the third series has no value"));
        assert!(!answers.by_query.contains_key("online"));
        assert_eq!(answers.pairs.len(), pairs);
        assert_eq!(devices.len(), 1, "device b was never taken from the failed answer");
        // What was kept still works, and the same labels again share a run.
        answers
            .insert("online".into(), &mut devices, |add| {
                add(&labels("a"), 0.0);
                add(&labels("b"), 0.0);
                Ok::<_, ()>(())
            })
            .unwrap();
        assert_eq!(answers.pairs.len(), pairs + 2, "a's labels are shared with \"up\"");
        let online = &answers.by_query["online"].series;
        assert_eq!(online[0].pairs, answers.by_query["up"].series[0].pairs);
        assert_eq!(devices.len(), 2);
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

            let finish =
                |outcome: TermOutcome, guard: Option<UnknownReason>, values, labels| match guard {
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
                    let outcomes =
                        (0..terms.len()).map(|i| term_outcome(i, &seen.values[i])).collect();
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
