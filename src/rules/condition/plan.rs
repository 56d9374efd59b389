//! What a rule set's jobs read from each cycle's answers, worked out once
//! when the rules are set ([`Plan`]) rather than by every job every cycle.
//!
//! A thousand jobs over the same few dozen queries ask for the same
//! [`View`](super::answers::View)s and [`GuardIndex`](super::answers::GuardIndex)es:
//! each job's terms are given their query text and the number of the view
//! they share, and each guard the number of its index, so that a cycle
//! finds them by position instead of building query strings and hashing
//! them per job.

use std::collections::HashMap;

use super::term::{Condition, Guard};
use crate::rules::device::LabelMatchers;

/// Every job's terms and guards numbered by what they read, for
/// [`super::Index`].
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Per job, in the order the plan was made from.
    jobs: Vec<JobPlan>,
    /// Each distinct (query, device matchers): a view's number is its
    /// position here.
    pub(super) views: Vec<(String, LabelMatchers)>,
    /// Each distinct guard: an index's number is its position here.
    pub(super) guards: Vec<Guard>,
}

/// One job's part of a [`Plan`].
#[derive(Debug, Default)]
pub(crate) struct JobPlan {
    /// Per term, in the condition's order: its query and its view's number.
    pub(super) terms: Vec<(String, usize)>,
    /// Per guard, in the job's order: its index's number.
    pub(super) guards: Vec<usize>,
}

impl Plan {
    /// The plan of `jobs` (conditions, device matchers and guards), in
    /// that order.
    pub(crate) fn new<'j>(
        jobs: impl IntoIterator<Item = (&'j Condition, &'j LabelMatchers, &'j [Guard])>,
    ) -> Plan {
        let mut plan = Plan::default();
        let mut views: HashMap<(String, LabelMatchers), usize> = HashMap::new();
        let mut guards: HashMap<Guard, usize> = HashMap::new();
        for (condition, devices, job_guards) in jobs {
            let terms = condition.terms().iter().map(|term| {
                let query = term.query(devices);
                let next = views.len();
                let view = *views.entry((query.clone(), devices.clone())).or_insert_with(|| {
                    plan.views.push((query.clone(), devices.clone()));
                    next
                });
                (query, view)
            });
            let terms = terms.collect();
            let job_guards = job_guards.iter().map(|guard| {
                let next = guards.len();
                *guards.entry(guard.clone()).or_insert_with(|| {
                    plan.guards.push(guard.clone());
                    next
                })
            });
            let job_guards = job_guards.collect();
            plan.jobs.push(JobPlan { terms, guards: job_guards });
        }
        plan
    }

    /// The `index`th job's part.
    pub(crate) fn job(&self, index: usize) -> &JobPlan {
        &self.jobs[index]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::rules::condition::{Op, Term};

    fn online(op: Op, value: f64) -> Condition {
        Condition::Single(Term::Compare { metric: "online".into(), op, value })
    }

    #[test]
    fn jobs_reading_the_same_query_through_the_same_matchers_share_a_view() {
        let platform = |id: &str| {
            LabelMatchers::new(BTreeMap::from([("platform_id".to_string(), id.to_string())]))
        };
        let (twelve, thirteen) = (platform("12"), platform("13"));
        let guard = Guard { expr: " platform_up == 1 ".into(), on: vec!["platform_id".into()] };
        let guards = [guard.clone()];
        let both = Condition::All(vec![
            Term::Compare { metric: "online".into(), op: Op::Eq, value: 0.0 },
            Term::Expr("up == 0".into()),
        ]);
        let (zero, one) = (online(Op::Eq, 0.0), online(Op::Ne, 1.0));
        let plan = Plan::new([
            (&zero, &twelve, &guards[..]),
            (&one, &twelve, &[][..]),
            (&zero, &thirteen, &guards[..]),
            (&both, &twelve, &guards[..]),
        ]);

        let terms = |job: usize| plan.job(job).terms.clone();
        assert_eq!(terms(0), [("online{platform_id=\"12\"}".to_string(), 0)]);
        assert_eq!(terms(1), terms(0), "another comparison on the same selection");
        assert_eq!(terms(2), [("online{platform_id=\"13\"}".to_string(), 1)]);
        assert_eq!(
            terms(3),
            [("online{platform_id=\"12\"}".to_string(), 0), ("up == 0".into(), 2)]
        );
        assert_eq!(plan.views.len(), 3);
        assert_eq!(plan.views[2], ("up == 0".to_string(), twelve));
        let guards = |job: usize| plan.job(job).guards.clone();
        assert_eq!(
            (guards(0), guards(1), guards(2), guards(3)),
            (vec![0], vec![], vec![0], vec![0])
        );
        assert_eq!(plan.guards, [guard]);
    }
}
