//! Rendering a fold snapshot for Prometheus, one file per format, written into
//! a buffer by pure functions: `text` (0.0.4, the default), `openmetrics`
//! (OpenMetrics 1.0, also what `replay --format openmetrics` writes for
//! `promtool tsdb create-blocks-from openmetrics`) and `protobuf`. `page`
//! puts a scrape's page together and lets concurrent scrapes share it.
//!
//! Output is deterministic: families in name order, series sorted by
//! `game_namespace`, so golden files can compare it. Every format writes the
//! same series names and label values (`le` and `quantile` included).

use std::fmt::Write;

use crate::config::{
    Catalog, Kind, EVENTS_METRIC, SLO_EVENTS_METRIC, SLO_OBJECTIVE_METRIC, SLO_THRESHOLD_METRIC,
};
use crate::fold::SliSample;

pub mod openmetrics;
pub mod page;
pub mod protobuf;
pub mod text;

pub use text::{render, CONTENT_TYPE};

const LABEL: &str = "game_namespace";

/// Gzip at the fast level: Prometheus asks for it, and the text shrinks
/// ~20× (mostly repeated label sets). None if compression fails.
pub fn gzip(page: &[u8]) -> Option<Vec<u8>> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(page.len() / 8),
        flate2::Compression::fast(),
    );
    gz.write_all(page).ok()?;
    gz.finish().ok()
}

/// What `/metrics` can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Text,
    /// OpenMetrics 1.0 text, with exemplars.
    OpenMetrics,
    /// Delimited protobuf MetricFamily messages: classic and native
    /// histograms, exemplars.
    Protobuf,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => text::CONTENT_TYPE,
            Format::OpenMetrics => openmetrics::CONTENT_TYPE,
            Format::Protobuf => protobuf::CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header prefers, among those served: the highest
    /// `q` (ties: the first listed); text when it names none of them.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best = (Format::Text, 0.0f64);
        for item in accept.unwrap_or("").split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version, mut proto, mut encoding) = (1.0, None, None, None);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "version" => version = Some(v),
                    "proto" => proto = Some(v),
                    "encoding" => encoding = Some(v),
                    _ => {}
                }
            }
            let protobuf =
                proto == Some("io.prometheus.client.MetricFamily") && encoding == Some("delimited");
            let format = match (media.as_str(), version) {
                ("application/vnd.google.protobuf", _) if protobuf => Format::Protobuf,
                ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                    Format::OpenMetrics
                }
                ("text/plain" | "*/*" | "text/*", _) => Format::Text,
                _ => continue,
            };
            if q > best.1 {
                best = (format, q);
            }
        }
        best.0
    }
}

/// What a family renders from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    /// `session_events_total{event}`.
    Events,
    /// `catalog.metrics[i]`.
    Metric(usize),
    /// The windowed-quantile summary of `catalog.metrics[i]`.
    Window(usize),
    /// One of the SLO families of `catalog.slos`.
    Slo(SloFamily),
}

/// The families every SLO's series go into, by `slo` and `game_namespace`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SloFamily {
    /// `session_slo_events_total{result="good"|"bad"}`.
    Events,
    /// `session_slo_objective_ratio`.
    Objective,
    /// `session_slo_threshold_seconds`.
    Threshold,
}

impl SloFamily {
    const ALL: [SloFamily; 3] = [
        SloFamily::Events,
        SloFamily::Objective,
        SloFamily::Threshold,
    ];

    fn name(self) -> &'static str {
        match self {
            SloFamily::Events => SLO_EVENTS_METRIC,
            SloFamily::Objective => SLO_OBJECTIVE_METRIC,
            SloFamily::Threshold => SLO_THRESHOLD_METRIC,
        }
    }

    fn help(self) -> &'static str {
        match self {
            SloFamily::Events => "Events of each SLO's histogram, by result: good at or under the namespace's threshold, bad above it.",
            SloFamily::Objective => "The share of good events each namespace's SLO promises over its period (slos: in the mapping).",
            SloFamily::Threshold => "The value at or under which an event of each namespace's SLO is good (slos: in the mapping).",
        }
    }

    fn kind(self) -> Kind {
        match self {
            SloFamily::Events => Kind::Counter,
            _ => Kind::Gauge,
        }
    }

    /// Its series of one sample: the `result` label (counters only) and value.
    fn series(self, s: &SliSample) -> impl Iterator<Item = (Option<&'static str>, f64)> {
        let series = match self {
            SloFamily::Events => [
                Some((Some("bad"), s.sli.bad as f64)),
                Some((Some("good"), s.sli.good as f64)),
            ],
            SloFamily::Objective => [Some((None, s.target.objective)), None],
            SloFamily::Threshold => [Some((None, s.target.threshold)), None],
        };
        series.into_iter().flatten()
    }
}

/// Every family of a catalog, by name: the catalog's, their windowed
/// quantiles, `session_events_total`, and the SLO families if it has SLOs.
fn families(catalog: &Catalog) -> Vec<(&str, Family)> {
    let mut families: Vec<(&str, Family)> = vec![(EVENTS_METRIC, Family::Events)];
    if !catalog.slos.is_empty() {
        families.extend(SloFamily::ALL.map(|f| (f.name(), Family::Slo(f))));
    }
    for (i, def) in catalog.metrics.iter().enumerate() {
        families.push((&def.name, Family::Metric(i)));
        if let Some(w) = &def.window {
            families.push((&w.name, Family::Window(i)));
        }
    }
    families.sort_by(|a, b| a.0.cmp(b.0));
    families
}

/// `game_namespace="…"`, escaped.
fn namespace_label(ns: &str) -> String {
    let mut l = format!("{LABEL}=\"");
    escape(&mut l, ns, true);
    l.push('"');
    l
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

/// `,quantile="0.99"}` for each quantile.
fn quantile_labels(quantiles: &[f64]) -> Vec<String> {
    quantiles
        .iter()
        .map(|q| {
            let mut l = String::from(",quantile=\"");
            float(&mut l, *q);
            l.push_str("\"}");
            l
        })
        .collect()
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

/// `name{<ns label>,slo="…"[,result="…"]` and `} `; the value follows. SLO
/// names are validated to need no escaping.
fn slo_series(out: &mut String, name: &str, ns_label: &str, slo: &str, result: Option<&str>) {
    out.push_str(name);
    out.push('{');
    slo_labels(out, ns_label, slo, result);
    out.push_str("} ");
}

/// `<ns label>,slo="…"[,result="…"]`.
fn slo_labels(out: &mut String, ns_label: &str, slo: &str, result: Option<&str>) {
    out.push_str(ns_label);
    out.push_str(",slo=\"");
    out.push_str(slo);
    out.push('"');
    if let Some(r) = result {
        out.push_str(",result=\"");
        out.push_str(r);
        out.push('"');
    }
}

/// An integer, without the formatting machinery.
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
}

/// A float as Prometheus and OpenMetrics parsers read it (`+Inf`, `NaN`, and
/// the shortest decimal that round-trips).
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
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn floats_render_as_prometheus_reads_them() {
        let cases = [
            (0.1, "0.1"),
            (300.0, "300"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (1.532, "1.532"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            float(&mut s, v);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn accept_headers_choose_the_format() {
        let prometheus_2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let cases = [
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            (Some(prometheus_2), Format::OpenMetrics),
            (
                Some("application/openmetrics-text; version=0.0.1"),
                Format::OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;version=2.0.0,text/plain"),
                Format::Text,
            ),
            (
                Some("text/plain;q=0.9,application/openmetrics-text;q=0.5"),
                Format::Text,
            ),
            (Some("application/json"), Format::Text),
            (Some("application/openmetrics-text;q=0"), Format::Text),
            (
                Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
                Format::Protobuf,
            ),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"), Format::Text),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn families_come_in_name_order() {
        let catalog = Catalog::default_mapping();
        let names: Vec<&str> = families(&catalog).iter().map(|f| f.0).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(names.contains(&EVENTS_METRIC));
    }
}
