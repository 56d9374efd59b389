//! `jobctl`: see the README and `signage_watchdog::jobctl`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use signage_watchdog::exit::Exit;
use signage_watchdog::jobctl::{run, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    signage_watchdog::telemetry::init(args.log_level(), args.log_format);
    // One thread is plenty: jobctl waits on Prometheus, SQLite (on the
    // blocking pool) and SMS backends, and evaluates a thousand jobs in
    // tens of milliseconds. One thread also means one allocator arena:
    // answers decoded on worker threads left megabytes of fragments.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("jobctl: cannot start the async runtime: {err}");
            return Exit::Runtime.into();
        }
    };
    runtime.block_on(async {
        let reloads = signage_watchdog::shutdown::reload_requests("the configuration");
        run(args, signage_watchdog::shutdown::signal(), reloads).await.into()
    })
}
