//! Reading executions back: the queries behind `jobctl history` and
//! `jobctl status`, and the one execution a caller asks for by id.
//!
//! They never write, so they work on a journal opened read-only next to a
//! running daemon.

use jiff::Timestamp;
use rusqlite::{params, OptionalExtension};

use super::execution::{
    execution_from_row, timestamp_column, Attempt, DeviceResult, Execution, ExecutionId,
    ExecutionStatus, EXECUTION_COLUMNS,
};
use super::{sqlite_error, Journal, JournalError};

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
        let mut statement = self
            .connection
            .prepare(&format!(
                "SELECT {EXECUTION_COLUMNS} FROM executions \
                 WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR id IN \
                 (SELECT execution_id FROM execution_devices WHERE device_key = ?2)) \
                 AND (?3 IS NULL OR created_at >= ?3) AND (?4 IS NULL OR status = ?4) \
                 ORDER BY created_at DESC, id DESC LIMIT ?5"
            ))
            .map_err(sqlite_error(&self.path, doing))?;
        let limit = filter.limit.map_or(-1, i64::from);
        let rows = statement
            .query_map(
                params![
                    filter.job,
                    filter.device_key,
                    filter.since.map(Timestamp::as_millisecond),
                    filter.status,
                    limit
                ],
                execution_from_row,
            )
            .map_err(sqlite_error(&self.path, doing))?;
        let mut executions: Vec<Execution> =
            rows.collect::<Result<_, _>>().map_err(sqlite_error(&self.path, doing))?;
        for execution in &mut executions {
            self.complete(execution)?;
        }
        Ok(executions)
    }

    /// One execution, with its attempts.
    pub fn execution(&self, id: ExecutionId) -> Result<Execution, JournalError> {
        let mut execution = self
            .connection
            .query_row(
                &format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?1"),
                [id.0],
                execution_from_row,
            )
            .optional()
            .map_err(sqlite_error(&self.path, "reading an execution"))?
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
        let mut statement = self
            .connection
            .prepare(
                "SELECT job, socket, max(created_at) FROM executions \
                 WHERE job IS NOT NULL AND event IS NULL AND socket != '-' \
                 AND status NOT IN ('dry_run', 'suppressed') \
                 GROUP BY job, socket",
            )
            .map_err(sqlite_error(&self.path, doing))?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, timestamp_column(row, 2)?)))
            .map_err(sqlite_error(&self.path, doing))?;
        rows.collect::<Result<_, _>>().map_err(sqlite_error(&self.path, doing))
    }

    /// The devices a rule's execution was for, in key order, with what
    /// became of the action on each.
    fn devices(&self, id: ExecutionId) -> Result<Vec<DeviceResult>, JournalError> {
        let doing = "reading an execution's devices";
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT device_key, result, recovered_after_ms FROM execution_devices \
                 WHERE execution_id = ?1 ORDER BY device_key",
            )
            .map_err(sqlite_error(&self.path, doing))?;
        let rows = statement
            .query_map([id.0], |row| {
                Ok(DeviceResult {
                    device_key: row.get(0)?,
                    result: row.get(1)?,
                    recovered_after: row
                        .get::<_, Option<i64>>(2)?
                        .map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
                })
            })
            .map_err(sqlite_error(&self.path, doing))?;
        rows.collect::<Result<_, _>>().map_err(sqlite_error(&self.path, doing))
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
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT backend, outcome, detail, at FROM attempts \
                 WHERE execution_id = ?1 ORDER BY id",
            )
            .map_err(sqlite_error(&self.path, doing))?;
        let rows = statement
            .query_map([id.0], |row| {
                Ok(Attempt {
                    backend: row.get(0)?,
                    outcome: row.get(1)?,
                    detail: row.get(2)?,
                    at: timestamp_column(row, 3)?,
                })
            })
            .map_err(sqlite_error(&self.path, doing))?;
        rows.collect::<Result<_, _>>().map_err(sqlite_error(&self.path, doing))
    }
}
