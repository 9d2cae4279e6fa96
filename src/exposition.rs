//! Prometheus text format 0.0.4, written into a buffer by pure functions.
//! Output is deterministic: families in catalog name order, series sorted by
//! `game_namespace`, so a golden file can compare it.

use std::fmt::Write;

use crate::config::{Kind, EVENTS_METRIC};
use crate::fold::{FamilySnapshot, Snapshot};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const LABEL: &str = "game_namespace";

/// Render the domain families of a snapshot.
pub fn render(snap: &Snapshot, out: &mut String) {
    let mut order: Vec<usize> = (0..snap.namespaces.len()).collect();
    order.sort_unstable_by(|&a, &b| snap.namespaces[a].cmp(&snap.namespaces[b]));
    let mut rank = vec![0; order.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    // Each namespace's label is escaped once per scrape, not once per line.
    let labels: Vec<String> = snap
        .namespaces
        .iter()
        .map(|n| {
            let mut l = format!("{LABEL}=\"");
            escape(&mut l, n, true);
            l.push('"');
            l
        })
        .collect();

    // Every family by name: the catalog's, their windowed quantiles, events_total.
    let mut families: Vec<(&str, Family)> = vec![(EVENTS_METRIC, Family::Events)];
    for (i, def) in snap.catalog.metrics.iter().enumerate() {
        families.push((&def.name, Family::Metric(i)));
        if let Some(w) = &def.window {
            families.push((&w.name, Family::Window(i)));
        }
    }
    families.sort_by(|a, b| a.0.cmp(b.0));
    for (_, family) in families {
        match family {
            Family::Events => render_events(snap, out),
            Family::Metric(i) => render_metric(snap, i, &rank, &labels, out),
            Family::Window(i) => render_window(snap, i, &rank, &labels, out),
        }
    }
}

enum Family {
    Events,
    Metric(usize),
    Window(usize),
}

fn render_metric(snap: &Snapshot, i: usize, rank: &[usize], labels: &[String], out: &mut String) {
    let def = &snap.catalog.metrics[i];
    let fam = &snap.families[i];
    header(out, &def.name, &def.help, def.kind.as_str());
    let les = le_labels(&def.buckets);
    let mut idx: Vec<usize> = (0..fam.samples.len()).collect();
    idx.sort_unstable_by_key(|&s| rank[fam.samples[s].namespace]);
    for s in idx {
        let label = &labels[fam.samples[s].namespace];
        match def.kind {
            Kind::Counter | Kind::Gauge => {
                series(out, &def.name, "", label, "}");
                float(out, fam.samples[s].value);
                out.push('\n');
            }
            Kind::Histogram => histogram(out, &def.name, &les, fam, s, label),
        }
    }
}

/// A summary: quantiles of the recent window (omitted while it is empty), and
/// the histogram's cumulative `_sum` and `_count`, as Prometheus client
/// summaries have them.
fn render_window(snap: &Snapshot, i: usize, rank: &[usize], labels: &[String], out: &mut String) {
    let (def, fam) = (&snap.catalog.metrics[i], &snap.families[i]);
    let Some(w) = &def.window else { return };
    header(out, &w.name, &w.help, "summary");
    let quantiles: Vec<String> = w
        .quantiles
        .iter()
        .map(|q| {
            let mut l = String::from(",quantile=\"");
            float(&mut l, *q);
            l.push_str("\"}");
            l
        })
        .collect();
    let mut idx: Vec<usize> = (0..fam.samples.len()).collect();
    idx.sort_unstable_by_key(|&s| rank[fam.samples[s].namespace]);
    for s in idx {
        let sample = fam.samples[s];
        let label = &labels[sample.namespace];
        let values = &fam.window_values[s * quantiles.len()..(s + 1) * quantiles.len()];
        for (q, v) in quantiles.iter().zip(values).filter(|(_, v)| !v.is_nan()) {
            series(out, &w.name, "", label, q);
            float(out, *v);
            out.push('\n');
        }
        series(out, &w.name, "_sum", label, "}");
        float(out, sample.value);
        out.push('\n');
        series(out, &w.name, "_count", label, "}");
        int(out, sample.count);
    }
}

fn render_events(snap: &Snapshot, out: &mut String) {
    header(
        out,
        EVENTS_METRIC,
        "Session events received, by event name (seed names, else other).",
        "counter",
    );
    for (name, n) in &snap.events {
        let _ = writeln!(out, "{EVENTS_METRIC}{{event=\"{name}\"}} {n}");
    }
}

/// `,le="0.1"}` for each bound, then `,le="+Inf"}`.
fn le_labels(bounds: &[f64]) -> Vec<String> {
    bounds
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .map(|b| {
            let mut l = String::from(",le=\"");
            float(&mut l, b);
            l.push_str("\"}");
            l
        })
        .collect()
}

fn histogram(
    out: &mut String,
    name: &str,
    les: &[String],
    fam: &FamilySnapshot,
    s: usize,
    label: &str,
) {
    let sample = fam.samples[s];
    let bounds = les.len() - 1;
    let counts = &fam.buckets[s * bounds..(s + 1) * bounds];
    for (le, n) in les.iter().zip(counts.iter().chain([&sample.count])) {
        series(out, name, "_bucket", label, le);
        int(out, *n);
    }
    series(out, name, "_sum", label, "}");
    float(out, sample.value);
    out.push('\n');
    series(out, name, "_count", label, "}");
    int(out, sample.count);
}

/// `name_suffix{label<rest>` and a space; the value follows.
fn series(out: &mut String, name: &str, suffix: &str, label: &str, rest: &str) {
    out.push_str(name);
    out.push_str(suffix);
    out.push('{');
    out.push_str(label);
    out.push_str(rest);
    out.push(' ');
}

/// An integer and a newline, without the formatting machinery.
fn int(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
    out.push('\n');
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    escape(out, help, false);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

fn float(out: &mut String, v: f64) {
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.is_nan() {
        out.push_str("NaN");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Escape `\` and newline (and `"` in label values), as the text format requires.
pub fn escape(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let cases = [
            ("plain", "plain"),
            ("a\"b", "a\\\"b"),
            ("back\\slash", "back\\\\slash"),
            ("new\nline", "new\\nline"),
            ("ünï\tcode", "ünï\tcode"),
        ];
        for (raw, want) in cases {
            let mut s = String::new();
            escape(&mut s, raw, true);
            assert_eq!(s, want);
        }
        let mut s = String::new();
        escape(&mut s, "say \"hi\"\n", false);
        assert_eq!(s, "say \"hi\"\\n");
    }

    #[test]
    fn integers_render_exactly() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            let mut s = String::new();
            int(&mut s, n);
            assert_eq!(s, format!("{n}\n"));
        }
    }

    #[test]
    fn floats_render_as_prometheus_reads_them() {
        let cases = [
            (0.1, "0.1"),
            (300.0, "300"),
            (f64::INFINITY, "+Inf"),
            (1.532, "1.532"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            float(&mut s, v);
            assert_eq!(s, want);
        }
    }
}
