//! The outbox: everything between "an action is due" and "its outcome is
//! journalled", for the engine's rule actions and for the messages a person
//! sends (`jobctl send`, `test-rule --send`) alike.
//!
//! It keeps the crate's central promise. A message is journalled *before* it
//! leaves (status `planned`), together with the job state that decided it,
//! and marked `sending` only when a backend is about to start the I/O that
//! may make it leave (after a modem's lock, say: [`crate::sms::Departure`]),
//! so a restart sends what was still `planned` and never what was `sending`;
//! one over a budget (counted from the journal, so it survives restarts) or
//! sent in a dry run is journalled too, and never leaves (a rule's action
//! held by a budget stays due: the engine hands it over again each cycle,
//! and it is journalled as `suppressed` the first time only). A message that may
//! leave is handed to its channel in a task of its own, retried with backoff
//! only when it certainly did not leave, and every backend's attempt becomes
//! one row of the journal as it ends. The writes of tasks that end together
//! share a commit (`SendWrites`).
//!
//! # Channels
//!
//! A message goes out over the channel its [`Recipient`] names: SMS through
//! the configured [`Sender`] (one backend or a failover chain), or a webhook
//! (`super::webhook`: a signed HTTP POST). Each channel has one arm in each
//! `match` on it here: how its text is shaped ([`Outbox::shape`]), what the
//! journal's `socket` and `phone` columns hold for it ([`journal_row`]), and
//! how one try delivers it ([`Delivery`]). The journal before the send and
//! the retries are the same for both; budgets count SMS only, and the SMS
//! backends never see a webhook.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;
use crate::journal::{
    Channel, Execution, ExecutionId, Journal, JournalError, Origin, PlannedSend, SendResult,
    Suppression,
};
use crate::rules::{Budgets, Outgoing, Recipient, RuleSet};
use crate::sms::{
    text, AttemptChain, AttemptOutcome, Departure, DepartureFuture, Message, SendError,
    SendOutcome, Sender,
};

use super::metrics::EngineMetrics;
use super::webhook::{Webhooks, BACKEND as WEBHOOK_BACKEND};

/// How failed sends are retried. Only definite failures are retried; a send
/// that may have left is never repeated automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRetry {
    /// Attempts per message, the first included.
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub first_delay: Duration,
}

impl Default for SendRetry {
    fn default() -> SendRetry {
        SendRetry { attempts: 3, first_delay: Duration::from_secs(15) }
    }
}

impl SendRetry {
    /// For commands a person waits on (`jobctl send`, `test-rule --send`):
    /// the same three attempts, seconds rather than minutes apart.
    pub(crate) const INTERACTIVE: SendRetry =
        SendRetry { attempts: 3, first_delay: Duration::from_secs(2) };
}

/// What the engine does with a due action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Journal and send.
    Live,
    /// Send nothing, and leave the journal as a live run will want it:
    /// each due message becomes a `dry_run` row for `history`, which
    /// neither budgets nor the state machine read, and the job states are
    /// not saved (`jobctl run --dry-run`).
    DryRun,
}

/// Options that are not part of the rules file.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    /// Live or dry run.
    pub mode: Mode,
    /// Retries of failed sends.
    pub retry: SendRetry,
    /// Message budgets.
    pub budgets: Budgets,
    /// The most segments a notification may take (`[sms] max_segments`).
    pub max_segments: usize,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            mode: Mode::Live,
            retry: SendRetry::default(),
            budgets: Budgets::default(),
            max_segments: crate::sms::DEFAULT_MAX_SEGMENTS,
        }
    }
}

/// Longest text a message may have: ten segments of GSM-7. Socket commands
/// are held to one segment at check time; this bounds notifications whose
/// labels came from metrics.
pub const MAX_TEXT_CHARS: usize = 1530;

/// A message to journal and, unless it is held back, to send.
pub(super) struct Request {
    /// Why it is sent: a rule's action (with the state it leaves the job
    /// in), or a person.
    pub(super) origin: Origin,
    /// Where it goes and its text, before the outbox shapes it.
    pub(super) outgoing: Outgoing,
    /// Who asks, to begin its log lines: `job "offline": device …`, `manual`.
    pub(super) by: String,
}

/// A journalled message that may leave: give it to [`Outbox::deliver`].
pub(super) struct Dispatch {
    id: ExecutionId,
    /// Where it goes, and its text as it leaves.
    outgoing: Outgoing,
    /// The message in words, for logs.
    what: String,
}

impl Dispatch {
    /// The message in words, for logs: who asked, its text and where it goes.
    pub(super) fn what(&self) -> &str {
        &self.what
    }

    /// Its execution row.
    pub(super) fn id(&self) -> ExecutionId {
        self.id
    }

    /// Where it goes and its text as it leaves.
    pub(super) fn outgoing(&self) -> (&Recipient, &str) {
        (&self.outgoing.to, &self.outgoing.text)
    }
}

/// What became of one message given to the journal: its dispatch when it may
/// leave, why it may not (budget, dry run), or why the journal did not take
/// it (then it did not leave).
pub(super) type Journalled = Result<Result<Dispatch, NotSent>, JournalError>;

/// A message journalled that may not leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotSent {
    /// A budget holds it back. A rule's action stays due, so the same action
    /// comes back each cycle while the budget is spent: it is journalled
    /// (`suppressed`) the first time only, and `id` is that row.
    OverBudget {
        /// The `suppressed` row that records it.
        id: ExecutionId,
        /// Whether that row was written now (not in an earlier cycle).
        journalled_now: bool,
    },
    /// `--dry-run`: journalled as `dry_run` under this id.
    DryRun(ExecutionId),
}

impl NotSent {
    /// The execution that records it.
    pub(super) fn id(self) -> ExecutionId {
        match self {
            NotSent::OverBudget { id, .. } | NotSent::DryRun(id) => id,
        }
    }
}

/// Where messages go: journalled (or suppressed by budget or dry run), then
/// handed to their channel in tasks of their own, retried within limits,
/// each attempt's outcome journalled. Shared by the engine and the manual
/// commands (`jobctl send`, `test-rule --send`), so every message obeys the
/// same journal and budgets.
pub struct Outbox {
    journal: Arc<Mutex<Journal>>,
    /// The send tasks' writes, committed in groups.
    send_writes: Arc<SendWrites>,
    /// The SMS channel: the configured backend, or a failover chain.
    sms: Arc<dyn Sender>,
    /// The webhook channel: the rules' `[[webhooks]]`.
    webhooks: Arc<Webhooks>,
    clock: Arc<dyn Clock>,
    options: EngineOptions,
    sends: tokio::task::JoinSet<()>,
    /// Set when jobctl stops: send tasks waiting to retry give up at once
    /// rather than hold the shutdown for their backoff.
    stopping: tokio::sync::watch::Sender<bool>,
    metrics: Arc<EngineMetrics>,
}

impl Outbox {
    /// An outbox over `journal` (its clock set to `clock`) that sends SMS
    /// through `sender`.
    pub fn new(
        journal: Journal,
        sender: Arc<dyn Sender>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Outbox {
        let journal = Arc::new(Mutex::new(journal.with_clock(clock.clone())));
        Outbox {
            send_writes: Arc::new(SendWrites { journal: journal.clone(), queue: Mutex::default() }),
            journal,
            sms: sender,
            webhooks: Arc::new(Webhooks::new(Vec::new(), ".".into(), clock.clone())),
            clock,
            options,
            sends: tokio::task::JoinSet::new(),
            stopping: tokio::sync::watch::Sender::new(false),
            metrics: Arc::new(EngineMetrics::new()),
        }
    }

    /// The metrics the outbox counts its messages in, shared with the
    /// engine that owns it.
    pub(super) fn metrics(&self) -> Arc<EngineMetrics> {
        self.metrics.clone()
    }

    /// Budgets from now on (the rules were reloaded).
    pub(super) fn set_budgets(&mut self, budgets: Budgets) {
        self.options.budgets = budgets;
    }

    /// The webhooks of `rules` from now on. Deliveries under way finish
    /// with the webhooks they started with.
    pub(super) fn set_webhooks(&mut self, rules: &RuleSet) {
        let hooks = rules.webhooks.clone();
        self.webhooks = Arc::new(Webhooks::new(hooks, rules.base_dir.clone(), self.clock.clone()));
    }

    /// The SMS sender and segment limit from now on (`[sms]` was reloaded).
    /// Sends under way finish with the sender they started with.
    pub(super) fn replace_sms(&mut self, sender: Arc<dyn Sender>, max_segments: usize) {
        self.sms = sender;
        self.options.max_segments = max_segments;
    }

    /// Settles the sends a previous run left unfinished (see
    /// [`Journal::recover_in_flight`]) and logs each: a message whose I/O
    /// had started may have left, so it is marked uncertain and never sent
    /// again; one still `planned` certainly did not leave, and is sent now.
    pub(super) async fn recover_in_flight(&mut self) -> Result<(), JournalError> {
        let (recovered, planned) = blocking(&self.journal, |journal| {
            Ok::<_, JournalError>((journal.recover_in_flight()?, journal.planned_sends()?))
        })
        .await?;
        for execution in planned {
            let what = format!(
                "execution {} ({:?} to {} {}), decided before jobctl stopped and not yet sent",
                execution.id, execution.text, execution.socket, execution.phone
            );
            tracing::info!("{what}: sending it now");
            let delivery = match execution.channel {
                Channel::Sms => Delivery::Sms {
                    sender: self.sms.clone(),
                    message: Message { phone: execution.phone, text: execution.text },
                },
                Channel::Webhook => Delivery::Webhook {
                    webhooks: self.webhooks.clone(),
                    name: execution.socket,
                    body: execution.text,
                },
            };
            self.spawn_delivery(execution.id, delivery, what);
        }
        for execution in &recovered {
            tracing::warn!(
                "execution {} ({:?} to {} {}) was in flight when jobctl stopped; marked {}: it is not sent again",
                execution.id,
                execution.text,
                execution.socket,
                execution.phone,
                execution.status
            );
        }
        Ok(())
    }

    /// Journals messages — each suppressed (budget, dry run) or about to
    /// leave — in one batch, so that they cost one commit, and returns for
    /// each its dispatch when it may leave, or why it may not ([`NotSent`]),
    /// or why the journal did not take it. Budgets count the batch's earlier
    /// messages. A rule's action a budget already held back in an earlier
    /// cycle (same job, devices, episode and action number) is not
    /// journalled again. The error is the batch's own: its
    /// commit failed and none of the messages was kept.
    pub(super) async fn journal_messages(
        &self,
        requests: Vec<Request>,
    ) -> Result<Vec<Journalled>, JournalError> {
        let budgets = self.options.budgets;
        let mode = self.options.mode;
        let now = self.clock.now();
        let mut planned = Vec::with_capacity(requests.len());
        let mut leaving = Vec::with_capacity(requests.len());
        for Request { origin, outgoing, by } in requests {
            let outgoing = self.shape(outgoing);
            let what = format!("{by}: {:?} to {}", outgoing.text, outgoing.to);
            planned.push(journal_row(origin, &outgoing));
            leaving.push((outgoing, what));
        }
        let recorded = blocking(&self.journal, move |journal| {
            journal.batch("journalling messages", |journal| {
                let record = |planned: &PlannedSend| {
                    // Budgets are SMS budgets: a webhook costs nothing.
                    let over = match planned.channel {
                        Channel::Sms => over_budget(journal, &budgets, &planned.socket, now)?,
                        Channel::Webhook => None,
                    };
                    match (over, mode) {
                        (Some(reason), _) => {
                            if let Some(id) = journal.earlier_suppression(planned)? {
                                let held = NotSent::OverBudget { id, journalled_now: false };
                                return Ok::<_, JournalError>((Err(held), reason));
                            }
                            let why = Suppression::OverBudget { reason: reason.clone() };
                            let id = journal.record_suppressed(planned, &why)?;
                            Ok((Err(NotSent::OverBudget { id, journalled_now: true }), reason))
                        }
                        (None, Mode::DryRun) => {
                            let id = journal.record_suppressed(planned, &Suppression::DryRun)?;
                            Ok((Err(NotSent::DryRun(id)), String::new()))
                        }
                        (None, Mode::Live) => Ok((Ok(journal.plan_send(planned)?), String::new())),
                    }
                };
                planned.iter().map(record).collect::<Vec<_>>()
            })
        })
        .await?;
        Ok(recorded
            .into_iter()
            .zip(leaving)
            .map(|(recorded, (outgoing, what))| {
                let (recorded, reason) = recorded?;
                let outcome = |label| match outgoing.to {
                    Recipient::Sms { .. } => self.metrics.sms_outcome(label),
                    Recipient::Webhook { .. } => self.metrics.webhook_outcome(label),
                };
                match recorded {
                    Ok(id) => return Ok(Ok(Dispatch { id, outgoing, what })),
                    Err(NotSent::DryRun(id)) => {
                        outcome("dry_run");
                        tracing::warn!("{what}: dry run: not sent (execution {id})");
                    }
                    Err(NotSent::OverBudget { id, journalled_now: true }) => {
                        outcome("suppressed");
                        tracing::warn!("{what}: suppressed: {reason} (execution {id})");
                    }
                    Err(NotSent::OverBudget { id, journalled_now: false }) => {
                        tracing::debug!("{what}: still suppressed: {reason} (execution {id})");
                    }
                }
                Ok(recorded.map(|id| Dispatch { id, outgoing, what }))
            })
            .collect())
    }

    /// Hands a journalled message to its channel, in a task of its own that
    /// retries and journals each attempt; [`Outbox::finish_sends`] waits for
    /// it.
    pub(super) fn deliver(&mut self, dispatch: Dispatch) {
        let Dispatch { id, outgoing: Outgoing { to, text }, what } = dispatch;
        let delivery = match to {
            Recipient::Sms { phone, .. } => Delivery::Sms {
                sender: self.sms.clone(),
                message: Message { phone: phone.as_str().to_string(), text },
            },
            Recipient::Webhook { name, .. } => {
                Delivery::Webhook { webhooks: self.webhooks.clone(), name, body: text }
            }
        };
        self.spawn_delivery(id, delivery, what);
    }

    /// Delivers execution `id` (journalled `planned`) in a task of its own.
    fn spawn_delivery(&mut self, id: ExecutionId, delivery: Delivery, what: String) {
        let task =
            SendTask { id, what, writes: self.send_writes.clone(), metrics: self.metrics.clone() };
        let stopping = self.stopping.subscribe();
        self.sends.spawn(send_with_retries(task, delivery, self.options.retry, stopping));
    }

    /// The message as it leaves its channel. An SMS's text is sanitised and,
    /// for a notification to a person (not a socket command, which `check`
    /// holds to one segment), cut to `max_segments`. Rule actions and manual
    /// sends alike.
    fn shape(&self, outgoing: Outgoing) -> Outgoing {
        let Outgoing { to, text } = outgoing;
        let text = match &to {
            Recipient::Sms { socket, .. } => {
                let text = text::sanitize(&text, false, MAX_TEXT_CHARS);
                if socket.is_some() {
                    text
                } else {
                    text::fit_segments(&text, self.options.max_segments)
                }
            }
            // A payload the engine made, JSON: it leaves as it is.
            Recipient::Webhook { .. } => text,
        };
        Outgoing { to, text }
    }

    /// Sends a message a person asked for (`jobctl send`, `test-rule --send`)
    /// through the same journal, budgets and retries, and waits for the
    /// outcome.
    pub async fn send_manual(&mut self, outgoing: &Outgoing) -> Result<Execution, JournalError> {
        let request =
            Request { origin: Origin::Manual, outgoing: outgoing.clone(), by: "manual".into() };
        let journalled = self.journal_messages(vec![request]).await?;
        let journalled = journalled.into_iter().next().expect("one outcome per message");
        let id = match journalled? {
            Ok(dispatch) => {
                let id = dispatch.id;
                tracing::info!("{}: sending", dispatch.what);
                self.deliver(dispatch);
                self.finish_sends().await;
                id
            }
            Err(not_sent) => not_sent.id(),
        };
        blocking(&self.journal, move |journal| journal.execution(id)).await
    }

    /// The journal, for read-only views in the same process (and for the
    /// engine, which saves its job states in it).
    pub(crate) fn journal(&self) -> Arc<Mutex<Journal>> {
        self.journal.clone()
    }

    /// Forgets the send tasks that have finished.
    pub(super) fn reap_finished(&mut self) {
        while self.sends.try_join_next().is_some() {}
    }

    /// Waits for every send in progress to finish (retries included).
    pub(crate) async fn finish_sends(&mut self) {
        while self.sends.join_next().await.is_some() {}
    }

    /// Retries not yet made are not made: a send task waiting for one ends
    /// now, its message journalled with its last attempt's outcome. Attempts
    /// under way go on (see [`Outbox::finish_sends`]).
    pub(crate) fn stop_retries(&self) {
        self.stopping.send_replace(true);
    }
}

/// The journal's row for a message. Its columns were made for SMS: the
/// socket's name (`-` for a person) and the phone number. Another channel
/// says here what it journals in their place.
fn journal_row(origin: Origin, outgoing: &Outgoing) -> PlannedSend {
    match &outgoing.to {
        Recipient::Sms { socket, phone } => PlannedSend {
            channel: Channel::Sms,
            origin,
            socket: socket.clone().unwrap_or_else(|| "-".to_string()),
            phone: phone.as_str().to_string(),
            text: outgoing.text.clone(),
        },
        Recipient::Webhook { name, url } => PlannedSend {
            channel: Channel::Webhook,
            origin,
            socket: name.clone(),
            phone: url.clone(),
            text: outgoing.text.clone(),
        },
    }
}

/// The budget a message to `socket` would go over now, in words, if any
/// (what the outbox suppresses a message for; `jobctl explain` asks too).
pub(crate) fn over_budget(
    journal: &Journal,
    budgets: &Budgets,
    socket: &str,
    now: jiff::Timestamp,
) -> Result<Option<String>, JournalError> {
    budgets.exceeded(socket, now, |scope, since| journal.count_sent_since(scope, since))
}

/// What a send task journals as it goes.
enum SendWrite {
    /// A backend starts the I/O that may make the message leave (the first
    /// attempt, a retry, or the next backend): [`Journal::mark_sending`].
    Sending(ExecutionId),
    /// One backend's attempt ended: [`Journal::finish_send`].
    Outcome(ExecutionId, SendResult),
}

/// A queued [`SendWrite`] and where to say how it went.
type QueuedWrite = (SendWrite, tokio::sync::oneshot::Sender<Result<(), Arc<JournalError>>>);

/// The send tasks' journal writes, committed in groups.
///
/// Each commit waits for the disk, and the messages of a busy cycle are
/// sent at about the same time, so their outcomes arrive together: written
/// one by one, dozens of commits would queue on the journal's lock, and the
/// next cycle's state save behind them. A task therefore queues its write
/// and waits until it is committed; whichever task gets the journal first
/// commits every write queued by then in one batch. A task still goes on
/// only once its write is durable.
struct SendWrites {
    journal: Arc<Mutex<Journal>>,
    queue: Mutex<Vec<QueuedWrite>>,
}

impl SendWrites {
    /// Journals `write`, returning once it is committed.
    async fn write(self: &Arc<Self>, write: SendWrite) -> Result<(), Arc<JournalError>> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.queue.lock().expect("send write queue poisoned").push((write, answer));
        let writes = self.clone();
        blocking(&self.journal, move |journal| writes.commit_queued(journal)).await;
        // Our write was queued before this task took the journal, so it was
        // committed either just now or by a task that held the journal
        // before, and answered before letting it go.
        answered.await.expect("a queued write is always answered")
    }

    /// Commits every queued write in one batch, each answered with how it
    /// went. Called holding the journal.
    fn commit_queued(&self, journal: &mut Journal) {
        let queued = std::mem::take(&mut *self.queue.lock().expect("send write queue poisoned"));
        if queued.is_empty() {
            return;
        }
        let (writes, answers): (Vec<SendWrite>, Vec<_>) = queued.into_iter().unzip();
        let results = journal.batch("recording send outcomes", |journal| {
            let write = |write: &SendWrite| match write {
                SendWrite::Sending(id) => journal.mark_sending(*id),
                SendWrite::Outcome(id, result) => journal.finish_send(*id, result),
            };
            writes.iter().map(write).collect::<Vec<_>>()
        });
        // A task that is gone no longer needs its answer.
        match results {
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result.map_err(Arc::new));
                }
            }
            Err(err) => {
                let err = Arc::new(err);
                for answer in answers {
                    let _ = answer.send(Err(err.clone()));
                }
            }
        }
    }
}

/// A journalled message on its way: what its channel's backend takes, and
/// that backend. Every channel's try ends in the same terms (delivered,
/// certainly not sent, maybe sent), so the retries around it are the same.
enum Delivery {
    /// An SMS, through the configured sender.
    Sms { sender: Arc<dyn Sender>, message: Message },
    /// A JSON payload, posted to the named webhook.
    Webhook { webhooks: Arc<Webhooks>, name: String, body: String },
}

/// What a send task needs besides the message: its execution, its words
/// for logs, and where it journals and counts.
struct SendTask {
    id: ExecutionId,
    what: String,
    writes: Arc<SendWrites>,
    metrics: Arc<EngineMetrics>,
}

/// How a send task hears that a backend's I/O starts: it journals the
/// message `sending` and lets the backend go on once that is committed.
struct JournalledDeparture<'a> {
    id: ExecutionId,
    writes: &'a Arc<SendWrites>,
}

impl Departure for JournalledDeparture<'_> {
    fn leaving(&self) -> DepartureFuture<'_> {
        Box::pin(async move {
            self.writes
                .write(SendWrite::Sending(self.id))
                .await
                .map_err(|err| crate::error::with_causes(&*err))
        })
    }
}

impl Delivery {
    /// One try: the message goes through its channel's backends (one, or
    /// several with failover), each attempt journalled as one row, under the
    /// backend's own name, as it ends; each backend marks it `sending`
    /// right before its I/O starts ([`JournalledDeparture`]). Returns what
    /// the try came to.
    async fn try_once(&self, task: &SendTask) -> SendOutcome {
        let SendTask { id, what, writes, metrics } = task;
        let id = *id;
        match self {
            Delivery::Sms { sender, message } => {
                let departure = JournalledDeparture { id, writes };
                let mut chain = AttemptChain::new(sender.as_ref(), message).departing(&departure);
                while let Some(tried) = chain.next_attempt().await {
                    let label = match &tried.outcome {
                        Ok(_) => "sent",
                        Err(err) => err.label(),
                    };
                    metrics.sms_outcome(label);
                    let result = SendResult::from(&tried);
                    if let Err(err) = writes.write(SendWrite::Outcome(id, result)).await {
                        tracing::error!(
                            "{what}: cannot journal the outcome of execution {id}: {}",
                            crate::error::with_causes(&*err)
                        );
                    }
                    if let (Err(err), Some(next)) = (&tried.outcome, chain.next_backend()) {
                        tracing::warn!("{what}: {}: {err}; handing it to {next}", tried.backend);
                    }
                }
                chain.outcome().expect("a chain makes at least one attempt")
            }
            Delivery::Webhook { webhooks, name, body } => {
                let departure = JournalledDeparture { id, writes };
                let outcome = webhooks.post(name, body, id, &departure).await;
                metrics.webhook_outcome(match &outcome {
                    Ok(_) => "sent",
                    Err(err) => err.label(),
                });
                let result = SendResult::from(&AttemptOutcome {
                    backend: WEBHOOK_BACKEND.to_string(),
                    outcome: outcome.clone(),
                });
                if let Err(err) = writes.write(SendWrite::Outcome(id, result)).await {
                    tracing::error!(
                        "{what}: cannot journal the outcome of execution {id}: {}",
                        crate::error::with_causes(&*err)
                    );
                }
                outcome
            }
        }
    }
}

/// A send task: tries the delivery again, backing off, while it certainly
/// did not leave, up to `retry.attempts` tries, each journalled as it goes.
/// A try that may have left is never repeated, and no retry is made once
/// jobctl is stopping.
async fn send_with_retries(
    task: SendTask,
    delivery: Delivery,
    retry: SendRetry,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let (id, what) = (task.id, task.what.as_str());
    let attempts = retry.attempts.max(1);
    for attempt in 1..=attempts {
        if attempt > 1 {
            let delay = retry.first_delay.saturating_mul(1 << (attempt - 2).min(16));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopping.wait_for(|&stop| stop) => {
                    tracing::warn!(
                        "{what}: retry {attempt} not made: jobctl is stopping; the journal keeps the last attempt's outcome"
                    );
                    return;
                }
            }
        }
        let outcome = delivery.try_once(&task).await;
        let done = !matches!(outcome, Err(SendError::Definite { .. })) || attempt == attempts;
        match &outcome {
            Ok(delivered) => {
                let reference = delivered
                    .reference
                    .as_deref()
                    .map(|r| format!(", reference {r}"))
                    .unwrap_or_default();
                tracing::info!(
                    "{what}: sent via {}{reference} (execution {id})",
                    delivered.backend
                );
            }
            Err(SendError::Definite { reason }) if !done => {
                tracing::warn!("{what}: not sent: {reason}; attempt {attempt} of {attempts}, trying again (execution {id})");
            }
            Err(SendError::Definite { reason }) => {
                tracing::error!("{what}: not sent after {attempts} attempts: {reason}; journalled as failed (execution {id})");
            }
            Err(SendError::Uncertain { reason }) => {
                tracing::error!("{what}: may have been sent: {reason}; journalled as uncertain and not retried (execution {id})");
            }
        }
        if done {
            return;
        }
    }
}

/// The journal's form of one SMS backend's attempt (one `attempts` row), for
/// [`Journal::finish_send`]. Here rather than beside [`AttemptOutcome`] so
/// that the SMS backends know nothing of the journal.
impl From<&AttemptOutcome> for SendResult {
    fn from(attempt: &AttemptOutcome) -> SendResult {
        let backend = attempt.backend.clone();
        match &attempt.outcome {
            Ok(delivered) => SendResult::Sent { backend, reference: delivered.reference.clone() },
            Err(SendError::Definite { reason }) => {
                SendResult::Failed { backend, reason: reason.clone() }
            }
            Err(SendError::Uncertain { reason }) => {
                SendResult::Uncertain { backend, reason: reason.clone() }
            }
        }
    }
}

/// Runs `work` on the journal on the blocking pool, never on the async
/// runtime (SQLite waits for the disk).
pub(super) async fn blocking<T: Send + 'static>(
    journal: &Arc<Mutex<Journal>>,
    work: impl FnOnce(&mut Journal) -> T + Send + 'static,
) -> T {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || work(&mut journal.lock().expect("journal lock poisoned")))
        .await
        .expect("journal task panicked")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::journal::{ExecutionStatus, HistoryFilter};
    use crate::sms::log::LogSender;
    use crate::sms::phone::PhoneNumber;
    use crate::sms::Delivered;
    use std::time::Instant;

    fn outbox(budgets: Budgets) -> Outbox {
        Outbox::new(
            Journal::open_in_memory().unwrap(),
            Arc::new(LogSender::new()),
            Arc::new(ManualClock::at_unix_seconds(1_750_057_200)),
            EngineOptions { budgets, ..EngineOptions::default() },
        )
    }

    fn sms(socket: Option<&str>, text: &str) -> Outgoing {
        let phone = PhoneNumber::parse("+79991234567").unwrap();
        let to = Recipient::Sms { socket: socket.map(str::to_string), phone };
        Outgoing { to, text: text.to_string() }
    }

    fn message(socket: &str) -> Request {
        let outgoing = sms(Some(socket), "#01#0#");
        Request { origin: Origin::Manual, outgoing, by: "test".to_string() }
    }

    fn statuses(journal: &Mutex<Journal>) -> Vec<ExecutionStatus> {
        let journal = journal.lock().unwrap();
        let mut history = journal.history(&HistoryFilter::default()).unwrap();
        history.reverse();
        history.iter().map(|execution| execution.status).collect()
    }

    /// A gateway that is always down.
    #[derive(Debug)]
    struct Down;

    impl Sender for Down {
        fn name(&self) -> &str {
            "down"
        }

        fn send<'a>(&'a self, _message: &'a Message) -> crate::sms::SendFuture<'a> {
            Box::pin(async { Err(SendError::Definite { reason: "connection refused".into() }) })
        }
    }

    #[tokio::test]
    async fn a_manual_notification_is_cut_to_max_segments_as_a_rule_action_would_be() {
        let mut outbox = outbox(Budgets::default());
        let long = "Lobby player offline. ".repeat(20);

        let to_person = outbox.send_manual(&sms(None, &long)).await.unwrap();
        let to_socket = outbox.send_manual(&sms(Some("lobby"), "#01#0#")).await.unwrap();

        use crate::sms::text::{segments, TRUNCATION_MARK};
        assert_eq!(segments(&to_person.text).segments, 1, "{}", to_person.text);
        let kept = to_person.text.strip_suffix(TRUNCATION_MARK).expect("cut, and marked so");
        assert!(long.starts_with(kept), "{}", to_person.text);
        assert_eq!(to_socket.text, "#01#0#");
    }

    #[tokio::test]
    async fn stopping_drops_the_retries_not_yet_made() {
        let retry = SendRetry { attempts: 3, first_delay: Duration::from_secs(3600) };
        let mut outbox = Outbox::new(
            Journal::open_in_memory().unwrap(),
            Arc::new(Down),
            Arc::new(ManualClock::at_unix_seconds(1_750_057_200)),
            EngineOptions { retry, ..EngineOptions::default() },
        );
        let outcomes = outbox.journal_messages(vec![message("lobby")]).await.unwrap();
        let Some(Ok(Ok(dispatch))) = outcomes.into_iter().next() else { panic!("not dispatched") };
        outbox.deliver(dispatch);
        // The first attempt fails; the task then waits an hour to retry.
        let deadline = Instant::now() + Duration::from_secs(10);
        while statuses(&outbox.journal) != [ExecutionStatus::Failed] {
            assert!(Instant::now() < deadline, "the first attempt was never journalled");
            tokio::task::yield_now().await;
        }

        outbox.stop_retries();
        let finished = tokio::time::timeout(Duration::from_secs(10), outbox.finish_sends()).await;

        assert!(finished.is_ok(), "a send task still waits for its retry");
        assert_eq!(statuses(&outbox.journal), [ExecutionStatus::Failed]);
    }

    #[tokio::test]
    async fn a_batch_of_messages_counts_its_own_against_the_budgets() {
        let outbox = outbox(Budgets { global_day: Some(2), ..Budgets::default() });
        let messages = ["lobby", "hall", "stage"].map(message).into();
        let outcomes = outbox.journal_messages(messages).await.unwrap();
        let leaving: Vec<bool> = outcomes.iter().map(|o| matches!(o, Ok(Ok(_)))).collect();
        assert_eq!(leaving, [true, true, false]);
        // Journalled before they leave, `sending` only once a backend starts.
        use ExecutionStatus::{Planned, Suppressed};
        assert_eq!(statuses(&outbox.journal), [Planned, Planned, Suppressed]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn send_writes_arriving_together_are_each_committed_and_answered() {
        let outbox = outbox(Budgets::default());
        let messages = (0..40).map(|i| message(&format!("socket {i}"))).collect();
        let outcomes = outbox.journal_messages(messages).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for outcome in outcomes {
            let Ok(Ok(dispatch)) = outcome else { panic!("not journalled to leave") };
            let writes = outbox.send_writes.clone();
            let result = SendResult::Sent { backend: "log".to_string(), reference: None };
            tasks.spawn(async move {
                writes.write(SendWrite::Sending(dispatch.id)).await?;
                writes.write(SendWrite::Outcome(dispatch.id, result)).await
            });
        }
        let results = tasks.join_all().await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(statuses(&outbox.journal), vec![ExecutionStatus::Sent; 40]);

        // A write the journal refuses is answered with the reason.
        let again = SendResult::Sent { backend: "log".to_string(), reference: None };
        let refused = outbox.send_writes.write(SendWrite::Outcome(ExecutionId(1), again));
        let refused = refused.await.unwrap_err();
        assert!(matches!(*refused, JournalError::WrongStatus { .. }), "{refused:?}");
    }

    #[test]
    fn each_backend_attempt_becomes_its_journal_row() {
        let attempt = |outcome| AttemptOutcome { backend: "modem".into(), outcome };
        let sent = Ok(Delivered { backend: "modem".into(), reference: Some("7".into()) });
        let failed = Err(SendError::Definite { reason: "no network service".into() });
        let uncertain = Err(SendError::Uncertain { reason: "silent after Ctrl-Z".into() });

        assert_eq!(
            SendResult::from(&attempt(sent)),
            SendResult::Sent { backend: "modem".into(), reference: Some("7".into()) }
        );
        assert_eq!(
            SendResult::from(&attempt(failed)),
            SendResult::Failed { backend: "modem".into(), reason: "no network service".into() }
        );
        assert_eq!(
            SendResult::from(&attempt(uncertain)),
            SendResult::Uncertain { backend: "modem".into(), reason: "silent after Ctrl-Z".into() }
        );
    }
}
