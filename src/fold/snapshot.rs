//! What a scrape renders, copied out of the fold under its lock: flat arrays
//! in the order every format writes them (namespaces by name), so copying
//! is short and rendering needs no sort. Nothing in it points back into the
//! fold; it holds no per-sample allocation.

use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::native::NativeView;
use super::{window_step, Fold, Namespace, Slot};
use crate::config::{Catalog, Kind};
use crate::seed;

/// What a snapshot reads: the fold itself, or a checkpoint's image of it.
pub(super) struct View<'a> {
    pub(super) catalog: &'a Arc<Catalog>,
    pub(super) list: &'a [Arc<Namespace>],
    /// Indexes into `list`, by name.
    pub(super) by_name: &'a [usize],
    pub(super) events: &'a [u64],
    pub(super) event_starts: &'a [super::Start],
    /// Time zero of the windows' steps.
    pub(super) started: Instant,
}

impl Fold {
    /// Copy out what a scrape needs; the caller renders without the lock.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        View {
            catalog: &self.catalog,
            list: &self.namespaces.list,
            by_name: &self.namespaces.by_name,
            events: &self.events,
            event_starts: &self.event_starts,
            started: self.started,
        }
        .snapshot(now)
    }
}

impl View<'_> {
    pub(super) fn snapshot(&self, now: Instant) -> Snapshot {
        let View {
            catalog,
            list,
            by_name,
            events,
            event_starts,
            started,
        } = *self;
        let live = list.len();
        let mut families: Vec<FamilySnapshot> = catalog
            .metrics
            .iter()
            .map(|d| FamilySnapshot::with_capacity(live, d.buckets.len()))
            .collect();
        let mut merged: Vec<Histogram<u32>> = catalog
            .metrics
            .iter()
            .map(|d| Histogram::new(d.sigfig).expect("sigfig validated to 1..=5"))
            .collect();
        let mut names = Names::with_capacity(live);
        let mut slis = Vec::new();
        for (ni, &i) in by_name.iter().enumerate() {
            if ni % WARM_AHEAD == 0 {
                let next = by_name[ni..].iter().take(WARM_AHEAD);
                black_box(next.map(|&j| warm(&list[j])).sum::<u64>());
            }
            let ns = &list[i];
            names.push(&ns.name);
            for (slo, (sli, def)) in ns.slis.iter().zip(&catalog.slos).enumerate() {
                if sli.good + sli.bad > 0 {
                    slis.push(SliSample {
                        namespace: ni,
                        slo,
                        sli: *sli,
                        target: def.target_of(&ns.name),
                    });
                }
            }
            for (((slot, def), fam), merged) in ns
                .slots
                .iter()
                .zip(&catalog.metrics)
                .zip(&mut families)
                .zip(&mut merged)
            {
                match slot {
                    Slot::Empty => continue,
                    Slot::Counter { sum, start } => fam.samples.push(Sample {
                        start: *start,
                        ..Sample::value(ni, sum.get())
                    }),
                    Slot::Gauge { value, seen, .. } => {
                        if now.saturating_duration_since(*seen) > def.ttl {
                            continue;
                        }
                        fam.samples.push(Sample::value(ni, *value));
                    }
                    Slot::Histogram(h) => {
                        let s = fam.samples.len();
                        fam.samples.push(Sample {
                            namespace: ni,
                            value: h.sum.get(),
                            count: h.count,
                            start: h.start,
                        });
                        let mut below = 0;
                        fam.buckets.extend(h.buckets.iter().map(|c| {
                            below += c;
                            below
                        }));
                        let base = s * (def.buckets.len() + 1);
                        for t in &h.exemplars {
                            let start = fam.traces.len();
                            fam.traces.extend_from_slice(t.trace_id.as_bytes());
                            fam.exemplars.push(Exemplar {
                                slot: base + t.bucket as usize,
                                value: t.value,
                                time: t.time,
                                trace: start..fam.traces.len(),
                            });
                        }
                        let start = fam.native_buckets.len();
                        fam.native_buckets.extend_from_slice(&h.native.buckets);
                        fam.native.push(NativeHead {
                            schema: h.native.schema,
                            zero_count: h.native.zero_count,
                            buckets: start..fam.native_buckets.len(),
                        });
                        if let (Some(w), Some(wd)) = (&h.window, &def.window) {
                            let step = window_step(def, started, now);
                            let out = &mut fam.window_values;
                            w.quantiles(step, wd, def.hdr_scale, merged, out);
                        }
                    }
                }
            }
        }
        let counted = || events.iter().enumerate().filter(|(_, &n)| n > 0);
        let event_starts = counted().map(|(i, _)| event_starts[i]).collect();
        let events = counted().map(|(i, &n)| (seed::event_label(i), n)).collect();
        Snapshot {
            catalog: catalog.clone(),
            namespaces: names,
            families,
            events,
            event_starts,
            slis,
        }
    }
}

/// The snapshot waits on memory, not on arithmetic: each histogram is a few
/// allocations of its own, and namespaces are visited by name, not by address.
/// Reading the first word of each for the next `WARM_AHEAD` namespaces at
/// once lets those loads overlap, where the copy itself issues them one after
/// another (BENCHMARKS.md gives what it took off the snapshot).
const WARM_AHEAD: usize = 16;

fn warm(ns: &Namespace) -> u64 {
    let mut x = ns.name.len() as u64;
    for slot in &ns.slots {
        if let Slot::Histogram(h) = slot {
            x += h.count + h.buckets.first().copied().unwrap_or(0);
            x += h.native.buckets.first().map_or(0, |b| b.1);
            x += h.exemplars.first().map_or(0, |e| u64::from(e.bucket));
            if let Some(w) = &h.window {
                x += w.version;
            }
        }
    }
    x
}

/// Namespace names, sorted, in one buffer.
#[derive(Debug, Default)]
pub struct Names {
    text: String,
    ends: Vec<usize>,
}

impl Names {
    fn with_capacity(n: usize) -> Names {
        Names {
            text: String::with_capacity(n * 24),
            ends: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, name: &str) {
        self.text.push_str(name);
        self.ends.push(self.text.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The name of namespace `i` (as [`Sample::namespace`] gives it).
    pub fn get(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |p| self.ends[p]);
        &self.text[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// One series: a counter or gauge value, or a histogram's sum and count.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Index into [`Snapshot::namespaces`].
    pub namespace: usize,
    pub value: f64,
    pub count: u64,
    /// Counters and histograms: when the series began.
    pub start: super::Start,
}

impl Sample {
    fn value(namespace: usize, value: f64) -> Sample {
        Sample {
            namespace,
            value,
            count: 0,
            start: None,
        }
    }
}

/// One namespace's count of one SLO's events, with the target it is held to
/// now (a reload's new target applies to new events; the counts stay).
#[derive(Debug, Clone, Copy)]
pub struct SliSample {
    /// Index into [`Snapshot::namespaces`].
    pub namespace: usize,
    /// Index into `catalog.slos`.
    pub slo: usize,
    pub sli: super::Sli,
    pub target: crate::config::Target,
}

/// A bucket's latest traced observation; its trace id lives in the family.
#[derive(Debug, Clone)]
pub struct Exemplar {
    /// sample × (bounds + 1) + bucket; the last bucket is above the last bound.
    slot: usize,
    pub value: f64,
    /// The event's time, Unix seconds.
    pub time: f64,
    trace: Range<usize>,
}

/// A histogram's native buckets; the buckets live in the family.
#[derive(Debug, Clone)]
struct NativeHead {
    schema: i8,
    zero_count: u64,
    buckets: Range<usize>,
}

#[derive(Debug, Default)]
pub struct FamilySnapshot {
    /// In namespace order (a namespace has at most one sample per family).
    pub samples: Vec<Sample>,
    /// Histograms only: `buckets.len()` cumulative counts per sample, in order.
    pub buckets: Vec<u64>,
    /// Histograms with a window: per sample, one value per configured
    /// quantile (exposed unit; NaN when the window is empty).
    pub window_values: Vec<f64>,
    /// Histograms with exemplars: those present, by slot.
    exemplars: Vec<Exemplar>,
    /// Their trace ids, one after another (ASCII).
    traces: Vec<u8>,
    /// Histograms: each sample's native histogram.
    native: Vec<NativeHead>,
    native_buckets: Vec<(i32, u64)>,
}

impl FamilySnapshot {
    fn with_capacity(samples: usize, bounds: usize) -> FamilySnapshot {
        FamilySnapshot {
            samples: Vec::with_capacity(samples),
            buckets: Vec::with_capacity(samples * bounds),
            ..Default::default()
        }
    }

    /// Sample `s`'s exemplars, of a histogram with `slots` buckets (its
    /// bounds and the one above them).
    pub fn exemplars(&self, s: usize, slots: usize) -> SampleExemplars<'_> {
        let from = self.exemplars.partition_point(|e| e.slot < s * slots);
        let to = self.exemplars.partition_point(|e| e.slot < (s + 1) * slots);
        SampleExemplars {
            family: self,
            list: &self.exemplars[from..to],
            base: s * slots,
        }
    }

    /// Sample `s`'s native histogram (histograms only).
    pub fn native(&self, s: usize) -> Option<NativeView<'_>> {
        self.native.get(s).map(|h| NativeView {
            schema: h.schema,
            zero_count: h.zero_count,
            buckets: &self.native_buckets[h.buckets.clone()],
        })
    }
}

/// One sample's exemplars, by bucket.
#[derive(Clone, Copy)]
pub struct SampleExemplars<'a> {
    family: &'a FamilySnapshot,
    list: &'a [Exemplar],
    base: usize,
}

impl<'a> SampleExemplars<'a> {
    /// Bucket `b`'s exemplar and its trace id.
    pub fn get(&self, b: usize) -> Option<(&'a Exemplar, &'a str)> {
        let e = self.list.iter().find(|e| e.slot == self.base + b)?;
        let trace = std::str::from_utf8(&self.family.traces[e.trace.clone()]).unwrap_or("");
        Some((e, trace))
    }
}

/// Everything a scrape renders, detached from the fold.
pub struct Snapshot {
    pub catalog: Arc<Catalog>,
    pub namespaces: Names,
    /// Parallel to `catalog.metrics`.
    pub families: Vec<FamilySnapshot>,
    pub events: Vec<(&'static str, u64)>,
    /// When each of `events` began.
    pub event_starts: Vec<super::Start>,
    /// By namespace, then SLO; only namespaces with an SLO event.
    pub slis: Vec<SliSample>,
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
        // Good and bad, the objective and the threshold.
        domain + self.events.len() + 4 * self.slis.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;

    fn wait(ns: &str, ms: u64, trace: &str) -> String {
        format!(
            r#"{{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"{ns}","traceId":"{trace}","payload":{{"message":"{ms}"}}}}"#
        )
    }

    #[test]
    fn samples_come_out_by_name_with_their_own_exemplars() {
        let mut f = Fold::new(Arc::new(Catalog::default_mapping()));
        let now = Instant::now();
        let acquired = r#"{"name":"MetricAcquiringDsEvent","namespace":"c"}"#.to_string();
        for e in [
            wait("b", 1500, "tb"),
            wait("c", 100, "tc"),
            acquired,
            wait("a", 250_000, "ta"),
        ] {
            f.apply(&decode(e.as_bytes()).unwrap(), now, 1.7e9).unwrap();
        }
        let snap = f.snapshot(now);
        assert_eq!(snap.namespaces.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        let family = |name: &str| {
            let i = snap.catalog.metrics.iter().position(|m| m.name == name);
            &snap.families[i.unwrap()]
        };
        let acquisitions = family("session_ds_acquisitions_total");
        assert_eq!(acquisitions.samples.len(), 1);
        assert_eq!(acquisitions.samples[0].namespace, 2);
        let waits = family("session_ds_acquisition_wait_seconds");
        let order: Vec<usize> = waits.samples.iter().map(|s| s.namespace).collect();
        assert_eq!(order, [0, 1, 2]);
        // Bounds 0.1 0.25 0.5 1 2 5 10 20 30 60 120 300, then the one above.
        let slots = 13;
        for (s, bucket, trace, value) in
            [(0, 11, "ta", 250.0), (1, 4, "tb", 1.5), (2, 0, "tc", 0.1)]
        {
            let ex = waits.exemplars(s, slots);
            let found: Vec<usize> = (0..slots).filter(|&b| ex.get(b).is_some()).collect();
            assert_eq!(found, [bucket], "sample {s}");
            let (e, id) = ex.get(bucket).unwrap();
            assert_eq!((id, e.value), (trace, value));
            let native = waits.native(s).unwrap();
            assert_eq!(native.buckets.iter().map(|b| b.1).sum::<u64>(), 1);
        }
    }
}
