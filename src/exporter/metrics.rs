//! The exporter's own metrics: how polling goes, per platform.
//!
//! Device series are rendered by hand in [`super::render`] for speed; what
//! is here is small (a few series per platform) and kept in a `prometheus`
//! registry, encoded after the device families at each render.

use prometheus::{Gauge, GaugeVec, IntCounterVec, Opts, Registry};

/// Every series the exporter reports about itself.
pub(crate) struct Metrics {
    registry: Registry,
    /// `addreality_platform_up{platform_id}`: 1 when the last poll succeeded.
    pub(crate) platform_up: GaugeVec,
    /// `addreality_platform_devices{platform_id}`: devices exported.
    pub(crate) platform_devices: GaugeVec,
    /// `addreality_platform_devices_missing{platform_id}`: exported from the
    /// cache but absent from the last complete poll.
    pub(crate) platform_devices_missing: GaugeVec,
    /// `addreality_platform_last_success_timestamp_seconds{platform_id}`.
    pub(crate) platform_last_success: GaugeVec,
    /// `addreality_platform_info{platform_id,name}` 1.
    pub(crate) platform_info: GaugeVec,
    /// `addreality_poll_duration_seconds{platform_id}`: the last poll, retries included.
    pub(crate) poll_duration: GaugeVec,
    /// `addreality_polls_total{platform_id,result}`.
    pub(crate) polls: IntCounterVec,
    /// `addreality_requests_total{platform_id}`: HTTP requests to the API.
    pub(crate) requests: IntCounterVec,
    /// `addreality_request_failures_total{platform_id,reason}`.
    pub(crate) request_failures: IntCounterVec,
    /// `addreality_devices_skipped_total{platform_id}`: unreadable `data[]` entries.
    pub(crate) devices_skipped: IntCounterVec,
    /// `addreality_devices_forgotten_total{platform_id}`: dropped after `forget_after`.
    pub(crate) devices_forgotten: IntCounterVec,
    /// `addreality_paging_anomalies_total{platform_id,kind}`.
    pub(crate) paging_anomalies: IntCounterVec,
    /// `addreality_cache_write_failures_total{platform_id}`.
    pub(crate) cache_write_failures: IntCounterVec,
    /// `addreality_exporter_config_last_reload_successful`: 1 when the last
    /// SIGHUP reload (or the start-up) put its settings in force.
    config_last_reload_successful: Gauge,
    /// `addreality_exporter_config_last_reload_success_timestamp_seconds`.
    config_last_reload_success: Gauge,
}

impl Metrics {
    /// Registers every family, plus build info and process metrics.
    pub(crate) fn new(poll_interval: std::time::Duration) -> Metrics {
        let registry = Registry::new();
        let every = humantime::format_duration(poll_interval);
        let gauge = |name: &str, help: String, labels: &[&str]| {
            let vec = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(vec.clone())).expect("unique metric");
            vec
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(vec.clone())).expect("unique metric");
            vec
        };
        let build_info = gauge(
            "addreality_exporter_build_info",
            "A metric with a constant 1 value labelled by the exporter's version.".into(),
            &["version"],
        );
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1.0);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("unique metric");
        let single = |name: &str, help: &str| {
            let gauge = Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
            registry.register(Box::new(gauge.clone())).expect("unique metric");
            gauge
        };
        // Named as Prometheus and Alertmanager name theirs, so the same
        // alert covers all three. Start-up loaded the settings: a success.
        let config_last_reload_successful = single(
            "addreality_exporter_config_last_reload_successful",
            "Whether the last configuration reload (SIGHUP) succeeded (1) or kept the previous settings (0).",
        );
        config_last_reload_successful.set(1.0);
        let config_last_reload_success = single(
            "addreality_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start-up or SIGHUP).",
        );
        config_last_reload_success.set(super::unix_now());
        Metrics {
            config_last_reload_successful,
            config_last_reload_success,
            platform_up: gauge(
                "addreality_platform_up",
                format!("Whether the last poll of the platform's API succeeded (1) or not (0); polled every {every}."),
                &["platform_id"],
            ),
            platform_devices: gauge(
                "addreality_platform_devices",
                format!("Devices exported for the platform, from a cache refreshed every {every}."),
                &["platform_id"],
            ),
            platform_devices_missing: gauge(
                "addreality_platform_devices_missing",
                "Devices still exported from the cache but absent from the last complete poll (kept until forget_after).".into(),
                &["platform_id"],
            ),
            platform_last_success: gauge(
                "addreality_platform_last_success_timestamp_seconds",
                "Unix time of the platform's last successful poll.".into(),
                &["platform_id"],
            ),
            platform_info: gauge(
                "addreality_platform_info",
                "A metric with a constant 1 value labelled by the platform's configured name.".into(),
                &["platform_id", "name"],
            ),
            poll_duration: gauge(
                "addreality_poll_duration_seconds",
                "Duration of the platform's last poll, all pages and retries included.".into(),
                &["platform_id"],
            ),
            polls: counter(
                "addreality_polls_total",
                "Polls of the platform's API by result (success or failure).",
                &["platform_id", "result"],
            ),
            requests: counter(
                "addreality_requests_total",
                "HTTP requests sent to the AddReality API, retries included.",
                &["platform_id"],
            ),
            request_failures: counter(
                "addreality_request_failures_total",
                "Failed HTTP requests to the AddReality API by reason.",
                &["platform_id", "reason"],
            ),
            devices_skipped: counter(
                "addreality_devices_skipped_total",
                "Device entries in API answers that could not be read and were skipped.",
                &["platform_id"],
            ),
            devices_forgotten: counter(
                "addreality_devices_forgotten_total",
                "Devices removed from the cache after being absent from the API for forget_after.",
                &["platform_id"],
            ),
            paging_anomalies: counter(
                "addreality_paging_anomalies_total",
                "Polls whose paging stopped early because the API ignored offset or its total did not add up.",
                &["platform_id", "kind"],
            ),
            cache_write_failures: counter(
                "addreality_cache_write_failures_total",
                "Polls whose result could not be written to the SQLite cache (served from memory anyway).",
                &["platform_id"],
            ),
            registry,
        }
    }

    /// Creates the platform's series at zero, so that a counter exists
    /// before its first increment and `rate()` sees the first one.
    pub(crate) fn register_platform(&self, platform_id: &str, name: Option<&str>) {
        self.platform_up.with_label_values(&[platform_id]).set(0.0);
        self.platform_devices.with_label_values(&[platform_id]);
        self.platform_devices_missing.with_label_values(&[platform_id]);
        self.platform_info.with_label_values(&[platform_id, name.unwrap_or("")]).set(1.0);
        for result in ["success", "failure"] {
            self.polls.with_label_values(&[platform_id, result]);
        }
        self.requests.with_label_values(&[platform_id]);
        self.devices_skipped.with_label_values(&[platform_id]);
        self.devices_forgotten.with_label_values(&[platform_id]);
        self.cache_write_failures.with_label_values(&[platform_id]);
    }

    /// A reload (SIGHUP) ended at `now`, putting new settings in force or
    /// (`successful` false) keeping the previous ones.
    pub(crate) fn reloaded(&self, successful: bool, now: f64) {
        self.config_last_reload_successful.set(if successful { 1.0 } else { 0.0 });
        if successful {
            self.config_last_reload_success.set(now);
        }
    }

    /// Appends the registry's families in the text format.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        use prometheus::Encoder;
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), out)
            .expect("encoding to a Vec cannot fail");
    }
}
