//! How long `rules::load` takes as a rules file grows: 2,500, 5,000 and
//! 10,000 jobs (with a socket per ten jobs), each run three times, the median
//! printed.
//!
//! `cargo bench --bench rules_load` prints one line per size; loading must
//! grow linearly with the file, and the bench fails when 10,000 jobs take a
//! second or more to load and check (the target of issue 9). Every job's
//! `line:column` is computed while loading (jobs keep where they are
//! defined, for messages at run time), so a position lookup that rescans
//! the file made this quadratic.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use signage_watchdog::rules;

/// The sizes measured, in jobs.
const SIZES: [usize; 3] = [2_500, 5_000, 10_000];
/// Runs per size; the median is reported.
const RUNS: usize = 3;
/// The target for the largest size.
const TARGET: Duration = Duration::from_secs(1);

/// A rules file with `jobs` jobs over platform `12`, one socket for every
/// ten devices, as a sysadmin writes them (comments and blank lines
/// included, so that positions are not all on short lines).
fn rules_file(jobs: usize) -> String {
    let mut text = String::from(
        "# Generated for the rules_load bench.\n[prometheus]\nurl = \"http://127.0.0.1:9090\"\ninterval = \"30s\"\n\n",
    );
    for i in 0..jobs / 10 {
        writeln!(
            text,
            "[[sockets]]\nname = \"socket {i}\"\nphone = \"+7999{i:07}\"\nmodel = \"simpal-d210\"\n\
             powers = [{{ platform_id = \"12\", device_id = \"{i}\" }}]\n"
        )
        .unwrap();
    }
    for i in 0..jobs {
        let device = i % (jobs / 10);
        writeln!(
            text,
            "# Job {i}: power-cycle player {device} when it has been offline for a while.\n\
             [[jobs]]\nname = \"job {i}\"\ndevices = {{ platform_id = \"12\", device_id = \"{device}\" }}\n\
             metric = \"addreality_device_online\"\nop = \"==\"\nvalue = 0\nfor = \"{}m\"\n\
             action = {{ command = \"power_cycle\", minutes = 1 }}\n",
            1 + i % 30
        )
        .unwrap();
    }
    text
}

fn main() -> ExitCode {
    let dir = tempfile::tempdir().unwrap();
    let mut largest = Duration::ZERO;
    println!("{:>7} {:>9} {:>12} {:>10}", "jobs", "file KB", "load (ms)", "µs/job");
    for jobs in SIZES {
        let path = dir.path().join(format!("rules-{jobs}.toml"));
        let text = rules_file(jobs);
        std::fs::write(&path, &text).unwrap();
        let mut times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                let rules = rules::load(&path).unwrap_or_else(|e| panic!("{e}"));
                let took = start.elapsed();
                assert_eq!(rules.jobs.len(), jobs);
                took
            })
            .collect();
        times.sort();
        let median = times[RUNS / 2];
        largest = median;
        println!(
            "{jobs:>7} {:>9} {:>12.1} {:>10.1}",
            text.len() / 1024,
            median.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e6 / jobs as f64
        );
    }
    if largest >= TARGET {
        eprintln!("missed: {} jobs took {largest:?} to load (target {TARGET:?})", SIZES[2]);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
