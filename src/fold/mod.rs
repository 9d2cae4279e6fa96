//! Per-namespace metric state. Pure and synchronous: the ingest loop is its only
//! writer, a scrape takes a compact [`Snapshot`] and renders it unlocked, and a
//! checkpoint ([`checkpoint`]) writes the whole state out and reads it back.

mod checkpoint;
pub mod native;

pub use checkpoint::{CheckpointError, Restored, Resume};
use native::Native;

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::config::{Catalog, Kind, MetricDef};
use crate::event::{Event, Reason};
use crate::seed;

/// The series that namespaces past `max_namespaces` fold into.
pub const OVERFLOW_NAMESPACE: &str = "__overflow__";

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to its namespace's metrics (or counted only, if unmapped).
    Folded,
    /// Applied, but to the overflow series: the namespace limit was reached.
    Overflowed,
    /// An event `id` seen within the de-duplication window (JetStream redelivery).
    Duplicate,
}

#[derive(Debug)]
enum Slot {
    Empty,
    Counter(Exact),
    Gauge {
        value: f64,
        /// Event time (Unix seconds) of the value, so late events do not win.
        event_time: f64,
        seen: Instant,
    },
    Histogram(Box<Hist>),
}

/// A sum in billionths, as an integer: the same whatever order the values
/// arrive in (an `f64` sum is not, and a replica or a restarted exporter folds
/// redelivered events in another order than one that never died). Values are
/// kept to 1e-9 of their unit, far below what any Prometheus query resolves.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Exact(i128);

const EXACT_SCALE: f64 = 1e9;

impl Exact {
    fn add(&mut self, v: f64) {
        // `as` saturates: a value beyond ±1.7e29 cannot wrap the sum.
        self.0 = self.0.saturating_add((v * EXACT_SCALE).round() as i128);
    }

    fn get(self) -> f64 {
        // Whole units and the fraction apart, so that integers stay exact.
        let whole = self.0 / 1_000_000_000;
        let frac = self.0 % 1_000_000_000;
        whole as f64 + frac as f64 / EXACT_SCALE
    }
}

#[derive(Debug)]
struct Hist {
    /// Every value at 1% precision: re-buckets when the bounds change on
    /// reload, and feeds nothing else.
    hdr: Histogram<u32>,
    /// Exact counts per configured `le` bound (not cumulative; values above
    /// the last bound are `count` minus their sum), compared as written.
    buckets: Vec<u64>,
    /// Exact, from the converted values rather than HDR's rounded ones.
    sum: Exact,
    count: u64,
    window: Option<Box<Window>>,
    /// Mappings with `exemplars`: the latest traced observation of each
    /// bucket, the last slot above the last bound. Not checkpointed.
    exemplars: Option<Box<[Option<Exemplar>]>>,
    /// Native-histogram buckets of the exact values. Not checkpointed:
    /// rebuilt from HDR on restore.
    native: Native,
}

/// One observation with the trace it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// Checked by `event::check_trace_id` (ASCII); shared with snapshots.
    pub trace_id: Arc<[u8]>,
    pub value: f64,
    /// The event's time, Unix seconds.
    pub time: f64,
}

impl Exemplar {
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or("")
    }
}

/// Empty exemplar slots for a histogram of `def`, if it keeps them.
fn exemplar_slots(def: &MetricDef) -> Option<Box<[Option<Exemplar>]>> {
    def.exemplars
        .then(|| vec![None; def.buckets.len() + 1].into_boxed_slice())
}

impl Hist {
    fn new(def: &MetricDef) -> Hist {
        Hist {
            hdr: Histogram::new(def.sigfig).expect("sigfig validated to 1..=5"),
            buckets: vec![0; def.buckets.len()],
            sum: Exact::default(),
            count: 0,
            window: def
                .window
                .as_ref()
                .map(|_| Box::new(Window::new(def.sigfig))),
            exemplars: exemplar_slots(def),
            native: Native::new(def.native_schema),
        }
    }

    fn record(&mut self, def: &MetricDef, v: f64, at: &At, step: impl FnOnce() -> u64) {
        let scaled = v * def.hdr_scale;
        record_hdr(&mut self.hdr, scaled);
        let bucket = def.buckets.partition_point(|&b| b < v);
        if let Some(c) = self.buckets.get_mut(bucket) {
            *c += 1;
        }
        self.native.record(v);
        if let (Some(slots), Some(trace)) = (&mut self.exemplars, at.trace) {
            let slot = &mut slots[bucket];
            // Overwrite the bytes in place when no snapshot shares them and
            // the length matches (trace ids mostly have one length): no
            // allocation per observation.
            let reused = slot.as_mut().is_some_and(|e| {
                let fits = e.trace_id.len() == trace.len();
                match Arc::get_mut(&mut e.trace_id).filter(|_| fits) {
                    Some(bytes) => {
                        bytes.copy_from_slice(trace.as_bytes());
                        (e.value, e.time) = (v, at.event_time);
                        true
                    }
                    None => false,
                }
            });
            if !reused {
                *slot = Some(Exemplar {
                    trace_id: trace.as_bytes().into(),
                    value: v,
                    time: at.event_time,
                });
            }
        }
        self.sum.add(v);
        self.count += 1;
        if let Some(w) = &mut self.window {
            w.record(step(), scaled);
        }
    }

    /// New bounds: count the values recorded so far from HDR (within its
    /// precision; exact again for everything recorded from now on).
    fn rebucket(&mut self, def: &MetricDef) {
        self.exemplars = exemplar_slots(def);
        let mut cumulative = Vec::new();
        cumulative_counts(&self.hdr, &hdr_bounds(def), &mut cumulative);
        let mut below = 0;
        self.buckets = cumulative
            .into_iter()
            .map(|c| {
                let n = c - below;
                below = c;
                n
            })
            .collect();
    }
}

/// Sub-histograms a window rotates through: the window covers the last
/// `length` in steps of `length / WINDOW_STEPS`.
const WINDOW_STEPS: usize = 5;

/// The recent values of one histogram, for exact windowed quantiles.
#[derive(Debug)]
struct Window {
    steps: Vec<Histogram<u32>>,
    /// The step number (time since the fold began / step length) each holds.
    held: [u64; WINDOW_STEPS],
}

impl Window {
    fn new(sigfig: u8) -> Window {
        Window {
            steps: (0..WINDOW_STEPS)
                .map(|_| Histogram::new(sigfig).expect("sigfig validated to 1..=5"))
                .collect(),
            held: [0; WINDOW_STEPS],
        }
    }

    fn record(&mut self, step: u64, v: f64) {
        let i = (step % WINDOW_STEPS as u64) as usize;
        if self.held[i] != step {
            self.steps[i].reset();
            self.held[i] = step;
        }
        record_hdr(&mut self.steps[i], v);
    }

    /// Everything recorded in the last `WINDOW_STEPS` steps: the one live
    /// step itself, or several merged into `scratch` (a scrape visits every
    /// namespace, so the copy is skipped when it can be).
    fn live<'a>(&'a self, step: u64, scratch: &'a mut Histogram<u32>) -> &'a Histogram<u32> {
        let mut live = self
            .steps
            .iter()
            .zip(&self.held)
            .filter(|(h, &held)| step.saturating_sub(held) < WINDOW_STEPS as u64 && !h.is_empty())
            .map(|(h, _)| h);
        let Some(first) = live.next() else {
            scratch.reset();
            return scratch;
        };
        let Some(second) = live.next() else {
            return first;
        };
        scratch.reset();
        for h in [first, second].into_iter().chain(live) {
            let _ = scratch.add(h);
        }
        scratch
    }
}

/// Step numbers start here rather than at 0, so a restored step that is
/// older than the process (`now - age`) is still a positive number.
const STEP_ORIGIN: u64 = 5 << 32;

/// A window step's length in nanoseconds (1 for histograms without a window).
fn step_nanos(def: &MetricDef) -> u64 {
    def.window.as_ref().map_or(1, |w| {
        (w.length.as_nanos() as u64 / WINDOW_STEPS as u64).max(1)
    })
}

/// Which window step `now` falls in (64-bit arithmetic: 584 years of uptime).
fn window_step(def: &MetricDef, started: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(started).as_nanos() as u64 / step_nanos(def) + STEP_ORIGIN
}

struct Namespace {
    name: Arc<str>,
    slots: Vec<Slot>,
}

/// Remembers the last `cap` event ids, by a 64-bit hash keyed with a random
/// `key`. The key travels in checkpoints, so a restored window still matches
/// the ids it remembers; producers cannot aim collisions at an unknown key.
struct Dedup {
    key: u64,
    seen: HashSet<u64, BuildHasherDefault<Prehashed>>,
    order: VecDeque<u64>,
    cap: usize,
}

impl Dedup {
    fn new(cap: usize, key: u64) -> Dedup {
        Dedup {
            key,
            seen: HashSet::with_capacity_and_hasher(cap, Default::default()),
            order: VecDeque::with_capacity(cap),
            cap,
        }
    }

    fn is_duplicate(&mut self, id: &str) -> bool {
        !self.remember(keyed_hash(self.key, id))
    }

    /// False when `h` was already remembered.
    fn remember(&mut self, h: u64) -> bool {
        if !self.seen.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// The set's keys are already keyed hashes: hashing them again is waste.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// FNV-1a over the key and the id, then a SplitMix64 finaliser to spread the bits.
fn keyed_hash(key: u64, id: &str) -> u64 {
    let h = key
        .to_le_bytes()
        .iter()
        .chain(id.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Namespaces by name, in arrival order.
#[derive(Default)]
struct Namespaces {
    index: HashMap<Arc<str>, usize>,
    list: Vec<Namespace>,
}

impl Namespaces {
    /// The slot index for `name`, or for the overflow series past the limit.
    fn find_or_insert(&mut self, name: &str, catalog: &Catalog) -> (usize, Outcome) {
        if let Some(&i) = self.index.get(name) {
            return (i, Outcome::Folded);
        }
        let live = self.list.len() - usize::from(self.index.contains_key(OVERFLOW_NAMESPACE));
        if live >= catalog.limits.max_namespaces {
            return (
                self.insert(OVERFLOW_NAMESPACE, catalog),
                Outcome::Overflowed,
            );
        }
        (self.insert(name, catalog), Outcome::Folded)
    }

    fn insert(&mut self, name: &str, catalog: &Catalog) -> usize {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let name: Arc<str> = Arc::from(name);
        let slots = catalog.metrics.iter().map(|_| Slot::Empty).collect();
        self.list.push(Namespace {
            name: name.clone(),
            slots,
        });
        self.index.insert(name, self.list.len() - 1);
        self.list.len() - 1
    }
}

pub struct Fold {
    catalog: Arc<Catalog>,
    namespaces: Namespaces,
    /// `session_events_total` by seed event name, `other` last.
    events: Vec<u64>,
    dedup: Option<Dedup>,
    /// Values of one event, checked before any is applied.
    scratch: Vec<f64>,
    /// Time zero of the windows' steps.
    started: Instant,
}

impl Fold {
    pub fn new(catalog: Arc<Catalog>) -> Fold {
        Fold {
            catalog,
            namespaces: Namespaces::default(),
            events: vec![0; seed::EVENT_NAMES.len() + 1],
            dedup: None,
            scratch: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Drop events whose `id` was among the last `window` seen (0 turns it off).
    pub fn with_dedup(mut self, window: usize) -> Fold {
        let key = RandomState::new().hash_one(0x5e55_1011_u64);
        self.dedup = (window > 0).then(|| Dedup::new(window, key));
        self
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn namespace_count(&self) -> usize {
        self.namespaces.list.len()
    }

    /// Fold one decoded event. `now` dates gauge updates for expiry; `event_time`
    /// (Unix seconds: the event's timestamp, else the receive time) orders them.
    pub fn apply(&mut self, ev: &Event, now: Instant, event_time: f64) -> Result<Outcome, Reason> {
        if let (Some(d), Some(id)) = (self.dedup.as_mut(), ev.id.as_deref()) {
            if !id.is_empty() && d.is_duplicate(id) {
                return Ok(Outcome::Duplicate);
            }
        }
        let index = seed::event_index(&ev.name);
        self.events[index] += 1;
        let rules = self.catalog.rules_at(index, &ev.name);
        if rules.is_empty() {
            return Ok(Outcome::Folded);
        }
        let ns = ev.namespace.as_deref().ok_or(Reason::MissingNamespace)?;
        if ns.len() > self.catalog.limits.max_namespace_length {
            return Err(Reason::InvalidNamespace);
        }
        self.scratch.clear();
        for rule in rules {
            let v = match &rule.value {
                Some(spec) => ev.value(spec)?,
                None => 1.0,
            };
            self.scratch.push(v);
        }
        let (slot_ns, outcome) = self.namespaces.find_or_insert(ns, &self.catalog);
        let slots = &mut self.namespaces.list[slot_ns].slots;
        let at = At {
            event_time,
            now,
            trace: ev.trace_id.as_deref(),
        };
        for (rule, &v) in rules.iter().zip(&self.scratch) {
            let def = &self.catalog.metrics[rule.metric];
            record(&mut slots[rule.metric], def, v, &at, self.started);
        }
        Ok(outcome)
    }

    /// Fold only the gauge mappings of an event, and nothing else: not the
    /// event count, not the de-duplication window, no reject. For the events
    /// every replica receives (see `source`), whose other effects are counted
    /// by whichever replica the shared subscription gives them to. Applying a
    /// gauge twice is harmless: the latest event time wins either way.
    pub fn apply_gauges(&mut self, ev: &Event, now: Instant, event_time: f64) {
        let index = seed::event_index(&ev.name);
        let Some(ns) = ev.namespace.as_deref() else {
            return;
        };
        if ns.len() > self.catalog.limits.max_namespace_length {
            return;
        }
        for rule in self.catalog.rules_at(index, &ev.name) {
            let def = &self.catalog.metrics[rule.metric];
            let (Kind::Gauge, Some(spec)) = (def.kind, &rule.value) else {
                continue;
            };
            let Ok(v) = ev.value(spec) else { continue };
            let (slot_ns, _) = self.namespaces.find_or_insert(ns, &self.catalog);
            let slot = &mut self.namespaces.list[slot_ns].slots[rule.metric];
            let at = At {
                event_time,
                now,
                trace: None,
            };
            record(slot, def, v, &at, self.started);
        }
    }

    /// Swap in a new mapping. State of a metric survives when its name, type and
    /// HDR layout are unchanged; bucket bounds may change freely (they are
    /// computed at scrape time).
    pub fn reconfigure(&mut self, catalog: Arc<Catalog>) {
        let carry: Vec<Option<usize>> = catalog
            .metrics
            .iter()
            .map(|new| {
                self.catalog.metrics.iter().position(|old| {
                    old.name == new.name
                        && old.kind == new.kind
                        && old.sigfig == new.sigfig
                        && old.hdr_scale == new.hdr_scale
                        && old.window == new.window
                })
            })
            .collect();
        for ns in &mut self.namespaces.list {
            let mut old = std::mem::take(&mut ns.slots);
            ns.slots = carry
                .iter()
                .map(|c| c.map_or(Slot::Empty, |i| std::mem::replace(&mut old[i], Slot::Empty)))
                .collect();
            for (slot, (def, c)) in ns.slots.iter_mut().zip(catalog.metrics.iter().zip(&carry)) {
                if let (Slot::Histogram(h), Some(i)) = (slot, c) {
                    let old = &self.catalog.metrics[*i];
                    if old.buckets != def.buckets {
                        h.rebucket(def);
                    } else if old.exemplars != def.exemplars {
                        h.exemplars = exemplar_slots(def);
                    }
                    if old.native_schema != def.native_schema {
                        h.native = Native::from_hdr(&h.hdr, def.hdr_scale, def.native_schema);
                    }
                }
            }
        }
        self.catalog = catalog;
    }

    /// Copy out what a scrape needs; the caller renders without the lock.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut families: Vec<FamilySnapshot> = self
            .catalog
            .metrics
            .iter()
            .map(|_| FamilySnapshot::default())
            .collect();
        let mut merged: Vec<Histogram<u32>> = self
            .catalog
            .metrics
            .iter()
            .map(|d| Histogram::new(d.sigfig).expect("sigfig validated to 1..=5"))
            .collect();
        for (ni, ns) in self.namespaces.list.iter().enumerate() {
            for (((slot, def), fam), merged) in ns
                .slots
                .iter()
                .zip(&self.catalog.metrics)
                .zip(&mut families)
                .zip(&mut merged)
            {
                match slot {
                    Slot::Empty => continue,
                    Slot::Counter(v) => fam.samples.push(Sample::value(ni, v.get())),
                    Slot::Gauge { value, seen, .. } => {
                        if now.saturating_duration_since(*seen) > def.ttl {
                            continue;
                        }
                        fam.samples.push(Sample::value(ni, *value));
                    }
                    Slot::Histogram(h) => {
                        fam.samples.push(Sample {
                            namespace: ni,
                            value: h.sum.get(),
                            count: h.count,
                        });
                        let mut below = 0;
                        fam.buckets.extend(h.buckets.iter().map(|c| {
                            below += c;
                            below
                        }));
                        if let Some(slots) = &h.exemplars {
                            fam.exemplars.extend(slots.iter().cloned());
                        }
                        fam.native.push(h.native.clone());
                        if let (Some(w), Some(wd)) = (&h.window, &def.window) {
                            let live = w.live(window_step(def, self.started, now), merged);
                            // Lowest equivalent, as the buckets count it; NaN:
                            // nothing recorded within the window.
                            let value = |v: u64| live.lowest_equivalent(v) as f64 / def.hdr_scale;
                            let start = fam.window_values.len();
                            if live.is_empty() {
                                fam.window_values
                                    .extend(wd.quantiles.iter().map(|_| f64::NAN));
                            } else if wd.quantiles.windows(2).all(|q| q[0] < q[1]) {
                                // One pass for all of them.
                                fam.window_values.extend(
                                    live.value_at_quantiles(wd.quantiles.iter().copied())
                                        .map(value),
                                );
                            }
                            if fam.window_values.len() - start != wd.quantiles.len() {
                                fam.window_values.truncate(start);
                                fam.window_values.extend(
                                    wd.quantiles
                                        .iter()
                                        .map(|&q| value(live.value_at_quantile(q))),
                                );
                            }
                        }
                    }
                }
            }
        }
        let events = self
            .events
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (seed::event_label(i), n))
            .collect();
        Snapshot {
            catalog: self.catalog.clone(),
            namespaces: self
                .namespaces
                .list
                .iter()
                .map(|n| n.name.clone())
                .collect(),
            families,
            events,
        }
    }
}

/// When an observation happened, and the trace it carries.
struct At<'a> {
    event_time: f64,
    /// Dates gauge updates for expiry and window steps.
    now: Instant,
    trace: Option<&'a str>,
}

/// `started` dates the steps of windowed histograms.
fn record(slot: &mut Slot, def: &MetricDef, v: f64, at: &At, started: Instant) {
    let step = || window_step(def, started, at.now);
    match (slot, def.kind) {
        (Slot::Counter(c), _) => c.add(v),
        (
            Slot::Gauge {
                value,
                event_time: t,
                seen,
            },
            _,
        ) => {
            // Ties go to the larger value, so replicas that receive two
            // updates with one timestamp in different orders agree.
            if at.event_time > *t || (at.event_time == *t && v >= *value) {
                (*value, *t, *seen) = (v, at.event_time, at.now);
            }
        }
        (Slot::Histogram(h), _) => h.record(def, v, at, step),
        (slot @ Slot::Empty, Kind::Counter) => {
            let mut c = Exact::default();
            c.add(v);
            *slot = Slot::Counter(c);
        }
        (slot @ Slot::Empty, Kind::Gauge) => {
            *slot = Slot::Gauge {
                value: v,
                event_time: at.event_time,
                seen: at.now,
            }
        }
        (slot @ Slot::Empty, Kind::Histogram) => {
            let mut h = Box::new(Hist::new(def));
            h.record(def, v, at, step);
            *slot = Slot::Histogram(h);
        }
    }
}

/// A metric's `le` bounds in HDR units.
fn hdr_bounds(def: &MetricDef) -> Vec<u64> {
    def.buckets
        .iter()
        .map(|b| (b * def.hdr_scale * (1.0 + 1e-9)).floor() as u64)
        .collect()
}

/// `record` grows the histogram to fit; only a full u32 count makes it fail.
fn record_hdr(hdr: &mut Histogram<u32>, v: f64) {
    let v = v.round() as u64;
    if hdr.record(v).is_err() {
        hdr.saturating_record(v);
    }
}

/// Cumulative counts at each `le` bound. An HDR bucket counts toward a bound when
/// its lowest value is within it, so a value exactly on a bound is always inside;
/// values up to HDR's precision above a bound may be counted in it too.
fn cumulative_counts(hdr: &Histogram<u32>, bounds: &[u64], out: &mut Vec<u64>) {
    let start = out.len();
    out.resize(start + bounds.len(), 0);
    let counts = &mut out[start..];
    for it in hdr.iter_recorded() {
        let low = hdr.lowest_equivalent(it.value_iterated_to());
        let first = bounds.partition_point(|&b| b < low);
        if let Some(c) = counts.get_mut(first) {
            *c += it.count_since_last_iteration();
        }
    }
    let mut acc = 0;
    for c in counts.iter_mut() {
        acc += *c;
        *c = acc;
    }
}

/// One series: a counter or gauge value, or a histogram's sum and count.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub namespace: usize,
    pub value: f64,
    pub count: u64,
}

impl Sample {
    fn value(namespace: usize, value: f64) -> Sample {
        Sample {
            namespace,
            value,
            count: 0,
        }
    }
}

#[derive(Debug, Default)]
pub struct FamilySnapshot {
    pub samples: Vec<Sample>,
    /// Histograms only: `buckets.len()` cumulative counts per sample, in order.
    pub buckets: Vec<u64>,
    /// Histograms with a window: per sample, one value per configured
    /// quantile (exposed unit; NaN when the window is empty).
    pub window_values: Vec<f64>,
    /// Histograms with exemplars: per sample, one slot per bucket and one
    /// above the last bound (the `+Inf` bucket's own).
    pub exemplars: Vec<Option<Exemplar>>,
    /// Histograms: each sample's native buckets.
    pub native: Vec<Native>,
}

/// Everything a scrape renders, detached from the fold.
pub struct Snapshot {
    pub catalog: Arc<Catalog>,
    pub namespaces: Vec<Arc<str>>,
    /// Parallel to `catalog.metrics`.
    pub families: Vec<FamilySnapshot>,
    pub events: Vec<(&'static str, u64)>,
}

impl Snapshot {
    pub fn series(&self) -> usize {
        let domain: usize = self
            .families
            .iter()
            .zip(&self.catalog.metrics)
            .map(|(f, d)| {
                let per_sample = match d.kind {
                    Kind::Histogram => d.buckets.len() + 3,
                    _ => 1,
                };
                // A window adds _sum and _count per sample, and its live quantiles.
                let window = d.window.as_ref().map_or(0, |_| 2 * f.samples.len());
                let quantiles = f.window_values.iter().filter(|v| !v.is_nan()).count();
                f.samples.len() * per_sample + window + quantiles
            })
            .sum();
        domain + self.events.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode, parse_rfc3339};
    use std::time::Duration;

    fn fold() -> Fold {
        Fold::new(Arc::new(Catalog::default_mapping()))
    }

    fn apply(f: &mut Fold, json: &str, now: Instant) -> Result<Outcome, Reason> {
        let ev = decode(json.as_bytes()).unwrap();
        let t = ev
            .timestamp
            .as_deref()
            .and_then(parse_rfc3339)
            .unwrap_or(1.0e9);
        f.apply(&ev, now, t)
    }

    fn ev(name: &str, ns: &str, msg: &str, ts: &str) -> String {
        format!(
            r#"{{"id":"{name}{ns}{msg}{ts}","name":"{name}","namespace":"{ns}","timestamp":"{ts}","payload":{{"userIds":["a","b"],"message":"{msg}"}}}}"#
        )
    }

    fn family<'a>(s: &'a Snapshot, name: &str) -> &'a FamilySnapshot {
        let i = s
            .catalog
            .metrics
            .iter()
            .position(|m| m.name == name)
            .unwrap();
        &s.families[i]
    }

    /// DS wait values in ms → (cumulative bucket counts, count, sum).
    fn ds_wait(values: &[&str]) -> (Vec<u64>, u64, f64) {
        let mut f = fold();
        let now = Instant::now();
        for ms in values {
            let e = ev("MetricAcquiringDsWaitTimeEvent", "g", ms, "");
            apply(&mut f, &e, now).unwrap();
        }
        let s = f.snapshot(now);
        let h = family(&s, "session_ds_acquisition_wait_seconds");
        (h.buckets.clone(), h.samples[0].count, h.samples[0].value)
    }

    #[test]
    fn histogram_sum_count_and_buckets() {
        // bounds 0.1 0.25 0.5 1 2 5 10 20 30 60 120 300
        let (buckets, count, sum) = ds_wait(&["100", "1532", "870", "300000"]);
        assert_eq!(buckets, vec![1, 1, 1, 2, 3, 3, 3, 3, 3, 3, 3, 4]);
        assert_eq!(count, 4);
        assert!((sum - 302.502).abs() < 1e-9);
    }

    #[test]
    fn sums_do_not_depend_on_arrival_order() {
        let values = [32.622, 0.1, 1e-9, 15664.145, 0.3, 86399.999, 2.5e-3];
        let (mut a, mut b) = (Exact::default(), Exact::default());
        values.iter().for_each(|&v| a.add(v));
        values.iter().rev().for_each(|&v| b.add(v));
        assert_eq!(a.get().to_bits(), b.get().to_bits());
        let mut whole = Exact::default();
        (0..1000).for_each(|_| whole.add(1.0));
        assert_eq!(whole.get(), 1000.0);
    }

    #[test]
    fn bucket_bounds_are_exact() {
        // Within HDR's 1% of a bound, on each side of it.
        let values = ["1000", "1001", "2000", "2005", "299999", "300000", "300001"];
        let (buckets, count, _) = ds_wait(&values);
        assert_eq!(buckets, vec![0, 0, 0, 1, 3, 4, 4, 4, 4, 4, 4, 6]);
        assert_eq!(count, 7);
    }

    #[test]
    fn gauge_keeps_latest_by_event_time_and_expires() {
        let mut f = fold();
        let t0 = Instant::now();
        let name = "MetricTotalActiveSessionEvent";
        apply(&mut f, &ev(name, "g", "10", "2026-11-22T10:00:02Z"), t0).unwrap();
        apply(&mut f, &ev(name, "g", "7", "2026-11-22T10:00:01Z"), t0).unwrap();
        let s = f.snapshot(t0);
        assert_eq!(family(&s, "session_active_sessions").samples[0].value, 10.0);
        let later = t0 + Duration::from_secs(601);
        assert!(family(&f.snapshot(later), "session_active_sessions")
            .samples
            .is_empty());
    }

    #[test]
    fn namespaces_past_the_limit_overflow() {
        let cat = Catalog::from_yaml(
            "limits: {max_namespaces: 2}\nmappings:\n  - {event: A, metric: a_total, type: counter}\n",
        )
        .unwrap();
        let mut f = Fold::new(Arc::new(cat));
        let now = Instant::now();
        let outcomes: Vec<_> = ["x", "y", "z", "w", "x"]
            .iter()
            .map(|ns| apply(&mut f, &ev("A", ns, "", ""), now).unwrap())
            .collect();
        use Outcome::*;
        assert_eq!(outcomes, [Folded, Folded, Overflowed, Overflowed, Folded]);
        let s = f.snapshot(now);
        let total: f64 = s.families[0].samples.iter().map(|s| s.value).sum();
        assert_eq!(total, 5.0);
        assert_eq!(s.namespaces.len(), 3);
    }

    #[test]
    fn rejected_events_change_nothing() {
        let mut f = fold();
        let now = Instant::now();
        let bad = ev("MetricAcquiringDsWaitTimeEvent", "g", "soon", "");
        assert_eq!(apply(&mut f, &bad, now), Err(Reason::InvalidValue));
        let nons = r#"{"name":"MetricAcquiringDsEvent"}"#;
        assert_eq!(apply(&mut f, nons, now), Err(Reason::MissingNamespace));
        let long = ev("MetricAcquiringDsEvent", &"n".repeat(200), "", "");
        assert_eq!(apply(&mut f, &long, now), Err(Reason::InvalidNamespace));
        assert_eq!(f.namespace_count(), 0);
        // Rejected events still count as seen by name.
        assert_eq!(f.snapshot(now).events.len(), 2);
    }

    #[test]
    fn duplicates_are_dropped_within_the_window() {
        let mut f = fold().with_dedup(2);
        let now = Instant::now();
        let e = |id: &str| {
            format!(r#"{{"id":"{id}","name":"MetricAcquiringDsEvent","namespace":"g"}}"#)
        };
        let got: Vec<_> = ["a", "a", "b", "c", "a"]
            .iter()
            .map(|id| apply(&mut f, &e(id), now).unwrap())
            .collect();
        use Outcome::*;
        assert_eq!(got, [Folded, Duplicate, Folded, Folded, Folded]);
    }

    #[test]
    fn windowed_quantiles_cover_recent_values_only() {
        let mut f = fold();
        let t0 = f.started;
        for ms in 1..=100 {
            let e = ev("MetricAcquiringDsWaitTimeEvent", "g", &ms.to_string(), "");
            apply(&mut f, &e, t0).unwrap();
        }
        let window = |s: &Snapshot| {
            family(s, "session_ds_acquisition_wait_seconds")
                .window_values
                .clone()
        };
        // p50, p90, p99 of 1..=100 ms, exact at this range.
        assert_eq!(window(&f.snapshot(t0)), vec![0.05, 0.09, 0.099]);
        // Six minutes later the window is empty, the histogram still counts all.
        let later = t0 + Duration::from_secs(360);
        assert!(window(&f.snapshot(later)).iter().all(|v| v.is_nan()));
        let e = ev("MetricAcquiringDsWaitTimeEvent", "g", "2000", "");
        apply(&mut f, &e, later).unwrap();
        let s = f.snapshot(later);
        assert_eq!(window(&s), vec![2.0, 2.0, 2.0]);
        // 12 buckets + Inf + sum + count, then the window's 3 quantiles + sum + count.
        assert_eq!(s.series(), 15 + 5 + s.events.len());
        assert_eq!(
            family(&s, "session_ds_acquisition_wait_seconds").samples[0].count,
            101
        );
    }

    #[test]
    fn reload_keeps_state_of_unchanged_metrics() {
        let mut f = fold();
        let now = Instant::now();
        apply(&mut f, &ev("MetricAcquiringDsEvent", "g", "", ""), now).unwrap();
        apply(
            &mut f,
            &ev("MetricAcquiringDsWaitTimeEvent", "g", "1500", ""),
            now,
        )
        .unwrap();
        let yaml = crate::config::DEFAULT_MAPPING.replace(
            "[0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]",
            "[1, 2]",
        );
        f.reconfigure(Arc::new(Catalog::from_yaml(&yaml).unwrap()));
        let s = f.snapshot(now);
        assert_eq!(
            family(&s, "session_ds_acquisitions_total").samples[0].value,
            1.0
        );
        assert_eq!(
            family(&s, "session_ds_acquisition_wait_seconds").buckets,
            vec![0, 1]
        );
    }
}
