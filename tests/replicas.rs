//! Replicas add up: three exporters sharing the events (a core-NATS queue
//! group, or one durable JetStream consumer) against one reference exporter
//! that sees them all. Per series, the sum over replicas (counters, histogram
//! buckets, sums and counts) and the max (the active-sessions gauge) equal the
//! reference. Against Debian's nats-server 2.9 and the pinned current release.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use session_exporter::simulate::{unix_ms, Generator, Profile};

const GAUGE_SUBJECT: &str = "mpv2SessionHistory.MetricTotalActiveSessionEvent";

/// Events over 20 namespaces with timestamps out of order, so the latest
/// gauge value is not the last one published.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut g = Generator::new(Profile {
        namespaces: 20,
        seed: 5,
        ..Profile::default()
    });
    let base = unix_ms() - 600_000;
    (0..12_000u64)
        .map(|i| g.next_event(base + (i * 104_729) % 300_000))
        .collect()
}

fn received(e: &Exporter) -> (f64, f64) {
    let m = e.metrics();
    (
        value(&m, "session_exporter_messages_received_total").unwrap_or(0.0),
        value(&m, "session_exporter_broadcast_messages_total").unwrap_or(0.0),
    )
}

/// Wait until the replicas hold every event between them and each has every
/// gauge event, then compare each series with the reference.
fn assert_replicas_add_up(
    what: &str,
    reference: &Exporter,
    replicas: &[Exporter],
    n: usize,
    gauges: usize,
) {
    reference.wait_received(n as u64);
    wait_for(Duration::from_secs(30), "replicas caught up", || {
        let counts: Vec<(f64, f64)> = replicas.iter().map(received).collect();
        let shared: f64 = counts.iter().map(|c| c.0).sum();
        (shared >= n as f64 && counts.iter().all(|c| c.1 >= gauges as f64)).then_some(())
    });
    let pages: Vec<HashMap<String, f64>> = replicas
        .iter()
        .map(|r| series(&domain(&r.metrics())).into_iter().collect())
        .collect();
    let want = series(&domain(&reference.metrics()));
    let mut compared = (0, 0);
    for (key, v) in &want {
        if key.contains("quantile=") {
            continue; // windowed quantiles are per replica, by design
        }
        let values: Vec<f64> = pages.iter().filter_map(|p| p.get(key).copied()).collect();
        // Gauges combine with max: the active sessions (broadcast to every
        // replica) and each namespace's SLO target (the mapping's, the same
        // on every replica that holds the namespace).
        let active = key.starts_with("session_active_sessions{");
        let target = key.starts_with("session_slo_objective_ratio{")
            || key.starts_with("session_slo_threshold_seconds{");
        let (got, how) = if active || target {
            compared.1 += usize::from(active);
            (values.iter().copied().fold(f64::MIN, f64::max), "max")
        } else {
            compared.0 += 1;
            (values.iter().sum(), "sum")
        };
        let close = (got - v).abs() <= 1e-9 * v.abs().max(1.0);
        assert!(
            close,
            "{what}: {how} over replicas of {key} is {got}, the reference has {v}"
        );
    }
    assert!(
        compared.0 > 500 && compared.1 == 20,
        "{what}: compared {compared:?}"
    );
    // Every replica really took a share.
    for r in replicas {
        assert!(received(r).0 > 0.0, "{what}: a replica got nothing");
    }
}

fn queue_group(bin: &Path, events: &[(String, Vec<u8>)], gauges: usize) {
    let nats = Nats::start_jetstream_on(bin);
    let url = nats.url();
    let reference = Exporter::start(&url, &[]);
    let replicas: Vec<Exporter> = (0..3)
        .map(|_| Exporter::start(&url, &["--nats.queue-group", "exporters"]))
        .collect();
    reference.wait_ready();
    replicas.iter().for_each(Exporter::wait_ready);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(publish(&url, events));
    let what = format!("queue group, {}", nats_version(bin));
    assert_replicas_add_up(&what, &reference, &replicas, events.len(), gauges);
}

fn shared_consumer(bin: &Path, events: &[(String, Vec<u8>)], gauges: usize) {
    let nats = Nats::start_jetstream_on(bin);
    let url = nats.url();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let js = channels_stream(&url, "SESSIONS").await;
        js_publish(&js, events).await;
    });
    let args = |consumer: &'static str| {
        [
            "--nats.jetstream.stream",
            "SESSIONS",
            "--nats.jetstream.consumer",
            consumer,
            // Small pulls, so the replicas interleave on this small stream.
            "--nats.jetstream.pull-batch",
            "64",
        ]
    };
    let replicas: Vec<Exporter> = (0..3)
        .map(|_| Exporter::start(&url, &args("shared")))
        .collect();
    let reference = Exporter::start(&url, &args("reference"));
    let what = format!("shared durable consumer, {}", nats_version(bin));
    assert_replicas_add_up(&what, &reference, &replicas, events.len(), gauges);
}

#[test]
fn replicas_add_up_to_one_exporter_gauge_included() {
    let events = corpus();
    let gauges = events.iter().filter(|e| e.0 == GAUGE_SUBJECT).count();
    assert!(gauges > 100);
    for bin in nats_servers() {
        queue_group(&bin, &events, gauges);
        shared_consumer(&bin, &events, gauges);
    }
}

/// A replica that joins later replays the broadcast subjects only as far back
/// as a gauge can still be live (its TTL), so namespaces that went quiet
/// before do not come back for another TTL.
#[test]
fn a_new_replica_does_not_revive_expired_gauges() {
    let nats = Nats::start_jetstream();
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(channels_stream(&url, "SESSIONS"));
    let mapping = mapping_file("ttl", "ttl: 10m", "ttl: 1s");
    let mapping = mapping.to_str().unwrap();
    let args = [
        "--config.file",
        mapping,
        "--nats.jetstream.stream",
        "SESSIONS",
    ];
    let first = Exporter::start(&url, &args);
    let gauge = "session_active_sessions{game_namespace=\"mygame\"}";
    rt.block_on(js_publish(&js, &load_events(&examples_file())));
    wait_for(Duration::from_secs(20), "the gauge", || {
        value(&first.metrics(), gauge)
    });
    wait_for(Duration::from_secs(20), "the gauge to expire", || {
        value(&first.metrics(), gauge).is_none().then_some(())
    });
    // The durable consumer has nothing left; only the broadcast could bring
    // the expired update back. It delivers in stream order, so once a new
    // gauge update has come through it, an old one would have come first.
    let second = Exporter::start(&url, &args);
    second.wait_ready();
    let fresh: Vec<(String, Vec<u8>)> = load_events(&examples_file())
        .into_iter()
        .filter(|e| e.0 == GAUGE_SUBJECT)
        .map(|(s, body)| {
            let body = String::from_utf8(body).unwrap();
            let body = body
                .replace("\"mygame\"", "\"othergame\"")
                .replace("\"id\":\"", "\"id\":\"fresh-");
            (s, body.into_bytes())
        })
        .collect();
    assert_eq!(fresh.len(), 1);
    rt.block_on(js_publish(&js, &fresh));
    let m = wait_for(Duration::from_secs(20), "the fresh gauge update", || {
        let m = second.metrics();
        (value(&m, "session_exporter_broadcast_messages_total")? >= 1.0).then_some(m)
    });
    assert_eq!(
        value(&m, "session_exporter_broadcast_messages_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(value(&m, gauge), None, "{m}");
    assert!(
        value(&m, "session_active_sessions{game_namespace=\"othergame\"}").is_some(),
        "{m}"
    );
}
