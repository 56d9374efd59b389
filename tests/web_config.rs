//! The daemons' listeners secured by a web configuration file (the
//! Prometheus exporter-toolkit's YAML): real TLS on loopback with
//! certificates made at test time, client certificates, basic auth, and
//! reloads. The binaries' side (flags, exit codes, SIGHUP, Prometheus
//! scraping over TLS) is in `tests/exporter_cli.rs` and `tests/jobctl_cli.rs`.

use std::path::Path;
use std::sync::Arc;

use signage_watchdog::http::{serve_configured, Exposition, Health, Limits, Pages, WebConfig};
use support::tls::{client, served_certificate, TestCa};
use tokio::net::TcpListener;

mod support;

/// A daemon's pages: `up 1` on /metrics.
struct Fixed;

impl Pages for Fixed {
    fn title(&self) -> &str {
        "web config test"
    }
    fn exposition(&self) -> Arc<Exposition> {
        Arc::new(Exposition::new("up 1\n"))
    }
    fn health(&self) -> Health {
        Health::Healthy("fine".into())
    }
}

/// A server on `127.0.0.1:0` with the web configuration `yaml` (written to
/// `dir/web.yml`); its address, the configuration, and the server task.
struct Server {
    addr: std::net::SocketAddr,
    web: Arc<WebConfig>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(dir: &Path, yaml: &str) -> Server {
        std::fs::write(dir.join("web.yml"), yaml).unwrap();
        let web = Arc::new(WebConfig::load(&dir.join("web.yml")).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_configured(
            listener,
            Arc::new(Fixed),
            Some(web.clone()),
            Limits::default(),
            async {
                stopped.await.unwrap_or(());
            },
        ));
        let task = tokio::spawn(async move { task.await.unwrap().unwrap() });
        Server { addr, web, stop: Some(stop), task }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

/// A directory with `ca.crt` and a server certificate `server.crt`/`.key`.
fn pki(dir: &Path) -> TestCa {
    let ca = TestCa::new("test server CA");
    ca.write(dir, "ca.crt");
    ca.server("server one", 1).write(dir, "server");
    ca
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

#[tokio::test]
async fn a_scrape_that_trusts_the_ca_succeeds_one_that_does_not_fails() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let server = Server::start(dir.path(), TLS).await;
    assert!(server.web.tls());
    assert_eq!(server.web.describe(), "TLS, no basic auth");

    let answer = client(Some(&ca), None).get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "up 1\n");

    // The system's roots do not know the test CA; another CA is no better.
    let refused = client(None, None).get(server.url("/metrics")).send().await.unwrap_err();
    assert!(refused.is_connect(), "{refused:?}");
    let stranger = TestCa::new("another CA");
    let refused = client(Some(&stranger), None).get(server.url("/metrics")).send().await;
    assert!(refused.unwrap_err().is_connect());

    // Plain HTTP on a TLS port gets no page.
    let plain = reqwest::get(format!("http://{}/metrics", server.addr)).await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    server.stop().await;
}

#[tokio::test]
async fn a_required_client_certificate_must_come_from_the_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let clients = TestCa::new("test client CA");
    clients.write(dir.path(), "clients.crt");
    let yaml = format!(
        "{TLS}  client_ca_file: clients.crt\n  client_auth_type: RequireAndVerifyClientCert\n"
    );
    let server = Server::start(dir.path(), &yaml).await;
    assert_eq!(
        server.web.describe(),
        "TLS, client certificates: RequireAndVerifyClientCert, no basic auth"
    );

    let prometheus = clients.client("prometheus");
    let answer =
        client(Some(&ca), Some(&prometheus)).get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(answer.status(), 200);

    // No certificate: the handshake fails (TLS 1.3 reports it at the first
    // read, so the request fails either way).
    assert!(client(Some(&ca), None).get(server.url("/metrics")).send().await.is_err());
    // A certificate from another CA: refused too.
    let intruder = TestCa::new("intruder CA").client("prometheus");
    assert!(client(Some(&ca), Some(&intruder)).get(server.url("/metrics")).send().await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn verify_if_given_lets_in_clients_without_a_certificate_but_not_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let clients = TestCa::new("test client CA");
    clients.write(dir.path(), "clients.crt");
    let yaml = format!(
        "{TLS}  client_ca_file: clients.crt\n  client_auth_type: VerifyClientCertIfGiven\n"
    );
    let server = Server::start(dir.path(), &yaml).await;
    let get = |identity| {
        let client = client(Some(&ca), identity);
        let url = server.url("/metrics");
        async move { client.get(url).send().await.map(|answer| answer.status().as_u16()) }
    };
    assert_eq!(get(None).await.unwrap(), 200);
    let prometheus = clients.client("prometheus");
    assert_eq!(get(Some(&prometheus)).await.unwrap(), 200);
    let intruder = TestCa::new("intruder CA").client("x");
    assert!(get(Some(&intruder)).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn basic_auth_lets_the_right_password_in_and_costs_an_unknown_user_a_check() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    // Cost 4, bcrypt's least, keeps the test quick; the path is the same.
    let hash = bcrypt::hash("scrape-s3cret", 4).unwrap();
    let yaml = format!(
        "{TLS}http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  prometheus: {hash}\n"
    );
    let server = Server::start(dir.path(), &yaml).await;
    assert_eq!(server.web.describe(), "TLS, basic auth for 1 user");
    let https = client(Some(&ca), None);
    let get = |user: Option<(&str, &str)>| {
        let mut request = https.get(server.url("/metrics"));
        if let Some((user, password)) = user {
            request = request.basic_auth(user, Some(password));
        }
        request.send()
    };

    let answer = get(Some(("prometheus", "scrape-s3cret"))).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-content-type-options"], "nosniff");
    assert_eq!(answer.text().await.unwrap(), "up 1\n");
    assert_eq!(server.web.bcrypt_checks(), (0, 1));
    // The next scrape's verdict is cached: no bcrypt.
    assert_eq!(get(Some(("prometheus", "scrape-s3cret"))).await.unwrap().status(), 200);
    assert_eq!(server.web.bcrypt_checks(), (0, 1));

    for (who, expected_checks) in [
        (None, (0, 1)),
        (Some(("prometheus", "wrong")), (0, 2)),
        // An unknown user is checked against the stand-in hash: a bcrypt
        // check like a wrong password's, not a shortcut.
        (Some(("grafana", "scrape-s3cret")), (1, 3)),
    ] {
        let answer = get(who).await.unwrap();
        assert_eq!(answer.status(), 401, "{who:?}");
        assert_eq!(answer.headers()["www-authenticate"], "Basic", "{who:?}");
        assert_eq!(answer.headers()["x-content-type-options"], "nosniff", "{who:?}");
        assert_eq!(server.web.bcrypt_checks(), expected_checks, "{who:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let first = std::fs::read_to_string(dir.path().join("server.crt")).unwrap();
    let server = Server::start(dir.path(), TLS).await;
    let https = client(Some(&ca), None);
    let served = |https: reqwest::Client| {
        let url = server.url("/metrics");
        async move { served_certificate(&https.get(url).send().await.unwrap()) }
    };
    let before = served(https.clone()).await;
    assert_eq!(pem_der(&first), before);

    // New files on disk change nothing until the reload.
    let second = ca.server("server two", 2);
    second.write(dir.path(), "server");
    assert_eq!(served(https.clone()).await, before);
    server.web.reload().unwrap();
    assert_eq!(served(https.clone()).await, second.der, "the new certificate after the reload");

    // A broken file: the reload fails, names the key, and the certificate
    // in force stays.
    std::fs::write(dir.path().join("web.yml"), format!("{TLS}  client_auth_type: Sometimes\n"))
        .unwrap();
    let err = server.web.reload().unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "web config {}: tls_server_config.client_auth_type: unknown policy \"Sometimes\": expected one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert",
            dir.path().join("web.yml").display()
        )
    );
    assert_eq!(served(https).await, second.der);
    server.stop().await;
}

/// The DER inside a PEM certificate.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

#[tokio::test]
async fn tls_versions_are_kept_to_what_the_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let server = Server::start(dir.path(), &format!("{TLS}  min_version: TLS13\n")).await;
    let tls12_only = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert!(tls12_only.get(server.url("/metrics")).send().await.is_err());
    assert_eq!(
        client(Some(&ca), None).get(server.url("/metrics")).send().await.unwrap().status(),
        200
    );
    server.stop().await;
}

/// Each way a web configuration can be wrong, and the message that names
/// the file and the key.
#[test]
fn bad_web_configs_say_which_key_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    TestCa::new("client CA").write(dir.path(), "clients.crt");
    let web = dir.path().join("web.yml");
    let shown = web.display().to_string();
    let load = |yaml: &str| {
        std::fs::write(&web, yaml).unwrap();
        match WebConfig::load(&web) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(err) => signage_watchdog::error::with_causes(&err),
        }
    };
    let cases: Vec<(String, String)> = vec![
        (
            format!("{TLS}  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"),
            format!("web config {shown}:4:3: unknown field `cipher_suites`, expected one of cert_file, key_file, client_auth_type, client_ca_file, min_version, max_version"),
        ),
        (
            "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n".into(),
            format!(
                "web config {shown}: tls_server_config.cert_file: cannot read {}: No such file or directory (os error 2)",
                dir.path().join("missing.crt").display()
            ),
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n".into(),
            format!("web config {shown}: tls_server_config.key_file: missing: TLS needs both cert_file and key_file"),
        ),
        (
            "tls_server_config:\n  cert_file: server.crt\n  key_file: ca.crt\n".into(),
            format!(
                "web config {shown}: tls_server_config.key_file: {}: no private key in it (expected PEM: PKCS#8, PKCS#1 or SEC1)",
                dir.path().join("ca.crt").display()
            ),
        ),
        (
            "basic_auth_users:\n  prometheus: $2y$10$this-is-no-bcrypt-hash\n".into(),
            format!("web config {shown}: basic_auth_users.prometheus: not a bcrypt hash (expected $2y$…, 60 characters; make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"),
        ),
        (
            format!("{TLS}  client_auth_type: requireandverifyclientcert\n"),
            format!("web config {shown}: tls_server_config.client_auth_type: unknown policy \"requireandverifyclientcert\": expected one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"),
        ),
        (
            format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n"),
            format!("web config {shown}: tls_server_config.client_ca_file: missing: client_auth_type RequireAndVerifyClientCert verifies client certificates against it"),
        ),
        (
            format!("{TLS}  client_ca_file: clients.crt\n"),
            format!("web config {shown}: tls_server_config.client_auth_type: client_ca_file is set but client_auth_type is NoClientCert: set RequireAndVerifyClientCert to check client certificates"),
        ),
        (
            format!("{TLS}  min_version: TLS11\n"),
            format!("web config {shown}: tls_server_config.min_version: TLS11 is not supported (TLS 1.0 and 1.1 are obsolete): write TLS12 or TLS13"),
        ),
        (
            format!("{TLS}  min_version: TLS13\n  max_version: TLS12\n"),
            format!("web config {shown}: tls_server_config.max_version: is older than min_version"),
        ),
        (
            "tls_server_config: [cert_file]\n".into(),
            format!("web config {shown}:1:20: expected mapping start"),
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(load(&yaml), expected, "{yaml}");
    }

    // The key is the certificate's or nothing.
    let other = TestCa::new("other").server("other", 9);
    other.write(dir.path(), "other");
    let message = load("tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n");
    assert!(
        message.starts_with(&format!(
            "web config {shown}: tls_server_config.key_file: does not go with cert_file"
        )),
        "{message}"
    );
    assert!(!message.contains("PRIVATE KEY"), "{message}");

    // No file at all.
    std::fs::remove_file(&web).unwrap();
    let err = WebConfig::load(&web).unwrap_err();
    assert_eq!(
        signage_watchdog::error::with_causes(&err),
        format!("web config {shown}: cannot read it: No such file or directory (os error 2)")
    );
}
