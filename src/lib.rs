//! session-exporter: game-session events from NATS, folded into per-namespace
//! Prometheus metrics.
//!
//! An event flows `source` (NATS) → `event` (decode) → `fold` (per-namespace
//! state) → `exposition` (render) → `http`. Beside them: `config` (the mapping),
//! `reload`, `cli`, `clock`, `shutdown`, `stats` (self-metrics), `simulate` (a realistic publisher).
// One `unsafe` block, measured and explained: `scan::plain` (SSE2).
#![deny(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod event;
pub mod exporter;
pub mod exposition;
pub mod fold;
pub mod http;
pub mod partition;
pub mod reload;
pub mod replay;
pub mod rules;
pub mod scan;
pub mod seed;
pub mod shutdown;
pub mod simulate;
pub mod source;
pub mod stats;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::RunArgs;
use crate::config::Catalog;
use crate::exporter::Exporter;
use crate::reload::Reload;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Run the exporter until `shutdown` resolves, then drain NATS and return.
pub async fn run(args: RunArgs, shutdown: impl Future<Output = ()>) -> Result<(), BoxError> {
    let catalog = Catalog::load(args.config_file.as_deref())?;
    let nats = args.nats_config()?;
    let mut exporter = Exporter::new(catalog, args.dedup_window())
        .with_partition(nats.partition, !nats.partition_subjects.is_empty());
    if nats.slots > 0 {
        exporter = exporter.with_slots(nats.partition, nats.slots);
    }
    if nats.state.is_some() {
        exporter = exporter.serving_checkpoints();
    }
    let exporter = Arc::new(exporter);
    let web = match &args.web_config_file {
        Some(path) => http::WebConfig::load(path)?,
        None => http::WebConfig::default(),
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--web.listen-address {}: {e}", args.listen))?;
    let limits = http::Limits {
        max_connections: match args.max_connections {
            0 => http::default_max_connections(),
            n => n,
        },
        read_header_timeout: args.read_header_timeout,
        idle_timeout: http::IDLE_TIMEOUT,
        max_requests: usize::try_from(args.max_requests).unwrap_or(usize::MAX),
    };
    tracing::info!(
        listen_address = %listener.local_addr()?,
        web_config = ?args.web_config_file,
        telemetry_path = %args.telemetry_path,
        max_connections = limits.max_connections,
        max_requests = limits.max_requests,
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    let reload = Reload::new(args.config_file.clone(), exporter.clone());
    reload.clone().on_hangup();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let options = http::Options {
        telemetry_path: args.telemetry_path.clone(),
        web,
        limits,
        lifecycle: args.enable_lifecycle.then_some(reload),
        openmetrics_created: args.openmetrics_created,
    };
    let http = tokio::spawn(http::serve(
        listener,
        exporter.clone(),
        options,
        stopped(stop_rx.clone()),
    ));
    let source = async {
        let client = source::connect(&nats, exporter.clone()).await?;
        source::run(client, &nats, exporter.clone(), stopped(stop_rx.clone())).await
    };
    tokio::pin!(source);
    tokio::pin!(shutdown);
    // The source drains on the stop signal; the HTTP server keeps answering
    // until the drain is over.
    let result = tokio::select! {
        r = &mut source => r,
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            // Bounded even when NATS is gone: with a state store, what the last
            // checkpoint lacks is read again from the stream on the next start.
            shutdown::bounded("the drain", args.shutdown_timeout, &mut source)
                .await
                .unwrap_or(Ok(()))
        }
    };
    let _ = stop_tx.send(true);
    let _ = http.await;
    tracing::info!("stopped");
    result.map_err(Into::into)
}
