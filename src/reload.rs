//! Reloading the mapping (SIGHUP, and `POST /-/reload` with
//! `--web.enable-lifecycle`). The file is read, parsed and checked on a
//! blocking thread, outside the fold lock; only applying it to every
//! namespace (the mapping's rules and bucket bounds) takes the lock. On
//! error the old mapping stays.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Catalog, ConfigError};
use crate::exporter::Exporter;

/// Where the mapping comes from (`--config.file`, or the default mapping)
/// and the exporter it is applied to.
#[derive(Clone)]
pub struct Reload {
    file: Option<PathBuf>,
    exporter: Arc<Exporter>,
}

impl Reload {
    pub fn new(file: Option<PathBuf>, exporter: Arc<Exporter>) -> Reload {
        Reload { file, exporter }
    }

    /// Read the mapping anew and apply it, counted in
    /// `session_exporter_config_reloads_total{result}`. Blocking: it reads
    /// a file, and the swap may wait for a checkpoint's encode.
    pub fn now(&self) -> Result<(), ConfigError> {
        let outcome = Catalog::load(self.file.as_deref()).map(|c| self.exporter.reconfigure(c));
        self.exporter.stats.reloaded(outcome.is_ok());
        outcome
    }

    /// [`Reload::now`] on a blocking thread.
    pub async fn run(&self) -> Result<(), ConfigError> {
        let this = self.clone();
        let done = tokio::task::spawn_blocking(move || this.now()).await;
        done.unwrap_or_else(|e| Err(ConfigError::new(e.to_string())))
    }

    /// Reload on every SIGHUP, for the life of the process.
    pub fn on_hangup(self) {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot listen for SIGHUP; use POST /-/reload (with --web.enable-lifecycle)"
            );
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match self.run().await {
                    Ok(()) => tracing::info!("mapping reloaded (SIGHUP)"),
                    Err(e) => {
                        tracing::error!(error = %e, "mapping reload failed; keeping the old one")
                    }
                }
            }
        });
    }
}
