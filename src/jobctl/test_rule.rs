//! `jobctl test-rule JOB`: evaluate one job now against the live Prometheus
//! and show, device by device, what the daemon would see and do.
//!
//! It reads the daemon's states from the journal (read-only) to say where
//! each device stands, and never changes them. `--send` sends the action
//! once, by hand, to every device whose condition holds now, through the
//! journal and budgets like `jobctl send`. `--replay 7d` (or `--from`)
//! replays the job over Prometheus's history instead (`replay.rs`).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, IsTerminal};
use std::path::Path;

use super::error::Error;
use super::{count, load_rules, manual_outbox, Reader};
use crate::exit::Exit;
use crate::journal::{Journal, JournalError};
use crate::rules::condition::FRESHNESS_QUERY;
use crate::rules::state::{JobState, Phase};
use crate::rules::{Outgoing, Sample, Verdict};

/// `jobctl test-rule` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct TestRuleArgs {
    /// The job's name (as `jobctl check` prints it).
    pub(crate) job: String,
    /// Send the action once to every device whose condition holds now.
    #[arg(long)]
    pub(crate) send: bool,
    /// With --send: do not ask for confirmation.
    #[arg(long, requires = "send")]
    pub(crate) yes: bool,
    /// Replay over history instead of evaluating now.
    #[command(flatten)]
    pub(crate) replay: super::replay::ReplayArgs,
}

pub(super) async fn run(config: &Path, args: TestRuleArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let Some(job) = rules.job(&args.job) else {
        let known = rules.jobs.iter().map(|j| j.name.clone()).collect();
        return Err(Error::UnknownJob { job: args.job, known });
    };
    if args.replay.wanted() {
        return super::replay::run(&rules, job, &args.replay).await;
    }
    let reader = Reader::new(&rules).await?;

    let mut answers: HashMap<String, Vec<Sample>> = HashMap::new();
    let mut failed = 0;
    for query in job.queries() {
        match reader.query(&query).await {
            Ok(samples) => {
                answers.insert(query, samples);
            }
            Err(err) => {
                failed += 1;
                crate::exit::outln!("query {query:?} failed: {err}");
            }
        }
    }
    // Which target's series count when several serve a device; without
    // it, they must all agree, as in a cycle whose freshness query failed.
    if let Ok(samples) = reader.query(FRESHNESS_QUERY).await {
        answers.insert(FRESHNESS_QUERY.to_string(), samples);
    }
    let mut evaluation = job.evaluate(&answers, &rules.device_key);
    let before = evaluation.devices.len();
    if job.only_powered {
        evaluation.devices.retain(|key, _| rules.socket_for(key).is_some());
    }
    let unpowered = before - evaluation.devices.len();
    let states: HashMap<String, JobState> =
        match Journal::open_read_only_at(&rules.journal.location) {
            Ok(journal) => journal
                .load_states()?
                .into_iter()
                .filter(|((j, _), _)| *j == job.name)
                .map(|((_, d), s)| (d, s))
                .collect(),
            // No daemon has run yet: every device is inactive, nothing to show.
            Err(JournalError::Missing { .. } | JournalError::MissingInDatabase { .. }) => {
                HashMap::new()
            }
            Err(err) => return Err(Error::Journal(err)),
        };

    crate::exit::outln!("job {:?}", job.name);
    crate::exit::outln!(
        "  when {} for {}",
        job.condition,
        humantime::format_duration(job.hold_for)
    );
    if unpowered > 0 {
        crate::exit::outln!(
            "  only_powered: {} without a socket left out",
            count(unpowered, "device", "devices")
        );
    }
    if evaluation.devices.is_empty() {
        crate::exit::outln!("\nno device in Prometheus's answers");
    }
    let mut targets: Vec<(String, Outgoing)> = Vec::new();
    let now = jiff::Timestamp::now();
    for (key, verdict) in &evaluation.devices {
        let device = key.to_string();
        match verdict.labels.get("name").filter(|n| !n.is_empty()) {
            Some(name) => crate::exit::outln!("\n{device} ({name})"),
            None => crate::exit::outln!("\n{device}"),
        }
        for seen in &verdict.values {
            crate::exit::outln!("  value:      {} = {}", seen.query, seen.value);
        }
        match (&verdict.verdict, &verdict.unknown_because) {
            (Verdict::Unknown, Some(why)) => crate::exit::outln!("  condition:  unknown ({why})"),
            (verdict, _) => crate::exit::outln!("  condition:  {verdict}"),
        }
        crate::exit::outln!(
            "  state:      {}",
            describe_state(states.get(&device), job.hold_for, now)
        );
        match rules.outgoing(job, key, &verdict.labels) {
            Ok(out) => {
                crate::exit::outln!("  would send: {:?} to {}", out.text, out.to);
                if verdict.verdict == Verdict::True {
                    targets.push((device.clone(), out));
                }
            }
            Err(err) => crate::exit::outln!("  cannot act: {err}"),
        }
    }
    crate::exit::outln!(
        "\n{}, {} with the condition true now",
        count(evaluation.devices.len(), "device", "devices"),
        evaluation.devices.values().filter(|v| v.verdict == Verdict::True).count()
    );

    if args.send {
        return send(&rules, targets, args.yes).await;
    }
    if failed > 0 {
        Ok(Exit::Upstream)
    } else {
        Ok(Exit::Ok)
    }
}

fn describe_state(
    state: Option<&JobState>,
    hold_for: std::time::Duration,
    now: jiff::Timestamp,
) -> String {
    let time = |ts: &jiff::Timestamp| ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let Some(state) = state else { return "inactive (no saved state)".into() };
    let last =
        state.last_action_at.map(|t| format!("; last action {}", time(&t))).unwrap_or_default();
    match &state.phase {
        Phase::Inactive => format!("inactive{last}"),
        Phase::Pending { since, .. } => format!(
            "pending since {} (held {} of {}){last}",
            time(since),
            humantime::format_duration(std::time::Duration::from_secs(
                state.phase.held_at(now).unwrap_or_default().as_secs()
            )),
            humantime::format_duration(hold_for)
        ),
        Phase::Firing { since, episode, actions_taken } => {
            format!(
                "firing since {} (episode {episode}, {}){last}",
                time(since),
                count(*actions_taken as usize, "action", "actions")
            )
        }
        Phase::Resolved { at, episode } => {
            format!("resolved at {} (episode {episode}){last}", time(at))
        }
    }
}

async fn send(
    rules: &crate::rules::RuleSet,
    targets: Vec<(String, Outgoing)>,
    yes: bool,
) -> Result<Exit, Error> {
    if targets.is_empty() {
        crate::exit::outln!("nothing to send: no device has the condition true now");
        return Ok(Exit::Ok);
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Error::Unconfirmed);
        }
        crate::exit::out!("Send {} SMS now? [y/N] ", targets.len());
        crate::exit::flush_stdout();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            crate::exit::outln!("nothing sent");
            return Ok(Exit::Ok);
        }
    }
    let mut outbox = manual_outbox(rules)?;
    let mut exit = Exit::Ok;
    let mut seen: BTreeMap<(String, String), ()> = BTreeMap::new();
    for (_device, out) in targets {
        // One SMS per socket and text, however many of its devices are bad.
        if seen.insert((out.to.address().to_string(), out.text.clone()), ()).is_some() {
            continue;
        }
        let execution = outbox.send_manual(&out).await?;
        // One message not sent does not stop the others: it is reported
        // now, after its own log lines, and sets the exit code.
        if let Err(not_sent) = super::send::outcome(execution) {
            exit = crate::exit::report(&not_sent);
        }
    }
    Ok(exit)
}
