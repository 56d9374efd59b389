//! `addreality-exporter --demo`: the real exporter against a simulated
//! account, so anyone can see live metrics without an AddReality token.
//!
//! Everything but the AddReality cloud is real: the [`Simulator`] serves
//! the device-list API over HTTP on a loopback port, the exporter polls it
//! with the production client (three pages of 100 devices), writes a real
//! SQLite cache in a temporary directory, and serves `/metrics`. Every few
//! seconds some players drop offline and others come back.
//!
//! The directory is made fresh for each run, with an unpredictable name and
//! mode 0700 (`mkdir` fails rather than reuse anything already there), so
//! another local user cannot plant it, or a symlink in it, beforehand and
//! have the demo (perhaps run as root) write where they chose.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;

use super::cache::Cache;
use super::cli_error::Error;
use super::config::{ExporterConfig, PlatformConfig};
use super::{Exporter, Supervision};
use crate::addreality::simulator::Simulator;
use crate::notify::Notifier;
use crate::secret::{Secret, SecretSource};

/// Devices in the simulated account (the size of the fleet the earlier
/// exporter served).
pub(crate) const DEMO_DEVICES: usize = 273;
/// The demo's default listen address: loopback only.
pub(crate) const DEMO_LISTEN: &str = "127.0.0.1:9747";
const DEMO_TOKEN: &str = "demo-token";

/// The start of the demo directory's name; a random suffix follows.
const DEMO_DIR_PREFIX: &str = "addreality-exporter-demo-";

/// Runs the demo until `shutdown` completes, with its cache in a fresh
/// directory under the system's temporary directory. It tells systemd what
/// the daemon tells it, so it can be tried under `systemd-run`; a SIGHUP
/// (`reloads`) has nothing to re-read and only says so.
pub(crate) async fn run(
    listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), Error> {
    run_in(listen, &std::env::temp_dir(), shutdown, reloads).await
}

/// A new private directory in `root` (mode 0700, random name), removed
/// when dropped. Never an existing one.
fn fresh_dir(root: &Path) -> Result<tempfile::TempDir, Error> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(DEMO_DIR_PREFIX)
        // Set by mkdir itself: there is no moment with wider access.
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(root)
        .map_err(|source| Error::DemoDir {
            dir: root.join(format!("{DEMO_DIR_PREFIX}…")), source
        })
}

/// [`run`] with the demo directory made in `root`.
async fn run_in(
    listen: Option<SocketAddr>,
    root: &Path,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<()>,
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

    let served = match fresh_dir(root) {
        Ok(dir) => {
            let api_url = Simulator::device_list_url(api_addr);
            let served = serve(listener, dir.path(), api_url, listen, shutdown, reloads).await;
            // Removed after the exporter (and its cache connection) is gone.
            drop(dir);
            served
        }
        Err(err) => Err(err),
    };
    churn_task.abort();
    let _ = stop_api.send(());
    let _ = api_task.await;
    served
}

async fn serve(
    listener: TcpListener,
    dir: &Path,
    api_url: String,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<()>,
) -> Result<(), Error> {
    let config = ExporterConfig {
        listen,
        api_url: api_url.clone(),
        poll_interval: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
        cache: dir.join("cache.db"),
        page_size: 100,
        max_page_bytes: super::config::DEFAULT_MAX_PAGE_BYTES,
        forget_after: Duration::from_secs(7 * 24 * 3600),
        web_config_file: None,
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
    let supervision = Supervision {
        notifier: Notifier::from_env(),
        reloads,
        reload: || async {
            tracing::info!("the demo has no configuration to reload; nothing changed");
            true
        },
    };
    exporter.run_supervised(listener, None, shutdown, supervision).await.map_err(Error::Http)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    #[test]
    fn each_demo_directory_is_new_private_and_unpredictable() {
        let root = tempfile::tempdir().unwrap();
        let first = fresh_dir(root.path()).unwrap();
        let second = fresh_dir(root.path()).unwrap();
        assert_ne!(first.path(), second.path());
        for dir in [&first, &second] {
            let name = dir.path().file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with(DEMO_DIR_PREFIX), "{name}");
            assert_ne!(name, format!("{DEMO_DIR_PREFIX}{}", std::process::id()));
            let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{name}");
        }
    }

    #[tokio::test]
    async fn a_planted_directory_and_symlink_are_left_alone() {
        // What a local user could prepare: the old predictable directory for
        // this process, with `cache.db` a symlink to a file of theirs, and
        // a symlink with the old name pointing at a directory of theirs.
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("victim");
        std::fs::write(&victim, b"").unwrap();
        let planted = root.path().join(format!("{DEMO_DIR_PREFIX}{}", std::process::id()));
        std::fs::create_dir(&planted).unwrap();
        symlink(&victim, planted.join("cache.db")).unwrap();
        let planted_link = root.path().join(format!("{DEMO_DIR_PREFIX}{}", std::process::id() + 1));
        symlink(elsewhere.path(), &planted_link).unwrap();

        let (_, reloads) = tokio::sync::mpsc::channel(1);
        run_in(Some("127.0.0.1:0".parse().unwrap()), root.path(), std::future::ready(()), reloads)
            .await
            .unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"", "the planted file was written");
        let planted_entries: Vec<_> =
            std::fs::read_dir(&planted).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(planted_entries, ["cache.db"]);
        let elsewhere_entries: Vec<_> =
            std::fs::read_dir(elsewhere.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(elsewhere_entries, ["victim"]);
        // The demo's own directory was made, used and removed.
        let mut left: Vec<_> =
            std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().path()).collect();
        left.sort();
        let mut expected = vec![planted, planted_link];
        expected.sort();
        assert_eq!(left, expected);
    }
}
