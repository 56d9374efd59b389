//! What the exporter currently knows, shared by the pollers and the HTTP
//! server.
//!
//! Pollers write here after each poll and then re-render the exposition
//! once; scrapes only clone an `Arc` of the rendered bytes. The locks are
//! std ones: they are held for map updates and the render (no `.await`
//! inside), never across I/O.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::cache::{CachedDevice, CachedPlatform};
use super::metrics::Metrics;
use super::render::{render_devices, PlatformDevices};
use crate::http::{Exposition, Health, Pages};

/// One platform as last polled or loaded from the cache.
#[derive(Debug, Default, Clone)]
pub(crate) struct PlatformView {
    /// Devices exported, sorted by id.
    pub(crate) devices: Arc<Vec<CachedDevice>>,
    /// Unix time of the last successful poll (possibly from before a restart).
    pub(crate) last_success: Option<f64>,
    /// Whether a poll has finished since start-up.
    pub(crate) polled: bool,
    /// Why the last poll failed, when it did (no secrets: errors never hold tokens).
    pub(crate) last_error: Option<String>,
}

/// The exporter's shared state.
pub struct ExporterState {
    platforms: Mutex<BTreeMap<String, PlatformView>>,
    exposition: RwLock<Arc<Exposition>>,
    /// Held for a whole render. Two pollers finishing together would
    /// otherwise render at once, and the one that read the state first
    /// could publish last, serving a platform's old values until the next
    /// poll.
    rendering: Mutex<()>,
    /// The exporter's own metrics.
    pub(crate) metrics: Metrics,
    poll_interval: Duration,
}

impl ExporterState {
    /// State for these platform ids, seeded from the cache so the first
    /// scrape after a restart already serves the last known devices.
    pub fn new(
        platforms: &[(String, Option<String>)],
        cached: Vec<CachedPlatform>,
        poll_interval: Duration,
    ) -> ExporterState {
        let metrics = Metrics::new(poll_interval);
        let mut views = BTreeMap::new();
        for (id, name) in platforms {
            metrics.register_platform(id, name.as_deref());
            views.insert(id.clone(), PlatformView::default());
        }
        for platform in cached {
            // Platforms no longer configured stay in the cache file but are
            // not exported.
            if let Some(view) = views.get_mut(&platform.platform_id) {
                metrics
                    .platform_devices_missing
                    .with_label_values(&[platform.platform_id.as_str()])
                    .set(platform.missing as f64);
                if let Some(at) = platform.last_success {
                    metrics
                        .platform_last_success
                        .with_label_values(&[platform.platform_id.as_str()])
                        .set(at);
                }
                view.devices = Arc::new(platform.devices);
                view.last_success = platform.last_success;
            }
        }
        let state = ExporterState {
            platforms: Mutex::new(views),
            exposition: RwLock::new(Arc::new(Exposition::default())),
            rendering: Mutex::new(()),
            metrics,
            poll_interval,
        };
        state.render();
        state
    }

    /// Applies `change` to one platform's view.
    pub(crate) fn update(&self, platform_id: &str, change: impl FnOnce(&mut PlatformView)) {
        let mut platforms = self.platforms.lock().expect("state lock poisoned");
        change(platforms.entry(platform_id.to_string()).or_default());
    }

    /// A copy of one platform's view.
    pub(crate) fn platform(&self, platform_id: &str) -> Option<PlatformView> {
        self.platforms.lock().expect("state lock poisoned").get(platform_id).cloned()
    }

    /// Renders the whole exposition from the current views and metrics and
    /// makes it the one every scrape serves.
    pub(crate) fn render(&self) {
        let _rendering = self.rendering.lock().expect("render lock poisoned");
        let views: Vec<(String, Arc<Vec<CachedDevice>>)> = {
            let platforms = self.platforms.lock().expect("state lock poisoned");
            for (id, view) in platforms.iter() {
                self.metrics
                    .platform_devices
                    .with_label_values(&[id.as_str()])
                    .set(view.devices.len() as f64);
            }
            platforms.iter().map(|(id, view)| (id.clone(), view.devices.clone())).collect()
        };
        let slices: Vec<PlatformDevices<'_>> = views
            .iter()
            .map(|(id, devices)| PlatformDevices { platform_id: id, devices })
            .collect();
        let previous = self.exposition.read().expect("exposition lock poisoned").plain().len();
        let mut out = Vec::with_capacity(previous + 4096);
        render_devices(&mut out, &slices, self.poll_interval);
        self.metrics.encode(&mut out);
        let exposition = Exposition::new(out);
        // Prometheus always asks for gzip: compress here, on the blocking
        // pool, rather than in the first scrape after the poll.
        exposition.gzip();
        *self.exposition.write().expect("exposition lock poisoned") = Arc::new(exposition);
    }

    /// The line `systemctl status` shows at `now` (Unix seconds): the
    /// devices served and the stalest platform's last successful poll
    /// ("273 devices, last poll 12 s ago"), then the platforms whose last
    /// poll failed, if any.
    pub(crate) fn status_line(&self, now: f64) -> String {
        let platforms = self.platforms.lock().expect("state lock poisoned");
        let devices: usize = platforms.values().map(|view| view.devices.len()).sum();
        let devices =
            if devices == 1 { "1 device".to_string() } else { format!("{devices} devices") };
        let never: Vec<&str> = platforms
            .iter()
            .filter(|(_, view)| view.last_success.is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        let stalest = platforms.values().filter_map(|view| view.last_success).reduce(f64::min);
        let last = match (stalest, never.is_empty()) {
            (Some(at), true) => format!("last poll {:.0} s ago", (now - at).max(0.0)),
            _ if platforms.values().all(|view| !view.polled) => "first poll in progress".into(),
            _ => format!("no successful poll yet for platform {}", never.join(", ")),
        };
        let failing: Vec<&str> = platforms
            .iter()
            .filter(|(_, view)| view.last_error.is_some())
            .map(|(id, _)| id.as_str())
            .collect();
        if failing.is_empty() {
            format!("{devices}, {last}")
        } else {
            format!("{devices}, {last}; last poll failed for platform {}", failing.join(", "))
        }
    }

    /// Health as `/healthz` reports it: healthy while every platform has
    /// succeeded within three poll intervals or has cached devices to serve.
    pub(crate) fn health_at(&self, now: f64) -> Health {
        let platforms = self.platforms.lock().expect("state lock poisoned");
        let fresh_within = 3.0 * self.poll_interval.as_secs_f64();
        let mut problems = Vec::new();
        let mut notes = Vec::new();
        for (id, view) in platforms.iter() {
            let fresh = view.last_success.is_some_and(|at| now - at <= fresh_within);
            if fresh && view.last_error.is_none() {
                continue;
            }
            let why = view.last_error.as_deref().unwrap_or("no successful poll yet");
            if !view.polled {
                notes.push(format!("platform {id}: first poll in progress"));
            } else if !view.devices.is_empty() {
                notes.push(format!(
                    "platform {id}: serving {} cached devices; last poll failed: {why}",
                    view.devices.len()
                ));
            } else {
                problems.push(format!("platform {id}: no data to serve; last poll failed: {why}"));
            }
        }
        if !problems.is_empty() {
            Health::Unhealthy(problems.join("; "))
        } else if notes.is_empty() {
            Health::Healthy(format!("{} platform(s) polled successfully", platforms.len()))
        } else {
            Health::Healthy(notes.join("; "))
        }
    }
}

impl Pages for ExporterState {
    fn title(&self) -> &str {
        "AddReality exporter"
    }

    fn exposition(&self) -> Arc<Exposition> {
        self.exposition.read().expect("exposition lock poisoned").clone()
    }

    fn health(&self) -> Health {
        self.health_at(super::unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_tells_devices_the_stalest_poll_and_failures() {
        let platforms = [("12".to_string(), None), ("14".to_string(), None)];
        let state = ExporterState::new(&platforms, Vec::new(), Duration::from_secs(60));
        assert_eq!(state.status_line(1000.0), "0 devices, first poll in progress");
        let device = |id| CachedDevice {
            device: crate::addreality::model::Device::online_for_tests(id, "player"),
            first_seen: 0.0,
            last_seen: 0.0,
        };
        state.update("12", |view| {
            view.devices = Arc::new(vec![device(1), device(2)]);
            view.last_success = Some(988.2);
            view.polled = true;
        });
        assert_eq!(state.status_line(1000.0), "2 devices, no successful poll yet for platform 14");
        state.update("14", |view| {
            view.devices = Arc::new(vec![device(3)]);
            view.last_success = Some(940.0);
            view.polled = true;
            view.last_error = Some("timeout".into());
        });
        assert_eq!(
            state.status_line(1000.0),
            "3 devices, last poll 60 s ago; last poll failed for platform 14"
        );
        state.update("14", |view| view.last_error = None);
        state.update("12", |view| view.devices = Arc::new(vec![device(1)]));
        state.update("14", |view| view.devices = Arc::new(Vec::new()));
        state.update("14", |view| view.last_success = Some(999.0));
        assert_eq!(state.status_line(1000.0), "1 device, last poll 12 s ago");
    }

    /// Platforms that finish their polls together each render; whatever
    /// order the renders run in, the exposition served last has every
    /// platform's latest values.
    #[test]
    fn concurrent_renders_never_publish_an_older_state() {
        let ids: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        let platforms: Vec<(String, Option<String>)> =
            ids.iter().map(|id| (id.clone(), None)).collect();
        for round in 0..50 {
            let state =
                Arc::new(ExporterState::new(&platforms, Vec::new(), Duration::from_secs(60)));
            std::thread::scope(|scope| {
                for id in &ids {
                    let state = &state;
                    scope.spawn(move || {
                        state.metrics.platform_up.with_label_values(&[id.as_str()]).set(1.0);
                        state.render();
                    });
                }
            });
            let exposition = state.exposition();
            let text = String::from_utf8_lossy(exposition.plain());
            for id in &ids {
                let line = format!("addreality_platform_up{{platform_id=\"{id}\"}} 1\n");
                assert!(text.contains(&line), "round {round}: platform {id} is served as down");
            }
        }
    }
}
