//! `addreality-exporter`: see the README and `signage_watchdog::exporter`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use signage_watchdog::exit::Exit;
use signage_watchdog::exporter::cli::{run, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    signage_watchdog::telemetry::init(&args.log_level, args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("addreality-exporter: cannot start the async runtime: {err}");
            return Exit::Runtime.into();
        }
    };
    runtime
        .block_on(async {
            let reloads = signage_watchdog::shutdown::reload_requests("the configuration");
            run(args, signage_watchdog::shutdown::signal(), reloads).await
        })
        .into()
}
