//! Signals: SIGINT or SIGTERM ends the process after a drain; SIGHUP reloads
//! the mapping.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::exporter::Exporter;

/// Resolves on the first SIGINT or SIGTERM.
pub async fn terminate() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the exporter");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; draining"),
    }
}

/// Reload the mapping on every SIGHUP, for the life of the process.
pub fn reload_on_hangup(exporter: Arc<Exporter>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; use POST /-/reload");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match exporter.reload() {
                Ok(()) => tracing::info!("mapping reloaded (SIGHUP)"),
                Err(e) => tracing::error!(error = %e, "mapping reload failed; keeping the old one"),
            }
        }
    });
}
