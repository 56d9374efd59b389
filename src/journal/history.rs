//! Reading executions back: the queries behind `jobctl history` and
//! `jobctl status`, and the one execution a caller asks for by id.
//!
//! They never write, so they work on a journal opened read-only next to a
//! running daemon.

use jiff::Timestamp;

use super::db::args;
use super::execution::{
    execution_from_row, result_column, status_column, timestamp_column, Attempt, DeviceResult,
    Execution, ExecutionId, ExecutionStatus, EXECUTION_COLUMNS,
};
use super::{db_error, Journal, JournalError};

/// Which executions [`Journal::history`] returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryFilter {
    /// Only this job.
    pub job: Option<String>,
    /// Only executions for this device key (alone or with others of its
    /// socket).
    pub device_key: Option<String>,
    /// Only executions journalled at or after this instant.
    pub since: Option<Timestamp>,
    /// Only this status.
    pub status: Option<ExecutionStatus>,
    /// At most this many.
    pub limit: Option<u32>,
}

impl Journal {
    /// Executions matching `filter`, newest first, each with its attempts.
    pub fn history(&self, filter: &HistoryFilter) -> Result<Vec<Execution>, JournalError> {
        let doing = "reading the history";
        // Each parameter's comparison comes before its `IS NULL`: PostgreSQL
        // takes a parameter's type from its first use.
        let limit = filter.limit.map_or(i64::MAX, i64::from);
        let mut executions = self
            .db
            .query_map(
                &format!(
                    "SELECT {EXECUTION_COLUMNS} FROM executions \
                     WHERE (job = ?1 OR ?1 IS NULL) AND (id IN \
                     (SELECT execution_id FROM execution_devices WHERE device_key = ?2) \
                     OR ?2 IS NULL) \
                     AND (created_at >= ?3 OR ?3 IS NULL) AND (status = ?4 OR ?4 IS NULL) \
                     ORDER BY created_at DESC, id DESC LIMIT ?5"
                ),
                args![
                    filter.job,
                    filter.device_key,
                    filter.since.map(Timestamp::as_millisecond),
                    filter.status,
                    limit
                ],
                execution_from_row,
            )
            .map_err(db_error(&self.path, doing))?;
        for execution in &mut executions {
            self.complete(execution)?;
        }
        Ok(executions)
    }

    /// One execution, with its attempts.
    pub fn execution(&self, id: ExecutionId) -> Result<Execution, JournalError> {
        let mut execution = self
            .db
            .query_opt(
                &format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1"),
                args![id.0],
                execution_from_row,
            )
            .map_err(db_error(&self.path, "reading an execution"))?
            .ok_or_else(|| JournalError::UnknownExecution { path: self.path.clone(), id })?;
        self.complete(&mut execution)?;
        Ok(execution)
    }

    /// When each (job, socket) last got a command from the job (a rule's
    /// message to a socket that was sent, or tried; not one a budget held
    /// back, which did not leave, nor a dry run's), for the engine's
    /// one-command-per-cooldown rule.
    pub fn last_socket_commands(&self) -> Result<Vec<(String, String, Timestamp)>, JournalError> {
        let doing = "reading the last command to each socket";
        self.db
            .query_map(
                "SELECT job, socket, max(created_at) FROM executions \
                 WHERE job IS NOT NULL AND event IS NULL AND socket != '-' \
                 AND status NOT IN ('dry_run', 'suppressed') \
                 GROUP BY job, socket",
                args![],
                |row| Ok((row.string(0)?, row.string(1)?, timestamp_column(row, 2)?)),
            )
            .map_err(db_error(&self.path, doing))
    }

    /// The devices a rule's execution was for, in key order, with what
    /// became of the action on each.
    fn devices(&self, id: ExecutionId) -> Result<Vec<DeviceResult>, JournalError> {
        let doing = "reading an execution's devices";
        self.db
            .query_map(
                "SELECT device_key, result, recovered_after_ms FROM execution_devices \
                 WHERE execution_id = ?1 ORDER BY device_key",
                args![id.0],
                |row| {
                    Ok(DeviceResult {
                        device_key: row.string(0)?,
                        result: result_column(row, 1)?,
                        recovered_after: row.opt_i64(2)?.map(|ms| {
                            std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
                        }),
                    })
                },
            )
            .map_err(db_error(&self.path, doing))
    }

    /// Fills an execution's devices (and, when it was for several, each
    /// one's result) and attempts.
    fn complete(&self, execution: &mut Execution) -> Result<(), JournalError> {
        execution.attempts = self.attempts(execution.id)?;
        let devices = self.devices(execution.id)?;
        execution.devices = devices.iter().map(|d| d.device_key.clone()).collect();
        if devices.len() > 1 {
            execution.device_results = devices;
        }
        Ok(())
    }

    fn attempts(&self, id: ExecutionId) -> Result<Vec<Attempt>, JournalError> {
        let doing = "reading attempts";
        self.db
            .query_map(
                "SELECT backend, outcome, detail, at FROM attempts \
                 WHERE execution_id = ?1 ORDER BY id",
                args![id.0],
                |row| {
                    Ok(Attempt {
                        backend: row.string(0)?,
                        outcome: status_column(row, 1)?,
                        detail: row.opt_string(2)?,
                        at: timestamp_column(row, 3)?,
                    })
                },
            )
            .map_err(db_error(&self.path, doing))
    }
}
