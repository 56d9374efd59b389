//! Stopping on the signals systemd and terminals send.
//!
//! Only the binaries call [`signal`]; library code takes a shutdown future,
//! so tests stop servers with a channel instead of a signal.

/// Completes on SIGTERM (what systemd sends) or SIGINT (Ctrl-C), logging
/// which. Only the binaries call this; libraries take a shutdown future.
pub async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!("cannot listen for SIGTERM: {err}; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Yields once per SIGHUP (`systemctl reload`), logging that `what` (say
/// "the rules") is being reloaded. Only binaries call this, before the
/// daemon says it is ready: from then on SIGHUP no longer kills it.
pub fn reload_requests(what: &'static str) -> tokio::sync::mpsc::Receiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP received, reloading {what}");
                    // A reload already queued covers this one too.
                    let _ = tx.try_send(());
                }
            });
        }
        Err(err) => tracing::error!("cannot listen for SIGHUP: {err}; reloads are disabled"),
    }
    rx
}
