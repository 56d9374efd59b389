//! What both benches share: each measures in a child process of its own
//! (so that peak RSS is the measured code's alone), which prints its
//! figures as `name=value` lines, and reports medians and percentiles.
//!
//! `BENCH_WRAP=heaptrack cargo bench --bench jobctl` runs the children
//! under a profiler (any program that takes a command line will do).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::{Command, ExitCode};
use std::time::Duration;

/// A child's figures, printed as `name=value` lines.
pub(crate) type Figures = BTreeMap<String, f64>;

/// Runs this bench binary again with `args` and reads its figures.
pub(crate) fn run_child<S: AsRef<OsStr>>(args: &[S]) -> Result<Figures, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = match std::env::var_os("BENCH_WRAP") {
        Some(wrapper) => {
            let mut command = Command::new(wrapper);
            command.arg(&exe);
            command
        }
        None => Command::new(&exe),
    };
    let output = command.args(args).output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let (name, value) = line.split_once('=').ok_or(format!("odd line {line:?}"))?;
            Ok((name.to_owned(), value.parse().map_err(|_| format!("odd line {line:?}"))?))
        })
        .collect()
}

/// Prints a child's figures for [`run_child`] to read.
pub(crate) fn print_figures(figures: Figures) {
    for (name, value) in figures {
        println!("{name}={value}");
    }
}

/// The `quantile` (0 to 1) of `samples`, nearest rank.
pub(crate) fn percentile(samples: &mut [f64], quantile: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * quantile).round() as usize]
}

/// `elapsed` in milliseconds.
pub(crate) fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

/// `VmHWM` of this process, in MiB.
pub(crate) fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/self/status has VmHWM");
    kib as f64 / 1024.0
}

/// Prints whether each target was met; fails the bench unless all were.
pub(crate) fn report(targets: &[(&str, bool)]) -> ExitCode {
    for (target, met) in targets {
        println!("{} {target}", if *met { "met   " } else { "MISSED" });
    }
    if targets.iter().all(|(_, met)| *met) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
