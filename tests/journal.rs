//! The journal's promises, checked against real files: a message journalled
//! before it leaves is never lost or blindly resent, even when the process is
//! killed with SIGKILL; states survive restarts; readers and the daemon share
//! the file; foreign or newer files are refused and left untouched.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use signage_watchdog::clock::{Clock, ManualClock};
use signage_watchdog::journal::{
    Channel, EncodedState, Execution, ExecutionStatus, HistoryFilter, Journal, JournalError,
    Location, Origin, PlannedSend, PostgresTarget, SendResult, Suppression, TlsMode,
    SCHEMA_VERSION,
};
use signage_watchdog::rules::state::{JobState, Phase};
use signage_watchdog::secret::SecretSource;

#[allow(dead_code, reason = "this binary uses part of the PostgreSQL harness")]
#[path = "support/postgres.rs"]
mod pg_server;

#[allow(dead_code, reason = "the PostgreSQL harness uses part of it")]
#[path = "support/wait.rs"]
mod wait;

// --- Both backends ---------------------------------------------------------
//
// Every promise the journal makes holds on SQLite and on PostgreSQL: each
// test below that takes a `Backend` runs twice, once on a fresh SQLite file
// and once on a fresh database of the test binary's PostgreSQL server.

/// Where a test's journal lives.
enum Backend {
    /// A file in a temporary directory.
    Sqlite(tempfile::TempDir),
    /// A fresh PostgreSQL database.
    Postgres(pg_server::TestDatabase),
}

impl Backend {
    fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    /// `None` when PostgreSQL is not installed (the test is skipped).
    fn postgres() -> Option<Backend> {
        pg_server::fresh_database().map(Backend::Postgres)
    }

    fn location(&self) -> Location {
        match self {
            Backend::Sqlite(dir) => Location::Sqlite(dir.path().join("journal.db")),
            Backend::Postgres(db) => postgres_location(&db.url, &db.password_file),
        }
    }

    /// The file or URL, as errors name it.
    fn name(&self) -> String {
        self.location().display()
    }

    fn try_open(&self) -> Result<Journal, JournalError> {
        Journal::open_at(&self.location())
    }

    fn open(&self) -> Journal {
        self.try_open().unwrap()
    }

    fn try_read(&self) -> Result<Journal, JournalError> {
        Journal::open_read_only_at(&self.location())
    }

    fn read(&self) -> Journal {
        self.try_read().unwrap()
    }

    /// Runs `sql` behind the journal's back.
    fn raw(&self, sql: &str) {
        match self {
            Backend::Sqlite(dir) => rusqlite::Connection::open(dir.path().join("journal.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Backend::Postgres(db) => pg_server::server().unwrap().admin_execute(&db.name, sql),
        }
    }

    /// What the storage holds, to check that a refused open left it as it
    /// was: the file's bytes, or the database's tables and schema version.
    fn snapshot(&self) -> String {
        match self {
            Backend::Sqlite(dir) => {
                format!("{:?}", std::fs::read(dir.path().join("journal.db")).unwrap_or_default())
            }
            Backend::Postgres(db) => {
                let server = pg_server::server().unwrap();
                let tables = server
                    .admin_query_text(
                        &db.name,
                        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables \
                         WHERE schemaname = 'public'",
                    )
                    .unwrap_or_default();
                if !tables.split(',').any(|table| table == "jobctl_schema") {
                    return tables;
                }
                let version = server
                    .admin_query_text(&db.name, "SELECT program || version FROM jobctl_schema")
                    .unwrap_or_default();
                format!("{tables} {version}")
            }
        }
    }

    /// The location as one line, for the crash child.
    fn encode(&self) -> String {
        match self {
            Backend::Sqlite(dir) => format!("sqlite\t{}", dir.path().join("journal.db").display()),
            Backend::Postgres(db) => {
                format!("postgres\t{}\t{}", db.url, db.password_file.display())
            }
        }
    }

    fn decode(line: &str) -> Location {
        let parts: Vec<&str> = line.split('\t').collect();
        match parts[..] {
            ["sqlite", path] => Location::Sqlite(PathBuf::from(path)),
            ["postgres", url, password_file] => postgres_location(url, Path::new(password_file)),
            _ => panic!("not a location: {line}"),
        }
    }
}

fn postgres_location(url: &str, password_file: &Path) -> Location {
    Location::Postgres(PostgresTarget {
        url: url.to_string(),
        password: Some(SecretSource::File(password_file.to_path_buf())),
        base_dir: PathBuf::from("/"),
        tls: TlsMode::Disable,
        ca_file: None,
    })
}

/// Runs each named `fn name(b: &Backend)` as `name::sqlite` and
/// `name::postgres`.
macro_rules! on_both_backends {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {$(
        $(#[$attr])*
        mod $name {
            #[test]
            fn sqlite() {
                super::$name(&super::Backend::sqlite());
            }

            #[test]
            fn postgres() {
                if let Some(backend) = super::Backend::postgres() {
                    super::$name(&backend);
                }
            }
        }
    )*};
}

on_both_backends!(
    a_rule_send_round_trips_with_its_attempt,
    failover_keeps_every_attempt_and_the_delivering_backend,
    a_sent_message_cannot_be_sent_or_finished_again,
    a_journal_moves_to_the_thread_that_runs_it,
    an_unknown_execution_is_named,
    a_planned_send_is_marked_sending_before_it_leaves,
    a_process_that_dies_mid_send_leaves_an_uncertain_message_that_still_counts,
    states_survive_reopening_and_saves_overwrite_only_their_rows,
    an_unreadable_state_names_its_job_and_device,
    suppressed_and_dry_run_messages_are_journalled_but_not_counted,
    budgets_count_what_may_have_left_per_socket_and_globally_within_the_window,
    history_filters_by_job_device_time_outcome_and_limit_newest_first,
    a_journal_from_a_newer_jobctl_is_refused_and_left_untouched,
    another_programs_database_is_refused,
    read_only_opening_needs_an_existing_current_journal,
    #[cfg(unix)]
    killed_while_sending_the_restart_marks_it_uncertain_and_counts_it,
    #[cfg(unix)]
    killed_after_the_outcome_nothing_is_left_in_flight,
    states_of_removed_jobs_are_forgotten_and_history_kept,
    a_batch_commits_its_writes_together_and_undoes_a_failed_one_alone,
);

const DEVICE: &str = "platform_id=12,device_id=30785";
const HOUR: Duration = Duration::from_secs(3600);

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).unwrap()
}

fn firing(episode: u64, actions_taken: u32, since: i64) -> JobState {
    JobState {
        phase: Phase::Firing { since: at(since), episode, actions_taken },
        episodes_started: episode,
        last_action_at: Some(at(since)),
        ..JobState::default()
    }
}

fn rule_send(job: &str, device_key: &str, socket: &str, episode: u64) -> PlannedSend {
    PlannedSend {
        channel: Channel::Sms,
        origin: Origin::Rule {
            job: job.to_string(),
            device_key: device_key.to_string(),
            episode,
            attempt: 1,
            trigger_value: Some(0.0),
            state_after: EncodedState::new(&firing(episode, 1, 1_700_000_000)),
            also_for: Vec::new(),
        },
        socket: socket.to_string(),
        phone: "+79991234567".to_string(),
        text: "#12#0#1#1#".to_string(),
    }
}

fn manual_send(socket: &str) -> PlannedSend {
    PlannedSend {
        channel: Channel::Sms,
        origin: Origin::Manual,
        socket: socket.to_string(),
        phone: "+79990000000".to_string(),
        text: "#01#0#".to_string(),
    }
}

fn sent(backend: &str) -> SendResult {
    SendResult::Sent { backend: backend.to_string(), reference: Some("42".to_string()) }
}

fn statuses(executions: &[Execution]) -> Vec<ExecutionStatus> {
    executions.iter().map(|execution| execution.status).collect()
}

fn a_rule_send_round_trips_with_its_attempt(b: &Backend) {
    let clock = Arc::new(ManualClock::at_unix_seconds(1_700_000_000));
    let mut journal = b.open().with_clock(clock.clone());

    let id = journal.begin_send(&rule_send("Lobby offline", DEVICE, "lobby", 3)).unwrap();
    let sending = journal.execution(id).unwrap();
    assert_eq!(sending.status, ExecutionStatus::Sending);
    assert!(sending.attempts.is_empty());

    clock.advance(Duration::from_secs(2));
    journal.finish_send(id, &sent("modem")).unwrap();
    let execution = journal.execution(id).unwrap();
    assert_eq!(execution.job.as_deref(), Some("Lobby offline"));
    assert_eq!(execution.device_key.as_deref(), Some(DEVICE));
    assert_eq!(execution.socket, "lobby");
    assert_eq!(execution.phone, "+79991234567");
    assert_eq!(execution.text, "#12#0#1#1#");
    assert_eq!((execution.episode, execution.attempt), (Some(3), Some(1)));
    assert_eq!(execution.trigger_value, Some(0.0));
    assert_eq!(execution.status, ExecutionStatus::Sent);
    assert_eq!(execution.backend.as_deref(), Some("modem"));
    assert_eq!(execution.detail.as_deref(), Some("42"));
    assert!(!execution.manual);
    assert_eq!(execution.created_at, at(1_700_000_000));
    assert_eq!(execution.updated_at, at(1_700_000_002));
    assert_eq!(execution.attempts.len(), 1);
    assert_eq!(execution.attempts[0].outcome, ExecutionStatus::Sent);

    let history = journal.history(&HistoryFilter::default()).unwrap();
    assert_eq!(history, vec![execution]);
}

fn failover_keeps_every_attempt_and_the_delivering_backend(b: &Backend) {
    let mut journal = b.open();
    let id = journal.begin_send(&manual_send("lobby")).unwrap();
    journal
        .finish_send(
            id,
            &SendResult::Failed { backend: "modem".into(), reason: "+CMS ERROR: 331".into() },
        )
        .unwrap();
    assert_eq!(journal.execution(id).unwrap().status, ExecutionStatus::Failed);
    journal.mark_sending(id).unwrap();
    journal.finish_send(id, &sent("http")).unwrap();

    let execution = journal.execution(id).unwrap();
    assert!(execution.manual);
    assert_eq!(execution.job, None);
    assert_eq!(execution.status, ExecutionStatus::Sent);
    assert_eq!(execution.backend.as_deref(), Some("http"));
    let attempts: Vec<_> = execution
        .attempts
        .iter()
        .map(|attempt| (attempt.backend.as_str(), attempt.outcome, attempt.detail.as_deref()))
        .collect();
    assert_eq!(
        attempts,
        vec![
            ("modem", ExecutionStatus::Failed, Some("+CMS ERROR: 331")),
            ("http", ExecutionStatus::Sent, Some("42")),
        ]
    );
}

fn a_sent_message_cannot_be_sent_or_finished_again(b: &Backend) {
    let mut journal = b.open();
    let id = journal.begin_send(&manual_send("lobby")).unwrap();
    journal.finish_send(id, &sent("http")).unwrap();

    let again = journal.mark_sending(id).unwrap_err();
    assert!(matches!(again, JournalError::WrongStatus { status: ExecutionStatus::Sent, .. }));
    assert_eq!(
        again.to_string(),
        format!("{}: execution {id} is sent, so it cannot be sent again", b.name())
    );
    let twice = journal.finish_send(id, &sent("http")).unwrap_err();
    assert!(matches!(twice, JournalError::WrongStatus { .. }));
    assert_eq!(journal.execution(id).unwrap().attempts.len(), 1);
}

fn a_journal_moves_to_the_thread_that_runs_it(b: &Backend) {
    let mut journal = b.open();
    let id = journal.begin_send(&manual_send("lobby")).unwrap();
    let journal = std::thread::spawn(move || {
        journal.finish_send(id, &sent("http")).unwrap();
        journal
    })
    .join()
    .unwrap();
    assert_eq!(journal.execution(id).unwrap().status, ExecutionStatus::Sent);
}

fn an_unknown_execution_is_named(b: &Backend) {
    let mut journal = b.open();
    let missing = signage_watchdog::journal::ExecutionId(99);
    let err = journal.finish_send(missing, &sent("http")).unwrap_err();
    assert_eq!(err.to_string(), format!("{}: no execution #99 in the journal", b.name()));
}

fn a_planned_send_is_marked_sending_before_it_leaves(b: &Backend) {
    let mut journal = b.open();
    let id = journal.plan_send(&manual_send("lobby")).unwrap();
    assert_eq!(journal.execution(id).unwrap().status, ExecutionStatus::Planned);
    assert!(journal.finish_send(id, &sent("http")).is_err(), "an outcome needs sending first");
    journal.mark_sending(id).unwrap();
    journal.finish_send(id, &sent("http")).unwrap();
    assert_eq!(journal.execution(id).unwrap().status, ExecutionStatus::Sent);

    // A backend that fails before its I/O starts never marks it sending: its
    // definite failure is recorded on the planned message all the same.
    let id = journal.plan_send(&manual_send("lobby")).unwrap();
    let refused = SendResult::Failed { backend: "modem".into(), reason: "no such device".into() };
    journal.finish_send(id, &refused).unwrap();
    assert_eq!(journal.execution(id).unwrap().status, ExecutionStatus::Failed);
    let uncertain = SendResult::Uncertain { backend: "modem".into(), reason: "silent".into() };
    assert!(journal.finish_send(id, &uncertain).is_err(), "only after sending");
}

fn a_process_that_dies_mid_send_leaves_an_uncertain_message_that_still_counts(b: &Backend) {
    let clock = Arc::new(ManualClock::at_unix_seconds(1_700_000_000));
    let (in_flight, queued, done) = {
        let mut journal = b.open().with_clock(clock.clone());
        let in_flight =
            journal.begin_send(&rule_send("Lobby offline", DEVICE, "lobby", 1)).unwrap();
        let queued = journal.plan_send(&manual_send("lobby")).unwrap();
        let done = journal.begin_send(&manual_send("lobby")).unwrap();
        journal.finish_send(done, &sent("http")).unwrap();
        (in_flight, queued, done)
        // Dropped without finish_send: as far as the file knows, the process died.
    };

    clock.advance(Duration::from_secs(60));
    let mut journal = b.open().with_clock(clock.clone());
    let recovered = journal.recover_in_flight().unwrap();
    let recovered: Vec<_> = recovered.iter().map(|e| (e.id, e.status)).collect();
    assert_eq!(recovered, vec![(in_flight, ExecutionStatus::Uncertain)]);
    // The queued one never began to leave: it stays planned, to be sent.
    let planned: Vec<_> = journal.planned_sends().unwrap().iter().map(|e| e.id).collect();
    assert_eq!(planned, vec![queued]);
    let uncertain = journal.execution(in_flight).unwrap();
    assert!(uncertain.detail.unwrap().contains("may have left, so it is not sent again"));
    assert_eq!(uncertain.updated_at, at(1_700_000_060));
    assert_eq!(journal.execution(done).unwrap().status, ExecutionStatus::Sent);

    // The uncertain one and the sent one may have left, and the queued one
    // is about to: all count against budgets.
    assert_eq!(journal.count_sent_since(Some("lobby"), at(1_699_999_000)).unwrap(), 3);
    // The state that decided the uncertain send came back with it.
    let states = journal.load_states::<JobState>().unwrap();
    assert_eq!(
        states[&("Lobby offline".to_string(), DEVICE.to_string())],
        firing(1, 1, 1_700_000_000)
    );
    assert!(journal.recover_in_flight().unwrap().is_empty(), "recovery happens once");
}

fn states_survive_reopening_and_saves_overwrite_only_their_rows(b: &Backend) {
    let pending = JobState {
        phase: Phase::Pending {
            since: at(100),
            held: Duration::from_secs(90),
            counting_from: None,
            last_true: None,
        },
        episodes_started: 4,
        last_action_at: Some(at(50)),
        ..JobState::default()
    };
    let resolved = JobState {
        phase: Phase::Resolved { at: at(200), episode: 2 },
        episodes_started: 2,
        last_action_at: None,
        ..JobState::default()
    };
    {
        let mut journal = b.open();
        journal
            .save_states([
                ("Offline", "platform_id=12,device_id=1", &pending),
                ("Offline", "platform_id=12,device_id=2", &resolved),
                ("Paused", "platform_id=12,device_id=1", &JobState::default()),
            ])
            .unwrap();
    }
    let mut journal = b.open();
    let states = journal.load_states::<JobState>().unwrap();
    assert_eq!(states.len(), 3);
    assert_eq!(states[&("Offline".into(), "platform_id=12,device_id=1".into())], pending);
    assert_eq!(states[&("Offline".into(), "platform_id=12,device_id=2".into())], resolved);
    assert_eq!(
        states[&("Paused".into(), "platform_id=12,device_id=1".into())],
        JobState::default()
    );

    let later = firing(5, 1, 300);
    journal.save_states([("Offline", "platform_id=12,device_id=1", &later)]).unwrap();
    let states = journal.load_states::<JobState>().unwrap();
    assert_eq!(states.len(), 3);
    assert_eq!(states[&("Offline".into(), "platform_id=12,device_id=1".into())], later);
    assert_eq!(states[&("Offline".into(), "platform_id=12,device_id=2".into())], resolved);
}

fn an_unreadable_state_names_its_job_and_device(b: &Backend) {
    b.open().save_states([("Offline", DEVICE, &JobState::default())]).unwrap();
    b.raw("UPDATE job_state SET state = '{\"phase\": \"sleeping\"}'");

    let err = b.open().load_states::<JobState>().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the stored state of job \"Offline\" on device \"{DEVICE}\" is unreadable",
            b.name()
        )
    );
}

fn suppressed_and_dry_run_messages_are_journalled_but_not_counted(b: &Backend) {
    let clock = Arc::new(ManualClock::at_unix_seconds(1_700_000_000));
    let mut journal = b.open().with_clock(clock.clone());
    let reason = "socket lobby: 10 messages in the last hour".to_string();
    let over = journal
        .record_suppressed(
            &rule_send("Lobby offline", DEVICE, "lobby", 7),
            &Suppression::OverBudget { reason: reason.clone() },
        )
        .unwrap();
    let dry = journal.record_suppressed(&manual_send("lobby"), &Suppression::DryRun).unwrap();

    let over = journal.execution(over).unwrap();
    assert_eq!(over.status, ExecutionStatus::Suppressed);
    assert_eq!(over.detail, Some(reason));
    assert_eq!(journal.execution(dry).unwrap().status, ExecutionStatus::DryRun);
    assert_eq!(journal.count_sent_since(None, at(0)).unwrap(), 0);
    assert!(journal.mark_sending(dry).is_err(), "a dry run never leaves");
    // A rule's action held by a budget stays due: the state that decided it
    // is not saved with the row (the engine saves the one that says so).
    assert!(journal.load_states::<JobState>().unwrap().is_empty());
    // The same action, due again next cycle, finds that row and is not
    // journalled again; another episode, job or a manual send is.
    let again = |job: &str, episode| {
        journal.earlier_suppression(&rule_send(job, DEVICE, "lobby", episode)).unwrap()
    };
    assert_eq!(again("Lobby offline", 7), Some(over.id));
    assert_eq!(again("Lobby offline", 8), None);
    assert_eq!(again("Lobby playing", 7), None);
    assert_eq!(journal.earlier_suppression(&manual_send("lobby")).unwrap(), None);
}

fn budgets_count_what_may_have_left_per_socket_and_globally_within_the_window(b: &Backend) {
    let clock = Arc::new(ManualClock::at_unix_seconds(1_700_000_000));
    let mut journal = b.open().with_clock(clock.clone());
    let start = clock.now();

    // Two hours ago-ish: one sent to lobby.
    let old = journal.begin_send(&manual_send("lobby")).unwrap();
    journal.finish_send(old, &sent("http")).unwrap();

    clock.advance(HOUR + Duration::from_secs(1));
    let window_start = clock.now();
    // Within the last hour: lobby sent, lobby uncertain, lobby failed, hall sending, hall planned.
    let a = journal.begin_send(&manual_send("lobby")).unwrap();
    journal.finish_send(a, &sent("http")).unwrap();
    let b = journal.begin_send(&manual_send("lobby")).unwrap();
    journal
        .finish_send(
            b,
            &SendResult::Uncertain { backend: "modem".into(), reason: "timeout".into() },
        )
        .unwrap();
    let c = journal.begin_send(&manual_send("lobby")).unwrap();
    journal
        .finish_send(
            c,
            &SendResult::Failed { backend: "modem".into(), reason: "no network".into() },
        )
        .unwrap();
    journal.begin_send(&manual_send("hall")).unwrap();
    journal.plan_send(&manual_send("hall")).unwrap();
    journal.record_suppressed(&manual_send("hall"), &Suppression::DryRun).unwrap();

    clock.advance(Duration::from_secs(60));
    let now = clock.now();
    let hour_ago = now - HOUR;
    assert!(hour_ago > start && hour_ago <= window_start);
    assert_eq!(journal.count_sent_since(Some("lobby"), hour_ago).unwrap(), 2);
    assert_eq!(journal.count_sent_since(Some("hall"), hour_ago).unwrap(), 2);
    assert_eq!(journal.count_sent_since(Some("cellar"), hour_ago).unwrap(), 0);
    assert_eq!(journal.count_sent_since(None, hour_ago).unwrap(), 4);
    let day_ago = now - 24 * HOUR;
    assert_eq!(journal.count_sent_since(Some("lobby"), day_ago).unwrap(), 3);
    assert_eq!(journal.count_sent_since(None, day_ago).unwrap(), 5);
    // The window's start is inclusive.
    assert_eq!(journal.count_sent_since(None, window_start).unwrap(), 4);
}

fn history_filters_by_job_device_time_outcome_and_limit_newest_first(b: &Backend) {
    let clock = Arc::new(ManualClock::at_unix_seconds(1_700_000_000));
    let mut journal = b.open().with_clock(clock.clone());
    let mut ids = Vec::new();
    for (job, device) in
        [("Offline", "d=1"), ("Offline", "d=2"), ("Paused", "d=1"), ("Offline", "d=1")]
    {
        clock.advance(Duration::from_secs(60));
        let id = journal.begin_send(&rule_send(job, device, "lobby", 1)).unwrap();
        journal.finish_send(id, &sent("http")).unwrap();
        ids.push(id);
    }
    clock.advance(Duration::from_secs(60));
    let failed = journal.begin_send(&rule_send("Offline", "d=1", "lobby", 2)).unwrap();
    journal
        .finish_send(failed, &SendResult::Failed { backend: "http".into(), reason: "500".into() })
        .unwrap();

    let ids_of = |filter: HistoryFilter| -> Vec<_> {
        journal.history(&filter).unwrap().into_iter().map(|execution| execution.id).collect()
    };
    assert_eq!(ids_of(HistoryFilter::default()), vec![failed, ids[3], ids[2], ids[1], ids[0]]);
    assert_eq!(
        ids_of(HistoryFilter { job: Some("Offline".into()), ..HistoryFilter::default() }),
        vec![failed, ids[3], ids[1], ids[0]]
    );
    assert_eq!(
        ids_of(HistoryFilter {
            job: Some("Offline".into()),
            device_key: Some("d=1".into()),
            ..HistoryFilter::default()
        }),
        vec![failed, ids[3], ids[0]]
    );
    assert_eq!(
        ids_of(HistoryFilter { since: Some(at(1_700_000_180)), ..HistoryFilter::default() }),
        vec![failed, ids[3], ids[2]]
    );
    assert_eq!(
        ids_of(HistoryFilter { status: Some(ExecutionStatus::Failed), ..HistoryFilter::default() }),
        vec![failed]
    );
    assert_eq!(
        ids_of(HistoryFilter { limit: Some(2), ..HistoryFilter::default() }),
        vec![failed, ids[3]]
    );
    assert_eq!("dry_run".parse::<ExecutionStatus>().unwrap(), ExecutionStatus::DryRun);
    assert_eq!(
        "lost".parse::<ExecutionStatus>().unwrap_err().to_string(),
        "unknown outcome \"lost\"; expected one of planned, sending, sent, failed, uncertain, suppressed, dry_run"
    );
}

#[test]
fn readers_neither_block_nor_disturb_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let mut daemon = Journal::open(&path).unwrap();
    let first = daemon.begin_send(&rule_send("Offline", DEVICE, "lobby", 1)).unwrap();

    // Another writer holds the write lock with an uncommitted row.
    let mut other_writer = rusqlite::Connection::open(&path).unwrap();
    let uncommitted =
        other_writer.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    uncommitted
        .execute(
            "INSERT INTO executions (socket, phone, text, status, manual, created_at, updated_at) \
             VALUES ('hall', '+7', 'x', 'sent', 1, 0, 0)",
            [],
        )
        .unwrap();

    // `jobctl status`/`history` read at once, and see only committed rows.
    let status = Journal::open_read_only(&path).unwrap();
    let seen = status.history(&HistoryFilter::default()).unwrap();
    assert_eq!(seen.iter().map(|e| e.id).collect::<Vec<_>>(), vec![first]);
    assert_eq!(status.count_sent_since(None, at(0)).unwrap(), 1);
    assert_eq!(status.load_states::<JobState>().unwrap().len(), 1);
    uncommitted.rollback().unwrap();

    // A reader in the middle of a read transaction does not hold the daemon up.
    let mut history = rusqlite::Connection::open(&path).unwrap();
    let snapshot = history.transaction().unwrap();
    let before: i64 =
        snapshot.query_row("SELECT count(*) FROM executions", [], |r| r.get(0)).unwrap();
    daemon.finish_send(first, &sent("http")).unwrap();
    let second = daemon.begin_send(&manual_send("hall")).unwrap();
    daemon.save_states([("Offline", DEVICE, &JobState::default())]).unwrap();
    let during: i64 =
        snapshot.query_row("SELECT count(*) FROM executions", [], |r| r.get(0)).unwrap();
    assert_eq!((before, during), (1, 1), "the reader keeps its consistent snapshot");
    snapshot.commit().unwrap();

    let seen = status.history(&HistoryFilter::default()).unwrap();
    assert_eq!(statuses(&seen), vec![ExecutionStatus::Sending, ExecutionStatus::Sent]);
    assert_eq!(seen[0].id, second);
    assert_eq!(
        status.load_states::<JobState>().unwrap()[&("Offline".into(), DEVICE.into())],
        JobState::default()
    );
}

#[test]
fn a_fresh_file_gets_the_current_schema_in_wal_mode_and_reopens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let id = Journal::open(&path).unwrap().begin_send(&manual_send("lobby")).unwrap();

    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = raw.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    let mode: String = raw.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!((version, mode.as_str()), (SCHEMA_VERSION, "wal"));
    drop(raw);

    let journal = Journal::open(&path).unwrap();
    assert_eq!(journal.execution(id).unwrap().text, "#01#0#");
}

#[test]
fn an_empty_sqlite_database_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    // What `sqlite3 journal.db 'PRAGMA user_version'` leaves behind: version 0, no tables.
    rusqlite::Connection::open(&path).unwrap().execute_batch("VACUUM").unwrap();
    let mut journal = Journal::open(&path).unwrap();
    journal.begin_send(&manual_send("lobby")).unwrap();
}

fn a_journal_from_a_newer_jobctl_is_refused_and_left_untouched(b: &Backend) {
    drop(b.open());
    match b {
        Backend::Sqlite(..) => b.raw("PRAGMA user_version = 99"),
        Backend::Postgres(_) => b.raw("UPDATE jobctl_schema SET version = 99"),
    }
    let before = b.snapshot();

    for err in [b.try_open().unwrap_err(), b.try_read().unwrap_err()] {
        assert!(matches!(err, JournalError::NewerSchema { found: 99, .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "{}: journal schema version 99 is newer than this jobctl understands (up to {SCHEMA_VERSION}); \
                 upgrade jobctl or restore a journal from before the downgrade",
                b.name()
            )
        );
    }
    assert_eq!(b.snapshot(), before);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    let text = b"[prometheus]\nurl = \"http://127.0.0.1:9090\"\n".repeat(200);
    std::fs::write(&path, &text).unwrap();

    for err in [Journal::open(&path).unwrap_err(), Journal::open_read_only(&path).unwrap_err()] {
        assert_eq!(
            err.to_string(),
            format!(
                "{}: not an SQLite database, so not a jobctl journal; it was left untouched \
                 (move it away or set [journal] path to another file)",
                path.display()
            )
        );
    }
    assert_eq!(std::fs::read(&path).unwrap(), text);
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec!["rules.toml"], "no -wal or -shm files either");
}

#[test]
fn a_corrupt_sqlite_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend((0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&path, &bytes).unwrap();

    let err = Journal::open(&path).unwrap_err();
    assert!(matches!(err, JournalError::NotADatabase { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

fn another_programs_database_is_refused(b: &Backend) {
    b.raw("CREATE TABLE devices (id INTEGER PRIMARY KEY, raw TEXT)");
    let before = b.snapshot();

    let err = b.try_open().unwrap_err();
    let expected = match b {
        Backend::Sqlite(..) => format!(
            "{}: an SQLite database but not a jobctl journal (it has a table \"devices\"); \
             it was left untouched (set [journal] path to another file)",
            b.name()
        ),
        Backend::Postgres(_) => format!(
            "{}: a PostgreSQL database but not a jobctl journal (it has a table \"devices\"); \
             it was left untouched (point [journal] url at an empty database of its own)",
            b.name()
        ),
    };
    assert_eq!(err.to_string(), expected);
    assert_eq!(b.snapshot(), before);
}

fn read_only_opening_needs_an_existing_current_journal(b: &Backend) {
    if let Backend::Postgres(_) = b {
        let err = b.try_read().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no journal there yet; `jobctl run` creates it when it first starts \
                 (the rules' [journal] url says where it is)",
                b.name()
            )
        );
        assert_eq!(b.snapshot(), "", "a reader never creates the journal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let err = Journal::open_read_only(&missing).unwrap_err();
    assert!(matches!(err, JournalError::Missing { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: no journal there yet; `jobctl run` creates it when it first starts \
             (the rules' [journal] path says where it is)",
            missing.display()
        )
    );
    assert!(!missing.exists(), "a reader never creates the journal");

    let empty = dir.path().join("empty.db");
    rusqlite::Connection::open(&empty).unwrap().execute_batch("VACUUM").unwrap();
    let err = Journal::open_read_only(&empty).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: journal schema version 0 is older than this jobctl's {SCHEMA_VERSION}; \
             start the jobctl daemon once to upgrade it",
            empty.display()
        )
    );
}

// --- A real kill -9 -------------------------------------------------------
//
// The test binary re-runs itself as a child that runs only
// `crash_child_process`: it journals, prints a line saying so, and waits on
// stdin for a kill that the parent sends (SIGKILL) as soon as it reads the
// line. Nothing sleeps.

const CRASH_CHILD_ENV: &str = "SIGNAGE_WATCHDOG_JOURNAL_CRASH_CHILD";
const READY: &str = "JOURNALLED execution ";

/// Runs only as the child of the kill -9 tests; a no-op otherwise.
#[test]
fn crash_child_process() {
    let Ok(spec) = std::env::var(CRASH_CHILD_ENV) else { return };
    let (stage, location) = spec.split_once(':').expect("stage:location");
    let mut journal = Journal::open_at(&Backend::decode(location)).unwrap();
    let id = journal.begin_send(&rule_send("Lobby offline", DEVICE, "lobby", 1)).unwrap();
    if stage == "after-sent" {
        journal.finish_send(id, &sent("http")).unwrap();
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY}{}", id.0).unwrap();
    stdout.flush().unwrap();
    drop(stdout);
    // Wait to be killed; the parent never closes our stdin first.
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    panic!("the parent should have killed this process");
}

/// Runs the child at `stage`, kills it with SIGKILL once it has journalled,
/// and returns the id it reported.
#[cfg(unix)]
fn journal_then_get_killed(stage: &str, b: &Backend) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child_process", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, format!("{stage}:{}", b.encode()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut id = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(at) = line.find(READY) {
            id = Some(line[at + READY.len()..].trim().parse::<i64>().unwrap());
            break;
        }
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the child must die by SIGKILL, not exit");
    id.expect("the child reported what it journalled")
}

#[cfg(unix)]
fn killed_while_sending_the_restart_marks_it_uncertain_and_counts_it(b: &Backend) {
    let id = journal_then_get_killed("while-sending", b);

    let mut journal = b.open();
    let recovered = journal.recover_in_flight().unwrap();
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].id.0, id);
    assert_eq!(recovered[0].status, ExecutionStatus::Uncertain);
    assert_eq!(journal.count_sent_since(Some("lobby"), at(0)).unwrap(), 1);
    let states = journal.load_states::<JobState>().unwrap();
    let state = &states[&("Lobby offline".to_string(), DEVICE.to_string())];
    assert!(
        matches!(state.phase, Phase::Firing { episode: 1, actions_taken: 1, .. }),
        "the action is already taken, so it will not be due again: {state:?}"
    );
}

#[cfg(unix)]
fn killed_after_the_outcome_nothing_is_left_in_flight(b: &Backend) {
    let id = journal_then_get_killed("after-sent", b);

    let mut journal = b.open();
    assert!(journal.recover_in_flight().unwrap().is_empty());
    let history = journal.history(&HistoryFilter::default()).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].id.0, history[0].status), (id, ExecutionStatus::Sent));
    assert_eq!(journal.count_sent_since(None, at(0)).unwrap(), 1);
}

fn states_of_removed_jobs_are_forgotten_and_history_kept(b: &Backend) {
    let mut journal = b.open();
    let state = JobState::default();
    journal
        .save_states([
            ("kept", "{d=\"1\"}", &state),
            ("gone", "{d=\"1\"}", &state),
            ("gone", "{d=\"2\"}", &state),
        ])
        .unwrap();
    assert_eq!(journal.forget_states_except(&["kept", "never saved"]).unwrap(), 2);
    let states = journal.load_states::<JobState>().unwrap();
    let jobs: Vec<&str> = states.keys().map(|(job, _)| job.as_str()).collect();
    assert_eq!(jobs, ["kept"]);
    assert_eq!(journal.forget_states_except(&["kept"]).unwrap(), 0);
}

fn a_batch_commits_its_writes_together_and_undoes_a_failed_one_alone(b: &Backend) {
    let mut daemon = b.open();
    let status = b.read();
    let earlier = daemon.begin_send(&manual_send("hall")).unwrap();
    daemon.finish_send(earlier, &sent("http")).unwrap();

    let [first, second] = daemon
        .batch("journalling a cycle's messages", |journal| {
            let first = journal.begin_send(&rule_send("Offline", DEVICE, "lobby", 1)).unwrap();
            // A write that fails inside the batch is undone alone.
            let again = journal.finish_send(earlier, &sent("http")).unwrap_err();
            assert!(matches!(again, JournalError::WrongStatus { .. }), "{again:?}");
            // Reads inside see the batch's own writes, so budgets count them.
            assert_eq!(journal.count_sent_since(Some("lobby"), at(0)).unwrap(), 1);
            let other = "platform_id=12,device_id=2";
            let second = journal.begin_send(&rule_send("Offline", other, "lobby", 1)).unwrap();
            // Nothing of the batch is committed before it ends.
            assert_eq!(status.history(&HistoryFilter::default()).unwrap().len(), 1);
            assert!(status.load_states::<JobState>().unwrap().is_empty());
            [first, second]
        })
        .unwrap();

    let seen = status.history(&HistoryFilter::default()).unwrap();
    assert_eq!(seen.iter().map(|e| e.id).collect::<Vec<_>>(), [second, first, earlier]);
    assert_eq!(
        statuses(&seen),
        [ExecutionStatus::Sending, ExecutionStatus::Sending, ExecutionStatus::Sent]
    );
    assert_eq!(seen[2].attempts.len(), 1, "the refused outcome left no attempt");
    assert_eq!(
        status.load_states::<JobState>().unwrap().len(),
        2,
        "each message's state came with it"
    );

    // A batch that panics leaves nothing behind, and writes after it are
    // transactions of their own again.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        daemon.batch("journalling a cycle's messages", |journal| {
            journal.begin_send(&manual_send("stage")).unwrap();
            panic!("a bug in the middle of a batch");
        })
    }));
    assert!(panicked.is_err());
    daemon.finish_send(first, &sent("http")).unwrap();
    let seen = status.history(&HistoryFilter::default()).unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(status.execution(first).unwrap().status, ExecutionStatus::Sent);
}

#[test]
fn one_writer_at_a_time_and_readers_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let lock_file = dir.path().join("journal.db.lock");
    let mut writer = Journal::open(&path).unwrap();
    assert_eq!(std::fs::read_to_string(&lock_file).unwrap(), format!("{}\n", std::process::id()));

    // flock is per open file: a second open in the same process is refused too.
    let err = Journal::open(&path).unwrap_err();
    assert!(
        matches!(&err, JournalError::Locked { holder: Some(pid), .. } if *pid == std::process::id()),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: another jobctl is writing this journal (PID {}, holding {}); only one of \
             `jobctl run`, `run --once`, `send` and `test-rule --send` may write a journal at a time: \
             wait for it or stop it first (history, status and check work beside it)",
            path.display(),
            std::process::id(),
            lock_file.display()
        )
    );
    let id = writer.begin_send(&manual_send("lobby")).unwrap();
    let reader = Journal::open_read_only(&path).unwrap();
    assert_eq!(reader.execution(id).unwrap().status, ExecutionStatus::Sending);

    drop(writer);
    // The lock file stays (deleting it would race the next writer); the lock goes.
    assert!(lock_file.exists());
    let journal = Journal::open(&path).unwrap();
    assert_eq!(journal.execution(id).unwrap().status, ExecutionStatus::Sending);
}

#[test]
fn a_writer_that_cannot_create_the_lock_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    // A directory where the lock file should be: it cannot be opened.
    std::fs::create_dir(dir.path().join("journal.db.lock")).unwrap();
    let err = Journal::open(&path).unwrap_err();
    assert_eq!(
        signage_watchdog::error::with_causes(&err),
        format!(
            "{}.lock: cannot take the journal's writer lock: Is a directory (os error 21)",
            path.display()
        )
    );
    assert!(!path.exists(), "nothing is written without the lock");
}

// --- PostgreSQL only --------------------------------------------------------

#[test]
fn a_fresh_postgres_database_gets_the_current_schema_and_reopens_with_its_data() {
    let Some(b) = Backend::postgres() else { return };
    let id = b.open().begin_send(&manual_send("lobby")).unwrap();
    let Backend::Postgres(db) = &b else { unreachable!() };
    let version = pg_server::server()
        .unwrap()
        .admin_query_text(&db.name, "SELECT program || ' ' || version FROM jobctl_schema");
    assert_eq!(version, Some(format!("jobctl journal {SCHEMA_VERSION}")));
    assert_eq!(b.open().execution(id).unwrap().text, "#01#0#");
}

#[test]
fn one_writer_at_a_time_on_postgres_and_readers_beside_it() {
    let Some(b) = Backend::postgres() else { return };
    let mut writer = b.open();
    let err = b.try_open().unwrap_err();
    assert!(matches!(err, JournalError::LockedInDatabase { .. }), "{err:?}");
    let message = err.to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let holder = format!("(jobctl on {}, PID {}; server PID ", host.trim(), std::process::id());
    assert!(
        message
            .starts_with(&format!("{}: another jobctl is writing this journal {holder}", b.name())),
        "{message}"
    );
    assert!(
        message.ends_with(
            ", holding its advisory lock); only one of `jobctl run`, `run --once`, `send` and \
             `test-rule --send` may write a journal at a time: wait for it or stop it first \
             (history, status and check work beside it)"
        ),
        "{message}"
    );
    let id = writer.begin_send(&manual_send("lobby")).unwrap();
    let reader = b.read();
    assert_eq!(reader.execution(id).unwrap().status, ExecutionStatus::Sending);

    drop(writer);
    // The session ended, and its lock with it.
    let journal = b.open();
    assert_eq!(journal.execution(id).unwrap().status, ExecutionStatus::Sending);
}

/// Ends every session of `jobctl` on `db` from the server's side, as a
/// server restart or a cut network would.
fn cut_connections(db: &pg_server::TestDatabase) {
    pg_server::server().unwrap().terminate_sessions(&db.name);
}

#[test]
fn a_writer_reconnects_after_a_lost_connection_and_takes_its_lock_again() {
    let Some(b) = Backend::postgres() else { return };
    let Backend::Postgres(db) = &b else { unreachable!() };
    let mut writer = b.open();
    let first = writer.begin_send(&manual_send("lobby")).unwrap();
    cut_connections(db);
    // The call that finds the connection gone fails, and nothing is kept.
    let err = writer.begin_send(&manual_send("lobby")).unwrap_err();
    assert!(matches!(err, JournalError::Database { .. }), "{err:?}");
    // The next one connects again, takes the writer lock, and writes.
    let second = writer.begin_send(&manual_send("lobby")).unwrap();
    assert_eq!(b.read().execution(second).unwrap().status, ExecutionStatus::Sending);
    assert_eq!(b.read().execution(first).unwrap().status, ExecutionStatus::Sending);
    // The new session holds the lock: nobody else may write.
    let err = b.try_open().unwrap_err();
    assert!(matches!(err, JournalError::LockedInDatabase { .. }), "{err:?}");
}

#[test]
fn a_connection_lost_inside_a_batch_keeps_none_of_it_and_never_reconnects_midway() {
    let Some(b) = Backend::postgres() else { return };
    let Backend::Postgres(db) = &b else { unreachable!() };
    let mut writer = b.open();
    let before = writer.begin_send(&manual_send("lobby")).unwrap();
    let err = writer
        .batch("journalling messages", |journal| {
            journal.begin_send(&manual_send("lobby")).unwrap();
            cut_connections(db);
            // Not run on a new session outside the batch's transaction.
            let late = journal.begin_send(&manual_send("lobby"));
            assert!(late.is_err(), "{late:?}");
        })
        .unwrap_err();
    assert!(matches!(err, JournalError::Database { .. }), "{err:?}");
    let after = writer.begin_send(&manual_send("lobby")).unwrap();
    let ids: Vec<_> =
        b.read().history(&HistoryFilter::default()).unwrap().iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![after, before]);
}

#[test]
fn a_writer_that_reconnects_after_another_took_the_lock_is_refused() {
    let Some(b) = Backend::postgres() else { return };
    let Backend::Postgres(db) = &b else { unreachable!() };
    let mut writer = b.open();
    writer.begin_send(&manual_send("lobby")).unwrap();
    cut_connections(db);
    // While the first writer's connection is gone, a second one opens.
    let mut other = b.open();
    let taken = other.begin_send(&manual_send("lobby")).unwrap();
    // The first writer's call that finds its connection gone fails; its
    // next reads connect again (reading needs no lock) ...
    assert!(writer.execution(taken).is_err());
    assert_eq!(writer.execution(taken).unwrap().status, ExecutionStatus::Sending);
    // ... but its writes are refused, every time, while the other holds it.
    for _ in 0..2 {
        let err = writer.begin_send(&manual_send("lobby")).unwrap_err();
        assert!(matches!(err, JournalError::LockedInDatabase { .. }), "{err:?}");
    }
    assert_eq!(b.read().history(&Default::default()).unwrap().len(), 2);
    // Once the other is gone, the lock is taken again and writes go on.
    drop(other);
    writer.begin_send(&manual_send("lobby")).unwrap();
}

/// The whole message of `err`, causes included, as jobctl prints it.
fn whole(err: &JournalError) -> String {
    signage_watchdog::error::with_causes(err)
}

#[test]
fn a_wrong_password_is_refused_by_the_server_and_never_shown() {
    let Some(b) = Backend::postgres() else { return };
    let Backend::Postgres(db) = &b else { unreachable!() };
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("password");
    std::fs::write(&wrong, "not-the-password-xyzzy\n").unwrap();
    let err = Journal::open_at(&postgres_location(&db.url, &wrong)).unwrap_err();
    let message = whole(&err);
    assert!(
        message.starts_with(&format!(
            "{}: cannot connect to the journal's PostgreSQL database: ",
            db.url
        )),
        "{message}"
    );
    assert!(message.contains("password authentication failed for user \"jobctl\""), "{message}");
    assert!(!message.contains("xyzzy"), "{message}");
}

#[test]
fn an_unreachable_server_is_named() {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgresql://jobctl@127.0.0.1:{port}/jobctl");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "secret-password-xyzzy").unwrap();
    let err = Journal::open_at(&postgres_location(&url, &password)).unwrap_err();
    let message = whole(&err);
    assert!(
        message
            .starts_with(&format!("{url}: cannot connect to the journal's PostgreSQL database: ")),
        "{message}"
    );
    assert!(message.contains("Connection refused"), "{message}");
    assert!(!message.contains("xyzzy"), "{message}");
}

#[test]
fn a_password_in_the_url_is_refused_before_connecting() {
    let url = "postgresql://jobctl:hunter2@127.0.0.1:1/jobctl";
    let err = Journal::open_at(&postgres_location(url, Path::new("/nonexistent"))).unwrap_err();
    assert!(matches!(err, JournalError::BadUrl { .. }), "{err:?}");
    assert!(
        err.to_string().ends_with(
            ": the URL holds a password, which would show wherever the URL does; \
             remove it and set password_file (or password_env) instead"
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().starts_with("postgresql://jobctl:***@127.0.0.1:1/jobctl: "), "{err}");
    assert_eq!(
        PostgresTarget::new(url).unwrap_err(),
        err.to_string().split_once("jobctl: ").unwrap().1
    );
}

#[test]
fn a_missing_password_file_is_named() {
    let url = "postgresql://jobctl@127.0.0.1:1/jobctl";
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let err = Journal::open_at(&postgres_location(url, &missing)).unwrap_err();
    assert_eq!(
        whole(&err),
        format!(
            "{url}: cannot read secret file {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn an_sqlite_journal_migrates_to_postgres_whole_and_checked_and_a_second_time_is_refused() {
    let Some(Backend::Postgres(db)) = Backend::postgres() else { return };
    let sqlite = Backend::sqlite();
    let clock = Arc::new(ManualClock::at_unix_seconds(1_700_000_000));
    {
        let mut journal = sqlite.open().with_clock(clock.clone());
        let first = journal.begin_send(&rule_send("Offline", DEVICE, "lobby", 1)).unwrap();
        journal.finish_send(first, &sent("http")).unwrap();
        let failed = journal.begin_send(&manual_send("hall")).unwrap();
        let reason = "no network".to_string();
        journal
            .finish_send(failed, &SendResult::Failed { backend: "modem".into(), reason })
            .unwrap();
        journal.record_suppressed(&manual_send("hall"), &Suppression::DryRun).unwrap();
        journal.save_states([("Paused", "d=2", &firing(3, 1, 1_700_000_000))]).unwrap();
        let mut silences =
            signage_watchdog::journal::SilenceWriter::open_at(&sqlite.location()).unwrap();
        silences
            .add(&signage_watchdog::journal::NewSilence {
                job: Some("Offline".into()),
                socket: None,
                devices: Default::default(),
                author: "anna".into(),
                comment: "maintenance".into(),
                duration: HOUR,
            })
            .unwrap();
    }
    let target = match postgres_location(&db.url, &db.password_file) {
        Location::Postgres(target) => target,
        Location::Sqlite(_) => unreachable!(),
    };
    let Location::Sqlite(file) = sqlite.location() else { unreachable!() };
    let migrated = signage_watchdog::journal::migrate(&file, &target).unwrap();
    assert_eq!(
        migrated.tables,
        [
            ("executions", 3),
            ("attempts", 2),
            ("execution_devices", 1),
            ("job_state", 2),
            ("silences", 1),
            ("held_actions", 0),
            ("mass_outages", 0)
        ]
    );

    let before = sqlite.read();
    let mut after = Journal::open_at(&Location::Postgres(target.clone())).unwrap();
    let all = HistoryFilter::default();
    assert_eq!(after.history(&all).unwrap(), before.history(&all).unwrap());
    assert_eq!(after.load_states::<JobState>().unwrap(), before.load_states::<JobState>().unwrap());
    let now = at(1_700_000_010);
    assert_eq!(after.silences(now, true).unwrap(), before.silences(now, true).unwrap());
    // New rows continue after the copied ids.
    let next = after.begin_send(&manual_send("lobby")).unwrap();
    assert_eq!(next.0, 4);
    drop(after);

    let err = signage_watchdog::journal::migrate(&file, &target).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: the target journal is not empty (table executions has 4 rows); \
             journal migrate only copies into an empty database, so nothing was copied",
            db.url
        )
    );
}

/// How many of the test's jobctl sessions on `db` use TLS, and how many do
/// not.
fn tls_sessions(db: &pg_server::TestDatabase) -> String {
    pg_server::server()
        .unwrap()
        .admin_query_text(
            "postgres",
            &format!(
                "SELECT count(*) FILTER (WHERE s.ssl) || ' tls, ' || \
                 count(*) FILTER (WHERE NOT s.ssl) || ' plain' \
                 FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
                 WHERE a.datname = '{}' AND a.application_name LIKE 'jobctl on %'",
                db.name
            ),
        )
        .unwrap()
}

fn with_tls(db: &pg_server::TestDatabase, tls: TlsMode, ca_file: Option<PathBuf>) -> Location {
    let Location::Postgres(mut target) = postgres_location(&db.url, &db.password_file) else {
        unreachable!()
    };
    target.tls = tls;
    target.ca_file = ca_file;
    Location::Postgres(target)
}

#[test]
fn tls_require_encrypts_verify_full_checks_the_ca_and_a_stranger_is_refused() {
    let Some(Backend::Postgres(db)) = Backend::postgres() else { return };
    let plain = Journal::open_at(&with_tls(&db, TlsMode::Disable, None)).unwrap();
    assert_eq!(tls_sessions(&db), "0 tls, 1 plain");
    drop(plain);

    let required = Journal::open_at(&with_tls(&db, TlsMode::Require, None)).unwrap();
    assert_eq!(tls_sessions(&db), "1 tls, 0 plain");
    drop(required);

    let checked =
        Journal::open_at(&with_tls(&db, TlsMode::VerifyFull, Some(db.ca_file.clone()))).unwrap();
    assert_eq!(tls_sessions(&db), "1 tls, 0 plain");
    drop(checked);

    // A CA that did not sign the server's certificate.
    let dir = tempfile::tempdir().unwrap();
    let stranger = dir.path().join("other-ca.crt");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    std::fs::write(&stranger, other.pem()).unwrap();
    let err = Journal::open_at(&with_tls(&db, TlsMode::VerifyFull, Some(stranger))).unwrap_err();
    let message = whole(&err);
    assert!(
        message.starts_with(&format!(
            "{}: cannot connect to the journal's PostgreSQL database: ",
            db.url
        )),
        "{message}"
    );
    assert!(message.contains("UnknownIssuer"), "{message}");

    let missing = dir.path().join("no-such-ca.crt");
    let err =
        Journal::open_at(&with_tls(&db, TlsMode::VerifyFull, Some(missing.clone()))).unwrap_err();
    assert!(
        whole(&err).starts_with(&format!(
            "{}: ca_file {}: cannot read it: ",
            db.url,
            missing.display()
        )),
        "{}",
        whole(&err)
    );
}
