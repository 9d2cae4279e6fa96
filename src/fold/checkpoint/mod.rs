//! The fold's whole state as bytes, and back: what the state store keeps.
//!
//! A compact binary layout (varints, little-endian floats), versioned by a
//! leading magic and format number. Metrics are stored by name with the HDR
//! layout they were recorded in, so a checkpoint restores into a changed
//! mapping the way a reload does: unchanged metrics keep their state, changed
//! bucket bounds are re-counted from HDR, anything else is dropped and
//! reported. Times are stored as ages, so gauge expiry and windowed quantiles
//! carry on across a restart.
//!
//! Format 4, in order: magic `SXST`, format, checkpoint wall time, the
//! `session_events_total` counts by label (each with its start), the metric
//! table, the SLO table (each SLO's name and metric), the namespaces with one
//! slot per metric and one SLI count (start, good, bad) per SLO, the
//! de-duplication window, and the source's
//! [`Resume`]: the partition (count, index), the stream and the last stream
//! sequence folded. The fold and the position it stands for are one value, so
//! they can never disagree. A counter or histogram slot begins with its
//! series' start ([`super::Start`]).
//!
//! Format 5 ends with the slots ([`crate::partition`]): how many the
//! deployment has (0: none) and which the writer held. With slots, a
//! replica's own checkpoint holds no namespaces, and of the de-duplication
//! window only the ids of events without a namespace; each slot's
//! namespaces are a checkpoint of their own, with the slot's position
//! (`source::slots`), its remembered ids and the key they are hashed with.
//!
//! Here: the format and the encoding; `restore.rs` reads a checkpoint back
//! into a mapping, `wire.rs` holds the primitives both use.
//!
//! Format 4 is format 5 without the slots.
//! Format 3 is format 4 without the SLO table and counts (none restore).
//! Format 2 is format 3 without the starts (they restore as unknown).
//! Format 1 (the acking design) ends instead with the reply subjects of
//! messages that may not have been acked, and the broadcast consumer's
//! position; it still loads (`Resume::legacy_acks`), with no stream position.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::snapshot::View;
use super::{
    step_nanos, window_step, Exact, Fold, Hist, Namespace, Sli, Slot, Snapshot, Window, NO_SLOT,
    WINDOW_STEPS,
};
use crate::config::{Catalog, Kind, MetricDef};
use crate::partition::Partition;
use crate::seed;

const MAGIC: &[u8; 4] = b"SXST";
pub const FORMAT: u64 = 5;

/// What the source needs to carry on where the checkpoint left off.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Resume {
    /// The partition of the namespaces this fold holds.
    pub partition: Partition,
    /// The JetStream stream read without acks (empty on core NATS).
    pub stream: String,
    /// The last sequence of `stream` folded (0: none yet).
    pub stream_seq: u64,
    /// Format 1 only: reply subjects of messages the checkpoint holds that
    /// its writer may not have acknowledged.
    pub legacy_acks: Vec<String>,
    /// Format 5: the deployment's slots (0: none, namespaces by partition).
    pub slots: u32,
    /// Format 5: the slots its writer held, ascending.
    pub held: Vec<u32>,
}

/// What a restore found, for the log and the self-metrics.
#[derive(Debug, Default)]
pub struct Restored {
    pub resume: Resume,
    /// The format it was written in.
    pub format: u64,
    pub namespaces: usize,
    /// Metrics in the checkpoint that the current mapping has not (or has with
    /// another type or HDR layout): their state was dropped.
    pub dropped_metrics: Vec<String>,
    /// SLOs in the checkpoint that the current mapping has not (or has on
    /// another metric): their counts were dropped.
    pub dropped_slos: Vec<String>,
    /// Metrics whose bucket bounds changed: re-counted from HDR.
    pub rebucketed: Vec<String>,
    /// Seconds between the checkpoint and the restore, by the wall clock.
    pub age_seconds: f64,
}

/// Why a checkpoint is not restored.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckpointError {
    /// The bytes are not a checkpoint this build reads: truncated, corrupt,
    /// an unknown format.
    Corrupt(String),
    /// It holds another partition of the namespaces than this replica's.
    Partition { held: Partition, this: Partition },
    /// It holds a position in another stream than the one read.
    Stream { held: String, reading: String },
    /// It was written with slots (its namespaces are in the slot keys),
    /// and this replica runs without.
    Slots { held: u32 },
}

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointError::Corrupt(e) => f.write_str(e),
            CheckpointError::Partition { held, this } => write!(
                f,
                "it holds partition {} of {}, and this replica is partition {} of {}",
                held.index, held.count, this.index, this.count
            ),
            CheckpointError::Slots { held } => write!(
                f,
                "it was written with --partition.slots {held}, its namespaces stored in the slot \
                 keys, and this replica runs without slots: run it with --partition.slots {held}"
            ),
            CheckpointError::Stream { held, reading } => write!(
                f,
                "it holds a position in stream {held:?}, and this exporter reads stream {reading:?}"
            ),
        }
    }
}

impl std::error::Error for CheckpointError {}

/// A checkpoint's content, taken from the fold in a moment and encoded
/// later, without the fold's lock: the namespaces are shared copy-on-write
/// (see `Namespaces::list`), everything else is small and copied.
pub struct Image {
    catalog: Arc<Catalog>,
    namespaces: Vec<Arc<Namespace>>,
    /// Indexes into `namespaces`, by name.
    by_name: Vec<usize>,
    events: Vec<u64>,
    event_starts: Vec<super::Start>,
    dedup: Remembered,
    /// The fold's time zero of window steps, and the moment of the image
    /// (`wall`: the same as Unix seconds).
    started: Instant,
    now: Instant,
    wall: f64,
    resume: Resume,
}

/// A slot's state to store: the slot, the stream position its state ends
/// at, and its checkpoint.
pub type SlotState = (u32, u64, Vec<u8>);

/// The de-duplication window as an image holds it.
#[derive(Default)]
struct Remembered {
    key: u64,
    /// Each slot's key (0: `key`).
    slot_keys: Vec<u64>,
    /// Hashes and their slots, oldest first.
    ids: Vec<(u64, u32)>,
}

impl Remembered {
    fn key_of(&self, slot: u32) -> u64 {
        super::dedup::slot_key(self.key, &self.slot_keys, slot)
    }
}

impl Fold {
    /// The state at `now` (`wall`: the same moment as Unix seconds) and the
    /// source's position, to encode with [`Image::encode`]. Takes a pointer
    /// per namespace and copies the de-duplication window.
    pub fn image(&self, now: Instant, wall: f64, resume: &Resume) -> Image {
        Image {
            catalog: self.catalog.clone(),
            namespaces: self.namespaces.list.clone(),
            by_name: self.namespaces.by_name.clone(),
            events: self.events.clone(),
            event_starts: self.event_starts.clone(),
            dedup: match &self.dedup {
                Some(d) => Remembered {
                    key: d.key,
                    slot_keys: d.slot_keys.clone(),
                    ids: d.order.iter().copied().collect(),
                },
                None => Remembered::default(),
            },
            started: self.started,
            now,
            wall,
            resume: resume.clone(),
        }
    }

    /// The whole state at `now`, encoded at once.
    pub fn encode(&self, now: Instant, wall: f64, resume: &Resume) -> Vec<u8> {
        self.image(now, wall, resume).encode()
    }
}

impl Image {
    /// What `/metrics` serves once this checkpoint is stored.
    pub fn snapshot(&self) -> Snapshot {
        View {
            catalog: &self.catalog,
            list: &self.namespaces,
            by_name: &self.by_name,
            events: &self.events,
            event_starts: &self.event_starts,
            started: self.started,
        }
        .snapshot(self.now)
    }

    /// The checkpoint's bytes (format [`FORMAT`]). Each namespace is let go
    /// once written: the fold no longer copies it when it changes.
    pub fn encode(mut self) -> Vec<u8> {
        let namespaces = std::mem::take(&mut self.namespaces);
        let ids: Vec<u64> = self.dedup.ids.iter().map(|&(h, _)| h).collect();
        self.write(
            namespaces,
            &self.events,
            (self.dedup.key, &ids),
            &self.resume,
        )
    }

    /// With slots: this replica's own checkpoint (everything but the
    /// namespaces and the ids of events that had one), and `(slot,
    /// position, checkpoint)` for each slot the resume holds, with its
    /// namespaces, its remembered ids (with their key) and its position
    /// (`position(slot)`).
    pub fn encode_slots(mut self, position: impl Fn(u32) -> u64) -> (Vec<u8>, Vec<SlotState>) {
        let slots = self.resume.slots;
        let mut by_slot: Vec<Vec<Arc<Namespace>>> = vec![Vec::new(); slots as usize];
        for ns in std::mem::take(&mut self.namespaces) {
            by_slot[crate::partition::slot_of(&ns.name, slots) as usize].push(ns);
        }
        let mut ids_by_slot: Vec<Vec<u64>> = vec![Vec::new(); slots as usize];
        let mut own_ids = Vec::new();
        for &(h, s) in &self.dedup.ids {
            match ids_by_slot.get_mut(s as usize) {
                Some(ids) => ids.push(h),
                None => own_ids.push(h),
            }
        }
        // The event counts stay with the replica: a counter of its own
        // that must not go down when a slot moves away.
        let none = vec![0; self.events.len()];
        let own = (self.dedup.key, own_ids.as_slice());
        let record = self.write(Vec::new(), &self.events, own, &self.resume);
        let each = self
            .resume
            .held
            .iter()
            .map(|&s| {
                let resume = Resume {
                    stream_seq: position(s),
                    held: vec![s],
                    ..self.resume.clone()
                };
                let namespaces = std::mem::take(&mut by_slot[s as usize]);
                let ids = (self.dedup.key_of(s), ids_by_slot[s as usize].as_slice());
                let bytes = self.write(namespaces, &none, ids, &resume);
                (s, resume.stream_seq, bytes)
            })
            .collect();
        (record, each)
    }

    /// `namespaces`, the `events` counts and the remembered event ids
    /// (`(key, hashes)`), with `resume`.
    fn write(
        &self,
        namespaces: Vec<Arc<Namespace>>,
        events: &[u64],
        (key, ids): (u64, &[u64]),
        resume: &Resume,
    ) -> Vec<u8> {
        let now = self.now;
        let mut w = Writer(Vec::with_capacity(4096 + namespaces.len() * 1024));
        w.0.extend_from_slice(MAGIC);
        w.varint(FORMAT);
        w.f64(self.wall);
        let events: Vec<(usize, u64)> = events
            .iter()
            .copied()
            .enumerate()
            .filter(|&(_, n)| n > 0)
            .collect();
        w.varint(events.len() as u64);
        for (i, n) in events {
            w.str(seed::event_label(i));
            w.varint(n);
            w.start(self.event_starts[i]);
        }
        let metrics = &self.catalog.metrics;
        w.varint(metrics.len() as u64);
        for def in metrics.iter() {
            w.str(&def.name);
            w.varint(kind_code(def.kind));
            w.varint(u64::from(def.sigfig));
            w.f64(def.hdr_scale);
            w.varint(def.buckets.len() as u64);
            def.buckets.iter().for_each(|&b| w.f64(b));
            w.varint(def.window.as_ref().map_or(0, |_| step_nanos(def)));
        }
        let slos = &self.catalog.slos;
        w.varint(slos.len() as u64);
        for slo in slos {
            w.str(&slo.name);
            w.str(&metrics[slo.metric].name);
        }
        w.varint(namespaces.len() as u64);
        for ns in namespaces {
            w.str(&ns.name);
            for (slot, def) in ns.slots.iter().zip(metrics.iter()) {
                self.encode_slot(&mut w, slot, def, now);
            }
            for sli in &ns.slis {
                w.start(sli.start);
                w.varint(sli.good);
                w.varint(sli.bad);
            }
        }
        w.u64(key);
        w.varint(ids.len() as u64);
        ids.iter().for_each(|&h| w.u64(h));
        w.varint(u64::from(resume.partition.count));
        w.varint(u64::from(resume.partition.index));
        w.str(&resume.stream);
        w.varint(resume.stream_seq);
        w.varint(u64::from(resume.slots));
        w.varint(resume.held.len() as u64);
        resume.held.iter().for_each(|&s| w.varint(u64::from(s)));
        w.0
    }

    fn encode_slot(&self, w: &mut Writer, slot: &Slot, def: &MetricDef, now: Instant) {
        match slot {
            Slot::Empty => w.varint(0),
            Slot::Counter { sum, start } => {
                w.varint(1);
                w.start(*start);
                w.exact(*sum);
            }
            Slot::Gauge {
                value,
                event_time,
                seen,
            } => {
                w.varint(2);
                w.f64(*value);
                w.f64(*event_time);
                w.f64(now.saturating_duration_since(*seen).as_secs_f64());
            }
            Slot::Histogram(h) => {
                w.varint(3);
                w.start(h.start);
                w.exact(h.sum);
                w.varint(h.count);
                h.buckets.iter().for_each(|&c| w.varint(c));
                w.hdr(&h.hdr);
                let Some(win) = &h.window else {
                    w.varint(0);
                    return;
                };
                let step = window_step(def, self.started, now);
                let live: Vec<(u64, &Histogram<u32>)> = win
                    .steps
                    .iter()
                    .zip(&win.held)
                    .map(|(h, &held)| (step.saturating_sub(held), h))
                    .filter(|&(age, h)| age < WINDOW_STEPS as u64 && !h.is_empty())
                    .collect();
                w.varint(live.len() as u64);
                for (age, h) in live {
                    w.varint(age);
                    w.hdr(h);
                }
            }
        }
    }
}

mod restore;
mod wire;

use wire::{kind_code, Writer};

/// Shared by the tests of this module and of the store.
#[cfg(test)]
pub(crate) fn sample_fold() -> (Fold, Instant) {
    let mut f = Fold::new(std::sync::Arc::new(
        crate::config::Catalog::default_mapping(),
    ))
    .with_dedup(10)
    .with_clock(|| 1.7e9 - 30.5);
    let now = Instant::now();
    let events = [
        r#"{"id":"1","name":"MetricAcquiringDsWaitTimeEvent","namespace":"g","timestamp":"2026-11-22T10:00:00Z","payload":{"message":"1532"}}"#,
        r#"{"id":"2","name":"MetricAcquiringDsWaitTimeEvent","namespace":"g","payload":{"message":"{\"value\":870}"}}"#,
        r#"{"id":"7","name":"MetricAcquiringDsWaitTimeEvent","namespace":"h","payload":{"message":"45000"}}"#,
        r#"{"id":"3","name":"MetricAcquiringDsEvent","namespace":"g\"\n"}"#,
        r#"{"id":"4","name":"MetricTotalActiveSessionEvent","namespace":"g","timestamp":"2026-11-22T10:00:02Z","payload":{"message":"42"}}"#,
        r#"{"id":"5","name":"MetricTotalPlayerPersessionEvent","namespace":"h","payload":{"userIds":["a","b","c"],"message":""}}"#,
        r#"{"id":"6","name":"onPartyCreated","namespace":"h"}"#,
    ];
    for e in events {
        let ev = crate::event::decode(e.as_bytes()).unwrap();
        let t = ev
            .timestamp
            .as_deref()
            .and_then(crate::event::parse_rfc3339)
            .unwrap_or(1.7e9);
        f.apply(&ev, now, t).unwrap();
    }
    (f, now)
}

#[cfg(test)]
mod tests;
