//! The SLI is counted exactly, from every event: values at a namespace's
//! threshold are good, a millisecond over is bad, a namespace with its own
//! threshold is held to it, and three partition replicas with a state store,
//! one killed and restarted midway, serve between them the counts a test
//! works out by hand, each namespace on one replica.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// DS waits (ms) around both thresholds (30 s, and 10 s for `big`).
const WAITS: [u64; 10] = [
    1, 9_999, 10_000, 10_001, 29_999, 30_000, 30_001, 45_000, 300_000, 5,
];

fn wait(i: usize, ns: &str, ms: u64) -> (String, Vec<u8>) {
    // Both encodings of the value: a bare numeric string and {"value":N}.
    let message = match i % 2 {
        0 => format!("\"{ms}\""),
        _ => format!("\"{{\\\"value\\\":{ms}}}\""),
    };
    let body = format!(
        r#"{{"id":"w{i}","name":"MetricAcquiringDsWaitTimeEvent","namespace":"{ns}","timestamp":"2026-12-06T10:00:00Z","payload":{{"userIds":[],"message":{message}}}}}"#
    );
    (
        "mpv2SessionHistory.MetricAcquiringDsWaitTimeEvent".into(),
        body.into_bytes(),
    )
}

type Events = Vec<(String, Vec<u8>)>;
/// Namespace -> (good, bad).
type Counts = HashMap<String, (u64, u64)>;

/// The events, and the counts they must give.
fn corpus() -> (Events, Counts) {
    let namespaces = [
        "big", "alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
    ];
    let mut events = Vec::new();
    let mut truth = Counts::new();
    for i in 0..700 {
        let ns = namespaces[i % namespaces.len()];
        let ms = WAITS[(i / namespaces.len()) % WAITS.len()];
        let threshold = if ns == "big" { 10_000 } else { 30_000 };
        let t = truth.entry(ns.into()).or_default();
        match ms <= threshold {
            true => t.0 += 1,
            false => t.1 += 1,
        }
        events.push(wait(i, ns, ms));
    }
    (events, truth)
}

/// What the replicas serve between them: namespace -> (good, bad), and on
/// how many replicas each namespace's SLO series appear.
fn served(replicas: &[Exporter]) -> (Counts, HashMap<String, usize>) {
    let mut counts = Counts::new();
    let mut holders: HashMap<String, usize> = HashMap::new();
    for r in replicas {
        for (key, v) in series(&domain(&r.metrics())) {
            if !key.starts_with("session_slo_events_total{") {
                continue;
            }
            let ns = namespace_of(&key).unwrap().to_string();
            let c = counts.entry(ns.clone()).or_default();
            if key.contains("result=\"good\"") {
                c.0 += v as u64;
                *holders.entry(ns).or_default() += 1;
            } else {
                c.1 += v as u64;
            }
        }
    }
    (counts, holders)
}

#[test]
fn three_partitions_killed_midway_count_the_truth() {
    let nats = Nats::start_jetstream();
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(channels_stream(&url, "SESSIONS"));
    let mapping = mapping_file(
        "slo-truth",
        "    period: 30d\n",
        "    period: 30d\n    namespaces:\n      big: {threshold: 10s, objective: 0.995}\n",
    );
    let (events, truth) = corpus();
    let args = |i: usize| -> Vec<String> {
        [
            "--config.file",
            mapping.to_str().unwrap(),
            "--partition.count",
            "3",
            "--partition.index",
            &i.to_string(),
            "--nats.broadcast-subject",
            "",
            "--nats.jetstream.stream",
            "SESSIONS",
            "--state.bucket",
            "STATE",
            "--state.key",
            &format!("slo-{i}"),
            "--state.interval",
            "50ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let start = |i: usize| {
        let a = args(i);
        Exporter::start(&url, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let mut replicas: Vec<Exporter> = (0..3).map(start).collect();
    let (first, rest) = events.split_at(events.len() / 2);
    rt.block_on(js_publish(&js, first));
    // Let a checkpoint or two hold some of it, then kill the replica holding
    // `big` (the override) without a drain, and bring it back.
    let big = wait_for(Duration::from_secs(20), "big folded", || {
        replicas.iter().position(|r| {
            value(&r.metrics(), "session_slo_events_total{game_namespace=\"big\",slo=\"ds-acquisition\",result=\"good\"}")
                .is_some()
        })
    });
    replicas[big].kill();
    replicas[big] = start(big);
    rt.block_on(js_publish(&js, rest));
    let total: u64 = truth.values().map(|(g, b)| g + b).sum();
    let (counts, holders) = wait_for(Duration::from_secs(30), "every event counted", || {
        let (counts, holders) = served(&replicas);
        let seen: u64 = counts.values().map(|(g, b)| g + b).sum();
        (seen >= total).then_some((counts, holders))
    });
    assert_eq!(counts, truth);
    assert!(holders.values().all(|&n| n == 1), "{holders:?}");
    // The override is served as the namespace's own target.
    let page = replicas[big].metrics();
    let target = |name: &str, ns: &str| {
        value(
            &page,
            &format!("{name}{{game_namespace=\"{ns}\",slo=\"ds-acquisition\"}}"),
        )
    };
    assert_eq!(target("session_slo_threshold_seconds", "big"), Some(10.0));
    assert_eq!(target("session_slo_objective_ratio", "big"), Some(0.995));
    promtool_check(&page);
}
