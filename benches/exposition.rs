//! How fast jobctl's scrape source reads an exporter's page: the real
//! exporter's `/metrics` for the simulated demo fleet (273 devices, as the
//! design's site has, and 10,000 for scale), read by the exposition parser
//! alone and into the merged store a cycle answers its queries from
//! (`Scraped::add_page`).
//!
//! `cargo bench --bench exposition` prints one row per fleet size: the
//! page's size and series, and the median time of each over many reads.

use std::time::{Duration, Instant};

use signage_watchdog::addreality::simulator::Simulator;
use signage_watchdog::exporter::cache::Cache;
use signage_watchdog::exporter::config::{ExporterConfig, PlatformConfig};
use signage_watchdog::exporter::Exporter;
use signage_watchdog::http::Pages;
use signage_watchdog::prometheus_api::exposition;
use signage_watchdog::prometheus_api::scrape::Scraped;
use signage_watchdog::secret::{Secret, SecretSource};

const TOKEN: &str = "bench-token";

/// The exporter's page for a simulated fleet of `size` devices.
async fn page(size: usize) -> String {
    let simulator = Simulator::new(TOKEN);
    simulator.set_devices(Simulator::demo_fleet(size, 7));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Simulator::device_list_url(listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(simulator.serve(listener, async {
        let _ = stopped.await;
    }));
    let dir = tempfile::tempdir().unwrap();
    let config = ExporterConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        api_url: url,
        poll_interval: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        cache: dir.path().join("cache.db"),
        page_size: 300,
        max_page_bytes: 64 * 1024 * 1024,
        forget_after: Duration::from_secs(3600),
        platforms: vec![PlatformConfig {
            id: "12".into(),
            name: None,
            token: SecretSource::Env("unused".into()),
            token_at: "bench".into(),
        }],
        base_dir: ".".into(),
    };
    let platforms = config.platforms.iter().cloned().map(|p| (p, Secret::new(TOKEN))).collect();
    let exporter =
        Exporter::start(&config, platforms, Cache::open(&config.cache).unwrap()).await.unwrap();
    assert!(exporter.poll_all_once().await.is_empty(), "the exporter polls the simulator");
    drop(stop);
    String::from_utf8(exporter.state().exposition().plain().to_vec()).unwrap()
}

fn median_us(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("| devices | page | series | parse (median) | into the store (median) | parse rate |");
    println!("|---|---|---|---|---|---|");
    for size in [273, 10_000] {
        let page = runtime.block_on(page(size));
        let rounds = (3_000_000 / page.len()).clamp(20, 2_000);
        let mut series = 0;
        let parse: Vec<f64> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                series = exposition::parse(&page, |sample| {
                    std::hint::black_box(sample);
                })
                .unwrap();
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let store: Vec<f64> = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                let mut scraped = Scraped::default();
                scraped.add_page(&page, "127.0.0.1:9747").unwrap();
                std::hint::black_box(&scraped);
                started.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        let (parse, store) = (median_us(parse), median_us(store));
        println!(
            "| {size} | {:.1} KB | {series} | {parse:.0} µs | {store:.0} µs | {:.0} MB/s |",
            page.len() as f64 / 1e3,
            page.len() as f64 / parse
        );
    }
}
