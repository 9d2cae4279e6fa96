//! The Grafana dashboards (the linter's rules are in `tests/lint.rs`): alert
//! levels, links and annotations, Grafana's schema, and an end-to-end run
//! where every panel query must return data from a real Prometheus that
//! scraped the exporter fed by the simulator, with the rules loaded and the
//! DS-latency alert raised only for the degraded namespaces.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// Substitute the template variables as Grafana would with "All" selected.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("\"$job\"", "\"session-exporter\"")
        .replace("\"$instance\"", "\".+\"")
        .replace("\"$game_namespace\"", "\".*\"")
        .replace("\"$slo\"", "\".+\"")
}

/// Publishes a match in namespace `stalled-1` every 100 ms, and no DS
/// acquisition: a stall, until dropped (or for at most 5 minutes).
struct Stall(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Stall {
    fn start(url: &str) -> Stall {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, url) = (stop.clone(), url.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = async_nats::connect(&url).await.unwrap();
                let started = std::time::Instant::now();
                while !flag.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(300)
                {
                    let body = r#"{"name":"MetricMatchMatchmakingEvent","namespace":"stalled-1","payload":{"userIds":[],"message":""}}"#;
                    let _ = client
                        .publish("mpv2SessionHistory.MetricMatchMatchmakingEvent", body.into())
                        .await;
                    let _ = client.flush().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        });
        Stall(stop)
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Each alert's level on a panel that links to its runbook: (anchor, the
/// threshold step it draws). The SLO's threshold per namespace is drawn from
/// `session_slo_threshold_seconds` instead. The alerts on a rate above zero
/// (CardinalityOverflow, SlowConsumer) and on no messages (NotIngesting) have
/// no level to draw: their panels link to the runbook only.
const LEVELS: [(&str, f64); 8] = [
    ("sessionsloerrorbudgetburn", 14.4),
    ("sessionmatchmakingticketsnotmatched", 0.1),
    ("sessiondsacquisitionstalled", 1.0),
    ("sessionexporterhighrejectratio", 0.05),
    ("sessionexporterdown", 1.0),
    ("sessionexporternatsdisconnected", 1.0),
    ("sessionexportercheckpointsfailing", 300.0),
    ("sessionexportereventslost", 1.0),
];

/// For the bad night: alert levels drawn where the alerts' panels are, stat
/// panels coloured, firing alerts as annotations, dashboards linked by tag
/// (variables and time range kept), every runbook link to a section that
/// exists, and every alert of rules/ one link away.
/// With "All" over a large fleet, a per-namespace line draws at most 10
/// series (the highest, or for a ratio the lowest), not one per namespace.
#[test]
fn per_namespace_lines_are_bounded() {
    for path in ["dashboards/session-overview.json", NATIVE] {
        let d = load(path);
        for p in panels(&d).into_iter().filter(|p| p["type"] == "timeseries") {
            for t in p["targets"].as_array().into_iter().flatten() {
                let legend = t["legendFormat"].as_str().unwrap_or("");
                let e = t["expr"].as_str().unwrap();
                if !legend.contains("{{game_namespace}}") || legend.starts_with("stalled") {
                    continue;
                }
                assert!(
                    e.starts_with("topk(10, ") || e.starts_with("bottomk(10, "),
                    "{path} {}: {e}",
                    p["title"]
                );
            }
        }
    }
}

#[test]
fn dashboards_draw_alert_levels_and_link_runbooks() {
    let runbook = std::fs::read_to_string(repo_path("docs/runbook.md")).unwrap();
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::to_lowercase)
        .collect();
    let mut linked: Vec<String> = Vec::new();
    for (path, _) in DASHBOARDS {
        let d = load(path);
        let annotations = d["annotations"]["list"].as_array().unwrap();
        assert!(
            annotations.iter().any(|a| a["target"]["expr"]
                .as_str()
                .is_some_and(|e| e.starts_with("ALERTS{") && e.contains("alertstate=\"firing\""))),
            "{path}: firing alerts as annotations"
        );
        assert!(
            d["links"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["type"] == "dashboards"
                    && l["tags"] == serde_json::json!(["session-exporter"])
                    && l["includeVars"] == true
                    && l["keepTime"] == true),
            "{path}: dashboard links by tag, keeping variables and time"
        );
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap();
            let steps: Vec<f64> = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["value"].as_f64())
                .collect();
            if p["type"] == "stat" {
                let mappings = p["fieldConfig"]["defaults"]["mappings"].as_array();
                assert!(
                    !steps.is_empty() || mappings.is_some_and(|m| !m.is_empty()),
                    "{path} {title}: a stat panel without thresholds or mappings"
                );
            }
            let exprs: Vec<&str> = p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["expr"].as_str())
                .collect();
            for link in p["links"].as_array().into_iter().flatten() {
                let url = link["url"].as_str().unwrap();
                let Some((_, anchor)) = url.split_once("runbook.md#") else {
                    continue;
                };
                assert!(
                    anchors.iter().any(|a| a == anchor),
                    "{path} {title}: no runbook section #{anchor}"
                );
                linked.push(anchor.to_string());
                let Some(&(_, level)) = LEVELS.iter().find(|(a, _)| *a == anchor) else {
                    continue;
                };
                let per_namespace = exprs
                    .iter()
                    .any(|e| e.contains("session_slo_threshold_seconds"));
                assert!(
                    steps.contains(&level) || (anchor == LEVELS[0].0 && per_namespace),
                    "{path} {title}: links to #{anchor} but does not draw its level {level}"
                );
            }
        }
    }
    // The trace path: exemplars asked for where the buckets are read, and
    // the provisioned data source sends trace_id to a tracing data source.
    let overview = load(DASHBOARDS[0].0);
    let traced: Vec<&str> = panels(&overview)
        .into_iter()
        .filter(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["exemplar"] == true)
        })
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        traced,
        [
            "DS acquisition wait distribution, slowest namespace",
            "Match duration p50 / p90"
        ]
    );
    let ds: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_path("dashboards/provisioning/datasource.yml")).unwrap(),
    )
    .unwrap();
    let prometheus = &ds["datasources"][0];
    assert_eq!(prometheus["uid"], "prometheus");
    let destination = &prometheus["jsonData"]["exemplarTraceIdDestinations"][0];
    assert_eq!(destination["name"], "trace_id");
    assert_eq!(ds["datasources"][1]["uid"], destination["datasourceUid"]);
    // Every alert of the rules is one link away from some panel.
    for rules in [
        "rules/session-exporter.rules.yml",
        "rules/session-exporter.slo.rules.yml",
    ] {
        let text = std::fs::read_to_string(repo_path(rules)).unwrap();
        for line in text.lines() {
            if let Some(name) = line.trim().strip_prefix("- alert: ") {
                let anchor = name.to_lowercase();
                assert!(
                    linked.contains(&anchor),
                    "no panel links to the runbook of {name}"
                );
                let row = format!("| {name} |");
                assert!(runbook.contains(&row), "the runbook's table lacks {name}");
            }
        }
    }
}

/// 200 healthy namespaces, 3 with a degraded DS fleet and one stalled (with
/// a state store, as in production): every panel of the overview and the
/// health dashboard returns data, the worst-namespace panels put the 3
/// degraded first and count the stall, and the SLO pages only them.
#[test]
fn every_panel_returns_data_and_the_worst_namespaces_come_first() {
    let nats = Nats::start_jetstream();
    let state = [
        "--state.bucket",
        "STATE",
        "--state.key",
        "dashboards",
        "--state.interval",
        "500ms",
    ];
    let exporter = Exporter::start(&nats.url(), &state);
    exporter.wait_ready();
    let _healthy = Simulator::start(
        &nats.url(),
        &[
            "--rate",
            "400",
            "--namespaces",
            "200",
            "--invalid-ratio",
            "0.01",
        ],
    );
    let _degraded = Simulator::degraded(&nats.url(), 3);
    let _stall = Stall::start(&nats.url());
    for bin in prometheus_versions() {
        let prom = Prometheus::start_on(
            &bin,
            &exporter.addr,
            &[
                repo_path("rules/session-exporter.rules.yml"),
                repo_path("rules/session-exporter.slo.rules.yml"),
            ],
            &[],
            "",
        );

        let mut queries = dashboard_queries(&[DASHBOARDS[0].0, DASHBOARDS[1].0]);
        assert!(queries.len() > 30);
        queries.sort();
        for (what, q) in &queries {
            wait_for(
                Duration::from_secs(60),
                &format!("data for {what}: {q}"),
                || (!prom.query(q).is_empty()).then_some(()),
            );
        }
        worst_namespaces_come_first(&prom);
        ds_alerts_fire_only_when_degraded(&prom);
    }
}

/// The overview's "worst" panels, as Grafana would query them.
fn worst_namespaces_come_first(prom: &Prometheus) {
    let d = load(DASHBOARDS[0].0);
    for title in ["Highest SLO burn rate (1h)", "Highest DS wait p99"] {
        let panel = panels(&d)
            .into_iter()
            .find(|p| p["title"] == title)
            .unwrap();
        let q = substitute(panel["targets"][0]["expr"].as_str().unwrap());
        wait_for(
            Duration::from_secs(60),
            &format!("{title}: the degraded first"),
            || {
                let mut r: Vec<(f64, String)> = prom
                    .query(&q)
                    .iter()
                    .filter_map(|s| {
                        let v: f64 = s["value"][1].as_str()?.parse().ok()?;
                        Some((v, s["metric"]["game_namespace"].as_str()?.to_string()))
                    })
                    .filter(|(v, _)| !v.is_nan())
                    .collect();
                r.sort_by(|a, b| b.0.total_cmp(&a.0));
                let top: Vec<&String> = r.iter().take(3).map(|(_, ns)| ns).collect();
                (r.len() > 3 && top.iter().all(|ns| ns.starts_with("degraded-"))).then_some(())
            },
        );
    }
    // The stall is drawn on the DS wait panel, at the top bound. (Among 200
    // namespaces with a long tail, a quiet one can match without acquiring
    // in 5 minutes too: the alert waits 10 minutes for that reason.)
    let wait = panels(&d)
        .into_iter()
        .find(|p| {
            p["title"]
                .as_str()
                .unwrap()
                .starts_with("DS acquisition wait p50")
        })
        .unwrap();
    let stalled = wait["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["refId"] == "E");
    let q = substitute(stalled.unwrap()["expr"].as_str().unwrap());
    wait_for(
        Duration::from_secs(60),
        "stalled-1 drawn as a stall",
        || {
            let r = prom.query(&q);
            r.iter()
                .any(|s| s["metric"]["game_namespace"] == "stalled-1" && s["value"][1] == "300")
                .then_some(())
        },
    );
}

/// Every panel query, and every template variable's, with the variables
/// substituted.
fn dashboard_queries(paths: &[&str]) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for path in paths {
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
            let Some(def) = v["query"]["query"].as_str() else {
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
    queries
}

fn ds_alerts_fire_only_when_degraded(prom: &Prometheus) {
    // The DS-latency SLO's page: firing for the degraded namespaces only.
    let alerts = wait_for(
        Duration::from_secs(60),
        "SLO pages for both degraded namespaces",
        || {
            let r = prom.query(
                "ALERTS{alertname=\"SessionSLOErrorBudgetBurn\",severity=\"page\",alertstate=\"firing\"}",
            );
            let degraded = r
                .iter()
                .filter(|a| {
                    a["metric"]["game_namespace"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("degraded-")
                })
                .count();
            (degraded >= 3).then_some(r)
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
        // (NaN: a quiet namespace with no acquisition in 5 minutes.)
        let v: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
        assert!(v.is_nan() || v < 30.0, "healthy p99 {v}");
    }
}

#[test]
fn the_native_dashboard_returns_data_from_a_prometheus_with_native_histograms() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    let _sim = Simulator::start(&nats.url(), &["--rate", "300", "--namespaces", "3"]);
    let _stall = Stall::start(&nats.url());
    for bin in prometheus_versions() {
        let prom = Prometheus::start_on(
            &bin,
            &exporter.addr,
            &[
                repo_path("rules/session-exporter.rules.yml"),
                repo_path("rules/session-exporter.slo.rules.yml"),
            ],
            &["--enable-feature=native-histograms"],
            "",
        );
        let queries = dashboard_queries(&[NATIVE]);
        assert!(queries.len() > 15);
        for (what, q) in &queries {
            wait_for(
                Duration::from_secs(60),
                &format!("data for {what}: {q}"),
                || (!prom.query(q).is_empty()).then_some(()),
            );
        }
    }
}

/// The SLO dashboard over the shipped SLO rules (30-day windows): its budget
/// group evaluates every 5 minutes, so the test's copy evaluates it every
/// 2 seconds to have a first result within the test; nothing else changes.
#[test]
fn the_slo_dashboard_returns_data_from_the_shipped_slo_rules() {
    let shipped =
        std::fs::read_to_string(repo_path("rules/session-exporter.slo.rules.yml")).unwrap();
    assert!(shipped.contains("    interval: 5m\n"));
    let rules = temp_dir("slo-dashboard").join("slo.rules.yml");
    std::fs::write(
        &rules,
        shipped.replace("    interval: 5m\n", "    interval: 2s\n"),
    )
    .unwrap();
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    let _healthy = Simulator::start(&nats.url(), &["--rate", "300", "--namespaces", "3"]);
    let _degraded = Simulator::degraded(&nats.url(), 1);
    for bin in prometheus_versions() {
        let prom =
            Prometheus::start_on(&bin, &exporter.addr, std::slice::from_ref(&rules), &[], "");
        let queries = dashboard_queries(&[SLO]);
        assert!(queries.len() > 12, "{queries:?}");
        for (what, q) in &queries {
            wait_for(
                Duration::from_secs(60),
                &format!("data for {what}: {q}"),
                || (!prom.query(q).is_empty()).then_some(()),
            );
        }
        // The worst namespace first: the degraded one has spent its budget.
        let worst = wait_for(Duration::from_secs(60), "a spent budget", || {
            let r = prom.query("sort(slo:error_budget:remaining_ratio)");
            let first = r.first()?;
            let v: f64 = first["value"][1].as_str()?.parse().ok()?;
            (v < 0.0).then(|| {
                first["metric"]["game_namespace"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        });
        assert!(worst.starts_with("degraded-"), "{worst}");
    }
}

/// Every dashboard (the generated native one and the ConfigMap copies too)
/// type-checks as Grafana's own `Dashboard` (npm `@grafana/schema`, pinned in
/// scripts/setup) with `tsc --strict`: object literals, so unknown keys and
/// wrong shapes are errors. A broken copy must fail.
#[test]
fn dashboards_satisfy_grafanas_schema() {
    let node = repo_path(".tools/node");
    let tsc = node.join("node_modules/.bin/tsc");
    assert!(tsc.exists(), "{}: run scripts/setup", tsc.display());
    let mut sources: Vec<(String, String)> = DASHBOARDS
        .iter()
        .map(|(p, _)| p.to_string())
        .chain([NATIVE.to_string()])
        .map(|p| (p.clone(), std::fs::read_to_string(repo_path(&p)).unwrap()))
        .collect();
    for entry in std::fs::read_dir(repo_path("deploy/kubernetes/base/generated")).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("dashboard-")
        {
            continue;
        }
        let cm: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (key, json) in cm["data"].as_object().unwrap() {
            sources.push((
                format!("{} {key}", path.display()),
                json.as_str().unwrap().to_string(),
            ));
        }
    }
    assert!(sources.len() >= 6, "{}", sources.len());
    let check = |what: &str, dashboards: &[(String, String)]| -> (bool, String) {
        // Under .tools/node, so `@grafana/schema` resolves from its node_modules.
        let dir = node.join(format!("check-{}-{what}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Grafana's schema leaves a data source's query fields to its plugin
        // (an annotation's `target` is a bare DataQuery): the Prometheus
        // query's fields are spelled out here; all else is Grafana's own.
        let mut ts = String::from(
            "import { type AnnotationQuery, type Dashboard, type DataQuery, \
             FieldColorModeId, MappingType, ThresholdsMode } from '@grafana/schema';\n\
             interface PromQuery extends DataQuery { expr: string; step?: string; \
             titleFormat?: string; textFormat?: string; useValueForTime?: boolean; }\n\
             type Checked = Omit<Dashboard, 'annotations'> & \
             { annotations?: { list?: AnnotationQuery<PromQuery>[] } };\n",
        );
        for (i, (name, json)) in dashboards.iter().enumerate() {
            // The JSON's enum values as the TypeScript enum's members (a
            // string literal is not assignable to a TypeScript enum).
            let json = json
                .replace(
                    "\"mode\": \"absolute\"",
                    "\"mode\": ThresholdsMode.Absolute",
                )
                .replace(
                    "\"mode\": \"percentage\"",
                    "\"mode\": ThresholdsMode.Percentage",
                )
                .replace(
                    "\"mode\": \"thresholds\"",
                    "\"mode\": FieldColorModeId.Thresholds",
                )
                .replace("\"type\": \"value\"", "\"type\": MappingType.ValueToText");
            ts.push_str(&format!(
                "// {name}\nexport const d{i}: Checked = {json};\n"
            ));
        }
        std::fs::write(dir.join("check.ts"), ts).unwrap();
        std::fs::write(
            dir.join("tsconfig.json"),
            r#"{"compilerOptions": {"strict": true, "noEmit": true, "module": "nodenext", "moduleResolution": "nodenext", "target": "es2022", "skipLibCheck": true}, "files": ["check.ts"]}"#,
        )
        .unwrap();
        let out = std::process::Command::new(&tsc)
            .arg("-p")
            .arg(dir.join("tsconfig.json"))
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), said)
    };
    let (ok, said) = check("all", &sources);
    assert!(ok, "tsc against @grafana/schema:\n{said}");
    // Negative controls: an unknown key, and the empty `current` these
    // dashboards used to carry, must each fail.
    let (name, json) = &sources[0];
    let unknown = json.replacen("\"templating\": {", "\"templating\": {\"bogus\": 1, ", 1);
    let empty_current = json.replacen("\"refresh\": 2,", "\"refresh\": 2, \"current\": {},", 1);
    for (broken, says) in [(unknown, "bogus"), (empty_current, "VariableOption")] {
        assert_ne!(&broken, json);
        let (ok, said) = check("broken", &[(name.clone(), broken)]);
        assert!(
            !ok && said.contains(says),
            "a broken dashboard passed:\n{said}"
        );
    }
}
