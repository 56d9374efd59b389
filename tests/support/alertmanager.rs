//! A real Alertmanager on loopback: the stack jobctl replaces (a Prometheus
//! alerting rule, then Alertmanager, then a receiver), run side by side
//! with jobctl by `cargo bench --bench reaction`.
//!
//! Debian's `prometheus-alertmanager` is started with the configuration the
//! caller writes, without clustering (a lone Alertmanager would otherwise
//! wait for peers before it notifies), in a temporary directory that holds
//! its configuration, data and log. It is killed when its
//! [`TestAlertmanager`] is dropped, including when the caller panics.
//!
//! CI does not install it: [`TestAlertmanager::available`] says so and the
//! caller skips, whatever `CI` says.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::wait::wait_ready;

/// The Alertmanager binary of Debian's `prometheus-alertmanager`.
pub(crate) const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// An Alertmanager on a loopback port, killed when dropped.
pub(crate) struct TestAlertmanager {
    addr: String,
    log: PathBuf,
    child: Child,
    /// Configuration, data and log; removed on drop, after the process is
    /// killed (fields drop after [`Drop::drop`] has run).
    _dir: tempfile::TempDir,
}

impl TestAlertmanager {
    /// Whether the binary is installed; when it is not, prints why the
    /// caller is skipped and returns false.
    pub(crate) fn available() -> bool {
        let found = std::path::Path::new(ALERTMANAGER).is_file();
        if !found {
            eprintln!(
                "skipping: {ALERTMANAGER} not found; install Debian's prometheus-alertmanager package"
            );
        }
        found
    }

    /// Starts Alertmanager with `config` (its YAML: `route`, `receivers`)
    /// and returns once `/-/ready` answers; panics with its log if it
    /// exits or is not ready in time.
    pub(crate) async fn start(config: &str) -> TestAlertmanager {
        let dir = tempfile::Builder::new()
            .prefix("test-alertmanager-")
            .tempdir()
            .expect("create a temporary directory for Alertmanager");
        let config_path = dir.path().join("alertmanager.yml");
        std::fs::write(&config_path, config).expect("write alertmanager.yml");
        let log = dir.path().join("alertmanager.log");
        let output = File::create(&log).expect("create the Alertmanager log file");
        let addr = super::unused_addr().to_string();
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("duplicate the log file handle"))
            .stderr(output)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {ALERTMANAGER}: {err}"));
        let mut alertmanager = TestAlertmanager { addr, log, child, _dir: dir };
        let ready = format!("http://{}/-/ready", alertmanager.addr);
        if let Err(failed) = wait_ready(&mut alertmanager.child, &ready).await {
            panic!(
                "Alertmanager {failed} on {}; its log ends:\n{}",
                alertmanager.addr,
                alertmanager.log_tail(20)
            );
        }
        alertmanager
    }

    /// Its `host:port`, as Prometheus's `alerting` configuration names it.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The last `lines` lines of its log, for failure messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        super::process::log_tail(&self.log, lines)
    }
}

impl Drop for TestAlertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
