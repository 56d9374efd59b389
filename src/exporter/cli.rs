//! The `addreality-exporter` command line: flags, start-up order, exit codes.
//!
//! The binary only installs logging and signal handlers and calls
//! [`run`]; everything a sysadmin can get wrong is reported here, once,
//! with a distinct exit code (see [`Exit`]).

use crate::error::with_causes;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::Poll;

use clap::Parser;

use super::cache::Cache;
use super::config::ExporterConfig;
use super::Exporter;
use crate::secret::Secret;

/// Polls the AddReality API for every configured account, caches device
/// state in SQLite and serves it as Prometheus metrics.
#[derive(Debug, Parser)]
// No bare `about`: it would show the package's description (both daemons)
// instead of the doc comment above, which is about this binary.
#[command(name = "addreality-exporter", version, long_about = None)]
pub struct Args {
    /// Configuration file.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/addreality-exporter/config.toml"
    )]
    pub config: PathBuf,
    /// Check the configuration and the tokens, print a summary and exit.
    #[arg(long, conflicts_with_all = ["once", "demo"])]
    pub check_config: bool,
    /// Poll every platform once, print the metrics to stdout and exit;
    /// exits 6 when a platform failed. Does not touch the cache file.
    #[arg(long, conflicts_with = "demo")]
    pub once: bool,
    /// Run against a built-in simulated AddReality account of 273 devices
    /// on loopback; no configuration file or token needed.
    #[arg(long)]
    pub demo: bool,
    /// Listen address, overriding the configuration's `listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Log level; RUST_LOG overrides it.
    // Checked here: the log filter would take any other word for a module
    // name and silently log nothing at all.
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        value_parser = ["error", "warn", "info", "debug", "trace"]
    )]
    pub log_level: String,
}

/// Exit codes, documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Clean shutdown, valid configuration, or every platform polled.
    Ok = 0,
    /// An unexpected runtime failure (the HTTP server died).
    Runtime = 1,
    /// Bad command line (clap's own code).
    Usage = 2,
    /// The configuration file or a token is unusable.
    Config = 3,
    /// The SQLite cache cannot be opened or read.
    Cache = 4,
    /// The listen address cannot be bound.
    Listen = 5,
    /// `--once`: at least one platform's poll failed.
    PollFailed = 6,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

fn fail(exit: Exit, message: impl std::fmt::Display) -> Exit {
    eprintln!("addreality-exporter: {message}");
    exit
}

/// Runs the command line until done or until `shutdown` completes.
///
/// The daemon and the demo poll `shutdown` once before they start, so that
/// a future which installs signal handlers when first polled (the binary's)
/// has them in place before "listening on" is logged; until then SIGTERM
/// has its default action and kills the process outright. `--once` and
/// `--check-config` never poll it: Ctrl-C stops them at once, as it does
/// any one-shot command.
pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> Exit {
    let mut shutdown = std::pin::pin!(shutdown);
    if args.demo {
        if completes_at_once(shutdown.as_mut()).await {
            return Exit::Ok;
        }
        return super::demo::run(args.listen, shutdown).await;
    }
    let mut config = match ExporterConfig::load(&args.config) {
        Ok(config) => config,
        Err(errors) => return fail(Exit::Config, errors),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let platforms = match load_tokens(&config) {
        Ok(platforms) => platforms,
        Err(message) => return fail(Exit::Config, message),
    };

    if args.check_config {
        println!("{}: OK", args.config.display());
        println!(
            "  listen {}, poll every {}, cache {}",
            config.listen,
            humantime::format_duration(config.poll_interval),
            config.cache.display()
        );
        for (platform, _) in &platforms {
            let name = platform.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
            println!("  platform {}{name}: token from {}", platform.id, platform.token);
        }
        return Exit::Ok;
    }

    if !args.once && completes_at_once(shutdown.as_mut()).await {
        return Exit::Ok;
    }
    let cache = if args.once { Cache::open_in_memory() } else { Cache::open(&config.cache) };
    let cache = match cache {
        Ok(cache) => cache,
        Err(err) => return fail(Exit::Cache, with_causes(&err)),
    };
    let exporter = match Exporter::start(&config, platforms, cache).await {
        Ok(exporter) => exporter,
        Err(super::StartError::Cache(err)) => return fail(Exit::Cache, with_causes(&err)),
        Err(err) => return fail(Exit::Runtime, with_causes(&err)),
    };

    if args.once {
        let failed = exporter.poll_all_once().await;
        let exposition = crate::http::Pages::exposition(&*exporter.state());
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        if let Err(err) = stdout.write_all(exposition.plain()).and_then(|()| stdout.flush()) {
            return fail(Exit::Runtime, format!("cannot write to stdout: {err}"));
        }
        return if failed.is_empty() {
            Exit::Ok
        } else {
            fail(
                Exit::PollFailed,
                format!("poll failed for platform(s) {}; see the log above", failed.join(", ")),
            )
        };
    }

    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            return fail(Exit::Listen, format!("cannot listen on {}: {err}", config.listen))
        }
    };
    // The bound address, not the configured one: with port 0 the kernel
    // picks the port, and this line is the only place that says which.
    let listening = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(
        "listening on http://{listening}/metrics; polling {} platform(s) every {}",
        config.platforms.len(),
        humantime::format_duration(config.poll_interval)
    );
    match exporter.run(listener, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            Exit::Ok
        }
        Err(err) => fail(Exit::Runtime, format!("HTTP server failed: {err}")),
    }
}

/// Polls `shutdown` once, letting it set itself up; true if it is already done.
async fn completes_at_once(mut shutdown: Pin<&mut impl Future<Output = ()>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await
}

fn load_tokens(
    config: &ExporterConfig,
) -> Result<Vec<(super::config::PlatformConfig, Secret)>, String> {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for platform in &config.platforms {
        match platform.token.load(&config.base_dir) {
            Ok(token) => {
                if let Some(warning) = token.loose_permissions {
                    tracing::warn!("platform {}: {warning}", platform.id);
                }
                loaded.push((platform.clone(), token.secret));
            }
            Err(err) => {
                errors.push(format!("{}: platform {}: {err}", platform.token_at, platform.id))
            }
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors.join("\naddreality-exporter: "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Args::command().debug_assert();
    }
}
