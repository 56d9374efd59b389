//! What the exporter costs per poll and per scrape, from a real fleet (273
//! devices) to far beyond it (100,000).
//!
//! `cargo bench --bench exporter` prints one row per fleet size and checks
//! the targets from the issue; a missed target makes the bench fail. Each
//! size runs in two fresh processes (the bench re-runs itself), so that each
//! peak RSS belongs to one job alone:
//!
//! - `--ingest N DIR` is a poll: the API's answer (every device with its raw
//!   JSON) in memory, stored in an on-disk cache in `DIR`, twice (the first
//!   poll inserts, the next one updates).
//! - `--serve N DIR` is an exporter restarted on that cache: open it (which
//!   checks it), load it, render
//!   the exposition (the previous one kept alive meanwhile, as a running
//!   exporter keeps serving it), compress it once for gzip scrapes, and serve
//!   `/metrics` through the real HTTP server over loopback, plain and gzip,
//!   many times on one keep-alive connection.

use std::ffi::OsStr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use signage_watchdog::addreality::model::{Device, Listed};
use signage_watchdog::exporter::cache::Cache;
use signage_watchdog::exporter::render::{render_devices, PlatformDevices};
use signage_watchdog::http::{serve, Exposition, Health, Pages};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;
use support::{ms, peak_rss_mb, percentile, print_figures, report, run_child, Figures};

const SIZES: [usize; 3] = [273, 10_000, 100_000];
const POLL_INTERVAL: Duration = Duration::from_secs(60);
const FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let job = |at: usize| {
        let size: usize = args[at + 1].parse().expect("a fleet size");
        (size, Path::new(&args[at + 2]).to_owned())
    };
    let figures = if let Some(at) = args.iter().position(|arg| arg == "--ingest") {
        let (size, dir) = job(at);
        Some(ingest(size, &dir))
    } else if let Some(at) = args.iter().position(|arg| arg == "--serve") {
        let (size, dir) = job(at);
        Some(serve_from_cache(size, &dir))
    } else {
        None
    };
    if let Some(figures) = figures {
        print_figures(figures);
        return ExitCode::SUCCESS;
    }

    let mut rows = Vec::new();
    for size in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let mut row = Figures::new();
        for job in ["--ingest", "--serve"] {
            match run_child(&[
                OsStr::new(job),
                OsStr::new(&size.to_string()),
                dir.path().as_os_str(),
            ]) {
                Ok(figures) => row.extend(figures),
                Err(why) => {
                    eprintln!("{size} devices, {job}: {why}");
                    return ExitCode::FAILURE;
                }
            }
        }
        rows.push((size, row));
    }

    println!(
        "{:>7} | {:>16} | {:>8} | {:>8} | {:>13} | {:>6} | {:>6} | {:>11} | {:>15} | {:>15} | {:>8}",
        "devices",
        "store 1st/next",
        "cache",
        "poll RSS",
        "open/load",
        "render",
        "text",
        "gzip once",
        "scrape plain",
        "scrape gzip",
        "serve RSS"
    );
    println!(
        "{:>7} | {:>16} | {:>8} | {:>8} | {:>13} | {:>6} | {:>6} | {:>11} | {:>15} | {:>15} | {:>8}",
        "",
        "ms",
        "MB",
        "peak MB",
        "ms",
        "ms",
        "MB",
        "ms (MB)",
        "ms median/p90",
        "ms median/p90",
        "peak MB"
    );
    for (size, f) in &rows {
        println!(
            "{size:>7} | {:>7.1} /{:>7.1} | {:>8.1} | {:>8.1} | {:>5.1} /{:>6.1} | {:>6.1} | {:>6.2} | {:>5.1} ({:>4.2}) | {:>6.3} /{:>7.3} | {:>6.3} /{:>7.3} | {:>8.1}",
            f["store_first_ms"],
            f["store_next_ms"],
            f["cache_mb"],
            f["ingest_peak_rss_mb"],
            f["open_ms"],
            f["load_ms"],
            f["render_ms"],
            f["text_mb"],
            f["gzip_ms"],
            f["gzip_mb"],
            f["plain_median_ms"],
            f["plain_p90_ms"],
            f["gzip_median_ms"],
            f["gzip_p90_ms"],
            f["serve_peak_rss_mb"],
        );
    }

    let of = |size: usize| &rows.iter().find(|(s, _)| *s == size).unwrap().1;
    let targets = [
        ("273 devices: a scrape served in under 1 ms (median)", of(273)["plain_median_ms"] < 1.0),
        ("100,000 devices: rendered in under 200 ms", of(100_000)["render_ms"] < 200.0),
        ("100,000 devices: served with under 150 MB RSS", of(100_000)["serve_peak_rss_mb"] < 150.0),
    ];
    report(&targets)
}

/// Two polls of `size` devices stored in a cache in `dir`.
fn ingest(size: usize, dir: &Path) -> Figures {
    let path = dir.join("cache.sqlite");
    let mut cache = Cache::open(&path).unwrap();
    let now = 1_750_000_000.0;
    let mut figures = Figures::new();
    for (round, figure) in ["store_first_ms", "store_next_ms"].into_iter().enumerate() {
        let polled = fleet(size, round as u64);
        let started = Instant::now();
        cache.store_poll("12", &polled, now + 60.0 * round as f64, true, FORGET_AFTER).unwrap();
        figures.insert(figure.into(), ms(started.elapsed()));
    }
    drop(cache);
    let cache_bytes: u64 =
        std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).sum();
    figures.insert("cache_mb".into(), cache_bytes as f64 / 1e6);
    figures.insert("ingest_peak_rss_mb".into(), peak_rss_mb());
    figures
}

/// A restarted exporter: load the cache in `dir`, render, serve.
fn serve_from_cache(size: usize, dir: &Path) -> Figures {
    let mut figures = Figures::new();
    let started = Instant::now();
    let cache = Cache::open(&dir.join("cache.sqlite")).unwrap();
    figures.insert("open_ms".into(), ms(started.elapsed()));
    let started = Instant::now();
    let platforms = cache.load().unwrap();
    figures.insert("load_ms".into(), ms(started.elapsed()));
    drop(cache);
    assert_eq!(platforms.iter().map(|p| p.devices.len()).sum::<usize>(), size);
    let views: Vec<PlatformDevices<'_>> = platforms
        .iter()
        .map(|p| PlatformDevices { platform_id: &p.platform_id, devices: &p.devices })
        .collect();

    let rounds = (2_000_000 / size).clamp(5, 200);
    let mut render_times = Vec::with_capacity(rounds);
    let mut current = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let mut next = Vec::new();
        render_devices(&mut next, &views, POLL_INTERVAL);
        render_times.push(ms(started.elapsed()));
        // Only now is the previous one let go, as in a running exporter.
        current = next;
    }
    figures.insert("render_ms".into(), percentile(&mut render_times, 0.5));
    figures.insert("text_mb".into(), current.len() as f64 / 1e6);
    let exposition = Arc::new(Exposition::new(Bytes::from(current)));
    let started = Instant::now();
    let gzip_bytes = exposition.gzip().len();
    figures.insert("gzip_ms".into(), ms(started.elapsed()));
    figures.insert("gzip_mb".into(), gzip_bytes as f64 / 1e6);

    let scrapes = (5_000_000 / size).clamp(30, 2000);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut plain, mut gzip) = runtime.block_on(scrape(exposition, scrapes));
    figures.insert("plain_median_ms".into(), percentile(&mut plain, 0.5));
    figures.insert("plain_p90_ms".into(), percentile(&mut plain, 0.9));
    figures.insert("gzip_median_ms".into(), percentile(&mut gzip, 0.5));
    figures.insert("gzip_p90_ms".into(), percentile(&mut gzip, 0.9));
    figures.insert("serve_peak_rss_mb".into(), peak_rss_mb());
    figures
}

/// A fleet as the API would list it at poll `round`: names in Latin and
/// Cyrillic with the odd quote, about 400 bytes of JSON per device.
fn fleet(size: usize, round: u64) -> Vec<Listed> {
    let mut rng = fastrand::Rng::with_seed(273 + round);
    (0..size)
        .map(|i| {
            let id = 30_000 + i as i64;
            let name = match i % 4 {
                0 => format!("Arzamas_Lesnaia_{i}"),
                1 => format!("Магазин \"Лента\" №{i}"),
                2 => format!("Moscow\\Tverskaya {i} (lobby)"),
                _ => format!("ТЦ Мега, экран {i}"),
            };
            let device = Device {
                id,
                name,
                connection_state: Some(if rng.u8(..10) < 8 { "online" } else { "offline" }.into()),
                player_status: Some(if rng.u8(..4) < 3 { "playback" } else { "pause" }.into()),
                last_online: Some(1_750_000_000.0 - rng.u32(..86_400_000) as f64 / 1000.0),
                activation_state: Some(rng.u8(..20) != 0),
                player_version: Some(format!("4.1.{}", rng.u8(60..80))),
                time_zone: Some("+03:00".into()),
            };
            let raw = serde_json::json!({
                "id": device.id,
                "name": device.name,
                "connection_state": device.connection_state,
                "player_status": device.player_status,
                "last_online": "2025-06-15T15:06:40.123456Z",
                "activation_state": device.activation_state,
                "player_version": device.player_version,
                "time_zone": device.time_zone,
                "group": {"id": 7, "name": "Retail / Volga region"},
                "serial": format!("AR-{:012}", rng.u64(..1_000_000_000_000)),
                "platform": "android",
                "resolution": "1920x1080",
                "tags": ["lobby", "vertical"],
            })
            .to_string();
            Listed { device, raw }
        })
        .collect()
}

struct Fixed(Arc<Exposition>);

impl Pages for Fixed {
    fn title(&self) -> &str {
        "exporter bench"
    }
    fn exposition(&self) -> Arc<Exposition> {
        self.0.clone()
    }
    fn health(&self) -> Health {
        Health::Healthy("bench".into())
    }
}

/// Serves `exposition` on loopback and times `count` scrapes of each kind,
/// in milliseconds, after a few unmeasured ones.
async fn scrape(exposition: Arc<Exposition>, count: usize) -> (Vec<f64>, Vec<f64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::new(Fixed(exposition)), async {
        stopped.await.unwrap_or(());
    }));

    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut times = [Vec::with_capacity(count), Vec::with_capacity(count)];
    for (kind, request) in [
        "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept-Encoding: gzip\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        for round in 0..count + 5 {
            let started = Instant::now();
            conn.write_all(request.as_bytes()).await.unwrap();
            read_response(&mut conn, &mut buffer).await;
            if round >= 5 {
                times[kind].push(ms(started.elapsed()));
            }
        }
    }
    drop(conn);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let [plain, gzip] = times;
    (plain, gzip)
}

/// Reads one response with a `Content-Length` body, discarding the body so
/// that the client does not inflate the RSS being measured.
async fn read_response(conn: &mut TcpStream, buffer: &mut [u8]) {
    let mut filled = 0;
    let (header_end, length) = loop {
        let n = conn.read(&mut buffer[filled..]).await.unwrap();
        assert!(n > 0, "the server closed the connection");
        filled += n;
        if let Some(at) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..at]).unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a Content-Length header");
            break (at + 4, length);
        }
    };
    let mut remaining: usize = length - (filled - header_end);
    while remaining > 0 {
        let chunk = remaining.min(buffer.len());
        let n = conn.read(&mut buffer[..chunk]).await.unwrap();
        assert!(n > 0, "the server closed the connection mid-body");
        remaining -= n;
    }
}
