//! Native histograms: a Prometheus with `native-histograms` (and
//! `exemplar-storage`) negotiates protobuf and stores one native histogram
//! per namespace, whose count is exact and whose p99 is within a bucket of
//! the true one; its exemplars still lead to the slow acquisitions.

mod common;

use std::time::Duration;

use common::{http_with, prometheus_versions, value, wait_for, Exporter, Nats, Prometheus};
use session_exporter::simulate::{rfc3339, unix_ms};

const WAIT_SUBJECT: &str = "mpv2SessionHistory.MetricAcquiringDsWaitTimeEvent";

fn wait(ns: &str, ms: u64, trace: &str) -> (String, Vec<u8>) {
    let body = format!(
        r#"{{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"{ns}","timestamp":"{}","traceId":"{trace}","payload":{{"message":"{ms}"}}}}"#,
        rfc3339(unix_ms())
    );
    (WAIT_SUBJECT.to_string(), body.into_bytes())
}

fn scalar(result: &[serde_json::Value]) -> f64 {
    assert_eq!(result.len(), 1, "{result:?}");
    result[0]["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn prometheus_reads_native_histograms_with_exact_counts_and_close_quantiles() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    // 1,000 waits spread over four decades (a skewed, deterministic set),
    // in one namespace; a few in another.
    let mut waits: Vec<u64> = (0..1000u64)
        .map(|i| 50 + (i * i * 37) % 40_000 + if i % 97 == 0 { 200_000 } else { 0 })
        .collect();
    let mut events: Vec<(String, Vec<u8>)> = waits
        .iter()
        .enumerate()
        .map(|(i, &ms)| wait("g", ms, &format!("trace{i:04}")))
        .collect();
    events.push(wait("h", 1234, "other"));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::publish(&nats.url(), &events));
    exporter.wait_received(events.len() as u64);

    // What Prometheus asks for with native histograms on: protobuf.
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let (status, head, _) = http_with(&exporter.addr, "GET", "/metrics", &[("Accept", accept)]);
    assert_eq!(status, 200);
    assert!(head.contains("application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"), "{head}");

    for bin in prometheus_versions() {
        let prom = Prometheus::start_on(
            &bin,
            &exporter.addr,
            &[],
            &["--enable-feature=native-histograms,exemplar-storage"],
            "",
        );
        let q = "histogram_count(session_ds_acquisition_wait_seconds{game_namespace=\"g\"})";
        let count = wait_for(
            Duration::from_secs(30),
            "a native histogram in Prometheus",
            || {
                let r = prom.query(q);
                (!r.is_empty()).then(|| scalar(&r))
            },
        );
        assert_eq!(count, 1000.0, "histogram_count is exact");
        let sum = scalar(
            &prom.query("histogram_sum(session_ds_acquisition_wait_seconds{game_namespace=\"g\"})"),
        );
        let want_sum = waits.iter().sum::<u64>() as f64 / 1000.0;
        assert!(
            (sum - want_sum).abs() < 1e-6 * want_sum,
            "{sum} vs {want_sum}"
        );

        // p99 within one bucket (schema 3: a factor 2^(1/8)) of the true p99.
        waits.sort_unstable();
        let true_p99 = waits[(0.99 * 1000.0) as usize - 1] as f64 / 1000.0;
        let p99 = scalar(&prom.query(
            "histogram_quantile(0.99, sum by (game_namespace) (session_ds_acquisition_wait_seconds{game_namespace=\"g\"}))",
        ));
        let width = 2f64.powf(1.0 / 8.0);
        assert!(
            p99 <= true_p99 * width && p99 >= true_p99 / width,
            "p99 {p99} vs true {true_p99}"
        );

        // One series per namespace and histogram: no _bucket series at all.
        let buckets = prom.query("count(session_ds_acquisition_wait_seconds_bucket)");
        assert!(
            buckets.is_empty(),
            "classic buckets were stored too: {buckets:?}"
        );
        let natives = prom.query("count(session_ds_acquisition_wait_seconds)");
        assert_eq!(scalar(&natives), 2.0);

        // Exemplars came through protobuf as well.
        let start = unix_ms() as f64 / 1000.0 - 600.0;
        let end = unix_ms() as f64 / 1000.0 + 60.0;
        let q = common::urlencode("session_ds_acquisition_wait_seconds{game_namespace=\"g\"}");
        let data = prom.api(&format!(
            "/api/v1/query_exemplars?query={q}&start={start}&end={end}"
        ));
        let traces: Vec<String> = data
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
            .map(|e| e["labels"]["trace_id"].as_str().unwrap_or("").to_string())
            .collect();
        assert!(
            !traces.is_empty() && traces.iter().all(|t| t.starts_with("trace")),
            "{traces:?}"
        );
        // The text format is unchanged meanwhile.
        let text = exporter.metrics();
        assert_eq!(
            value(
                &text,
                "session_ds_acquisition_wait_seconds_count{game_namespace=\"g\"}"
            ),
            Some(1000.0)
        );
    }
}
