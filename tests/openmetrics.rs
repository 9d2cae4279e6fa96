//! `/metrics` in OpenMetrics, as Prometheus negotiates it by default: the
//! same series and values as the text format, exemplars with the events'
//! trace ids, hostile trace ids dropped and counted, and a real Prometheus
//! storing the exemplars of slow DS acquisitions.

mod common;

use std::time::Duration;

use common::{domain, http_with, prometheus_versions, value, wait_for, Exporter, Nats, Prometheus};
use session_exporter::simulate::{rfc3339, unix_ms};

const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const WAIT_SUBJECT: &str = "mpv2SessionHistory.MetricAcquiringDsWaitTimeEvent";

/// A DS wait of `ms` in namespace `ns`, with `trace` as its raw `traceId` JSON.
fn wait(ns: &str, ms: u64, trace: &str) -> (String, Vec<u8>) {
    let body = format!(
        r#"{{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"{ns}","timestamp":"{}","traceId":{trace},"payload":{{"message":"{ms}"}}}}"#,
        rfc3339(unix_ms())
    );
    (WAIT_SUBJECT.to_string(), body.into_bytes())
}

/// Sample lines without their exemplars.
fn without_exemplars(text: &str) -> String {
    text.lines()
        .map(|l| l.split(" # {").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn openmetrics_is_negotiated_with_the_text_formats_series_and_exemplars() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    let long = format!("\"{}\"", "a".repeat(121));
    let mut events = vec![
        wait("g", 1500, "\"4bf92f3577b34da6a3ce929d0e0e4736\""),
        wait("g", 250_000, "\"1-5759e988-bd862e3fe1be46a994272793\""),
        wait("g", 800, &long),
        wait("g", 700, r#""quote\"and\\back""#),
        wait("g", 600, r#""line\nbreak""#),
        wait("g", 500, "\"\""),
        wait("g", 400, "12345"),
        wait("h", 90, "null"),
    ];
    events.extend(common::load_events(&common::examples_file()));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::publish(&nats.url(), &events));
    let text = exporter.wait_received(events.len() as u64);

    let (status, head, om) = http_with(
        &exporter.addr,
        "GET",
        "/metrics",
        &[("Accept", OPENMETRICS)],
    );
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(head.contains("vary: accept"), "{head}");
    assert!(om.ends_with("# EOF\n"));
    common::openmetrics_check(&om);
    // The domain series and their values are the text format's.
    assert_eq!(domain(&without_exemplars(&om)), domain(&text));

    // Exemplars: the latest traced observation of its bucket.
    let bucket = |le: &str| {
        om.lines()
            .find(|l| l.starts_with(&format!("session_ds_acquisition_wait_seconds_bucket{{game_namespace=\"g\",le=\"{le}\"}}")))
            .unwrap_or_else(|| panic!("no le={le} bucket in\n{om}"))
            .to_string()
    };
    assert!(
        bucket("2").contains(" # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 1.5 "),
        "{}",
        bucket("2")
    );
    assert!(bucket("300").contains(" # {trace_id=\"1-5759e988-bd862e3fe1be46a994272793\"} 250 "));
    // Observations with unusable trace ids are counted, carry no exemplar.
    assert!(!bucket("1").contains(" # {"), "{}", bucket("1"));
    let m = exporter.metrics();
    let dropped = |r: &str| {
        value(
            &m,
            &format!("session_exporter_exemplars_dropped_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(dropped("too_long"), Some(1.0));
    assert_eq!(dropped("invalid"), Some(3.0), "quote, newline, empty");
    // No exemplar was ever longer than OpenMetrics allows.
    for l in om
        .lines()
        .filter_map(|l| l.split_once(" # {").map(|(_, e)| e))
    {
        let labels = l.split_once('}').unwrap().0;
        assert!(labels.chars().count() <= 128, "{l}");
    }

    // Anything else still gets text 0.0.4.
    let (_, head, body) = http_with(
        &exporter.addr,
        "GET",
        "/metrics",
        &[("Accept", "text/plain;version=0.0.4")],
    );
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/plain; version=0.0.4"));
    assert!(!body.contains("# EOF") && !body.contains(" # {"));
    common::promtool_check(&body);
}

#[test]
fn prometheus_stores_exemplars_that_lead_to_slow_acquisitions() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    // Fast acquisitions with one set of traces, a few slow ones with another.
    let mut events = Vec::new();
    for i in 0..200u64 {
        events.push(wait("g", 200 + i * 7, &format!("\"fast{i:04}\"")));
    }
    let slow = ["slow0001", "slow0002", "slow0003"];
    for (i, t) in slow.iter().enumerate() {
        events.push(wait("g", 100_000 + i as u64 * 30_000, &format!("\"{t}\"")));
    }
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::publish(&nats.url(), &events));
    let text = exporter.wait_received(events.len() as u64);
    let count = value(
        &text,
        "session_ds_acquisition_wait_seconds_count{game_namespace=\"g\"}",
    )
    .unwrap();
    assert_eq!(count, events.len() as f64);

    for bin in prometheus_versions() {
        let prom = Prometheus::start_on(
            &bin,
            &exporter.addr,
            &[],
            &["--enable-feature=exemplar-storage"],
            "",
        );
        let start = unix_ms() as f64 / 1000.0 - 600.0;
        let what = format!("exemplars in {}", bin.version());
        let exemplars = wait_for(Duration::from_secs(30), &what, || {
            let end = unix_ms() as f64 / 1000.0 + 60.0;
            // Prometheus 3 normalises `le` to a float's text ("300.0").
            let q = common::urlencode(
                "session_ds_acquisition_wait_seconds_bucket{le=~\"300(\\\\.0)?\"}",
            );
            let data = prom.api(&format!(
                "/api/v1/query_exemplars?query={q}&start={start}&end={end}"
            ));
            let traces: Vec<(String, f64)> = data
                .as_array()?
                .iter()
                .flat_map(|s| s["exemplars"].as_array().cloned().unwrap_or_default())
                .map(|e| {
                    (
                        e["labels"]["trace_id"].as_str().unwrap_or("").to_string(),
                        e["value"].as_str().unwrap_or("0").parse().unwrap_or(0.0),
                    )
                })
                .collect();
            (!traces.is_empty()).then_some(traces)
        });
        // The le="300" bucket's exemplar is the latest slow acquisition.
        for (trace, v) in &exemplars {
            assert!(
                slow.contains(&trace.as_str()),
                "{trace} is not a slow acquisition"
            );
            assert!(*v > 120.0 && *v <= 300.0, "{v}");
        }
        // And the classic series Prometheus stored (through OpenMetrics) are the text values.
        let got = prom.query("session_ds_acquisition_wait_seconds_count{game_namespace=\"g\"}");
        assert_eq!(got[0]["value"][1], count.to_string(), "{}", bin.version());
        // What 3.x changed: the stored `le` of an integer bound reads "300.0".
        let buckets =
            prom.query("session_ds_acquisition_wait_seconds_bucket{game_namespace=\"g\"}");
        let les: Vec<&str> = buckets
            .iter()
            .filter_map(|b| b["metric"]["le"].as_str())
            .collect();
        let want = if bin.major >= 3 { "300.0" } else { "300" };
        assert!(les.contains(&want), "{}: {les:?}", bin.version());
    }
}

/// What each Prometheus really asks for: a listener stands in for the
/// exporter to capture the `Accept` of a real scrape (2.42 and 3.5.3, with and
/// without native histograms), then the exporter answers that very header
/// with the format Prometheus puts first.
#[test]
fn each_prometheus_gets_the_format_its_own_accept_header_prefers() {
    use std::io::{BufRead, BufReader, Write};
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    for bin in prometheus_versions() {
        for (flags, want) in [
            (&[][..], "application/openmetrics-text; version=1.0.0"),
            (
                &["--enable-feature=native-histograms"][..],
                "application/vnd.google.protobuf",
            ),
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let target = listener.local_addr().unwrap().to_string();
            let _prom = Prometheus::start_on(&bin, &target, &[], flags, "");
            let (mut conn, _) = listener.accept().unwrap();
            let mut accept = String::new();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                if let Some(v) = line.strip_prefix("Accept: ") {
                    accept = v.trim().to_string();
                }
                line.clear();
            }
            let _ =
                conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
            assert!(!accept.is_empty(), "{}: no Accept header", bin.version());
            if bin.major >= 3 {
                assert!(accept.contains("escaping="), "{}: {accept}", bin.version());
            }
            let (status, head, _) =
                http_with(&exporter.addr, "GET", "/metrics", &[("Accept", &accept)]);
            assert_eq!(status, 200, "{}: {accept}", bin.version());
            let content_type = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-type: ")
                        .or_else(|| l.strip_prefix("Content-Type: "))
                })
                .unwrap_or("")
                .to_string();
            assert!(
                content_type.starts_with(want),
                "{} {flags:?}: Accept {accept} got {content_type}",
                bin.version()
            );
            eprintln!("{} {flags:?}: Accept: {accept}", bin.version());
        }
    }
}

/// `--web.openmetrics-created` adds each series' `_created` sample to
/// OpenMetrics pages (which the reference parser accepts); without the flag,
/// and in text 0.0.4 always, there are none.
#[test]
fn created_samples_only_when_asked_and_only_in_openmetrics() {
    let nats = Nats::start();
    let with = Exporter::start(&nats.url(), &["--web.openmetrics-created"]);
    let without = Exporter::start(&nats.url(), &[]);
    with.wait_ready();
    without.wait_ready();
    let events = [wait("g", 1500, "\"t\""), wait("h", 900, "\"u\"")];
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(common::publish(&nats.url(), &events));
    with.wait_received(2);
    without.wait_received(2);
    let page = |e: &Exporter, accept: &str| {
        let (status, _, body) = http_with(&e.addr, "GET", "/metrics", &[("Accept", accept)]);
        assert_eq!(status, 200);
        body
    };
    let created = |body: &str| body.lines().filter(|l| l.contains("_created{")).count();
    let om = page(&with, OPENMETRICS);
    // Per namespace: the DS wait histogram, its window summary and the SLO's
    // good and bad counters; and the event counter.
    assert_eq!(created(&om), 2 * 4 + 1, "{om}");
    let before = session_exporter::simulate::unix_ms() as f64 / 1000.0 - 3600.0;
    for line in om.lines().filter(|l| l.contains("_created{")) {
        let t: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(t > before, "{line}");
    }
    common::openmetrics_check(&om);
    assert_eq!(created(&page(&without, OPENMETRICS)), 0);
    assert_eq!(created(&page(&with, "text/plain;version=0.0.4")), 0);
}
