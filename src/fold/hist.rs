//! One histogram series: exact classic buckets, HDR (for re-bucketing and
//! windows), native buckets, and the exemplars of its buckets.

use hdrhistogram::Histogram;

use super::native::Native;
use super::window::Window;
use super::{At, Exact, Start};
use crate::config::MetricDef;

#[derive(Debug, Clone)]
pub(super) struct Hist {
    /// Every value at 1% precision: re-buckets when the bounds change on
    /// reload, and feeds nothing else.
    pub(super) hdr: Histogram<u32>,
    /// Exact counts per configured `le` bound (not cumulative; values above
    /// the last bound are `count` minus their sum), compared as written.
    pub(super) buckets: Vec<u64>,
    /// Exact, from the converted values rather than HDR's rounded ones.
    pub(super) sum: Exact,
    pub(super) count: u64,
    pub(super) window: Option<Box<Window>>,
    /// Mappings with `exemplars`: the latest traced observation of each
    /// bucket that has one, by bucket (the last is above the last bound).
    /// Not checkpointed.
    pub(super) exemplars: Vec<Traced>,
    /// Native-histogram buckets of the exact values. Not checkpointed:
    /// rebuilt from HDR on restore.
    pub(super) native: Native,
    pub(super) start: Start,
}

/// One observation with the trace it came from.
#[derive(Debug, Clone)]
pub(super) struct Traced {
    pub(super) bucket: u32,
    pub(super) value: f64,
    /// The event's time, Unix seconds.
    pub(super) time: f64,
    pub(super) trace_id: TraceBytes,
}

/// Trace ids this long or shorter are kept inline: W3C and B3 (32 hex
/// digits), X-Ray (35 characters) and Jaeger ids fit, so recording or copying
/// an exemplar touches one cache line and allocates nothing.
const INLINE_TRACE: usize = 38;

/// A trace id's bytes, checked by `event::check_trace_id` (ASCII).
#[derive(Debug, Clone)]
pub(super) enum TraceBytes {
    Inline { len: u8, bytes: [u8; INLINE_TRACE] },
    Boxed(Box<[u8]>),
}

impl TraceBytes {
    fn new(t: &[u8]) -> TraceBytes {
        match t.len() {
            len @ 0..=INLINE_TRACE => {
                let mut bytes = [0; INLINE_TRACE];
                bytes[..len].copy_from_slice(t);
                TraceBytes::Inline {
                    len: len as u8,
                    bytes,
                }
            }
            _ => TraceBytes::Boxed(t.into()),
        }
    }

    fn set(&mut self, t: &[u8]) {
        match self {
            TraceBytes::Boxed(b) if b.len() == t.len() => b.copy_from_slice(t),
            _ => *self = TraceBytes::new(t),
        }
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            TraceBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            TraceBytes::Boxed(b) => b,
        }
    }
}

impl Hist {
    pub(super) fn new(def: &MetricDef, start: Start) -> Hist {
        Hist {
            start,
            hdr: Histogram::new(def.sigfig).expect("sigfig validated to 1..=5"),
            buckets: vec![0; def.buckets.len()],
            sum: Exact::default(),
            count: 0,
            window: def
                .window
                .as_ref()
                .map(|_| Box::new(Window::new(def.sigfig))),
            exemplars: Vec::new(),
            native: Native::new(def.native_schema),
        }
    }

    pub(super) fn record(&mut self, def: &MetricDef, v: f64, at: &At, step: impl FnOnce() -> u64) {
        let scaled = v * def.hdr_scale;
        record_hdr(&mut self.hdr, scaled);
        let bucket = def.buckets.partition_point(|&b| b < v);
        if let Some(c) = self.buckets.get_mut(bucket) {
            *c += 1;
        }
        self.native.record(v);
        if let (true, Some(trace)) = (def.exemplars, at.trace) {
            let (trace, b) = (trace.as_bytes(), bucket as u32);
            match self.exemplars.binary_search_by_key(&b, |e| e.bucket) {
                Ok(i) => {
                    let e = &mut self.exemplars[i];
                    e.trace_id.set(trace);
                    (e.value, e.time) = (v, at.event_time);
                }
                Err(i) => self.exemplars.insert(
                    i,
                    Traced {
                        bucket: b,
                        value: v,
                        time: at.event_time,
                        trace_id: TraceBytes::new(trace),
                    },
                ),
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
    pub(super) fn rebucket(&mut self, def: &MetricDef) {
        self.exemplars.clear();
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

/// A metric's `le` bounds in HDR units.
pub(super) fn hdr_bounds(def: &MetricDef) -> Vec<u64> {
    def.buckets
        .iter()
        .map(|b| (b * def.hdr_scale * (1.0 + 1e-9)).floor() as u64)
        .collect()
}

/// `record` grows the histogram to fit; only a full u32 count makes it fail.
pub(super) fn record_hdr(hdr: &mut Histogram<u32>, v: f64) {
    let v = v.round() as u64;
    if hdr.record(v).is_err() {
        hdr.saturating_record(v);
    }
}

/// Cumulative counts at each `le` bound. An HDR bucket counts toward a bound when
/// its lowest value is within it, so a value exactly on a bound is always inside;
/// values up to HDR's precision above a bound may be counted in it too.
pub(super) fn cumulative_counts(hdr: &Histogram<u32>, bounds: &[u64], out: &mut Vec<u64>) {
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
