//! `session-exporter replay`: the same events give what a live exporter
//! serves, and `--step` history goes through promtool into a real Prometheus.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{domain, Exporter, Nats, Prometheus, EXPORTER};
use session_exporter::simulate::{rfc3339, unix_ms, Generator, Profile};

/// Run `replay` with `args` on `input`: (exit code, stdout, stderr).
fn replay(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(EXPORTER)
        .arg("replay")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replay");
    // A replay that refuses its flags exits without reading: ignore EPIPE.
    let _ = child.stdin.take().unwrap().write_all(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The sample lines of an exposition (either format, exemplars left out), sorted.
fn samples(text: &str) -> Vec<String> {
    let plain: Vec<&str> = text
        .lines()
        .map(|l| l.split(" # {").next().unwrap_or(l))
        .collect();
    domain(&plain.join("\n"))
}

#[test]
fn replay_equals_a_live_exporter_fed_the_same_events() {
    // Every Metric* kind over six namespaces, 3% malformed, and the examples
    // (kept in their `{"subject","event"}` capture form for replay).
    let mut g = Generator::new(Profile {
        namespaces: 6,
        seed: 9,
        invalid_ratio: 0.03,
        ..Profile::default()
    });
    let now = unix_ms();
    let mut messages: Vec<(String, Vec<u8>)> = (0..3000u64)
        .map(|i| g.next_event(now - 60_000 + i * 10))
        .collect();
    let mut capture: Vec<u8> = Vec::new();
    for (_, body) in &messages {
        capture.extend_from_slice(body);
        capture.push(b'\n');
    }
    let examples = std::fs::read(common::examples_file()).unwrap();
    capture.extend_from_slice(&examples);
    messages.extend(common::load_events(&common::examples_file()));
    capture.extend_from_slice(b"\n{\"name\":\n");
    messages.push(("mpv2SessionHistory.Broken".into(), b"{\"name\":".to_vec()));

    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::publish(&nats.url(), &messages));
    let live = exporter.wait_received(messages.len() as u64);

    let (code, text, stderr) = replay(&[], &capture);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(samples(&text), samples(&live), "replay differs from live");
    assert!(samples(&text).len() > 100, "{text}");
    // Rejects by reason on stderr, as the live exporter counted them.
    for line in live.lines() {
        let Some(rest) = line.strip_prefix("session_exporter_events_rejected_total{reason=\"")
        else {
            continue;
        };
        let (reason, n) = rest.split_once("\"} ").unwrap();
        if n != "0" {
            let want = format!("replay: rejected {reason}: {n}");
            assert!(stderr.lines().any(|l| l == want), "{want} not in\n{stderr}");
        }
    }
    assert!(stderr.contains("events/s"), "{stderr}");

    // OpenMetrics: the same series and values, accepted by a strict parser.
    let (code, om, stderr) = replay(&["--format", "openmetrics", "-"], &capture);
    assert_eq!(code, 0, "{stderr}");
    assert!(om.ends_with("# EOF\n"));
    let parsed = common::openmetrics_check(&om);
    assert_eq!(samples(&om), samples(&text));
    assert_eq!(parsed, samples(&om).len());
}

#[test]
fn nothing_folded_is_an_error() {
    let (code, out, stderr) = replay(&[], b"{not json\n\n{\"namespace\":\"g\"}\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(out.is_empty());
    assert!(stderr.contains("rejected invalid_json: 1"), "{stderr}");
    assert!(stderr.contains("no event could be folded"), "{stderr}");
    let (code, _, stderr) = replay(&["--step", "1m", "-"], b"{}\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("--format openmetrics"), "{stderr}");
}

/// One DS acquisition (with its wait) for `ns` at `ms`.
fn acquisition(ns: &str, ms: u64, wait_ms: u64) -> String {
    let ts = rfc3339(ms);
    format!(
        "{{\"name\":\"MetricAcquiringDsEvent\",\"namespace\":\"{ns}\",\"timestamp\":\"{ts}\",\"payload\":{{\"message\":\"\"}}}}\n\
         {{\"name\":\"MetricAcquiringDsWaitTimeEvent\",\"namespace\":\"{ns}\",\"timestamp\":\"{ts}\",\"payload\":{{\"message\":\"{wait_ms}\"}}}}\n"
    )
}

#[test]
fn stepped_history_loads_into_prometheus_through_promtool() {
    // Three hours of events, ending four hours ago (clear of the head block).
    let minute = 60_000;
    let start = (unix_ms() - 7 * 3_600_000) / minute * minute;
    let mut capture = String::new();
    let mut times = Vec::new();
    for i in 0..360u64 {
        let ms = start + i * 30_000 + 7_000;
        let ns = if i % 3 == 0 { "b" } else { "a" };
        capture.push_str(&acquisition(ns, ms, 400 + 20 * (i % 50)));
        times.push((ns, ms));
    }
    let (code, om, stderr) = replay(
        &["--step", "1m", "--format", "openmetrics"],
        capture.as_bytes(),
    );
    assert_eq!(code, 0, "{stderr}");

    for bin in common::prometheus_versions() {
        let version = bin.version();
        let dir = common::temp_dir("backfill");
        let file = dir.join("history.om");
        std::fs::write(&file, &om).unwrap();
        let data = dir.join("data");
        common::run_ok(
            bin.promtool.to_str().unwrap(),
            &[
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                file.to_str().unwrap(),
                data.to_str().unwrap(),
            ],
        );
        let prom = Prometheus::start_on_blocks(&bin, &data);

        // At a past step boundary: every acquisition of `a` stamped at or before it.
        let at_ms = start + 95 * minute;
        let want = times
            .iter()
            .filter(|(ns, t)| *ns == "a" && *t <= at_ms)
            .count();
        let got = prom.query_at(
            "session_ds_acquisitions_total{game_namespace=\"a\"}",
            at_ms as f64 / 1000.0,
        );
        assert_eq!(got.len(), 1, "{version}: {got:?}");
        assert_eq!(
            got[0]["value"][1],
            want.to_string(),
            "{version}: at {at_ms}"
        );
        // The histogram arrived too: its count is the same number.
        let got = prom.query_at(
            "session_ds_acquisition_wait_seconds_count{game_namespace=\"a\"}",
            at_ms as f64 / 1000.0,
        );
        assert_eq!(got[0]["value"][1], want.to_string(), "{version}");
        // Before the first event there was nothing.
        let before = prom.query_at(
            "session_ds_acquisitions_total",
            (start - 10 * minute) as f64 / 1000.0,
        );
        assert!(before.is_empty(), "{version}: {before:?}");
    }
}
