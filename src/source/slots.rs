//! Slots in the state store: each slot's namespaces and stream position under
//! a key of its own, `slots.<slot>`, so that a slot moves between replicas
//! with its exact state when the replica count changes.
//!
//! A slot key holds one line of JSON (the owner, a `--state.key`; the
//! generation, one more at each change of owner; the stream position its
//! state ends at) and then the state, a gzip-compressed checkpoint of the
//! slot's namespaces. Every write is a compare-and-set on the revision this
//! replica last read or wrote: a write refused means another replica took
//! the slot, and this one lets it go at once (the Kafka member-epoch
//! pattern). An owner that stops (SIGTERM, or a new count that no longer
//! gives it the slot) writes it *released* (no owner) after its last
//! checkpoint and after it stopped serving it; only then can the replica the
//! count gives it to claim it. Two replicas never fold or serve a slot at
//! once; between the release and the claim nobody serves it.
//!
//! An owner that dies without releasing (SIGKILL, a lost node) is found by
//! its heartbeat: every replica with slots writes `members.<state.key>`
//! every second. Once an owner's key has not changed for `dead_after` as a
//! claimer sees it, its slots are taken from their last checkpoint. A
//! replica that cannot write its own heartbeat for half that time stops
//! serving (its slots may be taken), until it can again.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::state::StateStore;
use crate::exporter::Exporter;
use crate::fold::SlotState;
use crate::partition::{slot_owner, Partition};

/// The JSON line at the start of a slot key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct Header {
    /// The `--state.key` of the replica that holds it; empty: released.
    owner: String,
    generation: u64,
    /// The last stream sequence its state holds.
    position: u64,
}

/// A slot as stored.
struct Entry {
    header: Header,
    /// The compressed state, as stored.
    state: Bytes,
    revision: u64,
}

/// What became of a claim.
pub enum Claim {
    /// Held now, its state folded from `floor` on.
    Taken { floor: u64, namespaces: usize },
    /// Not free: held here already, by another replica, or not stored yet.
    Held,
}

/// Why a write of a slot failed.
pub enum Refused {
    /// Another replica wrote it since: the slot is theirs.
    Lost,
    Failed(String),
}

/// This replica's slots: those the count gives it, and what it knows of the
/// ones it holds.
pub struct Slots {
    store: Arc<StateStore>,
    /// This replica's `--state.key`: the owner name in the slot keys.
    me: String,
    count: u32,
    /// With `--partition.discover`: the count and index come from the live
    /// replicas' heartbeats, and change as they come and go.
    discover: bool,
    /// Held slots: the generation and revision last read or written.
    held: Mutex<HashMap<u32, (u64, u64)>>,
    /// Where [`Slots::next_pending`] goes on from.
    cursor: AtomicU32,
    /// How long an owner's heartbeat may stand still before its slots are
    /// taken.
    dead_after: Duration,
    /// The replicas' heartbeats, as this replica watches them.
    members: Mutex<HashMap<String, Member>>,
    /// An owner not among `members`: since when this replica looked.
    unseen: Mutex<HashMap<String, Instant>>,
    /// Slots found held by another replica, and by whom.
    held_by: Mutex<HashMap<u32, (String, Instant)>>,
    /// The count and index this replica runs with now.
    partition: Mutex<Partition>,
    /// Where [`Slots::next_orphans`] goes on from.
    orphan_cursor: AtomicU32,
    /// Slots let go whose release was not written yet: `(slot, position,
    /// checkpoint)`.
    unreleased: Mutex<Vec<SlotState>>,
    /// The task watching the heartbeats.
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether it claims yet (with discovery: once it knows its count).
    ready: std::sync::atomic::AtomicBool,
}

/// A replica's heartbeat: the partition it runs with, and when it last
/// changed as this replica saw it.
#[derive(Debug, Clone)]
struct Member {
    partition: Partition,
    changed: Instant,
    /// Deleted: it stopped cleanly.
    left: bool,
}

/// The heartbeat's value.
#[derive(Serialize, Deserialize)]
struct Beat {
    at: f64,
    count: u32,
    index: u32,
}

/// Up to `n` of `slots` (ascending), going round them from `cursor`, which
/// moves past the last one taken.
fn round_robin(slots: &[u32], cursor: &AtomicU32, n: usize) -> Vec<u32> {
    let start = slots.partition_point(|&s| s < cursor.load(Ordering::Relaxed));
    let next: Vec<u32> = slots[start..]
        .iter()
        .chain(&slots[..start])
        .take(n)
        .copied()
        .collect();
    cursor.store(next.last().map_or(0, |&s| s + 1), Ordering::Relaxed);
    next
}

/// Whether a replica running with `p` wants `slot` (count 0: none).
fn gives(p: Partition, slot: u32) -> bool {
    p.count > 0 && slot_owner(slot, p.count) == p.index
}

/// Slot keys written at once: the server answers each; a few in flight
/// hide the round trips.
const WRITES_AT_ONCE: usize = 32;

/// How often a replica with slots writes its heartbeat.
pub const BEAT: Duration = Duration::from_secs(1);

fn key(slot: u32) -> String {
    format!("slots.{slot}")
}

impl Slots {
    pub fn new(
        store: Arc<StateStore>,
        me: String,
        partition: Partition,
        count: u32,
        dead_after: Duration,
        discover: bool,
    ) -> Slots {
        Slots {
            store,
            me,
            count,
            discover,
            held: Mutex::new(HashMap::new()),
            cursor: AtomicU32::new(0),
            dead_after,
            members: Mutex::new(HashMap::new()),
            unseen: Mutex::new(HashMap::new()),
            held_by: Mutex::new(HashMap::new()),
            partition: Mutex::new(partition),
            orphan_cursor: AtomicU32::new(0),
            unreleased: Mutex::new(Vec::new()),
            watcher: Mutex::new(None),
            ready: std::sync::atomic::AtomicBool::new(!discover),
        }
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Write this replica's heartbeat.
    pub async fn beat(&self) -> Result<(), String> {
        let p = match self.ready.load(Ordering::Relaxed) {
            true => self.partition(),
            // Not claiming yet: wanting nothing.
            false => Partition { count: 0, index: 0 },
        };
        let beat = Beat {
            at: crate::clock::unix_now(),
            count: p.count,
            index: p.index,
        };
        let value = serde_json::to_vec(&beat).expect("a beat serializes");
        self.store
            .kv()
            .put(format!("members.{}", self.me), value.into())
            .await
            .map(|_| ())
            .map_err(|e| format!("heartbeat: {e}"))
    }

    /// Watch the replicas' heartbeats until [`Slots::leave`] (made anew if
    /// the watch ends or fails).
    pub fn watch_members(slots: &Arc<Slots>) {
        use futures_util::StreamExt;
        let this = slots.clone();
        let task = tokio::spawn(async move {
            let slots = this;
            loop {
                match slots.store.kv().watch_with_history("members.>").await {
                    Ok(mut watch) => {
                        while let Some(Ok(entry)) = watch.next().await {
                            slots.saw(&entry);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeats not watched; retrying"),
                }
                tokio::time::sleep(BEAT).await;
            }
        });
        *slots.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn saw(&self, entry: &kv::Entry) {
        let Some(name) = entry.key.strip_prefix("members.") else {
            return;
        };
        let beat = serde_json::from_slice::<Beat>(&entry.value).ok();
        let left = entry.operation != kv::Operation::Put;
        // Unreadable (an older release's), or not claiming yet: count 0,
        // wanting nothing.
        let partition = beat.map_or(Partition { count: 0, index: 0 }, |b| Partition {
            count: b.count,
            index: b.index,
        });
        let member = Member {
            partition,
            changed: Instant::now(),
            left,
        };
        self.members().insert(name.to_string(), member);
    }

    /// The replicas alive now, with the partition each runs with.
    fn live(&self) -> Vec<(String, Partition)> {
        let members = self.members();
        members
            .iter()
            .filter(|(_, m)| !m.left && m.changed.elapsed() <= self.dead_after)
            .map(|(n, m)| (n.clone(), m.partition))
            .collect()
    }

    /// Slots folded here that the count no longer gives this replica and a
    /// live replica wants now: to release, so it can claim them.
    pub fn to_release(&self, exporter: &Exporter) -> Vec<u32> {
        let live = self.live();
        let held: Vec<u32> = self.held_map().keys().copied().collect();
        let own = exporter.ownership();
        held.into_iter()
            // One let go already, its release not written yet, is not again.
            .filter(|&s| own.holds(s) && !self.wants(s))
            .filter(|&s| live.iter().any(|(n, p)| *n != self.me && gives(*p, s)))
            .collect()
    }

    /// Up to `n` slots no live replica wants (while replicas of two counts
    /// run side by side), when this replica is the one to take care of them
    /// (the live one with the lowest name), skipping those known held by a
    /// live replica: it holds and serves them until one wants them.
    pub fn next_orphans(&self, n: usize) -> Vec<u32> {
        let live = self.live();
        if live.iter().map(|(n, _)| n).min() != Some(&self.me) {
            return Vec::new();
        }
        let held = self.held_map();
        let held_by = self.held_by.lock().unwrap_or_else(|e| e.into_inner());
        let orphans: Vec<u32> = (0..self.count)
            .filter(|&s| !held.contains_key(&s) && !self.wants(s))
            .filter(|&s| !live.iter().any(|(_, p)| gives(*p, s)))
            .filter(|s| {
                // Known held by a live replica, lately (it may let it go).
                !held_by.get(s).is_some_and(|(o, at)| {
                    at.elapsed() < Duration::from_secs(1) && live.iter().any(|(n, _)| n == o)
                })
            })
            .collect();
        round_robin(&orphans, &self.orphan_cursor, n)
    }

    /// Beat every [`BEAT`] until aborted; past half of `dead_after` without
    /// its own beat seen, serve nothing (another replica may take the slots).
    pub fn heartbeat(self: Arc<Self>, exporter: Arc<Exporter>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(BEAT);
            loop {
                tick.tick().await;
                let written = self.beat().await;
                // As the others see it: its own heartbeat changing in the
                // watch, not only written.
                let seen = self.members().get(&self.me).map(|m| m.changed);
                let limit = self.dead_after / 2;
                let fresh = seen.map_or(started.elapsed(), |t| t.elapsed()) <= limit;
                if fresh {
                    exporter.pause_serving(false);
                } else if exporter.pause_serving(true) {
                    tracing::error!("own heartbeat not seen for half of --partition.dead-after: serving nothing, another replica may take the slots");
                }
                if let Err(e) = written {
                    tracing::warn!(error = %e, "heartbeat not written");
                }
            }
        })
    }

    /// Leave: the heartbeat goes, so nobody waits for it.
    pub async fn leave(&self) {
        if let Some(w) = self
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            w.abort();
        }
        let _ = self.store.kv().delete(format!("members.{}", self.me)).await;
    }

    /// Whether `owner` stopped: its heartbeat deleted, or standing still
    /// (or never seen) for `dead_after` as this replica saw it.
    fn is_gone(&self, owner: &str) -> bool {
        // Only while this replica's watch is current: its own heartbeat
        // seen lately (else every other one would look still).
        let current = self
            .members()
            .get(&self.me)
            .is_some_and(|m| m.changed.elapsed() < 3 * BEAT);
        if !current {
            return false;
        }
        if let Some(m) = self.members().get(owner) {
            return m.left || m.changed.elapsed() > self.dead_after;
        }
        let mut unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
        let since = unseen.entry(owner.to_string()).or_insert_with(Instant::now);
        since.elapsed() > self.dead_after
    }

    /// It claims from now on: its heartbeat says its count.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Whether this replica sees its own heartbeat among the live ones.
    pub fn sees_itself(&self) -> bool {
        self.live().iter().any(|(n, _)| *n == self.me)
    }

    /// The count and index this replica runs with now.
    pub fn partition(&self) -> Partition {
        *self.partition.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the count gives this replica `slot`.
    pub fn wants(&self, slot: u32) -> bool {
        let p = self.partition();
        slot_owner(slot, p.count) == p.index
    }

    /// The slots the count gives this replica.
    pub fn wanted(&self) -> Vec<u32> {
        let p = self.partition();
        (0..self.count)
            .filter(|&s| slot_owner(s, p.count) == p.index)
            .collect()
    }

    /// With `--partition.discover`: the count and index from the live
    /// replicas (this one's index is its rank among their `--state.key`s);
    /// `Some` when they changed. `None` too while this replica does not
    /// see its own heartbeat yet.
    pub fn discover(&self) -> Option<Partition> {
        if !self.discover {
            return None;
        }
        let mut names: Vec<String> = self.live().into_iter().map(|(n, _)| n).collect();
        names.sort();
        let index = names.iter().position(|n| *n == self.me)? as u32;
        let now = Partition {
            count: names.len() as u32,
            index,
        };
        let mut p = self.partition.lock().unwrap_or_else(|e| e.into_inner());
        (*p != now).then(|| {
            *p = now;
            now
        })
    }

    fn held_map(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (u64, u64)>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `n` of the wanted slots not held yet, going round them from
    /// where the last call stopped.
    /// How many wanted slots are not held yet.
    pub fn waiting(&self) -> usize {
        let held = self.held_map();
        self.wanted()
            .iter()
            .filter(|s| !held.contains_key(s))
            .count()
    }

    pub fn next_pending(&self, n: usize) -> Vec<u32> {
        let held = self.held_map();
        let pending: Vec<u32> = self
            .wanted()
            .into_iter()
            .filter(|s| !held.contains_key(s))
            .collect();
        round_robin(&pending, &self.cursor, n)
    }

    async fn read(&self, slot: u32) -> Result<Option<Entry>, String> {
        self.read_checked(slot).await?
    }

    /// The slot as stored; `Err` when NATS did not answer, `Ok(Err)` when
    /// what is stored there is not a slot (trying again cannot help).
    async fn read_checked(&self, slot: u32) -> Result<Result<Option<Entry>, String>, String> {
        let entry = self
            .store
            .kv()
            .entry(key(slot))
            .await
            .map_err(|e| format!("slot {slot}: {e}"))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(Ok(None));
        };
        let line = entry.value.iter().position(|&b| b == b'\n');
        let Some(header) =
            line.and_then(|n| serde_json::from_slice::<Header>(&entry.value[..n]).ok())
        else {
            return Ok(Err(format!("slot {slot}: key {} is not a slot", key(slot))));
        };
        let state = entry.value.slice(line.map_or(0, |n| n + 1)..);
        Ok(Ok(Some(Entry {
            header,
            state,
            revision: entry.revision,
        })))
    }

    /// Write `slot` over `revision` (`None`: it must not exist yet).
    async fn write(
        &self,
        slot: u32,
        header: &Header,
        state: &[u8],
        revision: Option<u64>,
    ) -> Result<u64, Refused> {
        let mut value = serde_json::to_vec(header).expect("a header serializes");
        value.push(b'\n');
        value.extend_from_slice(state);
        if value.len() > self.store.max_value() {
            return Err(Refused::Failed(format!(
                "slot {slot}'s state is {} bytes compressed, more than the server takes in one \
                 message ({}): the deployment needs more slots, or a larger max_payload",
                value.len(),
                self.store.max_value()
            )));
        }
        let kv = self.store.kv();
        let written = match revision {
            Some(r) => kv.update(key(slot), value.into(), r).await.map_err(|e| {
                match e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    true => Refused::Lost,
                    false => Refused::Failed(format!("slot {slot}: {e}")),
                }
            }),
            None => kv.create(key(slot), value.into()).await.map_err(|e| {
                match e.kind() == kv::CreateErrorKind::AlreadyExists {
                    true => Refused::Lost,
                    false => Refused::Failed(format!("slot {slot}: {e}")),
                }
            }),
        }?;
        self.held_map().insert(slot, (header.generation, written));
        Ok(written)
    }

    /// Take `slot` if it is free (released, its owner gone, already this
    /// replica's, or with `create` never stored), and fold its state from
    /// its position on.
    pub async fn claim(
        &self,
        slot: u32,
        exporter: &Exporter,
        create: bool,
    ) -> Result<Claim, String> {
        if self.held_map().contains_key(&slot) {
            // Claimed already (as wanted and as an orphan in one round).
            return Ok(Claim::Held);
        }
        let failed = |e: Refused| match e {
            Refused::Lost => format!("slot {slot} was written meanwhile"),
            Refused::Failed(e) => e,
        };
        let Some(entry) = self.read(slot).await? else {
            if !create {
                // Not stored yet: its replica (or a checkpoint from before
                // slots) is about to store it.
                return Ok(Claim::Held);
            }
            let header = Header {
                owner: self.me.clone(),
                generation: 1,
                position: 0,
            };
            // No state yet: nothing stored after the header.
            self.write(slot, &header, &[], None).await.map_err(failed)?;
            exporter.adopt_slot(slot, exporter.empty_fold(), 0);
            return Ok(Claim::Taken {
                floor: 0,
                namespaces: 0,
            });
        };
        let h = &entry.header;
        if !h.owner.is_empty() && h.owner != self.me && !self.is_gone(&h.owner) {
            let mut held_by = self.held_by.lock().unwrap_or_else(|e| e.into_inner());
            held_by.insert(slot, (h.owner.clone(), Instant::now()));
            return Ok(Claim::Held);
        }
        let mut fold = exporter.empty_fold();
        if !entry.state.is_empty() {
            let raw = decompress(&entry.state).map_err(|e| format!("slot {slot}: {e}"))?;
            fold.restore(&raw, std::time::Instant::now(), crate::clock::unix_now())
                .map_err(|e| format!("slot {slot}: {e}"))?;
        }
        // Written even when it was this replica's already: an earlier
        // process under the same key, still alive, then loses it.
        let header = Header {
            owner: self.me.clone(),
            generation: h.generation + 1,
            position: h.position,
        };
        self.write(slot, &header, &entry.state, Some(entry.revision))
            .await
            .map_err(failed)?;
        // Logged once it is ours: of two claimers only one write stands.
        if !h.owner.is_empty() && h.owner != self.me {
            tracing::warn!(slot, owner = %h.owner, position = h.position, "took a slot from a replica whose heartbeat stopped, from its last checkpoint");
        }
        let namespaces = exporter.adopt_slot(slot, fold, h.position);
        Ok(Claim::Taken {
            floor: h.position,
            namespaces,
        })
    }

    /// Store the held slots' states (`(slot, checkpoint)`, each at
    /// `position(slot)` as encoded), owned still or `released`. Returns the
    /// slots another replica took meanwhile.
    pub async fn store(
        &self,
        states: Vec<SlotState>,
        released: bool,
    ) -> (Vec<u32>, Result<(), String>) {
        use futures_util::StreamExt;
        let (mut lost, mut done, mut result) = (Vec::new(), Vec::new(), Ok(()));
        // Compressed on a blocking thread, then written a few at a time.
        let keep = released;
        let compressed = tokio::task::spawn_blocking(move || {
            states
                .into_iter()
                .map(|(slot, position, raw)| {
                    let again = keep.then(|| (slot, position, raw.clone()));
                    (slot, position, compress(raw), again)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let writes = compressed
            .into_iter()
            .map(|(slot, position, state, again)| {
                let known = self.held_map().get(&slot).copied();
                async move {
                    let Some((generation, revision)) = known else {
                        return (slot, None, again);
                    };
                    let header = Header {
                        owner: if released {
                            String::new()
                        } else {
                            self.me.clone()
                        },
                        generation,
                        position,
                    };
                    let written = match state {
                        Ok(state) => self.write(slot, &header, &state, Some(revision)).await,
                        Err(e) => Err(Refused::Failed(e)),
                    };
                    (slot, Some(written), again)
                }
            });
        let mut results = futures_util::stream::iter(writes).buffer_unordered(WRITES_AT_ONCE);
        while let Some((slot, written, again)) = results.next().await {
            match written {
                None => {}
                Some(Ok(_)) => done.push(slot),
                Some(Err(Refused::Lost)) => lost.push(slot),
                Some(Err(Refused::Failed(e))) => {
                    result = Err(e);
                    if let Some(a) = again {
                        self.unreleased().push(a);
                    }
                }
            }
        }
        if released {
            self.forget(&done);
        }
        // Lost slots are forgotten by the caller, as the fold lets them go.
        (lost, result)
    }

    fn unreleased(&self) -> std::sync::MutexGuard<'_, Vec<SlotState>> {
        self.unreleased.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Try again the releases whose write failed.
    pub async fn release_again(&self) {
        let again = std::mem::take(&mut *self.unreleased());
        if !again.is_empty() {
            let (_, result) = self.store(again, true).await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "slots not released; trying again");
            }
        }
    }

    /// Slots no longer held.
    pub fn forget(&self, slots: &[u32]) {
        let mut held = self.held_map();
        slots.iter().for_each(|s| {
            held.remove(s);
        });
    }

    /// Release the slots an earlier process of this replica held that the
    /// count no longer gives it (it never folded them), so that their new
    /// replica can claim them.
    pub async fn release_unwanted(&self, held_before: &[u32]) -> Result<usize, String> {
        let mut released = 0;
        for &slot in held_before.iter().filter(|&&s| !self.wants(s)) {
            let entry = match self.read_checked(slot).await? {
                Ok(Some(entry)) => entry,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "slot not released: what is stored there is not a slot");
                    continue;
                }
            };
            if entry.header.owner != self.me {
                continue;
            }
            let header = Header {
                owner: String::new(),
                ..entry.header
            };
            match self
                .write(slot, &header, &entry.state, Some(entry.revision))
                .await
            {
                Ok(_) | Err(Refused::Lost) => {}
                Err(Refused::Failed(e)) => return Err(e),
            }
            self.forget(&[slot]);
            released += 1;
        }
        Ok(released)
    }

    /// Store slots of a checkpoint written before slots (`states`, as
    /// [`crate::fold::Image::encode_slots`] made them) where no slot key is
    /// yet: this replica's if the count gives it the slot, else released.
    pub async fn migrate(&self, states: Vec<SlotState>) -> Result<usize, String> {
        let mut stored = 0;
        for (slot, position, raw) in states {
            // Stored already (or something else is there): left as it is.
            if !matches!(self.read_checked(slot).await?, Ok(None)) {
                continue;
            }
            let owner = match self.wants(slot) {
                true => self.me.clone(),
                false => String::new(),
            };
            let header = Header {
                owner,
                generation: 1,
                position,
            };
            match self.write(slot, &header, &compress(raw)?, None).await {
                Ok(_) | Err(Refused::Lost) => stored += 1,
                Err(Refused::Failed(e)) => return Err(e),
            }
        }
        // Claimed again (and restored) with the others.
        self.held_map().clear();
        Ok(stored)
    }
}

fn compress(raw: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 4),
        flate2::Compression::fast(),
    );
    gz.write_all(&raw)
        .and_then(|_| gz.finish())
        .map_err(|e| format!("slot compression: {e}"))
}

fn decompress(compressed: &[u8]) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .read_to_end(&mut raw)
        .map_err(|e| format!("slot state does not decompress: {e}"))?;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_strict() {
        let ok: Header =
            serde_json::from_str(r#"{"owner":"e-0","generation":2,"position":9}"#).unwrap();
        assert_eq!(ok.position, 9);
        assert!(serde_json::from_str::<Header>(
            r#"{"owner":"e-0","generation":2,"position":9,"x":1}"#
        )
        .is_err());
    }
}
