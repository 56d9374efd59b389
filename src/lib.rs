//! signage-watchdog keeps fleets of digital-signage players alive.
//!
//! Two daemons share this library:
//!
//! - `addreality-exporter` ([`exporter`]) polls the AddReality cloud API
//!   ([`addreality`]) for every configured account, caches device state in
//!   SQLite, and serves it as Prometheus metrics.
//! - `jobctl` evaluates job rules ([`rules`]) against Prometheus and sends SMS
//!   commands ([`rules::socket`], [`sms`]) to the GSM sockets that power the
//!   players, journalling every message and each job's state ([`journal`]).
//!
//! The pieces both daemons need live here once: the small HTTP server
//! ([`http`]), logging ([`telemetry`]), secrets ([`secret`]), the time
//! source tests can drive ([`clock`]), the way configuration errors point
//! at `file:line:column` ([`config_file`]) and the exit codes both binaries
//! end with ([`exit`]).
#![forbid(unsafe_code)]

pub mod addreality;
pub mod clock;
pub mod config_file;
pub mod engine;
pub mod error;
pub mod exit;
pub mod exporter;
pub mod http;
pub mod jobctl;
pub mod journal;
pub mod manual;
pub mod notify;
pub mod prometheus_api;
pub mod rules;
pub mod secret;
pub mod shutdown;
pub mod sms;
pub mod telemetry;
