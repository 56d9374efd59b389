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
//! label. When a device has several series in one answer (two exporters
//! serve its account), only those of the target that polled the account
//! most recently count (`freshness.rs`); when nothing tells them apart, a
//! comparison is true only when all of them satisfy it.
//!
//! The condition's parts ([`Condition`], [`Term`], [`Guard`], [`Verdict`])
//! are in `term.rs`; one cycle's answers, stored and indexed once for every
//! job, in `answers.rs`; which of a device's series count when several
//! targets serve it, in `freshness.rs`; a job's verdicts per device in
//! `evaluation.rs`;
//! the queries a scrape source answers without PromQL in `scrape_query.rs`.

mod answers;
mod evaluation;
mod freshness;
mod plan;
mod scrape_query;
mod term;

/// One series of an instant-query answer, as the Prometheus client returns it.
pub use crate::prometheus_api::Sample;
pub(crate) use answers::{Answers, Index};
pub(crate) use evaluation::{evaluate, JobEvaluation, Quick, UnknownReason};
pub use evaluation::{DeviceVerdict, Evaluation};
pub(crate) use freshness::{with_freshness, FRESHNESS_QUERY};
pub(crate) use plan::Plan;
pub(crate) use scrape_query::ScrapeQuery;
pub use term::{Condition, Guard, Op, Term, Verdict};
