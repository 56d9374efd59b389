//! A real PostgreSQL 15 (Debian's `/usr/lib/postgresql/15/bin`) for the
//! journal's tests: one server per test binary, a fresh database per test.
//!
//! The server is started on first use: `initdb` in a temporary directory
//! (with `--no-sync`; `fsync=off`: nothing here must survive a power cut),
//! listening on 127.0.0.1 only, on a free port, its Unix socket in that
//! directory. PostgreSQL refuses to run as root, so as root the directory
//! is handed to the `postgres` user and the server runs as that user.
//!
//! It must die with the test process, however that ends: it is started
//! through `setpriv --pdeathsig QUIT` from a thread that lives as long as
//! the process (the parent-death signal follows the thread that started
//! the child), so the kernel sends it an immediate shutdown when the test
//! binary exits or is killed. The directory of a run is removed by the
//! next run once its process is gone.
//!
//! Logins over TCP need a password (scram-sha-256): tests connect as the
//! role `jobctl`, whose password is in a file ([`TestDatabase::password_file`]),
//! so that a wrong password is a real refusal. The server also speaks TLS
//! (plain connections stay allowed), with a certificate for `127.0.0.1`
//! signed by a CA made at start ([`TestDatabase::ca_file`]).
//!
//! A test that stops the server (to see what jobctl does while PostgreSQL
//! is down) gets one of its own ([`own_server`]): the same setup in a
//! directory of its own, on its own port, stopped by a fast shutdown
//! ([`PgServer::stop`]) and started again on the same port and data
//! ([`PgServer::start_again`]); dropped, it is stopped and its directory
//! removed.
//!
//! Without the binaries, tests skip with a message; under CI they fail.
//! This file is also compiled into the library's unit tests (`#[path]`),
//! so it uses nothing but std and the `postgres` crate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::Duration;

/// Where Debian's PostgreSQL 15 binaries are.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser's password (only ever on loopback, for one test run).
const SUPERUSER_PASSWORD: &str = "postgres-superuser-test-only";

/// The `jobctl` role's password.
pub(crate) const JOBCTL_PASSWORD: &str = "jobctl-test-only";

/// The running server.
pub(crate) struct PgServer {
    /// Its TCP port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its directory (data, socket, log, password files).
    pub(crate) dir: PathBuf,
    /// The file holding [`JOBCTL_PASSWORD`].
    pub(crate) password_file: PathBuf,
    /// The CA (PEM) that signed the server's certificate.
    pub(crate) ca_file: PathBuf,
    /// Serialises CREATE DATABASE.
    admin: Mutex<()>,
    /// How to start it (again).
    launch: Launch,
    /// The running postmaster: its PID, and a message when it has exited.
    running: Mutex<Option<(u32, mpsc::Receiver<()>)>>,
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let running = self.running.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((pid, exited)) = running.take() {
            // An immediate shutdown: nothing of a test's server is kept.
            let _ = Command::new("kill").args(["-s", "QUIT", &pid.to_string()]).status();
            let _ = exited.recv_timeout(Duration::from_secs(60));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What starting the server takes, kept to start it again after a stop.
#[derive(Clone)]
struct Launch {
    data: PathBuf,
    dir: PathBuf,
    port: u16,
    root: bool,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub(crate) struct TestDatabase {
    /// The CA (PEM) that signed the server's certificate.
    pub(crate) ca_file: PathBuf,
    /// Its name.
    pub(crate) name: String,
    /// `postgresql://jobctl@127.0.0.1:PORT/NAME` (no password).
    pub(crate) url: String,
    /// The file with the `jobctl` role's password.
    pub(crate) password_file: PathBuf,
    /// The server's port.
    pub(crate) port: u16,
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(1);

/// The server, started on first use; `None` (the test is skipped, with a
/// message) when PostgreSQL is not installed and CI is not set.
pub(crate) fn server() -> Option<&'static PgServer> {
    let found = Path::new(BIN).join("postgres").exists();
    if !found {
        let missing = format!(
            "PostgreSQL 15 is not installed ({BIN}/postgres is missing; apt-get install postgresql)"
        );
        if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
            panic!("{missing} (CI is set, so the tests that need it must not be skipped)");
        }
        eprintln!("skipped: {missing}");
        return None;
    }
    match SERVER.get_or_init(|| on_thread(|| start("shared"))) {
        Ok(server) => Some(server),
        Err(why) => panic!("cannot start PostgreSQL for the tests: {why}"),
    }
}

/// A server of the calling test's own, which it may stop and start again
/// ([`PgServer::stop`], [`PgServer::start_again`]) without disturbing the
/// other tests of its binary; `None` when skipped.
pub(crate) fn own_server() -> Option<PgServer> {
    server()?;
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let name = format!("own{}", NEXT.fetch_add(1, Ordering::Relaxed));
    match on_thread(|| start(&name)) {
        Ok(server) => Some(server),
        Err(why) => panic!("cannot start PostgreSQL for the test: {why}"),
    }
}

/// A fresh database owned by `jobctl`, or `None` when skipped.
pub(crate) fn fresh_database() -> Option<TestDatabase> {
    let server = server()?;
    Some(server.fresh_database())
}

impl PgServer {
    /// Stops the server as an operator's restart does (a fast shutdown:
    /// sessions are ended, connections refused), and waits until it has
    /// exited.
    pub(crate) fn stop(&self) {
        let (pid, exited) = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .expect("the server is running");
        let status = Command::new("kill").args(["-s", "INT", &pid.to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "cannot signal PostgreSQL (PID {pid})");
        exited.recv_timeout(Duration::from_secs(60)).expect("PostgreSQL did not stop within 60 s");
    }

    /// Starts the stopped server again, on the same port and data, and
    /// returns once it takes logins.
    pub(crate) fn start_again(&self) {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(running.is_none(), "the server is running");
        let launch = self.launch.clone();
        let started = on_thread(move || {
            let started = spawn_postgres(&launch)?;
            wait_for_logins(&launch)?;
            Ok::<_, String>(started)
        });
        *running =
            Some(started.unwrap_or_else(|why| panic!("cannot start PostgreSQL again: {why}")));
    }

    /// Creates a new, empty database owned by `jobctl`.
    pub(crate) fn fresh_database(&self) -> TestDatabase {
        let name = format!(
            "journal_{}_{}",
            std::process::id(),
            NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let _one_at_a_time = self.admin.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.admin_execute("postgres", &format!("CREATE DATABASE {name} OWNER jobctl"));
        TestDatabase {
            ca_file: self.ca_file.clone(),
            url: format!("postgresql://jobctl@127.0.0.1:{}/{name}", self.port),
            name,
            password_file: self.password_file.clone(),
            port: self.port,
        }
    }

    /// Runs `sql` as the superuser in `database` (tests that plant what a
    /// journal must refuse).
    pub(crate) fn admin_execute(&self, database: &str, sql: &str) {
        let (port, database, sql) = (self.port, database.to_string(), sql.to_string());
        on_thread(move || {
            let mut client = admin_client(port, &database).expect("superuser connection");
            client.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        });
    }

    /// Ends every session of the `jobctl` role on `database` from the
    /// server's side (as a restart or a cut network would), and waits
    /// until they are gone.
    pub(crate) fn terminate_sessions(&self, database: &str) {
        let sessions =
            format!("FROM pg_stat_activity WHERE datname = '{database}' AND usename = 'jobctl'");
        self.admin_execute("postgres", &format!("SELECT pg_terminate_backend(pid) {sessions}"));
        super::wait::wait_until(&format!("the end of the sessions on {database}"), || {
            let left = self.admin_query_text("postgres", &format!("SELECT count(*) {sessions}"));
            (left.as_deref() == Some("0")).then_some(())
        });
    }

    /// The first column of the first row of `sql`, as text, run as the
    /// superuser in `database`.
    pub(crate) fn admin_query_text(&self, database: &str, sql: &str) -> Option<String> {
        let (port, database, sql) = (self.port, database.to_string(), sql.to_string());
        on_thread(move || {
            let mut client = admin_client(port, &database).expect("superuser connection");
            let rows = client.simple_query(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.into_iter().find_map(|message| match message {
                postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                _ => None,
            })
        })
    }
}

/// Runs `work` on a thread of its own: the synchronous client must not run
/// inside an async runtime, as a `#[tokio::test]` would call it.
fn on_thread<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(work).join().expect("the PostgreSQL helper panicked"))
}

fn admin_client(port: u16, database: &str) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(SUPERUSER_PASSWORD)
        .dbname(database)
        .connect_timeout(Duration::from_secs(5))
        .connect(postgres::NoTls)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Removes the directories of earlier runs whose process is gone.
fn remove_stale_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(tail) = name.strip_prefix("signage-watchdog-pg-") else { continue };
        let pid = tail.split('-').next().unwrap_or(tail);
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `command` run as the `postgres` user when we are root.
fn as_server_user(root: bool, program: &str) -> Command {
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn start(name: &str) -> Result<PgServer, String> {
    let parent = std::env::temp_dir();
    remove_stale_dirs(&parent);
    let dir = parent.join(format!("signage-watchdog-pg-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let data = dir.join("data");
    let superuser_file = dir.join("superuser-password");
    std::fs::write(&superuser_file, SUPERUSER_PASSWORD).map_err(|e| e.to_string())?;
    let password_file = dir.join("jobctl-password");
    std::fs::write(&password_file, format!("{JOBCTL_PASSWORD}\n")).map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(&password_file, private).map_err(|e| e.to_string())?;
    }
    let ca_file = dir.join("ca.crt");
    let (server_cert, server_key) = (dir.join("server.crt"), dir.join("server.key"));
    write_certificates(&ca_file, &server_cert, &server_key)?;
    let root = is_root();
    if root {
        run(
            Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .arg(&superuser_file)
                .arg(&server_cert)
                .arg(&server_key),
            "chown",
        )?;
    }
    let initdb = format!("{BIN}/initdb");
    run(
        as_server_user(root, &initdb)
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", superuser_file.display())),
        "initdb",
    )?;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.local_addr().map_err(|e| e.to_string())?.port()
    };
    let launch = Launch { data, dir: dir.clone(), port, root, server_cert, server_key };
    let running = spawn_postgres(&launch)?;
    wait_for_logins(&launch)?;
    let mut client = admin_client(port, "postgres").map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("CREATE ROLE jobctl LOGIN PASSWORD '{JOBCTL_PASSWORD}'"))
        .map_err(|e| e.to_string())?;
    Ok(PgServer {
        port,
        dir,
        password_file,
        ca_file,
        admin: Mutex::new(()),
        launch,
        running: Mutex::new(Some(running)),
    })
}

/// Starts the postmaster of `launch`: its PID, and a receiver told when it
/// has exited.
fn spawn_postgres(launch: &Launch) -> Result<(u32, mpsc::Receiver<()>), String> {
    let Launch { data, dir, port, root, server_cert, server_key } = launch;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .map_err(|e| e.to_string())?;
    let mut command = Command::new("setpriv");
    command.args(["--pdeathsig", "QUIT"]);
    if *root {
        command.args(["--reuid", "postgres", "--regid", "postgres", "--init-groups"]);
    }
    command
        .arg("--")
        .arg(format!("{BIN}/postgres"))
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", dir.display()))
        .args(["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"])
        .args(["-c", "ssl=on", "-c"])
        .arg(format!("ssl_cert_file={}", server_cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", server_key.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    // The parent-death signal is sent when the *thread* that started the
    // server ends: start it from one that lives as long as the server
    // (it waits for it, and says when it has exited).
    let (started, pid) = mpsc::channel();
    let (exited, gone) = mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-keeper".to_string())
        .spawn(move || {
            let child = command.spawn();
            let mut child = match child {
                Ok(child) => child,
                Err(err) => {
                    let _ = started.send(Err(format!("cannot start postgres: {err}")));
                    return;
                }
            };
            let _ = started.send(Ok(child.id()));
            let _ = child.wait();
            let _ = exited.send(());
        })
        .map_err(|e| e.to_string())?;
    let pid = pid.recv().map_err(|e| e.to_string())??;
    Ok((pid, gone))
}

/// Polls until the server of `launch` takes logins.
fn wait_for_logins(launch: &Launch) -> Result<(), String> {
    let mut last = String::new();
    let login = super::wait::poll_for(Duration::from_secs(60), || {
        admin_client(launch.port, "postgres").map_err(|err| last = err.to_string()).ok()
    });
    if login.is_some() {
        return Ok(());
    }
    let log = std::fs::read_to_string(launch.dir.join("server.log")).unwrap_or_default();
    Err(format!("no login within 60 s: {last}; its log:\n{log}"))
}

/// A CA, and a server certificate for 127.0.0.1 signed by it (its key
/// mode 0600, as PostgreSQL insists).
fn write_certificates(ca_file: &Path, cert: &Path, key: &Path) -> Result<(), String> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let failed = |e: rcgen::Error| e.to_string();
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "journal test CA");
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(failed)?)
        .map_err(failed)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .map_err(failed)?;
    params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let server_key = KeyPair::generate().map_err(failed)?;
    let server = params.signed_by(&server_key, &issuer).map_err(failed)?;
    std::fs::write(ca_file, issuer.pem()).map_err(|e| e.to_string())?;
    std::fs::write(cert, server.pem()).map_err(|e| e.to_string())?;
    std::fs::write(key, server_key.serialize_pem()).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())
}
