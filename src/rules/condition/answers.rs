//! One cycle's answers, stored once for every job: [`Answers`], and the
//! [`Index`] of what jobs derive from them (a [`View`] per query and device
//! matchers, a [`GuardIndex`] per guard, and the exporters' [`Freshness`]
//! that a view applies to a device several targets serve).
//!
//! The evaluation ([`super::evaluation`]) reads answers only through these.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::fast::RandomState;
use std::sync::Arc;

use super::freshness::{self, FRESHNESS_QUERY};
use super::plan::{JobPlan, Plan};
use super::term::Guard;
use crate::prometheus_api::Label;
use crate::rules::device::{DeviceId, DeviceKey, DeviceKeyLabels, DeviceTable, LabelMatchers};

/// A label string's number within one cycle's [`Answers`].
pub(super) type StrId = u32;

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
    by_query: HashMap<String, Answer, RandomState>,
    /// The device-key labels' names, in key order.
    key_names: Vec<StrId>,
    /// The device of each tuple of device-key label values seen.
    device_of: HashMap<Vec<StrId>, DeviceId, RandomState>,
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
pub(super) struct Answer {
    pub(super) series: Vec<Series>,
}

/// One series of an answer.
pub(super) struct Series {
    /// `None` when it lacks a device-key label.
    device: Option<DeviceId>,
    pub(super) value: f64,
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

    /// The answer to `query`; `None` when it failed (or was not asked).
    pub(super) fn answer(&self, query: &str) -> Option<&Answer> {
        self.by_query.get(query)
    }

    /// The id of a label string, when some series of the cycle has it.
    pub(super) fn find(&self, text: &str) -> Option<StrId> {
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

    /// A series' labels, as (name, value) ids.
    pub(super) fn labels(&self, series: &Series) -> &[(StrId, StrId)] {
        &self.pairs[series.pairs.0 as usize..series.pairs.1 as usize]
    }

    /// The text of a label string.
    pub(super) fn text(&self, id: StrId) -> &str {
        let start = if id == 0 { 0 } else { self.ends[id as usize - 1] as usize };
        &self.text[start..self.ends[id as usize] as usize]
    }
}

/// The series of one answer that a job's device matchers select, grouped
/// by device in [`DeviceId`] order, each device's in answer order; of a
/// device served by several targets, only the freshest target's series
/// ([`Freshness`]).
pub(super) struct View {
    /// Each device and the end of its run in `series` (a run starts where
    /// the previous one ends).
    pub(super) devices: Vec<(DeviceId, u32)>,
    /// Indices into the answer's series.
    series: Vec<u32>,
    /// Selected series that lack a device-key label.
    pub(super) unkeyed: usize,
    /// Devices with more than one series (served by several targets).
    pub(super) several_targets: usize,
    /// Of those, the devices whose series disagreed in freshness, so that
    /// only the freshest target's count ([`Freshness`]).
    pub(super) freshest_chosen: usize,
    /// Each device with more than one series, in device order: how many
    /// it had, and whether only the freshest target's were kept.
    several: Vec<(DeviceId, u32, bool)>,
}

impl View {
    fn build(
        answers: &Answers,
        answer: &Answer,
        matchers: &LabelMatchers,
        freshness: &Freshness,
    ) -> View {
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
        let mut series: Vec<u32> = Vec::with_capacity(selected.len());
        let (mut several_targets, mut freshest_chosen) = (0, 0);
        let mut several = Vec::new();
        let mut start = 0;
        while start < selected.len() {
            let device = selected[start].0;
            let mut end = start + 1;
            while end < selected.len() && selected[end].0 == device {
                end += 1;
            }
            if end - start == 1 {
                series.push(selected[start].1);
            } else {
                // Rare: the same device from several targets (an HA pair
                // of exporters); only the freshest counts.
                several_targets += 1;
                let run: Vec<u32> = selected[start..end].iter().map(|&(_, s)| s).collect();
                let chosen = freshness.keep_freshest(answers, answer, &run, &mut series);
                freshest_chosen += usize::from(chosen);
                several.push((device, run.len() as u32, chosen));
            }
            devices.push((device, series.len() as u32));
            start = end;
        }
        View { devices, series, unkeyed, several_targets, freshest_chosen, several }
    }

    /// The run of `devices[at]`.
    pub(super) fn run(&self, at: usize) -> &[u32] {
        let start = if at == 0 { 0 } else { self.devices[at - 1].1 as usize };
        &self.series[start..self.devices[at].1 as usize]
    }

    /// When a device had more than one series: how many, and whether only
    /// the freshest target's count.
    pub(super) fn several_of(&self, device: DeviceId) -> Option<(usize, bool)> {
        let at = self.several.binary_search_by_key(&device, |&(d, _, _)| d).ok()?;
        let (_, series, chosen) = self.several[at];
        Some((series as usize, chosen))
    }

    /// A device's run; empty when it has none.
    pub(super) fn run_of(&self, device: DeviceId) -> &[u32] {
        match self.devices.binary_search_by_key(&device, |&(d, _)| d) {
            Ok(at) => self.run(at),
            Err(_) => &[],
        }
    }
}

/// A guard read against one cycle's answers.
pub(super) struct GuardIndex {
    /// The tuples of `on` label values its series carry; `None` when its
    /// query failed.
    pub(super) tuples: Option<HashSet<Vec<StrId>, RandomState>>,
    /// When every `on` label is a device-key label, whether the guard holds
    /// depends on the device alone: here, by device index, for every device
    /// seen this cycle.
    pub(super) by_device: Option<Vec<bool>>,
}

impl GuardIndex {
    fn build(answers: &Answers, guard: &Guard) -> GuardIndex {
        let tuples: Option<HashSet<Vec<StrId>, RandomState>> =
            answers.by_query.get(guard.expr.trim()).map(|answer| {
                let names: Option<Vec<StrId>> = guard.on.iter().map(|l| answers.find(l)).collect();
                let Some(names) = names else { return HashSet::default() };
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
            (Some(tuples), Some(positions)) if positions.len() == 1 => {
                // The usual guard, on one label (`platform_id`): the values
                // it holds for, by string id, rather than a hash lookup per
                // device.
                let mut held = vec![false; answers.ends.len()];
                for tuple in tuples {
                    held[tuple[0] as usize] = true;
                }
                let holds = (0..answers.key_offsets.len()).map(|index| {
                    let key = answers.key_of(DeviceId::from_index(index));
                    key.is_some_and(|key| held[key[positions[0]] as usize])
                });
                Some(holds.collect())
            }
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

/// One cycle's [`FRESHNESS_QUERY`] answer, indexed for joining: the
/// freshness series grouped by their label names, each group's times by
/// their label values.
#[derive(Default)]
struct Freshness {
    groups: Vec<FreshnessGroup>,
}

/// The freshness series that carry the same label names.
struct FreshnessGroup {
    /// The label names (`__name__` aside), in the series' order.
    names: Vec<StrId>,
    /// The newest time for each tuple of those labels' values.
    times: HashMap<Vec<StrId>, f64, RandomState>,
}

impl Freshness {
    /// The index of this cycle's freshness answer; empty when the query
    /// failed or was not asked.
    fn new(answers: &Answers) -> Freshness {
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
                    freshness.groups.push(FreshnessGroup { names, times: HashMap::default() });
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
    /// `answer`, more than one) that count ([`freshness::keep_freshest`]).
    /// Returns whether some were left out.
    fn keep_freshest(
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
        freshness::keep_freshest(run, &times, kept)
    }
}

/// One cycle's [`Answers`] with what jobs derive from them, computed once
/// for every job that needs it: a [`View`] per query and device matchers, a
/// [`GuardIndex`] per guard, found by the numbers the [`Plan`] gave them.
pub(crate) struct Index<'a> {
    answers: &'a Answers,
    plan: &'a Plan,
    /// By view number: built the first time a job reads it.
    views: Vec<Option<Arc<View>>>,
    /// By guard number: built the first time a job needs it.
    guards: Vec<Option<GuardIndex>>,
    /// How fresh each target's data is, for devices several targets serve.
    freshness: Freshness,
}

impl<'a> Index<'a> {
    /// An index over `answers` for the jobs of `plan`.
    pub(crate) fn new(answers: &'a Answers, plan: &'a Plan) -> Index<'a> {
        let views = std::iter::repeat_with(|| None).take(plan.views.len()).collect();
        let guards = std::iter::repeat_with(|| None).take(plan.guards.len()).collect();
        Index { answers, plan, views, guards, freshness: Freshness::new(answers) }
    }

    /// The answers indexed.
    pub(super) fn answers(&self) -> &'a Answers {
        self.answers
    }

    /// The plan of the `index`th job.
    pub(super) fn job(&self, index: usize) -> &'a JobPlan {
        self.plan.job(index)
    }

    /// View `view`'s answer and the view; `None` when its query failed.
    pub(super) fn read(&mut self, view: usize) -> Option<(&'a Answer, Arc<View>)> {
        let answers = self.answers;
        let (query, matchers) = &self.plan.views[view];
        let answer = answers.answer(query)?;
        let freshness = &self.freshness;
        let built = self.views[view]
            .get_or_insert_with(|| Arc::new(View::build(answers, answer, matchers, freshness)))
            .clone();
        Some((answer, built))
    }

    /// The index of each of the guards numbered `guards`, built the first
    /// time a job needs it.
    pub(super) fn guards(&mut self, guards: &[usize]) -> Vec<&GuardIndex> {
        for &guard in guards {
            if self.guards[guard].is_none() {
                let built = GuardIndex::build(self.answers, &self.plan.guards[guard]);
                self.guards[guard] = Some(built);
            }
        }
        let built = guards.iter().map(|&guard| self.guards[guard].as_ref());
        built.map(|index| index.expect("built above")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
