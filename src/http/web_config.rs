//! The web configuration file (`--web.config.file`): TLS and basic
//! authentication for a daemon's listener, in the YAML that Prometheus's
//! exporter-toolkit defines, so that a sysadmin who secured node_exporter
//! writes the same file here.
//!
//! The keys are the toolkit's, and so are their meanings: unknown keys are an
//! error, file names are taken from the web configuration file's directory,
//! `client_auth_type` names Go's client-authentication policies, passwords
//! are bcrypt hashes, and `http_server_config.headers` only sets the security
//! headers the toolkit allows. What this program does not implement
//! (`rate_limit`, `cipher_suites`, inline `cert`/`key`, HTTP/2, …) is refused
//! as an unknown key rather than ignored: a setting that is silently dropped
//! is worse than one that stops the start.
//!
//! Two layers, as for the other configuration files: [`RawWebConfig`]
//! mirrors the YAML; [`WebSettings`] is the checked result, with the
//! certificate files already read and a rustls configuration built. A
//! listener holds a [`WebConfig`], which keeps the current settings and
//! replaces them on [`WebConfig::reload`] (SIGHUP) only when the new file
//! is valid as a whole; otherwise the old settings stay and the error is
//! logged. The TLS settings are taken once per connection, so new
//! certificate files are served to the next connection after a reload; the
//! users and headers are taken once per request.
//!
//! Nothing here ever writes a password or a hash into an error or a log
//! line: a bad hash is named by its user, a YAML error by its line and
//! column, never by a quoted snippet of the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use super::basic_auth::{AuthCache, Users};
use super::key_error::KeyError;
use super::tls::{self, ClientAuth, RawTls};

/// The web configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebConfig {
    /// TLS for the listener; absent or empty means plain HTTP.
    #[serde(default)]
    pub(crate) tls_server_config: Option<RawTls>,
    /// Extra response headers.
    #[serde(default)]
    pub(crate) http_server_config: Option<RawHttp>,
    /// User name → bcrypt hash; absent or empty means no authentication.
    #[serde(default)]
    pub(crate) basic_auth_users: Option<BTreeMap<String, String>>,
}

/// `http_server_config` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    /// Header name → value, among the toolkit's security headers.
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
}

/// The headers `http_server_config.headers` may set, with the values each
/// accepts (none listed: any value), as the exporter-toolkit has them.
const ALLOWED_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Why a web configuration file cannot be used. Each names the file, and the
/// key when one is to blame.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file cannot be read.
    #[error("web config {}: cannot read it", path.display())]
    Read {
        /// The web configuration file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse, or does not fit the schema (an unknown key,
    /// a wrong type).
    #[error("web config {}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The web configuration file.
        path: PathBuf,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// 1-based column of the error (0 when unknown).
        column: usize,
        /// What is wrong, without a snippet of the file.
        message: String,
    },
    /// A key's value is wrong.
    #[error("web config {}: {key}: {message}", path.display())]
    Invalid {
        /// The web configuration file.
        path: PathBuf,
        /// The key, dotted: `tls_server_config.client_auth_type`.
        key: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// A file a key names cannot be read.
    #[error("web config {}: {key}: cannot read {}", path.display(), file.display())]
    File {
        /// The web configuration file.
        path: PathBuf,
        /// The key naming the file.
        key: String,
        /// The file, as resolved against the web configuration's directory.
        file: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// `err`, naming the web configuration file `path`.
fn in_file(err: KeyError, path: &Path) -> WebConfigError {
    let path = path.to_path_buf();
    match err {
        KeyError::Invalid { key, message } => WebConfigError::Invalid { path, key, message },
        KeyError::File { key, file, source } => WebConfigError::File { path, key, file, source },
    }
}

/// A checked web configuration: what a listener does with each connection
/// and each request.
pub(crate) struct WebSettings {
    /// The TLS acceptor, or `None` for plain HTTP.
    pub(crate) tls: Option<TlsAcceptor>,
    /// How client certificates are asked for, for the log.
    client_auth: ClientAuth,
    /// The users allowed in, or `None` when no authentication is asked for.
    pub(crate) users: Option<Users>,
    /// Headers added to every answer.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The users' hashes stay out of any debug output.
        f.debug_struct("WebSettings")
            .field("tls", &self.tls.is_some())
            .field("client_auth", &self.client_auth)
            .field("users", &self.users.as_ref().map_or(0, Users::len))
            .field("headers", &self.headers)
            .finish()
    }
}

impl WebSettings {
    /// Reads and checks the web configuration at `path`, with every file it
    /// names.
    pub(crate) fn load(path: &Path) -> Result<WebSettings, WebConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| WebConfigError::Read { path: path.to_path_buf(), source })?;
        WebSettings::parse(&text, path)
    }

    /// Checks web configuration text; `path` is where it was read from (file
    /// names in it are taken from its directory).
    pub(crate) fn parse(text: &str, path: &Path) -> Result<WebSettings, WebConfigError> {
        let raw = parse_yaml(text, path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let (tls, client_auth) = match raw.tls_server_config {
            Some(tls) if tls.is_set() => {
                let (config, client_auth) =
                    tls::server_config(&tls, dir).map_err(|err| in_file(err, path))?;
                (Some(TlsAcceptor::from(config)), client_auth)
            }
            _ => (None, ClientAuth::NoClientCert),
        };
        let users = match raw.basic_auth_users {
            Some(users) if !users.is_empty() => {
                Some(Users::new(users).map_err(|err| in_file(err, path))?)
            }
            _ => None,
        };
        let headers = headers(raw.http_server_config.unwrap_or_default().headers)
            .map_err(|err| in_file(err, path))?;
        Ok(WebSettings { tls, client_auth, users, headers })
    }

    /// One line for the log: what a client meets.
    fn describe(&self) -> String {
        let transport = match (&self.tls, self.client_auth) {
            (None, _) => "plain HTTP (no TLS)".to_string(),
            (Some(_), ClientAuth::NoClientCert) => "TLS".to_string(),
            (Some(_), auth) => format!("TLS, client certificates: {auth:?}"),
        };
        let auth = match &self.users {
            None => "no basic auth".to_string(),
            Some(users) if users.len() == 1 => "basic auth for 1 user".to_string(),
            Some(users) => format!("basic auth for {} users", users.len()),
        };
        format!("{transport}, {auth}")
    }
}

impl RawTls {
    /// Whether any key is set: an empty `tls_server_config` is plain HTTP,
    /// as in the toolkit.
    fn is_set(&self) -> bool {
        self.cert_file.is_some()
            || self.key_file.is_some()
            || self.client_auth_type.is_some()
            || self.client_ca_file.is_some()
            || self.min_version.is_some()
            || self.max_version.is_some()
    }
}

/// The YAML, strictly: unknown keys and duplicate keys are errors, reported
/// by line and column without quoting the file (it holds hashes).
fn parse_yaml(text: &str, path: &Path) -> Result<RawWebConfig, WebConfigError> {
    if text.trim().is_empty() {
        // An empty file is an empty configuration, as in the toolkit.
        return Ok(RawWebConfig::default());
    }
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: serde_saphyr::options::DuplicateKeyPolicy::Error,
    };
    serde_saphyr::from_str_with_options::<Option<RawWebConfig>>(text, options)
        .map(Option::unwrap_or_default)
        .map_err(|err| {
            let (line, column) =
                err.location().map_or((0, 0), |at| (at.line() as usize, at.column() as usize));
            WebConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: yaml_message(&err),
            }
        })
}

/// serde-saphyr's message without its own location suffix (ours goes first,
/// in the `file:line:column` form every other configuration error uses).
fn yaml_message(err: &serde_saphyr::Error) -> String {
    let message = err.without_snippet().to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    }
}

/// `http_server_config.headers`, checked as the toolkit checks them.
fn headers(written: BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, KeyError> {
    let mut headers = Vec::with_capacity(written.len());
    for (name, value) in written {
        let key = format!("http_server_config.headers.{name}");
        let Some((canonical, allowed)) =
            ALLOWED_HEADERS.iter().find(|(known, _)| known.eq_ignore_ascii_case(&name))
        else {
            let known: Vec<&str> = ALLOWED_HEADERS.iter().map(|(n, _)| *n).collect();
            return Err(KeyError::invalid(
                &key,
                format!(
                    "this header cannot be configured; the ones that can: {}",
                    known.join(", ")
                ),
            ));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(KeyError::invalid(
                &key,
                format!("invalid value {value:?}: expected one of {}", allowed.join(", ")),
            ));
        }
        if value.is_empty() {
            // Unset if blank, as the toolkit documents.
            continue;
        }
        let value = HeaderValue::from_str(&value).map_err(|_| {
            KeyError::invalid(&key, "the value holds characters a header cannot carry")
        })?;
        let name =
            HeaderName::from_bytes(canonical.as_bytes()).expect("the allowed names are valid");
        headers.push((name, value));
    }
    Ok(headers)
}

/// A listener's web configuration: the file it came from, the settings in
/// force, and the basic-auth cache that outlives reloads.
#[derive(Debug)]
pub struct WebConfig {
    path: PathBuf,
    current: RwLock<Arc<WebSettings>>,
    auth: AuthCache,
}

impl WebConfig {
    /// Reads and checks the web configuration at `path`. A daemon calls it
    /// before it listens, and stops with the error (exit code 3) when it
    /// fails.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let settings = WebSettings::load(path)?;
        warn_if_clear_text(&settings, path);
        Ok(WebConfig {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(settings)),
            auth: AuthCache::default(),
        })
    }

    /// The web configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What a client meets, for the daemon's "listening on" line.
    pub fn describe(&self) -> String {
        self.current().describe()
    }

    /// Whether connections are served over TLS (`https://`).
    pub fn tls(&self) -> bool {
        self.current().tls.is_some()
    }

    /// SIGHUP: reads the file again, with the certificates it names. A valid
    /// file replaces the settings at once (new connections get the new
    /// certificate, the next request the new users); an invalid one is
    /// logged and the settings in force stay. Blocking (it reads files and
    /// may compute a bcrypt hash): call it on the blocking pool.
    pub fn reload(&self) -> Result<(), WebConfigError> {
        match WebConfig::read_again(&self.path) {
            Ok(settings) => {
                self.put(settings);
                Ok(())
            }
            Err(err) => {
                let cause = std::error::Error::source(&err)
                    .map(|cause| format!(": {cause}"))
                    .unwrap_or_default();
                tracing::error!(
                    "reload rejected: {err}{cause}; the previous web config stays in force"
                );
                Err(err)
            }
        }
    }

    /// The first half of a reload that must be all or nothing with other
    /// files (the exporter's): reads and checks the web configuration at
    /// `path` without putting it in force. Blocking, as [`WebConfig::reload`].
    pub(crate) fn read_again(path: &Path) -> Result<WebSettings, WebConfigError> {
        WebSettings::load(path)
    }

    /// The second half: puts settings from [`WebConfig::read_again`] in force.
    pub(crate) fn put(&self, settings: WebSettings) {
        warn_if_clear_text(&settings, &self.path);
        tracing::info!("web config {} reloaded: {}", self.path.display(), settings.describe());
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(settings);
    }

    /// The settings in force.
    pub(crate) fn current(&self) -> Arc<WebSettings> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Answers `req` with `handler` if the settings let it in: the
    /// configured headers on every answer, and 401 with `WWW-Authenticate:
    /// Basic` for a request without valid credentials.
    pub(crate) async fn answer<F>(
        &self,
        req: Request<hyper::body::Incoming>,
        handler: impl FnOnce(Request<hyper::body::Incoming>) -> F,
    ) -> Response<Full<Bytes>>
    where
        F: std::future::Future<Output = Response<Full<Bytes>>>,
    {
        let settings = self.current();
        let mut resp = match &settings.users {
            Some(users) if !self.auth.allows(users, req.headers()).await => {
                super::basic_auth::unauthorized()
            }
            _ => handler(req).await,
        };
        for (name, value) in &settings.headers {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
        resp
    }

    /// How many bcrypt checks were made against the stand-in hash for an
    /// unknown user, and how many in all (tests show the unknown-user path
    /// costs a check too).
    pub fn bcrypt_checks(&self) -> (u64, u64) {
        self.auth.checks()
    }
}

/// Basic auth over plain HTTP sends passwords in clear text: allowed (the
/// toolkit allows it, and loopback is a fine place for it), but said.
fn warn_if_clear_text(settings: &WebSettings, path: &Path) {
    if settings.users.is_some() && settings.tls.is_none() {
        tracing::warn!(
            "web config {}: basic_auth_users without tls_server_config: passwords cross the network in clear text",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> String {
        match WebSettings::parse(text, Path::new("/etc/x/web.yml")) {
            Ok(settings) => panic!("accepted: {settings:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn an_empty_file_is_plain_http_without_auth() {
        for text in ["", "\n# nothing\n", "tls_server_config: {}\n", "basic_auth_users: {}\n"] {
            let settings = WebSettings::parse(text, Path::new("web.yml")).unwrap();
            assert!(settings.tls.is_none() && settings.users.is_none(), "{text:?}");
            assert_eq!(settings.describe(), "plain HTTP (no TLS), no basic auth");
        }
    }

    #[test]
    fn unknown_and_unsupported_keys_are_errors_with_their_line() {
        let message = error_of("tls_server_config:\n  cert_file: a.pem\n  cert_fiel: b.pem\n");
        assert!(message.starts_with("web config /etc/x/web.yml:3:3: "), "{message}");
        assert!(message.contains("cert_fiel"), "{message}");
        let message = error_of("basic_auth_users:\n  a: x\n  a: y\n");
        assert!(message.starts_with("web config /etc/x/web.yml:3:3: "), "{message}");
        assert!(message.to_lowercase().contains("duplicate"), "{message}");
        assert!(!message.contains(": y") && !message.contains(": x"), "{message}");
        let message = error_of("rate_limit:\n  burst: 3\n");
        assert!(message.starts_with("web config /etc/x/web.yml:1:1: "), "{message}");
        assert!(message.contains("rate_limit"), "{message}");
    }

    #[test]
    fn headers_are_checked_as_the_toolkit_checks_them() {
        let settings = WebSettings::parse(
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n    X-XSS-Protection: ''\n",
            Path::new("web.yml"),
        )
        .unwrap();
        let names: Vec<&str> = settings.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["strict-transport-security", "x-frame-options"]);
        assert_eq!(
            error_of("http_server_config:\n  headers:\n    X-Frame-Options: allow\n"),
            "web config /etc/x/web.yml: http_server_config.headers.X-Frame-Options: invalid value \"allow\": expected one of deny, sameorigin"
        );
        assert!(error_of("http_server_config:\n  headers:\n    Server: me\n")
            .starts_with("web config /etc/x/web.yml: http_server_config.headers.Server: this header cannot be configured"));
    }
}
