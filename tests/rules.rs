//! Alert and recording rules: promtool validates them and runs their unit tests
//! (a firing and a quiet case for every alert).

mod common;

use common::*;

const RULES: &str = "rules/session-exporter.rules.yml";

#[test]
fn rule_files_are_valid() {
    for bin in prometheus_versions() {
        let out = run_ok(
            bin.promtool.to_str().unwrap(),
            &["check", "rules", repo_path(RULES).to_str().unwrap()],
        );
        assert!(out.contains("SUCCESS"), "{}: {out}", bin.version());
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let tests = repo_path("rules/tests/alerts.test.yml");
    for bin in prometheus_versions() {
        let promtool = bin.promtool.to_str().unwrap();
        let out = run_ok(promtool, &["test", "rules", tests.to_str().unwrap()]);
        assert!(out.contains("SUCCESS"), "{}: {out}", bin.version());
    }

    let rules: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo_path(RULES)).unwrap()).unwrap();
    let alerts: Vec<(String, serde_json::Value)> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r.clone())))
        .collect();
    assert!(alerts.len() >= 9);
    let test: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&tests).unwrap()).unwrap();
    let cases: Vec<&serde_json::Value> = test["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap().iter())
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
