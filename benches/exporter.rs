//! What the exporter costs per poll and per scrape, from a real fleet (273
//! devices) to far beyond it (100,000).
//!
//! `cargo bench --bench exporter` prints one row per fleet size and checks
//! the targets from the issue; a missed target makes the bench fail. Each
//! size runs in two fresh processes (the bench re-runs itself), so that each
//! peak RSS belongs to one job alone:
//!
//! - `--ingest N DIR` is polls: the API's answer (every device with its raw
//!   JSON) in memory, stored in an on-disk cache in `DIR`: the first poll
//!   inserts every device, the next one changes every device, then ten
//!   polls change 1% of the devices each (a random hundredth: their
//!   connection state, last-online time and JSON), and a last one changes
//!   nothing. For each it measures the time and what the process wrote
//!   (`wchar` of `/proc/self/io`: every byte SQLite handed the kernel, the
//!   write-ahead log and the checkpoints that copy it into the database).
//! - `--serve N DIR` is an exporter restarted on that cache: open it (which
//!   checks it), load it, render
//!   the exposition (the previous one kept alive meanwhile, as a running
//!   exporter keeps serving it), compress it once for gzip scrapes, and serve
//!   `/metrics` through the real HTTP server over loopback, plain and gzip,
//!   many times on one keep-alive connection. Then it compares throughput
//!   with nginx (`/usr/sbin/nginx`, or `$NGINX`) serving the same bytes as
//!   static files from a temporary prefix, `metrics` and, for
//!   `Accept-Encoding: gzip`, `metrics.gz` through `gzip_static`: four
//!   keep-alive connections scrape each server as fast as they can for one
//!   second, plain and gzip, in five rounds in which the two servers take
//!   turns to go first, and the bench prints the median scrapes per second
//!   and the exporter's ratio to nginx.

use std::collections::BTreeMap;
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
#[allow(dead_code, reason = "the tests' wait helpers, of which the bench uses one")]
#[path = "../tests/support/wait.rs"]
mod wait;
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
        "{:>7} | {:>22} | {:>20} | {:>8} | {:>8} | {:>13} | {:>6} | {:>6} | {:>11} | {:>15} | {:>15} | {:>8}",
        "devices",
        "store 1st/all/1%",
        "written all/1%/0%",
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
        "{:>7} | {:>22} | {:>20} | {:>8} | {:>8} | {:>13} | {:>6} | {:>6} | {:>11} | {:>15} | {:>15} | {:>8}",
        "",
        "ms (1%: median)",
        "MB (1%: mean)",
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
            "{size:>7} | {:>6.1} /{:>6.1} /{:>6.1} | {:>6.2} /{:>5.2} /{:>5.3} | {:>8.1} | {:>8.1} | {:>5.1} /{:>6.1} | {:>6.1} | {:>6.2} | {:>5.1} ({:>4.2}) | {:>6.3} /{:>7.3} | {:>6.3} /{:>7.3} | {:>8.1}",
            f["store_first_ms"],
            f["store_all_ms"],
            f["store_1pct_ms"],
            f["written_all_mb"],
            f["written_1pct_mb"],
            f["written_none_mb"],
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

    println!();
    println!(
        "scrapes per second, {SCRAPERS} connections, median of {THROUGHPUT_ROUNDS} rounds of {} s \
         taking turns: exporter / nginx (ratio)",
        THROUGHPUT_FOR.as_secs()
    );
    println!("{:>7} | {:>26} | {:>26}", "devices", "plain", "Accept-Encoding: gzip");
    for (size, f) in &rows {
        println!(
            "{size:>7} | {:>8.0} / {:>8.0} ({:>4.2}×) | {:>8.0} / {:>8.0} ({:>4.2}×)",
            f["exporter_plain_per_s"],
            f["nginx_plain_per_s"],
            f["exporter_plain_per_s"] / f["nginx_plain_per_s"],
            f["exporter_gzip_per_s"],
            f["nginx_gzip_per_s"],
            f["exporter_gzip_per_s"] / f["nginx_gzip_per_s"],
        );
    }
    println!();

    let of = |size: usize| &rows.iter().find(|(s, _)| *s == size).unwrap().1;
    let gzip_ratio = |size: usize| of(size)["exporter_gzip_per_s"] / of(size)["nginx_gzip_per_s"];
    println!(
        "100,000 devices, a poll with 1% changed: {:.2} MB written (mean of {CHANGED_POLLS} polls, \
         checkpoints included; max {:.2} MB), stored in {:.1} ms (median)",
        of(100_000)["written_1pct_mb"],
        of(100_000)["written_1pct_max_mb"],
        of(100_000)["store_1pct_ms"],
    );
    let targets = [
        (
            "100,000 devices: a poll with 1% changed writes under 2 MB",
            of(100_000)["written_1pct_mb"] < 2.0,
        ),
        ("273 devices: a scrape served in under 1 ms (median)", of(273)["plain_median_ms"] < 1.0),
        (
            "273 devices: gzip scrapes at least as fast as nginx's gzip_static",
            gzip_ratio(273) >= 1.0,
        ),
        (
            "10,000 devices: gzip scrapes at least as fast as nginx's gzip_static",
            gzip_ratio(10_000) >= 1.0,
        ),
        ("100,000 devices: rendered in under 200 ms", of(100_000)["render_ms"] < 200.0),
        ("100,000 devices: served with under 150 MB RSS", of(100_000)["serve_peak_rss_mb"] < 150.0),
    ];
    report(&targets)
}

/// Polls with 1% of the devices changed, measured one by one.
const CHANGED_POLLS: usize = 10;

/// Polls of `size` devices stored in a cache in `dir`.
fn ingest(size: usize, dir: &Path) -> Figures {
    let path = dir.join("cache.sqlite");
    let mut cache = Cache::open(&path).unwrap();
    let mut now = 1_750_000_000.0;
    let mut figures = Figures::new();
    let mut store = |cache: &mut Cache, polled: &[Listed]| {
        now += 60.0;
        let written = bytes_written();
        let started = Instant::now();
        cache.store_poll("12", polled, now, true, FORGET_AFTER).unwrap();
        (ms(started.elapsed()), (bytes_written() - written) as f64 / 1e6)
    };
    let (first_ms, _) = store(&mut cache, &fleet(size, 0));
    figures.insert("store_first_ms".into(), first_ms);
    let mut polled = fleet(size, 1);
    let (all_ms, all_mb) = store(&mut cache, &polled);
    figures.insert("store_all_ms".into(), all_ms);
    figures.insert("written_all_mb".into(), all_mb);
    let (mut times, mut written) = (Vec::new(), Vec::new());
    for round in 0..CHANGED_POLLS {
        change_one_percent(&mut polled, round as u64);
        let (ms, mb) = store(&mut cache, &polled);
        times.push(ms);
        written.push(mb);
    }
    figures.insert("store_1pct_ms".into(), percentile(&mut times, 0.5));
    figures.insert("written_1pct_mb".into(), written.iter().sum::<f64>() / written.len() as f64);
    figures.insert("written_1pct_max_mb".into(), percentile(&mut written, 1.0));
    let (_, none_mb) = store(&mut cache, &polled);
    figures.insert("written_none_mb".into(), none_mb);
    drop(cache);
    let cache_bytes: u64 =
        std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().metadata().unwrap().len()).sum();
    figures.insert("cache_mb".into(), cache_bytes as f64 / 1e6);
    figures.insert("ingest_peak_rss_mb".into(), peak_rss_mb());
    figures
}

/// Bytes this process has handed to `write` and its kind so far
/// (`wchar` of `/proc/self/io`).
fn bytes_written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|line| line.strip_prefix("wchar:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("/proc/self/io has wchar")
}

/// A random hundredth of `polled` (at least one device) goes offline or
/// comes back, with a new last-online time, in its fields and its JSON.
fn change_one_percent(polled: &mut [Listed], round: u64) {
    let mut rng = fastrand::Rng::with_seed(1_000 + round);
    for at in rng.choose_multiple(0..polled.len(), (polled.len() / 100).max(1)) {
        let Listed { device, raw } = &mut polled[at];
        let (was, now) = match device.connection_state.as_deref() {
            Some("online") => ("online", "offline"),
            _ => ("offline", "online"),
        };
        device.connection_state = Some(now.into());
        device.last_online = device.last_online.map(|at| at + 60.0);
        *raw = raw.replace(
            &format!("\"connection_state\":\"{was}\""),
            &format!("\"connection_state\":\"{now}\""),
        );
    }
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
    let (mut plain, mut gzip) = runtime.block_on(scrape(exposition.clone(), scrapes));
    figures.insert("plain_median_ms".into(), percentile(&mut plain, 0.5));
    figures.insert("plain_p90_ms".into(), percentile(&mut plain, 0.9));
    figures.insert("gzip_median_ms".into(), percentile(&mut gzip, 0.5));
    figures.insert("gzip_p90_ms".into(), percentile(&mut gzip, 0.9));
    figures.insert("serve_peak_rss_mb".into(), peak_rss_mb());
    drop(runtime);
    throughput(&exposition, &mut figures);
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
            let gzip = read_response(&mut conn, &mut buffer).await;
            assert_eq!(gzip, kind == 1, "Content-Encoding: gzip is {gzip}");
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
/// that the client does not inflate the RSS being measured; whether it said
/// `Content-Encoding: gzip`.
async fn read_response(conn: &mut TcpStream, buffer: &mut [u8]) -> bool {
    let mut filled = 0;
    let (header_end, length, gzip) = loop {
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
            let gzip = head.lines().any(|line| {
                line.split_once(':').is_some_and(|(name, value)| {
                    name.eq_ignore_ascii_case("content-encoding") && value.trim() == "gzip"
                })
            });
            break (at + 4, length, gzip);
        }
    };
    let mut remaining: usize = length - (filled - header_end);
    while remaining > 0 {
        let chunk = remaining.min(buffer.len());
        let n = conn.read(&mut buffer[..chunk]).await.unwrap();
        assert!(n > 0, "the server closed the connection mid-body");
        remaining -= n;
    }
    gzip
}

/// Connections that scrape at once in the throughput comparison.
const SCRAPERS: usize = 4;
/// How long each throughput case runs in one round.
const THROUGHPUT_FOR: Duration = Duration::from_secs(1);
/// Rounds of the throughput comparison; each server's rate is the median.
const THROUGHPUT_ROUNDS: usize = 5;

/// Scrapes per second from the exporter's server and from nginx serving the
/// same bytes as static files (`gzip_static` for the compressed one), each
/// with [`SCRAPERS`] keep-alive connections for [`THROUGHPUT_FOR`], plain
/// and with `Accept-Encoding: gzip`: the median of [`THROUGHPUT_ROUNDS`]
/// rounds, the two servers taking turns to go first, so that what else
/// runs on the machine falls on both alike. The scrapers run on a thread
/// and runtime of their own, the same for both servers.
fn throughput(exposition: &Arc<Exposition>, figures: &mut Figures) {
    let server =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = server.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let exporter = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = server.spawn(serve(listener, Arc::new(Fixed(exposition.clone())), async {
        stopped.await.unwrap_or(());
    }));
    let nginx = Nginx::start(exposition);
    let scrapers = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut rates: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..THROUGHPUT_ROUNDS {
        let mut servers = [("exporter", exporter), ("nginx", nginx.addr)];
        if round % 2 == 1 {
            servers.reverse();
        }
        for (kind, gzip) in [("plain", false), ("gzip", true)] {
            for (name, addr) in servers {
                let rate = scrapers.block_on(scrapes_per_second(addr, gzip));
                rates.entry(format!("{name}_{kind}_per_s")).or_default().push(rate);
            }
        }
    }
    for (name, mut rates) in rates {
        figures.insert(name, percentile(&mut rates, 0.5));
    }
    drop(nginx);
    stop.send(()).unwrap();
    server.block_on(serving).unwrap().unwrap();
}

/// Completed scrapes per second of `/metrics` at `addr`.
async fn scrapes_per_second(addr: std::net::SocketAddr, gzip: bool) -> f64 {
    let request: &'static str = if gzip {
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept-Encoding: gzip\r\n\r\n"
    } else {
        "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n"
    };
    let started = Instant::now();
    let deadline = started + THROUGHPUT_FOR;
    let mut scrapers = tokio::task::JoinSet::new();
    for _ in 0..SCRAPERS {
        scrapers.spawn(async move {
            let mut conn = TcpStream::connect(addr).await.unwrap();
            conn.set_nodelay(true).unwrap();
            let mut buffer = vec![0u8; 256 * 1024];
            let mut done = 0u64;
            while Instant::now() < deadline {
                conn.write_all(request.as_bytes()).await.unwrap();
                let encoded = read_response(&mut conn, &mut buffer).await;
                assert_eq!(encoded, gzip, "{addr}: Content-Encoding: gzip is {encoded}");
                done += 1;
            }
            done
        });
    }
    let mut done = 0;
    while let Some(count) = scrapers.join_next().await {
        done += count.unwrap();
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// nginx (`/usr/sbin/nginx`, or `$NGINX`) serving the exposition as
/// `metrics` and `metrics.gz` from a temporary prefix on loopback, in the
/// foreground, as a child of the bench; stopped when dropped.
struct Nginx {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    fn start(exposition: &Exposition) -> Nginx {
        let prefix = tempfile::tempdir().unwrap();
        let root = prefix.path().join("html");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(prefix.path().join("logs")).unwrap();
        std::fs::write(root.join("metrics"), exposition.plain()).unwrap();
        std::fs::write(root.join("metrics.gz"), exposition.gzip()).unwrap();
        // A port the kernel picked, freed for nginx to bind.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = format!(
            "worker_processes 2;
             pid {prefix}/nginx.pid;
             error_log {prefix}/logs/error.log;
             events {{ worker_connections 64; }}
             http {{
                 access_log off;
                 sendfile on;
                 tcp_nopush on;
                 keepalive_requests 1000000;
                 open_file_cache max=16;
                 client_body_temp_path {prefix}/tmp;
                 proxy_temp_path {prefix}/tmp;
                 fastcgi_temp_path {prefix}/tmp;
                 uwsgi_temp_path {prefix}/tmp;
                 scgi_temp_path {prefix}/tmp;
                 server {{
                     listen 127.0.0.1:{port};
                     root {root};
                     gzip_static on;
                     location = /metrics {{
                         default_type \"text/plain; version=0.0.4; charset=utf-8\";
                     }}
                 }}
             }}\n",
            prefix = prefix.path().display(),
            root = root.display(),
        );
        let config_path = prefix.path().join("nginx.conf");
        std::fs::write(&config_path, config).unwrap();
        let program = std::env::var_os("NGINX").unwrap_or_else(|| "/usr/sbin/nginx".into());
        let child = std::process::Command::new(&program)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&config_path)
            .args(["-g", "daemon off;"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.to_string_lossy()));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let listening = format!("nginx listening on {addr}");
        wait::wait_until(&listening, || std::net::TcpStream::connect(addr).ok());
        Nginx { child, addr, _prefix: prefix }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then itself (SIGKILL
        // would leave the workers running).
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}
