//! Alert and recording rules: promtool validates them and runs their unit tests
//! (a firing and a quiet case for every alert); the SLO rules are what
//! `session-exporter rules` generates from the default mapping.

mod common;

use std::process::Command;

use common::*;

/// Each rule file and its unit tests.
const RULES: [(&str, &str); 2] = [
    (
        "rules/session-exporter.rules.yml",
        "rules/tests/alerts.test.yml",
    ),
    (
        "rules/session-exporter.slo.rules.yml",
        "rules/tests/slo.test.yml",
    ),
];

#[test]
fn rule_files_are_valid() {
    for bin in prometheus_versions() {
        for (rules, _) in RULES {
            let out = run_ok(
                bin.promtool.to_str().unwrap(),
                &["check", "rules", repo_path(rules).to_str().unwrap()],
            );
            assert!(out.contains("SUCCESS"), "{}: {rules}: {out}", bin.version());
        }
    }
}

fn rules_of(mapping: Option<&std::path::Path>, flags: &[&str]) -> String {
    let mut cmd = Command::new(EXPORTER);
    cmd.arg("rules")
        .args(flags)
        .env_remove("SESSION_EXPORTER_CONFIG_FILE");
    if let Some(m) = mapping {
        cmd.arg("--config.file").arg(m);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_slo_rules_are_generated_from_the_default_mapping() {
    let shipped = std::fs::read_to_string(repo_path(RULES[1].0)).unwrap();
    assert!(
        rules_of(None, &[]) == shipped,
        "{} is not `session-exporter rules` of the default mapping: regenerate it with\n  \
         cargo run -q -- rules > {0}\nthen scripts/gen-deploy",
        RULES[1].0
    );
}

#[test]
fn slo_windows_scale_with_the_period_and_overrides_stay_in_the_mapping() {
    let mapping = mapping_file(
        "slo-rules",
        "    period: 30d\n",
        "    period: 12h\n    min_events: 5\n    namespaces:\n      biggame: {threshold: 10s, objective: 0.995}\n",
    );
    // Scraped every minute (the default), no window is under four scrapes.
    let floored = rules_of(Some(&mapping), &[]);
    assert!(floored.contains("[4m]") && !floored.contains("[5s]") && !floored.contains("[1m]"));
    let rules = rules_of(Some(&mapping), &["--scrape-interval", "1s"]);
    // 12 h is 60 times shorter than 30 d: the page tier's 1h/5m become 1m/5s.
    for window in [
        "[5s]", "[30s]", "[1m]", "[2m]", "[6m]", "[24m]", "[72m]", "[12h]",
    ] {
        assert!(rules.contains(window), "no {window} in\n{rules}");
    }
    for workbook in ["[5m]", "[1h]", "[3d]", "[30d]"] {
        assert!(!rules.contains(workbook), "{workbook} in\n{rules}");
    }
    assert!(rules.contains(">= 5\n"), "the guard's min_events");
    // Objectives are joined from the exporter's series, never written into rules.
    assert!(!rules.contains("0.995") && !rules.contains("biggame"));
    let file = temp_dir("slo-rules-12h").join("slo.rules.yml");
    std::fs::write(&file, &rules).unwrap();
    for bin in prometheus_versions() {
        let out = run_ok(
            bin.promtool.to_str().unwrap(),
            &["check", "rules", file.to_str().unwrap()],
        );
        assert!(
            out.contains("SUCCESS: 23 rules"),
            "{}: {out}",
            bin.version()
        );
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    for (rules, tests) in RULES {
        alerts_are_tested(rules, tests);
    }
}

fn alerts_are_tested(rules: &str, tests: &str) {
    let tests = repo_path(tests);
    for bin in prometheus_versions() {
        let promtool = bin.promtool.to_str().unwrap();
        let out = run_ok(promtool, &["test", "rules", tests.to_str().unwrap()]);
        assert!(out.contains("SUCCESS"), "{}: {out}", bin.version());
    }

    let rules: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo_path(rules)).unwrap()).unwrap();
    let alerts: Vec<(String, serde_json::Value)> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r.clone())))
        .collect();
    assert!(!alerts.is_empty());
    let test: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&tests).unwrap()).unwrap();
    let cases: Vec<&serde_json::Value> = test["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    for (name, rule) in &alerts {
        let mine: Vec<_> = cases
            .iter()
            .filter(|c| c["alertname"].as_str() == Some(name))
            .collect();
        let fires = mine
            .iter()
            .any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
        let quiet = mine
            .iter()
            .any(|c| c["exp_alerts"].as_array().is_some_and(|a| a.is_empty()));
        assert!(fires && quiet, "{name}: needs a firing and a quiet case");
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: {key}"
            );
        }
        assert!(
            rule["labels"]["severity"].as_str().is_some(),
            "{name}: severity"
        );
        let anchor = rule["annotations"]["runbook_url"]
            .as_str()
            .unwrap()
            .rsplit('#')
            .next()
            .unwrap()
            .to_string();
        let runbook = std::fs::read_to_string(repo_path("docs/runbook.md")).unwrap();
        assert!(
            runbook.contains(&format!("## {name}\n")),
            "runbook section for {name}"
        );
        assert_eq!(anchor, name.to_lowercase());
    }
}
