//! `jobctl demo` end to end, as a newcomer runs it but faster: the whole
//! loop in one process (simulated account, exporter, jobctl scraping it,
//! simulated sockets), its summary, and a journal `jobctl history` reads
//! afterwards; and the demo's rules refused where they cannot work.

mod support;

use std::path::Path;

use support::process::{command, run_async as run, signal, Ran};
use support::wait::DEADLINE;
use tokio::io::{AsyncBufReadExt, BufReader};

const JOBCTL: &str = env!("CARGO_BIN_EXE_jobctl");

/// `jobctl ARGS…` in `dir`, with the demo's directory made under `dir`.
async fn jobctl(dir: &Path, args: &[&str]) -> Ran {
    let mut command = command(JOBCTL, dir);
    command.args(args).env("TMPDIR", dir);
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    run(command).await
}

/// The numbers of the summary line `demo: 273 players, 14 went offline,
/// 9 power-cycled, 8 recovered, 1 escalated, 0 duplicate commands`.
fn summary(stdout: &str) -> [u64; 6] {
    let line = stdout
        .lines()
        .find(|line| line.starts_with("demo: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let words =
        ["players", "went offline", "power-cycled", "recovered", "escalated", "duplicate commands"];
    let parts: Vec<&str> = line["demo: ".len()..].split(", ").collect();
    assert_eq!(parts.len(), words.len(), "{line}");
    let mut numbers = [0; 6];
    for ((part, word), number) in parts.iter().zip(words).zip(&mut numbers) {
        let (n, rest) = part.split_once(' ').unwrap_or_else(|| panic!("{line}"));
        assert_eq!(rest, word, "{line}");
        *number = n.parse().unwrap_or_else(|_| panic!("{line}"));
    }
    numbers
}

#[tokio::test]
async fn the_demo_power_cycles_players_back_and_leaves_a_journal_history_reads() {
    let dir = tempfile::tempdir().unwrap();
    // Sixty demo seconds in ten wall seconds.
    let ran = jobctl(dir.path(), &["demo", "--duration", "60s", "--speed", "6"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{}", ran.stdout);
    // Not a terminal: one line per event, no escape codes.
    assert!(!ran.stdout.contains('\x1b'), "{}", ran.stdout);
    for seen in [
        "went offline",
        "pending (condition true",
        "SMS sent: ",
        "received \"#12#0#1#1#\"",
        "is playing again",
        "recovered ",
    ] {
        assert!(ran.stdout.contains(seen), "no {seen:?} in:\n{}", ran.stdout);
    }
    let [players, went_bad, power_cycled, recovered, _escalated, duplicates] = summary(&ran.stdout);
    assert_eq!(players, 273, "{}", ran.stdout);
    assert!(went_bad >= power_cycled, "{}", ran.stdout);
    assert!(power_cycled >= 1, "{}", ran.stdout);
    assert!(recovered >= 1, "{}", ran.stdout);
    assert_eq!(duplicates, 0, "{}", ran.stdout);

    // The directory and its rules stay, and history reads the journal.
    let demo_dir = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap().to_str().unwrap().starts_with("jobctl-demo-"))
        .expect("the demo's directory is kept");
    let rules = demo_dir.join("rules.toml");
    let journal = demo_dir.join("journal.db");
    assert!(
        ran.stdout.contains(&format!(
            "journal: {} (kept; read it with `jobctl history --config {}`",
            journal.display(),
            rules.display()
        )),
        "{}",
        ran.stdout
    );
    let rules = rules.to_str().unwrap();
    let history = jobctl(dir.path(), &["history", "--config", rules, "--format", "json"]).await;
    assert_eq!((history.code, history.stderr.as_str()), (0, ""));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&history.stdout).unwrap();
    let cycles = rows.iter().filter(|row| row["text"] == "#12#0#1#1#").count();
    assert_eq!(cycles as u64, power_cycled, "{rows:#?}");
    assert!(rows.iter().any(|row| row["result"] == "recovered"), "{rows:#?}");
    assert!(rows.iter().all(|row| row["backend"] == "demo"), "{rows:#?}");

    // The rules it wrote run again, as a person who edited them would: the
    // exporter listens where they scrape, and the journal carries on.
    let again =
        jobctl(dir.path(), &["demo", "--rules", rules, "--duration", "5s", "--speed", "10"]).await;
    assert_eq!((again.code, again.stderr.as_str()), (0, ""), "{}", again.stdout);
    assert!(again.stdout.contains(&format!("jobctl running {rules}:")), "{}", again.stdout);
    assert_eq!(summary(&again.stdout)[0], 273);
    let history = jobctl(dir.path(), &["history", "--config", rules, "--format", "json"]).await;
    let after: Vec<serde_json::Value> = serde_json::from_str(&history.stdout).unwrap();
    assert!(after.len() >= rows.len(), "{after:#?}");
}

#[test]
fn on_a_terminal_the_view_redraws_in_place() {
    use std::io::Read;
    use std::os::unix::ffi::OsStringExt;
    use std::process::Stdio;

    use rustix::fs::OFlags;
    use rustix::pty::OpenptFlags;

    let dir = tempfile::tempdir().unwrap();
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("open a pseudo-terminal");
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let path = std::path::PathBuf::from(std::ffi::OsString::from_vec(name.into_bytes()));
    let terminal =
        rustix::fs::open(&path, OFlags::RDWR | OFlags::NOCTTY, rustix::fs::Mode::empty()).unwrap();
    let size = rustix::termios::Winsize { ws_row: 40, ws_col: 100, ws_xpixel: 0, ws_ypixel: 0 };
    rustix::termios::tcsetwinsize(&terminal, size).unwrap();

    let mut command = command(JOBCTL, dir.path());
    command
        .args(["demo", "--duration", "20s", "--speed", "10"])
        .env("TMPDIR", dir.path())
        .stdout(Stdio::from(terminal));
    let mut child = command.spawn().unwrap();
    // The terminal's only other end is now the child's: reading the master
    // ends (EIO) when the demo exits.
    drop(command);
    let reader = std::thread::spawn(move || {
        let mut master = std::fs::File::from(master);
        let mut seen = Vec::new();
        let mut buffer = [0; 4096];
        while let Ok(n @ 1..) = master.read(&mut buffer) {
            seen.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    let (done, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait()).unwrap());
    let status = ended.recv_timeout(DEADLINE).expect("the demo ends by itself").unwrap();
    let shown = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{shown}");
    // Frames redrawn in place: back up over the last one, clear, draw.
    let frames = shown.matches("\x1b[J").count();
    assert!(frames >= 3, "{frames} redraws in:\n{shown}");
    assert!(shown.matches("players 273: ").count() > frames, "{shown}");
    assert!(shown.contains("last events:"), "{shown}");
    // No line of a frame wider than the terminal, so none wraps and
    // breaks the redraw (the frames between the first and the last).
    let chunks: Vec<&str> = shown.split("\x1b[J").collect();
    for frame in &chunks[1..chunks.len() - 1] {
        for line in frame.split("\r\n") {
            assert!(line.chars().count() <= 100, "{line:?} is wider than the terminal");
        }
    }
    assert!(shown.contains("demo: 273 players, "), "{shown}");
}

#[tokio::test]
async fn ctrl_c_stops_the_demo_with_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = command(JOBCTL, dir.path());
    command.args(["demo", "--speed", "10"]).env("TMPDIR", dir.path());
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let first_episode = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push_str(&line);
            stdout.push('\n');
            if line.contains("went offline") {
                return;
            }
        }
        panic!("the demo ended before a player went offline:\n{stdout}");
    };
    tokio::time::timeout(DEADLINE, first_episode).await.expect("a player goes offline");
    signal(child.id().unwrap(), "INT");
    let rest = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        child.wait_with_output().await.unwrap()
    };
    let output = tokio::time::timeout(DEADLINE, rest).await.expect("the demo stops on SIGINT");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!((output.status.code(), stderr.as_str()), (Some(0), ""), "{stdout}");
    let [players, went_bad, ..] = summary(&stdout);
    assert_eq!(players, 273);
    assert!(went_bad >= 1, "{stdout}");
    assert!(stdout.contains("journal: "), "{stdout}");
}

#[tokio::test]
async fn rules_that_cannot_run_in_the_demo_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let demo_rules = |backend: &str, target: &str| {
        format!(
            "[source]\nscrape = [\"{target}\"]\n[journal]\npath = \"journal.db\"\n[sms]\nbackend = \"{backend}\"\n"
        )
    };
    let log = write("log.toml", &demo_rules("log", "http://127.0.0.1:9747/metrics"));
    let ran = jobctl(dir.path(), &["demo", "--rules", &log]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (3, format!("jobctl: {log}: the demo sends through its simulated sockets only: write [sms] backend = \"demo\"\n").as_str())
    );

    let remote = write("remote.toml", &demo_rules("demo", "http://192.0.2.1:9747/metrics"));
    let ran = jobctl(dir.path(), &["demo", "--rules", &remote]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (3, format!("jobctl: {remote}: the demo's exporter listens on loopback only, so the scrape target must be like http://127.0.0.1:9747/metrics, not http://192.0.2.1:9747/metrics\n").as_str())
    );

    let prometheus = write(
        "prometheus.toml",
        "[prometheus]\nurl = \"http://127.0.0.1:9090\"\n[journal]\npath = \"journal.db\"\n[sms]\nbackend = \"demo\"\n",
    );
    let ran = jobctl(dir.path(), &["demo", "--rules", &prometheus]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (3, format!("jobctl: {prometheus}: the demo has no Prometheus: read its exporter with [source] scrape = [\"http://127.0.0.1:9747/metrics\"] instead of [prometheus]\n").as_str())
    );

    // The demo backend anywhere else: refused, at its place in the file.
    let demo = write("demo.toml", &demo_rules("demo", "http://127.0.0.1:9747/metrics"));
    let ran = jobctl(dir.path(), &["--config", &demo, "run", "--once"]).await;
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(
        ran.stderr.starts_with(&format!("jobctl: {demo}:6:11: sms.backend: backend \"demo\" is the simulated sockets of `jobctl demo`")),
        "{}",
        ran.stderr
    );

    let ran = jobctl(dir.path(), &["demo", "--duration", "0s"]).await;
    assert_eq!(ran.code, 2);
    assert!(
        ran.stderr.starts_with(
            "error: invalid value '0s' for '--duration <DURATION>': must be longer than zero"
        ),
        "{}",
        ran.stderr
    );
    let ran = jobctl(dir.path(), &["demo", "--duration", "soon"]).await;
    assert_eq!(ran.code, 2);
    assert!(ran.stderr.contains("write a duration like 90s or 5m"), "{}", ran.stderr);
    // Nothing was left behind by refused runs but the files written here.
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.ends_with(".toml"))
        .collect();
    left.sort();
    assert_eq!(left, Vec::<String>::new());
}
