//! The Grafana dashboards: the dashboard-linter's rules over the JSON, and an
//! end-to-end run where every panel query must return data from a real
//! Prometheus that scraped the exporter fed by the simulator, with the rules
//! loaded and the DS-latency alert raised only for the degraded namespaces.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const DASHBOARDS: [(&str, &str); 2] = [
    (
        "dashboards/session-overview.json",
        "session-exporter-overview",
    ),
    ("dashboards/exporter-health.json", "session-exporter-health"),
];

fn load(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path(path)).unwrap()).unwrap()
}

fn panels(d: &Value) -> Vec<&Value> {
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

fn variable<'a>(d: &'a Value, name: &str) -> Option<&'a Value> {
    d["templating"]["list"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
}

/// Every `[...]` range in an expression.
fn ranges(expr: &str) -> Vec<&str> {
    expr.split('[')
        .skip(1)
        .filter_map(|s| s.split(']').next())
        .collect()
}

/// Every `{...}` selector in an expression.
fn selectors(expr: &str) -> Vec<&str> {
    expr.split('{')
        .skip(1)
        .filter_map(|s| s.split('}').next())
        .collect()
}

#[test]
fn dashboards_follow_the_linter_rules() {
    for (path, uid) in DASHBOARDS {
        let d = load(path);
        assert_eq!(d["uid"], uid, "{path}: stable uid");
        let ds = variable(&d, "datasource").expect("datasource variable");
        assert_eq!(
            (&ds["type"], &ds["query"]),
            (&Value::from("datasource"), &Value::from("prometheus")),
            "{path}"
        );
        let mut wanted = vec!["job", "instance"];
        if path.contains("overview") {
            wanted.push("game_namespace");
        }
        for name in wanted {
            let v = variable(&d, name).unwrap_or_else(|| panic!("{path}: ${name} variable"));
            assert_eq!(v["type"], "query", "{path} {name}");
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{path} {name}");
            assert!(
                v["multi"] == true && v["includeAll"] == true,
                "{path} {name}: multi-value with All"
            );
        }
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("");
            assert!(!title.is_empty(), "{path}: panel without title");
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "{path} {title}: description"
            );
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{path} {title}");
            assert!(
                p["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .is_some_and(|u| !u.is_empty()),
                "{path} {title}: unit"
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{path} {title}: no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{path} {title}");
                let e = t["expr"].as_str().unwrap();
                for r in ranges(e) {
                    assert_eq!(r, "$__rate_interval", "{path} {title}: {e}");
                }
                for s in selectors(e) {
                    assert!(
                        s.contains("job=~\"$job\"") && s.contains("instance=~\"$instance\""),
                        "{path} {title}: {e}"
                    );
                }
                if e.contains("histogram_quantile") {
                    assert!(
                        e.contains("_bucket{") && e.contains("sum by (le"),
                        "{path} {title}: quantile over summed buckets: {e}"
                    );
                }
                if e.contains("session_active_sessions") {
                    assert!(
                        e.starts_with("max by"),
                        "{path} {title}: gauges combine with max: {e}"
                    );
                }
                let domain = e.contains("session_")
                    && !e.contains("session_exporter_")
                    && !e.contains("session_events_total");
                if domain {
                    assert!(
                        e.contains("game_namespace=~\"$game_namespace\""),
                        "{path} {title}: {e}"
                    );
                }
                for word in e.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                    if word.ends_with("_total") {
                        assert!(
                            e.contains(&format!("rate({word}")),
                            "{path} {title}: counter {word} without rate"
                        );
                    }
                }
            }
        }
    }
}

/// Substitute the template variables as Grafana would with "All" selected.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("\"$job\"", "\"session-exporter\"")
        .replace("\"$instance\"", "\".+\"")
        .replace("\"$game_namespace\"", "\".*\"")
}

#[test]
fn every_panel_returns_data_and_the_ds_alert_fires_only_when_degraded() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    let _healthy = Simulator::start(
        &nats.url(),
        &[
            "--rate",
            "300",
            "--namespaces",
            "3",
            "--invalid-ratio",
            "0.01",
        ],
    );
    let _degraded = Simulator::start(
        &nats.url(),
        &[
            "--rate",
            "100",
            "--namespaces",
            "2",
            "--seed",
            "7",
            "--ds-wait-scale",
            "60",
            "--namespace-prefix",
            "degraded-",
        ],
    );
    let prom = Prometheus::start(
        &exporter.addr,
        &[repo_path("rules/session-exporter.rules.yml")],
    );

    let mut queries = Vec::new();
    for (path, _) in DASHBOARDS {
        let d = load(path);
        for p in panels(&d) {
            for t in p["targets"].as_array().unwrap() {
                queries.push((
                    format!("{path}: {}", p["title"]),
                    substitute(t["expr"].as_str().unwrap()),
                ));
            }
        }
        // Template variable queries: label_values(metric, label) must find values.
        for v in d["templating"]["list"].as_array().unwrap() {
            let Some(def) = v["definition"].as_str() else {
                continue;
            };
            let inner = def
                .trim_start_matches("label_values(")
                .trim_end_matches(')');
            let (metric, label) = inner.rsplit_once(',').unwrap();
            queries.push((
                format!("{path}: ${}", v["name"]),
                substitute(&format!("group by ({}) ({metric})", label.trim())),
            ));
        }
    }
    assert!(queries.len() > 30);
    for (what, q) in &queries {
        wait_for(
            Duration::from_secs(60),
            &format!("data for {what}: {q}"),
            || (!prom.query(q).is_empty()).then_some(()),
        );
    }

    // The DS-latency alert: pending or firing for the degraded namespaces only.
    let alerts = wait_for(
        Duration::from_secs(60),
        "DS latency alerts for both degraded namespaces",
        || {
            let r = prom.query("ALERTS{alertname=~\"SessionDSAcquisitionLatency.*\"}");
            let degraded = r
                .iter()
                .filter(|a| {
                    a["metric"]["game_namespace"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("degraded-")
                })
                .count();
            (degraded >= 4).then_some(r)
        },
    );
    for a in &alerts {
        let ns = a["metric"]["game_namespace"].as_str().unwrap();
        assert!(
            ns.starts_with("degraded-"),
            "DS latency alert for healthy namespace {ns}"
        );
    }
    let p99 = prom.query("game_namespace:session_ds_acquisition_wait_seconds:p99_rate5m{game_namespace!~\"degraded-.*\"}");
    assert!(!p99.is_empty(), "recording rule has healthy namespaces");
    for s in p99 {
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(v < 30.0, "healthy p99 {v}");
    }
}
