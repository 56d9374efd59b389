//! `jobctl check`: everything that can be known before running, in one pass.
//!
//! Syntax, schema, durations, phone numbers, sockets and commands come from
//! [`crate::rules::load`]; the `[sms]` settings and every secret are loaded
//! as `run` would; and when Prometheus answers, each distinct query is
//! checked by Prometheus's own parser. An unreachable Prometheus is not an
//! error (the rules may be written before it exists) but is said plainly.

use std::path::Path;

use super::error::Error;
use super::{build_sender, count, load_rules, prometheus_client};
use crate::config_file::ConfigErrors;
use crate::exit::Exit;
use crate::prometheus_api::PromError;

/// `jobctl check` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// Do not ask Prometheus to check the queries.
    #[arg(long)]
    pub(crate) offline: bool,
}

pub(super) async fn run(config: &Path, args: CheckArgs) -> Result<Exit, Error> {
    let rules = load_rules(config)?;
    let sender = build_sender(&rules)?;
    let prometheus = prometheus_client(&rules)?;

    let mut promql_note = "PromQL not checked (--offline)".to_string();
    if !args.offline {
        let mut errors = Vec::new();
        let mut unreachable = None;
        'jobs: for job in &rules.jobs {
            for query in job.queries() {
                match prometheus.check_expr(&query).await {
                    Ok(()) => {}
                    Err(PromError::Api { error, .. }) => {
                        let error = error.trim_start_matches("invalid parameter \"query\": ");
                        errors.push(crate::config_file::ConfigError {
                            path: job.origin.path.clone(),
                            location: Some((job.origin.line, job.origin.column)),
                            message: format!(
                                "job {:?}: Prometheus rejects {query:?}: {error}",
                                job.name
                            ),
                        });
                    }
                    Err(err) => {
                        unreachable = Some(err);
                        break 'jobs;
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(Error::Rules(ConfigErrors(errors)));
        }
        promql_note = match unreachable {
            None => format!("PromQL checked by {}", rules.prometheus.url),
            Some(err) => {
                eprintln!("jobctl: warning: PromQL not checked: {err}");
                "PromQL NOT checked (Prometheus did not answer)".to_string()
            }
        };
    }

    for warning in rules.sms.iter().flat_map(crate::sms::SmsConfig::warnings) {
        eprintln!("jobctl: warning: {}", warning.in_file(&rules.main_file));
    }

    let enabled = rules.jobs.iter().filter(|j| j.enabled).count();
    crate::exit::outln!(
        "{}: OK: {} ({enabled} enabled), {}, {}; SMS via {}; {promql_note}",
        config.display(),
        count(rules.jobs.len(), "job", "jobs"),
        count(rules.sockets.len(), "socket", "sockets"),
        count(rules.files.len(), "file", "files"),
        sender.sender.name()
    );
    for job in &rules.jobs {
        crate::exit::outln!("\n{job}");
    }
    Ok(Exit::Ok)
}
