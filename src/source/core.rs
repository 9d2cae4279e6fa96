//! Core NATS subjects: plain subscriptions (each partition replica reads
//! them all and folds its own namespaces, or reads only its partition's
//! subjects), or a queue group shared by replicas plus a plain subscription
//! to the broadcast subjects.

use std::future::Future;
use std::time::Duration;

use async_nats::{Client, Subscriber};
use futures_util::stream::ReadyChunks;
use futures_util::StreamExt;

use super::{ticker, Folding, Merged, NatsConfig, SourceError, BATCH};
use crate::exporter::Exporter;

/// Subscribe, fold until `shutdown`, then drain and store a last checkpoint.
pub(super) async fn run(
    folding: Folding,
    cfg: &NatsConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    let Folding {
        client,
        exporter,
        mut checkpoints,
        interval,
        ..
    } = folding;
    let subjects = if cfg.partition_subjects.is_empty() {
        &cfg.subjects
    } else {
        &cfg.partition_subjects
    };
    let (subs, broadcast) = subscribe(&client, cfg, subjects).await?;
    // Ready means the server has the subscriptions: what is published from
    // now on reaches them.
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "NATS flush after subscribing failed");
    }
    let broadcasting = !broadcast.is_empty();
    exporter
        .stats
        .subscriptions
        .set((subs.len() + broadcast.len()) as i64);
    exporter.set_subscribed(true);
    tracing::info!(
        subjects = ?subjects,
        queue_group = ?cfg.queue_group,
        partition = cfg.partition.index,
        partitions = cfg.partition.count,
        broadcast = ?broadcasting.then_some(&cfg.broadcast_subjects),
        "subscribed"
    );
    let mut messages = Merged::new(subs).ready_chunks(BATCH);
    let mut gauges = Merged::new(broadcast).ready_chunks(BATCH);
    let mut tick = ticker(interval);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            stored = checkpoints.stored() => checkpoints.settle(stored)?,
            batch = messages.next() => match batch {
                Some(batch) => {
                    exporter.ingest(batch.iter().map(|m| m.payload.as_ref()));
                }
                None => break,
            },
            Some(batch) = gauges.next(), if broadcasting => {
                exporter.ingest_gauges(batch.iter().map(|m| m.payload.as_ref()));
            }
            _ = tick.tick() => checkpoints.tick().await,
        }
    }
    exporter.set_subscribed(false);
    drain(&mut messages, &exporter).await;
    exporter.stats.subscriptions.set(0);
    let last = checkpoints.finish(Duration::from_secs(10)).await;
    if let Err(e) = client.drain().await {
        tracing::warn!(error = %e, "NATS drain failed");
    }
    last
}

/// The subscriptions to `subjects` (in the queue group, if any), and with a
/// queue group those to the broadcast subjects, which every replica needs
/// in full (without one this replica sees every event already).
async fn subscribe(
    client: &Client,
    cfg: &NatsConfig,
    subjects: &[String],
) -> Result<(Vec<Subscriber>, Vec<Subscriber>), SourceError> {
    let mut subs = Vec::new();
    for subject in subjects {
        let sub = match &cfg.queue_group {
            Some(q) => client.queue_subscribe(subject.clone(), q.clone()).await,
            None => client.subscribe(subject.clone()).await,
        }
        .map_err(|e| subscribe_error(subject, e))?;
        subs.push(sub);
    }
    let mut broadcast = Vec::new();
    if cfg.queue_group.is_some() {
        for subject in &cfg.broadcast_subjects {
            let sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| subscribe_error(subject, e))?;
            broadcast.push(sub);
        }
    }
    Ok((subs, broadcast))
}

/// Stop interest, then fold what the client already holds (5 s at most).
async fn drain(messages: &mut ReadyChunks<Merged<Subscriber>>, exporter: &Exporter) {
    for sub in messages.get_mut().streams_mut() {
        if let Err(e) = sub.drain().await {
            tracing::warn!(error = %e, "NATS drain failed");
        }
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
}

fn subscribe_error(subject: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Subscribe {
        subject: subject.to_string(),
        reason: e.to_string(),
    }
}
