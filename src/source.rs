//! NATS in: connect (surviving outages), subscribe to core subjects or pull
//! from a JetStream durable consumer, and feed message batches to the exporter.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use async_nats::{Client, ConnectOptions, Event};
use futures_util::stream::{Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::exporter::Exporter;

/// Messages folded under one lock at most. Large enough to amortise the lock
/// and the syscall-sized bursts NATS delivers, small enough to keep a scrape's
/// wait for the lock short.
const BATCH: usize = 512;

/// Messages buffered per subscription before the client drops (and we count)
/// them. 131072 seed-sized events are about 64 MiB, what nats-server itself
/// buffers for a slow client by default (`max_pending`) before cutting it off;
/// it absorbs a quarter-second burst at 500k events/s (BENCHMARKS.md). Memory
/// is only used while a backlog exists.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 131_072;

#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    pub url: String,
    pub subjects: Vec<String>,
    pub queue_group: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_required: bool,
    pub subscription_capacity: usize,
    pub jetstream: Option<JetStreamConfig>,
}

#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    pub stream: String,
    pub consumer: String,
}

#[derive(Debug)]
pub struct SourceError(pub String);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

impl NatsConfig {
    /// Client options; connection events are wired to the self-metrics.
    async fn options(&self, exporter: Arc<Exporter>) -> Result<ConnectOptions, SourceError> {
        let connected_before = Arc::new(AtomicBool::new(false));
        let mut o = ConnectOptions::new()
            .name("session-exporter")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(self.subscription_capacity)
            .event_callback(move |event| {
                let exporter = exporter.clone();
                let connected_before = connected_before.clone();
                async move { on_event(&exporter, &connected_before, event) }
            });
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.clone());
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| SourceError(format!("--nats.nkey-file {}: {e}", path.display())))?;
            o = o.nkey(seed.trim().to_string());
        }
        if let Some(path) = &self.creds_file {
            o = o
                .credentials_file(path)
                .await
                .map_err(|e| SourceError(format!("--nats.creds-file {}: {e}", path.display())))?;
        }
        if let Some(ca) = &self.tls_ca_file {
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(o.require_tls(self.tls_required))
    }
}

fn on_event(exporter: &Exporter, connected_before: &AtomicBool, event: Event) {
    let s = &exporter.stats;
    match event {
        Event::Connected => {
            if connected_before.swap(true, Ordering::Relaxed) {
                s.nats_reconnects.inc();
            }
            s.nats_connected.set(1);
            tracing::info!("connected to NATS");
        }
        Event::Disconnected => {
            s.nats_connected.set(0);
            tracing::warn!("disconnected from NATS; reconnecting with backoff");
        }
        Event::SlowConsumer(sid) => {
            s.slow_consumer_drops.inc();
            tracing::debug!(sid, "slow consumer: NATS client dropped a message");
        }
        Event::Closed => {
            s.nats_connected.set(0);
            tracing::info!("NATS connection closed");
        }
        other => tracing::info!(event = %other, "NATS event"),
    }
}

/// Connect; with NATS down this returns at once and keeps retrying in the background.
pub async fn connect(cfg: &NatsConfig, exporter: Arc<Exporter>) -> Result<Client, SourceError> {
    let options = cfg.options(exporter.clone()).await?;
    // A cluster is given as a comma-separated list.
    let servers: Vec<&str> = cfg
        .url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let client = options
        .connect(servers)
        .await
        .map_err(|e| SourceError(format!("--nats.url {}: {e}", cfg.url)))?;
    exporter.stats.watch_client(client.statistics());
    Ok(client)
}

/// Consume until `shutdown`, then drain what was already delivered.
pub async fn run(
    client: Client,
    cfg: &NatsConfig,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    match &cfg.jetstream {
        None => run_core(client, cfg, exporter, shutdown).await,
        Some(js) => run_jetstream(client, js, exporter, shutdown).await,
    }
}

async fn run_core(
    client: Client,
    cfg: &NatsConfig,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    let mut subs = Vec::new();
    for subject in &cfg.subjects {
        let sub = match &cfg.queue_group {
            Some(q) => client.queue_subscribe(subject.clone(), q.clone()).await,
            None => client.subscribe(subject.clone()).await,
        }
        .map_err(|e| SourceError(format!("subscribe {subject}: {e}")))?;
        subs.push(sub);
    }
    exporter.stats.subscriptions.set(subs.len() as i64);
    exporter.set_subscribed(true);
    tracing::info!(subjects = ?cfg.subjects, queue_group = ?cfg.queue_group, "subscribed");
    let mut messages = Merged::new(subs).ready_chunks(BATCH);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            batch = messages.next() => match batch {
                Some(batch) => {
                    exporter.ingest(batch.iter().map(|m| m.payload.as_ref()));
                }
                None => break,
            },
        }
    }
    exporter.set_subscribed(false);
    // Drain: stop interest, then fold what the client already holds.
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "NATS drain failed");
    }
    let rest = async {
        while let Some(batch) = messages.next().await {
            exporter.ingest(batch.iter().map(|m| m.payload.as_ref()));
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), rest)
        .await
        .is_err()
    {
        tracing::warn!("drain did not finish within 5s");
    }
    exporter.stats.subscriptions.set(0);
    Ok(())
}

/// Several subscriptions as one stream, polled round-robin. Unlike
/// `select_all`, which re-queues a future (an allocation) for every item,
/// this allocates nothing per message.
pub struct Merged<S> {
    streams: Vec<S>,
    next: usize,
}

impl<S> Merged<S> {
    pub fn new(streams: Vec<S>) -> Merged<S> {
        Merged { streams, next: 0 }
    }
}

impl<S: Stream + Unpin> Stream for Merged<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let mut polled = 0;
        while polled < this.streams.len() {
            let at = (this.next + polled) % this.streams.len();
            match Pin::new(&mut this.streams[at]).poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    // Start after this one next time, so no subscription starves.
                    this.next = (at + 1) % this.streams.len();
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => {
                    this.streams.swap_remove(at);
                    // Poll every remaining stream again (registers their wakers).
                    (this.next, polled) = (0, 0);
                }
                Poll::Pending => polled += 1,
            }
        }
        if this.streams.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// The stream's own subjects decide what is consumed; `--nats.subject` is not
/// used here (nats-server 2.9 allows one filter subject per consumer).
async fn run_jetstream(
    client: Client,
    js_cfg: &JetStreamConfig,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    let js = jetstream::new(client.clone());
    tokio::pin!(shutdown);
    // The stream may not be reachable yet (NATS down): retry with backoff.
    let mut delay = Duration::from_millis(100);
    let consumer = loop {
        let attempt = async {
            let stream = js
                .get_stream(&js_cfg.stream)
                .await
                .map_err(|e| e.to_string())?;
            let config = pull::Config {
                durable_name: Some(js_cfg.consumer.clone()),
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            };
            stream
                .get_or_create_consumer::<pull::Config>(&js_cfg.consumer, config)
                .await
                .map_err(|e| e.to_string())
        };
        match attempt.await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(stream = %js_cfg.stream, error = %e, "JetStream consumer not available; retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    };
    let messages = consumer
        .messages()
        .await
        .map_err(|e| SourceError(format!("JetStream consumer {}: {e}", js_cfg.consumer)))?;
    exporter.stats.subscriptions.set(1);
    exporter.set_subscribed(true);
    tracing::info!(stream = %js_cfg.stream, consumer = %js_cfg.consumer, "consuming JetStream");
    let mut messages = messages.ready_chunks(BATCH);
    loop {
        let batch = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            batch = messages.next() => match batch {
                Some(b) => b,
                None => break,
            },
        };
        let batch: Vec<_> = batch
            .into_iter()
            .filter_map(|m| {
                m.map_err(|e| tracing::debug!(error = %e, "JetStream pull error"))
                    .ok()
            })
            .collect();
        for m in &batch {
            if m.info().is_ok_and(|i| i.delivered > 1) {
                exporter.stats.js_redeliveries.inc();
            }
        }
        exporter.ingest(batch.iter().map(|m| m.payload.as_ref()));
        // Ack after folding: a crash before this line means redelivery, and
        // the event-id window drops what was folded already.
        for m in &batch {
            match m.ack().await {
                Ok(()) => exporter.stats.js_acks.inc(),
                Err(e) => tracing::debug!(error = %e, "JetStream ack failed"),
            }
        }
    }
    exporter.set_subscribed(false);
    exporter.stats.subscriptions.set(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;

    #[tokio::test]
    async fn merged_takes_turns_and_ends_with_the_last_stream() {
        let a = stream::iter(vec![1, 2, 3]);
        let b = stream::iter(vec![10]);
        let c = stream::iter(Vec::<i32>::new());
        let got: Vec<i32> = Merged::new(vec![a.boxed(), b.boxed(), c.boxed()])
            .collect()
            .await;
        assert_eq!(got, vec![1, 10, 2, 3]);
    }
}
