//! OpenMetrics 1.0 text. The series and label values are the text format's
//! (a counter's samples keep `_total`, its family drops it), so a Prometheus
//! stores the same series whichever it parses.
//!
//! It renders one or more frames: snapshots of one fold, each with the time it
//! stands for. `replay --step` writes history this way (every sample carries
//! its frame's timestamp) for `promtool tsdb create-blocks-from openmetrics`;
//! OpenMetrics wants each series' points together, in time order, so points
//! are grouped by family, then series, then frame.

use super::{
    escape, families, float, int, le_labels, namespace_label, quantile_labels, series, slo_labels,
    slo_series, Family, SloFamily,
};
use crate::config::{Kind, EVENTS_METRIC};
use crate::fold::Snapshot;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Units OpenMetrics names as a family-name suffix (`# UNIT` must be one).
const UNITS: [&str; 9] = [
    "seconds", "bytes", "ratio", "meters", "grams", "joules", "volts", "amperes", "celsius",
];

/// One snapshot and the time it stands for, in Unix seconds (`None`: the
/// scrape's own time, no timestamp written).
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    pub snapshot: &'a Snapshot,
    pub at: Option<f64>,
    /// Write each counter's, histogram's and summary's `_created` sample
    /// (its start) after its others: extra series for a Prometheus that does
    /// not read them as start times, so only when asked.
    pub created: bool,
}

/// Render frames of one fold (the first frame's mapping names the families),
/// ending with `# EOF`. A family without a sample is left out (some
/// OpenMetrics parsers refuse metadata with no metric after it).
pub fn render(frames: &[Frame], out: &mut String) {
    render_families(frames, out);
    out.push_str("# EOF\n");
}

/// [`render`] without the `# EOF`, for a page that goes on (`/metrics`
/// appends the self-metrics).
pub fn render_families(frames: &[Frame], out: &mut String) {
    if let Some(first) = frames.first() {
        for (_, family) in families(&first.snapshot.catalog) {
            family_of(frames, family, out, &mut |_, _| {});
        }
    }
}

/// Called with a series' key (its namespace or event; `""` for the family's
/// header) and where its text starts in the output.
type Mark<'m> = &'m mut dyn FnMut(&str, usize);

fn family_of(frames: &[Frame], family: Family, out: &mut String, mark: Mark) {
    match family {
        Family::Events => events(frames, out, mark),
        Family::Metric(i) => metric(frames, i, out, mark),
        Family::Window(i) => window(frames, i, out, mark),
        Family::Slo(f) => slo(frames, f, out, mark),
    }
}

/// One frame cut into blocks, as `replay --step` spills them: `emit(family,
/// key, text)` for each family (by its place in name order) its header (key
/// `""`), then each series' text (key: its namespace, or event name), in
/// the order [`render`] writes them. Blocks of many frames merged by
/// (family, key), frame after frame, are `render` of those frames.
pub fn frame_blocks(frame: Frame, mut emit: impl FnMut(u32, &str, &str)) {
    let mut out = String::new();
    let mut marks: Vec<(String, usize)> = Vec::new();
    for (order, (_, family)) in families(&frame.snapshot.catalog).into_iter().enumerate() {
        out.clear();
        marks.clear();
        family_of(&[frame], family, &mut out, &mut |key, at| {
            marks.push((key.to_string(), at))
        });
        for (j, (key, start)) in marks.iter().enumerate() {
            let end = marks.get(j + 1).map_or(out.len(), |m| m.1);
            emit(order as u32, key, &out[*start..end]);
        }
    }
}

/// Every `(namespace, frame, sample)` of family `i`, by namespace then frame.
fn points<'a>(frames: &[Frame<'a>], i: usize) -> Vec<(&'a str, usize, usize)> {
    let mut points = Vec::new();
    for (f, frame) in frames.iter().enumerate() {
        let snap = frame.snapshot;
        points.extend(
            snap.families[i]
                .samples
                .iter()
                .enumerate()
                .map(|(s, sample)| (snap.namespaces.get(sample.namespace), f, s)),
        );
    }
    // Stable: a namespace's points stay in frame (time) order. Each frame's
    // are sorted already, so one frame costs a pass.
    points.sort_by(|a, b| a.0.cmp(b.0));
    points
}

/// Walks sorted points, escaping each namespace label once.
struct Labels<'a> {
    ns: Option<&'a str>,
    label: String,
}

impl<'a> Labels<'a> {
    fn new() -> Labels<'a> {
        Labels {
            ns: None,
            label: String::new(),
        }
    }

    fn of(&mut self, ns: &'a str) -> &str {
        if self.ns != Some(ns) {
            self.ns = Some(ns);
            self.label = namespace_label(ns);
        }
        &self.label
    }
}

fn metric(frames: &[Frame], i: usize, out: &mut String, mark: Mark) {
    let def = &frames[0].snapshot.catalog.metrics[i];
    let points = points(frames, i);
    if points.is_empty() {
        return;
    }
    mark("", out.len());
    header(out, &def.name, &def.help, def.kind);
    let les = le_labels(&def.buckets);
    let mut labels = Labels::new();
    for (ns, f, s) in points {
        mark(ns, out.len());
        let (fam, at) = (&frames[f].snapshot.families[i], frames[f].at);
        let sample = fam.samples[s];
        let label = labels.of(ns);
        let created = sample.start.filter(|_| frames[f].created);
        match def.kind {
            Kind::Counter | Kind::Gauge => {
                series(out, &def.name, "", label, "}");
                float(out, sample.value);
                end(out, at);
                if let Some(t) = created {
                    created_sample(out, family_name(&def.name, def.kind.as_str()), label, t, at);
                }
            }
            Kind::Histogram => {
                let bounds = les.len() - 1;
                let counts = &fam.buckets[s * bounds..(s + 1) * bounds];
                // One slot per bucket, +Inf's last.
                let exemplars = fam.exemplars(s, les.len());
                for (b, (le, n)) in les
                    .iter()
                    .zip(counts.iter().chain([&sample.count]))
                    .enumerate()
                {
                    series(out, &def.name, "_bucket", label, le);
                    int(out, *n);
                    stamp(out, at);
                    if let Some((e, trace_id)) = exemplars.get(b) {
                        exemplar(out, trace_id, e.value, e.time);
                    }
                    out.push('\n');
                }
                series(out, &def.name, "_count", label, "}");
                int(out, sample.count);
                end(out, at);
                series(out, &def.name, "_sum", label, "}");
                float(out, sample.value);
                end(out, at);
                if let Some(t) = created {
                    created_sample(out, &def.name, label, t, at);
                }
            }
        }
    }
}

/// The windowed quantiles as a summary (quantiles omitted while the window is
/// empty), with the histogram's cumulative `_count` and `_sum`.
fn window(frames: &[Frame], i: usize, out: &mut String, mark: Mark) {
    let def = &frames[0].snapshot.catalog.metrics[i];
    let Some(w) = &def.window else { return };
    let points = points(frames, i);
    if points.is_empty() {
        return;
    }
    mark("", out.len());
    header_as(out, &w.name, &w.help, "summary");
    let quantiles = quantile_labels(&w.quantiles);
    let mut labels = Labels::new();
    for (ns, f, s) in points {
        mark(ns, out.len());
        let (fam, at) = (&frames[f].snapshot.families[i], frames[f].at);
        let sample = fam.samples[s];
        let label = labels.of(ns);
        let values = &fam.window_values[s * quantiles.len()..(s + 1) * quantiles.len()];
        for (q, v) in quantiles.iter().zip(values).filter(|(_, v)| !v.is_nan()) {
            series(out, &w.name, "", label, q);
            float(out, *v);
            end(out, at);
        }
        series(out, &w.name, "_count", label, "}");
        int(out, sample.count);
        end(out, at);
        series(out, &w.name, "_sum", label, "}");
        float(out, sample.value);
        end(out, at);
        if let Some(t) = sample.start.filter(|_| frames[f].created) {
            created_sample(out, &w.name, label, t, at);
        }
    }
}

/// An SLO family. Each series is keyed by namespace, SLO and result (NUL
/// between them), and its points are sorted by that key, so blocks merged
/// by key (`replay --step`) come out as this renders them. The keys are
/// compared in place and written into one buffer: a scrape allocates no
/// string per series.
fn slo(frames: &[Frame], family: SloFamily, out: &mut String, mark: Mark) {
    let parts = |&(f, s, result): &(usize, usize, Option<&'static str>)| {
        let snap = frames[f].snapshot;
        let sample = &snap.slis[s];
        let slo = &snap.catalog.slos[sample.slo].name;
        (
            snap.namespaces.get(sample.namespace),
            slo.as_str(),
            result.unwrap_or(""),
        )
    };
    let key = |p: &(usize, usize, Option<&'static str>)| {
        let (ns, slo, result) = parts(p);
        ns.bytes()
            .chain([0])
            .chain(slo.bytes())
            .chain([0])
            .chain(result.bytes())
    };
    let mut points: Vec<(usize, usize, Option<&'static str>)> = Vec::new();
    for (f, frame) in frames.iter().enumerate() {
        for (s, sample) in frame.snapshot.slis.iter().enumerate() {
            points.extend(family.series(sample).map(|(result, _)| (f, s, result)));
        }
    }
    if points.is_empty() {
        return;
    }
    // Stable: a series' points stay in frame (time) order. A snapshot's own
    // order is nearly this one, which the merge sort finds in one pass.
    points.sort_by(|a, b| key(a).cmp(key(b)));
    mark("", out.len());
    header(out, family.name(), family.help(), family.kind());
    let mut labels = Labels::new();
    let mut buffer = Vec::new();
    for point in &points {
        buffer.clear();
        buffer.extend(key(point));
        mark(std::str::from_utf8(&buffer).unwrap_or(""), out.len());
        let (f, s, result) = *point;
        let (snap, at) = (frames[f].snapshot, frames[f].at);
        let sample = &snap.slis[s];
        let (ns, slo, _) = parts(point);
        let ns_label = labels.of(ns);
        let v = family
            .series(sample)
            .find(|(r, _)| *r == result)
            .map_or(0.0, |x| x.1);
        slo_series(out, family.name(), ns_label, slo, result);
        float(out, v);
        end(out, at);
        let start = sample.sli.start.filter(|_| frames[f].created);
        if let (Some(t), SloFamily::Events) = (start, family) {
            let mut label = String::new();
            slo_labels(&mut label, ns_label, slo, result);
            created_sample(out, family_name(family.name(), "counter"), &label, t, at);
        }
    }
}

fn events(frames: &[Frame], out: &mut String, mark: Mark) {
    if frames.iter().all(|f| f.snapshot.events.is_empty()) {
        return;
    }
    mark("", out.len());
    header(
        out,
        EVENTS_METRIC,
        "Session events received, by event name (seed names, else other).",
        Kind::Counter,
    );
    let mut points: Vec<(&str, u64, Option<f64>, Option<f64>)> = frames
        .iter()
        .flat_map(|f| {
            let s = f.snapshot;
            let starts = s.event_starts.iter().map(|&t| t.filter(|_| f.created));
            s.events
                .iter()
                .zip(starts)
                .map(|(&(e, n), t)| (e, n, t, f.at))
        })
        .collect();
    points.sort_by(|a, b| a.0.cmp(b.0));
    let family = family_name(EVENTS_METRIC, "counter");
    let mut label = String::new();
    for (event, n, created, at) in points {
        mark(event, out.len());
        label.clear();
        label.push_str("event=\"");
        escape(&mut label, event, true);
        label.push('"');
        series(out, EVENTS_METRIC, "", &label, "}");
        int(out, n);
        end(out, at);
        if let Some(t) = created {
            created_sample(out, family, &label, t, at);
        }
    }
}

/// A series' start as its family's `_created` sample.
fn created_sample(out: &mut String, family: &str, label: &str, t: f64, at: Option<f64>) {
    series(out, family, "_created", label, "}");
    float(out, t);
    end(out, at);
}

/// The timestamp, if any, and the end of the line.
fn end(out: &mut String, at: Option<f64>) {
    stamp(out, at);
    out.push('\n');
}

fn stamp(out: &mut String, at: Option<f64>) {
    if let Some(t) = at {
        out.push(' ');
        float(out, t);
    }
}

/// ` # {trace_id="…"} value time`, after a bucket's value (and timestamp);
/// `time` in Unix seconds.
fn exemplar(out: &mut String, trace_id: &str, value: f64, time: f64) {
    out.push_str(" # {trace_id=\"");
    escape(out, trace_id, true);
    out.push_str("\"} ");
    float(out, value);
    out.push(' ');
    float(out, time);
}

/// Self-metrics, as the `prometheus` crate writes them (text 0.0.4, each
/// family a `# HELP`, a `# TYPE` and its samples), in OpenMetrics: a
/// counter's family drops `_total`, `untyped` is `unknown`, help text escapes
/// quotes, a unit is named where the family name ends in one. The samples
/// are the same lines.
pub fn from_text(text: &str, out: &mut String) {
    let mut help = "";
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').map_or("", |(_, h)| h);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind {
                "counter" | "gauge" | "histogram" | "summary" => kind,
                _ => "unknown",
            };
            header_as(out, name, &unescape_help(help), kind);
            help = "";
        } else if !line.is_empty() && !line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// Text 0.0.4 help escapes `\\` and newline only.
fn unescape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: Kind) {
    header_as(out, name, help, kind.as_str());
}

/// A counter's family is its name without `_total`.
fn family_name<'a>(name: &'a str, kind: &str) -> &'a str {
    match kind {
        "counter" => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    }
}

/// `# TYPE`, `# UNIT` (when the family name ends in a unit) and `# HELP`.
fn header_as(out: &mut String, name: &str, help: &str, kind: &str) {
    let family = family_name(name, kind);
    for (tag, text) in [("TYPE", kind), ("UNIT", unit(family)), ("HELP", "")] {
        if tag == "UNIT" && text.is_empty() {
            continue;
        }
        out.push_str("# ");
        out.push_str(tag);
        out.push(' ');
        out.push_str(family);
        out.push(' ');
        if tag == "HELP" {
            escape(out, help, true);
        } else {
            out.push_str(text);
        }
        out.push('\n');
    }
}

/// The unit a family name ends in, or "".
fn unit(family: &str) -> &'static str {
    UNITS
        .iter()
        .find(|u| {
            family
                .strip_suffix(*u)
                .is_some_and(|rest| rest.ends_with('_'))
        })
        .copied()
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_come_from_the_family_name() {
        assert_eq!(unit("session_ds_acquisition_wait_seconds"), "seconds");
        assert_eq!(unit("session_active_sessions"), "");
        assert_eq!(unit("seconds"), "");
        assert_eq!(unit("payload_bytes"), "bytes");
    }

    #[test]
    fn counters_drop_total_from_the_family_only() {
        let mut out = String::new();
        header(&mut out, "a_total", "say \"hi\"", Kind::Counter);
        assert_eq!(out, "# TYPE a counter\n# HELP a say \\\"hi\\\"\n");
        let mut out = String::new();
        header(&mut out, "wait_seconds", "h", Kind::Histogram);
        assert_eq!(
            out,
            "# TYPE wait_seconds histogram\n# UNIT wait_seconds seconds\n# HELP wait_seconds h\n"
        );
    }

    #[test]
    fn an_empty_fold_is_just_eof() {
        // Found by the fuzzer: families without samples, metadata only,
        // were refused by a strict parser.
        let fold = crate::fold::Fold::new(std::sync::Arc::new(
            crate::config::Catalog::default_mapping(),
        ));
        let snap = fold.snapshot(std::time::Instant::now());
        let mut out = String::new();
        render(
            &[Frame {
                snapshot: &snap,
                at: None,
                created: false,
            }],
            &mut out,
        );
        assert_eq!(out, "# EOF\n");
    }

    #[test]
    fn self_metrics_convert_from_text() {
        let text = "# HELP a_total Say \\\\ \"hi\"\\nthere.\n# TYPE a_total counter\na_total 3\n\
                    # HELP b_seconds B.\n# TYPE b_seconds gauge\nb_seconds 1.5\n\
                    # HELP c C.\n# TYPE c untyped\nc{x=\"y\"} 1\n";
        let mut out = String::new();
        from_text(text, &mut out);
        assert_eq!(
            out,
            "# TYPE a counter\n# HELP a Say \\\\ \\\"hi\\\"\\nthere.\na_total 3\n\
             # TYPE b_seconds gauge\n# UNIT b_seconds seconds\n# HELP b_seconds B.\nb_seconds 1.5\n\
             # TYPE c unknown\n# HELP c C.\nc{x=\"y\"} 1\n"
        );
    }

    #[test]
    fn exemplars_follow_the_bucket_value() {
        let mut out = String::new();
        stamp(&mut out, None);
        exemplar(&mut out, "4bf92f3577b34da6", 31.5, 1_700_000_000.25);
        assert_eq!(out, " # {trace_id=\"4bf92f3577b34da6\"} 31.5 1700000000.25");
    }

    #[test]
    fn timestamps_follow_the_value() {
        let mut out = String::new();
        end(&mut out, Some(1_700_000_060.0));
        end(&mut out, None);
        assert_eq!(out, " 1700000060\n\n");
    }
}
