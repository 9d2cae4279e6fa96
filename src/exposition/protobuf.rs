//! The Prometheus protobuf exposition: `io.prometheus.client.MetricFamily`
//! messages, each preceded by its length (varint), written by hand (the
//! format is small and stable; no code generator, no extra dependency).
//!
//! Every histogram carries its classic buckets (the text format's bounds,
//! with exemplars) and its native buckets (schema, zero bucket, spans and
//! deltas) with the exact `_sum` and `_count`: a Prometheus with native
//! histograms on reads the native form, one without reads the classic one.

use super::{families, Family, SloFamily};
use crate::config::{Kind, EVENTS_METRIC};
use crate::fold::native::{NativeView, ZERO_THRESHOLD};
use crate::fold::{Exemplar, Snapshot, Start};

pub const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

const LABEL: &str = "game_namespace";

/// metrics.proto's MetricType.
#[derive(Clone, Copy)]
enum Type {
    Counter = 0,
    Gauge = 1,
    Summary = 2,
    Untyped = 3,
    Histogram = 4,
}

/// Render the domain families of a snapshot, as the text format orders them.
pub fn render(snap: &Snapshot, out: &mut Vec<u8>) {
    for (_, family) in families(&snap.catalog) {
        match family {
            Family::Events => events(snap, out),
            Family::Metric(i) => metric(snap, i, out),
            Family::Window(i) => window(snap, i, out),
            Family::Slo(f) => slo(snap, f, out),
        }
    }
}

fn slo(snap: &Snapshot, f: SloFamily, out: &mut Vec<u8>) {
    if snap.slis.is_empty() {
        return;
    }
    let kind = match f.kind() {
        Kind::Counter => Type::Counter,
        _ => Type::Gauge,
    };
    family(out, f.name(), f.help(), kind, |out| {
        for sample in &snap.slis {
            let ns = snap.namespaces.get(sample.namespace);
            let slo = &snap.catalog.slos[sample.slo].name;
            for (result, v) in f.series(sample) {
                message(out, 4, |m| {
                    label(m, LABEL, ns);
                    label(m, "slo", slo);
                    if let Some(r) = result {
                        label(m, "result", r);
                    }
                    match kind {
                        Type::Counter => message(m, 3, |c| {
                            double(c, 1, v);
                            start(c, 3, sample.sli.start);
                        }),
                        _ => message(m, 2, |g| double(g, 1, v)),
                    }
                });
            }
        }
    });
}

fn metric(snap: &Snapshot, i: usize, out: &mut Vec<u8>) {
    let (def, fam) = (&snap.catalog.metrics[i], &snap.families[i]);
    if fam.samples.is_empty() {
        return;
    }
    let kind = match def.kind {
        Kind::Counter => Type::Counter,
        Kind::Gauge => Type::Gauge,
        Kind::Histogram => Type::Histogram,
    };
    family(out, &def.name, &def.help, kind, |out| {
        let bounds = def.buckets.len();
        let slots = bounds + 1;
        for (s, &sample) in fam.samples.iter().enumerate() {
            let ns = snap.namespaces.get(sample.namespace);
            message(out, 4, |m| {
                label(m, LABEL, ns);
                match def.kind {
                    Kind::Counter => message(m, 3, |c| {
                        double(c, 1, sample.value);
                        start(c, 3, sample.start);
                    }),
                    Kind::Gauge => message(m, 2, |g| double(g, 1, sample.value)),
                    Kind::Histogram => message(m, 7, |h| {
                        uint(h, 1, sample.count);
                        double(h, 2, sample.value);
                        let counts = &fam.buckets[s * bounds..(s + 1) * bounds];
                        let exemplars = fam.exemplars(s, slots);
                        for (b, (&le, &n)) in def.buckets.iter().zip(counts).enumerate() {
                            message(h, 3, |bucket| {
                                uint(bucket, 1, n);
                                double(bucket, 2, le);
                                if let Some(e) = exemplars.get(b) {
                                    message(bucket, 3, |x| exemplar(x, e));
                                }
                            });
                        }
                        start(h, 15, sample.start);
                        if let Some(n) = fam.native(s) {
                            native(h, n);
                        }
                    }),
                }
            });
        }
    });
}

/// Schema, zero bucket, positive spans and deltas (no negative values).
fn native(h: &mut Vec<u8>, n: NativeView) {
    sint(h, 5, n.schema as i64);
    double(h, 6, ZERO_THRESHOLD);
    uint(h, 7, n.zero_count);
    let mut prev_key: Option<i32> = None;
    let mut span: Option<(i32, u32)> = None;
    for &(key, _) in n.buckets {
        span = match (span, prev_key) {
            (Some((offset, len)), Some(p)) if key == p + 1 => Some((offset, len + 1)),
            (Some(done), Some(p)) => {
                spanmsg(h, done);
                Some((key - p - 1, 1))
            }
            _ => Some((key, 1)),
        };
        prev_key = Some(key);
    }
    if let Some(done) = span {
        spanmsg(h, done);
    }
    let mut prev = 0i64;
    for &(_, count) in n.buckets {
        sint(h, 13, count as i64 - prev);
        prev = count as i64;
    }
}

fn spanmsg(h: &mut Vec<u8>, (offset, length): (i32, u32)) {
    message(h, 12, |s| {
        sint(s, 1, offset as i64);
        uint(s, 2, length as u64);
    });
}

fn window(snap: &Snapshot, i: usize, out: &mut Vec<u8>) {
    let (def, fam) = (&snap.catalog.metrics[i], &snap.families[i]);
    let Some(w) = &def.window else { return };
    if fam.samples.is_empty() {
        return;
    }
    let q = w.quantiles.len();
    family(out, &w.name, &w.help, Type::Summary, |out| {
        for (s, &sample) in fam.samples.iter().enumerate() {
            message(out, 4, |m| {
                label(m, LABEL, snap.namespaces.get(sample.namespace));
                message(m, 4, |sum| {
                    uint(sum, 1, sample.count);
                    double(sum, 2, sample.value);
                    let values = &fam.window_values[s * q..(s + 1) * q];
                    for (quantile, v) in w.quantiles.iter().zip(values) {
                        if !v.is_nan() {
                            message(sum, 3, |x| {
                                double(x, 1, *quantile);
                                double(x, 2, *v);
                            });
                        }
                    }
                    start(sum, 4, sample.start);
                });
            });
        }
    });
}

fn events(snap: &Snapshot, out: &mut Vec<u8>) {
    if snap.events.is_empty() {
        return;
    }
    family(
        out,
        EVENTS_METRIC,
        "Session events received, by event name (seed names, else other).",
        Type::Counter,
        |out| {
            for ((name, n), &begun) in snap.events.iter().zip(&snap.event_starts) {
                message(out, 4, |m| {
                    label(m, "event", name);
                    message(m, 3, |c| {
                        double(c, 1, *n as f64);
                        start(c, 3, begun);
                    });
                });
            }
        },
    );
}

fn exemplar(x: &mut Vec<u8>, (e, trace_id): (&Exemplar, &str)) {
    label(x, "trace_id", trace_id);
    double(x, 2, e.value);
    timestamp(x, 3, e.time);
}

/// A series' start, as its `created_timestamp` (none when unknown).
fn start(out: &mut Vec<u8>, field: u32, start: Start) {
    if let Some(t) = start {
        timestamp(out, field, t);
    }
}

/// A `google.protobuf.Timestamp` of Unix seconds `t`.
fn timestamp(out: &mut Vec<u8>, field: u32, t: f64) {
    let secs = t.floor();
    message(out, field, |m| {
        uint(m, 1, secs as i64 as u64);
        uint(m, 2, ((t - secs) * 1e9) as u64);
    });
}

/// Self-metrics from the `prometheus` crate's registry.
#[allow(deprecated)] // The crate's plain model keeps the get_ names for now.
pub fn render_registry(families: &[prometheus::proto::MetricFamily], out: &mut Vec<u8>) {
    use prometheus::proto::MetricType as T;
    for f in families {
        let kind = match f.get_field_type() {
            T::COUNTER => Type::Counter,
            T::GAUGE => Type::Gauge,
            T::SUMMARY => Type::Summary,
            T::HISTOGRAM => Type::Histogram,
            T::UNTYPED => Type::Untyped,
        };
        family(out, f.name(), f.help(), kind, |out| {
            for m in f.get_metric() {
                message(out, 4, |mm| {
                    for l in m.get_label() {
                        label(mm, l.name(), l.value());
                    }
                    match kind {
                        Type::Counter => {
                            message(mm, 3, |c| double(c, 1, m.get_counter().get_value()))
                        }
                        Type::Gauge => message(mm, 2, |g| double(g, 1, m.get_gauge().get_value())),
                        Type::Untyped => {
                            message(mm, 5, |u| double(u, 1, m.get_untyped().get_value()))
                        }
                        Type::Summary => message(mm, 4, |s| {
                            let sm = m.get_summary();
                            uint(s, 1, sm.sample_count());
                            double(s, 2, sm.sample_sum());
                            for q in sm.get_quantile() {
                                message(s, 3, |x| {
                                    double(x, 1, q.quantile());
                                    double(x, 2, q.value());
                                });
                            }
                        }),
                        Type::Histogram => message(mm, 7, |h| {
                            let hm = m.get_histogram();
                            uint(h, 1, hm.get_sample_count());
                            double(h, 2, hm.get_sample_sum());
                            for b in hm.get_bucket() {
                                message(h, 3, |x| {
                                    uint(x, 1, b.cumulative_count());
                                    double(x, 2, b.upper_bound());
                                });
                            }
                        }),
                    }
                });
            }
        });
    }
}

/// A gauge family with one unlabelled sample.
pub fn gauge(out: &mut Vec<u8>, name: &str, help: &str, v: f64) {
    family(out, name, help, Type::Gauge, |out| {
        message(out, 4, |m| message(m, 2, |g| double(g, 1, v)));
    });
}

/// One length-delimited MetricFamily.
fn family(
    out: &mut Vec<u8>,
    name: &str,
    help: &str,
    kind: Type,
    metrics: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.push(0);
    string(out, 1, name);
    string(out, 2, help);
    uint(out, 3, kind as u64);
    metrics(out);
    close(out, start);
}

fn label(m: &mut Vec<u8>, name: &str, value: &str) {
    message(m, 1, |l| {
        string(l, 1, name);
        string(l, 2, value);
    });
}

/// A nested message: its key, then its length, then its fields. One byte
/// is kept for the length; the rare body of 128 bytes or more moves right to
/// make room for a longer one.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, 2);
    let start = out.len();
    out.push(0);
    body(out);
    close(out, start);
}

/// Write the length of what follows the byte kept at `start` there.
fn close(out: &mut Vec<u8>, start: usize) {
    let end = out.len();
    let len = end - start - 1;
    if len < 0x80 {
        out[start] = len as u8;
        return;
    }
    // The body moves right by the bytes the length needs beyond the one kept.
    let (head, n) = varint_bytes(len as u64);
    out.resize(end + n - 1, 0);
    out.copy_within(start + 1..end, start + n);
    out[start..start + n].copy_from_slice(&head[..n]);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn varint(out: &mut Vec<u8>, v: u64) {
    let (bytes, n) = varint_bytes(v);
    out.extend_from_slice(&bytes[..n]);
}

/// `v` as a varint: its bytes, and how many.
fn varint_bytes(mut v: u64) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut n = 0;
    while v >= 0x80 {
        bytes[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    bytes[n] = v as u8;
    (bytes, n + 1)
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

/// zigzag, for sint32 and sint64.
fn sint(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, 0);
    varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn double(out: &mut Vec<u8>, field: u32, v: f64) {
    key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    key(out, field, 2);
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(any(test, fuzzing))]
pub mod wire {
    //! A protobuf wire-format reader for the tests and the fuzzer: enough to
    //! decode what `protobuf.rs` writes back into fields. It panics on
    //! malformed input, which is what they want.

    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Varint(u64),
        Fixed64(u64),
        Bytes(Vec<u8>),
    }

    /// (field, value) pairs of one message.
    pub fn fields(mut b: &[u8]) -> Vec<(u32, Value)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let k = read_varint(&mut b);
            let (field, wire) = ((k >> 3) as u32, k & 7);
            let v = match wire {
                0 => Value::Varint(read_varint(&mut b)),
                1 => {
                    let v = u64::from_le_bytes(b[..8].try_into().unwrap());
                    b = &b[8..];
                    Value::Fixed64(v)
                }
                2 => {
                    let n = read_varint(&mut b) as usize;
                    let v = b[..n].to_vec();
                    b = &b[n..];
                    Value::Bytes(v)
                }
                w => panic!("wire type {w}"),
            };
            out.push((field, v));
        }
        out
    }

    pub fn read_varint(b: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    /// The length-delimited messages of a body.
    pub fn delimited(mut b: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let n = read_varint(&mut b) as usize;
            out.push(b[..n].to_vec());
            b = &b[n..];
        }
        out
    }

    pub fn get(f: &[(u32, Value)], field: u32) -> impl Iterator<Item = &Value> {
        f.iter().filter(move |(n, _)| *n == field).map(|(_, v)| v)
    }

    pub fn as_string(v: &Value) -> String {
        match v {
            Value::Bytes(b) => String::from_utf8(b.clone()).unwrap(),
            other => panic!("not bytes: {other:?}"),
        }
    }

    pub fn as_double(v: &Value) -> f64 {
        match v {
            Value::Fixed64(b) => f64::from_bits(*b),
            other => panic!("not fixed64: {other:?}"),
        }
    }

    pub fn as_uint(v: &Value) -> u64 {
        match v {
            Value::Varint(n) => *n,
            other => panic!("not varint: {other:?}"),
        }
    }

    pub fn as_sint(v: &Value) -> i64 {
        let n = as_uint(v);
        ((n >> 1) as i64) ^ -((n & 1) as i64)
    }

    pub fn as_bytes(v: &Value) -> &[u8] {
        match v {
            Value::Bytes(b) => b,
            other => panic!("not bytes: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::wire::*;
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    use crate::config::Catalog;
    use crate::event::decode;
    use crate::fold::Fold;

    fn fold(events: &[String]) -> Snapshot {
        let mut f = Fold::new(Arc::new(Catalog::default_mapping()));
        let now = Instant::now();
        for e in events {
            let ev = decode(e.as_bytes()).unwrap();
            f.apply(&ev, now, 1_700_000_000.5).unwrap();
        }
        f.snapshot(now)
    }

    fn wait(ns: &str, ms: u64, trace: &str) -> String {
        format!(
            r#"{{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"{ns}","traceId":"{trace}","payload":{{"message":"{ms}"}}}}"#
        )
    }

    #[test]
    fn varints_and_lengths_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(read_varint(&mut b.as_slice()), v);
        }
        // Messages longer than 127 bytes need a longer length: the body
        // moves right to make room, nested ones too.
        for len in [127, 128, 300, 16_383, 16_384, 70_000] {
            let mut out = vec![7];
            message(&mut out, 1, |m| {
                message(m, 3, |n| string(n, 2, &"x".repeat(len)));
                uint(m, 4, 9);
            });
            let f = fields(&out[1..]);
            let outer = fields(as_bytes(&f[0].1));
            let inner = fields(as_bytes(&outer[0].1));
            assert_eq!(as_string(&inner[0].1), "x".repeat(len));
            assert_eq!(as_uint(&outer[1].1), 9);
            assert_eq!(out[0], 7);
        }
        for v in [-3i64, 0, 5, i64::MIN / 2] {
            let mut b = Vec::new();
            sint(&mut b, 1, v);
            assert_eq!(as_sint(&fields(&b)[0].1), v);
        }
    }

    #[test]
    fn histograms_decode_to_what_was_recorded() {
        let events: Vec<String> = [(1500, "t1"), (250_000, "t2"), (900, "t3"), (1600, "t4")]
            .iter()
            .map(|(ms, t)| wait("g", *ms, t))
            .collect();
        let snap = fold(&events);
        let mut out = Vec::new();
        render(&snap, &mut out);
        let fams = delimited(&out);
        let wait_family = fams
            .iter()
            .map(|f| fields(f))
            .find(|f| as_string(get(f, 1).next().unwrap()) == "session_ds_acquisition_wait_seconds")
            .expect("the DS wait family");
        assert_eq!(
            as_uint(get(&wait_family, 3).next().unwrap()),
            Type::Histogram as u64
        );
        let metrics: Vec<_> = get(&wait_family, 4).map(|m| fields(as_bytes(m))).collect();
        assert_eq!(metrics.len(), 1);
        let label = fields(as_bytes(get(&metrics[0], 1).next().unwrap()));
        assert_eq!(as_string(&label[1].1), "g");
        let h = fields(as_bytes(get(&metrics[0], 7).next().unwrap()));
        assert_eq!(as_uint(get(&h, 1).next().unwrap()), 4);
        assert_eq!(as_double(get(&h, 2).next().unwrap()), 254.0);
        // Classic buckets: cumulative, with the text format's bounds.
        let buckets: Vec<(u64, f64)> = get(&h, 3)
            .map(|b| fields(as_bytes(b)))
            .map(|b| (as_uint(&b[0].1), as_double(&b[1].1)))
            .collect();
        assert_eq!(buckets[3], (1, 1.0));
        assert_eq!(buckets[4], (3, 2.0));
        assert_eq!(buckets.last(), Some(&(4, 300.0)));
        // The latest observation of the le=2 bucket is its exemplar.
        let b2 = fields(as_bytes(get(&h, 3).nth(4).unwrap()));
        let ex = fields(as_bytes(get(&b2, 3).next().unwrap()));
        let ex_label = fields(as_bytes(get(&ex, 1).next().unwrap()));
        assert_eq!(
            (as_string(&ex_label[0].1), as_string(&ex_label[1].1)),
            ("trace_id".into(), "t4".into())
        );
        assert_eq!(as_double(get(&ex, 2).next().unwrap()), 1.6);
        // Native: schema 3, spans and deltas that add up to the count.
        assert_eq!(as_sint(get(&h, 5).next().unwrap()), 3);
        assert_eq!(as_uint(get(&h, 7).next().unwrap()), 0);
        let deltas: Vec<i64> = get(&h, 13).map(as_sint).collect();
        let counts: Vec<i64> = deltas
            .iter()
            .scan(0, |c, d| {
                *c += d;
                Some(*c)
            })
            .collect();
        assert_eq!(counts.iter().sum::<i64>(), 4);
        let spans: Vec<(i64, u64)> = get(&h, 12)
            .map(|s| fields(as_bytes(s)))
            .map(|s| (as_sint(&s[0].1), as_uint(&s[1].1)))
            .collect();
        assert_eq!(
            spans.iter().map(|s| s.1).sum::<u64>() as usize,
            counts.len()
        );
        // Bucket keys from the spans hold the values they count.
        let mut keys = Vec::new();
        let mut at = 0i64;
        for (i, (offset, len)) in spans.iter().enumerate() {
            at += offset + if i == 0 { 0 } else { 1 };
            for j in 0..*len as i64 {
                keys.push(at + j);
            }
            at += *len as i64 - 1;
        }
        use crate::fold::native::bucket_key;
        let want: Vec<i64> = {
            let mut k: Vec<i64> = [0.9, 1.5, 1.6, 250.0]
                .iter()
                .map(|&v| bucket_key(v, 3) as i64)
                .collect();
            k.dedup();
            k
        };
        assert_eq!(keys, want);
    }

    /// Every counter, histogram and summary carries its series' start as
    /// `created_timestamp` (Counter 3, Histogram 15, Summary 4); gauges none.
    #[test]
    fn series_carry_their_start() {
        let mut f = Fold::new(Arc::new(Catalog::default_mapping())).with_clock(|| 1.8e9 + 0.25);
        let now = Instant::now();
        for e in [
            wait("g", 1500, "t1"),
            r#"{"name":"MetricAcquiringDsEvent","namespace":"g"}"#.into(),
            r#"{"name":"MetricTotalActiveSessionEvent","namespace":"g","payload":{"message":"4"}}"#
                .into(),
        ] {
            f.apply(&decode(e.as_bytes()).unwrap(), now, 1.7e9).unwrap();
        }
        let mut out = Vec::new();
        render(&f.snapshot(now), &mut out);
        let mut seen = Vec::new();
        for fam in delimited(&out).iter().map(|f| fields(f)) {
            let name = as_string(get(&fam, 1).next().unwrap());
            for m in get(&fam, 4).map(|m| fields(as_bytes(m))) {
                // (field of the value message in Metric, field of its start)
                for (kind, field) in [(2, 0), (3, 3), (4, 4), (7, 15)] {
                    let Some(v) = get(&m, kind).next() else {
                        continue;
                    };
                    let start = get(&fields(as_bytes(v)), field)
                        .next()
                        .map(|t| fields(as_bytes(t)))
                        .map(|t| (as_uint(&t[0].1), as_uint(&t[1].1)));
                    seen.push((name.clone(), start));
                }
            }
        }
        let start = Some((1_800_000_000, 250_000_000));
        for (name, want) in [
            ("session_ds_acquisition_wait_seconds", start),
            ("session_ds_acquisition_wait_window_seconds", start),
            ("session_ds_acquisitions_total", start),
            ("session_events_total", start),
            ("session_active_sessions", None),
        ] {
            let got: Vec<_> = seen.iter().filter(|s| s.0 == name).map(|s| s.1).collect();
            assert!(
                !got.is_empty() && got.iter().all(|&g| g == want),
                "{name}: {got:?}"
            );
        }
    }
}
