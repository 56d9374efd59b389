//! Job states: where each (job, device) stands in its job's life, kept
//! across restarts so that a half-run `for` timer or an episode under way is
//! not started afresh.
//!
//! The rules define what a state holds; the journal sits below them and must
//! not know. It keeps anything that implements [`JournalState`]: serde, for
//! the JSON in the `state` column, and a phase name, for the `phase` column
//! that people filter on in `sqlite3`. [`Journal::load_states`] decodes the
//! JSON into the type its caller names, and a rule's message carries its
//! state already encoded ([`EncodedState`]), to be saved in the same
//! transaction as the message's row.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::db::{args, Db, ToValue};
use super::{db_error, Journal, JournalError};

/// A job state the journal can keep. The rules implement it for theirs.
pub trait JournalState: Serialize + DeserializeOwned {
    /// The name of the state's phase (inactive, pending, firing or
    /// resolved), stored next to the JSON.
    fn phase_name(&self) -> &'static str;
}

/// A job state encoded as the journal stores it, so that a message can carry
/// the state that decided it to the transaction that journals both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedState {
    /// [`JournalState::phase_name`], for the `phase` column.
    phase: &'static str,
    /// The state as JSON, for the `state` column.
    json: String,
}

impl EncodedState {
    /// Encodes `state`.
    ///
    /// # Panics
    ///
    /// If `state` fails to encode as JSON. A job state holds only numbers,
    /// timestamps and enum tags, so a failure would be a bug worth a loud
    /// panic.
    pub fn new(state: &impl JournalState) -> EncodedState {
        let json = serde_json::to_string(state).expect("a job state always encodes as JSON");
        EncodedState { phase: state.phase_name(), json }
    }
}

impl Journal {
    /// Saves job states, all in one transaction (one per evaluation cycle).
    /// Rows of other (job, device) pairs are left as they are.
    pub fn save_states<'a, S: JournalState + 'a>(
        &mut self,
        states: impl IntoIterator<Item = (&'a str, &'a str, &'a S)>,
    ) -> Result<(), JournalError> {
        let now = self.clock.now().as_millisecond();
        let tx = self.begin_write("saving job states")?;
        // Encoded as they are written, a statement's rows at a time: the
        // first cycle saves every state, and they are never all in memory.
        let encoded = states
            .into_iter()
            .map(|(job, device_key, state)| (job, device_key, EncodedState::new(state)));
        upsert_states(&tx, &self.path, encoded, now)?;
        tx.commit().map_err(db_error(&self.path, "committing job states"))
    }

    /// Deletes the saved states of jobs not in `jobs` (removed from the
    /// rules), so that a job added back later under the same name starts
    /// afresh instead of inheriting a half-run `for` timer. Returns how many
    /// rows went. Executions are history and are kept.
    pub fn forget_states_except(&mut self, jobs: &[&str]) -> Result<usize, JournalError> {
        let path = &self.path;
        let doing = "forgetting states of removed jobs";
        let tx = self.begin_write(doing)?;
        let saved: Vec<String> = tx
            .query_map("SELECT DISTINCT job FROM job_state", args![], |row| row.string(0))
            .map_err(db_error(path, "listing saved job states"))?;
        let mut removed = 0;
        for job in saved.iter().filter(|job| !jobs.contains(&job.as_str())) {
            removed += tx
                .execute("DELETE FROM job_state WHERE job = ?1", args![job])
                .map_err(db_error(path, doing))?;
        }
        tx.commit().map_err(db_error(path, "committing forgotten states"))?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    /// Every saved job state, by (job, device key), decoded as `S`.
    pub fn load_states<S: JournalState>(
        &self,
    ) -> Result<HashMap<(String, String), S>, JournalError> {
        let doing = "reading job states";
        let rows: Vec<(String, String, String)> = self
            .db
            .query_map("SELECT job, device_key, state FROM job_state", args![], |row| {
                Ok((row.string(0)?, row.string(1)?, row.string(2)?))
            })
            .map_err(db_error(&self.path, doing))?;
        let mut states = HashMap::with_capacity(rows.len());
        for (job, device_key, json) in rows {
            match serde_json::from_str(&json) {
                Ok(state) => {
                    states.insert((job, device_key), state);
                }
                Err(source) => {
                    let path = self.path.clone();
                    return Err(JournalError::UnreadableState { path, job, device_key, source });
                }
            }
        }
        Ok(states)
    }
}

/// Rows per statement of the largest [`upsert_states`] statement (a power
/// of two). Smaller rests go in halves (256, 128, … 1), so a handful of
/// statement texts, each prepared once, serve any count: thousands of
/// states cost a few round trips to PostgreSQL, not one each.
const UPSERT_ROWS: usize = 512;

/// Inserts or overwrites (job, device) states, a few hundred rows per
/// statement, read from `rows` as they are written. A pair given twice
/// keeps its last state.
pub(super) fn upsert_states<'r, E: Borrow<EncodedState>>(
    db: &Db,
    path: &Path,
    rows: impl IntoIterator<Item = (&'r str, &'r str, E)>,
    now_millis: i64,
) -> Result<(), JournalError> {
    let mut rows = rows.into_iter().peekable();
    let mut chunk: Vec<(&str, &str, E)> = Vec::with_capacity(UPSERT_ROWS);
    while rows.peek().is_some() {
        chunk.clear();
        chunk.extend(rows.by_ref().take(UPSERT_ROWS));
        // One statement may not touch a row twice (PostgreSQL refuses it):
        // within a chunk the last state of a pair is kept; chunks run in
        // order, so across them the last one wins as well.
        let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(chunk.len());
        for (index, (job, device, _)) in chunk.iter().enumerate() {
            last.insert((job, device), index);
        }
        let unique: Vec<&(&str, &str, E)> = chunk
            .iter()
            .enumerate()
            .filter(|(index, (job, device, _))| last[&(*job, *device)] == *index)
            .map(|(_, row)| row)
            .collect();
        let mut rest = &unique[..];
        while !rest.is_empty() {
            // The largest power of two that fits: a handful of statement
            // texts serve every count.
            let size = 1 << rest.len().ilog2();
            let (part, after) = rest.split_at(size);
            let mut params: Vec<&dyn ToValue> = Vec::with_capacity(size * 5);
            for (job, device, state) in part {
                let state = state.borrow();
                params.extend([
                    job as &dyn ToValue,
                    device,
                    &state.phase,
                    &state.json,
                    &now_millis,
                ]);
            }
            db.execute(upsert_sql(size), &params).map_err(db_error(path, "saving a job state"))?;
            rest = after;
        }
    }
    Ok(())
}

/// `INSERT … VALUES (…), (…) ON CONFLICT … DO UPDATE` for `rows` rows (a
/// power of two up to [`UPSERT_ROWS`]), built once per size.
fn upsert_sql(rows: usize) -> &'static str {
    static TEXTS: [OnceLock<String>; UPSERT_ROWS.ilog2() as usize + 1] =
        [const { OnceLock::new() }; UPSERT_ROWS.ilog2() as usize + 1];
    TEXTS[rows.ilog2() as usize].get_or_init(|| upsert_text(rows))
}

fn upsert_text(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let n = row * 5;
            format!("(?{}, ?{}, ?{}, ?{}, ?{})", n + 1, n + 2, n + 3, n + 4, n + 5)
        })
        .collect();
    format!(
        "INSERT INTO job_state (job, device_key, phase, state, updated_at) VALUES {} \
         ON CONFLICT (job, device_key) DO UPDATE SET \
         phase = excluded.phase, state = excluded.state, updated_at = excluded.updated_at",
        values.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use crate::journal::test_backend::{on_both_backends, TestBackend};

    on_both_backends!(
        any_state_is_kept_as_its_json_next_to_its_phase_and_read_back_as_asked,
        a_state_read_as_the_wrong_type_is_unreadable
    );

    use serde::{Deserialize, Serialize};

    use super::*;

    /// A state the journal has never heard of.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Lamp {
        on: bool,
    }

    impl JournalState for Lamp {
        fn phase_name(&self) -> &'static str {
            if self.on {
                "firing"
            } else {
                "inactive"
            }
        }
    }

    fn any_state_is_kept_as_its_json_next_to_its_phase_and_read_back_as_asked(b: &TestBackend) {
        let mut journal = b.open();
        journal.save_states([("Lamp", "d=1", &Lamp { on: true })]).unwrap();
        let row: (String, String) = journal
            .db
            .query_one("SELECT phase, state FROM job_state", args![], |row| {
                Ok((row.string(0)?, row.string(1)?))
            })
            .unwrap();
        assert_eq!(row, ("firing".to_string(), r#"{"on":true}"#.to_string()));
        let states = journal.load_states::<Lamp>().unwrap();
        assert_eq!(states[&("Lamp".to_string(), "d=1".to_string())], Lamp { on: true });
    }

    /// Another state, stored differently.
    #[derive(Debug, Serialize, Deserialize)]
    struct Fan {
        speed: u32,
    }

    impl JournalState for Fan {
        fn phase_name(&self) -> &'static str {
            "pending"
        }
    }

    fn a_state_read_as_the_wrong_type_is_unreadable(b: &TestBackend) {
        let mut journal = b.open();
        journal.save_states([("Lamp", "d=1", &Lamp { on: false })]).unwrap();
        let err = journal.load_states::<Fan>().unwrap_err();
        assert!(matches!(err, JournalError::UnreadableState { .. }), "{err:?}");
    }
}
