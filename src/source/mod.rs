//! NATS in: connect (surviving outages), subscribe to core subjects (`core`),
//! read a JetStream stream without acks from the checkpointed position
//! (`stream`, with a state store) or through an acking durable consumer
//! (`jetstream`, without one), feed message batches to the exporter, and
//! checkpoint what was folded (`checkpoints`, `state`).
//!
//! Replicas either own partitions of the namespaces (each reads everything,
//! or its share where the subjects carry the partition, and folds only its
//! namespaces), or split the events through a queue group or a shared durable
//! consumer. There the gauge is the exception: each replica also receives
//! every message of the *broadcast subjects* (by default the active-sessions
//! event's), on a plain subscription or an ordered consumer of its own, and
//! folds only their gauges, so `max by` over replicas is the latest value.

mod checkpoints;
mod core;
mod jetstream;
mod slots;
pub mod state;
mod stream;
pub mod url;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use futures_util::stream::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::watch;

use crate::exporter::Exporter;
use crate::fold::{CheckpointError, Resume};
use crate::partition::{self, Partition};
use crate::stats::{Restore, SlotMove};
use checkpoints::Checkpoints;
use slots::{Claim, Slots};
use state::{LoadError, OnInvalid, StateConfig, StateStore};

/// Messages folded under one lock at most. Large enough to amortise the lock
/// and the syscall-sized bursts NATS delivers, small enough to keep a scrape's
/// wait for the lock short.
const BATCH: usize = 512;

/// Messages buffered per subscription before the client drops (and we count)
/// them: in seed-sized events, about what nats-server itself buffers for a
/// slow client by default (`max_pending`) before cutting it off, and enough
/// for a burst at the highest rates measured (BENCHMARKS.md). Memory is only
/// used while a backlog exists.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 131_072;

#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    pub url: String,
    pub subjects: Vec<String>,
    pub queue_group: Option<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    pub nkey_file: Option<PathBuf>,
    pub creds_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_required: bool,
    pub subscription_capacity: usize,
    /// Subjects every replica receives in full (only their gauges are folded).
    pub broadcast_subjects: Vec<String>,
    pub jetstream: Option<JetStreamConfig>,
    pub state: Option<StateConfig>,
    /// The namespaces this replica folds.
    pub partition: Partition,
    /// Where the subjects carry the partition: this replica's own subjects,
    /// read instead of `subjects` (and without skipping anything). With
    /// slots, the subjects of a slot, `{slot}` naming it.
    pub partition_subjects: Vec<String>,
    /// The deployment's slots (`--partition.slots`); 0: none.
    pub slots: u32,
    /// How long a slot owner's heartbeat may stand still before its slots
    /// are taken (`--partition.dead-after`).
    pub slot_dead_after: Duration,
    /// The count and index from the replicas present (`--partition.discover`).
    pub slot_discover: bool,
}

/// A password or a token: printed as `Secret(..)`, never its value, so a
/// debug print of the configuration leaks nothing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    pub stream: String,
    pub consumer: String,
    /// Filter the consumer on these subjects (servers 2.10+, or one subject
    /// on 2.9); empty: everything the stream holds.
    pub filter_subjects: Vec<String>,
    /// The acking consumer's (without a state store).
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    /// Messages asked for per pull request.
    pub pull_batch: usize,
}

/// Why the source stopped (or could not start). The process exits 1 with it.
#[derive(Debug)]
pub enum SourceError {
    /// A credentials file (`flag`) could not be read.
    Credentials {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// The client refused the server URLs (they hold no credentials).
    Connect { urls: String, reason: String },
    /// A subscription or consumer could not be made.
    Subscribe { subject: String, reason: String },
    /// The stream is missing, or not one a replica can read without acks.
    Stream { stream: String, reason: String },
    /// The stored checkpoint cannot be read, and `--state.on-invalid` refuses
    /// to overwrite it.
    Unreadable {
        bucket: String,
        key: String,
        reason: String,
    },
    /// Another process wrote this replica's state key: two writers.
    Fenced(String),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Credentials { flag, path, reason } => {
                write!(f, "{flag} {}: {reason}", path.display())
            }
            SourceError::Connect { urls, reason } => write!(f, "--nats.url {urls}: {reason}"),
            SourceError::Subscribe { subject, reason } => {
                write!(f, "subscribe {subject}: {reason}")
            }
            SourceError::Stream { stream, reason } => write!(f, "stream {stream}: {reason}"),
            SourceError::Unreadable {
                bucket,
                key,
                reason,
            } => write!(
                f,
                "state bucket {bucket} key {key}: unreadable checkpoint: {reason}. Nothing was \
                 overwritten; delete the key (nats kv del {bucket} {key}), choose another \
                 --state.key, or start with --state.on-invalid=start-empty"
            ),
            SourceError::Fenced(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for SourceError {}

impl NatsConfig {
    /// Client options; connection events are wired to the self-metrics and
    /// counted on `connections`.
    async fn options(
        &self,
        exporter: Arc<Exporter>,
        connections: Arc<watch::Sender<u64>>,
    ) -> Result<ConnectOptions, SourceError> {
        let connected_before = Arc::new(AtomicBool::new(false));
        let mut o = ConnectOptions::new()
            .name("session-exporter")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(self.subscription_capacity)
            .event_callback(move |event| {
                let exporter = exporter.clone();
                let connected_before = connected_before.clone();
                let connections = connections.clone();
                async move { on_event(&exporter, &connections, &connected_before, event) }
            });
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            o = o.user_and_password(u.clone(), p.0.clone());
        }
        if let Some(t) = &self.token {
            o = o.token(t.0.clone());
        }
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path).map_err(|e| SourceError::Credentials {
                flag: "--nats.nkey-file",
                path: path.clone(),
                reason: e.to_string(),
            })?;
            o = o.nkey(seed.trim().to_string());
        }
        if let Some(path) = &self.creds_file {
            o = o
                .credentials_file(path)
                .await
                .map_err(|e| SourceError::Credentials {
                    flag: "--nats.creds-file",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
        }
        if let Some(ca) = &self.tls_ca_file {
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        // Any TLS setting means TLS (as the Go client's `Secure`): a server
        // that does not offer it is refused, never sent credentials in clear.
        let tls = self.tls_required
            || self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some();
        if tls {
            tracing::info!("NATS TLS required: a server that does not offer TLS is refused");
        }
        Ok(o.require_tls(tls))
    }
}

fn on_event(
    exporter: &Exporter,
    connections: &watch::Sender<u64>,
    connected_before: &AtomicBool,
    event: Event,
) {
    let s = &exporter.stats;
    match event {
        Event::Connected => {
            if connected_before.swap(true, Ordering::Relaxed) {
                s.nats_reconnects.inc();
            }
            s.nats_connected.set(1);
            connections.send_modify(|n| *n += 1);
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

/// A client, and the count of its connections to NATS: a reader makes its
/// consumer anew after a reconnect rather than wait for missed heartbeats.
pub struct Nats {
    pub client: Client,
    pub connections: watch::Receiver<u64>,
}

/// Connect; with NATS down this returns at once and keeps retrying in the background.
pub async fn connect(cfg: &NatsConfig, exporter: Arc<Exporter>) -> Result<Nats, SourceError> {
    let (tx, connections) = watch::channel(0);
    let options = cfg.options(exporter.clone(), Arc::new(tx)).await?;
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
        .map_err(|e| SourceError::Connect {
            urls: cfg.url.clone(),
            reason: e.to_string(),
        })?;
    exporter.stats.watch_client(client.statistics());
    Ok(Nats {
        client,
        connections,
    })
}

/// Restore the state (if any), consume until `shutdown`, then drain what was
/// already delivered and store a last checkpoint.
pub async fn run(
    nats: Nats,
    cfg: &NatsConfig,
    exporter: Arc<Exporter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    tokio::pin!(shutdown);
    let (store, resume, restored) = match &cfg.state {
        None => (None, Resume::default(), false),
        Some(state) => {
            let started = tokio::select! {
                r = restore(&nats.client, cfg, state, &exporter) => r?,
                _ = &mut shutdown => return Ok(()),
            };
            (
                Some(Arc::new(started.store)),
                started.resume,
                started.restored,
            )
        }
    };
    let mut resume = Resume {
        partition: cfg.partition,
        ..resume
    };
    let slots = match (&store, &cfg.state) {
        (Some(store), Some(state)) if cfg.slots > 0 => {
            let taking = take_slots(store.clone(), cfg, state, &exporter, &mut resume, restored);
            tokio::select! {
                r = taking => Some(r?),
                _ = &mut shutdown => return Ok(()),
            }
        }
        _ => None,
    };
    let has_store = store.is_some();
    let beating = slots
        .as_ref()
        .map(|s| (s.clone(), s.clone().heartbeat(exporter.clone())));
    let mut checkpoints = Checkpoints::new(exporter.clone(), store, resume);
    checkpoints.slots = slots;
    let folding = Folding {
        client: nats.client,
        connections: nats.connections,
        exporter,
        checkpoints,
        interval: cfg.state.as_ref().map(|s| s.interval),
        restored,
    };
    let result = match &cfg.jetstream {
        None => core::run(folding, cfg, shutdown).await,
        Some(js) if has_store => stream::run(folding, cfg, js, shutdown).await,
        Some(js) => jetstream::run(folding.client, cfg, js, folding.exporter, shutdown).await,
    };
    if let Some((slots, beating)) = beating {
        beating.abort();
        slots.leave().await;
    }
    result
}

/// Open the store and load its checkpoint into the exporter, retrying while
/// NATS or the bucket cannot be reached. Also says whether a checkpoint was
/// restored.
async fn restore(
    client: &Client,
    nats: &NatsConfig,
    cfg: &StateConfig,
    exporter: &Exporter,
) -> Result<Started, SourceError> {
    let mut backoff = Backoff::new();
    let where_ = format!("state bucket {} key {}", cfg.bucket, cfg.key);
    let stream = nats.jetstream.as_ref().map(|js| js.stream.as_str());
    let empty = |store| Started {
        store,
        resume: Resume::default(),
        restored: false,
    };
    loop {
        let store = match StateStore::open(client, cfg).await {
            Ok(store) => store,
            Err(e) => {
                tracing::warn!(state = %where_, error = %e, "state store not available; retrying");
                backoff.wait().await;
                continue;
            }
        };
        let reason = match store.load().await {
            Ok(None) => {
                exporter.stats.restored(Restore::Empty);
                tracing::info!(state = %where_, "no checkpoint yet; starting empty");
                return Ok(empty(store));
            }
            Ok(Some(bytes)) => match exporter.restore(&bytes, nats.partition, stream) {
                Ok(r) => {
                    exporter.stats.restored(Restore::Restored);
                    tracing::info!(
                        state = %where_,
                        namespaces = r.namespaces,
                        bytes = bytes.len(),
                        age_seconds = r.age_seconds,
                        format = r.format,
                        stream_sequence = r.resume.stream_seq,
                        rebucketed = ?r.rebucketed,
                        dropped_metrics = ?r.dropped_metrics,
                        dropped_slos = ?r.dropped_slos,
                        "state restored"
                    );
                    return Ok(Started {
                        store,
                        resume: r.resume,
                        restored: true,
                    });
                }
                Err(e) => unreadable_reason(&e),
            },
            Err(LoadError::Invalid(e)) => e,
            Err(LoadError::Unreachable(e)) => {
                tracing::warn!(state = %where_, error = %e, "state store not available; retrying");
                backoff.wait().await;
                continue;
            }
        };
        match cfg.on_invalid {
            OnInvalid::Refuse => {
                return Err(SourceError::Unreadable {
                    bucket: cfg.bucket.clone(),
                    key: cfg.key.clone(),
                    reason,
                })
            }
            OnInvalid::StartEmpty => {
                exporter.stats.restored(Restore::Invalid);
                tracing::error!(state = %where_, error = %reason, "unreadable checkpoint; starting empty (--state.on-invalid=start-empty), the next checkpoint replaces it");
                return Ok(empty(store));
            }
        }
    }
}

/// With slots: take a checkpoint written before slots apart into slot keys,
/// release the slots an earlier process held that the count no longer gives
/// this replica, and claim those it does (the ones another replica still
/// holds are claimed later, as it releases them).
async fn take_slots(
    store: Arc<StateStore>,
    cfg: &NatsConfig,
    state: &StateConfig,
    exporter: &Exporter,
    resume: &mut Resume,
    restored: bool,
) -> Result<Arc<Slots>, SourceError> {
    let slots = Slots::new(
        store,
        state.key.clone(),
        cfg.partition,
        cfg.slots,
        cfg.slot_dead_after,
        cfg.slot_discover,
    );
    let slots = Arc::new(slots);
    Slots::watch_members(&slots);
    let mut backoff = Backoff::new();
    while let Err(e) = slots.beat().await {
        tracing::warn!(error = %e, "heartbeat not written; retrying");
        backoff.wait().await;
    }
    let refuse = |reason: String| SourceError::Unreadable {
        bucket: state.bucket.clone(),
        key: state.key.clone(),
        reason,
    };
    // Nothing of what was restored is served until the slots are claimed.
    exporter.unpublish();
    let legacy = restored && resume.slots == 0;
    if resume.slots != 0 && resume.slots != cfg.slots {
        return Err(refuse(format!(
            "it was written with --partition.slots {}, and this replica runs with {}: a \
             deployment's slots never change",
            resume.slots, cfg.slots
        )));
    }
    if legacy {
        let old = resume.partition;
        if !cfg.slots.is_multiple_of(old.count) {
            return Err(refuse(format!(
                "it holds partition {} of {} from before slots; {} slots do not split into {} \
                 partitions, so its namespaces cannot go to their slots: use a multiple of {}",
                old.index, old.count, cfg.slots, old.count, old.count
            )));
        }
        let mine: Vec<u32> = (0..cfg.slots)
            .filter(|&s| partition::slot_owner(s, old.count) == old.index)
            .collect();
        let states = exporter.into_slots(&mine, resume);
        let mut backoff = Backoff::new();
        let stored = loop {
            match slots.migrate(states.clone()).await {
                Ok(n) => break n,
                Err(e) => {
                    tracing::warn!(error = %e, "slots of a checkpoint from before slots not stored; retrying");
                    backoff.wait().await;
                }
            }
        };
        tracing::info!(
            partition = old.index,
            partitions = old.count,
            slots = stored,
            stream_sequence = resume.stream_seq,
            "a checkpoint from before slots was stored as slots, each at its position"
        );
    }
    let mut backoff = Backoff::new();
    let released = loop {
        match slots.release_unwanted(&resume.held).await {
            Ok(n) => break n,
            Err(e) => {
                tracing::warn!(error = %e, "slots this replica no longer holds not released; retrying");
                backoff.wait().await;
            }
        }
    };
    exporter.stats.slot_moves(SlotMove::Released, released);
    let mut claimed = 0;
    if cfg.slot_discover {
        // The count and index come from the replicas present, this one
        // among them.
        while !slots.sees_itself() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        discovered(&slots, exporter);
        slots.set_ready();
        // Say the count at once, so the others let its slots go.
        let _ = slots.beat().await;
    }
    for _ in 0..slots.wanted().len().div_ceil(CLAIMS_AT_ONCE) {
        claimed += claim(&slots, exporter).await.len();
    }
    tracing::info!(
        slots = cfg.slots,
        wanted = slots.wanted().len(),
        claimed,
        released,
        waiting = slots.waiting(),
        "slots taken"
    );
    resume.slots = cfg.slots;
    // Where reading starts: a slot is stored at its floor or here, the higher.
    if let Some(lowest) = exporter.ownership().lowest() {
        resume.stream_seq = lowest;
    }
    Ok(slots)
}

/// Slots looked at per claim round (each a KV read): a replica waiting for
/// many slots goes round them over several rounds.
const CLAIMS_AT_ONCE: usize = 64;

/// Claim the wanted slots not held yet (at most [`CLAIMS_AT_ONCE`]); returns
/// the positions of those taken (0 for a slot made anew).
pub(super) async fn claim(slots: &Slots, exporter: &Exporter) -> Vec<u64> {
    let mut floors = Vec::new();
    let pending = slots.next_pending(CLAIMS_AT_ONCE).into_iter();
    let orphans = slots.next_orphans(CLAIMS_AT_ONCE).into_iter();
    // Only a replica the count gives a slot makes it anew.
    let all = pending
        .map(|s| (s, true))
        .chain(orphans.map(|s| (s, false)));
    for (slot, create) in all {
        match slots.claim(slot, exporter, create).await {
            Ok(Claim::Taken { floor, namespaces }) => {
                tracing::debug!(slot, floor, namespaces, "slot claimed");
                floors.push(floor);
            }
            Ok(Claim::Held) => {}
            Err(e) => tracing::warn!(slot, error = %e, "slot not claimed; retrying"),
        }
    }
    exporter.stats.slot_moves(SlotMove::Claimed, floors.len());
    floors
}

/// With `--partition.discover`: take the count and index from the live
/// replicas when they changed.
pub(super) fn discovered(slots: &Slots, exporter: &Exporter) {
    if let Some(p) = slots.discover() {
        tracing::info!(
            partition = p.index,
            partitions = p.count,
            "replicas came or went: count and index taken from those present"
        );
        exporter.set_partition_info(p);
    }
}

/// Let go at once the slots held here that the count no longer gives this
/// replica and a live replica wants, so it can claim them (after the
/// checkpoint in flight, which may be storing them); and try again releases
/// that failed.
pub(super) async fn release_wanted(
    slots: &Slots,
    exporter: &Exporter,
    checkpoints: &mut Checkpoints,
) -> Result<(), SourceError> {
    slots.release_again().await;
    let wanted = slots.to_release(exporter);
    if wanted.is_empty() {
        return Ok(());
    }
    checkpoints.settle_inflight().await?;
    let states = exporter.release_slots(&wanted, &checkpoints.resume);
    let (lost, result) = slots.store(states, true).await;
    slots.forget(&lost);
    if let Err(e) = result {
        tracing::warn!(error = %e, "slots let go not released yet; trying again");
    }
    tracing::info!(slots = ?wanted, lost = lost.len(), "slots released to the replica that wants them");
    exporter
        .stats
        .slot_moves(SlotMove::Released, wanted.len() - lost.len());
    // Serve again, without them.
    checkpoints.tick().await;
    Ok(())
}

/// Why a checkpoint cannot be restored, with what to do when it is the
/// partitioning or the stream that changed.
fn unreadable_reason(e: &CheckpointError) -> String {
    match e {
        CheckpointError::Partition { .. } => format!(
            "{e}: a change of --partition.count moves namespaces between replicas, so each one's \
             checkpoint must be read anew from the stream (delete the replicas' keys, or \
             --state.on-invalid=start-empty)"
        ),
        _ => e.to_string(),
    }
}

/// What a reader folds with, whichever it is.
struct Folding {
    client: Client,
    /// Changes with every connection to NATS.
    connections: watch::Receiver<u64>,
    exporter: Arc<Exporter>,
    checkpoints: Checkpoints,
    /// Between checkpoints (`None`: no state store).
    interval: Option<Duration>,
    /// A checkpoint was restored (it may hold no position in the stream).
    restored: bool,
}

/// What a start with a state store found: the open store, where the fold
/// stands, and whether a checkpoint was restored into it.
struct Started {
    store: StateStore,
    resume: Resume,
    restored: bool,
}

/// Waits between tries while NATS, the stream or the bucket is not there
/// yet: 100 ms, doubling to 5 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(100))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }
}

/// Run `attempt` until it succeeds, waiting 100 ms doubling to 5 s between
/// tries (NATS or the stream may not be there yet), and logging each
/// failure as `what`; `None` if `shutdown` comes first.
async fn retrying<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut backoff = Backoff::new();
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "{what}; retrying");
                tokio::select! {
                    _ = &mut *shutdown => return None,
                    _ = backoff.wait() => {}
                }
            }
        }
    }
}

/// The server's (major, minor) version, e.g. (2, 9).
fn server_version(client: &Client) -> (u32, u32) {
    let v = client.server_info().version;
    let mut parts = v
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
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

    pub fn streams_mut(&mut self) -> &mut [S] {
        &mut self.streams
    }
}

/// Ticks every `interval`, or never.
fn ticker(interval: Option<Duration>) -> tokio::time::Interval {
    // A year stands in for never: `interval` takes no infinity.
    let every = interval.unwrap_or(Duration::from_secs(365 * 86400));
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream::{self, StreamExt};

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
