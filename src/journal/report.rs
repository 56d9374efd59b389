//! What the jobs did over a period, counted from the journal for `jobctl
//! report`: per (job, device), the episodes, the actions, what became of
//! them, the messages and the holds.
//!
//! One pass over the period's executions and one over its held actions,
//! summed as they are read: a report over a hundred thousand executions
//! reads each row once, not once per device, and sorts nothing in SQLite.
//! Dry-run rows are not what happened and are left out.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::Timestamp;

use super::db::args;
use super::{db_error, Journal, JournalError};

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
        let fail = |doing: &'static str| db_error(&self.path, doing);
        let mut by_pair: BTreeMap<(String, String), DeviceActivity> = BTreeMap::new();
        // (job, device) → episodes seen, for the count of distinct ones.
        let mut episodes: HashMap<(String, String), HashSet<i64>> = HashMap::new();

        // One pass over the period's executions in row order, one row per
        // device a message was for (a socket's devices due together share
        // one, each with its own result), escalations and notices left out
        // (they are no action of the job), summed here:
        // a GROUP BY in SQLite sorts the rows first (a temporary B-tree of
        // the whole period), which took a second for 100,000 of them.
        let doing = "counting the executions of the period";
        let mut last: Option<(String, String)> = None;
        let sql = "SELECT e.job, d.device_key, d.episode, e.status, d.result, e.socket, \
                        d.recovered_after_ms \
                 FROM executions e JOIN execution_devices d ON d.execution_id = e.id \
                 WHERE e.created_at >= ?1 AND e.job IS NOT NULL AND e.event IS NULL \
                   AND e.status != 'dry_run'";
        let each = |row: &super::db::Row<'_>| {
            let (job, device, episode, status, result, socket, after) = (
                row.str(0)?,
                row.str(1)?,
                row.opt_i64(2)?,
                row.str(3)?,
                row.opt_str(4)?,
                row.str(5)?,
                row.opt_i64(6)?,
            );
            // Rows of one pair tend to come together: reuse the key.
            let key = match last.take() {
                Some(key) if key.0 == job && key.1 == device => key,
                _ => (job.to_string(), device.to_string()),
            };
            let activity = match by_pair.get_mut(&key) {
                Some(activity) => activity,
                None => entry(&mut by_pair, key.0.clone(), key.1.clone()),
            };
            let gave_up = result == Some("gave_up");
            if !gave_up {
                activity.actions += 1;
                let may_have_left = matches!(status, "planned" | "sending" | "sent" | "uncertain");
                activity.cycles += u64::from(may_have_left && socket != "-");
            }
            match result {
                Some("recovered") => {
                    activity.recovered += 1;
                    activity.recovery_ms.extend(after);
                }
                Some("not_recovered") => activity.not_recovered += 1,
                Some("unverified") => activity.unverified += 1,
                Some("gave_up") => activity.gave_up += 1,
                _ => {}
            }
            match status {
                "sent" => activity.sent += 1,
                "failed" => activity.failed += 1,
                "uncertain" => activity.uncertain += 1,
                "suppressed" if !gave_up => activity.suppressed += 1,
                _ => {}
            }
            if let Some(episode) = episode {
                match episodes.get_mut(&key) {
                    Some(seen) => {
                        seen.insert(episode);
                    }
                    None => {
                        episodes.insert(key.clone(), HashSet::from([episode]));
                    }
                }
            }
            last = Some(key);
            Ok(())
        };
        self.db.query_each(sql, args![since], each).map_err(fail(doing))?;

        let doing = "counting the held actions of the period";
        self.db
            .query_each(
                "SELECT job, device_key, episode, reason FROM held_actions WHERE at >= ?1",
                args![since],
                |row| {
                    let (job, device, episode) = (row.string(0)?, row.string(1)?, row.i64(2)?);
                    episodes.entry((job.clone(), device.clone())).or_default().insert(episode);
                    let activity = entry(&mut by_pair, job, device);
                    if row.str(3)? == "silenced" {
                        activity.silenced += 1;
                    } else {
                        activity.held += 1;
                    }
                    Ok(())
                },
            )
            .map_err(fail(doing))?;
        for (key, seen) in episodes {
            if let Some(activity) = by_pair.get_mut(&key) {
                activity.episodes = seen.len() as u64;
            }
        }
        let mut activity: Vec<DeviceActivity> = by_pair.into_values().collect();
        for a in &mut activity {
            a.recovery_ms.sort_unstable();
        }
        Ok(activity)
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
