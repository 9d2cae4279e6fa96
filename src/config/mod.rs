//! The mapping file: which events become which metrics, and the limits that
//! bound memory. Parsed strictly (unknown keys are errors) and validated in one
//! place, so conflicts are refused at start rather than found during a scrape.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::fold::native;

mod slo;
pub use slo::{SloDef, Target, FASTEST_BURN};

/// The built-in mapping, printed by `print-default-config`.
pub const DEFAULT_MAPPING: &str = include_str!("../../config/default.yml");

/// Self-metrics own this prefix; mappings may not use it.
const RESERVED_PREFIX: &str = "session_exporter_";
/// Built-in family counting every event by name.
pub const EVENTS_METRIC: &str = "session_events_total";
/// Built-in families of the SLOs (`slos:`): events by result, and each
/// namespace's objective and threshold.
pub const SLO_EVENTS_METRIC: &str = "session_slo_events_total";
pub const SLO_OBJECTIVE_METRIC: &str = "session_slo_objective_ratio";
pub const SLO_THRESHOLD_METRIC: &str = "session_slo_threshold_seconds";

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The whole account, for the terminal and the log. It quotes the file
    /// (the YAML parser's snippet, a refused value) only where the file is
    /// known to be a mapping, never where it may hold a secret.
    message: String,
    /// The path, line and column only: for answers over HTTP.
    bare: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// An error in our own words (keys, limits, paths).
    pub fn new(msg: impl Into<String>) -> ConfigError {
        let message = msg.into();
        ConfigError {
            bare: message.clone(),
            message,
        }
    }

    /// A YAML error in `file`: its line and column, and the parser's own
    /// account (which quotes the file) only when `quote`.
    pub fn yaml(file: &Path, e: &serde_saphyr::Error, quote: bool) -> ConfigError {
        let at = match e.location() {
            Some(l) => format!("line {} column {}", l.line(), l.column()),
            None => "no position known".into(),
        };
        // A key the file's form has not is named: key names are not secrets.
        let unknown = e.to_string();
        let unknown = unknown
            .split("unknown field `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .filter(|k| k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .map(|k| format!(": unknown key `{k}`"))
            .unwrap_or_default();
        let bare = format!(
            "{}: {at}{unknown}: not valid YAML for this file (its content is not shown)",
            file.display()
        );
        let message = if quote {
            format!("{}: {e}", file.display())
        } else {
            bare.clone()
        };
        ConfigError { message, bare }
    }

    /// The error without anything from the file: path, line and column.
    pub fn unquoted(&self) -> &str {
        &self.bare
    }

    /// A mapping refused after it parsed: the reason names keys and values.
    fn in_file(self, file: &Path) -> ConfigError {
        ConfigError {
            message: format!("{}: {}", file.display(), self.message),
            bare: format!(
                "{}: the mapping is refused (the log says why)",
                file.display()
            ),
        }
    }
}

/// Whether a file that failed to parse is meant as a mapping (it has the
/// top-level `mappings:` key), so quoting it helps; a creds or key file
/// given by mistake is not quoted.
fn looks_like_mapping(text: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("mappings:")
            .is_some_and(|rest| rest.trim().is_empty() || rest.starts_with(' '))
    })
}

fn err(key: impl fmt::Display, msg: impl fmt::Display) -> ConfigError {
    ConfigError::new(format!("{key}: {msg}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    limits: RawLimits,
    mappings: Vec<RawMapping>,
    #[serde(default)]
    slos: Vec<slo::RawSlo>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_namespaces: usize,
    max_message_bytes: usize,
    max_namespace_length: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_namespaces: 10_000,
            max_message_bytes: 65_536,
            max_namespace_length: 128,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    event: String,
    metric: String,
    #[serde(rename = "type")]
    kind: Kind,
    #[serde(default)]
    help: Option<String>,
    #[serde(default)]
    unit: Unit,
    #[serde(default)]
    value: RawValue,
    #[serde(default)]
    add: Option<Add>,
    #[serde(default)]
    max_value: Option<f64>,
    #[serde(default)]
    buckets: Option<Vec<f64>>,
    #[serde(default)]
    significant_figures: Option<u8>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    window: Option<RawWindow>,
    #[serde(default)]
    exemplars: Option<bool>,
    #[serde(default)]
    native_schema: Option<i8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    metric: String,
    #[serde(default)]
    help: Option<String>,
    #[serde(default = "default_window_length")]
    length: String,
    #[serde(default = "default_window_quantiles")]
    quantiles: Vec<f64>,
}

fn default_window_length() -> String {
    "5m".into()
}

fn default_window_quantiles() -> Vec<f64> {
    vec![0.5, 0.9, 0.99]
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawValue {
    source: Source,
    pointer: Option<String>,
    fallback: Fallback,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Unit of the incoming measurement. Durations are exposed in seconds.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    #[default]
    None,
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Unit {
    /// What the incoming value is divided by to get the exposed unit. A
    /// division, not a multiplication by 1e-3, so `1001 / 1000` is the double
    /// nearest 1.001 and compares with bucket bounds as written.
    pub fn divisor(self) -> f64 {
        match self {
            Unit::None | Unit::Seconds => 1.0,
            Unit::Milliseconds => 1e3,
            Unit::Microseconds => 1e6,
            Unit::Nanoseconds => 1e9,
        }
    }

    /// HDR records integers: durations in milliseconds, plain values as they are.
    pub fn hdr_scale(self) -> f64 {
        match self {
            Unit::None => 1.0,
            _ => 1e3,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    #[default]
    Message,
    Envelope,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    #[default]
    None,
    UserCount,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Add {
    One,
    Value,
}

/// Where a measurement is read from, and how it is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSpec {
    pub source: Source,
    /// `None` means the contract's default: a bare number, or the object's `/value`.
    pub pointer: Option<String>,
    pub fallback: Fallback,
    pub divisor: f64,
    pub max_value: f64,
}

/// One metric family the fold keeps per namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub buckets: Vec<f64>,
    pub sigfig: u8,
    pub hdr_scale: f64,
    pub ttl: Duration,
    /// Histograms only: exact quantiles over a sliding window, from HDR.
    pub window: Option<WindowDef>,
    /// Histograms only: keep the latest observation of each bucket with the
    /// event's `traceId`, served as exemplars (OpenMetrics).
    pub exemplars: bool,
    /// Histograms only: the resolution of the native histogram (protobuf):
    /// buckets grow by 2^(2^-schema), 3 is ~9% wide.
    pub native_schema: i8,
}

/// Native buckets ~9% wide: finer than any classic layout here, and within
/// the bucket limit for values spanning six decades.
pub const DEFAULT_NATIVE_SCHEMA: i8 = 3;

/// A summary family `name{quantile}` with exact quantiles of the last `length`
/// of a histogram's values, per replica (quantiles do not add up across
/// replicas: alert on the histogram's buckets, look at these).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowDef {
    pub name: String,
    pub help: String,
    pub length: Duration,
    pub quantiles: Vec<f64>,
}

/// What one event does to one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub metric: usize,
    /// `None` for counters that add one: no value is read at all.
    pub value: Option<ValueSpec>,
    /// Indexes into `Catalog::slos` of the SLOs this value counts for.
    pub slos: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_namespaces: usize,
    pub max_message_bytes: usize,
    pub max_namespace_length: usize,
}

/// The validated mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    pub limits: Limits,
    pub metrics: Vec<MetricDef>,
    pub rules: HashMap<String, Vec<Rule>>,
    /// The service-level objectives, in file order.
    pub slos: Vec<SloDef>,
    /// `rules` again, indexed by `seed::event_index`: the hot path looks a seed
    /// name up once for both its event counter and its rules.
    seed_rules: Vec<Vec<Rule>>,
}

impl Catalog {
    pub fn default_mapping() -> Catalog {
        Catalog::from_yaml(DEFAULT_MAPPING).expect("the embedded default mapping is valid")
    }

    /// The mapping of `file` (`--config.file`), or the default one.
    pub fn load(file: Option<&Path>) -> Result<Catalog, ConfigError> {
        file.map_or_else(|| Ok(Catalog::default_mapping()), Catalog::from_file)
    }

    pub fn from_file(path: &Path) -> Result<Catalog, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
        let raw: RawFile = serde_saphyr::from_str(&text)
            .map_err(|e| ConfigError::yaml(path, &e, looks_like_mapping(&text)))?;
        build(raw).map_err(|e| e.in_file(path))
    }

    pub fn from_yaml(text: &str) -> Result<Catalog, ConfigError> {
        let raw: RawFile = serde_saphyr::from_str(text)
            .map_err(|e| ConfigError::yaml(Path::new("<mapping>"), &e, true))?;
        build(raw)
    }

    pub fn rules_for(&self, event: &str) -> &[Rule] {
        self.rules.get(event).map_or(&[], Vec::as_slice)
    }

    /// Rules for an event whose `seed::event_index` is `index`.
    pub fn rules_at(&self, index: usize, event: &str) -> &[Rule] {
        match self.seed_rules.get(index) {
            Some(r) => r,
            None => self.rules_for(event),
        }
    }
}

fn build(raw: RawFile) -> Result<Catalog, ConfigError> {
    let l = raw.limits;
    if l.max_namespaces == 0 {
        return Err(err("limits.max_namespaces", "must be at least 1"));
    }
    if l.max_message_bytes == 0 {
        return Err(err("limits.max_message_bytes", "must be at least 1"));
    }
    if l.max_namespace_length == 0 {
        return Err(err("limits.max_namespace_length", "must be at least 1"));
    }
    if raw.mappings.is_empty() {
        return Err(err("mappings", "at least one mapping is required"));
    }
    let mut metrics: Vec<MetricDef> = Vec::new();
    let mut rules: HashMap<String, Vec<Rule>> = HashMap::new();
    for (i, m) in raw.mappings.into_iter().enumerate() {
        let key = format!("mappings[{i}]");
        let (def, value) = check_mapping(&key, &m)?;
        let metric = match metrics.iter().position(|d| d.name == def.name) {
            Some(j) if metrics[j] != def => {
                return Err(err(
                    format!("{key}.metric"),
                    format!(
                        "`{}` is already defined with another type, help, unit or buckets",
                        def.name
                    ),
                ))
            }
            Some(j) => j,
            None => {
                metrics.push(def);
                metrics.len() - 1
            }
        };
        rules.entry(m.event).or_default().push(Rule {
            metric,
            value,
            slos: Vec::new(),
        });
    }
    check_collisions(&metrics)?;
    let slos = slo::check_slos(raw.slos, &metrics)?;
    for rule in rules.values_mut().flatten() {
        rule.slos = (0..slos.len())
            .filter(|&k| slos[k].metric == rule.metric)
            .collect();
    }
    let seed_rules = crate::seed::EVENT_NAMES
        .iter()
        .map(|n| rules.get(*n).cloned().unwrap_or_default())
        .collect();
    Ok(Catalog {
        limits: Limits {
            max_namespaces: l.max_namespaces,
            max_message_bytes: l.max_message_bytes,
            max_namespace_length: l.max_namespace_length,
        },
        metrics,
        rules,
        slos,
        seed_rules,
    })
}

fn check_mapping(key: &str, m: &RawMapping) -> Result<(MetricDef, Option<ValueSpec>), ConfigError> {
    let kind = m.kind;
    if m.event.is_empty() {
        return Err(err(format!("{key}.event"), "must not be empty"));
    }
    if !valid_metric_name(&m.metric) {
        return Err(err(
            format!("{key}.metric"),
            format!("`{}` is not a valid metric name", m.metric),
        ));
    }
    if m.metric.starts_with(RESERVED_PREFIX) || m.metric == EVENTS_METRIC {
        return Err(err(
            format!("{key}.metric"),
            format!("`{}` is reserved for the exporter itself", m.metric),
        ));
    }
    if kind == Kind::Counter && !m.metric.ends_with("_total") {
        return Err(err(
            format!("{key}.metric"),
            "counter names must end in _total",
        ));
    }
    let only = |field: &str, set: bool, allowed: Kind| -> Result<(), ConfigError> {
        if set && kind != allowed {
            return Err(err(
                format!("{key}.{field}"),
                format!("only applies to {} mappings", allowed.as_str()),
            ));
        }
        Ok(())
    };
    only("add", m.add.is_some(), Kind::Counter)?;
    only("buckets", m.buckets.is_some(), Kind::Histogram)?;
    only(
        "significant_figures",
        m.significant_figures.is_some(),
        Kind::Histogram,
    )?;
    only("ttl", m.ttl.is_some(), Kind::Gauge)?;
    only("window", m.window.is_some(), Kind::Histogram)?;
    only("exemplars", m.exemplars.is_some(), Kind::Histogram)?;
    only("native_schema", m.native_schema.is_some(), Kind::Histogram)?;
    let native_schema = m.native_schema.unwrap_or(DEFAULT_NATIVE_SCHEMA);
    if !(native::MIN_SCHEMA..=native::MAX_SCHEMA).contains(&native_schema) {
        return Err(err(
            format!("{key}.native_schema"),
            format!(
                "must be between {} and {}",
                native::MIN_SCHEMA,
                native::MAX_SCHEMA
            ),
        ));
    }
    let window = m
        .window
        .as_ref()
        .map(|w| check_window(key, m, w))
        .transpose()?;

    let buckets = match (&m.buckets, kind) {
        (Some(b), _) => check_buckets(&format!("{key}.buckets"), b)?,
        (None, Kind::Histogram) => default_buckets(),
        (None, _) => Vec::new(),
    };
    let sigfig = m.significant_figures.unwrap_or(2);
    if !(1..=5).contains(&sigfig) {
        return Err(err(
            format!("{key}.significant_figures"),
            "must be between 1 and 5",
        ));
    }
    let ttl = match &m.ttl {
        Some(t) => parse_duration(t).filter(|d| !d.is_zero()).ok_or_else(|| {
            err(
                format!("{key}.ttl"),
                format!("`{t}` is not a duration like 30s, 10m or 1h"),
            )
        })?,
        None => Duration::from_secs(600),
    };
    let max_value = m.max_value.unwrap_or(1e12);
    if !(max_value.is_finite() && max_value > 0.0) {
        return Err(err(format!("{key}.max_value"), "must be a positive number"));
    }
    if let Some(p) = &m.value.pointer {
        if !p.is_empty() && !p.starts_with('/') {
            return Err(err(
                format!("{key}.value.pointer"),
                format!("`{p}` is not a JSON pointer (it must start with /)"),
            ));
        }
    }
    let reads_value = kind != Kind::Counter || m.add == Some(Add::Value);
    let value = reads_value.then(|| ValueSpec {
        source: m.value.source,
        pointer: m.value.pointer.clone(),
        fallback: m.value.fallback,
        divisor: m.unit.divisor(),
        max_value,
    });
    let def = MetricDef {
        name: m.metric.clone(),
        help: m
            .help
            .clone()
            .unwrap_or_else(|| format!("Folded from session events ({}).", m.metric)),
        kind,
        buckets,
        sigfig,
        hdr_scale: m.unit.hdr_scale(),
        ttl,
        window,
        exemplars: m.exemplars.unwrap_or(false),
        native_schema,
    };
    Ok((def, value))
}

fn check_window(key: &str, m: &RawMapping, w: &RawWindow) -> Result<WindowDef, ConfigError> {
    if !valid_metric_name(&w.metric) || w.metric.starts_with(RESERVED_PREFIX) {
        return Err(err(
            format!("{key}.window.metric"),
            format!("`{}` is not a valid metric name for us", w.metric),
        ));
    }
    let length = parse_duration(&w.length)
        .filter(|d| *d >= Duration::from_secs(5))
        .ok_or_else(|| {
            err(
                format!("{key}.window.length"),
                format!("`{}` is not a duration of at least 5s", w.length),
            )
        })?;
    if w.quantiles.is_empty() || w.quantiles.iter().any(|q| !(*q > 0.0 && *q <= 1.0)) {
        return Err(err(
            format!("{key}.window.quantiles"),
            "need one or more quantiles in (0, 1]",
        ));
    }
    Ok(WindowDef {
        name: w.metric.clone(),
        help: w.help.clone().unwrap_or_else(|| {
            format!(
                "Exact quantiles of {} over the last {}, from this replica's HDR data.",
                m.metric, w.length
            )
        }),
        length,
        quantiles: w.quantiles.clone(),
    })
}

fn default_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

fn check_buckets(key: &str, b: &[f64]) -> Result<Vec<f64>, ConfigError> {
    if b.is_empty() {
        return Err(err(key, "needs at least one bound"));
    }
    if b.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(err(
            key,
            "bounds must be finite and not negative (+Inf is implied)",
        ));
    }
    if b.windows(2).any(|w| w[0] >= w[1]) {
        return Err(err(key, "bounds must be strictly increasing"));
    }
    Ok(b.to_vec())
}

/// Every series name a family exposes must be unique across the catalog,
/// and so must its OpenMetrics family name (a counter's, without `_total`).
fn check_collisions(metrics: &[MetricDef]) -> Result<(), ConfigError> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for builtin in [
        EVENTS_METRIC,
        SLO_EVENTS_METRIC,
        SLO_OBJECTIVE_METRIC,
        SLO_THRESHOLD_METRIC,
    ] {
        seen.insert(builtin.to_string(), builtin);
        seen.insert(family_of(builtin).to_string(), builtin);
    }
    for d in metrics {
        let names: Vec<String> = match d.kind {
            Kind::Histogram => ["_bucket", "_sum", "_count", ""]
                .iter()
                .map(|s| format!("{}{s}", d.name))
                .collect(),
            Kind::Counter => vec![d.name.clone(), family_of(&d.name).to_string()],
            Kind::Gauge => vec![d.name.clone()],
        };
        let window = d
            .window
            .iter()
            .flat_map(|w| ["", "_sum", "_count"].map(|s| format!("{}{s}", w.name)));
        for n in names.into_iter().chain(window) {
            if let Some(other) = seen.insert(n.clone(), &d.name) {
                return Err(err(
                    "mappings",
                    format!(
                        "metric `{}` collides with `{other}` on series `{n}`",
                        d.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A counter's OpenMetrics family name: its name without `_total`.
fn family_of(counter: &str) -> &str {
    counter.strip_suffix("_total").unwrap_or(counter)
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `500ms`, `30s`, `10m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    Duration::try_from_secs_f64(parse_seconds(s)?).ok()
}

/// A duration as [`parse_duration`] reads it, in seconds: milliseconds are
/// divided by 1e3, as event values in milliseconds are, so `30001ms` and an
/// event of 30001 ms compare equal.
fn parse_seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return None,
    };
    Some(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(mapping: &str) -> Result<Catalog, ConfigError> {
        Catalog::from_yaml(&format!("mappings:\n{mapping}"))
    }

    #[test]
    fn default_mapping_loads_the_catalog() {
        let c = Catalog::default_mapping();
        let names: Vec<&str> = c.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names.len(), 8);
        assert!(names.contains(&"session_ds_acquisition_wait_seconds"));
        let ds = &c.rules_for("MetricAcquiringDsWaitTimeEvent")[0];
        assert_eq!(ds.value.as_ref().map(|v| v.divisor), Some(1e3));
        assert!(c.rules_for("MetricAcquiringDsEvent")[0].value.is_none());
        assert_eq!(c.limits.max_namespaces, 10_000);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = one("  - event: A\n    metric: a_total\n    type: counter\n    buckt: [1]\n")
            .unwrap_err();
        assert!(e.to_string().contains("buckt"), "{e}");
    }

    #[test]
    fn type_conflict_is_refused() {
        let e = one(
            "  - {event: A, metric: x_total, type: counter}\n  - {event: B, metric: x_total, type: gauge}\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("mappings[1].metric"), "{e}");
    }

    #[test]
    fn shared_metric_with_same_definition_is_allowed() {
        let c = one(
            "  - {event: A, metric: x_total, type: counter, help: h}\n  - {event: B, metric: x_total, type: counter, help: h}\n",
        )
        .unwrap();
        assert_eq!(c.metrics.len(), 1);
        assert_eq!(c.rules_for("B")[0].metric, 0);
    }

    #[test]
    fn invalid_fields_are_refused_by_key() {
        let cases = [
            (
                "  - {event: A, metric: a, type: counter}\n",
                "mappings[0].metric",
            ),
            (
                "  - {event: A, metric: 9a, type: gauge}\n",
                "mappings[0].metric",
            ),
            (
                "  - {event: A, metric: a, type: gauge, buckets: [1]}\n",
                "mappings[0].buckets",
            ),
            (
                "  - {event: A, metric: a, type: histogram, buckets: [2, 1]}\n",
                "mappings[0].buckets",
            ),
            (
                "  - {event: A, metric: a, type: gauge, ttl: soon}\n",
                "mappings[0].ttl",
            ),
            (
                "  - {event: A, metric: a, type: histogram, significant_figures: 9}\n",
                "mappings[0].significant_figures",
            ),
            (
                "  - {event: A, metric: a, type: gauge, value: {pointer: value}}\n",
                "mappings[0].value.pointer",
            ),
            (
                "  - {event: A, metric: session_exporter_x, type: gauge}\n",
                "mappings[0].metric",
            ),
            ("  - {event: A, metric: a_total, type: counter, window: {metric: w}}\n", "mappings[0].window"),
            ("  - {event: A, metric: a, type: histogram, window: {metric: w, quantiles: [1.5]}}\n", "mappings[0].window.quantiles"),
            ("  - {event: A, metric: a, type: histogram, window: {metric: w, length: 1s}}\n", "mappings[0].window.length"),
            ("  - {event: A, metric: a, type: histogram, window: {metric: a_sum}}\n", "mappings"),
        ];
        for (yaml, key) in cases {
            let e = one(yaml).unwrap_err().to_string();
            assert!(e.starts_with(key), "{yaml}: {e}");
        }
        // OpenMetrics names a counter's family without `_total`.
        let e = one("  - {event: A, metric: x_total, type: counter}\n  - {event: B, metric: x, type: gauge}\n")
            .unwrap_err();
        assert!(e.to_string().contains("collides"), "{e}");
        let e = one("  - {event: A, metric: h, type: histogram}\n  - {event: B, metric: h_count, type: gauge}\n")
            .unwrap_err();
        assert!(e.to_string().contains("collides"), "{e}");
    }

    #[test]
    fn limits_are_checked() {
        let e = Catalog::from_yaml(
            "limits: {max_namespaces: 0}\nmappings:\n  - {event: A, metric: a, type: gauge}\n",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("limits.max_namespaces"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("m"), None);
    }
}
