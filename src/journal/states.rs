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

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, Statement};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{begin, sqlite_error, Journal, JournalError};

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
        let path = &self.path;
        let tx = begin(&mut self.connection, self.in_batch, path, "saving job states")?;
        {
            // Thousands of states may change in one cycle (a fleet going
            // bad at once): look the statement up once for all.
            let mut upsert = prepare_upsert(&tx, path)?;
            for (job, device_key, state) in states {
                let state = EncodedState::new(state);
                save_state(&mut upsert, path, job, device_key, &state, now)?;
            }
        }
        tx.commit().map_err(sqlite_error(path, "committing job states"))
    }

    /// Deletes the saved states of jobs not in `jobs` (removed from the
    /// rules), so that a job added back later under the same name starts
    /// afresh instead of inheriting a half-run `for` timer. Returns how many
    /// rows went. Executions are history and are kept.
    pub fn forget_states_except(&mut self, jobs: &[&str]) -> Result<usize, JournalError> {
        let path = &self.path;
        let tx =
            begin(&mut self.connection, self.in_batch, path, "forgetting states of removed jobs")?;
        let saved: Vec<String> = {
            let mut statement = tx
                .prepare("SELECT DISTINCT job FROM job_state")
                .map_err(sqlite_error(path, "listing saved job states"))?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(sqlite_error(path, "listing saved job states"))?;
            rows.collect::<Result<_, _>>()
                .map_err(sqlite_error(path, "listing saved job states"))?
        };
        let mut removed = 0;
        for job in saved.iter().filter(|job| !jobs.contains(&job.as_str())) {
            removed += tx
                .execute("DELETE FROM job_state WHERE job = ?1", params![job])
                .map_err(sqlite_error(path, "forgetting states of removed jobs"))?;
        }
        tx.commit().map_err(sqlite_error(path, "committing forgotten states"))?;
        Ok(removed)
    }

    /// Every saved job state, by (job, device key), decoded as `S`.
    pub fn load_states<S: JournalState>(
        &self,
    ) -> Result<HashMap<(String, String), S>, JournalError> {
        let doing = "reading job states";
        let mut statement = self
            .connection
            .prepare("SELECT job, device_key, state FROM job_state")
            .map_err(sqlite_error(&self.path, doing))?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?)))
            .map_err(sqlite_error(&self.path, doing))?;
        let mut states = HashMap::new();
        for row in rows {
            let (job, device_key, json): (String, String, String) =
                row.map_err(sqlite_error(&self.path, doing))?;
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

/// Inserts or overwrites one (job, device)'s state; its parameters are those
/// of [`save_state`].
const UPSERT_STATE: &str = "INSERT INTO job_state (job, device_key, phase, state, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (job, device_key) DO UPDATE SET \
     phase = excluded.phase, state = excluded.state, updated_at = excluded.updated_at";

/// Prepares [`UPSERT_STATE`] in `tx`, for [`save_state`].
pub(super) fn prepare_upsert<'c>(
    tx: &'c Connection,
    path: &Path,
) -> Result<rusqlite::CachedStatement<'c>, JournalError> {
    tx.prepare_cached(UPSERT_STATE).map_err(sqlite_error(path, "saving a job state"))
}

/// Saves one (job, device)'s state with `upsert`, from [`prepare_upsert`].
pub(super) fn save_state(
    upsert: &mut Statement<'_>,
    path: &Path,
    job: &str,
    device_key: &str,
    state: &EncodedState,
    now_millis: i64,
) -> Result<(), JournalError> {
    upsert
        .execute(params![job, device_key, state.phase, state.json, now_millis])
        .map_err(sqlite_error(path, "saving a job state"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn any_state_is_kept_as_its_json_next_to_its_phase_and_read_back_as_asked() {
        let mut journal = Journal::open_in_memory().unwrap();
        journal.save_states([("Lamp", "d=1", &Lamp { on: true })]).unwrap();
        let row: (String, String) = journal
            .connection
            .query_row("SELECT phase, state FROM job_state", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
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

    #[test]
    fn a_state_read_as_the_wrong_type_is_unreadable() {
        let mut journal = Journal::open_in_memory().unwrap();
        journal.save_states([("Lamp", "d=1", &Lamp { on: false })]).unwrap();
        let err = journal.load_states::<Fan>().unwrap_err();
        assert!(matches!(err, JournalError::UnreadableState { .. }), "{err:?}");
    }
}
