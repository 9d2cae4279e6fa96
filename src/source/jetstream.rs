//! Without a state store: a JetStream durable pull consumer, shared by
//! replicas (at-least-once), and an ordered consumer of the broadcast
//! subjects of each replica's own. (With one, `stream` reads without acks.)
//!
//! Acks are sent (not awaited: an ack is a publish) for each batch once it is
//! folded. Never `AckAll`: on a consumer shared by replicas it would
//! acknowledge other replicas' messages in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, stream::Stream};
use async_nats::Client;
use futures_util::stream::ReadyChunks;
use futures_util::{FutureExt, StreamExt};

use super::{retrying, server_version, JetStreamConfig, NatsConfig, SourceError, BATCH};
use crate::exporter::Exporter;

/// Consume `js_cfg`'s durable consumer (and the broadcast subjects) until
/// `shutdown`, acknowledging each batch once folded.
pub(super) async fn run(
    client: Client,
    cfg: &NatsConfig,
    js_cfg: &JetStreamConfig,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    tokio::pin!(shutdown);
    let Some((stream, mut messages)) = pull(&client, js_cfg, &mut shutdown).await? else {
        return Ok(());
    };
    let since = exporter.gauge_ttl();
    let broadcast = broadcast(&stream, &cfg.broadcast_subjects, since).await;
    let broadcasting = broadcast.is_some();
    let mut gauges = futures_util::stream::iter(broadcast)
        .flatten()
        .ready_chunks(BATCH);
    exporter
        .stats
        .subscriptions
        .set(1 + i64::from(broadcasting));
    exporter.set_subscribed(true);
    tracing::info!(
        stream = %js_cfg.stream,
        consumer = %js_cfg.consumer,
        pull_batch = js_cfg.pull_batch,
        ack_wait = ?js_cfg.ack_wait,
        max_ack_pending = js_cfg.max_ack_pending,
        broadcast = ?broadcasting.then_some(&cfg.broadcast_subjects),
        "consuming JetStream"
    );
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            batch = messages.next() => match batch {
                Some(batch) => fold(&client, &exporter, batch).await,
                None => break,
            },
            Some(batch) = gauges.next(), if broadcasting => {
                let batch: Vec<_> = batch.into_iter().filter_map(Result::ok).collect();
                exporter.ingest_gauges(batch.iter().map(|m| m.payload.as_ref()));
            }
        }
    }
    exporter.set_subscribed(false);
    drain(&client, &exporter, &mut messages).await;
    exporter.stats.subscriptions.set(0);
    Ok(())
}

type Messages = ReadyChunks<pull::Stream>;

/// The stream and the durable consumer's messages, retried with backoff
/// until both are there; `None` if `shutdown` comes first.
async fn pull(
    client: &Client,
    js_cfg: &JetStreamConfig,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<(Stream, Messages)>, SourceError> {
    let js = jetstream::new(client.clone());
    let what = format!(
        "JetStream stream {} or its consumer not available",
        js_cfg.stream
    );
    let attempt = || async {
        let stream = js
            .get_stream(&js_cfg.stream)
            .await
            .map_err(|e| e.to_string())?;
        let consumer = durable(client, &stream, js_cfg).await?;
        Ok::<_, String>((stream, consumer))
    };
    let Some((stream, consumer)) = retrying(&what, shutdown, attempt).await else {
        return Ok(None);
    };
    let messages = consumer
        .stream()
        .max_messages_per_batch(js_cfg.pull_batch)
        .messages()
        .await
        .map_err(|e| SourceError::Subscribe {
            subject: format!("JetStream consumer {}", js_cfg.consumer),
            reason: e.to_string(),
        })?;
    Ok(Some((stream, messages.ready_chunks(BATCH))))
}

/// Fold what was already delivered rather than leave it to redelivery, and
/// send the last acks.
async fn drain(client: &Client, exporter: &Exporter, messages: &mut Messages) {
    while let Some(Some(batch)) = messages.next().now_or_never() {
        fold(client, exporter, batch).await;
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "NATS flush of the last acks failed");
    }
}

type Pulled = Result<jetstream::Message, pull::MessagesError>;

async fn fold(client: &Client, exporter: &Exporter, batch: Vec<Pulled>) {
    let batch: Vec<_> = batch
        .into_iter()
        .filter_map(|m| {
            m.map_err(|e| tracing::debug!(error = %e, "JetStream pull error"))
                .ok()
        })
        .collect();
    let redelivered = batch
        .iter()
        .filter(|m| m.info().is_ok_and(|i| i.delivered > 1))
        .count();
    exporter.stats.js_redeliveries.inc_by(redelivered as u64);
    exporter.ingest(batch.iter().map(|m| m.payload.as_ref()));
    // After folding: a crash before the ack means redelivery, and the
    // event-id window drops what was folded already.
    let mut acked = 0;
    for reply in batch.into_iter().filter_map(|m| m.message.reply) {
        if let Err(e) = client.publish(reply, bytes::Bytes::new()).await {
            tracing::debug!(error = %e, "JetStream ack not sent");
        }
        acked += 1;
    }
    exporter.stats.js_acks.inc_by(acked);
}

/// Create the durable consumer, or update it to this configuration.
async fn durable(
    client: &Client,
    stream: &Stream,
    js_cfg: &JetStreamConfig,
) -> Result<PullConsumer, String> {
    let mut config = pull::Config {
        durable_name: Some(js_cfg.consumer.clone()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: js_cfg.ack_wait,
        max_ack_pending: js_cfg.max_ack_pending,
        ..Default::default()
    };
    let version = server_version(client);
    match js_cfg.filter_subjects.as_slice() {
        [] => {}
        [one] => config.filter_subject = one.clone(),
        many if version >= (2, 10) => config.filter_subjects = many.to_vec(),
        many => tracing::warn!(
            subjects = ?many,
            server = %client.server_info().version,
            "this nats-server allows one filter subject per consumer (2.10+ allow several): consuming every subject of the stream"
        ),
    }
    match stream.create_consumer(config).await {
        Ok(c) => Ok(c),
        Err(e) => {
            // An existing durable this server cannot change (e.g. its filter on 2.9).
            let existing = stream
                .get_consumer(&js_cfg.consumer)
                .await
                .map_err(|_| e.to_string())?;
            tracing::warn!(consumer = %js_cfg.consumer, error = %e, "could not update the existing durable consumer; using it as it is");
            Ok(existing)
        }
    }
}

/// This replica's own ordered consumer of the broadcast subjects, from
/// `since` ago: an older gauge update would have expired already, and
/// replaying it would show a namespace that went quiet long ago as live for
/// another TTL.
async fn broadcast(stream: &Stream, subjects: &[String], since: Duration) -> Option<pull::Ordered> {
    if subjects.is_empty() {
        return None;
    }
    let start = crate::simulate::unix_ms().saturating_sub(since.as_millis() as u64);
    let start = async_nats::datetime::parse_rfc3339(&crate::simulate::rfc3339(start));
    let deliver_policy = match start {
        Ok(start_time) => DeliverPolicy::ByStartTime { start_time },
        Err(_) => DeliverPolicy::All,
    };
    let mut config = pull::OrderedConfig {
        deliver_policy,
        ..Default::default()
    };
    match subjects {
        [one] => config.filter_subject = one.clone(),
        many => config.filter_subjects = many.to_vec(),
    }
    let made = async {
        stream
            .create_consumer(config)
            .await
            .map_err(|e| e.to_string())?
            .messages()
            .await
            .map_err(|e| e.to_string())
    };
    match made.await {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(subjects = ?subjects, error = %e, "no broadcast consumer: each replica's gauge shows only the updates it was given");
            None
        }
    }
}
