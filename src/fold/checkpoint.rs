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
//! replica's own checkpoint holds no namespaces; each slot's namespaces are
//! a checkpoint of their own, with the slot's position (`source::slots`).
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

impl Fold {
    /// Load a checkpoint into this fold, which must be empty (just built with
    /// the current mapping). On error the fold is left empty.
    pub fn restore(
        &mut self,
        bytes: &[u8],
        now: Instant,
        wall: f64,
    ) -> Result<Restored, CheckpointError> {
        let result = self.restore_inner(bytes, now, wall);
        if result.is_err() {
            self.clear();
        }
        result
    }

    /// Back to empty, as just built with the current mapping.
    pub fn clear(&mut self) {
        self.namespaces = Default::default();
        self.events.iter_mut().for_each(|n| *n = 0);
        self.event_starts.iter_mut().for_each(|s| *s = None);
        if let Some(d) = &mut self.dedup {
            d.reset(d.key);
        }
    }

    fn restore_inner(
        &mut self,
        bytes: &[u8],
        now: Instant,
        wall: f64,
    ) -> Result<Restored, CheckpointError> {
        let mut r = Reader { buf: bytes, at: 0 };
        if r.take(4).ok() != Some(MAGIC.as_slice()) {
            return Err(CheckpointError::Corrupt(
                "not a session-exporter checkpoint (no SXST magic)".into(),
            ));
        }
        let format = r.varint()?;
        if !(1..=FORMAT).contains(&format) {
            return Err(CheckpointError::Corrupt(format!(
                "checkpoint format {format} is not one this build reads (format {FORMAT})"
            )));
        }
        let written = r.f64()?;
        let age = (wall - written).max(0.0);
        let mut out = Restored {
            age_seconds: age,
            format,
            ..Restored::default()
        };
        for _ in 0..r.count(2)? {
            let label = r.str()?;
            let n = r.varint()?;
            let start = if format >= 3 { r.start()? } else { None };
            let i = seed::event_index(label);
            self.event_starts[i] = start;
            let count = &mut self.events[i];
            *count = count.checked_add(n).ok_or_else(|| {
                CheckpointError::Corrupt(format!("event count of {label:?} overflows"))
            })?;
        }
        let catalog = self.catalog.clone();
        let stored = r.count(8)?;
        let mut table = Vec::with_capacity(stored);
        for _ in 0..stored {
            let name = r.str()?.to_string();
            let kind = kind_from(r.varint()?)?;
            let sigfig = r.varint()?;
            let hdr_scale = r.f64()?;
            let buckets: Vec<f64> = (0..r.count(8)?)
                .map(|_| r.f64())
                .collect::<Result<_, _>>()?;
            let step = r.varint()?;
            let target = catalog.metrics.iter().position(|d| {
                d.name == name
                    && d.kind == kind
                    && u64::from(d.sigfig) == sigfig
                    && d.hdr_scale == hdr_scale
                    && d.window.as_ref().map_or(0, |_| step_nanos(d)) == step
            });
            match target {
                Some(i) if catalog.metrics[i].buckets != buckets => out.rebucketed.push(name),
                Some(_) => {}
                None => out.dropped_metrics.push(name),
            }
            if !(1..=5).contains(&sigfig) {
                return Err(CheckpointError::Corrupt(format!(
                    "metric {:?}: significant figures {sigfig} out of range",
                    table.len()
                )));
            }
            table.push(StoredMetric {
                kind,
                sigfig: sigfig as u8,
                buckets: buckets.len(),
                windowed: step > 0,
                step_nanos: step.max(1),
                target,
            });
        }
        // Each stored SLO's place in the current mapping, if its counts carry over.
        let stored_slos = if format >= 4 { r.count(2)? } else { 0 };
        let mut slo_table = Vec::with_capacity(stored_slos);
        for _ in 0..stored_slos {
            let (name, metric) = (r.str()?, r.str()?);
            let target = catalog
                .slos
                .iter()
                .position(|s| s.name == name && catalog.metrics[s.metric].name == metric);
            if target.is_none() {
                out.dropped_slos.push(name.to_string());
            }
            slo_table.push(target);
        }
        let namespaces = r.count(2)?;
        for _ in 0..namespaces {
            let name = r.str()?;
            let mut slots: Vec<Slot> = catalog.metrics.iter().map(|_| Slot::Empty).collect();
            for m in &table {
                let slot = self.decode_slot(&mut r, m, format, now, age)?;
                if let Some(i) = m.target {
                    slots[i] = slot;
                }
            }
            let mut slis = vec![Sli::default(); catalog.slos.len()];
            for target in &slo_table {
                let sli = Sli {
                    start: r.start()?,
                    good: r.varint()?,
                    bad: r.varint()?,
                };
                if sli.good.checked_add(sli.bad).is_none() {
                    return Err(CheckpointError::Corrupt(format!(
                        "SLI counts of namespace {name:?} overflow"
                    )));
                }
                if let Some(k) = target {
                    slis[*k] = sli;
                }
            }
            if self.namespaces.index.contains_key(name) {
                return Err(CheckpointError::Corrupt(format!(
                    "namespace {name:?} appears twice"
                )));
            }
            let i = self.namespaces.insert(name, &catalog);
            let ns = self.namespaces.get_mut(i);
            (ns.slots, ns.slis) = (slots, slis);
        }
        for ns in &mut self.namespaces.list {
            let ns = std::sync::Arc::make_mut(ns);
            for (slot, def) in ns.slots.iter_mut().zip(catalog.metrics.iter()) {
                if let Slot::Histogram(h) = slot {
                    if out.rebucketed.contains(&def.name) {
                        h.rebucket(def);
                    }
                }
            }
        }
        out.namespaces = namespaces;
        let key = r.u64()?;
        let remembered = r.count(8)?;
        let ids: Vec<u64> = (0..remembered).map(|_| r.u64()).collect::<Result<_, _>>()?;
        if let Some(d) = &mut self.dedup {
            d.reset(if remembered > 0 { key } else { d.key });
            // Their slots are not stored: a slot's ids are tagged as it is
            // adopted (`Fold::adopt`).
            for h in ids {
                d.remember(h, NO_SLOT);
            }
        }
        if format == 1 {
            out.resume.legacy_acks = (0..r.count(1)?)
                .map(|_| r.str().map(str::to_string))
                .collect::<Result<_, _>>()?;
            r.varint()?; // the broadcast consumer's position: no such consumer now
        } else {
            let (count, index) = (r.varint()?, r.varint()?);
            if count == 0 || index >= count || count > u64::from(u32::MAX) {
                return Err(CheckpointError::Corrupt(format!(
                    "partition {index} of {count} is not a partition"
                )));
            }
            out.resume.partition = Partition {
                count: count as u32,
                index: index as u32,
            };
            out.resume.stream = r.str()?.to_string();
            out.resume.stream_seq = r.varint()?;
        }
        if format >= 5 {
            let slots = r.varint()?;
            let held: Vec<u64> = (0..r.count(1)?)
                .map(|_| r.varint())
                .collect::<Result<_, _>>()?;
            if slots > u64::from(u32::MAX) || held.iter().any(|&s| s >= slots) {
                return Err(CheckpointError::Corrupt(format!(
                    "slots {held:?} of {slots} are not slots"
                )));
            }
            out.resume.slots = slots as u32;
            out.resume.held = held.into_iter().map(|s| s as u32).collect();
        }
        if r.at != bytes.len() {
            return Err(CheckpointError::Corrupt(format!(
                "{} bytes after the end of the checkpoint",
                bytes.len() - r.at
            )));
        }
        Ok(out)
    }

    fn decode_slot(
        &self,
        r: &mut Reader,
        m: &StoredMetric,
        format: u64,
        now: Instant,
        age: f64,
    ) -> Result<Slot, CheckpointError> {
        let tag = r.varint()?;
        let mismatch =
            || CheckpointError::Corrupt(format!("slot of type {tag} in a {:?} metric", m.kind));
        let mut start = || if format >= 3 { r.start() } else { Ok(None) };
        Ok(match tag {
            0 => Slot::Empty,
            1 if m.kind == Kind::Counter => Slot::Counter {
                start: start()?,
                sum: r.exact()?.non_negative("counter")?,
            },
            2 if m.kind == Kind::Gauge => {
                let value = r.f64()?;
                let event_time = r.f64()?;
                // The fold only keeps values an event could set: finite, not negative.
                if !(value.is_finite() && value >= 0.0 && event_time.is_finite()) {
                    return Err(CheckpointError::Corrupt(format!(
                        "gauge value {value} at event time {event_time} is not one the fold keeps"
                    )));
                }
                let since = Duration::try_from_secs_f64(r.f64()? + age)
                    .map_err(|_| CheckpointError::Corrupt("gauge age is not a duration".into()))?;
                // A gauge older than the process clock can date is at least
                // as old as the process: it has expired, or is about to.
                let seen = now.checked_sub(since).unwrap_or(now);
                Slot::Gauge {
                    value,
                    event_time,
                    seen,
                }
            }
            3 if m.kind == Kind::Histogram => {
                let start = start()?;
                let sum = r.exact()?.non_negative("histogram sum")?;
                let count = r.varint()?;
                let buckets = (0..m.buckets)
                    .map(|_| r.varint())
                    .collect::<Result<Vec<_>, _>>()?;
                // Per-bucket counts: together at most the count (the rest is above the last bound).
                let below = buckets.iter().try_fold(0u64, |a, &b| a.checked_add(b));
                if below.is_none_or(|b| b > count) {
                    return Err(CheckpointError::Corrupt(format!(
                        "histogram bucket counts add up to more than its count {count}"
                    )));
                }
                let hdr = r.hdr(m.sigfig)?;
                // Buckets are re-counted from HDR when their bounds changed.
                if hdr.len() > count {
                    return Err(CheckpointError::Corrupt(format!(
                        "histogram records {} values but counts {count}",
                        hdr.len()
                    )));
                }
                let steps = r.count(2)?;
                let mut window = m.windowed.then(|| Box::new(Window::new(m.sigfig)));
                for _ in 0..steps {
                    let step_age = r.varint()?;
                    let h = r.hdr(m.sigfig)?;
                    let (Some(w), Some(i)) = (&mut window, m.target) else {
                        continue;
                    };
                    let gap = (age * 1e9 / m.step_nanos as f64) as u64;
                    let total = step_age.saturating_add(gap);
                    if total < WINDOW_STEPS as u64 {
                        let held = window_step(&self.catalog.metrics[i], self.started, now) - total;
                        let at = (held % WINDOW_STEPS as u64) as usize;
                        w.steps[at] = h;
                        w.held[at] = held;
                    }
                }
                // Exemplars are not kept: new observations bring new ones.
                // Native buckets come back from HDR, within its precision.
                let def = m.target.map(|i| &self.catalog.metrics[i]);
                let native = def.map_or_else(
                    || super::Native::new(crate::config::DEFAULT_NATIVE_SCHEMA),
                    |d| super::Native::from_hdr(&hdr, d.hdr_scale, d.native_schema),
                );
                Slot::Histogram(Box::new(Hist {
                    hdr,
                    buckets,
                    sum,
                    count,
                    window,
                    exemplars: Vec::new(),
                    native,
                    start,
                }))
            }
            _ => return Err(mismatch()),
        })
    }
}

impl Exact {
    /// Sums and counters only grow from zero: a negative one is not ours.
    fn non_negative(self, what: &str) -> Result<Exact, CheckpointError> {
        if self.0 < 0 {
            return Err(CheckpointError::Corrupt(format!("{what} is negative")));
        }
        Ok(self)
    }
}

struct StoredMetric {
    kind: Kind,
    sigfig: u8,
    buckets: usize,
    windowed: bool,
    step_nanos: u64,
    /// Index in the current mapping, if the state carries over.
    target: Option<usize>,
}

fn kind_code(k: Kind) -> u64 {
    match k {
        Kind::Counter => 1,
        Kind::Gauge => 2,
        Kind::Histogram => 3,
    }
}

fn kind_from(code: u64) -> Result<Kind, CheckpointError> {
    match code {
        1 => Ok(Kind::Counter),
        2 => Ok(Kind::Gauge),
        3 => Ok(Kind::Histogram),
        _ => Err(CheckpointError::Corrupt(format!(
            "unknown metric type {code}"
        ))),
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    fn exact(&mut self, v: Exact) {
        self.0.extend_from_slice(&v.0.to_le_bytes());
    }

    /// A series' start; NaN for unknown.
    fn start(&mut self, s: super::Start) {
        self.f64(s.unwrap_or(f64::NAN));
    }

    fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Recorded cells as (lowest value, ascending, as a delta; count).
    fn hdr(&mut self, h: &Histogram<u32>) {
        let cells: Vec<(u64, u64)> = h
            .iter_recorded()
            .map(|it| {
                (
                    h.lowest_equivalent(it.value_iterated_to()),
                    it.count_at_value().into(),
                )
            })
            .collect();
        self.varint(cells.len() as u64);
        let mut prev = 0;
        for (v, n) in cells {
            self.varint(v - prev);
            self.varint(n);
            prev = v;
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn truncated(&self) -> CheckpointError {
        CheckpointError::Corrupt(format!("checkpoint truncated at byte {}", self.at))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| self.truncated())?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, CheckpointError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CheckpointError::Corrupt(format!(
            "bad varint at byte {}",
            self.at
        )))
    }

    /// A count of items at least `min_bytes` long each: never more than the
    /// bytes left could hold, so a corrupt count cannot reserve memory.
    fn count(&mut self, min_bytes: usize) -> Result<usize, CheckpointError> {
        let n = self.varint()?;
        let left = (self.buf.len() - self.at) / min_bytes.max(1);
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| {
                CheckpointError::Corrupt(format!("count {n} at byte {} is past the end", self.at))
            })
    }

    fn u64(&mut self) -> Result<u64, CheckpointError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn f64(&mut self) -> Result<f64, CheckpointError> {
        self.u64().map(f64::from_bits)
    }

    fn start(&mut self) -> Result<super::Start, CheckpointError> {
        match self.f64()? {
            s if s.is_nan() => Ok(None),
            s if s.is_finite() && s > 0.0 => Ok(Some(s)),
            s => Err(CheckpointError::Corrupt(format!(
                "series start {s} is not a time"
            ))),
        }
    }

    fn exact(&mut self) -> Result<Exact, CheckpointError> {
        let b = self.take(16)?;
        Ok(Exact(i128::from_le_bytes(b.try_into().expect("16 bytes"))))
    }

    fn str(&mut self) -> Result<&'a str, CheckpointError> {
        let n = self.count(1)?;
        let at = self.at;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| CheckpointError::Corrupt(format!("string at byte {at} is not UTF-8")))
    }

    fn hdr(&mut self, sigfig: u8) -> Result<Histogram<u32>, CheckpointError> {
        let mut h = Histogram::new(sigfig).expect("sigfig checked to 1..=5");
        let mut v = 0u64;
        for _ in 0..self.count(2)? {
            v = v
                .checked_add(self.varint()?)
                .ok_or_else(|| CheckpointError::Corrupt("HDR value overflows".into()))?;
            let n = u32::try_from(self.varint()?).unwrap_or(u32::MAX);
            if h.record_n(v, n).is_err() {
                return Err(CheckpointError::Corrupt(format!(
                    "HDR value {v} out of range"
                )));
            }
        }
        Ok(h)
    }
}

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
mod tests {
    use super::*;
    use crate::config::Catalog;
    use crate::exposition;
    use std::sync::Arc;

    fn render(f: &mut Fold, now: Instant) -> String {
        let mut out = String::new();
        exposition::render(&f.snapshot(now), &mut out);
        out
    }

    fn empty() -> Fold {
        Fold::new(Arc::new(Catalog::default_mapping())).with_dedup(10)
    }

    #[test]
    fn round_trip_renders_the_same() {
        let (mut f, now) = sample_fold();
        let resume = Resume {
            partition: Partition { count: 3, index: 2 },
            stream: "SESSIONS".into(),
            stream_seq: 12345,
            legacy_acks: Vec::new(),
            ..Resume::default()
        };
        let bytes = f.encode(now, 1.7e9, &resume);
        let mut g = empty();
        let restored = g.restore(&bytes, now, 1.7e9).unwrap();
        assert_eq!(restored.resume, resume);
        assert_eq!(restored.namespaces, 3);
        assert!(restored.dropped_metrics.is_empty() && restored.rebucketed.is_empty());
        assert_eq!(render(&mut g, now), render(&mut f, now));
        // The de-duplication window came along, key and all.
        let dup =
            crate::event::decode(br#"{"id":"3","name":"MetricAcquiringDsEvent","namespace":"g"}"#)
                .unwrap();
        assert_eq!(
            g.apply(&dup, now, 1.7e9),
            Ok(super::super::Outcome::Duplicate)
        );
        // And a second round trip is byte-identical.
        assert_eq!(g.encode(now, 1.7e9, &resume), bytes);
    }

    /// A format-1 checkpoint as the first release with a state store wrote
    /// it (`sample_fold().encode` at wall time 1.7e9). Never regenerate it:
    /// later releases must go on loading exactly these bytes.
    const FORMAT_1: &[u8] = include_bytes!("../../tests/data/checkpoint-format-1.bin");

    #[test]
    fn format_1_checkpoints_load() {
        let mut g = empty();
        let now = Instant::now();
        let restored = g.restore(FORMAT_1, now, 1.7e9 + 60.0).unwrap();
        assert_eq!(restored.namespaces, 3);
        assert_eq!((restored.format, restored.resume.stream_seq), (1, 0));
        let text = render(&mut g, now);
        for line in [
            "session_ds_acquisition_wait_seconds_count{game_namespace=\"g\"} 2",
            "session_ds_acquisition_wait_seconds_sum{game_namespace=\"g\"} 2.402",
            "session_active_sessions{game_namespace=\"g\"} 42",
            "session_players_per_session_count{game_namespace=\"h\"} 1",
            "session_events_total{event=\"onPartyCreated\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    /// A format-2 checkpoint as the first ack-free release wrote it
    /// (`sample_fold().encode` at wall time 1.7e9, partition 1 of 3 of
    /// stream SESSIONS at sequence 4242). Never regenerate it.
    const FORMAT_2: &[u8] = include_bytes!("../../tests/data/checkpoint-format-2.bin");

    #[test]
    fn format_2_checkpoints_load_with_their_position() {
        let mut g = empty();
        let now = Instant::now();
        let restored = g.restore(FORMAT_2, now, 1.7e9 + 60.0).unwrap();
        assert_eq!(restored.format, 2);
        let want = Resume {
            partition: Partition { count: 3, index: 1 },
            stream: "SESSIONS".into(),
            stream_seq: 4242,
            legacy_acks: Vec::new(),
            ..Resume::default()
        };
        assert_eq!(restored.resume, want);
        let text = render(&mut g, now);
        assert!(
            text.contains("session_ds_acquisition_wait_seconds_count{game_namespace=\"g\"} 2\n")
        );
        // A partition that is not one is refused.
        let mut bad = FORMAT_2.to_vec();
        let tail = bad.len() - (1 + 1 + 1 + "SESSIONS".len() + 2);
        bad[tail + 1] = 3;
        let e = empty().restore(&bad, now, 1.7e9).unwrap_err();
        assert!(e.to_string().contains("partition 3 of 3"), "{e}");
    }

    /// A format-3 checkpoint as the first release with series starts wrote it
    /// (`sample_fold().encode` at wall time 1.7e9, partition 2 of 3 of stream
    /// SESSIONS at sequence 777; every series began at 1.7e9 - 30.5). Written
    /// once by that release; never regenerate it.
    const FORMAT_3: &str = "../../tests/data/checkpoint-format-3.bin";

    #[test]
    fn format_3_checkpoints_keep_series_starts() {
        let path = format!(
            "{}/tests/data/checkpoint-format-3.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        let now = Instant::now();
        let resume = Resume {
            partition: Partition { count: 3, index: 2 },
            stream: "SESSIONS".into(),
            stream_seq: 777,
            legacy_acks: Vec::new(),
            ..Resume::default()
        };
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{FORMAT_3}: {e}"));
        let mut g = empty().with_clock(|| 1.9e9);
        let restored = g.restore(&bytes, now, 1.7e9 + 60.0).unwrap();
        assert_eq!((restored.format, restored.resume), (3, resume));
        let snap = g.snapshot(now);
        let starts: Vec<_> = snap
            .families
            .iter()
            .flat_map(|f| f.samples.iter().map(|s| s.start))
            .chain(snap.event_starts.iter().copied())
            .collect();
        // Counters and histograms keep their start; gauges have none.
        assert!(
            starts.iter().filter(|s| s.is_some()).count() >= 5,
            "{starts:?}"
        );
        assert!(
            starts.iter().flatten().all(|&t| t == 1.7e9 - 30.5),
            "{starts:?}"
        );
        // A new series after the restore starts by the clock.
        let ev = crate::event::decode(br#"{"name":"MetricAcquiringDsEvent","namespace":"new"}"#)
            .unwrap();
        g.apply(&ev, now, 1.9e9).unwrap();
        let snap = g.snapshot(now);
        let i = snap
            .catalog
            .metrics
            .iter()
            .position(|m| m.name == "session_ds_acquisitions_total");
        let fam = &snap.families[i.unwrap()];
        let new = fam
            .samples
            .iter()
            .find(|s| snap.namespaces.get(s.namespace) == "new");
        assert_eq!(new.unwrap().start, Some(1.9e9));
    }

    /// A checkpoint from before slots (the format-4 fixture) taken apart
    /// into slots, each restored into a fold of its own and adopted, renders
    /// as the whole did: every namespace went to its slot, with the
    /// checkpoint's position; the event counts stayed in the replica's own.
    #[test]
    fn checkpoints_from_before_slots_split_into_slots() {
        let path = format!(
            "{}/tests/data/checkpoint-format-4.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let now = Instant::now();
        let mut whole = empty();
        let restored = whole.restore(&bytes, now, 1.7e9 + 60.0).unwrap();
        let want = render(&mut whole, now);
        let held: Vec<u32> = (0..6).collect();
        let resume = Resume {
            slots: 6,
            held: held.clone(),
            ..restored.resume
        };
        let (record, states) = whole
            .image(now, 1.7e9 + 60.0, &resume)
            .encode_slots(|_| 4040);
        let mut again = empty();
        let r = again.restore(&record, now, 1.7e9 + 60.0).unwrap();
        assert_eq!((r.namespaces, r.resume.slots), (0, 6));
        for (slot, _, state) in states {
            let mut one = empty();
            let r = one.restore(&state, now, 1.7e9 + 60.0).unwrap();
            assert_eq!((r.resume.stream_seq, r.resume.held), (4040, vec![slot]));
            let names = one.snapshot(now).namespaces;
            for i in 0..names.len() {
                assert_eq!(crate::partition::slot_of(names.get(i), 6), slot);
            }
            again.adopt(slot, one);
        }
        assert_eq!(render(&mut again, now), want);
        // Letting slots go takes their namespaces; the replica's event
        // counts stay (a counter of its own must not go down).
        (0..6).for_each(|s| again.drop_slot(s, 6));
        let text = render(&mut again, now);
        assert!(!text.contains("game_namespace="), "{text}");
        assert!(text.contains("session_events_total{"), "{text}");
    }

    /// With slots each remembered event id goes with its namespace's slot,
    /// hashed with the slot's key: every next holder (whatever its own key)
    /// drops a retry of an event a previous holder folded; the id of an
    /// event without a namespace stays in the replica's own checkpoint.
    #[test]
    fn remembered_ids_move_with_their_slot() {
        let now = Instant::now();
        let decode = crate::event::decode;
        let moved = br#"{"id":"m","name":"MetricAcquiringDsEvent","namespace":"g"}"#;
        let moved = decode(moved).unwrap();
        let kept = decode(br#"{"id":"k","name":"onPartyCreated"}"#).unwrap();
        let slot = crate::partition::slot_of("g", 6);
        let resume = Resume {
            slots: 6,
            held: vec![slot],
            ..Resume::default()
        };
        let slotted = || {
            let mut f = empty();
            f.set_slots(6);
            f
        };
        // `from` stores the slot; a fold with a key of its own takes it.
        let moved_on = |from: &Fold| {
            let (record, states) = from.image(now, 1.7e9, &resume).encode_slots(|_| 1);
            let mut next = slotted();
            let mut taken = next.empty_like();
            taken.restore(&states[0].2, now, 1.7e9).unwrap();
            next.adopt(slot, taken);
            (record, next)
        };
        let mut first = slotted();
        first.apply(&moved, now, 1.7e9).unwrap();
        first.apply(&kept, now, 1.7e9).unwrap();
        let (record, second) = moved_on(&first);
        let (_, mut third) = moved_on(&second);
        assert_eq!(
            third.apply(&moved, now, 1.7e9),
            Ok(crate::fold::Outcome::Duplicate)
        );
        assert_eq!(
            third.apply(&kept, now, 1.7e9),
            Ok(crate::fold::Outcome::Folded)
        );
        let mut own = slotted();
        own.restore(&record, now, 1.7e9).unwrap();
        assert_eq!(
            own.apply(&kept, now, 1.7e9),
            Ok(crate::fold::Outcome::Duplicate)
        );
        assert_eq!(
            own.apply(&moved, now, 1.7e9),
            Ok(crate::fold::Outcome::Folded)
        );
    }

    /// A format-4 checkpoint as the first release with SLIs wrote it
    /// (`sample_fold().encode` at wall time 1.7e9, partition 0 of 1 of stream
    /// SESSIONS at sequence 4040). Written once with `WRITE_FORMAT_4=1`;
    /// never regenerate it.
    #[test]
    fn format_4_checkpoints_keep_slis_and_format_3_starts_them_at_zero() {
        let path = format!(
            "{}/tests/data/checkpoint-format-4.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        let resume = Resume {
            stream: "SESSIONS".into(),
            stream_seq: 4040,
            ..Resume::default()
        };
        if std::env::var_os("WRITE_FORMAT_4").is_some() {
            let (f, now) = sample_fold();
            std::fs::write(&path, f.encode(now, 1.7e9, &resume)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let now = Instant::now();
        let mut g = empty();
        let restored = g.restore(&bytes, now, 1.7e9 + 60.0).unwrap();
        assert_eq!((restored.format, restored.resume), (4, resume));
        let text = render(&mut g, now);
        for line in [
            "session_slo_events_total{game_namespace=\"g\",slo=\"ds-acquisition\",result=\"good\"} 2",
            "session_slo_events_total{game_namespace=\"h\",slo=\"ds-acquisition\",result=\"bad\"} 1",
            "session_slo_objective_ratio{game_namespace=\"h\",slo=\"ds-acquisition\"} 0.99",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        let snap = g.snapshot(now);
        assert!(snap.slis.iter().all(|s| s.sli.start == Some(1.7e9 - 30.5)));
        // Into a mapping whose SLO has another name: dropped, and said so.
        let yaml = crate::config::DEFAULT_MAPPING.replace("name: ds-acquisition", "name: ds");
        let mut g = Fold::new(Arc::new(Catalog::from_yaml(&yaml).unwrap()));
        let restored = g.restore(&bytes, now, 1.7e9).unwrap();
        assert_eq!(restored.dropped_slos, ["ds-acquisition"]);
        assert!(g.snapshot(now).slis.is_empty());
        // Format 3 had no SLIs: they begin at zero, with the next event.
        let mut g = empty().with_clock(|| 1.9e9);
        g.restore(FORMAT_2, now, 1.7e9).unwrap();
        assert!(g.snapshot(now).slis.is_empty());
        let ev = crate::event::decode(
            br#"{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"g","payload":{"message":"31000"}}"#,
        )
        .unwrap();
        g.apply(&ev, now, 1.9e9).unwrap();
        let s = g.snapshot(now).slis[0];
        assert_eq!((s.sli.good, s.sli.bad, s.sli.start), (0, 1, Some(1.9e9)));
    }

    #[test]
    fn earlier_formats_restore_with_unknown_starts_and_clear_forgets_them() {
        let mut g = empty().with_clock(|| 1.9e9);
        g.restore(FORMAT_2, Instant::now(), 1.7e9).unwrap();
        let snap = g.snapshot(Instant::now());
        assert!(snap
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .all(|s| s.start.is_none()));
        assert!(snap.event_starts.iter().all(Option::is_none));
        // More events keep an unknown start unknown (the series is the same one)...
        let ev =
            crate::event::decode(br#"{"name":"MetricAcquiringDsEvent","namespace":"g"}"#).unwrap();
        g.apply(&ev, Instant::now(), 1.9e9).unwrap();
        let snap = g.snapshot(Instant::now());
        assert!(snap.event_starts.iter().all(Option::is_none));
        // ...and a reset series begins again, with a start.
        g.clear();
        g.apply(&ev, Instant::now(), 1.9e9).unwrap();
        let snap = g.snapshot(Instant::now());
        assert_eq!(snap.event_starts, [Some(1.9e9)]);
        assert!(snap
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .all(|s| s.start == Some(1.9e9)));
    }

    /// Checkpoints the fuzzer made: each refused with a message, the fold left empty.
    #[test]
    fn impossible_states_are_refused() {
        let over = include_bytes!("../../tests/data/fuzz/checkpoint-buckets-over-count.bin");
        let mut g = empty();
        let e = g.restore(over, Instant::now(), 1.8e9).unwrap_err();
        assert!(e.to_string().contains("bucket counts"), "{e}");
        assert_eq!(g.namespace_count(), 0);
        let over = include_bytes!("../../tests/data/fuzz/checkpoint-event-count-overflow.bin");
        let e = g.restore(over, Instant::now(), 1.8e9).unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        assert_eq!(g.namespace_count(), 0);
        let over = include_bytes!("../../tests/data/fuzz/checkpoint-hdr-over-count.bin");
        let e = g.restore(over, Instant::now(), 1.8e9).unwrap_err();
        assert!(e.to_string().contains("records"), "{e}");
        assert_eq!(g.namespace_count(), 0);
        // A negative counter: the format-1 fixture with one counter's sign flipped.
        let (f, now) = sample_fold();
        let good = f.encode(now, 1.7e9, &Resume::default());
        let mut flipped = 0;
        for at in 0..good.len() - 16 {
            let mut bad = good.clone();
            // An i128 of small magnitude: flip it to its negative.
            let v = i128::from_le_bytes(bad[at..at + 16].try_into().unwrap());
            if v <= 0 || v > 1_000_000_000_000 || v % 1_000_000_000 != 0 {
                continue;
            }
            bad[at..at + 16].copy_from_slice(&(-v).to_le_bytes());
            let mut g = empty();
            if let Err(e) = g.restore(&bad, now, 1.7e9) {
                flipped += usize::from(e.to_string().contains("negative"));
            }
        }
        assert!(flipped > 0, "no negative counter or sum was refused");
    }

    #[test]
    fn gauges_keep_aging_across_the_gap() {
        let (mut f, now) = sample_fold();
        let bytes = f.encode(now, 1.7e9, &Resume::default());
        let mut g = empty();
        // Restored 11 minutes later: the 10-minute gauge has expired.
        g.restore(&bytes, now, 1.7e9 + 660.0).unwrap();
        assert!(!render(&mut g, now).contains("session_active_sessions{"));
        assert!(render(&mut f, now).contains("session_active_sessions{game_namespace=\"g\"} 42"));
    }

    #[test]
    fn changed_buckets_rebucket_and_unknown_metrics_drop() {
        let (f, now) = sample_fold();
        let bytes = f.encode(now, 1.7e9, &Resume::default());
        let yaml = crate::config::DEFAULT_MAPPING
            .replace(
                "[0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]",
                "[1, 2]",
            )
            .replace("session_ds_acquisitions_total", "session_ds_acquired_total");
        let mut g = Fold::new(Arc::new(Catalog::from_yaml(&yaml).unwrap()));
        let restored = g.restore(&bytes, now, 1.7e9).unwrap();
        assert_eq!(restored.rebucketed, ["session_ds_acquisition_wait_seconds"]);
        assert_eq!(restored.dropped_metrics, ["session_ds_acquisitions_total"]);
        let text = render(&mut g, now);
        assert!(text.contains(
            "session_ds_acquisition_wait_seconds_bucket{game_namespace=\"g\",le=\"1\"} 1\n"
        ));
        assert!(text.contains(
            "session_ds_acquisition_wait_seconds_bucket{game_namespace=\"g\",le=\"2\"} 2\n"
        ));
        assert!(!text.contains("session_ds_acquisitions_total{"));
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let (f, now) = sample_fold();
        let bytes = f.encode(now, 1.7e9, &Resume::default());
        for len in 0..bytes.len() {
            let mut g = empty();
            assert!(
                g.restore(&bytes[..len], now, 1.7e9).is_err(),
                "prefix {len}"
            );
            assert_eq!(g.namespace_count(), 0);
        }
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..3000 {
            let mut b = bytes.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x % b.len() as u64) as usize;
            b[at] ^= (x >> 32) as u8 | 1;
            let mut g = empty();
            let _ = g.restore(&b, now, 1.7e9);
        }
        let mut g = empty();
        let err = g.restore(b"{\"json\":1}", now, 1.7e9).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a session-exporter checkpoint"),
            "{err}"
        );
        let mut future = bytes.clone();
        future[4] = 9;
        assert!(g
            .restore(&future, now, 1.7e9)
            .unwrap_err()
            .to_string()
            .contains("format 9"));
    }
}
