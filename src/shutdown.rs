//! Signals: SIGINT or SIGTERM ends the process after a drain (SIGHUP
//! reloads the mapping: `reload`).

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on the first SIGINT or SIGTERM; from then on a second one ends
/// the process at once (exit 130 or 143), whatever the drain is waiting for.
/// The handlers are installed when this is called, not when the future is
/// first polled: a signal that comes during start-up is a drain too, never
/// the default action (killed by the signal, no drain).
pub fn terminate() -> impl std::future::Future<Output = ()> {
    let signals = signal(SignalKind::terminate())
        .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)));
    async move {
        let (mut term, mut int) = match signals {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the exporter");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received; draining (a second signal exits at once)"),
            _ = int.recv() => tracing::info!("SIGINT received; draining (a second signal exits at once)"),
        }
        tokio::spawn(async move {
            let code = tokio::select! {
                _ = term.recv() => 143,
                _ = int.recv() => 130,
            };
            tracing::warn!("second signal: exiting without finishing the drain");
            eprintln!("session-exporter: second signal: exiting without finishing the drain");
            std::process::exit(code);
        });
    }
}

/// Run `drain` for at most `limit`; past it, log what was left and go on
/// (the process then exits: under Kubernetes, before the grace period's
/// SIGKILL).
pub async fn bounded<T>(
    what: &str,
    limit: std::time::Duration,
    drain: impl std::future::Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout(limit, drain).await {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!(limit = ?limit, "{what} did not finish within the shutdown timeout; exiting anyway");
            None
        }
    }
}
