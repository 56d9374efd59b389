//! Budgets: a message over a budget is journalled as suppressed with the
//! reason, never sent and never silently dropped, and the count survives a
//! restart because it is read from the journal.

use std::sync::Arc;

use signage_watchdog::clock::SystemClock;
use signage_watchdog::engine::{EngineOptions, Outbox};
use signage_watchdog::journal::{ExecutionStatus, HistoryFilter, Journal};
use signage_watchdog::rules::{Budgets, Outgoing, Recipient};
use signage_watchdog::sms::log::LogSender;
use signage_watchdog::sms::phone::PhoneNumber;

fn outbox(path: &std::path::Path, budgets: Budgets) -> Outbox {
    let options = EngineOptions { budgets, ..EngineOptions::default() };
    Outbox::new(
        Journal::open(path).unwrap(),
        Arc::new(LogSender::new()),
        Arc::new(SystemClock),
        options,
    )
}

/// The command `text` to socket `socket` at `phone`.
fn sms(socket: &str, phone: &str, text: &str) -> Outgoing {
    let phone = PhoneNumber::parse(phone).unwrap();
    Outgoing { to: Recipient::Sms { socket: Some(socket.to_string()), phone }, text: text.into() }
}

#[tokio::test]
async fn the_hourly_cap_suppresses_and_journals_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let budgets = Budgets { socket_hour: Some(2), global_day: Some(3), ..Budgets::default() };
    let mut first = outbox(&path, budgets);
    for _ in 0..2 {
        let sent = first.send_manual(&sms("lobby", "+79991234567", "#01#0#")).await.unwrap();
        assert_eq!(sent.status, ExecutionStatus::Sent);
    }
    let over = first.send_manual(&sms("lobby", "+79991234567", "#01#0#")).await.unwrap();
    assert_eq!(over.status, ExecutionStatus::Suppressed);
    assert_eq!(
        over.detail.as_deref(),
        Some("budget of 2 messages per socket per hour reached (socket lobby: 2)")
    );
    // Another socket has its own hourly budget, but the global daily one counts all.
    let hall = first.send_manual(&sms("hall", "+79997654321", "#01#0#")).await.unwrap();
    assert_eq!(hall.status, ExecutionStatus::Sent);
    drop(first);

    let mut restarted = outbox(&path, budgets);
    let after = restarted.send_manual(&sms("hall", "+79997654321", "#02#0#")).await.unwrap();
    assert_eq!(after.status, ExecutionStatus::Suppressed, "the cap survives a restart");
    assert_eq!(
        after.detail.as_deref(),
        Some("budget of 3 messages in all per day reached (all sockets: 3)")
    );
    let journal = Journal::open_read_only(&path).unwrap();
    let suppressed = journal
        .history(&HistoryFilter {
            status: Some(ExecutionStatus::Suppressed),
            ..HistoryFilter::default()
        })
        .unwrap();
    assert_eq!(suppressed.len(), 2, "every suppressed message is journalled");
    assert!(suppressed.iter().all(|e| e.attempts.is_empty()), "nothing was handed to a backend");
}
