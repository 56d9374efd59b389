//! Mass outages of jobs, and the socket commands they held back.
//!
//! A mass outage (many of a job's devices bad at once: the site's uplink or
//! the AddReality platform is down) is escalated to people once. The row
//! written when it starts is what makes that "once" survive a restart: the
//! daemon reads the outages still open at start-up and carries them on
//! without escalating again, and a unique index allows one open outage per
//! job. The row is ended (`ended_at`) by the first cycle that finds the
//! job's share of bad devices below its threshold, and keeps the latest
//! counts while it lasts, for `jobctl status`.
//!
//! Each action an outage held back is recorded in `held_actions` (reason
//! `mass_outage`, no silence), once per (job, device, episode) by the
//! table's unique index, as silences' holds are.

use jiff::Timestamp;

use super::db::{args, DbError, Row};
use super::execution::timestamp_column;
use super::{db_error, Journal, JournalError};

/// A job's mass outage as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MassOutageRecord {
    /// The job.
    pub job: String,
    /// When it began.
    pub since: Timestamp,
    /// Bad devices at the latest cycle that changed the counts.
    pub bad: u64,
    /// Known devices (verdict true or false) then.
    pub known: u64,
    /// When it ended; `None` while it lasts.
    pub ended_at: Option<Timestamp>,
}

/// An action a mass outage held back, as the daemon records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutageHeldAction {
    /// The job.
    pub job: String,
    /// The device's text form.
    pub device_key: String,
    /// The firing episode the action belongs to.
    pub episode: u64,
    /// The action's number in the episode (1 for the first).
    pub attempt: u32,
}

/// What happened to a job's outage in a cycle, to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutageChange {
    /// It began: a new open row.
    Began {
        /// The job.
        job: String,
        /// When.
        since: Timestamp,
        /// Bad devices.
        bad: u64,
        /// Known devices.
        known: u64,
    },
    /// Its counts changed.
    Counts {
        /// The job.
        job: String,
        /// Bad devices.
        bad: u64,
        /// Known devices.
        known: u64,
    },
    /// It ended.
    Ended {
        /// The job.
        job: String,
        /// When.
        at: Timestamp,
        /// Bad devices at the end.
        bad: u64,
        /// Known devices then.
        known: u64,
    },
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Journal {
    /// Writes a cycle's outage changes and the actions outages held, in one
    /// transaction. A beginning is ignored when the job already has an open
    /// outage (so a replayed cycle opens none twice), and a held action
    /// already recorded for its (job, device, episode) is skipped. Returns,
    /// for each change, whether it changed a row.
    pub fn record_outages(
        &mut self,
        changes: &[OutageChange],
        held: &[OutageHeldAction],
    ) -> Result<Vec<bool>, JournalError> {
        let now = self.clock.now().as_millisecond();
        let path = &self.path;
        let doing = "recording mass outages";
        let tx = self.begin_write(doing)?;
        let mut applied = Vec::with_capacity(changes.len());
        for change in changes {
            let rows = match change {
                OutageChange::Began { job, since, bad, known } => tx.execute(
                    "INSERT INTO mass_outages (job, since, bad, known) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                    args![job, since.as_millisecond(), count(*bad), count(*known)],
                ),
                OutageChange::Counts { job, bad, known } => tx.execute(
                    "UPDATE mass_outages SET bad = ?2, known = ?3 \
                     WHERE job = ?1 AND ended_at IS NULL",
                    args![job, count(*bad), count(*known)],
                ),
                OutageChange::Ended { job, at, bad, known } => tx.execute(
                    "UPDATE mass_outages SET ended_at = ?2, bad = ?3, known = ?4 \
                     WHERE job = ?1 AND ended_at IS NULL",
                    args![job, at.as_millisecond(), count(*bad), count(*known)],
                ),
            };
            applied.push(rows.map_err(db_error(path, doing))? > 0);
        }
        for action in held {
            tx.execute(
                "INSERT INTO held_actions \
                 (job, device_key, episode, attempt, reason, silence_id, at) \
                 VALUES (?1, ?2, ?3, ?4, 'mass_outage', NULL, ?5) ON CONFLICT DO NOTHING",
                args![action.job, action.device_key, count(action.episode), action.attempt, now],
            )
            .map_err(db_error(path, "recording a held action"))?;
        }
        tx.commit().map_err(db_error(path, "committing mass outages"))?;
        Ok(applied)
    }

    /// The outages that have not ended, by job: what a daemon carries on at
    /// start-up and `jobctl status` shows.
    pub fn open_outages(&self) -> Result<Vec<MassOutageRecord>, JournalError> {
        self.outages("WHERE ended_at IS NULL ORDER BY job")
    }

    /// Every outage of `job`, oldest first.
    pub fn outages_of(&self, job: &str) -> Result<Vec<MassOutageRecord>, JournalError> {
        self.db
            .query_map(
                "SELECT job, since, bad, known, ended_at FROM mass_outages \
                 WHERE job = ?1 ORDER BY id",
                args![job],
                outage_from_row,
            )
            .map_err(db_error(&self.path, "reading mass outages"))
    }

    fn outages(&self, filter: &str) -> Result<Vec<MassOutageRecord>, JournalError> {
        self.db
            .query_map(
                &format!("SELECT job, since, bad, known, ended_at FROM mass_outages {filter}"),
                args![],
                outage_from_row,
            )
            .map_err(db_error(&self.path, "reading mass outages"))
    }

    /// The actions outages held back, as (job, device, episode, action
    /// number), by job and device.
    pub fn outage_holds(&self) -> Result<Vec<OutageHeldAction>, JournalError> {
        self.db
            .query_map(
                "SELECT job, device_key, episode, attempt FROM held_actions \
                 WHERE reason = 'mass_outage' ORDER BY job, device_key, episode, attempt",
                args![],
                |row| {
                    Ok(OutageHeldAction {
                        job: row.string(0)?,
                        device_key: row.string(1)?,
                        episode: row.u64(2)?,
                        attempt: row.u32(3)?,
                    })
                },
            )
            .map_err(db_error(&self.path, "reading held actions"))
    }
}

fn outage_from_row(row: &Row<'_>) -> Result<MassOutageRecord, DbError> {
    let ended_at = match row.opt_i64(4)? {
        None => None,
        Some(_) => Some(timestamp_column(row, 4)?),
    };
    Ok(MassOutageRecord {
        job: row.string(0)?,
        since: timestamp_column(row, 1)?,
        bad: row.u64(2)?,
        known: row.u64(3)?,
        ended_at,
    })
}

#[cfg(test)]
mod tests {
    use crate::journal::test_backend::{on_both_backends, TestBackend};

    on_both_backends!(one_open_outage_per_job_and_each_hold_once);

    use super::*;

    fn t(minute: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + minute * 60).unwrap()
    }

    fn one_open_outage_per_job_and_each_hold_once(b: &TestBackend) {
        let mut journal = b.open();
        let began = |minute| OutageChange::Began {
            job: "offline".into(),
            since: t(minute),
            bad: 30,
            known: 40,
        };
        let held = OutageHeldAction {
            job: "offline".into(),
            device_key: "d=1".into(),
            episode: 1,
            attempt: 1,
        };
        assert_eq!(
            journal.record_outages(&[began(0)], &[held.clone(), held.clone()]).unwrap(),
            [true]
        );
        assert_eq!(
            journal.record_outages(&[began(1)], std::slice::from_ref(&held)).unwrap(),
            [false],
            "open"
        );
        let counts = OutageChange::Counts { job: "offline".into(), bad: 31, known: 40 };
        journal.record_outages(&[counts], &[]).unwrap();
        let open = journal.open_outages().unwrap();
        assert_eq!(
            open,
            [MassOutageRecord {
                job: "offline".into(),
                since: t(0),
                bad: 31,
                known: 40,
                ended_at: None
            }]
        );
        assert_eq!(journal.outage_holds().unwrap(), [held]);

        let ended = OutageChange::Ended { job: "offline".into(), at: t(9), bad: 2, known: 40 };
        journal.record_outages(&[ended], &[]).unwrap();
        assert!(journal.open_outages().unwrap().is_empty());
        assert_eq!(journal.record_outages(&[began(20)], &[]).unwrap(), [true], "a new outage");
        let all = journal.outages_of("offline").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].ended_at, all[0].bad), (Some(t(9)), 2));
        assert_eq!((all[1].since, all[1].ended_at), (t(20), None));
    }
}
