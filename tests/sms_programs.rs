//! The `gammu` and `command` backends with small stand-in programs (shell
//! scripts) that succeed, fail, hang and print errors: the exact arguments
//! they get, and how each ending is judged.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use signage_watchdog::sms::{Delivered, Sender, SmsConfigError};
use support::sms::{definite, message, uncertain, PHONE};

mod support;

/// The stand-ins, by name. Each records what it was given next to itself
/// (`<script>.args`, `<script>.env`, `<script>.pid`), and each is used by
/// one test only, so tests running at once do not mix their records.
const STAND_INS: &[(&str, &str)] = &[
    (
        "gammu-ok",
        r#"printf '%s\n' "$@" > "$0.args"
printf '%s\n' "$LC_ALL" > "$0.env"
echo "gammu-smsd-inject[4711]: Written message with ID /var/spool/gammu/outbox/OUTC20250526_132908_00_+79991234567_sms0.smsbackup"
"#,
    ),
    (
        "gammu-unicode",
        r#"printf '%s\n' "$@" > "$0.args"
echo "Written message with ID 17"
"#,
    ),
    (
        "gammu-fail",
        r#"echo "gammu-smsd-inject[4711]: Failed to inject message: Error opening device, it doesn't exist." >&2
exit 2
"#,
    ),
    ("gammu-hang", "sleep 30 &\necho $! > \"$0.pid\"\nwait\n"),
    (
        "command-ok",
        r#"printf '%s\n' "$@" > "$0.args"
printf '%s\n' "$SMS_TO" "$SMS_TEXT" > "$0.env"
echo queued
"#,
    ),
    ("command-fail", "echo 'send-sms: no credit left on account 12345' >&2\nexit 3\n"),
    ("command-unsure", "echo 'send-sms: the API did not answer in 10s' >&2\nexit 75\n"),
    ("command-hang", "echo 'connecting…'\nsleep 30 &\necho $! > \"$0.pid\"\nwait\n"),
    ("command-signal", "echo 'half way' >&2\nkill -TERM $$\n"),
    ("command-env", "env > \"$0.env\"\n"),
    ("gammu-env", "env > \"$0.env\"\necho 'Written message with ID 18'\n"),
];

/// Writes every stand-in once, before any test runs one: a script still
/// open for writing in one thread while another thread executes it would
/// fail with "Text file busy".
fn stand_in(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sms_programs");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, body) in STAND_INS {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    });
    dir.join(name)
}

fn record(script: &Path, suffix: &str) -> Vec<String> {
    let path = PathBuf::from(format!("{}.{suffix}", script.display()));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether a process ends within a few seconds (gone, or a zombie nobody
/// reaped yet). A process sent SIGKILL closes its pipes before it becomes
/// a zombie, so the backend can return a moment before the kernel finishes
/// it: look until a deadline rather than once.
fn ends_soon(pid: &str) -> bool {
    let ended = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            matches!(state, Some(Some('Z' | 'X')))
        }
    };
    support::wait::poll_for(Duration::from_secs(5), || ended().then_some(())).is_some()
}

fn build(backend: &str, lines: &str) -> Result<Box<dyn Sender>, SmsConfigError> {
    let text = format!("[sms]\nbackend = \"{backend}\"\n[sms.{backend}]\n{lines}\n");
    support::sms::config(&text).build(Path::new("/etc/jobctl"))
}

fn sender(backend: &str, lines: &str) -> Box<dyn Sender> {
    build(backend, lines).unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn gammu_queues_with_exactly_these_arguments_and_journals_the_id() {
    let script = stand_in("gammu-ok");
    let gammu =
        sender("gammu", &format!("program = \"{}\"\nconfig = \"gammu-smsdrc\"", script.display()));

    let outcome = gammu.send(&message("#12#0#1#1#")).await;

    assert_eq!(
        outcome,
        Ok(Delivered {
            backend: "gammu".into(),
            reference: Some(
                "/var/spool/gammu/outbox/OUTC20250526_132908_00_+79991234567_sms0.smsbackup".into()
            )
        })
    );
    assert_eq!(
        record(&script, "args"),
        ["-c", "/etc/jobctl/gammu-smsdrc", "TEXT", PHONE, "-text", "#12#0#1#1#"]
    );
    assert_eq!(record(&script, "env"), ["C"]);
}

#[tokio::test]
async fn gammu_gets_cyrillic_as_utf8_unicode() {
    let script = stand_in("gammu-unicode");
    let gammu = sender("gammu", &format!("program = \"{}\"", script.display()));

    let outcome = gammu.send(&message("Перезагрузка; $(reboot)")).await;

    assert_eq!(outcome, Ok(Delivered { backend: "gammu".into(), reference: Some("17".into()) }));
    assert_eq!(
        record(&script, "args"),
        ["TEXT", PHONE, "-unicode", "-textutf8", "Перезагрузка; $(reboot)"]
    );
}

#[tokio::test]
async fn gammu_failing_is_definite_in_its_own_words() {
    let script = stand_in("gammu-fail");
    let gammu = sender("gammu", &format!("program = \"{}\"", script.display()));

    let why = definite(gammu.send(&message("#12#0#1#1#")).await);

    assert_eq!(
        why,
        format!(
            "{} exited with status 2: gammu-smsd-inject[4711]: Failed to inject message: Error opening device, it doesn't exist.",
            script.display()
        )
    );
}

#[tokio::test]
async fn gammu_hanging_is_killed_and_uncertain() {
    let script = stand_in("gammu-hang");
    let gammu =
        sender("gammu", &format!("program = \"{}\"\ntimeout = \"300ms\"", script.display()));

    let started = Instant::now();
    let why = uncertain(gammu.send(&message("#12#0#1#1#")).await);

    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(
        why,
        format!(
            "{} did not finish within 300ms and was killed; it may have sent the message",
            script.display()
        )
    );
    let pid = record(&script, "pid").remove(0);
    assert!(ends_soon(&pid), "the stand-in's child {pid} still runs 5 s after the kill");
}

#[tokio::test]
async fn gammu_missing_is_named_at_load_or_at_send() {
    let err = build("gammu", "program = \"/nonexistent/gammu-smsd-inject\"").unwrap_err();
    assert_eq!(err.key, "sms.gammu.program");
    assert!(
        err.message.starts_with("cannot use /nonexistent/gammu-smsd-inject"),
        "{}",
        err.message
    );

    let gammu = sender("gammu", "program = \"gammu-smsd-inject-surely-not-installed\"");
    let why = definite(gammu.send(&message("#12#0#1#1#")).await);
    assert_eq!(
        why,
        "gammu-smsd-inject-surely-not-installed was not found; check the path (or PATH for a bare name)"
    );
}

#[tokio::test]
async fn command_gets_the_phone_and_text_as_whole_arguments_without_a_shell() {
    let script = stand_in("command-ok");
    let command = sender(
        "command",
        &format!(
            "program = \"{}\"\nargs = [\"--to\", \"{{phone}}\", \"--\", \"{{text}}\"]\nenv = {{ SMS_TO = \"{{phone_digits}}\", SMS_TEXT = \"{{text}}\" }}",
            script.display()
        ),
    );
    let text = "Reboot \"lobby\"; $(touch /tmp/sw-pwned) `id` *";

    let outcome = command.send(&message(text)).await;

    assert_eq!(outcome, Ok(Delivered { backend: "command".into(), reference: None }));
    assert_eq!(record(&script, "args"), ["--to", PHONE, "--", text]);
    assert_eq!(record(&script, "env"), ["79991234567", text]);
    assert!(!Path::new("/tmp/sw-pwned").exists());
}

#[tokio::test]
async fn command_exit_status_decides_and_its_stderr_explains() {
    let lines = |name: &str| {
        format!(
            "program = \"{}\"\nargs = [\"{{phone}}\", \"{{text}}\"]\nuncertain_exit_codes = [75]",
            stand_in(name).display()
        )
    };

    let why = definite(sender("command", &lines("command-fail")).send(&message("#01#0#")).await);
    assert_eq!(
        why,
        format!(
            "program {} exited with status 3: send-sms: no credit left on account 12345",
            stand_in("command-fail").display()
        )
    );

    let why = uncertain(sender("command", &lines("command-unsure")).send(&message("#01#0#")).await);
    assert_eq!(
        why,
        format!(
            "program {} exited with status 75, which says it may have sent the message: send-sms: the API did not answer in 10s",
            stand_in("command-unsure").display()
        )
    );

    let why = uncertain(sender("command", &lines("command-signal")).send(&message("#01#0#")).await);
    assert_eq!(
        why,
        format!(
            "program {} was killed by signal 15; it may have sent the message: half way",
            stand_in("command-signal").display()
        )
    );
}

#[tokio::test]
async fn command_hanging_is_killed_with_its_children_and_uncertain() {
    let script = stand_in("command-hang");
    let command = sender(
        "command",
        &format!(
            "program = \"{}\"\nargs = [\"{{phone}}\", \"{{text}}\"]\ntimeout = \"300ms\"",
            script.display()
        ),
    );

    let started = Instant::now();
    let why = uncertain(command.send(&message("#01#0#")).await);

    // Not the 30 s of the stand-in's child: the whole group was killed.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(
        why,
        format!(
            "program {} did not finish within 300ms and was killed; it may have sent the message: connecting…",
            script.display()
        )
    );
    let pid = record(&script, "pid").remove(0);
    assert!(ends_soon(&pid), "the stand-in's child {pid} still runs 5 s after the kill");
}

/// A variable of the test's own environment that stands for a gateway key
/// in `key_env`: no program jobctl starts may see it.
const SECRET_VAR: &str = "SW_TEST_GATEWAY_KEY";

/// The variables a stand-in that ran `env` was started with, by name.
/// `sh` adds `PWD` (and some shells `SHLVL`, `_`, `OLDPWD`) itself.
fn started_with(script: &Path) -> Vec<(String, String)> {
    record(script, "env")
        .into_iter()
        .filter_map(|line| line.split_once('=').map(|(n, v)| (n.to_string(), v.to_string())))
        .filter(|(name, _)| !["PWD", "SHLVL", "_", "OLDPWD"].contains(&name.as_str()))
        .collect()
}

#[tokio::test]
async fn command_gets_path_lang_and_its_env_table_only() {
    std::env::set_var(SECRET_VAR, "hunter2-5f0e");
    let script = stand_in("command-env");
    let command = sender(
        "command",
        &format!(
            "program = \"{}\"\nargs = [\"{{phone}}\", \"{{text}}\"]\nenv = {{ SMS_SENDER = \"jobctl\", SMS_TO = \"{{phone_digits}}\" }}",
            script.display()
        ),
    );

    let outcome = command.send(&message("#01#0#")).await;

    assert_eq!(outcome, Ok(Delivered { backend: "command".into(), reference: None }));
    let mut expected = vec![
        ("SMS_SENDER".to_string(), "jobctl".to_string()),
        ("SMS_TO".to_string(), "79991234567".to_string()),
    ];
    for name in ["PATH", "LANG"] {
        if let Ok(value) = std::env::var(name) {
            expected.push((name.to_string(), value));
        }
    }
    expected.sort();
    let mut got = started_with(&script);
    got.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn gammu_gets_path_lang_and_lc_all_only() {
    std::env::set_var(SECRET_VAR, "hunter2-5f0e");
    let script = stand_in("gammu-env");
    let gammu = sender("gammu", &format!("program = \"{}\"", script.display()));

    let outcome = gammu.send(&message("#01#0#")).await;

    assert_eq!(outcome, Ok(Delivered { backend: "gammu".into(), reference: Some("18".into()) }));
    let mut expected = vec![("LC_ALL".to_string(), "C".to_string())];
    for name in ["PATH", "LANG"] {
        if let Ok(value) = std::env::var(name) {
            expected.push((name.to_string(), value));
        }
    }
    expected.sort();
    let mut got = started_with(&script);
    got.sort();
    assert_eq!(got, expected);
}

#[test]
fn check_warns_when_the_command_is_a_shell_with_dash_c() {
    let dir = tempfile::tempdir().unwrap();
    let rules = |program: &str, args: &str| {
        support::rules_file::head("http://127.0.0.1:9", "1m", "10s", "journal.db")
            + &format!("[sms]\nbackend = \"command\"\n\n[sms.command]\nprogram = \"{program}\"\nargs = {args}\n")
    };
    let check = |text: &str| {
        std::fs::write(dir.path().join("rules.toml"), text).unwrap();
        let mut command = support::process::command(env!("CARGO_BIN_EXE_jobctl"), dir.path());
        command.args(["--config", "rules.toml", "check", "--offline"]);
        support::process::run(&mut command)
    };

    let ran = check(&rules("/bin/sh", r#"["-c", "send-sms \"$0\" \"$1\"", "{phone}", "{text}"]"#));
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(
        ran.stderr,
        "jobctl: warning: rules.toml:13:11: sms.command.program: sh -c runs its argument as a shell command line: a device name in the text (they come from the AddReality account) would reach the shell; call your program directly with {phone} and {text} as arguments of their own\n"
    );

    let ran = check(&rules("/bin/sh", r#"["/usr/local/bin/send-sms", "{phone}", "{text}"]"#));
    assert_eq!((ran.code, ran.stderr.as_str()), (0, ""), "{ran:?}");
}
