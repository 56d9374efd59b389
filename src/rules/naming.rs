//! Names for jobs that have none.
//!
//! A job's name is its identity: the journal keys executions and state by
//! it, `jobctl test-rule` takes it, and a reload keeps the state of every
//! job whose name is unchanged. A generated name must therefore depend only
//! on what the job *watches*, never on where it sits in the file, so moving
//! a job, adding another before it, or changing its action keeps its state.
//!
//! The rule: `Monitoring <devices> - <condition>`, where `<devices>` is the
//! job's `devices` matchers as `label=value` sorted by label and joined by
//! `, ` (or `all devices`), and `<condition>` is the condition as written
//! (`metric op value`, or the expression with white space collapsed; terms
//! of `all`/`any` joined by ` and `/` or `). Two jobs that would get the same
//! name are refused at check time; give one of them a `name`.

use super::condition::Condition;
use super::device::LabelMatchers;

/// The generated name of a job, e.g.
/// `Monitoring platform_id=12 - addreality_device_online == 0`.
pub(crate) fn job_name(devices: &LabelMatchers, condition: &Condition) -> String {
    format!("Monitoring {devices} - {condition}")
}

#[cfg(test)]
mod tests {
    use super::super::condition::{Op, Term};
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn names_depend_on_devices_and_condition_only() {
        let mut m = BTreeMap::new();
        m.insert("platform_id".to_string(), "12".to_string());
        m.insert("device_id".to_string(), "30785".to_string());
        let online =
            Term::Compare { metric: "addreality_device_online".into(), op: Op::Eq, value: 0.0 };
        assert_eq!(
            job_name(&LabelMatchers::new(m), &Condition::Single(online.clone())),
            "Monitoring device_id=30785, platform_id=12 - addreality_device_online == 0"
        );
        let any =
            Condition::Any(vec![online, Term::Expr("rate(errors_total[5m])\n  > 0.5".into())]);
        assert_eq!(
            job_name(&LabelMatchers::default(), &any),
            "Monitoring all devices - addreality_device_online == 0 or rate(errors_total[5m]) > 0.5"
        );
    }
}
