//! Where a cycle's answers come from: the one thing that differs between
//! a rules file with `[prometheus]` and one with `[source] scrape = [...]`.
//!
//! The engine asks one question of its source: "the answers to these
//! queries, now". Prometheus answers each query itself (`query_all` in
//! `mod.rs`). A [`Source::Scrape`] scrapes every target once per cycle (or
//! wake-up) and answers each query from the merged series
//! ([`ScrapeQuery`]: the selectors the comparisons write, and guards of
//! the form `metric op number`); `jobctl check` has refused anything else
//! already. Everything after the answers (the evaluation, `for`, the state
//! machine, cooldowns, schedules, budgets, the journal, verify and limits)
//! is the same code for both.
//!
//! A target that fails contributes no series, so its devices are unknown
//! (never true) until it answers again; when no target answers, every
//! query is absent, as when Prometheus is down. Each target's health is
//! `jobctl_source_up{target}`, and a failure is logged when it starts,
//! changes kind or ends, not every cycle.
//!
//! There is no history to date an onset from (`onset`): jobctl's own
//! scrapes are the only data there is, so the scrape that first shows a
//! condition is its onset, and `for` counts from that cycle. Nothing of the
//! scrapes is kept between cycles; pending timers are journalled by the
//! state machine, as with Prometheus.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{CycleReport, Engine};
use crate::prometheus_api::scrape::{ScrapeClient, Scraped};
use crate::prometheus_api::PromClient;
use crate::rules::condition::{Answers, ScrapeQuery};

/// Where the engine's answers come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The Prometheus HTTP API (`[prometheus]`).
    Prometheus(Arc<PromClient>),
    /// The exporters' pages, scraped by jobctl (`[source] scrape`).
    Scrape(Arc<ScrapeClient>),
}

impl From<Arc<PromClient>> for Source {
    fn from(client: Arc<PromClient>) -> Source {
        Source::Prometheus(client)
    }
}

impl From<Arc<ScrapeClient>> for Source {
    fn from(client: Arc<ScrapeClient>) -> Source {
        Source::Scrape(client)
    }
}

impl Source {
    /// What a log line calls the source's failed queries.
    pub(super) fn queries_name(&self) -> &'static str {
        match self {
            Source::Prometheus(_) => "Prometheus queries",
            Source::Scrape(_) => "queries of the scrape targets",
        }
    }

    /// What a log line says when every query answers again.
    pub(super) fn recovered(&self) -> &'static str {
        match self {
            Source::Prometheus(_) => "every Prometheus query answers again",
            Source::Scrape(_) => "a scrape target answers again: every query has an answer",
        }
    }
}

/// The scrape targets failing at the last scrape, by target, with the
/// kind of failure: what is logged when it changes.
#[derive(Debug, Default)]
pub(super) struct TargetHealth {
    failing: BTreeMap<String, &'static str>,
    /// Targets reported in `jobctl_source_up`.
    shown: Vec<String>,
}

impl TargetHealth {
    /// Forgets every target (a reload replaced the scrape source by
    /// Prometheus): their `jobctl_source_up` series go.
    pub(super) fn forget_all(&mut self, metrics: &super::EngineMetrics) {
        for target in self.shown.drain(..) {
            metrics.forget_source(&target);
        }
        self.failing.clear();
    }
}

impl Engine {
    /// Scrapes every target once and answers `queries` from what they
    /// served, into `answers`.
    pub(super) async fn scrape_all(
        &mut self,
        client: &ScrapeClient,
        queries: &[String],
        answers: &mut Answers,
        report: &mut CycleReport,
    ) {
        let scraped = client.scrape().await;
        self.record_targets(&scraped);
        for query in queries {
            self.metrics.query_sent();
            let failure = if !scraped.answered() {
                Some(("unreachable", "no scrape target answered".to_string()))
            } else if let Some(selector) = ScrapeQuery::parse(query) {
                let inserted = answers.insert(query.clone(), &mut self.devices, |add| {
                    selector.select(&scraped, add);
                    Ok::<(), std::convert::Infallible>(())
                });
                inserted.unwrap_or_else(|never| match never {});
                None
            } else {
                // `check` refuses these in scrape mode; a reload cannot
                // bring one in either, so this is only a safeguard.
                Some(("promql", "needs PromQL, which a scrape source cannot evaluate".to_string()))
            };
            if let Some((label, why)) = failure {
                self.metrics.query_failed(label);
                report.failed_queries.push((query.clone(), why));
            }
        }
        report.failed_queries.sort();
    }

    /// Sets `jobctl_source_up` for each target, and logs a target's failure
    /// when it starts or changes kind, and its end.
    fn record_targets(&mut self, scraped: &Scraped) {
        let health = &mut self.targets;
        let names: Vec<String> = scraped.targets.iter().map(|t| t.target.clone()).collect();
        for gone in health.shown.iter().filter(|t| !names.contains(t)) {
            self.metrics.forget_source(gone);
        }
        health.failing.retain(|target, _| names.contains(target));
        health.shown = names;
        for outcome in &scraped.targets {
            self.metrics.set_source_up(&outcome.target, outcome.result.is_ok());
            match &outcome.result {
                Ok(samples) => {
                    if health.failing.remove(&outcome.target).is_some() {
                        tracing::info!(
                            "scrape target {} answers again ({samples} samples)",
                            outcome.target
                        );
                    }
                }
                Err(err) => {
                    let before = health.failing.insert(outcome.target.clone(), err.label());
                    if before == Some(err.label()) {
                        tracing::debug!("still failing: {err}");
                    } else {
                        tracing::warn!(
                            "{err}; the devices it serves are unknown: nothing advances for them and nothing is sent until it answers"
                        );
                    }
                }
            }
        }
    }
}
