//! Reading a JetStream stream without acks: each replica's own ordered push
//! consumer (flow-controlled: measured 1.5× the ordered pull consumer's rate,
//! whose pulls are 500 messages at most), started right after the stream
//! sequence its checkpoint holds.
//! The checkpoint is the position (as Flink's NATS connector and Feldera
//! keep it): no ack per event, no redelivery, no `ack_wait`, and a restart
//! resumes exactly where the stored fold ends.
//!
//! Needs a stream that keeps what it holds (`limits` retention). Messages the
//! stream removed before this replica read them are counted
//! (`events_lost_total{reason="stream_truncated"}`) and logged, never skipped
//! silently.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::stream::{RetentionPolicy, Stream};
use async_nats::jetstream::{self, Message};
use async_nats::Client;
use futures_util::{FutureExt, StreamExt};

use super::checkpoints::Checkpoints;
use super::{retrying, server_version, ticker, JetStreamConfig, NatsConfig, SourceError, BATCH};
use crate::exporter::Exporter;

/// Where the reader stands: the last stream sequence folded.
struct Position {
    last: u64,
    /// Whether every stream sequence reaches this consumer (no filter), so a
    /// jump in sequence is a message that was removed before it was read.
    gaps_are_losses: bool,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    client: Client,
    cfg: &NatsConfig,
    js_cfg: &JetStreamConfig,
    exporter: Arc<Exporter>,
    mut checkpoints: Checkpoints,
    legacy: bool,
    interval: Option<Duration>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    let js = jetstream::new(client.clone());
    tokio::pin!(shutdown);
    let what = format!("JetStream stream {} not available", js_cfg.stream);
    let Some(mut stream) = retrying(&what, &mut shutdown, || js.get_stream(&js_cfg.stream)).await
    else {
        return Ok(());
    };
    let retention = stream.cached_info().config.retention;
    if retention != RetentionPolicy::Limits {
        return Err(SourceError(format!(
            "stream {}: retention {retention:?} removes messages once they are acknowledged or \
             have no interest, but with --state.bucket the exporter reads without acks, from the \
             position its checkpoint holds: use a stream with limits retention (a mirror or \
             source of this one will do), or run without --state.bucket (an acking durable \
             consumer, at-least-once)",
            js_cfg.stream
        )));
    }
    if legacy {
        checkpoints.resume.stream_seq =
            legacy_position(&client, &stream, js_cfg, &checkpoints).await?;
    }
    checkpoints.resume.stream = js_cfg.stream.clone();
    let filters = if cfg.partition_subjects.is_empty() {
        js_cfg.filter_subjects.clone()
    } else {
        cfg.partition_subjects.clone()
    };
    let mut at = Position {
        last: checkpoints.resume.stream_seq,
        gaps_are_losses: filters.is_empty(),
    };
    let state = stream
        .info()
        .await
        .map_err(|e| SourceError(format!("stream {}: {e}", js_cfg.stream)))?
        .state
        .clone();
    if at.last > state.last_sequence {
        tracing::warn!(
            stream = %js_cfg.stream,
            position = at.last,
            last_sequence = state.last_sequence,
            "the checkpoint's position is past the end of the stream (it was deleted and made anew?): reading it from its start"
        );
        at.last = 0;
    }
    if at.last == 0 {
        // A first start reads what the stream still holds; nothing was lost to it.
        at.last = state.first_sequence.saturating_sub(1);
    } else if state.first_sequence > at.last + 1 {
        lost(
            &exporter,
            &js_cfg.stream,
            at.last + 1,
            state.first_sequence - 1,
        );
        at.last = state.first_sequence - 1;
    }
    let mut config = push::OrderedConfig::default();
    match filters.as_slice() {
        [] => {}
        [one] => config.filter_subject = one.clone(),
        many if server_version(&client) >= (2, 10) => config.filter_subjects = many.to_vec(),
        many => {
            tracing::warn!(
                subjects = ?many,
                server = %client.server_info().version,
                "this nats-server allows one filter subject per consumer (2.10+ allow several): reading every subject of the stream"
            );
            at.gaps_are_losses = true;
        }
    }
    let Some(mut messages) = open(&client, &stream, &config, at.last, &mut shutdown).await else {
        return Ok(());
    };
    let mut connections = exporter.connections();
    connections.mark_unchanged();
    exporter.stats.stream_position.set(at.last as i64);
    exporter.stats.subscriptions.set(1);
    exporter.set_subscribed(true);
    let partition = exporter.partition();
    tracing::info!(
        stream = %js_cfg.stream,
        from_sequence = at.last + 1,
        filter = ?filters,
        partition = partition.index,
        partitions = partition.count,
        "reading JetStream without acks"
    );
    let mut tick = ticker(interval);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            stored = checkpoints.stored() => checkpoints.settle(stored)?,
            batch = messages.next() => match batch {
                Some(batch) => fold(&exporter, &mut checkpoints, &mut at, &js_cfg.stream, batch),
                None => break,
            },
            _ = tick.tick() => checkpoints.tick(),
            // After an outage the consumer may have gone with its server:
            // make it anew from the position rather than wait for two
            // missed heartbeats (30 s).
            Ok(()) = connections.changed() => {
                tracing::info!(from_sequence = at.last + 1, "reconnected: making the ordered consumer anew");
                match open(&client, &stream, &config, at.last, &mut shutdown).await {
                    Some(m) => messages = m,
                    None => break,
                }
            }
        }
    }
    exporter.set_subscribed(false);
    // Fold what was already delivered: it is in the last checkpoint then.
    while let Some(Some(batch)) = messages.next().now_or_never() {
        fold(&exporter, &mut checkpoints, &mut at, &js_cfg.stream, batch);
    }
    exporter.stats.subscriptions.set(0);
    checkpoints.finish(Duration::from_secs(10)).await
}

type Read = Result<Message, push::OrderedError>;
type Messages = futures_util::stream::ReadyChunks<push::Ordered>;

/// An ordered consumer from just after `last`, retried with backoff until it
/// is made; `None` if `shutdown` comes first.
async fn open(
    client: &Client,
    stream: &Stream,
    config: &push::OrderedConfig,
    last: u64,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<Messages> {
    let config = push::OrderedConfig {
        deliver_policy: DeliverPolicy::ByStartSequence {
            start_sequence: last + 1,
        },
        // A subject of its own: an earlier consumer may still push to the last.
        deliver_subject: client.new_inbox(),
        ..config.clone()
    };
    let what = format!(
        "ordered consumer of {} not made",
        stream.cached_info().config.name
    );
    let attempt = || async {
        let consumer = stream
            .create_consumer(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        consumer.messages().await.map_err(|e| e.to_string())
    };
    let messages = retrying(&what, shutdown, attempt).await?;
    Some(messages.ready_chunks(BATCH))
}

fn fold(
    exporter: &Exporter,
    checkpoints: &mut Checkpoints,
    at: &mut Position,
    stream: &str,
    batch: Vec<Read>,
) {
    let mut payloads = Vec::with_capacity(batch.len());
    let mut pending = None;
    for m in &batch {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "ordered consumer error");
                continue;
            }
        };
        let Ok(info) = m.info() else { continue };
        let seq = info.stream_sequence;
        // A consumer that had to make itself anew may start over: what the
        // fold already holds is dropped.
        if seq <= at.last {
            continue;
        }
        if at.gaps_are_losses && seq > at.last + 1 {
            lost(exporter, stream, at.last + 1, seq - 1);
        }
        at.last = seq;
        pending = Some(info.pending);
        payloads.push(m.payload.as_ref());
    }
    exporter.ingest(payloads);
    checkpoints.resume.stream_seq = at.last;
    exporter.stats.stream_position.set(at.last as i64);
    if let Some(p) = pending {
        exporter.stats.stream_pending.set(p as i64);
    }
    super::state::failpoint("after-fold");
}

fn lost(exporter: &Exporter, stream: &str, from: u64, to: u64) {
    let n = to - from + 1;
    exporter
        .stats
        .events_lost
        .with_label_values(&["stream_truncated"])
        .inc_by(n);
    tracing::warn!(
        stream,
        from_sequence = from,
        to_sequence = to,
        messages = n,
        "stream messages were removed (the stream's limits) before this replica read them; counted in session_exporter_events_lost_total{{reason=\"stream_truncated\"}}"
    );
}

/// A format-1 checkpoint (the acking design) holds no stream position: its
/// messages were acknowledged through the durable consumer. Send the acks it
/// lists, then carry on after that consumer's ack floor.
async fn legacy_position(
    client: &Client,
    stream: &Stream,
    js_cfg: &JetStreamConfig,
    checkpoints: &Checkpoints,
) -> Result<u64, SourceError> {
    for reply in &checkpoints.resume.legacy_acks {
        let _ = client.publish(reply.clone(), bytes::Bytes::new()).await;
    }
    let _ = client.flush().await;
    match stream.consumer_info(&js_cfg.consumer).await {
        Ok(info) => {
            let floor = info.ack_floor.stream_sequence;
            tracing::info!(consumer = %js_cfg.consumer, after_sequence = floor, "checkpoint from the acking design: reading on after its durable consumer's ack floor");
            Ok(floor)
        }
        Err(e) => Err(SourceError(format!(
            "the checkpoint holds no position in stream {} (it comes from core NATS or from the \
             acking design of format 1), and durable consumer {} to take it from is not there \
             ({e}): delete the key (nats kv del BUCKET KEY) to fold the stream from its start",
            js_cfg.stream, js_cfg.consumer
        ))),
    }
}
