//! Writing sends: the life of a message from "decided" to "its outcome is
//! journalled", and what a restart makes of one caught in between.
//!
//! A message is journalled `planned` when it is decided ([`Journal::plan_send`])
//! and marked `sending` right before a backend starts the I/O that may make
//! it leave ([`Journal::mark_sending`]; [`Journal::begin_send`] does both at
//! once); each backend attempt then records its outcome
//! ([`Journal::finish_send`]), and a failover or retry marks it `sending`
//! again first. At start-up, [`Journal::recover_in_flight`] settles what a
//! killed process left: it never resends what had begun to leave, and
//! [`Journal::planned_sends`] finds what had not, to be sent. Budgets count, from the same rows, what may have left
//! ([`Journal::count_sent_since`]).

use std::path::Path;

use jiff::Timestamp;

use super::db::{args, Db};
use super::execution::{status_column, Channel, Execution, ExecutionId, ExecutionStatus};
use super::states::{upsert_states, EncodedState};
use super::{db_error, Journal, JournalError};

/// What recovery writes on a message that may have left when jobctl died.
const UNCERTAIN_AFTER_CRASH: &str =
    "jobctl stopped while this message was being sent; it may have left, so it is not sent again";

/// Why a message was decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A job fired on a device.
    Rule {
        /// The job's name.
        job: String,
        /// The device, as its key labels (`platform_id=12,device_id=30785`).
        device_key: String,
        /// The episode, as the rules number them on this (job, device).
        episode: u64,
        /// The action's number within the episode.
        attempt: u32,
        /// The value that made the condition true.
        trigger_value: Option<f64>,
        /// The job's state after the step that decided this message, saved in
        /// the same transaction as the execution row.
        state_after: EncodedState,
        /// The job's other devices this one message is for (devices on the
        /// same socket whose action fell due together), each with its own
        /// episode and state, saved in the same transaction.
        also_for: Vec<DeviceAction>,
    },
    /// `jobctl send` or `jobctl test-rule --send`.
    Manual,
    /// A message about a rule's event: an escalation (`not_recovered`,
    /// `gave_up`…) or an action told to a webhook (`action`). It is no
    /// action: limits and results never count it, and no state is saved
    /// with it.
    Notice {
        /// The job's name.
        job: String,
        /// The device, as its key labels, when the event is about one.
        device_key: Option<String>,
        /// The event, as the payload names it (`not_recovered`).
        event: String,
        /// The execution the event is about, when there is one.
        about: Option<ExecutionId>,
        /// The episode, when the event is about one.
        episode: Option<u64>,
        /// The action's number within it, when the event is about one.
        attempt: Option<u32>,
    },
}

/// One more device a rule's message is for ([`Origin::Rule::also_for`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceAction {
    /// The device, as its key labels.
    pub device_key: String,
    /// The episode on this (job, device).
    pub episode: u64,
    /// The action's number within that episode.
    pub attempt: u32,
    /// The value that made the condition true on this device.
    pub trigger_value: Option<f64>,
    /// The job's state on this device after the step, saved with the row.
    pub state_after: EncodedState,
}

/// A message about to be journalled.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSend {
    /// Why it is sent.
    pub origin: Origin,
    /// The channel it goes over.
    pub channel: Channel,
    /// The socket's name.
    pub socket: String,
    /// The socket's phone number (E.164).
    pub phone: String,
    /// The exact text that will leave.
    pub text: String,
}

/// What one backend made of one attempt to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// The backend accepted the message.
    Sent {
        /// The backend's name.
        backend: String,
        /// Its reference for the message (`+CMGS` number, gateway id), if any.
        reference: Option<String>,
    },
    /// The message definitely did not leave.
    Failed {
        /// The backend's name.
        backend: String,
        /// Why, in words.
        reason: String,
    },
    /// The message may or may not have left.
    Uncertain {
        /// The backend's name.
        backend: String,
        /// Why, in words.
        reason: String,
    },
}

impl SendResult {
    fn parts(&self) -> (ExecutionStatus, &str, Option<&str>) {
        match self {
            SendResult::Sent { backend, reference } => {
                (ExecutionStatus::Sent, backend, reference.as_deref())
            }
            SendResult::Failed { backend, reason } => {
                (ExecutionStatus::Failed, backend, Some(reason))
            }
            SendResult::Uncertain { backend, reason } => {
                (ExecutionStatus::Uncertain, backend, Some(reason))
            }
        }
    }
}

/// Why a message was journalled without being sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suppression {
    /// A budget is spent, e.g. "socket lobby: 10 messages in the last hour".
    OverBudget {
        /// Which budget, in words.
        reason: String,
    },
    /// jobctl runs with `--dry-run`.
    DryRun,
}

impl Journal {
    /// Journals a message that is about to be handed to a backend (status
    /// `sending`), committed before this returns. Call [`Journal::finish_send`]
    /// with the outcome.
    pub fn begin_send(&mut self, planned: &PlannedSend) -> Result<ExecutionId, JournalError> {
        self.insert_execution(planned, ExecutionStatus::Sending, None)
    }

    /// Journals a message decided now but sent later (status `planned`), for
    /// a send queue; call [`Journal::mark_sending`] just before it leaves.
    pub fn plan_send(&mut self, planned: &PlannedSend) -> Result<ExecutionId, JournalError> {
        self.insert_execution(planned, ExecutionStatus::Planned, None)
    }

    /// Marks an execution as leaving now: a planned one, or a failed or
    /// uncertain one that the caller decided to try again (a retry, or the
    /// next backend of a failover). Refuses one that was sent or never meant
    /// to leave.
    pub fn mark_sending(&mut self, id: ExecutionId) -> Result<(), JournalError> {
        let now = self.clock.now();
        let path = &self.path;
        let tx = self.begin_write("marking an execution as sending")?;
        let status = current_status(&tx, path, id)?;
        if !matches!(
            status,
            ExecutionStatus::Planned | ExecutionStatus::Failed | ExecutionStatus::Uncertain
        ) {
            return Err(JournalError::WrongStatus {
                path: path.clone(),
                id,
                status,
                wanted: "sent again",
            });
        }
        tx.execute(
            "UPDATE executions SET status = ?1, updated_at = ?2 WHERE id = ?3",
            args![ExecutionStatus::Sending, now.as_millisecond(), id.0],
        )
        .map_err(db_error(path, "marking an execution as sending"))?;
        tx.commit().map_err(db_error(path, "committing the sending mark"))
    }

    /// Records the outcome of one backend's attempt at an execution that is
    /// `sending`, and sets the execution's status to that outcome. A
    /// definite failure may also be recorded on one that is `planned` (or
    /// whose last attempt failed or was uncertain): its backend failed
    /// before the I/O started, so it never marked it `sending`.
    pub fn finish_send(
        &mut self,
        id: ExecutionId,
        outcome: &SendResult,
    ) -> Result<(), JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let (status, backend, detail) = outcome.parts();
        let tx = self.begin_write("recording a send outcome")?;
        let current = current_status(&tx, path, id)?;
        // A backend that failed before its I/O started never marked the
        // message `sending`: its definite failure is recorded all the same.
        let failed_before_leaving = status == ExecutionStatus::Failed
            && matches!(
                current,
                ExecutionStatus::Planned | ExecutionStatus::Failed | ExecutionStatus::Uncertain
            );
        if current != ExecutionStatus::Sending && !failed_before_leaving {
            return Err(JournalError::WrongStatus {
                path: path.clone(),
                id,
                status: current,
                wanted: "given an outcome (it is not being sent)",
            });
        }
        tx.execute(
            "INSERT INTO attempts (execution_id, backend, outcome, detail, at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            args![id.0, backend, status, detail, now],
        )
        .map_err(db_error(path, "recording an attempt"))?;
        tx.execute(
            "UPDATE executions SET status = ?1, backend = ?2, detail = ?3, updated_at = ?4 \
             WHERE id = ?5",
            args![status, backend, detail, now, id.0],
        )
        .map_err(db_error(path, "recording a send outcome"))?;
        tx.commit().map_err(db_error(path, "committing a send outcome"))
    }

    /// Journals a message that will not be sent, with the reason: over
    /// budget (`suppressed`) or `--dry-run` (`dry_run`, a row for `history`
    /// only, which neither budgets nor the state machine look at). Either
    /// way the job's state is left alone: a rule's action held by a budget
    /// stays due (the engine saves the state that says so with the cycle's
    /// states), and a dry run's state is not the live run's.
    pub fn record_suppressed(
        &mut self,
        planned: &PlannedSend,
        why: &Suppression,
    ) -> Result<ExecutionId, JournalError> {
        match why {
            Suppression::OverBudget { reason } => {
                self.insert_execution(planned, ExecutionStatus::Suppressed, Some(reason))
            }
            Suppression::DryRun => {
                self.insert_execution(planned, ExecutionStatus::DryRun, Some("dry run: not sent"))
            }
        }
    }

    fn insert_execution(
        &mut self,
        planned: &PlannedSend,
        status: ExecutionStatus,
        detail: Option<&str>,
    ) -> Result<ExecutionId, JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let tx = self.begin_write("journalling a message")?;
        let mut devices = Vec::new();
        let (mut event, mut about) = (None, None);
        let (job, device_key, episode, attempt, trigger_value) = match &planned.origin {
            Origin::Rule {
                job,
                device_key,
                episode,
                attempt,
                trigger_value,
                state_after,
                also_for,
            } => {
                devices.push((device_key, *episode, *attempt, *trigger_value));
                devices.extend(
                    also_for.iter().map(|d| (&d.device_key, d.episode, d.attempt, d.trigger_value)),
                );
                // Only a message that may leave decides the state: one held
                // by a budget leaves the action due, and a dry run's state is
                // not the live run's.
                if matches!(status, ExecutionStatus::Planned | ExecutionStatus::Sending) {
                    let rows = std::iter::once((job.as_str(), device_key.as_str(), state_after))
                        .chain(also_for.iter().map(|device| {
                            (job.as_str(), device.device_key.as_str(), &device.state_after)
                        }));
                    upsert_states(&tx, path, rows, now)?;
                }
                (Some(job), Some(device_key), Some(*episode), Some(*attempt), *trigger_value)
            }
            Origin::Notice { job, device_key, event: what, about: of, episode, attempt } => {
                (event, about) = (Some(what.as_str()), of.map(|id| id.0));
                (Some(job), device_key.as_ref(), *episode, *attempt, None)
            }
            Origin::Manual => (None, None, None, None, None),
        };
        let id = tx
            .query_one(
                "INSERT INTO executions (job, device_key, socket, phone, text, episode, attempt, \
             trigger_value, status, detail, manual, created_at, updated_at, channel, event, about) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?14, ?15) \
             RETURNING id",
                args![
                    job,
                    device_key,
                    planned.socket,
                    planned.phone,
                    planned.text,
                    episode,
                    attempt,
                    trigger_value,
                    status,
                    detail,
                    matches!(planned.origin, Origin::Manual),
                    now,
                    planned.channel.as_str(),
                    event,
                    about,
                ],
                |row| row.i64(0),
            )
            .map_err(db_error(path, "journalling a message"))?;
        let id = ExecutionId(id);
        for (device_key, episode, attempt, trigger_value) in devices {
            tx.execute(
                "INSERT INTO execution_devices \
                 (execution_id, device_key, episode, attempt, trigger_value) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                args![id.0, device_key, episode, attempt, trigger_value],
            )
            .map_err(db_error(path, "journalling a message's devices"))?;
        }
        tx.commit().map_err(db_error(path, "committing a journalled message"))?;
        Ok(id)
    }

    /// The execution that already journalled this rule's action as held by
    /// a budget: a `suppressed` row of the same job for each of its devices,
    /// with the same episode and action number (the latest such row for its
    /// first device). An action a budget holds stays due cycle after cycle,
    /// and the journal says so once, not once a cycle. `None` for a manual
    /// message, and when any of its devices has no such row yet.
    pub fn earlier_suppression(
        &self,
        planned: &PlannedSend,
    ) -> Result<Option<ExecutionId>, JournalError> {
        let Origin::Rule { job, device_key, episode, attempt, also_for, .. } = &planned.origin
        else {
            return Ok(None);
        };
        let doing = "looking for an earlier suppression";
        let mut first = None;
        let devices = std::iter::once((device_key, *episode, *attempt))
            .chain(also_for.iter().map(|d| (&d.device_key, d.episode, d.attempt)));
        for (device, episode, attempt) in devices {
            let found: Option<i64> = self
                .db
                .query_opt(
                    "SELECT e.id FROM execution_devices d \
                     JOIN executions e ON e.id = d.execution_id \
                     WHERE d.device_key = ?1 AND d.episode = ?2 AND d.attempt = ?3 \
                     AND e.job = ?4 AND e.status = 'suppressed' ORDER BY e.id DESC LIMIT 1",
                    args![device, episode, attempt, job],
                    |row| row.i64(0),
                )
                .map_err(db_error(&self.path, doing))?;
            match found {
                None => return Ok(None),
                Some(id) => {
                    first.get_or_insert(ExecutionId(id));
                }
            }
        }
        Ok(first)
    }

    /// At start-up, settles what a previous run left unfinished: `sending`
    /// becomes `uncertain` (its I/O had started, so it may have left; never
    /// re-sent automatically). Returns those executions, updated, so the
    /// daemon can log each one. `planned` ones are left as they are: they
    /// certainly did not leave, and [`Journal::planned_sends`] finds them to
    /// be sent.
    pub fn recover_in_flight(&mut self) -> Result<Vec<Execution>, JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let tx = self.begin_write("recovering unfinished sends")?;
        let ids = ids_with_status(&tx, path, ExecutionStatus::Sending)?;
        tx.execute(
            "UPDATE executions SET status = ?1, detail = ?2, updated_at = ?3 WHERE status = ?4",
            args![ExecutionStatus::Uncertain, UNCERTAIN_AFTER_CRASH, now, ExecutionStatus::Sending],
        )
        .map_err(db_error(path, "recovering unfinished sends"))?;
        tx.commit().map_err(db_error(path, "committing the recovery"))?;
        ids.into_iter().map(|id| self.execution(ExecutionId(id))).collect()
    }

    /// The messages journalled `planned` and not yet handed to a backend,
    /// oldest first: at start-up, those a previous run decided but had not
    /// begun to send (waiting for a modem's lock, say), to be sent now.
    pub fn planned_sends(&self) -> Result<Vec<Execution>, JournalError> {
        let ids = ids_with_status(&self.db, &self.path, ExecutionStatus::Planned)?;
        ids.into_iter().map(|id| self.execution(ExecutionId(id))).collect()
    }

    /// How many messages journalled at or after `since` may have left or are
    /// about to (planned, sending, sent, uncertain), for budgets: SMS to one
    /// socket, or all SMS when `socket` is `None`. Failed, suppressed and
    /// dry-run messages do not count, nor do webhooks.
    pub fn count_sent_since(
        &self,
        socket: Option<&str>,
        since: Timestamp,
    ) -> Result<u32, JournalError> {
        let counted: Vec<String> = ExecutionStatus::ALL
            .iter()
            .filter(|status| status.may_have_left())
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        // `socket = ?2` comes first: PostgreSQL takes the parameter's type
        // from its first use.
        let count: i64 = self
            .db
            .query_one(
                &format!(
                    "SELECT count(*) FROM executions WHERE created_at >= ?1 \
                     AND status IN ({}) AND (socket = ?2 OR ?2 IS NULL) AND channel = 'sms'",
                    counted.join(", ")
                ),
                args![since.as_millisecond(), socket],
                |row| row.i64(0),
            )
            .map_err(db_error(&self.path, "counting sent messages"))?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

fn ids_with_status(
    db: &Db,
    path: &Path,
    status: ExecutionStatus,
) -> Result<Vec<i64>, JournalError> {
    db.query_map("SELECT id FROM executions WHERE status = ?1 ORDER BY id", args![status], |row| {
        row.i64(0)
    })
    .map_err(db_error(path, "finding unfinished sends"))
}

fn current_status(db: &Db, path: &Path, id: ExecutionId) -> Result<ExecutionStatus, JournalError> {
    db.query_opt("SELECT status FROM executions WHERE id = ?1", args![id.0], |row| {
        status_column(row, 0)
    })
    .map_err(db_error(path, "reading an execution's status"))?
    .ok_or_else(|| JournalError::UnknownExecution { path: path.to_path_buf(), id })
}
