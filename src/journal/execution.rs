//! What an execution is: one row per message jobctl decided to send, its
//! id, the statuses of its life, the backend attempts kept with it, and how
//! such a row reads back.
//!
//! Writing executions is `sends`'s business and querying them `history`'s;
//! both speak the vocabulary defined here, so it lives apart from either.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;

use super::db::{DbError, Row, ToValue, Value};

/// The row id of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecutionId(pub i64);

impl fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where an execution stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionStatus {
    /// Decided and journalled, not yet handed to a backend.
    Planned,
    /// Being handed to a backend; if jobctl dies now, it becomes uncertain.
    Sending,
    /// A backend accepted it.
    Sent,
    /// Every attempt so far failed definitely: it did not leave.
    Failed,
    /// It may or may not have left (a timeout after handing it over, or a
    /// crash while sending). Never re-sent automatically.
    Uncertain,
    /// Held back by a budget; it did not leave.
    Suppressed,
    /// Evaluated under `--dry-run`; it did not leave.
    DryRun,
}

impl ExecutionStatus {
    /// Every status, in the order of an execution's life.
    pub(crate) const ALL: [ExecutionStatus; 7] = [
        ExecutionStatus::Planned,
        ExecutionStatus::Sending,
        ExecutionStatus::Sent,
        ExecutionStatus::Failed,
        ExecutionStatus::Uncertain,
        ExecutionStatus::Suppressed,
        ExecutionStatus::DryRun,
    ];

    /// The word stored in the journal and accepted by `--outcome`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Planned => "planned",
            ExecutionStatus::Sending => "sending",
            ExecutionStatus::Sent => "sent",
            ExecutionStatus::Failed => "failed",
            ExecutionStatus::Uncertain => "uncertain",
            ExecutionStatus::Suppressed => "suppressed",
            ExecutionStatus::DryRun => "dry_run",
        }
    }

    /// Whether a message in this status may have left or is about to, which
    /// is what budgets count.
    pub(crate) fn may_have_left(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Planned
                | ExecutionStatus::Sending
                | ExecutionStatus::Sent
                | ExecutionStatus::Uncertain
        )
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not an [`ExecutionStatus`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outcome {0:?}; expected one of planned, sending, sent, failed, uncertain, suppressed, dry_run")]
pub struct UnknownStatus(pub String);

impl FromStr for ExecutionStatus {
    type Err = UnknownStatus;

    fn from_str(word: &str) -> Result<ExecutionStatus, UnknownStatus> {
        ExecutionStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == word)
            .ok_or_else(|| UnknownStatus(word.to_string()))
    }
}

impl ToValue for ExecutionStatus {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self.as_str())
    }
}

/// The status in column `index`.
pub(super) fn status_column(row: &Row<'_>, index: usize) -> Result<ExecutionStatus, DbError> {
    row.str(index)?.parse().map_err(|_| DbError::Column { index, wanted: "a status" })
}

/// What became of a rule's action: whether the device recovered after it
/// (`verify`), or that the job gave up on the device (`limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionResult {
    /// The condition was found false within `verify.within`.
    Recovered,
    /// The condition was still seen true when the window ended.
    NotRecovered,
    /// Nothing seen within the window decided it (unknown throughout).
    Unverified,
    /// The job's limit was reached: this action was not sent, and the job
    /// acts no more on the device in this episode.
    GaveUp,
}

impl ActionResult {
    /// Every result.
    pub(crate) const ALL: [ActionResult; 4] = [
        ActionResult::Recovered,
        ActionResult::NotRecovered,
        ActionResult::Unverified,
        ActionResult::GaveUp,
    ];

    /// The word stored in the journal and shown by `history`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionResult::Recovered => "recovered",
            ActionResult::NotRecovered => "not_recovered",
            ActionResult::Unverified => "unverified",
            ActionResult::GaveUp => "gave_up",
        }
    }
}

impl fmt::Display for ActionResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToValue for ActionResult {
    fn to_value(&self) -> Value<'_> {
        Value::Text(self.as_str())
    }
}

/// The result in column `index`, if any.
pub(super) fn result_column(row: &Row<'_>, index: usize) -> Result<Option<ActionResult>, DbError> {
    match row.opt_str(index)? {
        None => Ok(None),
        Some(word) => ActionResult::ALL
            .into_iter()
            .find(|result| result.as_str() == word)
            .map(Some)
            .ok_or(DbError::Column { index, wanted: "a result" }),
    }
}

/// The channel a message goes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// An SMS: `socket` is the socket's name (`-` for a person), `phone`
    /// the number.
    Sms,
    /// A webhook: `socket` is its name, `phone` its URL without
    /// credentials, the text the JSON payload.
    Webhook,
}

impl Channel {
    /// The journal's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Webhook => "webhook",
        }
    }

    /// The channel the journal's word names; an unknown word is an SMS.
    pub(crate) fn parse(word: &str) -> Channel {
        match word {
            "webhook" => Channel::Webhook,
            _ => Channel::Sms,
        }
    }
}

/// One backend's attempt at one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The backend's name.
    pub backend: String,
    /// [`ExecutionStatus::Sent`], [`ExecutionStatus::Failed`] or
    /// [`ExecutionStatus::Uncertain`].
    pub outcome: ExecutionStatus,
    /// The delivery reference or the reason for failure.
    pub detail: Option<String>,
    /// When the outcome was recorded.
    pub(crate) at: Timestamp,
}

/// An execution as the journal holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// Its id.
    pub id: ExecutionId,
    /// The job, or `None` for a manual send.
    pub job: Option<String>,
    /// The (first) device, or `None` for a manual send.
    pub device_key: Option<String>,
    /// Every device a rule's message was for, in key order (several when
    /// devices on one socket fell due together); empty for a manual send.
    pub devices: Vec<String>,
    /// The socket's name.
    pub socket: String,
    /// The number it went to.
    pub phone: String,
    /// The text.
    pub text: String,
    /// The episode, for a rule's send.
    pub episode: Option<u64>,
    /// The action's number within the episode, for a rule's send.
    pub attempt: Option<u32>,
    /// The value that made the condition true.
    pub trigger_value: Option<f64>,
    /// Where it stands.
    pub status: ExecutionStatus,
    /// The backend of the latest attempt.
    pub backend: Option<String>,
    /// Delivery reference, error, or why it was suppressed or recovered.
    pub detail: Option<String>,
    /// Whether a person asked for it.
    pub manual: bool,
    /// When it was journalled.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// Every backend attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// What became of the action, once known (`verify`, `limit`).
    pub result: Option<ActionResult>,
    /// When the result was recorded.
    pub result_at: Option<Timestamp>,
    /// For `recovered`: from the action to the first evaluation that found
    /// the condition false.
    pub recovered_after: Option<std::time::Duration>,
    /// For a message several devices shared: what became of the action on
    /// each, in the order of `devices` (the execution's own result is its
    /// first device's). Empty for a message for one device.
    pub device_results: Vec<DeviceResult>,
    /// The channel it went over.
    pub channel: Channel,
    /// For a message about a rule's event (an escalation, an action told
    /// to a webhook): the event (`not_recovered`, `gave_up`, `action`).
    pub event: Option<String>,
    /// The execution that event is about.
    pub about: Option<ExecutionId>,
}

/// What became of a shared message's action on one of its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceResult {
    /// The device.
    pub device_key: String,
    /// Its result, once known.
    pub result: Option<ActionResult>,
    /// For `recovered`: from the action to its recovery.
    pub recovered_after: Option<std::time::Duration>,
}

/// The columns [`execution_from_row`] reads, in its order.
pub(super) const EXECUTION_COLUMNS: &str =
    "id, job, device_key, socket, phone, text, episode, attempt, \
     trigger_value, status, backend, detail, manual, created_at, updated_at, \
     result, result_at, recovered_after_ms, channel, event, about";

/// An execution from a row of [`EXECUTION_COLUMNS`], its attempts and
/// devices not yet read.
pub(super) fn execution_from_row(row: &Row<'_>) -> Result<Execution, DbError> {
    Ok(Execution {
        id: ExecutionId(row.i64(0)?),
        job: row.opt_string(1)?,
        device_key: row.opt_string(2)?,
        devices: Vec::new(),
        socket: row.string(3)?,
        phone: row.string(4)?,
        text: row.string(5)?,
        episode: row.opt_u64(6)?,
        attempt: row.opt_u32(7)?,
        trigger_value: row.opt_f64(8)?,
        status: status_column(row, 9)?,
        backend: row.opt_string(10)?,
        detail: row.opt_string(11)?,
        manual: row.bool(12)?,
        created_at: timestamp_column(row, 13)?,
        updated_at: timestamp_column(row, 14)?,
        attempts: Vec::new(),
        result: result_column(row, 15)?,
        result_at: row.opt_i64(16)?.and_then(|ms| Timestamp::from_millisecond(ms).ok()),
        recovered_after: row
            .opt_i64(17)?
            .map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        device_results: Vec::new(),
        channel: Channel::parse(row.str(18)?),
        event: row.opt_string(19)?,
        about: row.opt_i64(20)?.map(ExecutionId),
    })
}

/// The instant stored as Unix milliseconds in column `index`.
pub(super) fn timestamp_column(row: &Row<'_>, index: usize) -> Result<Timestamp, DbError> {
    Timestamp::from_millisecond(row.i64(index)?)
        .map_err(|_| DbError::Column { index, wanted: "Unix milliseconds" })
}
