//! `scripts/soak durable`: the production shape under chaos. A 3-node
//! nats-server cluster with an R3 stream and an R3 state bucket; partition
//! replicas with slots that discover their count (three at first, then
//! between two and five as random rescales start and stop them) and one
//! reference exporter (no partitions, never disturbed) reading the stream
//! without acks; a publisher with namespace
//! churn, 1% malformed events and retries (every fiftieth event sent again
//! 300 events later, the same id: across a slot's move, its next holder
//! must drop it); a scrape a second of each exporter, in turn
//! text, OpenMetrics and protobuf (what Prometheus negotiates); and at random
//! intervals a SIGKILL of a random replica (restarted after a random delay), a
//! SIGTERM of another (it must exit 0 within its shutdown bound), a NATS node
//! killed and restarted, a mapping reload of every exporter.
//!
//! For SOAK_SECONDS (default 1800) at SOAK_RATE events/s (default 1000). It
//! ends, once everything is read and checkpointed, with `soak <key> <value>`
//! lines: `mismatched_series` (the replicas together against the reference),
//! `counter_decreases` (any served counter, bucket, sum or count lower than
//! the same replica, or the replicas together, served before),
//! `served_twice` (a namespace on two replicas at one round), `rescales`,
//! `kills`, `terms`, `term_overruns`,
//! `node_restarts`, `reloads`, `lost`, `crashes`, `rss_growth_pct_*`,
//! `scrape_p99_ms_*` per format.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{value, Exporter, Nats};
use session_exporter::config::{Catalog, DEFAULT_MAPPING};
use session_exporter::simulate::{unix_ms, Generator, Profile};

const REPLICAS: usize = 3;
const FORMATS: [(&str, &str); 3] = [
    ("text", "text/plain;version=0.0.4"),
    ("openmetrics", "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    ("protobuf", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn mapping(ttl: &str) -> String {
    let text = DEFAULT_MAPPING
        .replace("max_namespaces: 10000", "max_namespaces: 1000")
        .replace("ttl: 10m", &format!("ttl: {ttl}"));
    Catalog::from_yaml(&text).expect("soak mapping");
    text
}

/// A tiny xorshift: the chaos is random, and says its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn publish(
    urls: String,
    rate: u64,
    churn_every: u64,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let servers: Vec<&str> = urls.split(',').collect();
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let started = Instant::now();
        let (mut generation, mut g) = (u64::MAX, Generator::new(Profile::default()));
        // Publisher retries: (when, event), sent again after 300 others.
        let mut retries = std::collections::VecDeque::new();
        let mut sent_count = 0u64;
        let tick = Duration::from_millis(10);
        let mut next = tokio::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now_gen = started.elapsed().as_secs() / churn_every;
            if now_gen != generation {
                generation = now_gen;
                // Five pools of 60 in turn: namespaces go quiet (their gauges
                // expire) and come back, and the whole stays bounded.
                g = Generator::new(Profile {
                    namespaces: 60,
                    seed: generation + 1,
                    invalid_ratio: 0.01,
                    namespace_prefix: format!("pool{}-", generation % 5),
                    ..Profile::default()
                });
            }
            let mut acks = Vec::new();
            for _ in 0..(rate / 100).max(1) {
                sent_count += 1;
                let (subject, body) = match retries.front() {
                    Some((due, _)) if *due <= sent_count => retries.pop_front().unwrap().1,
                    _ => {
                        let (subject, body) = g.next_event(unix_ms());
                        if sent_count.is_multiple_of(50) {
                            let again = (subject.clone(), body.clone());
                            retries.push_back((sent_count + 300, again));
                        }
                        (subject, body)
                    }
                };
                // Stored or not (a node may be down): both sides read the stream.
                let sent = js.publish(subject, body.into());
                if let Ok(Ok(ack)) = tokio::time::timeout(Duration::from_secs(2), sent).await {
                    acks.push(ack);
                }
            }
            for ack in acks {
                if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), ack).await {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
            next += tick;
            tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
        }
    });
}

/// One partition replica's slot: its process, what it served, its memory.
struct Replica {
    index: usize,
    exporter: Option<Exporter>,
    /// Restart it at this moment (after a kill).
    restart_at: Option<Instant>,
    started: Instant,
    served: HashMap<String, f64>,
    /// RSS when the current process had run for the warm-up, and the latest.
    rss_warm: Option<f64>,
    rss_last: f64,
    rss_growth: Vec<f64>,
}

fn counter_like(k: &str) -> bool {
    (["_total", "_count", "_sum"].iter().any(|s| k.contains(s)) || k.contains("_bucket{"))
        && !k.contains("_window_")
}

/// The domain series of a text page, keyed.
fn page(metrics: &str) -> HashMap<String, f64> {
    common::series(&common::domain(metrics))
        .into_iter()
        .collect()
}

fn get(addr: &str, accept: &str) -> Option<(u16, String, f64)> {
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| {
        common::http_with(addr, "GET", "/metrics", &[("Accept", accept)])
    })
    .ok()?;
    Some((r.0, r.2, t.elapsed().as_secs_f64() * 1000.0))
}

fn main() {
    let seconds = env("SOAK_SECONDS", 1800);
    let rate = env("SOAK_RATE", 1000);
    let seed = env("SOAK_SEED", unix_ms());
    // Every pool has been seen after a sixth of the run; a replica restores
    // its whole state at start, so its processes warm up in a minute.
    let warmup = Duration::from_secs((seconds / 4).max(10));
    let process_warmup = Duration::from_secs(60.min(seconds / 4).max(5));
    eprintln!("soak durable: {seconds}s at {rate} events/s, chaos seed {seed}; RSS growth after {warmup:?} (reference) and {process_warmup:?} of each replica process");
    let bin = common::nats_servers().pop().unwrap();
    let mut nodes = Nats::start_cluster(&bin, 3);
    let urls = nodes.iter().map(Nats::url).collect::<Vec<_>>().join(",");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(nodes[0].url()).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(90);
        while js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "SESSIONS".into(),
                subjects: session_exporter::seed::CHANNELS
                    .iter()
                    .map(|c| format!("{c}.>"))
                    .collect(),
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "no R3 stream");
            thread::sleep(Duration::from_millis(200));
        }
    });
    let dir = common::temp_dir("soak-durable");
    let mapping_file = dir.join("mapping.yml");
    std::fs::write(&mapping_file, mapping("1m")).unwrap();
    let start_exporter = |key: &str, partition: Option<usize>| {
        let mut args = vec![
            "--web.enable-lifecycle".to_string(),
            "--config.file".to_string(),
            mapping_file.to_str().unwrap().to_string(),
            "--nats.jetstream.stream".into(),
            "SESSIONS".into(),
            "--state.bucket".into(),
            "STATE".into(),
            "--state.replicas".into(),
            "3".into(),
            "--state.key".into(),
            key.into(),
            "--state.interval".into(),
            "1s".into(),
            "--shutdown.timeout".into(),
            "10s".into(),
        ];
        if partition.is_some() {
            // Elastic: the count is the replicas present.
            args.extend(
                [
                    "--partition.slots",
                    "720",
                    "--partition.discover",
                    "--partition.dead-after",
                    "10s",
                ]
                .map(String::from),
            );
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Exporter::start(&urls, &args)
    };
    let reference = start_exporter("reference", None);
    let replica = |index: usize| Replica {
        index,
        exporter: Some(start_exporter(&format!("part-{index}"), Some(index))),
        restart_at: None,
        started: Instant::now(),
        served: HashMap::new(),
        rss_warm: None,
        rss_last: 0.0,
        rss_growth: Vec::new(),
    };
    let mut replicas: Vec<Replica> = (0..REPLICAS).map(replica).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (urls, stop, published) = (urls.clone(), stop.clone(), published.clone());
        let churn = (seconds / 30).max(5);
        thread::spawn(move || publish(urls, rate, churn, stop, published))
    };
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let mut scrape_ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let (mut kills, mut terms, mut term_overruns, mut node_restarts, mut reloads) = (0, 0, 0, 0, 0);
    let (mut decreases, mut crashes, mut reload_failures) = (0u64, 0u64, 0u64);
    let (mut rescales, mut twice, mut together) = (0u64, 0u64, HashMap::<String, f64>::new());
    let mut next_chaos = started + Duration::from_secs(10 + rng.below(30));
    let mut node_down: Option<(usize, Instant)> = None;
    let mut ref_rss: (Option<f64>, f64) = (None, 0.0);
    let mut tick = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick += 1;
        let (format, accept) = FORMATS[(tick % 3) as usize];
        // This round's pages, together: each namespaced series from one replica.
        let mut round: HashMap<String, f64> = HashMap::new();
        let mut holder: HashMap<String, usize> = HashMap::new();
        for r in replicas.iter_mut() {
            if r.restart_at.is_some_and(|t| Instant::now() >= t) {
                r.exporter = Some(start_exporter(&format!("part-{}", r.index), Some(r.index)));
                (r.restart_at, r.started, r.rss_warm) = (None, Instant::now(), None);
            }
            let Some(e) = r.exporter.as_mut() else {
                continue;
            };
            if let Some(status) = e.exited() {
                crashes += 1;
                eprintln!(
                    "soak: replica {} exited by itself ({status}):\n{}",
                    r.index,
                    e.log()
                );
                r.exporter = None;
                r.restart_at = Some(Instant::now());
                continue;
            }
            let Some((200, body, ms)) = get(&e.addr, accept) else {
                continue;
            };
            scrape_ms.entry(format).or_default().push(ms);
            if format != "text" {
                continue;
            }
            let now = page(&body);
            for k in now.keys() {
                if let Some(ns) = common::namespace_of(k) {
                    if *holder.entry(ns.to_string()).or_insert(r.index) != r.index {
                        twice += 1;
                        eprintln!(
                            "soak: {ns} served by replicas {} and {}",
                            holder[ns], r.index
                        );
                    }
                }
            }
            let namespaced = now
                .iter()
                .filter(|(k, _)| common::namespace_of(k).is_some());
            round.extend(namespaced.map(|(k, v)| (k.clone(), *v)));
            if !now.is_empty() {
                // Slots move: a series gone from a replica went with its slot.
                for (k, v) in &r.served {
                    if counter_like(k) && now.get(k).is_some_and(|n| n < v) {
                        decreases += 1;
                        eprintln!(
                            "soak: replica {}: {k} went from {v} to {:?}",
                            r.index,
                            now.get(k)
                        );
                    }
                }
                r.served.extend(now);
            }
            if let Some(rss) = value(&body, "process_resident_memory_bytes") {
                r.rss_last = rss;
                if r.rss_warm.is_none()
                    && r.started.elapsed() >= process_warmup
                    && started.elapsed() >= warmup
                {
                    r.rss_warm = Some(rss);
                }
            }
        }
        for (k, v) in &round {
            if counter_like(k) && together.get(k).is_some_and(|was| v < was) {
                decreases += 1;
                eprintln!("soak: together: {k} went from {:?} to {v}", together.get(k));
            }
        }
        together.extend(round);
        if let Some((200, body, ms)) = get(&reference.addr, accept) {
            scrape_ms.entry(format).or_default().push(ms);
            if let Some(rss) = value(&body, "process_resident_memory_bytes") {
                ref_rss.1 = rss;
                if ref_rss.0.is_none() && started.elapsed() >= warmup {
                    ref_rss.0 = Some(rss);
                }
            }
        }
        if let Some((i, back)) = node_down {
            if Instant::now() >= back {
                nodes[i].restart();
                node_down = None;
            }
        }
        if Instant::now() >= next_chaos
            && started.elapsed() + Duration::from_secs(30) < Duration::from_secs(seconds)
        {
            next_chaos = Instant::now() + Duration::from_secs(20 + rng.below(40));
            match rng.below(5) {
                0 => {
                    let n = replicas.len() as u64;
                    let r = &mut replicas[rng.below(n) as usize];
                    if let Some(mut e) = r.exporter.take() {
                        grow(r);
                        e.kill();
                        kills += 1;
                        r.restart_at =
                            Some(Instant::now() + Duration::from_millis(rng.below(5000)));
                        eprintln!("soak: {:?} SIGKILL replica {}", started.elapsed(), r.index);
                    }
                }
                1 => {
                    let n = replicas.len() as u64;
                    let r = &mut replicas[rng.below(n) as usize];
                    if let Some(mut e) = r.exporter.take() {
                        grow(r);
                        e.signal("TERM");
                        let t = Instant::now();
                        let status =
                            common::wait_for(Duration::from_secs(30), "exit after SIGTERM", || {
                                e.exited()
                            });
                        if !status.success() || t.elapsed() > Duration::from_secs(11) {
                            term_overruns += 1;
                            eprintln!(
                                "soak: replica {} after SIGTERM: {status} in {:?}\n{}",
                                r.index,
                                t.elapsed(),
                                e.log()
                            );
                        }
                        terms += 1;
                        r.restart_at = Some(Instant::now());
                        eprintln!(
                            "soak: {:?} SIGTERM replica {} (exited in {:?})",
                            started.elapsed(),
                            r.index,
                            t.elapsed()
                        );
                    }
                }
                // A rescale: a replica more, or one fewer (SIGTERM, gone).
                3 => {
                    let up = match replicas.len() {
                        ..=2 => true,
                        5.. => false,
                        _ => rng.below(2) == 0,
                    };
                    if up {
                        let index = replicas.iter().map(|r| r.index + 1).max().unwrap_or(0);
                        replicas.push(replica(index));
                    } else if let Some(mut r) = replicas.pop() {
                        if let Some(e) = r.exporter.as_mut() {
                            e.signal("TERM");
                            common::wait_for(Duration::from_secs(30), "exit", || e.exited());
                        }
                    }
                    rescales += 1;
                    eprintln!(
                        "soak: {:?} rescaled to {} replicas",
                        started.elapsed(),
                        replicas.len()
                    );
                }
                2 if node_down.is_none() => {
                    let i = rng.below(3) as usize;
                    nodes[i].stop();
                    node_restarts += 1;
                    node_down = Some((i, Instant::now() + Duration::from_secs(2 + rng.below(4))));
                    eprintln!("soak: {:?} NATS node {i} killed", started.elapsed());
                }
                _ => {
                    let ttl = if reloads % 2 == 0 { "90s" } else { "1m" };
                    std::fs::write(&mapping_file, mapping(ttl)).unwrap();
                    reloads += 1;
                    let all = replicas
                        .iter()
                        .filter_map(|r| r.exporter.as_ref())
                        .chain([&reference]);
                    for e in all {
                        let ok = std::panic::catch_unwind(|| {
                            common::http(&e.addr, "POST", "/-/reload").0 == 200
                        });
                        reload_failures += u64::from(!matches!(ok, Ok(true)));
                    }
                    eprintln!("soak: {:?} mapping reloaded (ttl {ttl})", started.elapsed());
                }
            }
        }
        if tick.is_multiple_of(60) {
            eprintln!(
                "soak: {:?} published {} kills {kills} terms {terms} node restarts {node_restarts} rescales {rescales} decreases {decreases}",
                started.elapsed(),
                published.load(Ordering::Relaxed)
            );
        }
        // One round a second (a round that took longer is not made up).
        let until = (started + Duration::from_secs(tick)).max(Instant::now());
        thread::sleep(until - Instant::now());
        tick = tick.max(started.elapsed().as_secs());
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    if let Some((i, _)) = node_down {
        nodes[i].restart();
    }
    for r in replicas.iter_mut().filter(|r| r.exporter.is_none()) {
        r.exporter = Some(start_exporter(&format!("part-{}", r.index), Some(r.index)));
    }
    for r in replicas.iter_mut() {
        grow(r);
    }
    let live: Vec<&Exporter> = replicas
        .iter()
        .filter_map(|r| r.exporter.as_ref())
        .collect();
    let (mismatched, lost) = compare(&reference, &live);
    let growth = |r: &Replica| r.rss_growth.iter().copied().fold(f64::MIN, f64::max);
    let mut figures: Vec<(String, f64)> = vec![
        ("seconds".into(), seconds as f64),
        ("published".into(), published.load(Ordering::Relaxed) as f64),
        ("mismatched_series".into(), mismatched as f64),
        ("counter_decreases".into(), decreases as f64),
        ("served_twice".into(), twice as f64),
        ("rescales".into(), rescales as f64),
        ("kills".into(), kills as f64),
        ("terms".into(), terms as f64),
        ("term_overruns".into(), term_overruns as f64),
        ("node_restarts".into(), node_restarts as f64),
        ("reloads".into(), reloads as f64),
        ("reload_failures".into(), reload_failures as f64),
        ("lost".into(), lost),
        ("crashes".into(), crashes as f64),
    ];
    if let Some(w) = ref_rss.0 {
        figures.push((
            "rss_growth_pct_reference".into(),
            100.0 * (ref_rss.1 - w) / w,
        ));
    }
    for r in &replicas {
        figures.push((format!("rss_growth_pct_{}", r.index), growth(r)));
        figures.push((format!("rss_mb_{}", r.index), r.rss_last / 1048576.0));
    }
    figures.push(("rss_mb_reference".into(), ref_rss.1 / 1048576.0));
    for (format, ms) in &scrape_ms {
        let mut v = ms.clone();
        v.sort_by(f64::total_cmp);
        figures.push((
            format!("scrape_p99_ms_{format}"),
            v[((v.len() - 1) as f64 * 0.99) as usize],
        ));
    }
    for (k, v) in figures {
        println!("soak {k} {}", (v * 100.0).round() / 100.0);
    }
}

/// The current process's RSS growth since its warm-up, kept per slot (a
/// process killed before its warm-up has none).
fn grow(r: &mut Replica) {
    if let Some(w) = r.rss_warm {
        r.rss_growth.push(100.0 * (r.rss_last - w) / w);
    }
}

/// Once all have read the whole stream and stored it: the namespaced series
/// where the replicas together differ from the reference (each from one
/// replica; windowed quantiles and gauges, which follow receive time, left
/// out), and the stream messages the replicas never read.
fn compare(reference: &Exporter, replicas: &[&Exporter]) -> (usize, f64) {
    let position = |e: &Exporter| {
        let m = e.metrics();
        let at = value(&m, "session_exporter_jetstream_stream_position").unwrap_or(0.0);
        let pending = value(&m, "session_exporter_jetstream_pending_messages").unwrap_or(1.0)
            + value(&m, "session_exporter_state_pending_messages").unwrap_or(1.0);
        (at, pending)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let want = position(reference);
        let all = replicas.iter().all(|r| {
            let p = position(r);
            p.0 >= want.0 && p.1 == 0.0
        });
        if (all && want.1 == 0.0) || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    // Namespaced series only: session_events_total is each replica's own
    // counter, gone with a replica a rescale removed.
    let keep = |k: &String| {
        !k.contains("quantile=")
            && !k.starts_with("session_active_sessions")
            && common::namespace_of(k).is_some()
    };
    let want: BTreeMap<String, f64> = page(&reference.metrics())
        .into_iter()
        .filter(|(k, _)| keep(k))
        .collect();
    let mut got: BTreeMap<String, f64> = BTreeMap::new();
    let mut twice = 0;
    for r in replicas {
        for (k, v) in page(&r.metrics()).into_iter().filter(|(k, _)| keep(k)) {
            if common::namespace_of(&k).is_some() && got.contains_key(&k) {
                twice += 1;
            }
            *got.entry(k).or_default() += v;
        }
    }
    let keys: std::collections::BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let differ: Vec<&&String> = keys
        .iter()
        .filter(|k| want.get(**k) != got.get(**k))
        .collect();
    for k in differ.iter().take(20) {
        eprintln!(
            "soak: differs: {k}: reference {:?}, replicas {:?}",
            want.get(**k),
            got.get(**k)
        );
    }
    let lost_by_stream: f64 = replicas
        .iter()
        .map(|r| common::sum(&r.metrics(), "session_exporter_events_lost_total"))
        .sum();
    (differ.len() + twice, lost_by_stream)
}
