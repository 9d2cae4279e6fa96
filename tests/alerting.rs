//! The shipped Alertmanager routing (`deploy/alertmanager/alertmanager.yml`)
//! on every Alertmanager the tests run (Debian's 0.25, sid's 0.33): amtool
//! accepts it and routes each severity to its receiver, and a real
//! Alertmanager delivers pages to a webhook with the inhibitions holding.
//! Every alert of `rules/` carries a severity the routing knows. And end to
//! end, on Prometheus 2.42 with Alertmanager 0.25 and on 3.5.3 with 0.33: the
//! exporter fed with a degraded namespace, rules generated for a 12 h SLO,
//! the shipped routing: the degraded namespace pages once (across a restart
//! of its exporter), no healthy one does, and with the exporter down its
//! namespace's page is held back by the exporter-down alert.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{
    alertmanager_versions, mapping_file, prometheus_versions, repo_path, run_ok, temp_dir,
    wait_for, Alertmanager, AmBin, Exporter, Nats, PromBin, Prometheus, Simulator, Webhook,
    EXPORTER,
};
use serde_json::{json, Value};

const CONFIG: &str = "deploy/alertmanager/alertmanager.yml";

fn config() -> String {
    repo_path(CONFIG).to_str().unwrap().to_string()
}

#[test]
fn amtool_accepts_the_config() {
    for bin in alertmanager_versions() {
        let said = run_ok(bin.amtool().to_str().unwrap(), &["check-config", &config()]);
        assert!(said.contains("SUCCESS"), "{}: {said}", bin.name());
    }
}

/// `amtool config routes test --verify.receivers`: does an alert with
/// `labels` go to `receiver`?
fn routes_to(bin: &AmBin, receiver: &str, labels: &[&str]) -> bool {
    Command::new(bin.amtool())
        .args(["config", "routes", "test"])
        .arg(format!("--config.file={}", config()))
        .arg(format!("--verify.receivers={receiver}"))
        .args(labels)
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn each_severity_routes_to_its_receiver() {
    let slo = [
        "alertname=SessionSLOErrorBudgetBurn",
        "slo=ds-acquisition",
        "game_namespace=g",
        "job=session-exporter",
    ];
    let down = [
        "alertname=SessionExporterDown",
        "job=session-exporter",
        "instance=10.0.0.1:9750",
    ];
    let idle = [
        "alertname=SessionExporterNotIngesting",
        "job=session-exporter",
        "instance=10.0.0.1:9750",
    ];
    let cases = [
        ("page", "severity=page", &slo[..]),
        ("ticket", "severity=ticket", &slo),
        ("page", "severity=critical", &down),
        ("ticket", "severity=warning", &idle),
        // An unknown severity still reaches a person.
        ("ticket", "severity=info", &idle),
    ];
    for bin in alertmanager_versions() {
        for (receiver, severity, labels) in cases {
            let labels: Vec<&str> = labels.iter().copied().chain([severity]).collect();
            let other = if receiver == "page" { "ticket" } else { "page" };
            assert!(
                routes_to(&bin, receiver, &labels),
                "{}: {labels:?} -> {receiver}",
                bin.name()
            );
            assert!(
                !routes_to(&bin, other, &labels),
                "{}: {labels:?} -> {other} too",
                bin.name()
            );
        }
    }
}

/// Every alert of the rule files in `rules/` has a severity the routing
/// knows, and reaches the receiver that severity names.
#[test]
fn every_alert_of_the_rules_routes_by_its_severity() {
    let bins = alertmanager_versions();
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_path("rules")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file: Value = serde_saphyr::from_str(&text).unwrap();
        for rule in file["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
        {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            let receiver = match severity {
                "page" | "critical" => "page",
                "ticket" | "warning" => "ticket",
                _ => panic!("{name}: severity {severity:?} is none the routing names"),
            };
            let labels = [format!("alertname={name}"), format!("severity={severity}")];
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            for bin in &bins {
                assert!(
                    routes_to(bin, receiver, &labels),
                    "{}: {name} -> {receiver}",
                    bin.name()
                );
            }
            seen += 1;
        }
    }
    assert!(seen >= 10, "{seen} alerts");
}

/// The shipped config with its receivers pointed at `webhook` (`/page`,
/// `/ticket`) and a 1 s group_wait and group_interval, in a temp file.
fn config_for(webhook: &Webhook) -> PathBuf {
    let text = std::fs::read_to_string(repo_path(CONFIG)).unwrap();
    let mut am: Value = serde_saphyr::from_str(&text).unwrap();
    // Notify at once, and of every change at once (a resolve included).
    am["route"]["group_wait"] = json!("1s");
    am["route"]["group_interval"] = json!("1s");
    for receiver in am["receivers"].as_array_mut().unwrap() {
        let url = format!("{}/{}", webhook.url, receiver["name"].as_str().unwrap());
        receiver["webhook_configs"][0]["url"] = json!(url);
    }
    let path = temp_dir("alertmanager-config").join("alertmanager.yml");
    std::fs::write(&path, am.to_string()).unwrap(); // JSON is YAML
    path
}

fn alert(name: &str, mut labels: Value) -> Value {
    labels["alertname"] = json!(name);
    json!({ "labels": labels, "annotations": { "summary": "from tests/alerting.rs" } })
}

fn burn(severity: &str, namespace: &str, job: &str) -> Value {
    alert(
        "SessionSLOErrorBudgetBurn",
        json!({ "severity": severity, "slo": "ds-acquisition", "game_namespace": namespace, "job": job }),
    )
}

/// Receivers (webhook paths) that were notified of a firing alert named
/// `name` for `namespace` (any namespace if empty).
fn notified(webhook: &Webhook, name: &str, namespace: &str) -> Vec<String> {
    let mut paths = Vec::new();
    for (path, body) in webhook.received() {
        assert_eq!(path, format!("/{}", body["receiver"].as_str().unwrap()));
        let alerts = body["alerts"].as_array().unwrap();
        if alerts.iter().any(|a| {
            let l = &a["labels"];
            a["status"] == "firing"
                && l["alertname"] == name
                && (namespace.is_empty() || l["game_namespace"] == namespace)
        }) {
            paths.push(path);
        }
    }
    paths
}

fn wait_notified(webhook: &Webhook, name: &str, namespace: &str, receiver: &str) {
    let want = vec![format!("/{receiver}")];
    wait_for(
        Duration::from_secs(20),
        &format!("{name} {namespace} at {receiver}"),
        || (notified(webhook, name, namespace) == want).then_some(()),
    );
}

/// The alerts that inhibit the one with `labels` (as the API reports them).
fn inhibited_by(am: &Alertmanager, labels: &Value) -> Vec<Value> {
    let alerts = am.alerts();
    let found = alerts.iter().find(|a| {
        labels
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &a["labels"][k] == v)
    });
    let found = found.unwrap_or_else(|| panic!("no alert {labels} in {alerts:?}"));
    found["status"]["inhibitedBy"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn pages_reach_the_pager_and_inhibitions_hold(bin: &AmBin) {
    let webhook = Webhook::start();
    let am = Alertmanager::start(bin, &config_for(&webhook));
    let (job, other_job) = ("session-exporter", "session-exporter-eu");

    // A page reaches the paging receiver, and only it.
    am.post(&json!([burn("page", "a", job)]));
    wait_notified(&webhook, "SessionSLOErrorBudgetBurn", "a", "page");

    // While it fires, a ticket for the same SLO and namespace is held back;
    // one for another namespace, sent at the same time, goes through.
    am.post(&json!([burn("ticket", "a", job), burn("ticket", "b", job)]));
    wait_notified(&webhook, "SessionSLOErrorBudgetBurn", "b", "ticket");
    let ticket_a = burn("ticket", "a", job)["labels"].clone();
    assert_eq!(
        inhibited_by(&am, &ticket_a).len(),
        1,
        "{}: ticket a not inhibited",
        bin.name()
    );
    assert_eq!(
        notified(&webhook, "SessionSLOErrorBudgetBurn", "a"),
        ["/page"],
        "{}",
        bin.name()
    );

    // With an exporter down, pages for the namespaces of its job are held
    // back; another job's still page.
    let down = alert(
        "SessionExporterDown",
        json!({ "severity": "critical", "job": job, "instance": "10.0.0.1:9750" }),
    );
    am.post(&json!([down]));
    wait_notified(&webhook, "SessionExporterDown", "", "page");
    am.post(&json!([
        burn("page", "c", job),
        burn("page", "d", other_job)
    ]));
    wait_notified(&webhook, "SessionSLOErrorBudgetBurn", "d", "page");
    let page_c = burn("page", "c", job)["labels"].clone();
    assert_eq!(
        inhibited_by(&am, &page_c).len(),
        1,
        "{}: page c not inhibited",
        bin.name()
    );
    assert!(
        notified(&webhook, "SessionSLOErrorBudgetBurn", "c").is_empty(),
        "{}",
        bin.name()
    );
    // The exporter's own alert is not a namespace alert: it is not held back.
    assert!(inhibited_by(&am, &down["labels"]).is_empty());
}

#[test]
fn pages_reach_the_pager_and_inhibitions_hold_on_alertmanager_0_25() {
    pages_reach_the_pager_and_inhibitions_hold(&alertmanager_versions()[0]);
}

#[test]
fn pages_reach_the_pager_and_inhibitions_hold_on_alertmanager_0_33() {
    pages_reach_the_pager_and_inhibitions_hold(&alertmanager_versions()[1]);
}

/// Every notification of `receiver` about the page of `namespace`, as
/// (status of the alert in it, its startsAt).
fn pages_of(webhook: &Webhook, namespace: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, body) in webhook.received() {
        for a in body["alerts"].as_array().unwrap() {
            let l = &a["labels"];
            if path == "/page"
                && l["alertname"] == "SessionSLOErrorBudgetBurn"
                && l["game_namespace"] == namespace
            {
                let status = a["status"].as_str().unwrap().to_string();
                out.push((status, a["startsAt"].as_str().unwrap().to_string()));
            }
        }
    }
    out
}

/// Namespaces with a firing page in Prometheus, and when each became active.
fn firing_pages(prom: &Prometheus) -> Vec<(String, String)> {
    let alerts = prom.api("/api/v1/alerts");
    let mut out: Vec<(String, String)> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["state"] == "firing"
                && a["labels"]["alertname"] == "SessionSLOErrorBudgetBurn"
                && a["labels"]["severity"] == "page"
        })
        .map(|a| {
            let ns = a["labels"]["game_namespace"].as_str().unwrap().to_string();
            (ns, a["activeAt"].as_str().unwrap().to_string())
        })
        .collect();
    out.sort();
    out
}

/// The exporter with a state store on `url`, at `listen` (127.0.0.1:0 for
/// a free port).
fn exporter(url: &str, listen: &str) -> Exporter {
    let mut cmd = Command::new(EXPORTER);
    cmd.args([
        "--nats.url",
        url,
        "--web.listen-address",
        listen,
        "--log.level",
        "debug",
    ])
    .args([
        "--state.bucket",
        "STATE",
        "--state.key",
        "paging",
        "--state.interval",
        "100ms",
    ]);
    Exporter::spawn(cmd)
}

fn a_degraded_namespace_pages_once(prom_bin: &PromBin, am_bin: &AmBin) {
    let what = format!("{} with {}", prom_bin.version(), am_bin.name());
    // The SLO rules for a 12 h period (the page tier's 1h/5m become 1m/5s),
    // and the health rules with SessionExporterDown after 1 s, not 5 m.
    let mapping = mapping_file("paging", "    period: 30d\n", "    period: 12h\n");
    let rules = Command::new(EXPORTER)
        .args([
            "rules",
            "--scrape-interval",
            "1s",
            "--config.file",
            mapping.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(rules.status.success());
    let slo_rules = mapping.with_file_name("slo.rules.yml");
    std::fs::write(&slo_rules, rules.stdout).unwrap();
    let shipped = std::fs::read_to_string(repo_path("rules/session-exporter.rules.yml")).unwrap();
    let down = "expr: up{job=~\"session-exporter.*\"} == 0\n        for: 5m";
    assert!(shipped.contains(down));
    let health = mapping.with_file_name("health.rules.yml");
    std::fs::write(&health, shipped.replace(down, &down.replace("5m", "1s"))).unwrap();

    let webhook = Webhook::start();
    let am = Alertmanager::start(am_bin, &config_for(&webhook));
    let nats = Nats::start_jetstream();
    let url = nats.url();
    let mut e = exporter(&url, "127.0.0.1:0");
    e.wait_ready();
    let addr = e.addr.clone();
    let _healthy = Simulator::start(&url, &["--rate", "300", "--namespaces", "3"]);
    let _degraded = Simulator::degraded(&url, 2);
    let prom = Prometheus::start_alerting(prom_bin, &addr, &[slo_rules, health], &am.addr);

    // Each degraded namespace pages, at the paging receiver.
    let degraded = wait_for(
        Duration::from_secs(60),
        &format!("{what}: two pages"),
        || {
            let firing = firing_pages(&prom);
            let delivered = firing
                .iter()
                .all(|(ns, _)| pages_of(&webhook, ns).len() == 1);
            (firing.len() >= 2 && delivered).then_some(firing)
        },
    );
    for (ns, _) in &degraded {
        assert!(
            ns.starts_with("degraded-"),
            "{what}: {ns} paged: {degraded:?}"
        );
    }

    // Restart the exporter on its address (SIGTERM: it drains and stores a
    // last checkpoint, as in a rolling update). Once Prometheus has scraped
    // the new process for longer than the short window, the pages are the
    // same ones: never resolved, never sent again.
    e.signal("TERM");
    assert_eq!(e.wait_exit(), Some(0), "{what}");
    let restarted_at = session_exporter::simulate::unix_ms() as f64 / 1000.0;
    let e = exporter(&url, &addr);
    e.wait_ready();
    wait_for(
        Duration::from_secs(60),
        &format!("{what}: 10 s of scrapes of the new process"),
        || {
            let started = prom.query("process_start_time_seconds");
            let started: f64 = started.first()?["value"][1].as_str()?.parse().ok()?;
            let now = session_exporter::simulate::unix_ms() as f64 / 1000.0;
            // (Its start time is read from /proc in whole seconds since boot.)
            let up = prom.query("up == 1");
            (started > restarted_at - 2.0 && now - started > 10.0 && !up.is_empty()).then_some(())
        },
    );
    assert_eq!(
        firing_pages(&prom),
        degraded,
        "{what}: a page resolved or re-fired across the restart"
    );
    for (ns, _) in &degraded {
        let pages = pages_of(&webhook, ns);
        assert!(
            pages.len() == 1 && pages[0].0 == "firing",
            "{what}: {ns}: {pages:?}"
        );
    }
    let healthy_pages = webhook
        .received()
        .iter()
        .flat_map(|(_, b)| b["alerts"].as_array().unwrap().clone())
        .filter(|a| a["labels"]["alertname"] == "SessionSLOErrorBudgetBurn")
        .filter(|a| {
            !a["labels"]["game_namespace"]
                .as_str()
                .unwrap()
                .starts_with("degraded-")
        })
        .count();
    assert_eq!(healthy_pages, 0, "{what}");

    // The exporter stops: SessionExporterDown pages, and holds back the
    // namespace's page while it still fires (keep_firing_for).
    drop(e);
    let (ns, _) = &degraded[0];
    wait_for(
        Duration::from_secs(30),
        &format!("{what}: {ns}'s page held back"),
        || {
            am.alerts()
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "SessionSLOErrorBudgetBurn"
                        && a["labels"]["severity"] == "page"
                        && a["labels"]["game_namespace"] == ns.as_str()
                        && a["status"]["inhibitedBy"]
                            .as_array()
                            .is_some_and(|i| !i.is_empty())
                })
                .then_some(())
        },
    );
    wait_notified(&webhook, "SessionExporterDown", "", "page");
}

#[test]
fn a_degraded_namespace_pages_once_on_prometheus_2_with_alertmanager_0_25() {
    a_degraded_namespace_pages_once(&prometheus_versions()[0], &alertmanager_versions()[0]);
}

#[test]
fn a_degraded_namespace_pages_once_on_prometheus_3_with_alertmanager_0_33() {
    a_degraded_namespace_pages_once(&prometheus_versions()[1], &alertmanager_versions()[1]);
}
