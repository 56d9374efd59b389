//! The addreality-exporter daemon: AddReality devices as Prometheus metrics.
//!
//! The AddReality API is slow, rate-limited and sometimes down, and a restart
//! must not turn a whole fleet into "no data". A task per platform polls the API on its own timer ([`poller`]), writes
//! each complete answer to the SQLite [`cache`] in one transaction, and
//! re-renders the exposition once ([`render`], [`state`]). Scrapes serve
//! those bytes and never touch the API or SQLite, so a slow or broken API
//! never slows Prometheus down, and a restart during an outage serves the
//! cached devices at once.

pub mod cache;
pub mod cli;
mod cli_error;
pub mod config;
pub(crate) mod demo;
pub(crate) mod metrics;
pub(crate) mod poller;
pub mod render;
pub(crate) mod state;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;

use crate::addreality::client::{Client, ClientConfig, ClientError, RetryPolicy};
use crate::http::WebConfig;
use crate::secret::Secret;
use cache::{Cache, CacheError};
use config::{ExporterConfig, PlatformConfig};
use poller::Poller;
use state::ExporterState;

/// Seconds since the Unix epoch, as Prometheus timestamps are.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Retries stay well inside one poll interval, so a struggling API delays
/// the next poll rather than piling polls up.
fn retry_policy(poll_interval: Duration) -> RetryPolicy {
    let default = RetryPolicy::default();
    RetryPolicy {
        max_delay: default.max_delay.min(poll_interval / 4).max(default.base_delay),
        ..default
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The cache could not be opened or read.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The AddReality client could not be built (TLS set-up).
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A configured exporter with its cache loaded, ready to serve.
pub struct Exporter {
    poller: Arc<Poller>,
    platforms: Vec<(PlatformConfig, Secret)>,
    poll_interval: Duration,
}

impl Exporter {
    /// Opens the cache, loads it, and prepares the pollers. `platforms` pairs
    /// each configured platform with its loaded token.
    pub async fn start(
        config: &ExporterConfig,
        platforms: Vec<(PlatformConfig, Secret)>,
        cache: Cache,
    ) -> Result<Exporter, StartError> {
        let client = Client::new(ClientConfig {
            url: config.api_url.clone(),
            page_size: config.page_size,
            request_timeout: config.request_timeout,
            max_page_bytes: config.max_page_bytes,
            retry: retry_policy(config.poll_interval),
        })?;
        let (cache, cached) = tokio::task::spawn_blocking(move || {
            let cached = cache.load()?;
            Ok::<_, CacheError>((cache, cached))
        })
        .await
        .expect("cache task panicked")?;
        let ids: Vec<(String, Option<String>)> =
            platforms.iter().map(|(p, _)| (p.id.clone(), p.name.clone())).collect();
        let devices: usize = cached.iter().map(|p| p.devices.len()).sum();
        if devices > 0 {
            tracing::info!("serving {devices} cached devices until the first polls return");
        }
        let state = Arc::new(ExporterState::new(&ids, cached, config.poll_interval));
        let poller = Poller {
            client,
            cache: Arc::new(Mutex::new(cache)),
            state,
            forget_after: config.forget_after,
        };
        Ok(Exporter { poller: Arc::new(poller), platforms, poll_interval: config.poll_interval })
    }

    /// The state the HTTP server and tests read.
    pub fn state(&self) -> Arc<ExporterState> {
        self.poller.state.clone()
    }

    /// Polls every platform once, concurrently. Returns the ids of the
    /// platforms whose poll failed.
    pub async fn poll_all_once(&self) -> Vec<String> {
        let mut tasks = tokio::task::JoinSet::new();
        for (platform, token) in self.platforms.clone() {
            let poller = self.poller.clone();
            tasks.spawn(async move {
                let ok = poller.poll_once(&platform, &token).await;
                (platform.id, ok)
            });
        }
        let mut failed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (id, ok) = joined.expect("poll task panicked");
            if !ok {
                failed.push(id);
            }
        }
        failed.sort();
        failed
    }

    /// Serves HTTP on `listener` and polls every platform on its own timer
    /// until `shutdown` completes.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.run_secured(listener, None, shutdown).await
    }

    /// [`Exporter::run`] with the listener secured by a web configuration
    /// (TLS, basic auth), when there is one.
    pub async fn run_secured(
        self,
        listener: TcpListener,
        web: Option<Arc<WebConfig>>,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut pollers = tokio::task::JoinSet::new();
        for (platform, token) in self.platforms.clone() {
            let poller = self.poller.clone();
            let every = self.poll_interval;
            pollers.spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    poller.poll_once(&platform, &token).await;
                }
            });
        }
        let pages: Arc<dyn crate::http::Pages> = self.poller.state.clone();
        let served = crate::http::serve_configured(
            listener,
            pages,
            web,
            crate::http::Limits::default(),
            shutdown,
        )
        .await;
        // Dropping the set aborts the poll loops. A cache write in progress
        // runs to its end on the blocking pool: its transaction is whole or
        // absent, never half.
        pollers.shutdown().await;
        served
    }
}

#[cfg(test)]
mod proptests;
