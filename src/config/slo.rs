//! Service-level objectives of the mapping file (`slos:`): which histogram's
//! events count as good (at or under the namespace's threshold) or bad, and
//! the share of good events each namespace promises over a period. The fold
//! counts the SLI from every event; `crate::rules` turns these into the
//! Prometheus burn-rate rules.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;

use super::{err, parse_duration, parse_seconds, ConfigError, Kind, MetricDef};

/// The fastest burn tier (the SRE workbook's page over 1 h and 5 m at a
/// 30-day period): an objective it can never reach is refused.
pub const FASTEST_BURN: f64 = 14.4;

/// Fewest events in a tier's long window before it may alert, by default.
const DEFAULT_MIN_EVENTS: u64 = 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlo {
    name: String,
    metric: String,
    threshold: RawThreshold,
    objective: f64,
    #[serde(default = "default_period")]
    period: String,
    #[serde(default)]
    min_events: Option<u64>,
    #[serde(default)]
    namespaces: BTreeMap<String, RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    #[serde(default)]
    threshold: Option<RawThreshold>,
    #[serde(default)]
    objective: Option<f64>,
}

/// `30s` or `500ms`, or a bare number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawThreshold {
    Seconds(f64),
    Duration(String),
}

fn default_period() -> String {
    "30d".into()
}

/// What one namespace is promised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Good: the value (seconds) is at or under it.
    pub threshold: f64,
    /// The share of good events promised over the period, in (0, 1).
    pub objective: f64,
}

/// One validated SLO.
#[derive(Debug, Clone, PartialEq)]
pub struct SloDef {
    /// The `slo` label.
    pub name: String,
    /// Index of its histogram in `Catalog::metrics`.
    pub metric: usize,
    pub target: Target,
    pub period: Duration,
    /// Fewest events in a tier's long window for it to alert.
    pub min_events: u64,
    /// Per-namespace targets, by exact name.
    pub overrides: HashMap<String, Target>,
}

impl SloDef {
    /// The target of namespace `ns`: its override, else the SLO's own.
    pub fn target_of(&self, ns: &str) -> Target {
        if self.overrides.is_empty() {
            return self.target;
        }
        self.overrides.get(ns).copied().unwrap_or(self.target)
    }
}

pub(super) fn check_slos(
    raw: Vec<RawSlo>,
    metrics: &[MetricDef],
) -> Result<Vec<SloDef>, ConfigError> {
    let mut slos: Vec<SloDef> = Vec::with_capacity(raw.len());
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("slos[{i}]");
        if !valid_name(&s.name) {
            return Err(err(
                format!("{key}.name"),
                format!(
                    "`{}` is not a name of letters, digits, `_`, `-` and `.`",
                    s.name
                ),
            ));
        }
        if slos.iter().any(|o| o.name == s.name) {
            return Err(err(
                format!("{key}.name"),
                format!("`{}` is defined twice", s.name),
            ));
        }
        let metric = metrics
            .iter()
            .position(|d| d.name == s.metric)
            .ok_or_else(|| {
                err(
                    format!("{key}.metric"),
                    format!("`{}` is not a metric of this mapping", s.metric),
                )
            })?;
        let def = &metrics[metric];
        // The threshold gauge is in seconds, as are the durations it compares.
        if def.kind != Kind::Histogram || def.hdr_scale != 1e3 {
            return Err(err(
                format!("{key}.metric"),
                format!(
                    "`{}` is not a histogram of durations (a unit of time)",
                    s.metric
                ),
            ));
        }
        let period = parse_duration(&s.period)
            .filter(|p| *p >= MIN_PERIOD)
            .ok_or_else(|| {
                err(
                    format!("{key}.period"),
                    format!("`{}` is not a duration of at least 12h (the shortest alert window is period / 8640)", s.period),
                )
            })?;
        let target = check_target(&key, &s.threshold, s.objective)?;
        let mut overrides = HashMap::new();
        for (ns, t) in &s.namespaces {
            let key = format!("{key}.namespaces.{ns}");
            let threshold = t.threshold.as_ref();
            let o = check_target(
                &key,
                threshold.unwrap_or(&RawThreshold::Seconds(target.threshold)),
                t.objective.unwrap_or(target.objective),
            )?;
            overrides.insert(ns.clone(), o);
        }
        let min_events = s.min_events.unwrap_or(DEFAULT_MIN_EVENTS);
        if min_events == 0 {
            return Err(err(format!("{key}.min_events"), "must be at least 1"));
        }
        slos.push(SloDef {
            name: s.name,
            metric,
            target,
            period,
            min_events,
            overrides,
        });
    }
    Ok(slos)
}

/// The shortest tier window is the period / 8640 (5 m of 30 d): 12 h keeps
/// it at 5 s, the most a test can shorten it and still scrape it.
const MIN_PERIOD: Duration = Duration::from_secs(12 * 3600);

fn check_target(
    key: &str,
    threshold: &RawThreshold,
    objective: f64,
) -> Result<Target, ConfigError> {
    let seconds = match threshold {
        RawThreshold::Seconds(s) => Some(*s),
        RawThreshold::Duration(d) => parse_seconds(d),
    };
    let threshold = seconds
        .filter(|s| s.is_finite() && *s > 0.0)
        .ok_or_else(|| {
            err(
                format!("{key}.threshold"),
                "must be a positive duration like 30s or 500ms (or a number of seconds)",
            )
        })?;
    if !(objective > 0.0 && objective < 1.0) {
        return Err(err(
            format!("{key}.objective"),
            format!("{objective} is not in (0, 1)"),
        ));
    }
    if FASTEST_BURN * (1.0 - objective) >= 1.0 {
        return Err(err(
            format!("{key}.objective"),
            format!(
                "{objective} is too low for the page tier: burning {FASTEST_BURN}x its budget \
                 would need more than every event to be bad (objectives above {:.4} can page)",
                1.0 - 1.0 / FASTEST_BURN
            ),
        ));
    }
    Ok(Target {
        threshold,
        objective,
    })
}

/// A label value that is also safe in rule and group names.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use crate::config::{Catalog, DEFAULT_MAPPING};

    fn with_slo(slo: &str) -> Result<Catalog, String> {
        let start = DEFAULT_MAPPING.find("slos:").unwrap();
        Catalog::from_yaml(&format!("{}slos:\n{slo}", &DEFAULT_MAPPING[..start]))
            .map_err(|e| e.to_string())
    }

    const OK: &str = "  - {name: ds, metric: session_ds_acquisition_wait_seconds, threshold: 30s, objective: 0.99}\n";

    #[test]
    fn the_default_mapping_ships_the_ds_acquisition_slo() {
        let c = Catalog::default_mapping();
        let slo = &c.slos[0];
        assert_eq!(
            (
                slo.name.as_str(),
                slo.target.threshold,
                slo.target.objective
            ),
            ("ds-acquisition", 30.0, 0.99)
        );
        assert_eq!(slo.period.as_secs(), 30 * 86_400);
        assert_eq!(c.rules_for("MetricAcquiringDsWaitTimeEvent")[0].slos, [0]);
        assert!(c.rules_for("MetricMatchLengthDurationEvent")[0]
            .slos
            .is_empty());
    }

    #[test]
    fn overrides_replace_what_they_name() {
        let c = with_slo(
            "  - name: ds\n    metric: session_ds_acquisition_wait_seconds\n    threshold: 30s\n    \
             objective: 0.99\n    period: 7d\n    namespaces:\n      big: {threshold: 500ms}\n      \
             strict: {objective: 0.999}\n      both: {threshold: 10, objective: 0.995}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let slo = &c.slos[0];
        let t = |ns: &str| (slo.target_of(ns).threshold, slo.target_of(ns).objective);
        assert_eq!(t("big"), (0.5, 0.99));
        assert_eq!(t("strict"), (30.0, 0.999));
        assert_eq!(t("both"), (10.0, 0.995));
        assert_eq!(t("other"), (30.0, 0.99));
        assert_eq!(slo.period.as_secs(), 7 * 86_400);
    }

    #[test]
    fn what_cannot_work_is_refused_by_key() {
        let base = "name: ds, metric: session_ds_acquisition_wait_seconds, threshold: 30s, objective: 0.99";
        let cases = [
            (
                base.replace("session_ds_acquisition_wait_seconds", "nope"),
                "slos[0].metric",
            ),
            (
                base.replace(
                    "session_ds_acquisition_wait_seconds",
                    "session_ds_acquisitions_total",
                ),
                "slos[0].metric",
            ),
            (
                base.replace(
                    "session_ds_acquisition_wait_seconds",
                    "session_players_per_session",
                ),
                "slos[0].metric",
            ),
            (base.replace("0.99", "1"), "slos[0].objective"),
            (base.replace("0.99", "0"), "slos[0].objective"),
            (base.replace("0.99", "0.93"), "slos[0].objective"),
            (base.replace("30s", "0s"), "slos[0].threshold"),
            (base.replace("30s", "-1"), "slos[0].threshold"),
            (base.replace("30s", "soon"), "slos[0].threshold"),
            (base.replace("name: ds", "name: \"a b\""), "slos[0].name"),
            (format!("{base}, period: 1h"), "slos[0].period"),
            (format!("{base}, min_events: 0"), "slos[0].min_events"),
            (
                format!("{base}, namespaces: {{g: {{objective: 0.5}}}}"),
                "slos[0].namespaces.g.objective",
            ),
            (
                format!("{base}, namespaces: {{g: {{treshold: 5s}}}}"),
                "treshold",
            ),
        ];
        for (slo, want) in cases {
            let e = with_slo(&format!("  - {{{slo}}}\n")).unwrap_err();
            assert!(e.contains(want), "{slo}: {e}");
        }
        let twice = with_slo(&format!("{OK}{OK}")).unwrap_err();
        assert!(twice.starts_with("slos[1].name"), "{twice}");
        // 14.4 x (1 - 0.9306) < 1: the page tier can still fire.
        assert!(with_slo(&OK.replace("0.99", "0.9306")).is_ok());
    }
}
