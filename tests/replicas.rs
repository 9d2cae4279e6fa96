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
        let (got, how) = if key.starts_with("session_active_sessions{") {
            compared.1 += 1;
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
