//! Concurrent scrapes share one render: at 2,000 namespaces, 16 scrapers of
//! one format at once raise the exporter's peak memory by about one page,
//! not sixteen, and each gets a complete page. Past `--web.max-requests`
//! a scrape is answered 503 and counted.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use session_exporter::simulate::{unix_ms, Generator, Profile};

const NAMESPACES: usize = 2000;

/// A kernel figure of the process, in KiB (`VmRSS`, `VmHWM`).
fn kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

async fn exporter_with_namespaces(extra: &[&str]) -> (Nats, Exporter) {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), extra);
    exporter.wait_ready();
    let mut g = Generator::new(Profile {
        namespaces: NAMESPACES,
        ..Profile::default()
    });
    let events: Vec<_> = (0..NAMESPACES)
        .flat_map(|ns| g.metric_events_for(ns, unix_ms()))
        .collect();
    publish(&nats.url(), &events).await;
    exporter.wait_received(events.len() as u64);
    (nats, exporter)
}

const ACCEPT: [(&str, &str); 3] = [
    ("text", "text/plain"),
    ("openmetrics", "application/openmetrics-text; version=1.0.0"),
    (
        "protobuf",
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_concurrent_scrapes_cost_about_one_page() {
    let (_nats, exporter) = exporter_with_namespaces(&[]).await;
    let pid = exporter.pid();
    for (name, accept) in ACCEPT {
        // One scrape first: the allocator has then held one page already.
        let page = http_with(&exporter.addr, "GET", "/metrics", &[("Accept", accept)]).2;
        let page_kib = page.len() as u64 / 1024;
        let idle = kib(pid, "VmRSS");
        // Reset the peak to now (Linux: 5 → clear_refs resets VmHWM).
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        let barrier = Arc::new(Barrier::new(16));
        let scrapers: Vec<_> = (0..16)
            .map(|_| {
                let (addr, barrier) = (exporter.addr.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let (status, head, body) =
                        http_with(&addr, "GET", "/metrics", &[("Accept", accept)]);
                    assert_eq!(status, 200, "{head}");
                    body
                })
            })
            .collect();
        let bodies: Vec<String> = scrapers.into_iter().map(|t| t.join().unwrap()).collect();
        let growth = kib(pid, "VmHWM").saturating_sub(idle);
        eprintln!(
            "{name}: page {page_kib} KiB, idle {idle} KiB, peak growth under 16 scrapers {growth} KiB ({:.2} pages)",
            growth as f64 / page_kib as f64
        );
        // Complete pages: as long as the first, give or take self-metrics.
        for b in &bodies {
            assert!(
                b.len() as f64 > page.len() as f64 * 0.99,
                "{name}: a short page"
            );
        }
        match name {
            "text" => promtool_check(&bodies[15]),
            "openmetrics" => {
                assert!(bodies.iter().all(|b| b.ends_with("# EOF\n")));
                assert!(openmetrics_check(&bodies[15]) > NAMESPACES);
            }
            _ => {}
        }
        assert!(
            growth < page_kib * 3,
            "{name}: peak grew {growth} KiB for a {page_kib} KiB page"
        );
    }
    let m = exporter.metrics();
    let shared = value(&m, "session_exporter_scrapes_total{result=\"shared\"}").unwrap();
    eprintln!("scrapes shared: {shared}");
    assert!(shared > 0.0, "no scrape shared a render");
}

#[tokio::test(flavor = "multi_thread")]
async fn scrapes_past_max_requests_are_refused() {
    let (_nats, exporter) = exporter_with_namespaces(&["--web.max-requests", "2"]).await;
    let barrier = Arc::new(Barrier::new(12));
    let scrapers: Vec<_> = (0..12)
        .map(|_| {
            let (addr, barrier) = (exporter.addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                http(&addr, "GET", "/metrics").0
            })
        })
        .collect();
    let codes: Vec<u16> = scrapers.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    let refused = codes.iter().filter(|c| **c == 503).count();
    assert!(refused > 0, "{codes:?}");
    wait_for(Duration::from_secs(10), "the refusals counted", || {
        let m = exporter.metrics();
        let counted = value(&m, "session_exporter_scrapes_total{result=\"rejected\"}")?;
        (counted >= refused as f64).then_some(())
    });
}
