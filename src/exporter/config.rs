//! The exporter's configuration file.
//!
//! Two layers, as everywhere in this package: [`RawConfig`] mirrors the TOML
//! file and rejects unknown keys (so a typo is an error with its
//! `line:column`, not a silently ignored setting); [`ExporterConfig`] is the
//! checked result the daemon runs with. Tokens are never in the file: each
//! platform names a `token_file` or a `token_env`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config_file::{ConfigError, ConfigErrors, HumanDuration, SourceFile};
use crate::secret::SecretSource;

/// The public device-list endpoint.
pub(crate) const DEFAULT_API_URL: &str = "https://api.ar.digital/public/v1/device/list";
/// Where the exporter listens unless told otherwise.
pub(crate) const DEFAULT_LISTEN: &str = "0.0.0.0:9747";
/// How often each platform is polled.
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// How long one API request may take.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Where the SQLite cache lives (systemd's `StateDirectory`).
pub(crate) const DEFAULT_CACHE: &str = "/var/lib/addreality-exporter/cache.db";
/// Devices asked for per request; the API's own page size.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 300;
/// The longest page body read: 64 MiB, about two hundred times a full page of
/// 300 devices, and the bound on what one poll holds in memory.
pub(crate) const DEFAULT_MAX_PAGE_BYTES: u64 = 64 * 1024 * 1024;
/// The least `max_page_bytes` accepted: below it even small pages would fail.
pub(crate) const MIN_MAX_PAGE_BYTES: u64 = 64 * 1024;
/// How long a device missing from the API stays in the cache and metrics.
pub(crate) const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// The file as written. Every key is optional but `platforms`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `address:port` to serve `/metrics` on. Default [`DEFAULT_LISTEN`].
    pub(crate) listen: Option<Spanned<String>>,
    /// The device-list endpoint. Default [`DEFAULT_API_URL`].
    pub(crate) api_url: Option<Spanned<String>>,
    /// Time between two polls of one platform, longer than zero. Default 60s.
    pub(crate) poll_interval: Option<Spanned<HumanDuration>>,
    /// Time one API request may take before it is abandoned and retried,
    /// longer than zero. Default 15s.
    pub(crate) request_timeout: Option<Spanned<HumanDuration>>,
    /// Path of the SQLite cache. Default [`DEFAULT_CACHE`]; relative paths are
    /// taken from the configuration file's directory.
    pub(crate) cache: Option<PathBuf>,
    /// Devices per request. Default 300.
    pub(crate) page_size: Option<Spanned<u32>>,
    /// The longest page body read, in bytes, at least 64 KiB. Default 64 MiB.
    pub(crate) max_page_bytes: Option<Spanned<u64>>,
    /// How long a device absent from the API is still exported. Default 7d.
    pub(crate) forget_after: Option<Spanned<HumanDuration>>,
    /// TLS and basic auth for the listener: a Prometheus exporter-toolkit
    /// web configuration file (YAML). Default none (plain HTTP, no
    /// authentication); relative paths are taken from the configuration
    /// file's directory; `--web.config.file` overrides it.
    pub(crate) web_config_file: Option<PathBuf>,
    /// The AddReality accounts to poll.
    #[serde(default)]
    pub(crate) platforms: Vec<Spanned<RawPlatform>>,
}

/// One `[[platforms]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlatform {
    /// The account's platform id; becomes the `platform_id` label.
    pub(crate) id: Spanned<PlatformId>,
    /// A human name, exported in `addreality_platform_info`.
    pub(crate) name: Option<String>,
    /// File holding the account's API token (mode 0600 please).
    pub(crate) token_file: Option<Spanned<PathBuf>>,
    /// Environment variable holding the account's API token.
    pub(crate) token_env: Option<Spanned<String>>,
}

/// A platform id as written: `id = 12` and `id = "12"` are the same.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PlatformId {
    /// `id = 12`
    Number(i64),
    /// `id = "12"`
    Text(String),
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct ExporterConfig {
    /// Address to serve HTTP on.
    pub listen: SocketAddr,
    /// Device-list endpoint.
    pub api_url: String,
    /// Time between two polls of one platform.
    pub poll_interval: Duration,
    /// Time one request may take.
    pub request_timeout: Duration,
    /// SQLite cache path.
    pub cache: PathBuf,
    /// Devices per request.
    pub page_size: u32,
    /// The longest page body read, in bytes; a longer page fails the poll.
    pub max_page_bytes: u64,
    /// How long an absent device is kept.
    pub forget_after: Duration,
    /// The web configuration file securing the listener, if any.
    pub web_config_file: Option<PathBuf>,
    /// The accounts, in file order.
    pub platforms: Vec<PlatformConfig>,
    /// Directory of the configuration file, against which relative token
    /// files are resolved.
    pub base_dir: PathBuf,
}

/// One account to poll.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// The `platform_id` label value.
    pub id: String,
    /// Optional human name.
    pub name: Option<String>,
    /// Where the token is.
    pub token: SecretSource,
    /// `file:line:column` of `token_file`/`token_env`, so that a token that
    /// cannot be loaded is reported where it is configured.
    pub token_at: String,
}

impl ExporterConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<ExporterConfig, ConfigErrors> {
        ExporterConfig::parse(&SourceFile::read(path)?)
    }

    /// Checks configuration text (tests, embedded defaults).
    pub(crate) fn parse(file: &SourceFile) -> Result<ExporterConfig, ConfigErrors> {
        let raw: RawConfig = file.parse()?;
        let mut errors = Vec::new();
        let base_dir = file.path.parent().map(Path::to_path_buf).unwrap_or_default();

        let listen = match &raw.listen {
            None => DEFAULT_LISTEN.parse().expect("the default listen address is valid"),
            Some(text) => text.get_ref().parse().unwrap_or_else(|_| {
                errors.push(file.error_at(
                    text.span(),
                    format!(
                        "invalid listen address {:?}: write it as address:port, e.g. \"0.0.0.0:9747\" or \"[::1]:9747\"",
                        text.get_ref()
                    ),
                ));
                DEFAULT_LISTEN.parse().expect("valid")
            }),
        };

        let api_url = match &raw.api_url {
            None => DEFAULT_API_URL.to_string(),
            Some(text) => {
                match reqwest::Url::parse(text.get_ref()) {
                    Ok(url) if matches!(url.scheme(), "http" | "https") && url.username().is_empty() && url.password().is_none() => {}
                    Ok(url) if !url.username().is_empty() || url.password().is_some() => errors.push(file.error_at(
                        text.span(),
                        "api_url must not contain credentials; the token goes in token_file or token_env",
                    )),
                    _ => errors.push(file.error_at(
                        text.span(),
                        format!(
                            "invalid api_url {:?}: expected an http:// or https:// URL",
                            crate::addreality::client::redact_unparsed(text.get_ref())
                        ),
                    )),
                }
                text.get_ref().clone()
            }
        };

        let mut positive =
            |written: &Option<Spanned<HumanDuration>>, key: &str, default| match written {
                None => default,
                Some(value) if value.get_ref().0.is_zero() => {
                    errors.push(
                        file.error_at(value.span(), format!("{key} must be longer than zero")),
                    );
                    default
                }
                Some(value) => value.get_ref().0,
            };
        let poll_interval = positive(&raw.poll_interval, "poll_interval", DEFAULT_POLL_INTERVAL);
        let request_timeout =
            positive(&raw.request_timeout, "request_timeout", DEFAULT_REQUEST_TIMEOUT);

        let page_size = match &raw.page_size {
            None => DEFAULT_PAGE_SIZE,
            Some(size) if (1..=10_000).contains(size.get_ref()) => *size.get_ref(),
            Some(size) => {
                errors.push(file.error_at(
                    size.span(),
                    "page_size must be between 1 and 10000 (the API's own page is 300)",
                ));
                DEFAULT_PAGE_SIZE
            }
        };

        let max_page_bytes = match &raw.max_page_bytes {
            None => DEFAULT_MAX_PAGE_BYTES,
            Some(bytes) if *bytes.get_ref() >= MIN_MAX_PAGE_BYTES => *bytes.get_ref(),
            Some(bytes) => {
                errors.push(file.error_at(
                    bytes.span(),
                    format!(
                        "max_page_bytes must be at least {MIN_MAX_PAGE_BYTES} (64 KiB); the default is {DEFAULT_MAX_PAGE_BYTES} (64 MiB)"
                    ),
                ));
                DEFAULT_MAX_PAGE_BYTES
            }
        };

        let cache = match raw.cache {
            None => PathBuf::from(DEFAULT_CACHE),
            Some(path) => base_dir.join(path),
        };

        if raw.platforms.is_empty() {
            errors.push(file.error(
                "no [[platforms]] configured: add one per AddReality account, with id and token_file or token_env",
            ));
        }
        let mut seen: BTreeMap<String, ()> = BTreeMap::new();
        let mut platforms = Vec::with_capacity(raw.platforms.len());
        for entry in &raw.platforms {
            match check_platform(file, entry) {
                Ok(platform) => {
                    if seen.insert(platform.id.clone(), ()).is_some() {
                        errors.push(file.error_at(
                            entry.get_ref().id.span(),
                            format!("platform {} is configured twice", platform.id),
                        ));
                    }
                    platforms.push(platform);
                }
                Err(err) => errors.push(err),
            }
        }

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(ExporterConfig {
            listen,
            api_url,
            poll_interval,
            request_timeout,
            cache,
            page_size,
            max_page_bytes,
            forget_after: raw.forget_after.map_or(DEFAULT_FORGET_AFTER, |d| d.get_ref().0),
            web_config_file: raw.web_config_file.map(|path| base_dir.join(path)),
            platforms,
            base_dir,
        })
    }
}

fn check_platform(
    file: &SourceFile,
    entry: &Spanned<RawPlatform>,
) -> Result<PlatformConfig, ConfigError> {
    let raw = entry.get_ref();
    let id = match raw.id.get_ref() {
        PlatformId::Number(n) => n.to_string(),
        PlatformId::Text(text) => text.trim().to_string(),
    };
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(file.error_at(
            raw.id.span(),
            format!("invalid platform id {id:?}: use the account's platform id, e.g. 12"),
        ));
    }
    let at = |span: std::ops::Range<usize>| {
        let (line, column) = file.position(span.start);
        format!("{}:{line}:{column}", file.path.display())
    };
    let (token, token_at) = match (&raw.token_file, &raw.token_env) {
        (Some(path), None) => (SecretSource::File(path.get_ref().clone()), at(path.span())),
        (None, Some(name)) if !name.get_ref().is_empty() => {
            (SecretSource::Env(name.get_ref().clone()), at(name.span()))
        }
        (Some(_), Some(_)) => {
            return Err(file.error_at(
                entry.span(),
                format!("platform {id}: set token_file or token_env, not both"),
            ))
        }
        _ => {
            return Err(file.error_at(
                entry.span(),
                format!(
                    "platform {id} has no token: set token_file = \"/etc/addreality-exporter/{id}.token\" or token_env = \"ADDREALITY_TOKEN_{id}\""
                ),
            ))
        }
    };
    Ok(PlatformConfig { id, name: raw.name.clone(), token, token_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ExporterConfig, String> {
        ExporterConfig::parse(&SourceFile::from_text("/etc/exporter.toml", text))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply() {
        let config = parse("[[platforms]]\nid = 12\ntoken_file = \"12.token\"\n").unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.api_url, DEFAULT_API_URL);
        assert_eq!(config.poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(config.page_size, 300);
        assert_eq!(config.max_page_bytes, 64 * 1024 * 1024);
        assert_eq!(config.forget_after, DEFAULT_FORGET_AFTER);
        assert_eq!(config.cache, PathBuf::from(DEFAULT_CACHE));
        assert_eq!(config.platforms[0].id, "12");
        assert_eq!(config.platforms[0].token, SecretSource::File("12.token".into()));
        assert_eq!(config.platforms[0].token_at, "/etc/exporter.toml:3:14");
        assert_eq!(config.base_dir, PathBuf::from("/etc"));
    }

    #[test]
    fn every_mistake_is_reported_with_its_place() {
        let text =
            "listen = \"localhost\"\npage_size = 0\napi_url = \"https://u:p@example.test/x\"\n\
                    [[platforms]]\nid = 12\ntoken_file = \"a\"\n\
                    [[platforms]]\nid = \"12\"\ntoken_env = \"T\"\n\
                    [[platforms]]\nid = \"x y\"\ntoken_env = \"T\"\n\
                    [[platforms]]\nid = 13\n";
        let err = parse(text).unwrap_err();
        let expected = [
            "/etc/exporter.toml:1:10: invalid listen address \"localhost\": write it as address:port, e.g. \"0.0.0.0:9747\" or \"[::1]:9747\"",
            "/etc/exporter.toml:3:11: api_url must not contain credentials; the token goes in token_file or token_env",
            "/etc/exporter.toml:2:13: page_size must be between 1 and 10000 (the API's own page is 300)",
            "/etc/exporter.toml:8:6: platform 12 is configured twice",
            "/etc/exporter.toml:11:6: invalid platform id \"x y\": use the account's platform id, e.g. 12",
            "/etc/exporter.toml:13:1: platform 13 has no token: set token_file = \"/etc/addreality-exporter/13.token\" or token_env = \"ADDREALITY_TOKEN_13\"",
        ];
        assert_eq!(err, expected.join("\n"));
    }

    #[test]
    fn a_bad_api_url_is_shown_without_its_query() {
        let text = "api_url = \"ftp://api.example/list?token=hunter2\"\n\
                    [[platforms]]\nid = 12\ntoken_env = \"T\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(
            err,
            "/etc/exporter.toml:1:11: invalid api_url \"ftp://api.example/list\": expected an http:// or https:// URL"
        );
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_rejected() {
        let err = parse("poll_intervall = \"60s\"\n").unwrap_err();
        assert!(
            err.starts_with(
                "/etc/exporter.toml:1:1: unknown field `poll_intervall`, expected one of"
            ),
            "{err}"
        );
        let err = parse("poll_interval = \"soon\"\n").unwrap_err();
        assert!(err.starts_with("/etc/exporter.toml:1:17: invalid duration \"soon\""), "{err}");
        let err = parse("").unwrap_err();
        assert!(err.contains("no [[platforms]] configured"), "{err}");
    }

    #[test]
    fn max_page_bytes_has_a_floor() {
        let platform = "[[platforms]]\nid = 12\ntoken_env = \"T\"\n";
        let config = parse(&format!("max_page_bytes = 65536\n{platform}")).unwrap();
        assert_eq!(config.max_page_bytes, 65536);
        let err = parse(&format!("max_page_bytes = 1000\n{platform}")).unwrap_err();
        assert_eq!(
            err,
            "/etc/exporter.toml:1:18: max_page_bytes must be at least 65536 (64 KiB); the default is 67108864 (64 MiB)"
        );
        let err = parse(&format!("max_page_bytes = -1\n{platform}")).unwrap_err();
        assert!(err.starts_with("/etc/exporter.toml:1:18: "), "{err}");
    }

    #[test]
    fn zero_durations_are_placed() {
        let err = parse(
            "poll_interval = \"0s\"\nrequest_timeout = \"0s\"\n[[platforms]]\nid = 12\ntoken_env = \"T\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "/etc/exporter.toml:1:17: poll_interval must be longer than zero\n/etc/exporter.toml:2:19: request_timeout must be longer than zero"
        );
    }
}
