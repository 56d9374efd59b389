//! One poll of one platform: fetch every page, store it, publish it.
//!
//! A poll never fails half-way in a way a scrape can see: the cache is
//! written in one transaction, the in-memory view is swapped in one step,
//! and a failed poll leaves the last good data in place (and says so in
//! `addreality_platform_up` and the log).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cache::{Cache, CachedDevice};
use super::config::PlatformConfig;
use super::state::ExporterState;
use crate::addreality::client::{Client, FetchReport};
use crate::addreality::model::Listed;
use crate::secret::Secret;

/// Everything a poll needs; shared by the per-platform tasks.
pub(crate) struct Poller {
    /// The API client (one connection pool for all platforms).
    pub(crate) client: Client,
    /// The SQLite cache; writes happen on the blocking pool.
    pub(crate) cache: Arc<Mutex<Cache>>,
    /// What is served.
    pub(crate) state: Arc<ExporterState>,
    /// How long an absent device is kept.
    pub(crate) forget_after: Duration,
}

impl Poller {
    /// Polls one platform once and publishes the result, calling
    /// `page_read` after each page (the watchdog's proof of progress).
    /// Returns whether the poll succeeded.
    pub(crate) async fn poll_once(
        &self,
        platform: &PlatformConfig,
        token: &Secret,
        page_read: &(dyn Fn() + Sync),
    ) -> bool {
        let id = platform.id.as_str();
        let started = Instant::now();
        let report = self.client.fetch_all_noting_pages(id, token, page_read).await;
        let ok = self.publish(id, report).await;
        self.state
            .metrics
            .poll_duration
            .with_label_values(&[id])
            .set(started.elapsed().as_secs_f64());
        let state = self.state.clone();
        // Rendering 100k devices takes tens of milliseconds: off the runtime.
        let _ = tokio::task::spawn_blocking(move || state.render()).await;
        ok
    }

    async fn publish(&self, id: &str, report: FetchReport) -> bool {
        let metrics = &self.state.metrics;
        metrics.requests.with_label_values(&[id]).inc_by(u64::from(report.requests));
        for reason in &report.failures {
            metrics.request_failures.with_label_values(&[id, reason]).inc();
        }
        let fleet = match report.outcome {
            Ok(fleet) => fleet,
            Err(err) => {
                let message = crate::error::with_causes(&err);
                metrics.platform_up.with_label_values(&[id]).set(0.0);
                metrics.polls.with_label_values(&[id, "failure"]).inc();
                let cached = self.state.platform(id).map_or(0, |view| view.devices.len());
                tracing::error!(
                    "platform {id}: poll failed: {message}; serving {cached} cached devices until the API answers again"
                );
                self.state.update(id, |view| {
                    view.polled = true;
                    view.last_error = Some(message);
                });
                return false;
            }
        };

        if !fleet.skipped.is_empty() {
            metrics.devices_skipped.with_label_values(&[id]).inc_by(fleet.skipped.len() as u64);
            let first = &fleet.skipped[0];
            tracing::warn!(
                "platform {id}: skipped {} unreadable device entries (first: entry {}: {}); the other devices are kept",
                fleet.skipped.len(),
                first.index,
                first.reason
            );
        }
        let complete = match &fleet.anomaly {
            None => true,
            Some(anomaly) => {
                metrics.paging_anomalies.with_label_values(&[id, anomaly.label()]).inc();
                tracing::warn!(
                    "platform {id}: {anomaly}; keeping the {} devices received and forgetting none this time",
                    fleet.devices.len()
                );
                false
            }
        };

        // An empty answer for a platform that had devices is more likely an
        // API glitch than a fleet deleted overnight: keep everything.
        let cached = self.state.platform(id).map_or(0, |view| view.devices.len());
        let complete = if fleet.devices.is_empty() && cached > 0 {
            tracing::warn!(
                "platform {id}: the API listed no devices although {cached} are cached; keeping them and forgetting none this time"
            );
            false
        } else {
            complete
        };

        let now = super::unix_now();
        let devices = self.store(id, fleet.devices, now, complete).await;
        let recovered = self.state.platform(id).is_some_and(|view| view.last_error.is_some());
        if recovered {
            tracing::info!("platform {id}: API answering again; {} devices", devices.len());
        } else {
            tracing::debug!("platform {id}: polled {} devices", devices.len());
        }
        metrics.platform_up.with_label_values(&[id]).set(1.0);
        metrics.platform_last_success.with_label_values(&[id]).set(now);
        metrics.polls.with_label_values(&[id, "success"]).inc();
        self.state.update(id, |view| {
            view.devices = devices;
            view.last_success = Some(now);
            view.polled = true;
            view.last_error = None;
        });
        true
    }

    /// Writes the poll to the cache and returns what the platform now
    /// exports: the cache's own copy of what it holds, shared, not read
    /// back. When the cache cannot be written (disk full, say), the poll is
    /// still served from memory and the failure is logged and counted.
    async fn store(
        &self,
        id: &str,
        listed: Vec<Listed>,
        now: f64,
        complete: bool,
    ) -> Arc<Vec<CachedDevice>> {
        let cache = self.cache.clone();
        let platform = id.to_string();
        let forget_after = self.forget_after;
        let listed = Arc::new(listed);
        let to_store = listed.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().expect("cache lock poisoned");
            let stored = cache.store_poll(&platform, &to_store, now, complete, forget_after)?;
            let current = cache.devices(&platform).unwrap_or_default();
            Ok::<_, super::cache::CacheError>((stored, current))
        })
        .await
        .expect("cache task panicked");
        let metrics = &self.state.metrics;
        match stored {
            Ok((stored, current)) => {
                if stored.forgotten > 0 {
                    metrics
                        .devices_forgotten
                        .with_label_values(&[id])
                        .inc_by(stored.forgotten as u64);
                    tracing::info!(
                        "platform {id}: forgot {} devices absent from the API for longer than forget_after",
                        stored.forgotten
                    );
                }
                metrics
                    .platform_devices_missing
                    .with_label_values(&[id])
                    .set(stored.missing as f64);
                current
            }
            Err(err) => {
                metrics.cache_write_failures.with_label_values(&[id]).inc();
                tracing::error!("platform {id}: {err}; serving this poll from memory only");
                let previous = self.state.platform(id).map(|view| view.devices).unwrap_or_default();
                Arc::new(merge_in_memory(&previous, &listed, now))
            }
        }
    }
}

/// The cache's upsert, done in memory: fresh devices replace their old
/// selves (keeping `first_seen`), absent ones stay as they were.
fn merge_in_memory(previous: &[CachedDevice], listed: &[Listed], now: f64) -> Vec<CachedDevice> {
    let mut merged: std::collections::BTreeMap<i64, CachedDevice> =
        previous.iter().map(|d| (d.device.id, d.clone())).collect();
    for entry in listed {
        let first_seen = merged.get(&entry.device.id).map_or(now, |d| d.first_seen);
        merged.insert(
            entry.device.id,
            CachedDevice { device: entry.device.clone(), first_seen, last_seen: now },
        );
    }
    merged.into_values().collect()
}
