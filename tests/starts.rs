//! Series start timestamps, read by a Prometheus 3 that ingests them
//! (`--enable-feature=created-timestamp-zero-ingestion`): a namespace born
//! after Prometheus started begins at 0, so `increase()` counts its first
//! events, and so does a series after an exporter restart without a state
//! store. The same Prometheus without the feature is the control.

mod common;

use std::time::Duration;

use common::{prometheus_versions, wait_for, Exporter, Nats, Prometheus};

fn acquisitions(ns: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let body = format!(
                r#"{{"id":"{ns}-{i}-{}","name":"MetricAcquiringDsEvent","namespace":"{ns}"}}"#,
                session_exporter::simulate::unix_ms()
            );
            (
                "mpv2SessionHistory.MetricAcquiringDsEvent".to_string(),
                body.into_bytes(),
            )
        })
        .collect()
}

/// Every stored sample of the namespace's acquisitions counter, in order.
fn samples(prom: &Prometheus, ns: &str) -> Vec<f64> {
    let q = format!("session_ds_acquisitions_total{{game_namespace=\"{ns}\"}}[10m]");
    let r = prom.query(&q);
    r.first()
        .and_then(|s| s["values"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|v| v[1].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Wait until `prom` has scraped `value` for the namespace, twice.
fn wait_scraped(prom: &Prometheus, ns: &str, value: f64) -> Vec<f64> {
    wait_for(
        Duration::from_secs(30),
        &format!("{ns} at {value} twice"),
        || {
            let s = samples(prom, ns);
            (s.iter().filter(|&&v| v == value).count() >= 2).then_some(s)
        },
    )
}

#[test]
fn new_series_begin_at_zero_in_a_prometheus_that_ingests_starts() {
    let bin = prometheus_versions().pop().unwrap();
    assert_eq!(bin.major, 3);
    let nats = Nats::start();
    let mut exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    let proto = "    scrape_protocols: [PrometheusProto]\n";
    let feature = ["--enable-feature=created-timestamp-zero-ingestion"];
    let ct = Prometheus::start_on(&bin, &exporter.addr, &[], &feature, proto);
    let plain = Prometheus::start_on(&bin, &exporter.addr, &[], &[], proto);
    for p in [&ct, &plain] {
        wait_for(Duration::from_secs(30), "a first scrape", || {
            (!p.query("up == 1").is_empty()).then_some(())
        });
    }
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A namespace born after both Prometheus servers started.
    rt.block_on(common::publish(&nats.url(), &acquisitions("fresh", 3)));
    exporter.wait_received(3);
    let with = wait_scraped(&ct, "fresh", 3.0);
    let without = wait_scraped(&plain, "fresh", 3.0);
    assert_eq!(with[0], 0.0, "the start came first: {with:?}");
    assert!(without.iter().all(|&v| v == 3.0), "control: {without:?}");
    let increase = |p: &Prometheus| {
        let r = p.query("increase(session_ds_acquisitions_total{game_namespace=\"fresh\"}[10m])");
        r[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap()
    };
    assert!(increase(&ct) >= 3.0, "increase() counts the first events");
    assert_eq!(
        increase(&plain),
        0.0,
        "control: without starts they are lost"
    );

    // A restart without a state store: the counter begins again, here at a
    // higher value than before, which no reset detection can see.
    let addr = exporter.addr.clone();
    exporter.kill();
    let mut cmd = std::process::Command::new(common::EXPORTER);
    cmd.args(["--nats.url", &nats.url(), "--web.listen-address", &addr]);
    let exporter = Exporter::spawn(cmd);
    exporter.wait_ready();
    rt.block_on(common::publish(&nats.url(), &acquisitions("fresh", 5)));
    exporter.wait_received(5);
    let with = wait_scraped(&ct, "fresh", 5.0);
    let without = wait_scraped(&plain, "fresh", 5.0);
    let restart = with.iter().rposition(|&v| v == 0.0).unwrap();
    assert!(
        restart > 0 && with[restart + 1..].iter().all(|&v| v == 5.0),
        "{with:?}"
    );
    assert!(!without.contains(&0.0), "control: {without:?}");
}
