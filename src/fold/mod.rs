//! Per-namespace metric state. Pure and synchronous: the ingest loop is its only
//! writer, a scrape takes a compact [`Snapshot`] and renders it unlocked, and a
//! checkpoint ([`checkpoint`]) writes the whole state out and reads it back.

mod checkpoint;
mod dedup;
mod exact;
mod hist;
mod namespaces;
pub mod native;
mod snapshot;
mod window;

pub use checkpoint::{CheckpointError, Image, Restored, Resume, SlotState};
use dedup::{Dedup, NO_SLOT};
use exact::Exact;
use hist::{record_hdr, Hist};
use namespaces::{Namespace, Namespaces};
use native::Native;
pub use snapshot::{Exemplar, FamilySnapshot, Names, Sample, SampleExemplars, SliSample, Snapshot};
use window::{step_nanos, window_step, Window, WINDOW_STEPS};

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Instant;

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

#[derive(Debug, Clone)]
enum Slot {
    Empty,
    Counter {
        sum: Exact,
        /// When this series began: see [`Start`].
        start: Start,
    },
    Gauge {
        value: f64,
        /// Event time (Unix seconds) of the value, so late events do not win.
        event_time: f64,
        seen: Instant,
    },
    Histogram(Box<Hist>),
}

/// One namespace's count of an SLO's events: good ones came in at or under
/// its threshold. `start` is when the first was counted (see [`Start`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sli {
    pub good: u64,
    pub bad: u64,
    pub start: Start,
}

impl Sli {
    fn count(&mut self, good: bool, clock: fn() -> f64) {
        if self.good == 0 && self.bad == 0 {
            self.start = Some(clock());
        }
        match good {
            true => self.good += 1,
            false => self.bad += 1,
        }
    }
}

/// When a counter or histogram series began (Unix seconds): when this
/// exporter first held it, kept across a restore. `None` for a series
/// restored from a checkpoint written before starts were kept (format 1 and
/// 2): an unknown start is not sent, because a guessed one would make a
/// Prometheus that ingests start timestamps count the whole value again.
pub type Start = Option<f64>;

pub struct Fold {
    catalog: Arc<Catalog>,
    namespaces: Namespaces,
    /// `session_events_total` by seed event name, `other` last.
    events: Vec<u64>,
    /// When each of `events` began.
    event_starts: Vec<Start>,
    /// Unix seconds now: dates new series.
    clock: fn() -> f64,
    dedup: Option<Dedup>,
    /// With slots, their number: each remembered id keeps its slot.
    slots: u32,
    /// Values of one event, checked before any is applied.
    scratch: Vec<f64>,
    /// Time zero of the windows' steps.
    started: Instant,
    /// Observations recorded without their exemplar, by
    /// [`crate::event::TraceProblem::index`], until taken.
    exemplars_dropped: [u64; 2],
}

impl Fold {
    pub fn new(catalog: Arc<Catalog>) -> Fold {
        Fold {
            catalog,
            namespaces: Namespaces::default(),
            events: vec![0; seed::EVENT_NAMES.len() + 1],
            event_starts: vec![None; seed::EVENT_NAMES.len() + 1],
            clock: crate::clock::unix_now,
            dedup: None,
            slots: 0,
            scratch: Vec::new(),
            started: Instant::now(),
            exemplars_dropped: [0; 2],
        }
    }

    /// Drop events whose `id` was among the last `window` seen (0 turns it off).
    pub fn with_dedup(mut self, window: usize) -> Fold {
        let key = RandomState::new().hash_one(0x5e55_1011_u64);
        self.dedup = (window > 0).then(|| Dedup::new(window, key));
        self
    }

    /// Remember each event id with its namespace's slot of `slots`, so a
    /// slot's ids move with it ([`Image::encode_slots`], [`Fold::adopt`]).
    pub fn set_slots(&mut self, slots: u32) {
        self.slots = slots;
    }

    /// An empty fold like this one (mapping, slots, de-duplication window),
    /// to restore a slot's state into.
    pub fn empty_like(&self) -> Fold {
        let mut fold = Fold::new(self.catalog.clone());
        fold.slots = self.slots;
        fold.dedup = self.dedup.as_ref().map(|d| Dedup::new(d.cap, d.key));
        fold
    }

    /// Date new series by `clock` (Unix seconds) instead of the system
    /// clock: for output that must not change from run to run.
    pub fn with_clock(mut self, clock: fn() -> f64) -> Fold {
        self.clock = clock;
        self
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Keep only the namespaces `keep` names (a slot that moved away);
    /// returns how many went.
    pub fn retain_namespaces(&mut self, keep: impl Fn(&str) -> bool) -> usize {
        self.namespaces.retain(keep)
    }

    /// Let slot `slot` of `slots` go: its namespaces. The event counts
    /// (`session_events_total`) stay: they are this replica's, a counter
    /// that must not go down.
    pub fn drop_slot(&mut self, slot: u32, slots: u32) {
        self.namespaces
            .retain(|ns| crate::partition::slot_of(ns, slots) != slot);
    }

    /// Take slot `slot`'s namespaces and remembered event ids (restored
    /// into `other`, a fold from [`Fold::empty_like`]). A namespace this fold
    /// holds already keeps its own; returns how many were taken.
    pub fn adopt(&mut self, slot: u32, other: Fold) -> usize {
        let mut taken = 0;
        for ns in other.namespaces.list {
            if !self.namespaces.index.contains_key(&ns.name) {
                self.namespaces.push(ns);
                taken += 1;
            }
        }
        if let (Some(d), Some(o)) = (&mut self.dedup, other.dedup) {
            // Hashed with the key they were stored with, the slot's own.
            d.adopt(slot, o.key, o.order.iter().map(|&(h, _)| h));
        }
        taken
    }

    pub fn namespace_count(&self) -> usize {
        self.namespaces.list.len()
    }

    /// Fold one decoded event. `now` dates gauge updates for expiry; `event_time`
    /// (Unix seconds: the event's timestamp, else the receive time) orders them.
    pub fn apply(&mut self, ev: &Event, now: Instant, event_time: f64) -> Result<Outcome, Reason> {
        if let (Some(d), Some(id)) = (self.dedup.as_mut(), ev.id.as_deref()) {
            let slot = match (self.slots, ev.namespace.as_deref()) {
                (0, _) | (_, None) => NO_SLOT,
                (slots, Some(ns)) => crate::partition::slot_of(ns, slots),
            };
            if !id.is_empty() && d.is_duplicate(id, slot) {
                return Ok(Outcome::Duplicate);
            }
        }
        let index = seed::event_index(&ev.name);
        if self.events[index] == 0 {
            self.event_starts[index] = Some((self.clock)());
        }
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
        // Only observations that keep exemplars read the trace id.
        let metrics = &self.catalog.metrics;
        let keeps = rules.iter().any(|r| metrics[r.metric].exemplars);
        let trace = match keeps.then(|| ev.trace()).flatten() {
            Some(Ok(t)) => Some(t),
            Some(Err(p)) => {
                self.exemplars_dropped[p.index()] += 1;
                None
            }
            None => None,
        };
        let (slot_ns, outcome) = self.namespaces.find_or_insert(ns, &self.catalog);
        let Namespace {
            name, slots, slis, ..
        } = self.namespaces.get_mut(slot_ns);
        let at = At {
            event_time,
            now,
            trace: trace.as_deref(),
            clock: self.clock,
        };
        for (rule, &v) in rules.iter().zip(&self.scratch) {
            let def = &self.catalog.metrics[rule.metric];
            record(&mut slots[rule.metric], def, v, &at, self.started);
            for &k in &rule.slos {
                let good = v <= self.catalog.slos[k].target_of(name).threshold;
                slis[k].count(good, self.clock);
            }
        }
        Ok(outcome)
    }

    /// Observations recorded without their exemplar since the last call, by
    /// [`crate::event::TraceProblem::index`].
    pub fn take_exemplars_dropped(&mut self) -> [u64; 2] {
        std::mem::take(&mut self.exemplars_dropped)
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
            let slot = &mut self.namespaces.get_mut(slot_ns).slots[rule.metric];
            let at = At {
                event_time,
                now,
                trace: None,
                clock: self.clock,
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
        let carry_slis: Vec<Option<usize>> = catalog
            .slos
            .iter()
            .map(|new| {
                self.catalog.slos.iter().position(|old| {
                    old.name == new.name
                        && self.catalog.metrics[old.metric].name == catalog.metrics[new.metric].name
                })
            })
            .collect();
        for ns in &mut self.namespaces.list {
            let ns = Arc::make_mut(ns);
            ns.slis = carry_slis
                .iter()
                .map(|c| c.map_or(Sli::default(), |i| ns.slis[i]))
                .collect();
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
                        h.exemplars.clear();
                    }
                    if old.native_schema != def.native_schema {
                        h.native = Native::from_hdr(&h.hdr, def.hdr_scale, def.native_schema);
                    }
                }
            }
        }
        self.catalog = catalog;
    }
}

/// When an observation happened, and the trace it carries.
struct At<'a> {
    event_time: f64,
    /// Dates gauge updates for expiry and window steps.
    now: Instant,
    trace: Option<&'a str>,
    /// Dates a new series.
    clock: fn() -> f64,
}

/// `started` dates the steps of windowed histograms.
fn record(slot: &mut Slot, def: &MetricDef, v: f64, at: &At, started: Instant) {
    let step = || window_step(def, started, at.now);
    match (slot, def.kind) {
        (Slot::Counter { sum, .. }, _) => sum.add(v),
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
            let mut sum = Exact::default();
            sum.add(v);
            let start = Some((at.clock)());
            *slot = Slot::Counter { sum, start };
        }
        (slot @ Slot::Empty, Kind::Gauge) => {
            *slot = Slot::Gauge {
                value: v,
                event_time: at.event_time,
                seen: at.now,
            }
        }
        (slot @ Slot::Empty, Kind::Histogram) => {
            let mut h = Box::new(Hist::new(def, Some((at.clock)())));
            h.record(def, v, at, step);
            *slot = Slot::Histogram(h);
        }
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
    fn exemplars_keep_the_latest_trace_of_each_bucket_whatever_its_length() {
        let mut f = fold();
        let now = Instant::now();
        let wait = |trace: &str, ms: u32| {
            format!(
                r#"{{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"g","traceId":"{trace}","payload":{{"message":"{ms}"}}}}"#
            )
        };
        // Inline and boxed ids, replacing each other in one bucket (le=2).
        let ids: Vec<String> = [32, 38, 39, 120, 5, 120, 38]
            .iter()
            .enumerate()
            .map(|(i, &n)| format!("{i}{}", "x".repeat(n - 1)))
            .collect();
        let slots = 13;
        for (i, id) in ids.iter().enumerate() {
            apply(&mut f, &wait(id, 1500 + i as u32), now).unwrap();
            let s = f.snapshot(now);
            let ex = family(&s, "session_ds_acquisition_wait_seconds").exemplars(0, slots);
            let (e, trace) = ex.get(4).expect("the le=2 bucket's exemplar");
            assert_eq!((trace, e.value), (id.as_str(), 1.5 + i as f64 / 1000.0));
        }
        // Another bucket gets its own; untraced events leave both alone.
        apply(&mut f, &wait("fast", 50), now).unwrap();
        apply(
            &mut f,
            &ev("MetricAcquiringDsWaitTimeEvent", "g", "60", ""),
            now,
        )
        .unwrap();
        let s = f.snapshot(now);
        let ex = family(&s, "session_ds_acquisition_wait_seconds").exemplars(0, slots);
        let present: Vec<usize> = (0..slots).filter(|&b| ex.get(b).is_some()).collect();
        assert_eq!(present, [0, 4]);
        assert_eq!(ex.get(0).unwrap().1, "fast");
    }

    #[test]
    fn trace_ids_are_checked_only_for_observations_that_keep_exemplars() {
        let mut f = fold();
        let now = Instant::now();
        let with_trace = |name: &str, msg: &str, trace: &str| {
            format!(
                r#"{{"name":"{name}","namespace":"g","traceId":"{trace}","payload":{{"message":"{msg}"}}}}"#
            )
        };
        let long = "a".repeat(121);
        // No exemplars on counters or gauges: their trace ids are not read.
        apply(
            &mut f,
            &with_trace("MetricAcquiringDsEvent", "", "bad id"),
            now,
        )
        .unwrap();
        apply(
            &mut f,
            &with_trace("MetricTotalActiveSessionEvent", "3", &long),
            now,
        )
        .unwrap();
        assert_eq!(f.take_exemplars_dropped(), [0, 0]);
        // A rejected event records nothing, so drops nothing.
        let bad = with_trace("MetricAcquiringDsWaitTimeEvent", "soon", "bad id");
        assert_eq!(apply(&mut f, &bad, now), Err(Reason::InvalidValue));
        assert_eq!(f.take_exemplars_dropped(), [0, 0]);
        // Observations that keep exemplars: counted once each, then reset.
        for trace in [long.as_str(), "bad id", "", r"a\u0022b"] {
            let e = with_trace("MetricAcquiringDsWaitTimeEvent", "100", trace);
            apply(&mut f, &e, now).unwrap();
        }
        assert_eq!(f.take_exemplars_dropped(), [1, 3]);
        assert_eq!(f.take_exemplars_dropped(), [0, 0]);
        // An escaped id that decodes to a good one is kept.
        let e = with_trace("MetricAcquiringDsWaitTimeEvent", "100", r"t\u0031");
        apply(&mut f, &e, now).unwrap();
        let s = f.snapshot(now);
        let ex = family(&s, "session_ds_acquisition_wait_seconds").exemplars(0, 13);
        assert_eq!(ex.get(0).map(|e| e.1), Some("t1"));
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
        // 12 buckets + Inf + sum + count, then the window's 3 quantiles + sum
        // + count, then the SLO's good, bad, objective and threshold.
        assert_eq!(s.series(), 15 + 5 + 4 + s.events.len());
        assert_eq!(
            family(&s, "session_ds_acquisition_wait_seconds").samples[0].count,
            101
        );
    }

    /// (namespace, good, bad, threshold, objective) of every SLI sample.
    fn slis(f: &mut Fold) -> Vec<(String, u64, u64, f64, f64)> {
        let s = f.snapshot(Instant::now());
        s.slis
            .iter()
            .map(|x| {
                let ns = s.namespaces.get(x.namespace).to_string();
                (
                    ns,
                    x.sli.good,
                    x.sli.bad,
                    x.target.threshold,
                    x.target.objective,
                )
            })
            .collect()
    }

    fn slo_catalog(extra: &str) -> Arc<Catalog> {
        let yaml = crate::config::DEFAULT_MAPPING
            .replace("    period: 30d\n", &format!("    period: 30d\n{extra}"));
        Arc::new(Catalog::from_yaml(&yaml).unwrap())
    }

    #[test]
    fn slis_count_every_event_against_its_namespace_threshold() {
        let big = "    namespaces:\n      big: {threshold: 10s, objective: 0.995}\n";
        let mut f = Fold::new(slo_catalog(big));
        let now = Instant::now();
        let wait = |ns: &str, msg: &str| ev("MetricAcquiringDsWaitTimeEvent", ns, msg, "");
        // At the threshold is good, a millisecond over is bad; in every encoding.
        for (ns, msg) in [
            ("g", "30000"),
            ("g", "30001"),
            ("g", "{\\\"value\\\":29999}"),
            ("g", "1"),
            ("big", "10000"),
            ("big", "10001"),
            ("big", "30000"),
        ] {
            apply(&mut f, &wait(ns, msg), now).unwrap();
        }
        // Rejected values and other events count nowhere.
        assert!(apply(&mut f, &wait("g", "soon"), now).is_err());
        apply(&mut f, &ev("MetricAcquiringDsEvent", "g", "", ""), now).unwrap();
        apply(
            &mut f,
            &ev("MetricMatchLengthDurationEvent", "h", "900000", ""),
            now,
        )
        .unwrap();
        assert_eq!(
            slis(&mut f),
            [
                ("big".into(), 1, 2, 10.0, 0.995),
                ("g".into(), 3, 1, 30.0, 0.99)
            ]
        );
        // A reload's new threshold applies to new events; the counts stay.
        f.reconfigure(slo_catalog(&big.replace("10s", "60s")));
        apply(&mut f, &wait("big", "59000"), now).unwrap();
        assert_eq!(slis(&mut f)[0], ("big".into(), 2, 2, 60.0, 0.995));
        // A mapping without the SLO drops its counts.
        let none = crate::config::DEFAULT_MAPPING
            .split("slos:")
            .next()
            .unwrap();
        f.reconfigure(Arc::new(Catalog::from_yaml(none).unwrap()));
        assert!(slis(&mut f).is_empty());
    }

    #[test]
    fn slis_past_the_namespace_limit_count_in_the_overflow_series() {
        let yaml =
            crate::config::DEFAULT_MAPPING.replace("max_namespaces: 10000", "max_namespaces: 1");
        let mut f = Fold::new(Arc::new(Catalog::from_yaml(&yaml).unwrap()));
        let now = Instant::now();
        for (ns, ms) in [("a", "1"), ("b", "40000"), ("c", "2")] {
            apply(
                &mut f,
                &ev("MetricAcquiringDsWaitTimeEvent", ns, ms, ""),
                now,
            )
            .unwrap();
        }
        assert_eq!(
            slis(&mut f),
            [
                (OVERFLOW_NAMESPACE.into(), 1, 1, 30.0, 0.99),
                ("a".into(), 1, 0, 30.0, 0.99)
            ]
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
