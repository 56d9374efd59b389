//! How long `jobctl report` takes to count a large journal: 100,000
//! executions (1,000 devices under 4 jobs, with results, refusals and
//! holds), counted three times, the median printed.
//!
//! `cargo bench --bench report` prints the figure the README quotes, and
//! fails when counting takes half a second or more: a report reads the
//! period's rows in a few grouped passes, never once per device.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use signage_watchdog::clock::ManualClock;
use signage_watchdog::journal::{
    ActionRef, ActionResult, Channel, EncodedState, HeldAction, Journal, NewSilence, Origin,
    PlannedSend, SendResult, SilenceWriter,
};

/// Executions written.
const EXECUTIONS: usize = 100_000;
/// Devices they are spread over.
const DEVICES: usize = 1_000;
/// Runs; the median is reported.
const RUNS: usize = 3;
/// The target.
const TARGET: Duration = Duration::from_millis(500);

#[derive(serde::Serialize, serde::Deserialize)]
struct Firing;

impl signage_watchdog::journal::JournalState for Firing {
    fn phase_name(&self) -> &'static str {
        "firing"
    }
}

fn main() -> ExitCode {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let start = Timestamp::from_second(1_800_000_000).unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let mut journal = Journal::open(&path).unwrap().with_clock(clock.clone());
    let silence = NewSilence {
        job: None,
        socket: None,
        devices: Default::default(),
        author: "bench".into(),
        comment: "holds one action in a hundred".into(),
        duration: Duration::from_secs(3600),
    };
    let silence = SilenceWriter::open(&path).unwrap().add(&silence).unwrap().id;
    let writing = Instant::now();
    journal
        .batch("filling the bench journal", |journal| {
            for i in 0..EXECUTIONS {
                clock.set(start + SignedDuration::from_secs(i as i64 * 20));
                let device = format!("{{platform_id=\"12\", device_id=\"{}\"}}", i % DEVICES);
                let job = format!("job {}", i % 4);
                let episode = (i / DEVICES) as u64 + 1;
                let planned = PlannedSend {
                    origin: Origin::Rule {
                        job: job.clone(),
                        device_key: device.clone(),
                        episode,
                        attempt: 1,
                        trigger_value: Some(0.0),
                        state_after: EncodedState::new(&Firing),
                        also_for: Vec::new(),
                    },
                    channel: Channel::Sms,
                    socket: format!("socket {}", i % DEVICES),
                    phone: "+79991234567".into(),
                    text: "#12#0#1#1#".into(),
                };
                if i % 10 == 9 {
                    journal.record_gave_up(&planned, "limit reached").unwrap();
                    continue;
                }
                let id = journal.begin_send(&planned).unwrap();
                let sent = SendResult::Sent { backend: "http".into(), reference: None };
                journal.finish_send(id, &sent).unwrap();
                let action = ActionRef { job, device_key: device, episode, attempt: 1 };
                let (result, after) = match i % 3 {
                    0 => {
                        (ActionResult::Recovered, Some(Duration::from_secs(60 + (i % 600) as u64)))
                    }
                    1 => (ActionResult::NotRecovered, None),
                    _ => (ActionResult::Unverified, None),
                };
                journal.record_result(&action, result, after).unwrap();
                if i % 100 == 0 {
                    let held = HeldAction {
                        job: action.job.clone(),
                        device_key: action.device_key.clone(),
                        episode: episode + 1_000,
                        attempt: 1,
                        silence,
                    };
                    journal.record_held(&[held]).unwrap();
                }
            }
        })
        .unwrap();
    let written = writing.elapsed();
    drop(journal);
    let reader = Journal::open_read_only(&path).unwrap();
    let mut times = Vec::with_capacity(RUNS);
    let mut pairs = 0;
    for _ in 0..RUNS {
        let counting = Instant::now();
        pairs = reader.activity_since(start).unwrap().len();
        times.push(counting.elapsed());
    }
    times.sort();
    let median = times[RUNS / 2];
    println!(
        "{EXECUTIONS} executions ({pairs} job-device pairs) written in {:.1} s; counted in {:.0} ms (median of {RUNS})",
        written.as_secs_f64(),
        median.as_secs_f64() * 1000.0
    );
    if median >= TARGET {
        eprintln!("counting took {median:?}, the target is under {TARGET:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
