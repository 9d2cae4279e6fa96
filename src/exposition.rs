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

    let mut families: Vec<usize> = (0..snap.catalog.metrics.len()).collect();
    families.sort_by(|&a, &b| {
        snap.catalog.metrics[a]
            .name
            .cmp(&snap.catalog.metrics[b].name)
    });
    let mut events_done = false;
    for i in families {
        let def = &snap.catalog.metrics[i];
        if !events_done && def.name.as_str() > EVENTS_METRIC {
            render_events(snap, out);
            events_done = true;
        }
        let fam = &snap.families[i];
        header(out, &def.name, &def.help, def.kind.as_str());
        let mut idx: Vec<usize> = (0..fam.samples.len()).collect();
        idx.sort_unstable_by_key(|&s| rank[fam.samples[s].namespace]);
        for s in idx {
            let ns = &snap.namespaces[fam.samples[s].namespace];
            match def.kind {
                Kind::Counter | Kind::Gauge => {
                    series(out, &def.name, "", ns, None);
                    value(out, fam.samples[s].value);
                }
                Kind::Histogram => histogram(out, &def.name, &def.buckets, fam, s, ns),
            }
        }
    }
    if !events_done {
        render_events(snap, out);
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

fn histogram(
    out: &mut String,
    name: &str,
    bounds: &[f64],
    fam: &FamilySnapshot,
    s: usize,
    ns: &str,
) {
    let sample = fam.samples[s];
    let counts = &fam.buckets[s * bounds.len()..(s + 1) * bounds.len()];
    for (le, n) in bounds.iter().zip(counts) {
        series(out, name, "_bucket", ns, Some(*le));
        let _ = writeln!(out, "{n}");
    }
    series(out, name, "_bucket", ns, Some(f64::INFINITY));
    let _ = writeln!(out, "{}", sample.count);
    series(out, name, "_sum", ns, None);
    value(out, sample.value);
    series(out, name, "_count", ns, None);
    let _ = writeln!(out, "{}", sample.count);
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

/// `name{game_namespace="ns",le="b"} ` — the value follows.
fn series(out: &mut String, name: &str, suffix: &str, ns: &str, le: Option<f64>) {
    out.push_str(name);
    out.push_str(suffix);
    out.push('{');
    out.push_str(LABEL);
    out.push_str("=\"");
    escape(out, ns, true);
    out.push('"');
    if let Some(le) = le {
        out.push_str(",le=\"");
        float(out, le);
        out.push('"');
    }
    out.push_str("} ");
}

fn value(out: &mut String, v: f64) {
    float(out, v);
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
