//! grafana/dashboard-linter's rules over the shipped dashboards, as our own
//! implementation (no Go toolchain or linter binary can be installed here).
//! Each rule of its default set is checked as the linter does it, or more
//! strictly; PromQL is parsed, and every selector's matchers read, by
//! promtool 3.x. Where the job and instance rules do not fit,
//! `dashboards/.lint` (the linter's own exclusions file, so a real linter run
//! honours it too) says why, and the test holds that file to what it finds,
//! both ways; every other rule has no exclusion and simply must pass.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Grafana unit ids (its unit picker's) the dashboards may use: any other
/// text is drawn as a bare suffix, and `panel-units-rule` refuses it.
const UNITS: [&str; 12] = [
    "bool_yes_no",
    "bytes",
    "decbytes",
    "ms",
    "none",
    "ops",
    "percent",
    "percentunit",
    "reqps",
    "s",
    "short",
    "dtdurations",
];

/// Every `[...]` range in an expression.
fn ranges(expr: &str) -> Vec<&str> {
    expr.split('[')
        .skip(1)
        .filter_map(|s| s.split(']').next())
        .collect()
}

/// Every `{...}` selector's matchers in an expression.
fn matchers(expr: &str) -> Vec<&str> {
    selectors(expr).into_iter().map(|(_, m)| m).collect()
}

/// Every `{...}` selector in an expression: the name before it (empty for
/// none) and its matchers.
fn selectors(expr: &str) -> Vec<(&str, &str)> {
    let pieces: Vec<&str> = expr.split('{').collect();
    pieces
        .windows(2)
        .filter_map(|w| {
            let name = w[0].rsplit(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'));
            Some((name.into_iter().next()?, w[1].split('}').next()?))
        })
        .collect()
}

/// Whether every counter (`…_total`) in `expr` is read through `rate`,
/// `irate` or `increase` (`target-counter-agg-rule`).
fn counters_are_rated(expr: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut at = 0;
    while let Some(i) = expr[at..].find("_total").map(|i| at + i) {
        at = i + "_total".len();
        if expr[at..].starts_with(word) {
            continue;
        }
        let start = expr[..i].rfind(|c| !word(c)).map_or(0, |s| s + 1);
        let before = expr[..start].trim_end();
        if !["rate(", "increase("].iter().any(|f| before.ends_with(f)) {
            return false;
        }
    }
    true
}

#[test]
fn counters_outside_rate_are_found() {
    assert!(counters_are_rated(
        "sum(rate(a_total{x=\"1\"}[5m])) / sum(increase(b_total[1h]))"
    ));
    assert!(counters_are_rated("sum(irate( a_total[5m]))"));
    assert!(!counters_are_rated("sum(rate(a_total[5m])) / sum(b_total)"));
    assert!(!counters_are_rated("max_over_time(a_total[5m])"));
}

#[test]
fn dashboards_follow_the_linter_rules() {
    for (path, uid) in DASHBOARDS {
        let d = load(path);
        assert_eq!(d["uid"], uid, "{path}: stable uid");
        // uneditable-dashboard: provisioned, changed in the repository.
        assert_eq!(d["editable"], false, "{path}: uneditable-dashboard");
        template_rules(path, &d);
        for p in panels(&d) {
            panel_rules(path, p);
        }
    }
}

/// `template-datasource-rule`, `template-job-rule`,
/// `template-instance-rule`, `template-on-time-change-reload-rule`, and our
/// own: the namespace and SLO variables are multi-value with All too.
fn template_rules(path: &str, d: &Value) {
    let list = d["templating"]["list"].as_array().unwrap();
    let sources: Vec<&Value> = list.iter().filter(|v| v["type"] == "datasource").collect();
    assert_eq!(sources.len(), 1, "{path}: one data source variable");
    let ds = sources[0];
    assert_eq!(
        (&ds["name"], &ds["label"], &ds["query"]),
        (
            &Value::from("datasource"),
            &Value::from("Data source"),
            &Value::from("prometheus")
        ),
        "{path}: template-datasource-rule"
    );
    for (name, label) in [("job", "Job"), ("instance", "Instance")] {
        let v = variable(d, name).unwrap_or_else(|| panic!("{path}: ${name} variable"));
        assert_eq!(v["label"], label, "{path} {name}");
        assert_eq!(v["allValue"], ".+", "{path} {name}: All is any value");
    }
    let mut wanted = vec!["job", "instance"];
    if path.contains("overview") || path == SLO {
        wanted.push("game_namespace");
    }
    if path == SLO {
        wanted.push("slo");
    }
    for name in wanted {
        let v = variable(d, name).unwrap_or_else(|| panic!("{path}: ${name} variable"));
        assert_eq!(v["type"], "query", "{path} {name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{path} {name}");
        assert!(
            v["multi"] == true && v["includeAll"] == true,
            "{path} {name}: multi-value with All"
        );
    }
    for v in list.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["refresh"], 2,
            "{path} {}: template-on-time-change-reload-rule",
            v["name"]
        );
    }
}

/// `panel-datasource-rule`, `panel-title-description-rule`,
/// `panel-units-rule`, `panel-no-targets-rule`,
/// `target-rate-interval-rule`, `target-counter-agg-rule`, and our own:
/// quantiles over summed buckets, gauges combined with `max`, every domain
/// query filtered by namespace (and SLO).
fn panel_rules(path: &str, p: &Value) {
    let title = p["title"].as_str().unwrap_or("");
    assert!(!title.is_empty(), "{path}: panel without title");
    assert!(
        p["description"].as_str().is_some_and(|s| !s.is_empty()),
        "{path} {title}: description"
    );
    assert_eq!(p["datasource"]["uid"], "${datasource}", "{path} {title}");
    let field = &p["fieldConfig"];
    let overrides = field["overrides"].as_array().into_iter().flatten();
    let units = overrides
        .flat_map(|o| o["properties"].as_array().into_iter().flatten())
        .filter(|prop| prop["id"] == "unit")
        .map(|prop| &prop["value"])
        .chain([&field["defaults"]["unit"]]);
    for unit in units {
        assert!(
            unit.as_str().is_some_and(|u| UNITS.contains(&u)),
            "{path} {title}: panel-units-rule: {unit} is not one of Grafana's unit ids {UNITS:?}"
        );
    }
    let targets = p["targets"].as_array().unwrap();
    assert!(!targets.is_empty(), "{path} {title}: no query");
    for t in targets {
        assert_eq!(t["datasource"]["uid"], "${datasource}", "{path} {title}");
        let e = t["expr"].as_str().unwrap();
        for r in ranges(e) {
            assert_eq!(r, "$__rate_interval", "{path} {title}: {e}");
        }
        assert!(
            counters_are_rated(e),
            "{path} {title}: target-counter-agg-rule: {e}"
        );
        if path == SLO {
            for m in matchers(e) {
                assert!(m.contains("slo=~\"$slo\""), "{path} {title}: {e}");
            }
        }
        if e.contains("histogram_quantile") && path != NATIVE {
            assert!(
                e.contains("_bucket{") && e.contains("sum by (le"),
                "{path} {title}: quantile over summed buckets: {e}"
            );
        }
        if path == NATIVE {
            assert!(
                !e.contains("_bucket") && !e.contains("le,") && !e.contains("(le)"),
                "{path} {title}: native histograms have no buckets or le: {e}"
            );
        }
        if e.contains("session_active_sessions") {
            // (Inside the bound on how many namespaces a line shows.)
            let inner = ["topk(10, ", "bottomk(10, "]
                .iter()
                .find_map(|k| e.strip_prefix(k))
                .unwrap_or(e);
            assert!(
                inner.starts_with("max by"),
                "{path} {title}: gauges combine with max: {e}"
            );
        }
        let domain = (e.contains("session_") || e.contains("slo:"))
            && !e.contains("session_exporter_")
            && !e.contains("session_events_total");
        if domain {
            assert!(
                e.contains("game_namespace=~\"$game_namespace\""),
                "{path} {title}: {e}"
            );
        }
    }
}

/// A rule broken at one place: `(rule, dashboard title, panel title,
/// target index)`, as a `.lint` entry names it.
type Finding = (String, String, String, usize);

#[test]
fn every_query_parses_and_selects_the_job_and_instance() {
    let promtool = pinned_tool("prometheus-3", "usr/bin").join("promtool");
    // The check finds a selector without the matchers (here the bare `up`),
    // and passes one that has them.
    let bare = "sum(up) / sum(up{job=~\"$job\",instance=~\"$instance\"})";
    assert_eq!(
        missing(&promtool, bare),
        ["target-job-rule", "target-instance-rule"]
    );
    let full = "up{job=~\"$job\",instance=~\"$instance\"}";
    assert!(missing(&promtool, full).is_empty());

    let found: BTreeSet<Finding> = std::thread::scope(|s| {
        let each = DASHBOARDS.map(|(path, _)| s.spawn(|| findings(&promtool, path)));
        each.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let excluded = exclusions(&repo_path("dashboards/.lint"));
    let unexplained: Vec<_> = found.difference(&excluded).collect();
    let stale: Vec<_> = excluded.difference(&found).collect();
    assert!(
        unexplained.is_empty() && stale.is_empty(),
        "found but not excluded in dashboards/.lint: {unexplained:#?}\n\
         excluded but not found (stale): {stale:#?}"
    );
}

/// `template-label-promql-rule` and `target-promql-rule` (a query that
/// does not parse panics), and what `target-job-rule` and
/// `target-instance-rule` find in the dashboard at `path`.
fn findings(promtool: &Path, path: &str) -> Vec<Finding> {
    let d = load(path);
    let dashboard = d["title"].as_str().unwrap();
    for v in d["templating"]["list"].as_array().unwrap() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap();
        let series = q
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(series, _)| series)
            .unwrap_or_else(|| panic!("{path} {}: label_values(series, label): {q}", v["name"]));
        promql(promtool, &["format", series])
            .unwrap_or_else(|e| panic!("{path} {}: template-label-promql-rule: {e}", v["name"]));
    }
    let mut found = Vec::new();
    for p in panels(&d) {
        let panel = p["title"].as_str().unwrap();
        for (i, t) in p["targets"].as_array().unwrap().iter().enumerate() {
            let expr = t["expr"].as_str().unwrap();
            for rule in missing(promtool, expr) {
                if rule == "target-instance-rule" {
                    // What `.lint` may excuse: recorded series (their name
                    // has a colon) only; a raw selector fails here.
                    for (name, m) in selectors(expr) {
                        assert!(
                            m.contains("instance=~\"$instance\"") || name.contains(':'),
                            "{path} {panel}: {name}{{{m}}} without $instance"
                        );
                    }
                }
                found.push((rule.into(), dashboard.into(), panel.into(), i));
            }
        }
    }
    found
}

/// Which of `target-job-rule` and `target-instance-rule` `expr` breaks: a
/// selector without `job=~"$job"` (`instance=~"$instance"`) is one that
/// promtool's `label-matchers set` changes.
fn missing(promtool: &Path, expr: &str) -> Vec<&'static str> {
    // As the linter expands it: the range's variable outside the quotes.
    let expr = expr.replace("$__rate_interval", "5m");
    let as_is = promql(promtool, &["label-matchers", "delete", &expr, "__none__"])
        .unwrap_or_else(|e| panic!("target-promql-rule: {e}"));
    let rules = [
        ("target-job-rule", "job", "$job"),
        ("target-instance-rule", "instance", "$instance"),
    ];
    rules
        .into_iter()
        .filter(|(_, label, value)| {
            let set = ["label-matchers", "set", "--type==~", &expr, label, value];
            promql(promtool, &set).unwrap() != as_is
        })
        .map(|(rule, ..)| rule)
        .collect()
}

/// `promtool --experimental promql ARGS`: what it prints, or why it failed.
fn promql(promtool: &Path, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(promtool)
        .args(["--experimental", "promql"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.success() {
        true => Ok(text),
        false => Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// The entries of a `.lint` file's exclusions, each with a reason (its own
/// or its rule's).
fn exclusions(file: &PathBuf) -> BTreeSet<Finding> {
    let text = std::fs::read_to_string(file).unwrap();
    let lint: Value = serde_saphyr::from_str(&text).unwrap();
    let mut all = BTreeSet::new();
    for (rule, what) in lint["exclusions"].as_object().unwrap() {
        let reason = what["reason"].as_str().unwrap_or("");
        for e in what["entries"].as_array().unwrap() {
            let own = e["reason"].as_str().unwrap_or("");
            assert!(
                !(reason.is_empty() && own.is_empty()),
                "{rule}: {e}: no reason"
            );
            let idx = e["targetIdx"].as_str().unwrap().parse().unwrap();
            let text = |k: &str| e[k].as_str().unwrap().to_string();
            all.insert((rule.clone(), text("dashboard"), text("panel"), idx));
        }
    }
    all
}
