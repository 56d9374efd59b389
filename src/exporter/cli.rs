//! The `addreality-exporter` command line: flags, start-up order, exit codes.
//!
//! The binary only installs logging and signal handlers and calls
//! [`run`]; everything a sysadmin can get wrong is an error of its own
//! (`cli_error`), reported once, with a distinct exit code
//! ([`Exit`]).
//!
//! This is the command-line layer above the exporter service: it imports
//! the service (cache, config, [`Exporter`]) and the demo, never the
//! other way round.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use clap::{CommandFactory, Parser};

use super::cache::Cache;
use super::cli_error::{Error, TokenError, TokenErrors};
use super::config::{ExporterConfig, PlatformConfig};
use super::{Exporter, PlatformTokens, Supervision};
use crate::exit::{finish, Exit};
use crate::http::WebConfig;
use crate::notify::Notifier;
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
    pub(crate) config: PathBuf,
    /// Check the configuration and the tokens, print a summary and exit.
    #[arg(long, conflicts_with_all = ["once", "demo"])]
    pub(crate) check_config: bool,
    /// Poll every platform once, print the metrics to stdout and exit;
    /// exits 6 when a platform failed. Does not touch the cache file.
    #[arg(long, conflicts_with = "demo")]
    pub(crate) once: bool,
    /// Run against a built-in simulated AddReality account of 273 devices
    /// on loopback; no configuration file or token needed.
    #[arg(long)]
    pub(crate) demo: bool,
    /// Listen address, overriding the configuration's `listen`.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// TLS and basic auth for the listener: a Prometheus exporter-toolkit
    /// web configuration file (YAML), reloaded on SIGHUP. Overrides the
    /// configuration's `web_config_file`.
    #[arg(long = "web.config.file", value_name = "FILE", conflicts_with_all = ["demo", "once"])]
    pub(crate) web_config_file: Option<PathBuf>,
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
    /// Log lines as text, or as one JSON object each (for log shippers).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
    /// Instead of running: shell completions or manual pages.
    #[command(subcommand)]
    pub(crate) command: Option<Extra>,
}

/// What the exporter does instead of running.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Extra {
    /// Print the shell completion script (bash, zsh, fish, elvish,
    /// powershell).
    Completions {
        /// The shell.
        shell: crate::manual::Shell,
    },
    /// Write the manual pages (addreality-exporter.1, …) into a directory.
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
}

/// Runs the command line until done or until `shutdown` completes.
///
/// The daemon and the demo poll `shutdown` once before they start, so that
/// a future which installs signal handlers when first polled (the binary's)
/// has them in place before "listening on" is logged; until then SIGTERM
/// has its default action and kills the process outright. `--once` and
/// `--check-config` never poll it: Ctrl-C stops them at once, as it does
/// any one-shot command.
///
/// `reloads` yields once per SIGHUP; the daemon then runs [`reload`] (the
/// configuration file, the tokens, the web configuration), the demo only
/// says it has nothing to reload.
pub async fn run(
    args: Args,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<()>,
) -> Exit {
    finish(run_until(args, shutdown, reloads).await)
}

async fn run_until(
    args: Args,
    shutdown: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::Receiver<()>,
) -> Result<Exit, Error> {
    match args.command {
        Some(Extra::Completions { shell }) => {
            crate::exit::out!("{}", crate::manual::completions(Args::command(), shell));
            return Ok(Exit::Ok);
        }
        Some(Extra::Man { dir }) => {
            let pages = crate::manual::man_pages(Args::command(), &dir)
                .map_err(|source| Error::Man { dir: dir.clone(), source })?;
            for page in pages {
                crate::exit::outln!("{}", page.display());
            }
            return Ok(Exit::Ok);
        }
        None => {}
    }
    let mut shutdown = std::pin::pin!(shutdown);
    if args.demo {
        if completes_at_once(shutdown.as_mut()).await {
            return Ok(Exit::Ok);
        }
        super::demo::run(args.listen, shutdown, reloads).await?;
        return Ok(Exit::Ok);
    }
    let mut config = ExporterConfig::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(path) = &args.web_config_file {
        config.web_config_file = Some(path.clone());
    }
    let platforms = load_tokens(&config).map_err(Error::Tokens)?;
    let web = match &config.web_config_file {
        Some(path) if !args.once => Some(Arc::new(WebConfig::load(path)?)),
        _ => None,
    };

    if args.check_config {
        crate::exit::outln!("{}: OK", args.config.display());
        crate::exit::outln!(
            "  listen {}, poll every {}, cache {}",
            config.listen,
            humantime::format_duration(config.poll_interval),
            config.cache.display()
        );
        if let Some(web) = &web {
            crate::exit::outln!("  web config {}: {}", web.path().display(), web.describe());
        }
        for (platform, _) in &platforms {
            let name = platform.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
            crate::exit::outln!("  platform {}{name}: token from {}", platform.id, platform.token);
        }
        return Ok(Exit::Ok);
    }

    if !args.once && completes_at_once(shutdown.as_mut()).await {
        return Ok(Exit::Ok);
    }
    let cache = if args.once { Cache::open_in_memory() } else { Cache::open(&config.cache) }?;
    let exporter = Exporter::start(&config, platforms, cache).await?;

    if args.once {
        let failed = exporter.poll_all_once().await;
        let exposition = crate::http::Pages::exposition(&*exporter.state());
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(exposition.plain()).and_then(|()| stdout.flush()) {
            // The reader went away (`--once | head`): not a failure, as for
            // other Unix tools; the polls decide the exit code.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.map_err(Error::Stdout)?,
        }
        return if failed.is_empty() { Ok(Exit::Ok) } else { Err(Error::PollFailed(failed)) };
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen { addr: config.listen, source })?;
    // The bound address, not the configured one: with port 0 the kernel
    // picks the port, and this line is the only place that says which.
    let listening = listener.local_addr().unwrap_or(config.listen);
    let scheme = if web.as_ref().is_some_and(|web| web.tls()) { "https" } else { "http" };
    let secured = web
        .as_ref()
        .map(|web| format!(" ({}, from {})", web.describe(), web.path().display()))
        .unwrap_or_default();
    tracing::info!(
        "listening on {scheme}://{listening}/metrics{secured}; polling {} platform(s) every {}",
        config.platforms.len(),
        humantime::format_duration(config.poll_interval)
    );
    let tokens = exporter.tokens();
    let path = args.config.clone();
    let running = Arc::new(config);
    let reloaded_web = web.clone();
    let overrides = Overrides { listen: args.listen, web_config_file: args.web_config_file };
    let supervision = Supervision {
        notifier: Notifier::from_env(),
        reloads,
        reload: || {
            let (path, running, tokens, web, overrides) = (
                path.clone(),
                running.clone(),
                tokens.clone(),
                reloaded_web.clone(),
                overrides.clone(),
            );
            async move { reload_or_keep(path, running, overrides, tokens, web).await }
        },
    };
    exporter.run_supervised(listener, web, shutdown, supervision).await.map_err(Error::Http)?;
    tracing::info!("stopped");
    Ok(Exit::Ok)
}

/// What a successful [`reload`] changed.
#[derive(Debug)]
struct Reloaded {
    /// Platforms whose token changed (now sent).
    tokens_changed: Vec<String>,
    /// Settings that changed in the file but take a restart.
    restart_needed: Vec<&'static str>,
}

/// SIGHUP: [`reload`], logging what it did, or why it kept the running
/// settings; whether the new ones are in force.
async fn reload_or_keep(
    path: PathBuf,
    running: Arc<ExporterConfig>,
    overrides: Overrides,
    tokens: Arc<PlatformTokens>,
    web: Option<Arc<WebConfig>>,
) -> bool {
    match reload(path, &running, overrides, &tokens, web.as_deref()).await {
        Ok(reloaded) => {
            let tokens = match reloaded.tokens_changed.as_slice() {
                [] => "no token changed".to_string(),
                changed => format!("new token for platform {}", changed.join(", ")),
            };
            tracing::info!("configuration reloaded: {tokens}");
            if !reloaded.restart_needed.is_empty() {
                tracing::warn!(
                    "{} changed in the configuration: that takes a restart (systemctl restart addreality-exporter); running with the previous value until then",
                    reloaded.restart_needed.join(", ")
                );
            }
            true
        }
        Err(err) => {
            for line in crate::error::with_causes(&err).lines() {
                tracing::error!("reload rejected: {line}");
            }
            tracing::error!("reload rejected: the previous settings keep running");
            false
        }
    }
}

/// The command line's settings that win over the configuration file's, at
/// start and at each reload.
#[derive(Debug, Clone)]
struct Overrides {
    /// `--listen`.
    listen: Option<std::net::SocketAddr>,
    /// `--web.config.file`.
    web_config_file: Option<PathBuf>,
}

/// Re-reads the configuration file, every platform's token and the web
/// configuration, all or nothing, and puts in force what can change without
/// a restart.
///
/// Everything is read and checked first; only then is anything replaced,
/// so a bad file or a token that cannot be read keeps the running settings
/// (as Prometheus does). In force: each polled platform's token (a rotated
/// `token_file` is sent from the platform's next poll) and the web
/// configuration in force (new connections get its certificate, the next
/// request its users).
async fn reload(
    path: PathBuf,
    running: &ExporterConfig,
    overrides: Overrides,
    tokens: &PlatformTokens,
    web: Option<&WebConfig>,
) -> Result<Reloaded, Error> {
    // Read and check, on the blocking pool: token files may sit on a slow
    // mount, a web configuration may cost a bcrypt hash, and the loop that
    // pings systemd waits for this.
    let web_path = web.map(|web| web.path().to_path_buf());
    let (config, loaded, web_settings) = tokio::task::spawn_blocking(move || {
        let mut config = ExporterConfig::load(&path)?;
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        if let Some(file) = overrides.web_config_file {
            config.web_config_file = Some(file);
        }
        let loaded = load_tokens(&config).map_err(Error::Tokens)?;
        let web_settings = web_path.as_deref().map(WebConfig::read_again).transpose()?;
        Ok::<_, Error>((config, loaded, web_settings))
    })
    .await
    .expect("reload task panicked")?;
    // Put in force: nothing above failed.
    let tokens_changed = tokens.replace(&loaded);
    if let (Some(web), Some(settings)) = (web, web_settings) {
        web.put(settings);
    }
    Ok(Reloaded { tokens_changed, restart_needed: restart_needed(running, &config) })
}

/// The settings that differ between the running configuration and a
/// reloaded one and that only a restart puts in force.
fn restart_needed(running: &ExporterConfig, new: &ExporterConfig) -> Vec<&'static str> {
    let platforms = |config: &ExporterConfig| -> Vec<(String, Option<String>)> {
        config.platforms.iter().map(|p| (p.id.clone(), p.name.clone())).collect()
    };
    [
        ("listen", running.listen != new.listen),
        ("api_url", running.api_url != new.api_url),
        ("poll_interval", running.poll_interval != new.poll_interval),
        ("request_timeout", running.request_timeout != new.request_timeout),
        ("cache", running.cache != new.cache),
        ("page_size", running.page_size != new.page_size),
        ("max_page_bytes", running.max_page_bytes != new.max_page_bytes),
        ("forget_after", running.forget_after != new.forget_after),
        ("web_config_file", running.web_config_file != new.web_config_file),
        ("the platforms (ids or names)", platforms(running) != platforms(new)),
    ]
    .into_iter()
    .filter_map(|(setting, changed)| changed.then_some(setting))
    .collect()
}

/// Polls `shutdown` once, letting it set itself up; true if it is already done.
async fn completes_at_once(mut shutdown: Pin<&mut impl Future<Output = ()>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(shutdown.as_mut().poll(cx).is_ready())).await
}

/// Loads every platform's token, or says which cannot be loaded, all at once.
fn load_tokens(config: &ExporterConfig) -> Result<Vec<(PlatformConfig, Secret)>, TokenErrors> {
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
            Err(error) => errors.push(TokenError {
                at: platform.token_at.clone(),
                platform: platform.id.clone(),
                error,
            }),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(TokenErrors(errors))
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
