//! jobctl's own metrics (`jobctl run --listen` serves them on `/metrics`).
//!
//! The cycle and the outbox record into them through the methods below, so
//! what is counted, and under which names and labels, is decided in this
//! file only. They live in a registry of their own, not the process-wide
//! default, and are served as a whole.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};

use super::states::PHASES;

/// jobctl's own metrics.
pub struct EngineMetrics {
    registry: Registry,
    cycles: IntCounter,
    /// Evaluations between cycles, of jobs whose `for` elapsed.
    wakeups: IntCounter,
    /// Prometheus queries sent.
    queries: IntCounter,
    /// Failed queries by reason.
    query_failures: IntCounterVec,
    /// Unknown verdicts by job.
    unknown: IntCounterVec,
    /// SMS outcomes.
    sms: IntCounterVec,
    /// Webhook outcomes.
    webhooks: IntCounterVec,
    /// Actions that could not become an SMS, by job.
    action_errors: IntCounterVec,
    /// What became of actions (recovered, not recovered, unverified, gave
    /// up), by job.
    executions: IntCounterVec,
    devices: GaugeVec,
    /// Per job, which phases `devices` has a series for.
    devices_shown: Mutex<HashMap<String, [bool; 4]>>,
    cycle_duration: prometheus::Gauge,
    last_cycle: prometheus::Gauge,
    prometheus_up: prometheus::IntGauge,
    /// Silences in force at the last cycle.
    silences_active: prometheus::IntGauge,
    /// Actions held back, by job and reason, each once per episode.
    held: IntCounterVec,
    /// Per job, 1 while it is in a mass outage (its socket commands held).
    mass_outage: prometheus::IntGaugeVec,
    /// Mass outages begun (each escalated once), by job.
    mass_outages: IntCounterVec,
    /// With `[source]`, per scrape target, whether its last scrape gave a
    /// page in the text format.
    source_up: prometheus::IntGaugeVec,
}

impl EngineMetrics {
    pub(super) fn new() -> EngineMetrics {
        let registry = Registry::new();
        let register =
            |c: Box<dyn prometheus::core::Collector>| registry.register(c).expect("unique metric");
        let cycles =
            IntCounter::new("jobctl_cycles_total", "Evaluation cycles run.").expect("valid");
        register(Box::new(cycles.clone()));
        let wakeups = IntCounter::new(
            "jobctl_wakeups_total",
            "Evaluations between cycles, of the jobs one of whose pending devices had just held `for`.",
        )
        .expect("valid");
        register(Box::new(wakeups.clone()));
        let queries =
            IntCounter::new("jobctl_queries_total", "Prometheus queries sent.").expect("valid");
        register(Box::new(queries.clone()));
        let query_failures = IntCounterVec::new(
            Opts::new("jobctl_query_failures_total", "Prometheus queries that failed, by reason."),
            &["reason"],
        )
        .expect("valid");
        register(Box::new(query_failures.clone()));
        let unknown = IntCounterVec::new(
            Opts::new(
                "jobctl_unknown_evaluations_total",
                "Evaluations of a job on a device whose verdict was unknown (no data, failed query, guard not met).",
            ),
            &["job"],
        )
        .expect("valid");
        register(Box::new(unknown.clone()));
        let sms = IntCounterVec::new(
            Opts::new(
                "jobctl_sms_total",
                "SMS attempts and decisions by outcome (sent, failed, uncertain, suppressed, dry_run).",
            ),
            &["outcome"],
        )
        .expect("valid");
        register(Box::new(sms.clone()));
        for outcome in ["sent", "failed", "uncertain", "suppressed", "dry_run"] {
            sms.with_label_values(&[outcome]);
        }
        let webhooks = IntCounterVec::new(
            Opts::new(
                "jobctl_webhooks_total",
                "Webhook attempts and decisions by outcome (sent, failed, uncertain, dry_run).",
            ),
            &["outcome"],
        )
        .expect("valid");
        register(Box::new(webhooks.clone()));
        for outcome in ["sent", "failed", "uncertain", "dry_run"] {
            webhooks.with_label_values(&[outcome]);
        }
        let action_errors = IntCounterVec::new(
            Opts::new(
                "jobctl_action_errors_total",
                "Due actions that could not become an SMS (no socket for the device…), by job.",
            ),
            &["job"],
        )
        .expect("valid");
        register(Box::new(action_errors.clone()));
        let executions = IntCounterVec::new(
            Opts::new(
                "jobctl_executions_total",
                "What became of actions, by job and outcome: recovered, not_recovered, unverified (verify), gave_up (limit).",
            ),
            &["job", "outcome"],
        )
        .expect("valid");
        register(Box::new(executions.clone()));
        let devices = GaugeVec::new(
            Opts::new("jobctl_job_devices", "Devices per job and state after the last cycle."),
            &["job", "state"],
        )
        .expect("valid");
        register(Box::new(devices.clone()));
        let cycle_duration = prometheus::Gauge::new(
            "jobctl_cycle_duration_seconds",
            "Duration of the last evaluation cycle.",
        )
        .expect("valid");
        register(Box::new(cycle_duration.clone()));
        let prometheus_up = prometheus::IntGauge::new(
            "jobctl_prometheus_up",
            "Whether every Prometheus query of the last cycle answered (1) or not (0).",
        )
        .expect("valid");
        register(Box::new(prometheus_up.clone()));
        let last_cycle = prometheus::Gauge::new(
            "jobctl_last_cycle_timestamp_seconds",
            "Unix time the last evaluation cycle ended.",
        )
        .expect("valid");
        register(Box::new(last_cycle.clone()));
        let silences_active = prometheus::IntGauge::new(
            "jobctl_silences_active",
            "Silences in force at the last cycle (jobctl silence add).",
        )
        .expect("valid");
        register(Box::new(silences_active.clone()));
        let held = IntCounterVec::new(
            Opts::new(
                "jobctl_held_actions_total",
                "Due actions held back, by job and reason (silenced, mass_outage), each once per (job, device, episode) and silence.",
            ),
            &["job", "reason"],
        )
        .expect("valid");
        register(Box::new(held.clone()));
        let mass_outage = prometheus::IntGaugeVec::new(
            Opts::new(
                "jobctl_mass_outage",
                "1 while the job is in a mass outage and holds its socket commands, else 0.",
            ),
            &["job"],
        )
        .expect("valid");
        register(Box::new(mass_outage.clone()));
        let mass_outages = IntCounterVec::new(
            Opts::new(
                "jobctl_mass_outages_total",
                "Mass outages begun, by job; each is escalated once.",
            ),
            &["job"],
        )
        .expect("valid");
        register(Box::new(mass_outages.clone()));
        #[cfg(target_os = "linux")]
        let source_up = prometheus::IntGaugeVec::new(
            Opts::new(
                "jobctl_source_up",
                "With [source] scrape: whether the target's last scrape gave a page in the text format (1) or not (0).",
            ),
            &["target"],
        )
        .expect("valid");
        register(Box::new(source_up.clone()));
        register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        EngineMetrics {
            registry,
            cycles,
            wakeups,
            queries,
            query_failures,
            unknown,
            sms,
            webhooks,
            action_errors,
            executions,
            devices,
            devices_shown: Mutex::new(HashMap::new()),
            cycle_duration,
            last_cycle,
            prometheus_up,
            silences_active,
            held,
            mass_outage,
            mass_outages,
            source_up,
        }
    }

    /// Sets whether a scrape target answered its last scrape.
    pub(super) fn set_source_up(&self, target: &str, up: bool) {
        self.source_up.with_label_values(&[target]).set(i64::from(up));
    }

    /// Drops a target no longer scraped (the rules changed).
    pub(super) fn forget_source(&self, target: &str) {
        let _ = self.source_up.remove_label_values(&[target]);
    }

    /// Counts a cycle begun.
    pub(super) fn cycle_started(&self) {
        self.cycles.inc();
    }

    /// Counts an evaluation between cycles ([`super::Engine::wake`]).
    pub(super) fn woke(&self) {
        self.wakeups.inc();
    }

    /// Records a cycle or a wake-up; `counts` are each job's (job, device) pairs per
    /// phase (in the order of [`PHASES`]). A (job, phase) with none has no
    /// series.
    pub(super) fn record_cycle<'j>(
        &self,
        took: Duration,
        now: jiff::Timestamp,
        counts: impl Iterator<Item = (&'j str, [u64; 4])>,
    ) {
        self.cycle_duration.set(took.as_secs_f64());
        self.last_cycle.set(now.as_millisecond() as f64 / 1000.0);
        // Set and removed child by child rather than reset and made anew:
        // a thousand jobs would re-create thousands of series every cycle.
        let mut shown =
            self.devices_shown.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seen = HashSet::with_capacity(shown.len());
        for (job, counts) in counts {
            seen.insert(job);
            let before = match shown.get_mut(job) {
                Some(before) => before,
                None => shown.entry(job.to_string()).or_default(),
            };
            for ((phase, count), shown) in PHASES.iter().zip(counts).zip(before) {
                if count > 0 {
                    self.devices.with_label_values(&[job, phase.as_str()]).set(count as f64);
                } else if *shown {
                    let _ = self.devices.remove_label_values(&[job, phase.as_str()]);
                }
                *shown = count > 0;
            }
        }
        shown.retain(|job, before| {
            if seen.contains(job.as_str()) {
                return true;
            }
            for (phase, shown) in PHASES.iter().zip(before) {
                if *shown {
                    let _ = self.devices.remove_label_values(&[job, phase.as_str()]);
                }
            }
            false
        });
    }

    /// Counts a Prometheus query that was sent and ended, answered or not.
    pub(super) fn query_sent(&self) {
        self.queries.inc();
    }

    /// Counts a query that failed, by [`crate::prometheus_api::PromError::label`].
    pub(super) fn query_failed(&self, reason: &str) {
        self.query_failures.with_label_values(&[reason]).inc();
    }

    /// Sets whether every query of the cycle answered.
    pub(super) fn set_prometheus_up(&self, up: bool) {
        self.prometheus_up.set(i64::from(up));
    }

    /// Counts a job's unknown verdicts of a cycle.
    pub(super) fn unknown_verdicts(&self, job: &str, count: u64) {
        self.unknown.with_label_values(&[job]).inc_by(count);
    }

    /// Counts a due action of `job` that could not be carried out.
    pub(super) fn action_error(&self, job: &str) {
        self.action_errors.with_label_values(&[job]).inc();
    }

    /// Counts what became of an action of `job`: `recovered`,
    /// `not_recovered`, `unverified` or `gave_up`.
    pub(super) fn action_result(&self, job: &str, outcome: &str) {
        self.executions.with_label_values(&[job, outcome]).inc();
    }

    /// Counts an SMS attempt or decision by outcome (`sent`, `failed`,
    /// `uncertain`, `suppressed`, `dry_run`).
    pub(super) fn sms_outcome(&self, outcome: &str) {
        self.sms.with_label_values(&[outcome]).inc();
    }

    /// Counts a webhook attempt or decision by outcome (`sent`, `failed`,
    /// `uncertain`, `dry_run`).
    pub(super) fn webhook_outcome(&self, outcome: &str) {
        self.webhooks.with_label_values(&[outcome]).inc();
    }

    /// Sets how many silences are in force.
    pub(super) fn set_silences_active(&self, count: usize) {
        self.silences_active.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets whether `job` is in a mass outage now.
    pub(super) fn set_mass_outage(&self, job: &str, held: bool) {
        self.mass_outage.with_label_values(&[job]).set(i64::from(held));
    }

    /// Counts a mass outage of `job` that began.
    pub(super) fn mass_outage_began(&self, job: &str) {
        self.mass_outages.with_label_values(&[job]).inc();
    }

    /// Drops the series of a job that is gone.
    pub(super) fn forget_mass_outage(&self, job: &str) {
        let _ = self.mass_outage.remove_label_values(&[job]);
    }

    /// Counts an action held back for `reason` (`silenced`, `mass_outage`),
    /// once per hold.
    pub(super) fn action_held(&self, job: &str, reason: &str) {
        self.held.with_label_values(&[job, reason]).inc();
    }

    /// Whether every query of the last cycle answered.
    pub(crate) fn prometheus_up(&self) -> bool {
        self.prometheus_up.get() == 1
    }

    /// Seconds since the last cycle ended, `None` before the first.
    pub(crate) fn seconds_since_last_cycle(&self) -> Option<f64> {
        let last = self.last_cycle.get();
        (last > 0.0).then(|| jiff::Timestamp::now().as_millisecond() as f64 / 1000.0 - last)
    }

    /// The metrics in the text format.
    pub(crate) fn encode(&self) -> Vec<u8> {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}
