//! What became of a rule's action: whether the device recovered after it
//! (`verify`), written on the action's own row, and the rows of actions a
//! job's `limit` refused (`gave_up`), with the counts that limit is
//! checked against.
//!
//! Kept apart from `sends` because it is about the device, not the message:
//! a result is decided cycles after the message's own outcome, by the rules'
//! state machine, and is written once. [`Journal::record_result`] only fills
//! a row whose result is still empty, so a cycle replayed after a restart
//! never records one twice and tells its caller so.

use std::time::Duration;

use jiff::Timestamp;

use super::db::args;
use super::execution::{ActionResult, ExecutionId, ExecutionStatus};
use super::sends::{Origin, PlannedSend};
use super::states::upsert_states;
use super::{db_error, Journal, JournalError};

/// Which of a rule's actions a result belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRef {
    /// The job.
    pub job: String,
    /// The device, as its key's text form.
    pub device_key: String,
    /// The episode.
    pub episode: u64,
    /// The action's number within the episode.
    pub attempt: u32,
}

impl Journal {
    /// Records `result` on the row of the action `action` (its newest row
    /// that was meant to leave: not a suppressed or dry-run one), unless that
    /// row has a result already. Returns the row's id when this wrote it,
    /// `None` when there is no such row or it had its result.
    pub fn record_result(
        &mut self,
        action: &ActionRef,
        result: ActionResult,
        recovered_after: Option<Duration>,
    ) -> Result<Option<ExecutionId>, JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let doing = "recording an action's result";
        let tx = self.begin_write(doing)?;
        let id: Option<i64> = tx
            .query_opt(
                "SELECT e.id FROM execution_devices d JOIN executions e ON e.id = d.execution_id \
                 WHERE e.job = ?1 AND d.device_key = ?2 AND d.episode = ?3 AND d.attempt = ?4 \
                 AND e.status NOT IN (?5, ?6) AND e.event IS NULL ORDER BY e.id DESC LIMIT 1",
                args![
                    action.job,
                    action.device_key,
                    action.episode,
                    action.attempt,
                    ExecutionStatus::Suppressed,
                    ExecutionStatus::DryRun
                ],
                |row| row.i64(0),
            )
            .map_err(db_error(path, doing))?;
        let Some(id) = id else { return Ok(None) };
        let after = recovered_after.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        // The device's own result; the execution's columns take its first
        // device's, so that a message for one device reads as before.
        let changed = tx
            .execute(
                "UPDATE execution_devices SET result = ?1, result_at = ?2, \
                 recovered_after_ms = ?3 WHERE execution_id = ?4 AND device_key = ?5 \
                 AND result IS NULL",
                args![result, now, after, id, action.device_key],
            )
            .map_err(db_error(path, doing))?;
        tx.execute(
            "UPDATE executions SET result = ?1, result_at = ?2, recovered_after_ms = ?3 \
             WHERE id = ?4 AND device_key = ?5 AND result IS NULL",
            args![result, now, after, id, action.device_key],
        )
        .map_err(db_error(path, doing))?;
        tx.commit().map_err(db_error(path, "committing an action's result"))?;
        Ok((changed == 1).then_some(ExecutionId(id)))
    }

    /// Journals an action that a job's `limit` refused: a row that did not
    /// leave (`suppressed`), whose result is `gave_up` and whose detail says
    /// which limit, saved with the job's state after giving up (for a rule's
    /// action) in the same transaction, so a restart never gives up twice.
    pub fn record_gave_up(
        &mut self,
        planned: &PlannedSend,
        reason: &str,
    ) -> Result<ExecutionId, JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let doing = "journalling a refused action";
        let tx = self.begin_write(doing)?;
        let (job, device_key, episode, attempt, trigger_value) = match &planned.origin {
            Origin::Rule {
                job, device_key, episode, attempt, trigger_value, state_after, ..
            } => {
                upsert_states(&tx, path, [(job.as_str(), device_key.as_str(), state_after)], now)?;
                (Some(job), Some(device_key), Some(*episode), Some(*attempt), *trigger_value)
            }
            Origin::Manual | Origin::Notice { .. } => (None, None, None, None, None),
        };
        let id = tx
            .query_one(
                "INSERT INTO executions (job, device_key, socket, phone, text, episode, attempt, \
             trigger_value, status, detail, manual, created_at, updated_at, result, result_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?12) \
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
                    ExecutionStatus::Suppressed,
                    reason,
                    matches!(planned.origin, Origin::Manual),
                    now,
                    ActionResult::GaveUp,
                ],
                |row| row.i64(0),
            )
            .map_err(db_error(path, doing))?;
        let id = ExecutionId(id);
        if let (Some(device_key), Some(episode), Some(attempt)) = (device_key, episode, attempt) {
            tx.execute(
                "INSERT INTO execution_devices (execution_id, device_key, episode, attempt, \
                 trigger_value, result, result_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                args![id.0, device_key, episode, attempt, trigger_value, ActionResult::GaveUp, now],
            )
            .map_err(db_error(path, doing))?;
        }
        tx.commit().map_err(db_error(path, "committing a refused action"))?;
        Ok(id)
    }

    /// How many actions of `job` journalled at or after `since` may have
    /// left or are about to (as budgets count them): on `device_key`, and to
    /// `socket` (none for an action that goes to a person). What a job's
    /// `limit` is checked against.
    pub fn count_actions_since(
        &self,
        job: &str,
        device_key: &str,
        socket: Option<&str>,
        since: Timestamp,
    ) -> Result<(u32, u32), JournalError> {
        let counted: Vec<String> = ExecutionStatus::ALL
            .iter()
            .filter(|status| status.may_have_left())
            .map(|status| format!("'{}'", status.as_str()))
            .collect();
        let (device, socket): (i64, i64) = self
            .db
            .query_one(
                &format!(
                    "SELECT CAST(coalesce(sum(CASE WHEN EXISTS (SELECT 1 FROM execution_devices d \
                     WHERE d.execution_id = e.id AND d.device_key = ?3) THEN 1 ELSE 0 END), 0) \
                     AS BIGINT), \
                     CAST(coalesce(sum(CASE WHEN socket = ?4 THEN 1 ELSE 0 END), 0) AS BIGINT) \
                     FROM executions e WHERE job = ?1 AND created_at >= ?2 AND status IN ({}) \
                     AND (socket = ?4 OR e.id IN \
                     (SELECT execution_id FROM execution_devices WHERE device_key = ?3)) \
                     AND event IS NULL",
                    counted.join(", ")
                ),
                args![job, since.as_millisecond(), device_key, socket],
                |row| Ok((row.i64(0)?, row.i64(1)?)),
            )
            .map_err(db_error(&self.path, "counting a job's actions"))?;
        let count = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
        Ok((count(device), count(socket)))
    }
}

#[cfg(test)]
mod tests {
    use crate::journal::test_backend::{on_both_backends, TestBackend};

    on_both_backends!(
        a_result_is_written_once_on_the_actions_row,
        a_refused_action_is_a_gave_up_row_that_counts_against_nothing
    );

    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::journal::{Channel, EncodedState, HistoryFilter, JournalState, SendResult};

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Firing;

    impl JournalState for Firing {
        fn phase_name(&self) -> &'static str {
            "firing"
        }
    }

    fn action(device: &str, socket: &str, episode: u64, attempt: u32) -> PlannedSend {
        PlannedSend {
            channel: Channel::Sms,
            origin: Origin::Rule {
                job: "offline".into(),
                device_key: device.into(),
                episode,
                attempt,
                trigger_value: Some(0.0),
                state_after: EncodedState::new(&Firing),
                also_for: Vec::new(),
            },
            socket: socket.into(),
            phone: "+79991234567".into(),
            text: "#12#0#1#1#".into(),
        }
    }

    fn reference(device: &str, episode: u64, attempt: u32) -> ActionRef {
        ActionRef { job: "offline".into(), device_key: device.into(), episode, attempt }
    }

    fn journal(b: &TestBackend) -> (Journal, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at_unix_seconds(1_750_057_200));
        (b.open().with_clock(clock.clone()), clock)
    }

    fn a_result_is_written_once_on_the_actions_row(b: &TestBackend) {
        let (mut journal, _) = journal(b);
        let id = journal.begin_send(&action("d=1", "lobby", 1, 1)).unwrap();
        let sent = SendResult::Sent { backend: "http".into(), reference: None };
        journal.finish_send(id, &sent).unwrap();
        let four = Some(Duration::from_secs(240));
        let first = journal.record_result(&reference("d=1", 1, 1), ActionResult::Recovered, four);
        assert_eq!(first.unwrap(), Some(id));
        let again =
            journal.record_result(&reference("d=1", 1, 1), ActionResult::NotRecovered, None);
        assert_eq!(again.unwrap(), None, "a result is never overwritten");
        let execution = journal.execution(id).unwrap();
        assert_eq!(execution.result, Some(ActionResult::Recovered));
        assert_eq!(execution.recovered_after, four);
        assert_eq!(
            journal.record_result(&reference("d=2", 1, 1), ActionResult::Recovered, None).unwrap(),
            None
        );
    }

    fn a_refused_action_is_a_gave_up_row_that_counts_against_nothing(b: &TestBackend) {
        let (mut journal, clock) = journal(b);
        journal.begin_send(&action("d=1", "lobby", 1, 1)).unwrap();
        journal.begin_send(&action("d=2", "lobby", 1, 1)).unwrap();
        clock.advance(Duration::from_secs(3600));
        journal.begin_send(&action("d=1", "lobby", 2, 1)).unwrap();
        let id = journal.record_gave_up(&action("d=1", "lobby", 3, 1), "limit reached").unwrap();

        let row = journal.execution(id).unwrap();
        assert_eq!(
            (row.status, row.result),
            (ExecutionStatus::Suppressed, Some(ActionResult::GaveUp))
        );
        assert_eq!(row.detail.as_deref(), Some("limit reached"));
        let start = Timestamp::from_second(1_750_057_200).unwrap();
        assert_eq!(
            journal.count_actions_since("offline", "d=1", Some("lobby"), start).unwrap(),
            (2, 3)
        );
        let later = start + jiff::SignedDuration::from_secs(60);
        assert_eq!(journal.count_actions_since("offline", "d=1", None, later).unwrap(), (1, 0));
        assert_eq!(
            journal.count_actions_since("other", "d=1", Some("lobby"), start).unwrap(),
            (0, 0)
        );
        assert_eq!(journal.history(&HistoryFilter::default()).unwrap().len(), 4);
    }
}
