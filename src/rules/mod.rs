//! jobctl's rules: what to watch in Prometheus and which SMS to send when it
//! goes wrong.
//!
//! The pieces a rule is made of: which device a series belongs to
//! ([`device`]), what a condition queries and how answers become per-device
//! verdicts ([`condition`]), generated job names ([`naming`]), schedule
//! windows ([`schedule`]), text templates ([`template`]), and the validated
//! [`job::Job`] they make up.

pub mod condition;
pub mod device;
pub mod job;
pub mod naming;
pub mod schedule;
pub mod template;
