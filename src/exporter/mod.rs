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
pub(crate) mod watchdog;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;

use crate::addreality::client::{Client, ClientConfig, ClientError, RetryPolicy};
use crate::http::WebConfig;
use crate::notify::Notifier;
use crate::secret::Secret;
use cache::{Cache, CacheError};
use config::{ExporterConfig, PlatformConfig};
use poller::Poller;
use state::ExporterState;
use watchdog::PollProgress;

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

/// How often the status line systemd shows is renewed (and the watchdog
/// pinged, when it asks for pings less often).
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Each platform's API token, which a reload (SIGHUP) may replace: the
/// next poll of that platform sends the new one.
#[derive(Debug, Default)]
pub struct PlatformTokens {
    tokens: Mutex<BTreeMap<String, Secret>>,
}

impl PlatformTokens {
    /// The platform's token (empty if the platform is unknown, which the
    /// API refuses: never the case for a configured platform).
    fn get(&self, platform: &str) -> Secret {
        let tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tokens.get(platform).cloned().unwrap_or_else(|| Secret::new(""))
    }

    /// Puts `loaded` in force for the platforms already polled, and returns
    /// the ids of those whose token changed. Platforms not polled are
    /// ignored: polling a new platform takes a restart.
    pub fn replace(&self, loaded: &[(PlatformConfig, Secret)]) -> Vec<String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = Vec::new();
        for (platform, token) in loaded {
            if let Some(current) = tokens.get_mut(&platform.id) {
                if current != token {
                    *current = token.clone();
                    changed.push(platform.id.clone());
                }
            }
        }
        changed
    }
}

/// How the running exporter answers systemd (`Type=notify`): what it tells
/// it, and the reloads SIGHUP asks for.
pub struct Supervision<R> {
    /// Where READY, STATUS, WATCHDOG, RELOADING and STOPPING go (a no-op
    /// outside systemd).
    pub notifier: Notifier,
    /// One message per SIGHUP (`crate::shutdown::reload_requests`).
    pub reloads: tokio::sync::mpsc::Receiver<()>,
    /// Re-reads what can change without a restart and puts it in force, or
    /// keeps the running settings and logs why; resolves to whether the new
    /// settings are in force.
    pub reload: R,
}

/// A configured exporter with its cache loaded, ready to serve.
pub struct Exporter {
    poller: Arc<Poller>,
    platforms: Vec<PlatformConfig>,
    tokens: Arc<PlatformTokens>,
    poll_interval: Duration,
    progress: Arc<PollProgress>,
}

impl Exporter {
    /// Opens the cache, loads it, and prepares the pollers. `platforms` pairs
    /// each configured platform with its loaded token.
    pub async fn start(
        config: &ExporterConfig,
        platforms: Vec<(PlatformConfig, Secret)>,
        cache: Cache,
    ) -> Result<Exporter, StartError> {
        let retry = retry_policy(config.poll_interval);
        let client = Client::new(ClientConfig {
            url: config.api_url.clone(),
            page_size: config.page_size,
            request_timeout: config.request_timeout,
            max_page_bytes: config.max_page_bytes,
            retry,
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
        let stall_after =
            watchdog::stall_bound(config.poll_interval, config.request_timeout, &retry);
        let progress = PollProgress::new(ids.into_iter().map(|(id, _)| id), stall_after);
        let tokens = PlatformTokens {
            tokens: Mutex::new(platforms.iter().map(|(p, t)| (p.id.clone(), t.clone())).collect()),
        };
        Ok(Exporter {
            poller: Arc::new(poller),
            platforms: platforms.into_iter().map(|(platform, _)| platform).collect(),
            tokens: Arc::new(tokens),
            poll_interval: config.poll_interval,
            progress: Arc::new(progress),
        })
    }

    /// The state the HTTP server and tests read.
    pub fn state(&self) -> Arc<ExporterState> {
        self.poller.state.clone()
    }

    /// The platforms' tokens, for a reload to replace.
    pub fn tokens(&self) -> Arc<PlatformTokens> {
        self.tokens.clone()
    }

    /// Polls every platform once, concurrently. Returns the ids of the
    /// platforms whose poll failed.
    pub async fn poll_all_once(&self) -> Vec<String> {
        let mut tasks = tokio::task::JoinSet::new();
        for platform in self.platforms.clone() {
            let poller = self.poller.clone();
            let token = self.tokens.get(&platform.id);
            tasks.spawn(async move {
                let ok = poller.poll_once(&platform, &token, &|| {}).await;
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
    /// until `shutdown` completes; tells systemd nothing and never reloads.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let (_, reloads) = tokio::sync::mpsc::channel(1);
        let quiet = Supervision {
            notifier: Notifier::none(),
            reloads,
            reload: || std::future::ready(true),
        };
        self.run_supervised(listener, None, shutdown, quiet).await
    }

    /// [`Exporter::run`] under systemd, the listener secured by a web
    /// configuration (TLS, basic auth) when there is one: `READY=1` once serving (the cache
    /// is loaded, the first polls under way), a status line and
    /// `WATCHDOG=1` pings while every platform's poll loop makes progress
    /// ([`watchdog`]), `RELOADING=1` and `READY=1` around each reload
    /// SIGHUP asks for, `STOPPING=1` when `shutdown` completes.
    ///
    /// The pings come from this loop, and only after it has checked the
    /// poll loops' progress: a hung runtime stops them as surely as a hung
    /// poll. A reload runs in this loop too, so that no ping claims health
    /// while one is under way; it reads a few small files.
    pub async fn run_supervised<R, F>(
        self,
        listener: TcpListener,
        web: Option<Arc<WebConfig>>,
        shutdown: impl Future<Output = ()>,
        supervision: Supervision<R>,
    ) -> std::io::Result<()>
    where
        R: FnMut() -> F,
        F: Future<Output = bool>,
    {
        let Supervision { notifier, mut reloads, mut reload } = supervision;
        let mut pollers = tokio::task::JoinSet::new();
        for platform in self.platforms.clone() {
            let poller = self.poller.clone();
            let tokens = self.tokens.clone();
            let progress = self.progress.clone();
            let every = self.poll_interval;
            pollers.spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let id = platform.id.as_str();
                loop {
                    ticker.tick().await;
                    progress.mark(id);
                    // Read at each poll: a reload may have replaced it.
                    let token = tokens.get(id);
                    poller.poll_once(&platform, &token, &|| progress.mark(id)).await;
                    progress.mark(id);
                }
            });
        }
        let state = self.poller.state.clone();
        let pages: Arc<dyn crate::http::Pages> = state.clone();
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut http = tokio::spawn(crate::http::serve_configured(
            listener,
            pages,
            web,
            crate::http::Limits::default(),
            async {
                http_stopped.await.unwrap_or(());
            },
        ));

        notifier.ready(&state.status_line(unix_now()));
        let every = notifier.watchdog_every().map_or(STATUS_EVERY, |ping| ping.min(STATUS_EVERY));
        let mut alive = tokio::time::interval(every);
        alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stalled = Vec::new();
        let stall_after = self.progress.stall_after();
        tokio::pin!(shutdown);
        let ended = loop {
            tokio::select! {
                () = &mut shutdown => break None,
                served = &mut http => break Some(served),
                Some(()) = reloads.recv() => {
                    notifier.reloading();
                    let successful = reload().await;
                    state.metrics.reloaded(successful, unix_now());
                    // Served at once, not from the next poll on.
                    let rendering = state.clone();
                    let _ = tokio::task::spawn_blocking(move || rendering.render()).await;
                    notifier.ready(&state.status_line(unix_now()));
                }
                _ = alive.tick() => {
                    let stalls = self.progress.stalled(tokio::time::Instant::now());
                    watchdog::log_changes(&mut stalled, &stalls, stall_after);
                    let status = state.status_line(unix_now());
                    if stalls.is_empty() {
                        notifier.alive(&status);
                    } else {
                        let stuck = watchdog::stalled_status(&stalls, stall_after);
                        notifier.status(&format!("{status}; {stuck}"));
                    }
                }
            }
        };
        notifier.stopping();
        let served = match ended {
            Some(served) => served.expect("HTTP server task panicked"),
            None => {
                let _ = stop_http.send(());
                http.await.expect("HTTP server task panicked")
            }
        };
        // Dropping the set aborts the poll loops. A cache write in progress
        // runs to its end on the blocking pool: its transaction is whole or
        // absent, never half.
        pollers.shutdown().await;
        served
    }
}

#[cfg(test)]
mod proptests;
