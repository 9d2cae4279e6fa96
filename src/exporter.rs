//! The state the NATS source writes and the HTTP server reads: the fold behind a
//! mutex, the self-metrics and readiness.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::clock::unix_now;
use crate::config::Catalog;
use crate::event::{decode_limited, Minute, Reason, TraceProblem};
use crate::fold::{CheckpointError, Fold, Image, Outcome, Restored, Resume, SlotState, Snapshot};
use crate::partition::{Origin, Owner, Ownership, Partition};
use crate::stats::Stats;

/// The snapshot of the last stored checkpoint: none until the first.
type Published = Mutex<Option<Arc<Snapshot>>>;

pub struct Exporter {
    /// A `std` mutex is right here: it is never held across an `.await`, and
    /// what it is held for is short: a batch folded, a scrape's snapshot
    /// (without a state store), a checkpoint's image (a pointer per
    /// namespace; encoded after), a reload's swap (parsed before). Every hold
    /// is timed ([`Held`]); figures in BENCHMARKS.md.
    fold: Mutex<Fold>,
    pub stats: Stats,
    /// Set once the source has subscribed; readiness also needs a live connection.
    subscribed: AtomicBool,
    reject_log: Mutex<RateLimit>,
    /// Messages ingested so far (folded or not: a rejected event still counts
    /// in `session_events_total`), so a checkpoint can tell what it holds.
    ingested: AtomicU64,
    /// `ingested` as of the stored checkpoint being served.
    checkpointed: AtomicU64,
    /// With a state store (`Some`), `/metrics` serves the fold as of the
    /// last stored checkpoint, so that no value it serves can be lost by a
    /// crash: a restart never shows a counter lower than before.
    published: Option<Published>,
    /// With slots, set while this replica cannot write its heartbeat:
    /// nothing is published (another replica may take its slots).
    paused: AtomicBool,
    /// The longest hold of `fold` since it was last taken, in nanoseconds.
    longest_hold: AtomicU64,
    /// Held while a checkpoint's image is alive (taken, snapshotted,
    /// encoded), and by a reload to apply a mapping: reconfiguring shares
    /// nothing, so it would copy every namespace an image still holds.
    encoding: Mutex<()>,
    /// The namespaces this replica folds (its partition, or the slots it
    /// holds); others' messages are skipped. Read once per batch, written
    /// when a slot moves.
    ownership: RwLock<Ownership>,
    /// Whether it skips others' messages itself (not when the server sends
    /// it only its partition's subjects).
    skips: bool,
}

/// One checkpoint, taken under the fold lock in a moment: the state to
/// encode, and snapshot for serving once it is stored, after the lock is
/// released.
pub struct Checkpoint {
    pub image: Image,
    /// [`Exporter::ingested`] at the moment it was taken.
    pub ingested: u64,
}

/// A checkpoint with slots, made whole.
pub struct SlotCheckpoint {
    pub snapshot: Snapshot,
    /// This replica's own: the event counts and the remembered ids of
    /// events without a namespace (the others go with their slot).
    pub record: Vec<u8>,
    /// `(slot, position, checkpoint)` of each held slot.
    pub slots: Vec<SlotState>,
    pub ingested: u64,
}

impl Exporter {
    pub fn new(catalog: Catalog, dedup_window: usize) -> Exporter {
        let stats = Stats::new();
        stats
            .max_namespaces
            .set(catalog.limits.max_namespaces as i64);
        Exporter {
            fold: Mutex::new(Fold::new(Arc::new(catalog)).with_dedup(dedup_window)),
            stats,
            subscribed: AtomicBool::new(false),
            reject_log: Mutex::new(RateLimit::new(10, Duration::from_secs(1))),
            ingested: AtomicU64::new(0),
            checkpointed: AtomicU64::new(0),
            published: None,
            paused: AtomicBool::new(false),
            longest_hold: AtomicU64::new(0),
            encoding: Mutex::new(()),
            ownership: RwLock::new(Ownership::default()),
            skips: false,
        }
        .with_partition(Partition::default(), false)
    }

    /// Fold only the namespaces of `partition`: skip others' messages, or,
    /// when the server already sends only this partition's subjects
    /// (`by_server`), fold all it sends.
    pub fn with_partition(mut self, partition: Partition, by_server: bool) -> Exporter {
        self.ownership = RwLock::new(Ownership::by_hash(partition));
        self.skips = partition.is_split() && !by_server;
        self.stats.partition.reset();
        self.stats
            .partition
            .with_label_values(&[&partition.count.to_string(), &partition.index.to_string()])
            .set(1);
        self
    }

    /// Fold only the slots held (none until the source claims them), of
    /// `slots` ([`crate::partition`]).
    pub fn with_slots(mut self, partition: Partition, slots: u32) -> Exporter {
        self = self.with_partition(partition, false);
        self.ownership = RwLock::new(Ownership::by_slots(partition, slots));
        let fold = self.fold.get_mut().unwrap_or_else(|e| e.into_inner());
        fold.set_slots(slots);
        self.skips = true;
        self
    }

    pub fn partition(&self) -> Partition {
        self.ownership().partition
    }

    /// The count and index this replica runs with changed (discovered).
    pub fn set_partition_info(&self, partition: Partition) {
        self.ownership_mut().partition = partition;
        self.stats.partition.reset();
        self.stats
            .partition
            .with_label_values(&[&partition.count.to_string(), &partition.index.to_string()])
            .set(1);
    }

    /// What this replica folds, to read or (when a slot moves) change.
    pub fn ownership(&self) -> std::sync::RwLockReadGuard<'_, Ownership> {
        self.ownership.read().unwrap_or_else(|e| e.into_inner())
    }

    fn ownership_mut(&self) -> std::sync::RwLockWriteGuard<'_, Ownership> {
        self.ownership.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a slot that moved here: its namespaces (restored from its
    /// checkpoint into `fold`, a fold of the current mapping) are folded
    /// from stream sequence `floor` on.
    pub fn adopt_slot(&self, slot: u32, fold: Fold, floor: u64) -> usize {
        // The ownership before the fold, as `ingest_at` takes them.
        let mut own = self.ownership_mut();
        let mut held = self.lock();
        let taken = held.adopt(slot, fold);
        own.hold(slot, floor);
        self.stats.namespaces.set(held.namespace_count() as i64);
        self.stats.slots_held.set(own.held().len() as i64);
        taken
    }

    /// Let slots go: their namespaces leave the fold at once, and nothing of
    /// theirs is folded from now on. Whatever was published goes too (it
    /// holds them): nothing is served until the next stored checkpoint.
    pub fn drop_slots(&self, slots: &[u32]) {
        let mut own = self.ownership_mut();
        let mut fold = self.lock();
        for &s in slots {
            own.release(s);
            fold.drop_slot(s, own.slots);
        }
        self.stats.namespaces.set(fold.namespace_count() as i64);
        self.stats.slots_held.set(own.held().len() as i64);
        drop((own, fold));
        self.unpublish();
    }

    /// A checkpoint written before slots, restored whole, taken apart:
    /// `(slot, position, checkpoint)` of each of `slots` (those of its
    /// partition), each at the checkpoint's `position`. The fold keeps
    /// none of its namespaces: they come back as their slots are claimed.
    pub fn into_slots(&self, slots: &[u32], resume: &Resume) -> Vec<SlotState> {
        let _encoding = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        let cp = self.slot_checkpoint(slots.to_vec(), resume);
        let (_, states) = cp.image.encode_slots(|_| resume.stream_seq);
        // Its event counts stay: they are this replica's.
        self.lock().retain_namespaces(|_| false);
        states
    }

    /// [`Exporter::checkpoint`] naming `slots` as held, of this replica's
    /// number of slots.
    fn slot_checkpoint(&self, slots: Vec<u32>, resume: &Resume) -> Checkpoint {
        let resume = Resume {
            slots: self.ownership().slots,
            held: slots,
            ..resume.clone()
        };
        self.checkpoint(&resume)
    }

    /// Stop serving (`true`: unpublished, and nothing published until
    /// resumed) or resume. Returns whether it was not paused before.
    pub fn pause_serving(&self, pause: bool) -> bool {
        let was = self.paused.swap(pause, Ordering::Relaxed);
        if pause {
            self.unpublish();
        }
        !was
    }

    /// Let slots go at once, with their state as of now: `(slot, position,
    /// checkpoint)` of each, to store released (`read`: the reader's last
    /// sequence). Nothing is served until the next stored checkpoint.
    pub fn release_slots(&self, slots: &[u32], resume: &Resume) -> Vec<SlotState> {
        let states = {
            let _encoding = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
            let own = self.ownership().clone();
            let cp = self.slot_checkpoint(slots.to_vec(), resume);
            cp.image
                .encode_slots(|s| own.position(s, resume.stream_seq))
                .1
        };
        self.drop_slots(slots);
        states
    }

    /// Serve no domain metrics until the next stored checkpoint.
    pub fn unpublish(&self) {
        if let Some(p) = &self.published {
            *p.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// A fold of the current mapping and de-duplication window, empty, to
    /// restore a slot's state into.
    pub fn empty_fold(&self) -> Fold {
        self.lock().empty_like()
    }

    /// The stream was made anew: every slot held reads it from its start.
    pub fn forget_floors(&self) {
        self.ownership_mut().forget_floors();
    }

    /// The reader goes back to stream sequence `from`.
    pub fn rewind(&self, from: u64) {
        self.ownership_mut().rewind(from);
    }

    /// Serve only checkpointed state (see `published`): for a state store.
    pub fn serving_checkpoints(mut self) -> Exporter {
        self.published = Some(Mutex::new(None));
        self
    }

    /// The longest gauge TTL of the mapping: how far back a gauge update can
    /// still be live.
    pub fn gauge_ttl(&self) -> Duration {
        let fold = self.lock();
        fold.catalog()
            .metrics
            .iter()
            .filter(|m| m.kind == crate::config::Kind::Gauge)
            .map(|m| m.ttl)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub fn ingested(&self) -> u64 {
        self.ingested.load(Ordering::Relaxed)
    }

    /// [`Exporter::ingested`] as of the stored checkpoint being served.
    pub fn checkpointed(&self) -> u64 {
        self.checkpointed.load(Ordering::Relaxed)
    }

    /// The whole fold as of now, for a checkpoint. Under the lock only the
    /// image is taken (a pointer per namespace); its snapshot and encoding
    /// are the caller's, without the lock.
    pub fn checkpoint(&self, resume: &Resume) -> Checkpoint {
        let now = Instant::now();
        let fold = self.lock();
        // Read under the lock: every ingest counted here is in the image.
        let ingested = self.ingested();
        Checkpoint {
            image: fold.image(now, unix_now(), resume),
            ingested,
        }
    }

    /// A checkpoint made whole: its snapshot, its bytes and
    /// [`Exporter::ingested`] as of it. The lock is held for the image only;
    /// the rest is CPU work for a blocking thread. A reload waits for it.
    pub fn encode_checkpoint(&self, resume: &Resume) -> (Snapshot, Vec<u8>, u64) {
        let _encoding = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        let cp = self.checkpoint(resume);
        (cp.image.snapshot(), cp.image.encode(), cp.ingested)
    }

    /// [`Exporter::encode_checkpoint`] with slots: this replica's own
    /// checkpoint (no namespaces), and each held slot's, with its position
    /// (`resume.stream_seq` is the reader's).
    pub fn encode_slot_checkpoint(&self, resume: &Resume) -> SlotCheckpoint {
        let _encoding = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        let own = self.ownership().clone();
        let cp = self.slot_checkpoint(own.held(), resume);
        let snapshot = cp.image.snapshot();
        let (record, slots) = cp
            .image
            .encode_slots(|s| own.position(s, resume.stream_seq));
        SlotCheckpoint {
            snapshot,
            record,
            slots,
            ingested: cp.ingested,
        }
    }

    /// A snapshot of the fold now, and [`Exporter::ingested`] at that moment.
    pub fn snapshot(&self) -> (Snapshot, u64) {
        let fold = self.lock();
        (fold.snapshot(Instant::now()), self.ingested())
    }

    /// From now on serve `snapshot`, of a stored checkpoint that holds the
    /// first `ingested` messages.
    pub fn publish(&self, snapshot: Snapshot, ingested: u64) {
        if self.paused.load(Ordering::Relaxed) {
            return;
        }
        if let Some(p) = &self.published {
            *p.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(snapshot));
            self.checkpointed.store(ingested, Ordering::Relaxed);
        }
    }

    /// Load a stored checkpoint into the (still empty) fold, and serve it.
    /// It must hold this replica's partition, and a position in `stream`
    /// (when it holds one and a stream is read).
    pub fn restore(
        &self,
        bytes: &[u8],
        partition: Partition,
        stream: Option<&str>,
    ) -> Result<Restored, CheckpointError> {
        let now = Instant::now();
        let slots = self.ownership().slots;
        let mut fold = self.lock();
        let restored = fold.restore(bytes, now, unix_now())?;
        let held = restored.resume.partition;
        // With slots a replica's checkpoint names the slots it held; one of
        // before slots is taken apart into slots by the source.
        let mismatch = if restored.resume.slots > 0 && slots == 0 {
            Some(CheckpointError::Slots {
                held: restored.resume.slots,
            })
        } else if held != partition && slots == 0 {
            Some(CheckpointError::Partition {
                held,
                this: partition,
            })
        } else {
            match stream {
                Some(s) if !restored.resume.stream.is_empty() && restored.resume.stream != s => {
                    Some(CheckpointError::Stream {
                        held: restored.resume.stream.clone(),
                        reading: s.to_string(),
                    })
                }
                _ => None,
            }
        };
        if let Some(m) = mismatch {
            fold.clear();
            return Err(m);
        }
        self.stats.namespaces.set(fold.namespace_count() as i64);
        let snapshot = fold.snapshot(now);
        drop(fold);
        self.publish(snapshot, self.ingested());
        Ok(restored)
    }

    /// Fold only the gauges of events that every replica receives.
    pub fn ingest_gauges<'a>(&self, payloads: impl IntoIterator<Item = &'a [u8]>) {
        let wall = unix_now();
        let now = Instant::now();
        let mut n = 0;
        let mut fold = self.lock();
        let max = fold.catalog().limits.max_message_bytes;
        for p in payloads {
            n += 1;
            if let Ok(ev) = decode_limited(p, max) {
                fold.apply_gauges(&ev, now, ev.time().unwrap_or(wall));
            }
        }
        self.stats.namespaces.set(fold.namespace_count() as i64);
        self.ingested.fetch_add(n, Ordering::Relaxed);
        drop(fold);
        self.stats.broadcast_messages.inc_by(n);
    }

    /// The fold, held until the guard drops; how long is recorded in
    /// `session_exporter_fold_lock_hold_seconds`.
    fn lock(&self) -> Held<'_> {
        // A panic while folding cannot leave the fold half-written in a way that
        // matters more than losing the exporter, so keep serving.
        let fold = self.fold.lock().unwrap_or_else(|e| e.into_inner());
        Held {
            fold,
            since: Instant::now(),
            exporter: self,
        }
    }

    /// The longest hold of the fold lock since the last call, in seconds.
    pub fn take_longest_hold(&self) -> f64 {
        self.longest_hold.swap(0, Ordering::Relaxed) as f64 / 1e9
    }

    pub fn set_subscribed(&self, v: bool) {
        self.subscribed.store(v, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.stats.nats_connected.get() == 1
    }

    /// Decode and fold a batch of message payloads under one lock (a scrape
    /// waits for at most one batch: 512 messages, well under a millisecond).
    /// Returns how many were folded (not rejected, not duplicates).
    pub fn ingest<'a>(&self, payloads: impl IntoIterator<Item = &'a [u8]>) -> usize {
        self.ingest_at(payloads.into_iter().map(|p| (Origin::UNORDERED, p)))
    }

    /// [`Exporter::ingest`] of stream messages, each with where it was read
    /// (which decides, with slots, whose it is).
    pub fn ingest_at<'a>(&self, messages: impl IntoIterator<Item = (Origin, &'a [u8])>) -> usize {
        let wall = unix_now();
        let now = Instant::now();
        let (mut received, mut folded, mut skipped, mut misrouted) = (0, 0, 0, 0);
        // Lag is observed locally and flushed once per batch: no atomics per event.
        let lag = self.stats.event_lag.local();
        let mut minute = Minute::default();
        let ownership = self.ownership();
        let mut fold = self.lock();
        let max = fold.catalog().limits.max_message_bytes;
        for (from, p) in messages {
            let decoded = if self.skips {
                match ownership.owner(p, max, from) {
                    Owner::Mine(decoded) => decoded,
                    Owner::Skipped | Owner::Theirs => {
                        skipped += 1;
                        continue;
                    }
                    Owner::Misrouted => {
                        (skipped, misrouted) = (skipped + 1, misrouted + 1);
                        continue;
                    }
                }
            } else {
                decode_limited(p, max)
            };
            received += 1;
            let result = decoded.as_ref().map_err(|r| *r).and_then(|ev| {
                let stamped = ev.time_after(&mut minute);
                let outcome = fold.apply(ev, now, stamped.unwrap_or(wall))?;
                if let (Some(t), Outcome::Folded | Outcome::Overflowed) = (stamped, outcome) {
                    lag.observe((wall - t).max(0.0));
                }
                Ok(outcome)
            });
            match result {
                Ok(Outcome::Folded) => folded += 1,
                Ok(Outcome::Overflowed) => {
                    folded += 1;
                    self.stats.overflow_events.inc();
                }
                Ok(Outcome::Duplicate) => self.stats.duplicates.inc(),
                Err(reason) => self.rejected(reason, &decoded),
            }
        }
        self.stats.namespaces.set(fold.namespace_count() as i64);
        // Skipped messages move the stream position: a checkpoint records it.
        self.ingested
            .fetch_add(received + skipped, Ordering::Relaxed);
        let dropped = fold.take_exemplars_dropped();
        drop((fold, ownership));
        lag.flush();
        for (p, n) in TraceProblem::ALL.iter().zip(dropped) {
            if n > 0 {
                self.stats
                    .exemplars_dropped
                    .with_label_values(&[p.as_str()])
                    .inc_by(n);
            }
        }
        // After folding: a scrape that sees a message as received sees its effect.
        self.stats.events_folded.inc_by(folded);
        self.stats.messages_received.inc_by(received);
        if skipped > 0 {
            self.stats.partition_skipped.inc_by(skipped);
            self.stats.partition_misrouted.inc_by(misrouted);
        }
        folded as usize
    }

    fn rejected(&self, reason: Reason, d: &Result<crate::event::Event, Reason>) {
        self.stats.reject(reason);
        let allowed = self
            .reject_log
            .lock()
            .map(|mut l| l.allow(Instant::now()))
            .unwrap_or(false);
        if allowed {
            let name = d.as_ref().map(|e| e.name.as_ref()).unwrap_or("");
            tracing::debug!(%reason, event = name, "rejected event");
        }
    }

    /// The self-metrics as of now, `state_pending_messages` brought up to
    /// date. A page gathers them before [`Exporter::served`]'s snapshot, so
    /// a message they count as received is in it.
    pub fn self_metrics(&self) -> Vec<prometheus::proto::MetricFamily> {
        if self.published.is_some() {
            let pending = self.ingested().saturating_sub(self.checkpointed());
            self.stats.state_pending.set(pending as i64);
        }
        self.stats.families()
    }

    /// What a scrape serves: with a state store, the snapshot of the last
    /// stored checkpoint (none before the first); else the fold as of `now`.
    pub fn served(&self, now: Instant) -> Option<Arc<Snapshot>> {
        match &self.published {
            Some(p) => p.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            None => Some(Arc::new(self.lock().snapshot(now))),
        }
    }

    /// Fold with `catalog` from now on (a reload, [`crate::reload`]): it
    /// was read and checked before; the lock is held to apply it to every
    /// namespace (new bucket bounds re-count each histogram).
    pub fn reconfigure(&self, catalog: Catalog) {
        self.stats
            .max_namespaces
            .set(catalog.limits.max_namespaces as i64);
        let _encoding = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        self.lock().reconfigure(Arc::new(catalog));
    }
}

/// The fold while its lock is held: every hold is timed, since ingest and
/// scrapes wait for it.
struct Held<'a> {
    fold: MutexGuard<'a, Fold>,
    since: Instant,
    exporter: &'a Exporter,
}

impl std::ops::Deref for Held<'_> {
    type Target = Fold;
    fn deref(&self) -> &Fold {
        &self.fold
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut Fold {
        &mut self.fold
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        let nanos = u64::try_from(held.as_nanos()).unwrap_or(u64::MAX);
        self.exporter
            .longest_hold
            .fetch_max(nanos, Ordering::Relaxed);
        self.exporter
            .stats
            .fold_lock_hold
            .observe(held.as_secs_f64());
    }
}

/// At most `burst` events per `period`: keeps hostile input from flooding logs.
pub struct RateLimit {
    burst: u32,
    period: Duration,
    window_start: Option<Instant>,
    used: u32,
}

impl RateLimit {
    pub fn new(burst: u32, period: Duration) -> RateLimit {
        RateLimit {
            burst,
            period,
            window_start: None,
            used: 0,
        }
    }

    pub fn allow(&mut self, now: Instant) -> bool {
        match self.window_start {
            Some(s) if now.saturating_duration_since(s) < self.period => {}
            _ => {
                self.window_start = Some(now);
                self.used = 0;
            }
        }
        self.used += 1;
        self.used <= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_counts_every_outcome() {
        let e = Exporter::new(Catalog::default_mapping(), 0);
        let good = br#"{"name":"MetricAcquiringDsEvent","namespace":"g"}"#.as_slice();
        let big = vec![b' '; 70_000];
        let n = e.ingest([good, b"{", br#"{"namespace":"g"}"#, &big, good]);
        assert_eq!(n, 2);
        let text = crate::exposition::page::render_text(&e);
        for line in [
            "session_ds_acquisitions_total{game_namespace=\"g\"} 2",
            "session_exporter_events_rejected_total{reason=\"invalid_json\"} 1",
            "session_exporter_events_rejected_total{reason=\"missing_name\"} 1",
            "session_exporter_events_rejected_total{reason=\"too_large\"} 1",
            "session_exporter_messages_received_total 5",
            "session_exporter_events_folded_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}");
        }
        // The very first scrape counts its own domain series.
        let domain = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| !l.starts_with("session_exporter_") && !l.starts_with("process_"))
            .count();
        let series = format!("session_exporter_series {domain}");
        assert!(domain > 0 && text.lines().any(|l| l == series), "{series}");
    }

    #[test]
    fn rate_limit_resets_each_period() {
        let mut r = RateLimit::new(2, Duration::from_secs(1));
        let t = Instant::now();
        assert!(r.allow(t) && r.allow(t) && !r.allow(t));
        assert!(r.allow(t + Duration::from_secs(1)));
    }
}
