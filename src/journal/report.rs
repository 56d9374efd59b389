//! What the jobs did over a period, counted from the journal for `jobctl
//! report`: per (job, device), the episodes, the actions, what became of
//! them, the messages and the holds.
//!
//! Three grouped queries over the period's rows (executions, held actions,
//! times to recovery), each one pass using the `created_at` / `at` order:
//! a report over a hundred thousand executions reads them once, not once
//! per device. Dry-run rows are not what happened and are left out.

use std::collections::BTreeMap;

use jiff::Timestamp;
use rusqlite::params;

use super::{sqlite_error, Journal, JournalError};

/// What one job did to one device over the period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceActivity {
    /// The job's name.
    pub job: String,
    /// The device, as the journal keys it.
    pub device_key: String,
    /// Firing episodes with an action, a refusal or a hold in the period.
    pub episodes: u64,
    /// Actions the job decided (sent, failed, uncertain, suppressed by a
    /// budget, in flight); refusals by the limit are not actions.
    pub actions: u64,
    /// Of those, the socket commands that may have left (sent, uncertain,
    /// in flight): the power cycles.
    pub cycles: u64,
    /// Results: the device recovered within `verify.within`.
    pub recovered: u64,
    /// Results: still bad when the window ended.
    pub not_recovered: u64,
    /// Results: nothing seen in the window decided it.
    pub unverified: u64,
    /// Actions refused by the job's `limit`: the episode gave up.
    pub gave_up: u64,
    /// The time to recovery of each recovered action, in milliseconds,
    /// ascending.
    pub recovery_ms: Vec<i64>,
    /// Messages a backend accepted.
    pub sent: u64,
    /// Messages that definitely did not leave.
    pub failed: u64,
    /// Messages that may or may not have left.
    pub uncertain: u64,
    /// Messages a budget held back.
    pub suppressed: u64,
    /// Actions a silence held back (once per episode and silence).
    pub silenced: u64,
    /// Actions held back for another reason (`held_actions.reason`).
    pub held: u64,
}

impl Journal {
    /// What each job did to each device at or after `since`, ordered by
    /// job, then device.
    pub fn activity_since(&self, since: Timestamp) -> Result<Vec<DeviceActivity>, JournalError> {
        let since = since.as_millisecond();
        let fail = |doing: &'static str| sqlite_error(&self.path, doing);
        let mut by_pair: BTreeMap<(String, String), DeviceActivity> = BTreeMap::new();

        let doing = "counting the executions of the period";
        let mut statement = self
            .connection
            .prepare(
                "SELECT job, device_key, \
                   sum(result IS NOT 'gave_up'), \
                   sum(result IS NOT 'gave_up' AND socket != '-' \
                       AND status IN ('planned', 'sending', 'sent', 'uncertain')), \
                   sum(result = 'recovered'), sum(result = 'not_recovered'), \
                   sum(result = 'unverified'), sum(result = 'gave_up'), \
                   sum(status = 'sent'), sum(status = 'failed'), sum(status = 'uncertain'), \
                   sum(status = 'suppressed' AND result IS NOT 'gave_up') \
                 FROM executions \
                 WHERE created_at >= ?1 AND job IS NOT NULL AND device_key IS NOT NULL \
                   AND status != 'dry_run' \
                 GROUP BY job, device_key",
            )
            .map_err(fail(doing))?;
        let mut rows = statement.query(params![since]).map_err(fail(doing))?;
        while let Some(row) = rows.next().map_err(fail(doing))? {
            let count = |at: usize| -> rusqlite::Result<u64> {
                Ok(u64::try_from(row.get::<_, i64>(at)?).unwrap_or(0))
            };
            let read = || -> rusqlite::Result<DeviceActivity> {
                Ok(DeviceActivity {
                    job: row.get(0)?,
                    device_key: row.get(1)?,
                    actions: count(2)?,
                    cycles: count(3)?,
                    recovered: count(4)?,
                    not_recovered: count(5)?,
                    unverified: count(6)?,
                    gave_up: count(7)?,
                    sent: count(8)?,
                    failed: count(9)?,
                    uncertain: count(10)?,
                    suppressed: count(11)?,
                    ..DeviceActivity::default()
                })
            };
            let activity = read().map_err(fail(doing))?;
            by_pair.insert((activity.job.clone(), activity.device_key.clone()), activity);
        }
        drop(rows);
        drop(statement);

        let doing = "counting the held actions of the period";
        let mut statement = self
            .connection
            .prepare(
                "SELECT job, device_key, sum(reason = 'silenced'), sum(reason != 'silenced') \
                 FROM held_actions WHERE at >= ?1 GROUP BY job, device_key",
            )
            .map_err(fail(doing))?;
        let mut rows = statement.query(params![since]).map_err(fail(doing))?;
        while let Some(row) = rows.next().map_err(fail(doing))? {
            let read =
                || Ok::<_, rusqlite::Error>((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?));
            let (job, device, silenced, held): (String, String, i64, i64) =
                read().map_err(fail(doing))?;
            let activity = entry(&mut by_pair, job, device);
            activity.silenced = u64::try_from(silenced).unwrap_or(0);
            activity.held = u64::try_from(held).unwrap_or(0);
        }
        drop(rows);
        drop(statement);

        let doing = "counting the episodes of the period";
        let mut statement = self
            .connection
            .prepare(
                "SELECT job, device_key, count(*) FROM ( \
                   SELECT job, device_key, episode FROM executions \
                   WHERE created_at >= ?1 AND job IS NOT NULL AND device_key IS NOT NULL \
                     AND episode IS NOT NULL AND status != 'dry_run' \
                   UNION \
                   SELECT job, device_key, episode FROM held_actions WHERE at >= ?1) \
                 GROUP BY job, device_key",
            )
            .map_err(fail(doing))?;
        let mut rows = statement.query(params![since]).map_err(fail(doing))?;
        while let Some(row) = rows.next().map_err(fail(doing))? {
            let read = || Ok::<_, rusqlite::Error>((row.get(0)?, row.get(1)?, row.get(2)?));
            let (job, device, episodes): (String, String, i64) = read().map_err(fail(doing))?;
            entry(&mut by_pair, job, device).episodes = u64::try_from(episodes).unwrap_or(0);
        }
        drop(rows);
        drop(statement);

        let doing = "reading the times to recovery of the period";
        let mut statement = self
            .connection
            .prepare(
                "SELECT job, device_key, recovered_after_ms FROM executions \
                 WHERE created_at >= ?1 AND result = 'recovered' \
                   AND recovered_after_ms IS NOT NULL AND job IS NOT NULL \
                   AND device_key IS NOT NULL AND status != 'dry_run' \
                 ORDER BY job, device_key, recovered_after_ms",
            )
            .map_err(fail(doing))?;
        let mut rows = statement.query(params![since]).map_err(fail(doing))?;
        while let Some(row) = rows.next().map_err(fail(doing))? {
            let read = || Ok::<_, rusqlite::Error>((row.get(0)?, row.get(1)?, row.get(2)?));
            let (job, device, after): (String, String, i64) = read().map_err(fail(doing))?;
            entry(&mut by_pair, job, device).recovery_ms.push(after);
        }
        Ok(by_pair.into_values().collect())
    }
}

/// The activity of (job, device) in `by_pair`, added empty if missing.
fn entry(
    by_pair: &mut BTreeMap<(String, String), DeviceActivity>,
    job: String,
    device_key: String,
) -> &mut DeviceActivity {
    by_pair.entry((job.clone(), device_key.clone())).or_insert_with(|| DeviceActivity {
        job,
        device_key,
        ..DeviceActivity::default()
    })
}
