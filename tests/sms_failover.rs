//! Failover between real backends (the HTTP gateway fake on loopback, then
//! an smstools spool), journalled the way the engine does it: one attempt
//! row per backend, the execution ending with the last outcome.

mod support;

use std::path::PathBuf;

use signage_watchdog::journal::{
    Attempt, Channel, ExecutionStatus, HistoryFilter, Journal, Origin, PlannedSend, SendResult,
};
use signage_watchdog::sms::{AttemptChain, Message, SendError, Sender};
use support::fake_gateway::{FakeGateway, Fault};

/// `backends = ["http", "smstools"]`: the gateway first, the spool second.
struct Setup {
    dir: tempfile::TempDir,
    sender: Box<dyn Sender>,
}

impl Setup {
    fn new(gateway: &FakeGateway, retry_uncertain: bool) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outgoing")).unwrap();
        support::write_secret(&dir.path().join("sms.key"), gateway.key());
        let text = format!(
            "[sms]\nbackends = [\"http\", \"smstools\"]\nretry_uncertain = {retry_uncertain}\n\
             [sms.http]\npreset = \"gateway\"\nurl = \"{}\"\nkey_file = \"sms.key\"\ntimeout = \"300ms\"\nconnect_timeout = \"100ms\"\n\
             [sms.smstools]\noutgoing = \"outgoing\"\n",
            gateway.url()
        );
        let sender = support::sms::sender(&text, dir.path());
        Setup { dir, sender }
    }

    fn outgoing(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("outgoing"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

/// The message every test sends.
fn message() -> Message {
    support::sms::message("#12#0#1#1#")
}

/// Sends through the chain as the engine does, journalling every attempt:
/// `begin_send`, then per attempt `finish_send`, and `mark_sending` before
/// the next backend tries.
async fn send_journalled(sender: &dyn Sender, journal: &mut Journal) -> Vec<Attempt> {
    let message = message();
    let planned = PlannedSend {
        channel: Channel::Sms,
        origin: Origin::Manual,
        socket: "lobby".into(),
        phone: message.phone.clone(),
        text: message.text.clone(),
    };
    let id = journal.begin_send(&planned).unwrap();
    let mut chain = AttemptChain::new(sender, &message);
    while let Some(attempt) = chain.next_attempt().await {
        journal.finish_send(id, &SendResult::from(&attempt)).unwrap();
        if chain.has_next() {
            journal.mark_sending(id).unwrap();
        }
    }
    let history = journal.history(&HistoryFilter::default()).unwrap();
    assert_eq!(history.len(), 1);
    let execution = history.into_iter().next().unwrap();
    let last = execution.attempts.last().unwrap();
    assert_eq!(
        (execution.status, execution.backend.as_deref()),
        (last.outcome, Some(last.backend.as_str()))
    );
    execution.attempts
}

fn summary(attempts: &[Attempt]) -> Vec<(&str, ExecutionStatus)> {
    attempts.iter().map(|a| (a.backend.as_str(), a.outcome)).collect()
}

#[tokio::test]
async fn a_definite_failure_goes_to_the_next_backend_and_both_attempts_are_journalled() {
    let gateway = FakeGateway::start().await;
    gateway.fail_next(1, Fault::ServerError);
    let setup = Setup::new(&gateway, false);
    let mut journal = Journal::open_in_memory().unwrap();

    let attempts = send_journalled(setup.sender.as_ref(), &mut journal).await;

    assert_eq!(
        summary(&attempts),
        [("http", ExecutionStatus::Failed), ("smstools", ExecutionStatus::Sent)]
    );
    assert!(attempts[0].detail.as_deref().unwrap().contains("500"), "{:?}", attempts[0].detail);
    let files = setup.outgoing();
    assert_eq!(files.len(), 1);
    assert_eq!(attempts[1].detail.as_deref(), files[0].file_name().unwrap().to_str());
    assert!(gateway.sent().is_empty());
}

#[tokio::test]
async fn an_uncertain_outcome_is_not_sent_again_elsewhere() {
    let gateway = FakeGateway::start().await;
    gateway.fail_next(1, Fault::Hang);
    let setup = Setup::new(&gateway, false);
    let mut journal = Journal::open_in_memory().unwrap();

    let attempts = send_journalled(setup.sender.as_ref(), &mut journal).await;

    assert_eq!(summary(&attempts), [("http", ExecutionStatus::Uncertain)]);
    assert!(setup.outgoing().is_empty(), "the spool must not get a second copy");

    // The whole chain, for callers that want only the outcome, says why.
    gateway.fail_next(1, Fault::Hang);
    match setup.sender.send(&message()).await {
        Err(SendError::Uncertain { reason }) => {
            assert!(reason.starts_with("http: "), "{reason}");
            assert!(
                reason.ends_with("; not handed to smstools (retry_uncertain is off)"),
                "{reason}"
            );
        }
        other => panic!("expected an uncertain outcome, got {other:?}"),
    }
    assert!(setup.outgoing().is_empty());
}

#[tokio::test]
async fn with_retry_uncertain_the_next_backend_sends_it_too() {
    let gateway = FakeGateway::start().await;
    gateway.fail_next(1, Fault::Hang);
    let setup = Setup::new(&gateway, true);
    let mut journal = Journal::open_in_memory().unwrap();

    let attempts = send_journalled(setup.sender.as_ref(), &mut journal).await;

    assert_eq!(
        summary(&attempts),
        [("http", ExecutionStatus::Uncertain), ("smstools", ExecutionStatus::Sent)]
    );
    assert_eq!(setup.outgoing().len(), 1);
}

#[tokio::test]
async fn a_working_first_backend_is_the_only_attempt() {
    let gateway = FakeGateway::start().await;
    let setup = Setup::new(&gateway, false);
    let mut journal = Journal::open_in_memory().unwrap();

    let attempts = send_journalled(setup.sender.as_ref(), &mut journal).await;

    assert_eq!(summary(&attempts), [("http", ExecutionStatus::Sent)]);
    assert_eq!(gateway.sent().len(), 1);
    assert!(setup.outgoing().is_empty());
    assert_eq!(setup.sender.name(), "http,smstools");
}
