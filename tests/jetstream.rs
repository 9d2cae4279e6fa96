//! JetStream: a durable consumer, ack after folding, duplicates dropped by id.

mod common;

use common::*;

/// The same events with fresh ids.
fn renamed(events: &[(String, Vec<u8>)], tag: &str) -> Vec<(String, Vec<u8>)> {
    events
        .iter()
        .map(|(s, b)| {
            let text = String::from_utf8(b.clone())
                .unwrap()
                .replace("\"evt-", &format!("\"{tag}-"));
            (s.clone(), text.into_bytes())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_consumer_acks_and_drops_duplicates() {
    let nats = Nats::start_jetstream();
    let js = channels_stream(&nats.url(), "SESSIONS").await;
    let events = load_events(&examples_file());
    // Every event twice: a publisher retry, as JetStream consumers may see.
    js_publish(&js, &events).await;
    js_publish(&js, &events).await;

    let args = ["--nats.jetstream.stream", "SESSIONS"];
    let mut exporter = Exporter::start(&nats.url(), &args);
    let n = events.len() as u64;
    let m = exporter.wait_received(2 * n);
    assert_eq!(
        value(
            &m,
            "session_ds_acquisitions_total{game_namespace=\"mygame\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "session_ds_acquisition_wait_seconds_count{game_namespace=\"mygame\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&m, "session_exporter_events_duplicate_total"),
        Some(n as f64)
    );
    let acks = wait_for(std::time::Duration::from_secs(10), "acks", || {
        let a = value(&exporter.metrics(), "session_exporter_jetstream_acks_total")?;
        (a >= 2.0 * n as f64).then_some(a)
    });
    assert_eq!(acks, 2.0 * n as f64);
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(), Some(0));

    // A new replica on the same durable consumer resumes after the acked events.
    js_publish(&js, &renamed(&events, "second")).await;
    let exporter = Exporter::start(&nats.url(), &args);
    let m = exporter.wait_received(n);
    assert_eq!(
        value(&m, "session_exporter_messages_received_total"),
        Some(n as f64)
    );
    assert_eq!(
        value(
            &m,
            "session_ds_acquisitions_total{game_namespace=\"mygame\"}"
        ),
        Some(1.0)
    );
    wait_consumer_drained(&js, "SESSIONS", "session-exporter").await;
}

/// `--nats.subject` filters the durable consumer on servers that allow
/// several filter subjects (2.10+); 2.9 says so at start and consumes the
/// whole stream.
#[tokio::test(flavor = "multi_thread")]
async fn subjects_filter_the_consumer_where_the_server_allows() {
    let events = load_events(&examples_file());
    let on = |prefix: &str| events.iter().filter(|e| e.0.starts_with(prefix)).count();
    let wanted = on("mpv2SessionHistory.MetricAcquiringDsWaitTimeEvent") + on("session.");
    assert!(wanted > 0 && wanted < events.len());
    for bin in nats_servers() {
        let version = nats_version(&bin);
        let old = version.contains("v2.9.");
        let nats = Nats::start_jetstream_on(&bin);
        let js = channels_stream(&nats.url(), "ALL").await;
        js_publish(&js, &events).await;
        let args = [
            "--nats.jetstream.stream",
            "ALL",
            "--nats.subject",
            "mpv2SessionHistory.MetricAcquiringDsWaitTimeEvent,session.>",
        ];
        let mut exporter = Exporter::start(&nats.url(), &args);
        let expected = if old { events.len() } else { wanted };
        exporter.wait_received(expected as u64);
        // Nothing more is coming: the consumer has delivered and seen acked
        // everything it matches.
        wait_consumer_drained(&js, "ALL", "session-exporter").await;
        let m = exporter.metrics();
        let received = value(&m, "session_exporter_messages_received_total").unwrap();
        assert_eq!(received as usize, expected, "{version}");
        let warned = exporter
            .log()
            .contains("allows one filter subject per consumer");
        assert_eq!(warned, old, "{version}: {}", exporter.log());
        exporter.signal("TERM");
        assert_eq!(exporter.wait_exit(), Some(0));
    }
}
