//! The shipped systemd units must pass `systemd-analyze verify`.
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
}

#[test]
fn exporter_unit_verifies() {
    verify("addreality-exporter.service", env!("CARGO_BIN_EXE_addreality-exporter"));
}

#[test]
fn jobctl_unit_verifies() {
    verify("jobctl.service", env!("CARGO_BIN_EXE_jobctl"));
}
