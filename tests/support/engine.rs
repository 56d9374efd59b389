//! jobctl's engine started as `jobctl run` starts it, from a rules file's
//! text, for the tests that drive its cycles themselves with a manual clock:
//! the source the rules name (`[prometheus]` or `[source] scrape`), the
//! `[sms]` sender, the journal where `[journal]` says.

use std::path::Path;
use std::sync::Arc;

use signage_watchdog::clock::ManualClock;
use signage_watchdog::engine::{Engine, EngineOptions, Source};
use signage_watchdog::journal::Journal;
use signage_watchdog::prometheus_api::scrape::ScrapeClient;
use signage_watchdog::prometheus_api::PromClient;
use signage_watchdog::rules::{RuleSet, SourceConfig};

/// Starts the engine of `rules`, parsed from `text`, a rules file in `dir`,
/// on `clock` with `options`; panics when anything cannot be built.
pub(crate) async fn start(
    rules: RuleSet,
    text: &str,
    dir: &Path,
    clock: Arc<ManualClock>,
    options: EngineOptions,
) -> Engine {
    let source: Source = match &rules.source {
        SourceConfig::Prometheus(p) => {
            Arc::new(PromClient::new(p.url.as_str(), p.timeout, None).unwrap()).into()
        }
        SourceConfig::Scrape(s) => {
            Arc::new(ScrapeClient::new(&s.targets, s.timeout, None).unwrap()).into()
        }
    };
    let sender = super::sms::sender(text, dir);
    let journal = Journal::open_at(&rules.journal.location).unwrap();
    // Boxed: the engine's start is a large future, and the tests that
    // start several engines in one async test would carry it inline.
    Box::pin(Engine::start(rules, source, journal, Arc::from(sender), clock, options))
        .await
        .unwrap()
}
