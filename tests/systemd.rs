//! The shipped systemd units must pass `systemd-analyze verify` and stay at
//! an exposure of at most 2.0 in `systemd-analyze security --offline=true`.
//!
//! `verify` insists that `ExecStart` names an existing executable, so each
//! unit is checked in a copy whose `/usr/local/bin/NAME` points at the binary
//! cargo just built.

use std::path::Path;
use std::process::Command;

mod support;

fn verify(unit: &str, binary: &str) {
    if !support::installed(
        support::runs("systemd-analyze"),
        "systemd-analyze not found; install Debian's systemd package",
    ) {
        return;
    }
    let name = Path::new(binary).file_name().unwrap().to_str().unwrap();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(unit))
            .expect("unit file readable");
    let installed = format!("/usr/local/bin/{name}");
    assert!(text.contains(&format!("ExecStart={installed}")), "{unit} should start {installed}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join(unit);
    std::fs::write(&copy, text.replace(&installed, binary)).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {unit}:\n{stderr}"
    );

    let exposure = exposure(&copy);
    assert!(exposure <= MAX_EXPOSURE, "{unit}: exposure {exposure}, more than {MAX_EXPOSURE}");
}

/// The highest overall exposure a shipped unit may have (0.0 is the most
/// locked down, 10.0 the least).
const MAX_EXPOSURE: f64 = 2.0;

/// The overall exposure `systemd-analyze security --offline=true` gives `unit`.
fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|line| line.contains("Overall exposure level for"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure from systemd-analyze security:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let figure = line.rsplit(": ").next().and_then(|rest| rest.split_whitespace().next());
    figure
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"))
}

#[test]
fn units_bound_memory_tasks_and_refused_system_calls() {
    for unit in ["addreality-exporter.service", "jobctl.service"] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd").join(unit),
        )
        .expect("unit file readable");
        for setting in ["MemoryMax=", "TasksMax=", "SystemCallErrorNumber=EPERM"] {
            assert!(
                text.lines().any(|line| line.starts_with(setting)),
                "{unit} should set {setting}"
            );
        }
    }
}

#[test]
fn exporter_unit_verifies() {
    verify("addreality-exporter.service", env!("CARGO_BIN_EXE_addreality-exporter"));
}

#[test]
fn jobctl_unit_verifies() {
    verify("jobctl.service", env!("CARGO_BIN_EXE_jobctl"));
}
