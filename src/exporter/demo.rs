//! `addreality-exporter --demo`: the real exporter against a simulated
//! account, so anyone can see live metrics without an AddReality token.
//!
//! Everything but the AddReality cloud is real: the [`Simulator`] serves
//! the device-list API over HTTP on a loopback port, the exporter polls it
//! with the production client (three pages of 100 devices), writes a real
//! SQLite cache in a temporary directory, and serves `/metrics`. Every few
//! seconds some players drop offline and others come back.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;

use super::cache::Cache;
use super::cli_error::Error;
use super::config::{ExporterConfig, PlatformConfig};
use super::Exporter;
use crate::addreality::simulator::Simulator;
use crate::secret::{Secret, SecretSource};

/// Devices in the simulated account (the size of the fleet the earlier
/// exporter served).
pub(crate) const DEMO_DEVICES: usize = 273;
/// The demo's default listen address: loopback only.
pub(crate) const DEMO_LISTEN: &str = "127.0.0.1:9747";
const DEMO_TOKEN: &str = "demo-token";

/// Runs the demo until `shutdown` completes.
pub(crate) async fn run(
    listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let listen = listen.unwrap_or_else(|| DEMO_LISTEN.parse().expect("valid address"));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|error| Error::DemoListen { addr: listen, error })?;
    let listen = listener.local_addr().unwrap_or(listen);

    let simulator = Simulator::new(DEMO_TOKEN);
    simulator.set_devices(Simulator::demo_fleet(DEMO_DEVICES, 1));
    let (api_addr, api_listener) = TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| Ok((l.local_addr()?, l)))
        .map_err(Error::DemoApi)?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = simulator.clone();
    let api_task = tokio::spawn(async move {
        let _ = serving.serve(api_listener, async { api_stopped.await.unwrap_or(()) }).await;
    });
    let churning = simulator.clone();
    let churn_task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        for step in 1.. {
            ticker.tick().await;
            churning.churn(step);
        }
    });

    let dir = std::env::temp_dir().join(format!("addreality-exporter-demo-{}", std::process::id()));
    let served =
        serve(listener, &dir, Simulator::device_list_url(api_addr), listen, shutdown).await;
    churn_task.abort();
    let _ = stop_api.send(());
    let _ = api_task.await;
    let _ = std::fs::remove_dir_all(&dir);
    served
}

async fn serve(
    listener: TcpListener,
    dir: &std::path::Path,
    api_url: String,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    std::fs::create_dir_all(dir)
        .map_err(|source| Error::DemoDir { dir: dir.to_path_buf(), source })?;
    let config = ExporterConfig {
        listen,
        api_url: api_url.clone(),
        poll_interval: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
        cache: dir.join("cache.db"),
        page_size: 100,
        max_page_bytes: super::config::DEFAULT_MAX_PAGE_BYTES,
        forget_after: Duration::from_secs(7 * 24 * 3600),
        platforms: vec![],
        base_dir: PathBuf::from("."),
    };
    let platform = PlatformConfig {
        id: "1".into(),
        name: Some("Demo fleet (simulated)".into()),
        token: SecretSource::Env("unused in the demo".into()),
        token_at: "demo".into(),
    };
    let cache = Cache::open(&config.cache)?;
    let exporter =
        Exporter::start(&config, vec![(platform, Secret::new(DEMO_TOKEN))], cache).await?;
    tracing::info!(
        "demo: simulated AddReality account with {DEMO_DEVICES} players at {api_url}; polled every 10s"
    );
    tracing::info!(
        "listening on http://{listen}/metrics (health at http://{listen}/healthz); Ctrl-C stops"
    );
    exporter.run(listener, shutdown).await.map_err(Error::Http)
}
