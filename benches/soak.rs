//! `scripts/soak`: a long run against a real nats-server, under churn and
//! faults, with memory watched. Progress goes to stderr; the last lines on
//! stdout are `soak <key> <value>`.
//!
//! For SOAK_SECONDS (default 1800): events at SOAK_RATE/s (default 2000) from
//! generations of namespaces that appear and go quiet (a new generation every
//! thirtieth of the run; gauges expire after 1m; max_namespaces 500 is passed
//! within the first third), 1% malformed; a scrape every second; a mapping
//! reload every minute; a NATS restart every three minutes; halfway, a flood of
//! unique namespaces five times max_namespaces. Messages are counted at drain
//! points (publisher paused until the exporter has received all it can), so
//! losses in steady running and across NATS outages are told apart.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{value, Exporter, Nats};
use session_exporter::config::{Catalog, DEFAULT_MAPPING};
use session_exporter::simulate::{unix_ms, Generator, Profile};

const MAX_NAMESPACES: usize = 500;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The default mapping with the soak's limits; `ttl` alternates per reload.
fn mapping(ttl: &str) -> String {
    let text = DEFAULT_MAPPING
        .replace(
            "max_namespaces: 10000",
            &format!("max_namespaces: {MAX_NAMESPACES}"),
        )
        .replace("ttl: 10m", &format!("ttl: {ttl}"));
    assert!(text.contains(&format!("ttl: {ttl}")) && text.contains("max_namespaces: 500"));
    Catalog::from_yaml(&text).expect("soak mapping");
    text
}

/// Shared with the publisher thread.
struct Publisher {
    paused: AtomicBool,
    /// Set by the publisher once it has flushed while paused.
    idle: AtomicBool,
    published: AtomicU64,
    generation: AtomicU64,
    flood: AtomicU64,
    stop: AtomicBool,
}

fn publish(url: String, rate: u64, per_generation: usize, p: Arc<Publisher>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(url)
            .await
            .unwrap();
        let mut gen_seen = u64::MAX;
        let mut g = Generator::new(Profile::default());
        let tick = Duration::from_millis(10);
        let per_tick = (rate / 100).max(1);
        let mut next = tokio::time::Instant::now();
        while !p.stop.load(Ordering::Relaxed) {
            if p.paused.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
                p.idle.store(true, Ordering::Relaxed);
                tokio::time::sleep(tick).await;
                next = tokio::time::Instant::now();
                continue;
            }
            p.idle.store(false, Ordering::Relaxed);
            let gen = p.generation.load(Ordering::Relaxed);
            if gen != gen_seen {
                gen_seen = gen;
                g = Generator::new(Profile {
                    namespaces: per_generation,
                    seed: gen + 1,
                    invalid_ratio: 0.01,
                    namespace_prefix: format!("gen{gen}-"),
                    ..Profile::default()
                });
            }
            let mut batch: Vec<(String, Vec<u8>)> =
                (0..per_tick).map(|_| g.next_event(unix_ms())).collect();
            // The flood: one event for each of many unique namespaces.
            let flood = p.flood.swap(0, Ordering::Relaxed);
            batch.extend((0..flood).map(|i| {
                (
                    "mpv2SessionHistory.MetricAcquiringDsEvent".to_string(),
                    format!(
                        r#"{{"name":"MetricAcquiringDsEvent","namespace":"flood-{i}","payload":{{"message":""}}}}"#
                    )
                    .into_bytes(),
                )
            }));
            for (subject, body) in batch {
                let sent = tokio::time::timeout(
                    Duration::from_secs(1),
                    client.publish(subject, body.into()),
                )
                .await;
                if matches!(sent, Ok(Ok(()))) {
                    p.published.fetch_add(1, Ordering::Relaxed);
                }
            }
            next += tick;
            tokio::time::sleep_until(next).await;
        }
    });
}

struct Soak {
    exporter: Exporter,
    mapping_file: std::path::PathBuf,
    url: String,
    /// Received by exporters that crashed, before their restart.
    received_before: f64,
    /// The running exporter's count at its last scrape.
    last_received: f64,
    crashes: u64,
    scrape_ms: Vec<f64>,
    max_series: f64,
    max_namespaces: f64,
    rss: Vec<(f64, f64)>,
    started: Instant,
}

impl Soak {
    fn start_exporter(url: &str, mapping: &std::path::Path) -> Exporter {
        let e = Exporter::start(
            url,
            &[
                "--config.file",
                mapping.to_str().unwrap(),
                "--web.enable-lifecycle",
            ],
        );
        e.wait_ready();
        e
    }

    /// One scrape: its time, and the figures it carries.
    fn scrape(&mut self) -> Option<String> {
        if let Some(status) = self.exporter.exited() {
            self.crashes += 1;
            self.received_before += self.last_received;
            eprintln!(
                "soak: exporter exited ({status}); restarting\n{}",
                self.exporter.log()
            );
            self.exporter = Soak::start_exporter(&self.url, &self.mapping_file);
        }
        let t = Instant::now();
        let (status, m) = self.exporter.get("/metrics");
        if status != 200 {
            return None;
        }
        self.scrape_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        self.last_received = value(&m, "session_exporter_messages_received_total").unwrap_or(0.0);
        let series = value(&m, "session_exporter_series").unwrap_or(0.0);
        self.max_series = self.max_series.max(series);
        let ns = value(&m, "session_exporter_namespaces").unwrap_or(0.0);
        self.max_namespaces = self.max_namespaces.max(ns);
        if let Some(rss) = value(&m, "process_resident_memory_bytes") {
            self.rss.push((self.started.elapsed().as_secs_f64(), rss));
        }
        Some(m)
    }

    fn received(&mut self) -> f64 {
        let m = loop {
            if let Some(m) = self.scrape() {
                break m;
            }
        };
        self.received_before + value(&m, "session_exporter_messages_received_total").unwrap_or(0.0)
    }

    /// Pause the publisher and wait until the exporter has received all it
    /// will (stable for a second, or all of it); returns published − received.
    fn drain(&mut self, p: &Publisher) -> f64 {
        p.paused.store(true, Ordering::Relaxed);
        common::wait_for(Duration::from_secs(30), "publisher idle", || {
            p.idle.load(Ordering::Relaxed).then_some(())
        });
        let published = p.published.load(Ordering::Relaxed) as f64;
        let (mut last, mut since) = (self.received(), Instant::now());
        while since.elapsed() < Duration::from_secs(1) && last < published {
            thread::sleep(Duration::from_millis(50));
            let r = self.received();
            if r != last {
                (last, since) = (r, Instant::now());
            }
        }
        published - last
    }
}

fn percentile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// The most one namespace can hold under `catalog`: every histogram's HDR
/// (and each of a window's five steps) grown to its mapping's `max_value`,
/// 4 bytes a cell, plus the fixed part (slots, bucket counts, exemplars, the
/// name: 4 KB, generously).
fn worst_bytes_per_namespace(catalog: &Catalog) -> f64 {
    let max_value = |metric: usize| {
        catalog
            .rules
            .values()
            .flatten()
            .filter(|r| r.metric == metric)
            .filter_map(|r| r.value.as_ref().map(|v| v.max_value))
            .fold(0.0, f64::max)
    };
    let cells: usize = catalog
        .metrics
        .iter()
        .enumerate()
        .filter(|(_, d)| d.kind == session_exporter::config::Kind::Histogram)
        .map(|(i, d)| {
            let high = (max_value(i) * d.hdr_scale).max(2.0) as u64;
            let h = hdrhistogram::Histogram::<u32>::new_with_max(high, d.sigfig).unwrap();
            let copies = 1 + if d.window.is_some() { 5 } else { 0 };
            copies * h.distinct_values()
        })
        .sum();
    (cells * 4 + 4096) as f64
}

/// Series of one namespace with every family populated, and of the events.
fn series_per_namespace() -> f64 {
    let e = session_exporter::exporter::Exporter::new(Catalog::default_mapping(), 0);
    let mut g = Generator::new(Profile::default());
    let events = g.metric_events_for(0, unix_ms());
    e.ingest(events.iter().map(|(_, b)| b.as_slice()));
    value(
        &session_exporter::exposition::page::render_text(&e),
        "session_exporter_series",
    )
    .unwrap()
}

fn main() {
    let seconds = env("SOAK_SECONDS", 1800);
    let rate = env("SOAK_RATE", 2000);
    let generation_every = (seconds / 30).max(2);
    let per_generation = MAX_NAMESPACES / 8 + 1;
    let reload_every = 60.min(seconds / 4).max(1);
    let restart_every = 180.min(seconds / 3).max(2);
    let warmup = seconds / 3;
    let flood_at = seconds / 2;
    eprintln!(
        "soak: {seconds}s at {rate} events/s; {per_generation} new namespaces every {generation_every}s \
         (max_namespaces {MAX_NAMESPACES}); reload every {reload_every}s; NATS restart every {restart_every}s; \
         flood of {} namespaces at {flood_at}s; RSS growth measured after {warmup}s",
        5 * MAX_NAMESPACES
    );
    let mut nats = Nats::start();
    let url = nats.url();
    let dir = common::temp_dir("soak");
    let mapping_file = dir.join("mapping.yml");
    std::fs::write(&mapping_file, mapping("1m")).unwrap();
    let exporter = Soak::start_exporter(&url, &mapping_file);
    let started = Instant::now();
    let mut soak = Soak {
        exporter,
        mapping_file: mapping_file.clone(),
        url: url.clone(),
        received_before: 0.0,
        last_received: 0.0,
        crashes: 0,
        scrape_ms: Vec::new(),
        max_series: 0.0,
        max_namespaces: 0.0,
        rss: Vec::new(),
        started,
    };
    soak.scrape();
    let base_rss = soak.rss[0].1;

    let p = Arc::new(Publisher {
        paused: AtomicBool::new(false),
        idle: AtomicBool::new(false),
        published: AtomicU64::new(0),
        generation: AtomicU64::new(0),
        flood: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let publisher = {
        let (url, p) = (url.clone(), p.clone());
        thread::spawn(move || publish(url, rate, per_generation, p))
    };

    let (mut lost_steady, mut lost_outage, mut outages, mut reloads, mut reload_failures) =
        (0.0, 0.0, 0u64, 0u64, 0u64);
    let mut accounted = 0.0;
    let mut flooded = false;
    let mut warm_rss = None;
    let (mut next_reload, mut next_restart, mut next_report) = (reload_every, restart_every, 60);
    let mut second = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        second += 1;
        let until = started + Duration::from_secs(second);
        let t = started.elapsed().as_secs();
        p.generation.store(t / generation_every, Ordering::Relaxed);
        if !flooded && t >= flood_at {
            p.flood.store(5 * MAX_NAMESPACES as u64, Ordering::Relaxed);
            flooded = true;
        }
        if t >= next_reload {
            next_reload += reload_every;
            let ttl = if reloads % 2 == 0 { "90s" } else { "1m" };
            std::fs::write(&mapping_file, mapping(ttl)).unwrap();
            reloads += 1;
            if common::http(&soak.exporter.addr, "POST", "/-/reload").0 != 200 {
                reload_failures += 1;
            }
        }
        if t >= next_restart && t + 10 < seconds {
            next_restart += restart_every;
            // Steady losses up to here, then an outage and its own losses.
            let lost = soak.drain(&p);
            lost_steady += lost - accounted;
            accounted = lost;
            p.paused.store(false, Ordering::Relaxed);
            nats.stop();
            thread::sleep(Duration::from_secs(2)); // the outage itself
            nats.restart();
            common::wait_for(Duration::from_secs(30), "exporter ready again", || {
                (soak.exporter.get("/-/ready").0 == 200).then_some(())
            });
            let lost = soak.drain(&p);
            lost_outage += lost - accounted;
            accounted = lost;
            outages += 1;
            p.paused.store(false, Ordering::Relaxed);
            eprintln!(
                "soak: {t}s NATS restarted; lost so far {lost_steady} steady, {lost_outage} in {outages} outage(s)"
            );
        }
        soak.scrape();
        if warm_rss.is_none() && t >= warmup {
            warm_rss = soak.rss.last().map(|r| r.1);
        }
        if t >= next_report {
            next_report += 60;
            let rss = soak.rss.last().map_or(0.0, |r| r.1) / 1048576.0;
            eprintln!(
                "soak: {t}s published {} rss {rss:.1} MiB namespaces {} series {}",
                p.published.load(Ordering::Relaxed),
                soak.max_namespaces,
                soak.max_series
            );
        }
        // One scrape a second (the second is skipped if an outage took it).
        let until = until.max(Instant::now());
        thread::sleep(until - Instant::now());
        second = second.max(started.elapsed().as_secs());
    }
    let lost = soak.drain(&p);
    lost_steady += lost - accounted;
    p.stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();

    let end_rss = soak.rss.last().unwrap().1;
    let warm = warm_rss.unwrap_or(base_rss);
    let max_rss = soak.rss.iter().map(|r| r.1).fold(0.0, f64::max);
    // The fullest namespace the mapping allows, and one scrape's text and its
    // gzip copy (~3.7 KB per namespace each), over the idle process.
    let catalog = Catalog::from_yaml(&mapping("1m")).unwrap();
    let worst = worst_bytes_per_namespace(&catalog);
    let bound = base_rss + (MAX_NAMESPACES as f64 + 1.0) * (worst + 2.0 * 3_700.0);
    let live = soak.max_namespaces.max(1.0);
    let per_ns = series_per_namespace();
    let series_bound = (MAX_NAMESPACES as f64 + 1.0) * per_ns;
    let published = p.published.load(Ordering::Relaxed);
    eprintln!(
        "soak: done; {published} published, {} scrapes, {reloads} reloads ({reload_failures} failed), {outages} NATS restarts",
        soak.scrape_ms.len()
    );
    let figures = [
        ("seconds", seconds as f64),
        ("published", published as f64),
        ("rss_base_mb", base_rss / 1048576.0),
        ("rss_warm_mb", warm / 1048576.0),
        ("rss_end_mb", end_rss / 1048576.0),
        ("rss_max_mb", max_rss / 1048576.0),
        ("rss_growth_pct", 100.0 * (end_rss - warm) / warm),
        ("rss_bound_mb", bound / 1048576.0),
        ("worst_bytes_per_namespace", worst),
        ("bytes_per_namespace", (warm - base_rss) / live),
        ("lost", lost_steady),
        ("lost_in_outages", lost_outage),
        ("nats_restarts", outages as f64),
        ("crashes", soak.crashes as f64),
        ("reloads", reloads as f64),
        ("reload_failures", reload_failures as f64),
        ("max_namespaces", soak.max_namespaces),
        ("max_series", soak.max_series),
        ("series_bound", series_bound),
        ("scrape_p99_ms", percentile(&soak.scrape_ms, 0.99)),
    ];
    for (k, v) in figures {
        println!("soak {k} {}", (v * 100.0).round() / 100.0);
    }
}
