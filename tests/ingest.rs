//! End to end: a real nats-server, the exporter binary, and known events.

mod common;

use common::*;
use std::time::Duration;

fn event(name: &str, namespace: &str, payload_ns: &str, message: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": format!("t-{name}-{message}"), "version": 1, "name": name,
        "namespace": namespace, "parentNamespace": "studio",
        "timestamp": "2026-11-22T10:00:00Z", "userId": "u", "traceId": "t",
        "sessionId": "s", "spanContext": "",
        "payload": {"userIds": ["a", "b", "c"], "namespace": payload_ns,
                    "topicName": "mpv2SessionHistory", "message": message}
    }))
    .unwrap()
}

fn on(subject: &str, body: Vec<u8>) -> (String, Vec<u8>) {
    (format!("mpv2SessionHistory.{subject}"), body)
}

const HOSTILE: &str = "other\"game\\\n☃";
const WAIT: &str = "MetricAcquiringDsWaitTimeEvent";

/// The second namespace comes only through `payload.namespace`, with a label
/// value that needs every escape, in the lenient encodings.
fn second_namespace() -> Vec<(String, Vec<u8>)> {
    use serde_json::json;
    vec![
        on(WAIT, event(WAIT, "", HOSTILE, json!("100"))),
        on(WAIT, event(WAIT, "", HOSTILE, json!("{\"value\":\"250\"}"))),
        on(
            "x",
            event("MetricTotalPlayerPersessionEvent", "", HOSTILE, json!(3)),
        ),
        on(
            "x",
            event("MetricTotalPlayerPersessionEvent", "", HOSTILE, json!(null)),
        ),
        on(
            "x",
            event(
                "MetricAcquiringDsEvent",
                "",
                HOSTILE,
                json!("ignored by counters"),
            ),
        ),
        on("x", event("Invented\"Event\nName", "", HOSTILE, json!(""))),
    ]
}

/// Each malformed message and the reason it must be counted under.
fn malformed() -> Vec<((String, Vec<u8>), &'static str)> {
    use serde_json::json;
    let big = event(WAIT, "mygame", "", json!("x".repeat(70_000)));
    vec![
        (on("x", b"not json".to_vec()), "invalid_json"),
        (
            on(
                "x",
                br#"{"namespace":"mygame","payload":{"message":"1"}}"#.to_vec(),
            ),
            "missing_name",
        ),
        (
            on(
                "x",
                br#"{"name":"MetricAcquiringDsEvent","payload":{"message":""}}"#.to_vec(),
            ),
            "missing_namespace",
        ),
        (
            on(WAIT, event(WAIT, "mygame", "", json!("soon"))),
            "invalid_value",
        ),
        (
            on(WAIT, event(WAIT, "mygame", "", json!("-5"))),
            "invalid_value",
        ),
        (
            on(WAIT, event(WAIT, "mygame", "", json!("NaN"))),
            "invalid_value",
        ),
        (
            on(WAIT, event(WAIT, "mygame", "", json!(""))),
            "missing_value",
        ),
        (
            on(WAIT, event(WAIT, "mygame", "", json!("999999999999"))),
            "value_out_of_range",
        ),
        (
            on("x", br#"{"name":42,"namespace":"mygame"}"#.to_vec()),
            "invalid_type",
        ),
        (on(WAIT, big), "too_large"),
        (
            on("x", b"{\"name\":\"\xff\xfe\",\"namespace\":\"g\"}".to_vec()),
            "invalid_utf8",
        ),
        (
            on(
                "x",
                event("MetricAcquiringDsEvent", &"n".repeat(200), "", json!("")),
            ),
            "invalid_namespace",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_event_folds_exactly_and_bad_input_is_counted() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();

    let good = load_events(&examples_file());
    let second = second_namespace();
    let bad = malformed();
    // Interleave: bad messages between the good ones.
    let mut all = Vec::new();
    let mut bad_iter = bad.iter().map(|(m, _)| m.clone());
    for m in good.iter().chain(&second) {
        all.push(m.clone());
        all.extend(bad_iter.next());
    }
    all.extend(bad_iter);
    publish(&nats.url(), &all).await;
    let m = exporter.wait_received(all.len() as u64);

    let g = |s: &str| value(&m, s).unwrap_or_else(|| panic!("missing {s}\n{m}"));
    let ns = "game_namespace=\"mygame\"";
    assert_eq!(g(&format!("session_active_sessions{{{ns}}}")), 128.0);
    for c in [
        "session_ds_acquisitions_total",
        "session_matchmaking_tickets_created_total",
        "session_matchmaking_matches_total",
        "session_matchmaking_tickets_matched_total",
    ] {
        assert_eq!(g(&format!("{c}{{{ns}}}")), 1.0, "{c}");
    }
    let wait = "session_ds_acquisition_wait_seconds";
    assert_eq!(g(&format!("{wait}_count{{{ns}}}")), 2.0);
    assert!((g(&format!("{wait}_sum{{{ns}}}")) - 2.402).abs() < 1e-9);
    for (le, n) in [("0.5", 0.0), ("1", 1.0), ("2", 2.0), ("+Inf", 2.0)] {
        assert_eq!(
            g(&format!("{wait}_bucket{{{ns},le=\"{le}\"}}")),
            n,
            "le={le}"
        );
    }
    let matchd = "session_match_duration_seconds";
    assert_eq!(g(&format!("{matchd}_sum{{{ns}}}")), 1260.0);
    assert_eq!(g(&format!("{matchd}_bucket{{{ns},le=\"1200\"}}")), 0.0);
    assert_eq!(g(&format!("{matchd}_bucket{{{ns},le=\"1800\"}}")), 1.0);
    let players = "session_players_per_session";
    assert_eq!(g(&format!("{players}_count{{{ns}}}")), 2.0);
    assert_eq!(g(&format!("{players}_sum{{{ns}}}")), 12.0);
    assert_eq!(g(&format!("{players}_bucket{{{ns},le=\"4\"}}")), 1.0);
    assert_eq!(g(&format!("{players}_bucket{{{ns},le=\"6\"}}")), 1.0);
    assert_eq!(g(&format!("{players}_bucket{{{ns},le=\"8\"}}")), 2.0);

    // The hostile namespace, escaped; a value exactly on a bound is inside it.
    let hostile = "game_namespace=\"other\\\"game\\\\\\n☃\"";
    assert_eq!(g(&format!("{wait}_bucket{{{hostile},le=\"0.1\"}}")), 1.0);
    assert_eq!(g(&format!("{wait}_bucket{{{hostile},le=\"0.25\"}}")), 2.0);
    assert!((g(&format!("{wait}_sum{{{hostile}}}")) - 0.35).abs() < 1e-9);
    // Players: a bare JSON number, then the userIds fallback (3 users).
    assert_eq!(g(&format!("{players}_sum{{{hostile}}}")), 6.0);
    assert_eq!(
        g(&format!("session_ds_acquisitions_total{{{hostile}}}")),
        1.0
    );

    // Event names: seed names as they are, anything else as `other`.
    assert_eq!(
        g("session_events_total{event=\"GameSessionCreatedEvent\"}"),
        1.0
    );
    assert_eq!(g("session_events_total{event=\"onPartyCreated\"}"), 1.0);
    assert_eq!(g("session_events_total{event=\"other\"}"), 1.0);
    // 2 + 2 good, 6 rejected for their value or size... but too_large never decodes.
    assert_eq!(
        g(&format!("session_events_total{{event=\"{WAIT}\"}}")),
        4.0 + 5.0
    );

    let mut want: std::collections::BTreeMap<&str, f64> = Default::default();
    for (_, reason) in &bad {
        *want.entry(reason).or_default() += 1.0;
    }
    for (reason, n) in &want {
        assert_eq!(
            g(&format!(
                "session_exporter_events_rejected_total{{reason=\"{reason}\"}}"
            )),
            *n,
            "{reason}"
        );
    }
    assert_eq!(
        sum(&m, "session_exporter_events_rejected_total"),
        bad.len() as f64
    );
    assert_eq!(
        g("session_exporter_events_folded_total"),
        (good.len() + second.len()) as f64
    );
    assert_eq!(g("session_exporter_namespaces"), 2.0);
    assert_eq!(g("session_exporter_nats_connected"), 1.0);
    assert!(g("session_exporter_event_lag_seconds_count") >= 1.0);
    promtool_check(&m);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_outage_is_survived() {
    let mut nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    let events = load_events(&examples_file());
    publish(&nats.url(), &events).await;
    exporter.wait_received(events.len() as u64);

    nats.stop();
    let m = wait_for(Duration::from_secs(20), "disconnected state", || {
        let m = exporter.metrics();
        (value(&m, "session_exporter_nats_connected") == Some(0.0)).then_some(m)
    });
    // Still serving what was folded, and not ready.
    assert_eq!(
        value(
            &m,
            "session_ds_acquisitions_total{game_namespace=\"mygame\"}"
        ),
        Some(1.0)
    );
    assert_eq!(exporter.get("/-/ready").0, 503);
    assert_eq!(exporter.get("/-/healthy").0, 200);

    nats.restart();
    exporter.wait_ready();
    publish(&nats.url(), &events).await;
    let m = exporter.wait_received(2 * events.len() as u64);
    assert_eq!(
        value(
            &m,
            "session_ds_acquisitions_total{game_namespace=\"mygame\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &m,
            "session_ds_acquisition_wait_seconds_count{game_namespace=\"mygame\"}"
        ),
        Some(4.0)
    );
    assert!(value(&m, "session_exporter_nats_reconnects_total").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_in_a_queue_group_share_the_stream() {
    let nats = Nats::start();
    let a = Exporter::start(&nats.url(), &["--nats.queue-group", "exporters"]);
    let b = Exporter::start(&nats.url(), &["--nats.queue-group", "exporters"]);
    a.wait_ready();
    b.wait_ready();
    let one = load_events(&examples_file());
    let acquire = one
        .iter()
        .find(|(s, _)| s.ends_with("MetricAcquiringDsEvent"))
        .unwrap()
        .clone();
    let events: Vec<_> = std::iter::repeat_n(acquire, 400).collect();
    publish(&nats.url(), &events).await;
    let total = wait_for(Duration::from_secs(20), "all events folded", || {
        let n = sum(&a.metrics(), "session_ds_acquisitions_total")
            + sum(&b.metrics(), "session_ds_acquisitions_total");
        (n >= 400.0).then_some(n)
    });
    assert_eq!(
        total, 400.0,
        "each event folded exactly once across replicas"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn namespaces_past_the_limit_fold_into_overflow() {
    let nats = Nats::start();
    let path = mapping_file("overflow", "max_namespaces: 10000", "max_namespaces: 2");
    let exporter = Exporter::start(&nats.url(), &["--config.file", path.to_str().unwrap()]);
    exporter.wait_ready();
    let events: Vec<_> = ["a", "b", "c", "d", "a"]
        .iter()
        .map(|ns| {
            on(
                "x",
                event("MetricAcquiringDsEvent", ns, "", serde_json::json!("")),
            )
        })
        .collect();
    publish(&nats.url(), &events).await;
    exporter.wait_received(events.len() as u64);
    // The registry is gathered in name order, so one page can show the
    // batch's `messages_received` but not yet its overflow count: poll.
    let m = wait_for(Duration::from_secs(10), "the overflow count", || {
        let m = exporter.metrics();
        let overflowed = value(&m, "session_exporter_cardinality_overflow_events_total")?;
        (overflowed >= 2.0).then_some(m)
    });
    assert_eq!(
        value(&m, "session_ds_acquisitions_total{game_namespace=\"a\"}"),
        Some(2.0)
    );
    assert_eq!(
        value(
            &m,
            "session_ds_acquisitions_total{game_namespace=\"__overflow__\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&m, "session_exporter_cardinality_overflow_events_total"),
        Some(2.0)
    );
    assert_eq!(
        sum(&m, "session_ds_acquisitions_total"),
        5.0,
        "totals stay right"
    );
    assert_eq!(value(&m, "session_exporter_max_namespaces"), Some(2.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_consumer_drops_are_counted() {
    let nats = Nats::start();
    // A one-message buffer cannot absorb a burst: the client must drop, and say so.
    let exporter = Exporter::start(&nats.url(), &["--nats.subscription-capacity", "1"]);
    exporter.wait_ready();
    let one = load_events(&examples_file());
    let burst: Vec<_> = one.iter().cycle().take(20_000).cloned().collect();
    publish(&nats.url(), &burst).await;
    let m = wait_for(Duration::from_secs(20), "drops counted", || {
        let m = exporter.metrics();
        (value(&m, "session_exporter_nats_slow_consumer_drops_total")? > 0.0).then_some(m)
    });
    let received = value(&m, "session_exporter_messages_received_total").unwrap();
    assert!(received < burst.len() as f64, "some messages were dropped");
    // Exact accounting: everything came off the wire; what was not received was dropped.
    let m = wait_for(Duration::from_secs(20), "all messages off the wire", || {
        let m = exporter.metrics();
        (value(&m, "session_exporter_nats_messages_in_total")? == burst.len() as f64).then_some(m)
    });
    let received = value(&m, "session_exporter_messages_received_total").unwrap();
    let events = value(&m, "session_exporter_nats_slow_consumer_drops_total").unwrap();
    assert!(
        events <= burst.len() as f64 - received,
        "drop events never exceed real drops"
    );
    promtool_check(&m);
}
