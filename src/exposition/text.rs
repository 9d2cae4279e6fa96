//! Prometheus text format 0.0.4: what `/metrics` serves by default.

use std::fmt::Write;

use super::{
    escape, families, float, int, le_labels, namespace_label, quantile_labels, series, slo_series,
    Family, SloFamily,
};
use crate::config::{Kind, EVENTS_METRIC};
use crate::fold::{FamilySnapshot, Snapshot};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Render the domain families of a snapshot.
pub fn render(snap: &Snapshot, out: &mut String) {
    // Each namespace's label is escaped once per scrape, not once per line.
    let labels: Vec<String> = snap.namespaces.iter().map(namespace_label).collect();
    for (_, family) in families(&snap.catalog) {
        match family {
            Family::Events => render_events(snap, out),
            Family::Metric(i) => render_metric(snap, i, &labels, out),
            Family::Window(i) => render_window(snap, i, &labels, out),
            Family::Slo(f) => render_slo(snap, f, &labels, out),
        }
    }
}

fn render_slo(snap: &Snapshot, family: SloFamily, labels: &[String], out: &mut String) {
    header(out, family.name(), family.help(), family.kind().as_str());
    for sample in &snap.slis {
        let slo = &snap.catalog.slos[sample.slo].name;
        for (result, v) in family.series(sample) {
            slo_series(out, family.name(), &labels[sample.namespace], slo, result);
            float(out, v);
            out.push('\n');
        }
    }
}

fn render_metric(snap: &Snapshot, i: usize, labels: &[String], out: &mut String) {
    let def = &snap.catalog.metrics[i];
    let fam = &snap.families[i];
    header(out, &def.name, &def.help, def.kind.as_str());
    let les = le_labels(&def.buckets);
    for s in 0..fam.samples.len() {
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
fn render_window(snap: &Snapshot, i: usize, labels: &[String], out: &mut String) {
    let (def, fam) = (&snap.catalog.metrics[i], &snap.families[i]);
    let Some(w) = &def.window else { return };
    header(out, &w.name, &w.help, "summary");
    let quantiles = quantile_labels(&w.quantiles);
    for (s, &sample) in fam.samples.iter().enumerate() {
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
        out.push('\n');
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
        out.push('\n');
    }
    series(out, name, "_sum", label, "}");
    float(out, sample.value);
    out.push('\n');
    series(out, name, "_count", label, "}");
    int(out, sample.count);
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
