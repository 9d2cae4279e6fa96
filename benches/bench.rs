//! `scripts/bench`: throughput, scrape cost and memory, each against a baseline
//! measured in the same run. Progress goes to stderr; the last lines on stdout
//! are `bench <key> <value>`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::de::IgnoredAny;
use session_exporter::config::Catalog;
use session_exporter::exporter::Exporter;
use session_exporter::exposition::page;
use session_exporter::simulate::{unix_ms, Generator, Profile};
use session_exporter::source::{self, NatsConfig};
use session_exporter::{http, seed};
use tokio::sync::watch;

type Corpus = Vec<(String, Vec<u8>)>;

fn corpus(n: usize, namespaces: usize, seed: u64) -> Corpus {
    let mut g = Generator::new(Profile {
        namespaces,
        seed,
        ..Profile::default()
    });
    let now = unix_ms();
    (0..n).map(|_| g.next_event(now)).collect()
}

/// Every `Metric*` family for each of `namespaces` namespaces.
fn populate_corpus(namespaces: usize) -> Corpus {
    let mut g = Generator::new(Profile {
        namespaces,
        seed: 99,
        ..Profile::default()
    });
    let now = unix_ms();
    (0..namespaces)
        .flat_map(|ns| g.metric_events_for(ns, now))
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let m = median(v);
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    format!(
        "median {m:.4}, range {lo:.4}..{hi:.4} (spread ±{:.1}%)",
        50.0 * (hi - lo) / m
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- fold

/// Events an exporter folds before a "warm" measurement: enough that its
/// histograms have grown to their values' range (HDR counts arrays grow with
/// the largest value seen; after 50,000 events over 1,000 namespaces, the
/// next 50,000 still grew one 9,521 times, each a realloc that glibc pays
/// for by consolidating its free lists).
const WARM_UP_EVENTS: usize = 1_000_000;

/// Decode + fold against serde_json parsing the same bytes: on a fresh
/// exporter (every namespace's series made during the run, as before) and on
/// one that already holds them all (the steady state a running exporter is
/// in: no allocations, no first touches of new memory). Returns medians of
/// (cold events/s, cold ratio, warm ratio).
fn bench_fold(reps: usize) -> (f64, f64, f64) {
    // BENCH_FOLD_NAMESPACES: fewer namespaces, a smaller working set (what
    // the cache does to the ratio).
    let namespaces = std::env::var("BENCH_FOLD_NAMESPACES").map_or(1000, |s| s.parse().unwrap());
    // BENCH_FOLD_MAPPING: another mapping file (what each part of the
    // default one costs).
    let catalog = || match std::env::var("BENCH_FOLD_MAPPING") {
        Ok(path) => Catalog::from_file(std::path::Path::new(&path)).unwrap(),
        Err(_) => Catalog::default_mapping(),
    };
    // BENCH_FOLD_DEDUP: the de-duplication window (0, off, by default; the
    // JetStream mode's default is 100,000).
    let dedup = std::env::var("BENCH_FOLD_DEDUP").map_or(0, |s| s.parse().unwrap());
    let corpus = corpus(200_000, namespaces, 1);
    let warm_up = self::corpus(WARM_UP_EVENTS, namespaces, 2);
    let bytes: usize = corpus.iter().map(|c| c.1.len()).sum();
    eprintln!(
        "fold: {} events, mean {} B, {namespaces} namespaces, one core, {reps} repetitions",
        corpus.len(),
        bytes / corpus.len()
    );
    let fold_all = |exporter: &Exporter, corpus: &Corpus| -> usize {
        corpus
            .chunks(512)
            .map(|c| exporter.ingest(c.iter().map(|e| e.1.as_slice())))
            .sum()
    };
    let (mut fold, mut parse, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let t = Instant::now();
        let ok = corpus
            .iter()
            .filter(|(_, b)| serde_json::from_slice::<IgnoredAny>(b).is_ok())
            .count();
        assert_eq!(ok, corpus.len());
        parse.push(corpus.len() as f64 / t.elapsed().as_secs_f64());

        let exporter = Exporter::new(catalog(), None, dedup);
        let t = Instant::now();
        let folded = fold_all(&exporter, &corpus);
        fold.push(corpus.len() as f64 / t.elapsed().as_secs_f64());
        assert_eq!(folded, corpus.len());

        let exporter = Exporter::new(catalog(), None, dedup);
        fold_all(&exporter, &warm_up);
        let t = Instant::now();
        let folded = fold_all(&exporter, &corpus);
        warm.push(corpus.len() as f64 / t.elapsed().as_secs_f64());
        assert_eq!(folded, corpus.len());
        eprintln!(
            "  rep {rep}: serde_json IgnoredAny {:.0}/s, decode+fold {:.0}/s, warm {:.0}/s",
            parse[rep], fold[rep], warm[rep]
        );
    }
    eprintln!("  IgnoredAny:         {}", spread(&parse));
    eprintln!("  decode + fold:      {}", spread(&fold));
    eprintln!("  … warm:             {}", spread(&warm));
    let ratios: Vec<f64> = fold.iter().zip(&parse).map(|(f, p)| f / p).collect();
    let warm_ratios: Vec<f64> = warm.iter().zip(&parse).map(|(f, p)| f / p).collect();
    eprintln!("  ratio:              {}", spread(&ratios));
    eprintln!("  warm ratio:         {}", spread(&warm_ratios));
    (median(&fold), median(&ratios), median(&warm_ratios))
}

/// The skip path of a partition replica without server-side partitions:
/// nanoseconds per event of another partition, against scanning each
/// event's envelope up to its `namespace` (and hashing it) alone, the
/// least a skip can cost. Medians of `reps`.
fn bench_skip(reps: usize) -> (f64, f64) {
    use session_exporter::partition::{self, Partition};
    let p = Partition { count: 3, index: 0 };
    let theirs: Corpus = corpus(200_000, 1000, 1)
        .into_iter()
        .filter(|(_, b)| {
            let ev = session_exporter::event::decode(b).unwrap();
            partition::of(ev.namespace.as_deref().unwrap_or(""), 3) != 0
        })
        .collect();
    let (mut skip, mut scan) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let exporter = Exporter::new(Catalog::default_mapping(), None, 0).with_partition(p, false);
        let t = Instant::now();
        let folded: usize = theirs
            .chunks(512)
            .map(|c| exporter.ingest(c.iter().map(|e| e.1.as_slice())))
            .sum();
        skip.push(t.elapsed().as_nanos() as f64 / theirs.len() as f64);
        assert_eq!(folded, 0);
        let t = Instant::now();
        let hashed: u64 = theirs
            .iter()
            .filter_map(|(_, b)| session_exporter::scan::leading_namespace(b))
            .filter_map(|ns| ns.text())
            .map(|ns| u64::from(partition::of(&ns, 3)))
            .sum();
        scan.push(t.elapsed().as_nanos() as f64 / theirs.len() as f64);
        assert!(hashed > 0);
    }
    eprintln!(
        "skip: {} events of other partitions; skipped: {} ns each; envelope scan to the namespace and its hash alone: {} ns",
        theirs.len(),
        spread(&skip),
        spread(&scan)
    );
    (median(&skip), median(&scan))
}

/// `BENCH_ONLY=ingest`, for `scripts/profile`, which counts the
/// instructions of these two functions only: 50,000 events parsed by
/// serde_json into `IgnoredAny` (the baseline), then folded; with
/// `BENCH_PARTITIONS=N`, folded by partition 0 of N, which skips the others'.
fn profile_ingest() {
    let corpus = corpus(50_000, 1000, 1);
    let count = std::env::var("BENCH_PARTITIONS").map_or(1, |s| s.parse().unwrap());
    let mut exporter = Exporter::new(Catalog::default_mapping(), None, 0);
    if count > 1 {
        let p = session_exporter::partition::Partition { count, index: 0 };
        exporter = exporter.with_partition(p, false);
    }
    if std::env::var("BENCH_WARM").is_ok_and(|v| !v.is_empty()) {
        // Every namespace's series made and written first (other events):
        // the measured pass is then the steady state, no first touches.
        let warm = self::corpus(50_000, 1000, 2);
        ingest_all_untimed(&exporter, &warm);
    }
    let parsed = parse_all(&corpus);
    let folded = ingest_all(&exporter, &corpus);
    println!(
        "ingest: {} events, {parsed} parsed, {folded} folded",
        corpus.len()
    );
}

#[inline(never)]
fn parse_all(corpus: &Corpus) -> usize {
    corpus
        .iter()
        .filter(|(_, b)| serde_json::from_slice::<IgnoredAny>(b).is_ok())
        .count()
}

#[inline(never)]
fn ingest_all_untimed(exporter: &Exporter, corpus: &Corpus) {
    for c in corpus.chunks(512) {
        exporter.ingest(c.iter().map(|e| e.1.as_slice()));
    }
}

#[inline(never)]
fn ingest_all(exporter: &Exporter, corpus: &Corpus) -> usize {
    corpus
        .chunks(512)
        .map(|c| exporter.ingest(c.iter().map(|e| e.1.as_slice())))
        .sum()
}

/// `BENCH_ONLY=js-read`, for `scripts/profile js`: a stream filled with
/// 50,000 events (untimed), then read to its end by a bare ordered push
/// consumer that only counts (`bench::js_bare_all`), and by the exporter's
/// own ack-free source with a state store (`bench::js_source_all`). Each
/// runs on a current-thread runtime inside that function, so the client's
/// connection task is counted with it.
fn profile_js_read() {
    let nats = common::Nats::start_jetstream();
    let url = nats.url();
    let corpus = corpus(50_000, 1000, 1);
    fill_stream(&url, "PROFILE", &corpus);
    js_bare_all(&url, corpus.len());
    let folded = js_source_all(&url, corpus.len());
    println!("js-read: {} events, {folded} folded", corpus.len());
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[inline(never)]
fn js_bare_all(url: &str, n: usize) {
    use async_nats::jetstream::consumer::push;
    current_thread().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream("PROFILE").await.unwrap();
        let config = push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        };
        let messages = stream.create_consumer(config).await.unwrap();
        count_until(messages.messages().await.unwrap(), n).await;
    });
}

#[inline(never)]
fn js_source_all(url: &str, n: usize) -> u64 {
    let exporter =
        Arc::new(Exporter::new(Catalog::default_mapping(), None, 0).serving_checkpoints());
    let mut cfg = nats_config(url);
    cfg.jetstream = Some(source::JetStreamConfig {
        stream: "PROFILE".into(),
        consumer: "profile".into(),
        filter_subjects: Vec::new(),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: JS_MAX_ACK_PENDING,
        pull_batch: JS_PULL_BATCH,
    });
    cfg.state = Some(source::state::StateConfig {
        bucket: "PROFILESTATE".into(),
        key: format!("profile-{}", unix_ms()),
        interval: Duration::from_secs(3600),
        replicas: 1,
        on_invalid: source::state::OnInvalid::Refuse,
    });
    let e = exporter.clone();
    current_thread().block_on(async move {
        let client = source::connect(&cfg, e.clone()).await.unwrap();
        let done = {
            let e = e.clone();
            async move {
                while e.stats.messages_received.get() < n as u64 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        source::run(client, &cfg, e, done).await.unwrap();
    });
    exporter.stats.messages_received.get()
}

// ---------------------------------------------------------------- end to end

/// CPU seconds used by this process's threads, but for those named `skip`
/// (from /proc: the exporter's own cost, without the in-process publisher).
fn cpu_secs(skip: &str) -> f64 {
    let ticks: u64 = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1;
            let f: Vec<&str> = rest.split(' ').collect();
            // utime and stime: fields 14 and 15, here 11 and 12 after the state.
            let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            (comm != skip).then_some(t)
        })
        .sum();
    ticks as f64 / 100.0
}

/// Publish the corpus at full speed from its own thread and runtime.
fn publish_thread(url: String, corpus: Arc<Corpus>) -> thread::JoinHandle<f64> {
    thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = async_nats::connect(url).await.unwrap();
                let t = Instant::now();
                for (subject, body) in corpus.iter() {
                    client
                        .publish(subject.clone(), body.clone().into())
                        .await
                        .unwrap();
                }
                client.flush().await.unwrap();
                corpus.len() as f64 / t.elapsed().as_secs_f64()
            })
        })
        .expect("publisher thread")
}

fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        subjects: seed::default_subjects(),
        subscription_capacity: source::DEFAULT_SUBSCRIPTION_CAPACITY,
        ..NatsConfig::default()
    }
}

/// Wait until `count()` reaches `n` or stops moving for two seconds; returns
/// the time it reached its final value, measured from `start`, and that value.
fn wait_count(start: Instant, n: u64, count: impl Fn() -> u64) -> (f64, u64) {
    let (mut last, mut last_change) = (count(), Instant::now());
    loop {
        let c = count();
        if c != last {
            (last, last_change) = (c, Instant::now());
        }
        if c >= n || last_change.elapsed() > Duration::from_secs(2) {
            return (last_change.duration_since(start).as_secs_f64(), c);
        }
        thread::sleep(Duration::from_micros(500));
    }
}

/// A bare async-nats subscriber on the same subjects that only counts.
fn run_baseline(url: &str, corpus: &Arc<Corpus>) -> f64 {
    let rt = runtime();
    let count = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let cfg = nats_config(url);
    let c = count.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(cfg.subscription_capacity)
            .connect(&cfg.url)
            .await
            .unwrap();
        let mut subs = Vec::new();
        for s in &cfg.subjects {
            subs.push(client.subscribe(s.clone()).await.unwrap());
        }
        client.flush().await.unwrap();
        let _ = ready_tx.send(());
        // The same merge as the exporter's, so the two differ only by the fold.
        let mut all = source::Merged::new(subs);
        let mut stopped = stopped;
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                m = all.next() => match m { Some(_) => { c.fetch_add(1, Ordering::Relaxed); } None => break },
            }
        }
    });
    ready_rx.recv().unwrap();
    let start = Instant::now();
    let publisher = publish_thread(url.to_string(), corpus.clone());
    let (secs, got) = wait_count(start, corpus.len() as u64, || count.load(Ordering::Relaxed));
    publisher.join().unwrap();
    let _ = stop.send(true);
    rt.shutdown_timeout(Duration::from_secs(2));
    assert_eq!(
        got,
        corpus.len() as u64,
        "the baseline subscriber lost messages"
    );
    corpus.len() as f64 / secs
}

/// The exporter's own source and fold, in process, optionally with `/metrics`
/// scraped every second during the run. Returns (events/s, lost).
fn run_exporter(
    url: &str,
    corpus: &Arc<Corpus>,
    prefill: &[(String, Vec<u8>)],
    scrape_every: Option<Duration>,
) -> (f64, u64) {
    run_exporter_as(url, corpus, prefill, scrape_every, None)
}

/// `run_exporter`, optionally as one partition replica that reads every
/// subject and skips the other partitions' events (counted as handled).
fn run_exporter_as(
    url: &str,
    corpus: &Arc<Corpus>,
    prefill: &[(String, Vec<u8>)],
    scrape_every: Option<Duration>,
    partition: Option<session_exporter::partition::Partition>,
) -> (f64, u64) {
    let rt = runtime();
    let mut exporter = Exporter::new(Catalog::default_mapping(), None, 0);
    if let Some(p) = partition {
        exporter = exporter.with_partition(p, false);
    }
    let exporter = Arc::new(exporter);
    for chunk in prefill.chunks(512) {
        exporter.ingest(chunk.iter().map(|c| c.1.as_slice()));
    }
    let handled = || exporter.stats.events_folded.get() + exporter.stats.partition_skipped.get();
    let base = handled();
    let (stop, stopped) = watch::channel(false);
    let cfg = nats_config(url);
    let e = exporter.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    rt.spawn(http::serve(
        listener,
        exporter.clone(),
        http::Options::default(),
        wait(stopped.clone()),
    ));
    let source = rt.spawn({
        let stopped = stopped.clone();
        async move {
            let client = source::connect(&cfg, e.clone()).await.unwrap();
            source::run(client, &cfg, e, wait(stopped)).await.unwrap();
        }
    });
    common::wait_for(Duration::from_secs(10), "exporter ready", || {
        exporter.is_ready().then_some(())
    });
    let cpu = cpu_secs("publisher");
    let start = Instant::now();
    let publisher = publish_thread(url.to_string(), corpus.clone());
    let finished = Arc::new(AtomicBool::new(false));
    let scraper = scrape_every.map(|every| {
        let addr = addr.clone();
        let finished = finished.clone();
        thread::spawn(move || {
            let mut scrapes = 0;
            while !finished.load(Ordering::Relaxed) {
                let t = Instant::now();
                get_metrics(&addr);
                scrapes += 1;
                while t.elapsed() < every && !finished.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(5));
                }
            }
            scrapes
        })
    });
    let (secs, got) = wait_count(start, base + corpus.len() as u64, handled);
    let cpu = cpu_secs("publisher") - cpu;
    finished.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    if let Some(s) = scraper {
        let scrapes = s.join().unwrap();
        eprintln!("    ({scrapes} scrapes during the run)");
    }
    let _ = stop.send(true);
    let _ = rt.block_on(source);
    rt.shutdown_timeout(Duration::from_secs(2));
    let folded = got - base;
    let lost = corpus.len() as u64 - folded;
    if lost > 0 {
        page::render_text(&exporter);
        let s = &exporter.stats;
        eprintln!(
            "    lost {lost}: client took {} off the wire, {} received, {} slow-consumer events, {} reconnects",
            s.nats_messages_in.get(),
            s.messages_received.get(),
            s.slow_consumer_drops.get(),
            s.nats_reconnects.get()
        );
    }
    CPU_US.with(|c| c.set(cpu * 1e6 / folded.max(1) as f64));
    (folded as f64 / secs, lost)
}

thread_local! {
    /// Exporter CPU µs per event of the last `run_exporter`/`run_jetstream`.
    static CPU_US: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// The corpus stored in a fresh JetStream stream.
fn fill_stream(url: &str, name: &str, corpus: &Corpus) {
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(name).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: seed::CHANNELS.iter().map(|c| format!("{c}.>")).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        common::js_publish(&js, corpus).await;
    });
}

/// The corpus in a fresh stream whose subjects carry the partition:
/// published as `sessions.<namespace>.<event>`, stored by the server's
/// mapping (`deploy/nats/partitions.conf`) as `sessions.<p>.<namespace>.<event>`.
fn fill_partitioned_stream(url: &str, name: &str, corpus: &Corpus) {
    let mapped: Corpus = corpus
        .iter()
        .map(|(subject, body)| {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let ns = v["namespace"].as_str().unwrap_or("none");
            let event = subject.rsplit('.').next().unwrap_or("x");
            (format!("sessions.{ns}.{event}"), body.clone())
        })
        .collect();
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(name).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec!["sessions.*.*.*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        common::js_publish(&js, &mapped).await;
    });
}

/// nats-server with the partition mapping of `deploy/nats/partitions.conf`.
fn nats_with_partitions() -> common::Nats {
    let conf = common::temp_dir("bench").join("partitions.conf");
    std::fs::write(&conf, include_str!("../deploy/nats/partitions.conf")).unwrap();
    common::Nats::start_jetstream_with(
        std::path::Path::new("nats-server"),
        &["-c", conf.to_str().unwrap()],
    )
}

/// A bare async-nats pull consumer of the stream that acks every message
/// (sent per ready batch, as the exporter does) and only counts.
fn run_bare_jetstream(url: &str, stream: &str, n: usize) -> f64 {
    use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
    let rt = runtime();
    let t = Instant::now();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let consumer: PullConsumer = js
            .get_stream(stream)
            .await
            .unwrap()
            .create_consumer(pull::Config {
                durable_name: Some("bare".into()),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: JS_MAX_ACK_PENDING,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batches = consumer
            .stream()
            .max_messages_per_batch(JS_PULL_BATCH)
            .messages()
            .await
            .unwrap()
            .ready_chunks(512);
        let mut count = 0;
        while count < n {
            for m in batches.next().await.unwrap() {
                let reply = m.unwrap().message.reply.unwrap();
                client.publish(reply, bytes::Bytes::new()).await.unwrap();
                count += 1;
            }
        }
        client.flush().await.unwrap();
    });
    n as f64 / t.elapsed().as_secs_f64()
}

/// Take `n` messages off `messages`, a ready batch at a time, doing nothing
/// with them: a bare reader.
async fn count_until<T>(messages: impl futures_util::Stream<Item = T> + Unpin, n: usize) {
    let mut batches = messages.ready_chunks(512);
    let mut count = 0;
    while count < n {
        count += batches.next().await.unwrap().len();
    }
}

/// Time a bare reader of `stream` that takes `n` messages off what `open`
/// makes from the client and the stream, doing nothing with them.
fn time_reader<F, Fut, S, T>(url: &str, stream: &str, n: usize, open: F) -> f64
where
    F: FnOnce(async_nats::Client, async_nats::jetstream::stream::Stream) -> Fut,
    Fut: std::future::Future<Output = S>,
    S: futures_util::Stream<Item = T> + Unpin,
{
    let rt = runtime();
    let t = Instant::now();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream(stream).await.unwrap();
        count_until(open(client, stream).await, n).await;
    });
    n as f64 / t.elapsed().as_secs_f64()
}

/// A bare async-nats ordered pull consumer of the stream (no acks), for
/// `BENCH_ONLY=readers`.
fn run_bare_ordered(url: &str, stream: &str, n: usize) -> f64 {
    use async_nats::jetstream::consumer::pull;
    time_reader(url, stream, n, |_, s| async move {
        let c = s
            .create_consumer(pull::OrderedConfig::default())
            .await
            .unwrap();
        c.messages().await.unwrap()
    })
}

/// A bare async-nats ordered push consumer (flow control): the baseline of
/// the ack-free reading, which reads through one.
fn run_bare_push(url: &str, stream: &str, n: usize) -> f64 {
    use async_nats::jetstream::consumer::push;
    time_reader(url, stream, n, |client, s| async move {
        let config = push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        };
        s.create_consumer(config)
            .await
            .unwrap()
            .messages()
            .await
            .unwrap()
    })
}

/// An ephemeral pull consumer without acks, `batch` per pull, for
/// `BENCH_ONLY=readers`.
fn run_bare_pull_none(url: &str, stream: &str, n: usize, batch: usize) -> f64 {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    time_reader(url, stream, n, |_, s| async move {
        let config = pull::Config {
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        };
        let c = s.create_consumer(config).await.unwrap();
        c.stream()
            .max_messages_per_batch(batch)
            .messages()
            .await
            .unwrap()
    })
}

/// How the exporter reads the stream in a JetStream run.
#[derive(Clone, Copy)]
enum Reading {
    /// No state store: an acking durable consumer.
    Acking,
    /// A state store: without acks, from the checkpoint's position, split
    /// over this many partition replicas (in this process, each with its
    /// own source loop and fold).
    AckFree(u32),
    /// As `AckFree`, each replica reading only its partition's subjects (a
    /// stream filled by `fill_partitioned_stream` through the server's
    /// `partition()` mapping).
    ServerSide(u32),
}

/// The exporter in JetStream mode reading a stream that already holds the
/// corpus (filled untimed), until every event is received. Returns
/// (events/s, lost).
fn run_jetstream(url: &str, name: &str, corpus: &Arc<Corpus>, reading: Reading) -> (f64, u64) {
    let rt = runtime();
    let replicas = match reading {
        Reading::Acking => 1,
        Reading::AckFree(n) | Reading::ServerSide(n) => n,
    };
    let run = unix_ms();
    let (stop, stopped) = watch::channel(false);
    let mut exporters = Vec::new();
    let mut sources = Vec::new();
    for index in 0..replicas {
        let partition = session_exporter::partition::Partition {
            count: replicas,
            index,
        };
        let by_server = matches!(reading, Reading::ServerSide(_));
        let mut exporter = Exporter::new(Catalog::default_mapping(), None, 100_000)
            .with_partition(partition, by_server);
        let mut cfg = nats_config(url);
        cfg.partition = partition;
        if by_server {
            cfg.partition_subjects = vec![format!("sessions.{index}.*.*")];
        }
        cfg.jetstream = Some(source::JetStreamConfig {
            stream: name.to_string(),
            consumer: "bench".into(),
            filter_subjects: Vec::new(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: JS_MAX_ACK_PENDING,
            pull_batch: JS_PULL_BATCH,
        });
        if !matches!(reading, Reading::Acking) {
            exporter = exporter.serving_checkpoints();
            cfg.state = Some(source::state::StateConfig {
                bucket: "BENCHSTATE".into(),
                key: format!("bench-{run}-{index}"),
                interval: Duration::from_secs(5),
                replicas: 1,
                on_invalid: source::state::OnInvalid::Refuse,
            });
        }
        let e = Arc::new(exporter);
        exporters.push(e.clone());
        let handle = rt.handle().clone();
        let mut rx = stopped.clone();
        // As the binary runs it: the source loop in `block_on` on its own thread.
        sources.push(thread::spawn(move || {
            handle.block_on(async move {
                let client = source::connect(&cfg, e.clone()).await.unwrap();
                source::run(client, &cfg, e, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
            })
        }));
    }
    let cpu = cpu_secs("publisher");
    let start = Instant::now();
    let (secs, got) = wait_count(start, corpus.len() as u64, || {
        exporters
            .iter()
            .map(|e| e.stats.messages_received.get())
            .sum()
    });
    CPU_US.with(|c| c.set((cpu_secs("publisher") - cpu) * 1e6 / got.max(1) as f64));
    let _ = stop.send(true);
    sources.into_iter().for_each(|s| s.join().unwrap());
    rt.shutdown_timeout(Duration::from_secs(2));
    (got as f64 / secs, corpus.len() as u64 - got)
}

const JS_MAX_ACK_PENDING: i64 = 200_000;
const JS_PULL_BATCH: usize = 1024;

/// Medians of a JetStream run, each against a baseline of the same rep.
struct JetStream {
    /// Ack-free, with a state store: events/s, ÷ core NATS, ÷ a bare ordered push consumer.
    events_per_s: f64,
    ratio: f64,
    bare_ratio: f64,
    bare_events_per_s: f64,
    /// Three partition replicas reading the one stream together.
    partitioned_events_per_s: f64,
    partitioned_ratio: f64,
    /// Three partition replicas each reading only its subjects (server-side partitions).
    server_partitioned_events_per_s: f64,
    server_partitioned_ratio: f64,
    /// Without a state store: the acking durable consumer, ÷ core, and a bare acking consumer.
    acking_events_per_s: f64,
    acking_ratio: f64,
    bare_acking_events_per_s: f64,
    core_cpu_us: f64,
    cpu_us: f64,
    acking_cpu_us: f64,
    lost: u64,
}

fn bench_jetstream(url: &str, reps: usize) -> JetStream {
    let corpus = Arc::new(corpus(300_000, 1000, 4));
    eprintln!(
        "jetstream: {} events read from a stream (filled untimed) vs the same events live on core NATS, {reps} repetitions",
        corpus.len()
    );
    let mut v: [Vec<f64>; 12] = Default::default();
    let mut lost = 0;
    for rep in 0..reps {
        let (c, l) = run_exporter(url, &corpus, &[], None);
        let core_us = CPU_US.with(|c| c.get());
        // The stream is only there while it is read: on core runs it would
        // store what they publish. No reader here removes anything from it.
        fill_stream(url, "BENCH", &corpus);
        let bare = run_bare_push(url, "BENCH", corpus.len());
        let (free, fl) = run_jetstream(url, "BENCH", &corpus, Reading::AckFree(1));
        let free_us = CPU_US.with(|c| c.get());
        let (split, sl) = run_jetstream(url, "BENCH", &corpus, Reading::AckFree(3));
        let bare_acking = run_bare_jetstream(url, "BENCH", corpus.len());
        let (acking, al) = run_jetstream(url, "BENCH", &corpus, Reading::Acking);
        let acking_us = CPU_US.with(|c| c.get());
        delete_stream(url, "BENCH");
        fill_partitioned_stream(url, "PARTITIONED", &corpus);
        let (server, pl) = run_jetstream(url, "PARTITIONED", &corpus, Reading::ServerSide(3));
        delete_stream(url, "PARTITIONED");
        eprintln!(
            "  rep {rep}: core {c:.0}/s; ack-free {free:.0}/s, 3 partitions {split:.0}/s, 3 server-side partitions {server:.0}/s, bare ordered push consumer {bare:.0}/s; acking {acking:.0}/s, bare acking consumer {bare_acking:.0}/s; lost {l} / {fl} / {sl} / {pl} / {al}"
        );
        let row = [
            free,
            free / c,
            free / bare,
            bare,
            split,
            split / c,
            acking,
            acking / c,
            bare_acking,
            core_us,
            server,
            server / c,
        ];
        for (col, x) in v.iter_mut().zip(row) {
            col.push(x);
        }
        lost += l + fl + sl + al + pl;
        CPU.with_borrow_mut(|cpu| cpu.push((free_us, acking_us)));
    }
    let names = [
        "ack-free",
        "÷ core",
        "÷ bare ordered",
        "bare ordered",
        "3 partitions",
        "3 partitions ÷ core",
        "acking",
        "acking ÷ core",
        "bare acking",
    ];
    for (name, col) in names.iter().zip(&v) {
        eprintln!("  {name:<20} {}", spread(col));
    }
    let (free_us, acking_us): (Vec<f64>, Vec<f64>) = CPU.with_borrow(|c| c.iter().copied().unzip());
    eprintln!(
        "  exporter CPU µs per event, ack-free: {}",
        spread(&free_us)
    );
    eprintln!(
        "  exporter CPU µs per event, acking:   {}",
        spread(&acking_us)
    );
    JetStream {
        events_per_s: median(&v[0]),
        ratio: median(&v[1]),
        bare_ratio: median(&v[2]),
        bare_events_per_s: median(&v[3]),
        partitioned_events_per_s: median(&v[4]),
        partitioned_ratio: median(&v[5]),
        server_partitioned_events_per_s: median(&v[10]),
        server_partitioned_ratio: median(&v[11]),
        acking_events_per_s: median(&v[6]),
        acking_ratio: median(&v[7]),
        bare_acking_events_per_s: median(&v[8]),
        core_cpu_us: median(&v[9]),
        cpu_us: median(&free_us),
        acking_cpu_us: median(&acking_us),
        lost,
    }
}

thread_local! {
    /// (ack-free, acking) exporter CPU µs per event, one pair per rep.
    static CPU: std::cell::RefCell<Vec<(f64, f64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn delete_stream(url: &str, name: &str) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let _ = async_nats::jetstream::new(client).delete_stream(name).await;
    });
}

impl JetStream {
    fn print(&self) {
        println!("bench js_events_per_s {:.0}", self.events_per_s);
        println!("bench js_ratio {:.3}", self.ratio);
        println!("bench js_bare_ratio {:.3}", self.bare_ratio);
        println!("bench js_bare_events_per_s {:.0}", self.bare_events_per_s);
        println!(
            "bench js_partitioned_events_per_s {:.0}",
            self.partitioned_events_per_s
        );
        println!("bench js_partitioned_ratio {:.3}", self.partitioned_ratio);
        println!(
            "bench js_server_partitioned_events_per_s {:.0}",
            self.server_partitioned_events_per_s
        );
        println!(
            "bench js_server_partitioned_ratio {:.3}",
            self.server_partitioned_ratio
        );
        println!(
            "bench js_acking_events_per_s {:.0}",
            self.acking_events_per_s
        );
        println!("bench js_acking_ratio {:.3}", self.acking_ratio);
        println!(
            "bench js_bare_acking_events_per_s {:.0}",
            self.bare_acking_events_per_s
        );
        println!("bench core_cpu_us_per_event {:.2}", self.core_cpu_us);
        println!("bench js_cpu_us_per_event {:.2}", self.cpu_us);
        println!("bench js_acking_cpu_us_per_event {:.2}", self.acking_cpu_us);
        println!("bench js_lost {}", self.lost);
    }
}

// ---------------------------------------------------------------- partitions

/// At `namespaces` namespaces (every family populated), read from one
/// stream: one exporter holding all against three partition replicas, each
/// its own process. Series and RSS of each, once everything is served.
fn bench_partition_memory(url: &str, namespaces: usize) -> [f64; 4] {
    let events = populate_corpus(namespaces);
    fill_stream(url, "MEMORY", &events);
    let mapping = common::temp_dir("bench").join("mapping.yml");
    let yaml = session_exporter::config::DEFAULT_MAPPING.replace(
        "max_namespaces: 10000",
        &format!("max_namespaces: {}", namespaces * 2),
    );
    assert!(yaml.contains(&format!("max_namespaces: {}", namespaces * 2)));
    std::fs::write(&mapping, yaml).unwrap();
    let run = unix_ms();
    let start = |count: u32, index: u32| {
        let key = format!("memory-{run}-{count}-{index}");
        let (count, index) = (count.to_string(), index.to_string());
        let args = [
            "--config.file",
            mapping.to_str().unwrap(),
            "--nats.jetstream.stream",
            "MEMORY",
            "--state.bucket",
            "BENCHSTATE",
            "--state.key",
            &key,
            "--state.interval",
            "1s",
            "--partition.count",
            &count,
            "--partition.index",
            &index,
        ];
        common::Exporter::start(url, &args)
    };
    let single = start(1, 0);
    let replicas: Vec<common::Exporter> = (0..3).map(|i| start(3, i)).collect();
    let served = |e: &common::Exporter| {
        let m = e.metrics();
        let received = common::value(&m, "session_exporter_messages_received_total")?;
        let pending = common::value(&m, "session_exporter_state_pending_messages")?;
        let checkpoints = common::value(&m, "session_exporter_state_checkpoints_total")?;
        (pending == 0.0 && checkpoints >= 1.0).then_some((m, received))
    };
    let pages = common::wait_for(
        Duration::from_secs(300),
        "everything read and served",
        || {
            let all: Vec<(String, f64)> = std::iter::once(&single)
                .chain(&replicas)
                .map(served)
                .collect::<Option<_>>()?;
            let split: f64 = all[1..].iter().map(|p| p.1).sum();
            (all[0].1 == events.len() as f64 && split == events.len() as f64).then_some(all)
        },
    );
    let figure = |m: &str| {
        (
            common::value(m, "session_exporter_series").unwrap(),
            common::value(m, "process_resident_memory_bytes").unwrap() / 1048576.0,
        )
    };
    let (series, rss) = figure(&pages[0].0);
    let each: Vec<(f64, f64)> = pages[1..].iter().map(|p| figure(&p.0)).collect();
    let split_series = each.iter().map(|e| e.0).fold(0.0, f64::max);
    let split_rss = each.iter().map(|e| e.1).fold(0.0, f64::max);
    eprintln!(
        "partitions: {namespaces} namespaces, {} events: one exporter {series} series, {rss:.1} MiB; 3 partitions {:?} series, {:?} MiB",
        events.len(),
        each.iter().map(|e| e.0).collect::<Vec<_>>(),
        each.iter().map(|e| (e.1 * 10.0).round() / 10.0).collect::<Vec<_>>(),
    );
    delete_stream(url, "MEMORY");
    [series, split_series, rss, split_rss]
}

/// `BENCH_ONLY=slots`: 3 replicas holding `namespaces` namespaces, with
/// `slots` slots and without (the baseline, same invocation): the time of a
/// checkpoint; then a rolling 3 → 5 with slots while events arrive: how long
/// it takes, how long one slot is served by nobody, and what is read again.
fn bench_slots(url: &str, namespaces: usize, slots: u32) {
    let events = populate_corpus(namespaces);
    fill_stream(url, "SLOTS", &events);
    let mapping = common::temp_dir("bench").join("mapping.yml");
    let yaml = session_exporter::config::DEFAULT_MAPPING.replace(
        "max_namespaces: 10000",
        &format!("max_namespaces: {}", namespaces * 2),
    );
    std::fs::write(&mapping, yaml).unwrap();
    let run = unix_ms();
    let k = slots.to_string();
    let start = |count: u32, index: u32, with_slots: bool| {
        let key = format!("slots-{run}-{with_slots}-{index}");
        let (count, index) = (count.to_string(), index.to_string());
        let mut args = vec![
            "--config.file",
            mapping.to_str().unwrap(),
            "--nats.jetstream.stream",
            "SLOTS",
            "--state.bucket",
            if with_slots {
                "BENCHSLOTS"
            } else {
                "BENCHPLAIN"
            },
            "--state.key",
            &key,
            "--state.interval",
            "2s",
            "--partition.count",
            &count,
            "--partition.index",
            &index,
            "--nats.broadcast-subject",
            "",
        ];
        if with_slots {
            args.extend(["--partition.slots", &k]);
        }
        common::Exporter::start(url, &args)
    };
    let settled = |replicas: &[&common::Exporter], total: f64| {
        common::wait_for(Duration::from_secs(300), "read and checkpointed", || {
            let pages: Vec<String> = replicas.iter().map(|r| r.metrics()).collect();
            let read: f64 = pages
                .iter()
                .map(|m| common::sum(m, "session_exporter_messages_received_total"))
                .sum();
            let pending: f64 = pages
                .iter()
                .map(|m| common::sum(m, "session_exporter_state_pending_messages"))
                .sum();
            (read >= total && pending == 0.0).then_some(pages)
        })
    };
    // A checkpoint's time, the mean of each replica's after everything was read.
    let checkpoint_ms = |pages: &[String]| {
        let each: Vec<f64> = pages
            .iter()
            .map(|m| {
                let sum = common::sum(m, "session_exporter_state_checkpoint_duration_seconds_sum");
                let n = common::sum(
                    m,
                    "session_exporter_state_checkpoint_duration_seconds_count",
                );
                1000.0 * sum / n.max(1.0)
            })
            .collect();
        each.iter().sum::<f64>() / each.len() as f64
    };
    let total = events.len() as f64;
    let plain: Vec<common::Exporter> = (0..3).map(|i| start(3, i, false)).collect();
    let plain_ms = checkpoint_ms(&settled(&plain.iter().collect::<Vec<_>>(), total));
    drop(plain);
    let mut fleet: Vec<common::Exporter> = (0..3).map(|i| start(3, i, true)).collect();
    let slots_ms = checkpoint_ms(&settled(&fleet.iter().collect::<Vec<_>>(), total));
    // The rolling 3 -> 5, with events arriving all along.
    let more = Arc::new(corpus(200_000, namespaces, 9));
    let publishing = {
        let (url, more) = (url.to_string(), more.clone());
        // 20,000 events/s for 10 s, while the replicas roll.
        thread::spawn(move || {
            runtime().block_on(async {
                let client = async_nats::connect(url).await.unwrap();
                for chunk in more.chunks(1000) {
                    for (subject, body) in chunk {
                        let body = body.clone().into();
                        client.publish(subject.clone(), body).await.unwrap();
                    }
                    client.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
    };
    let t = Instant::now();
    fleet.extend((3..5).map(|i| start(5, i, true)));
    let mut gaps = Vec::new();
    for i in (0..3).rev() {
        let stopped = Instant::now();
        fleet[i].signal("TERM");
        fleet[i].wait_exit();
        fleet[i] = start(5, i as u32, true);
        // One handover: until every slot is held again.
        common::wait_for(Duration::from_secs(120), "every slot held", || {
            let held: f64 = fleet
                .iter()
                .map(|r| common::sum(&r.metrics(), "session_exporter_slots_held"))
                .sum();
            (held == f64::from(slots)).then_some(())
        });
        gaps.push(stopped.elapsed().as_secs_f64());
    }
    let rescale = t.elapsed().as_secs_f64();
    publishing.join().unwrap();
    let pages = settled(&fleet.iter().collect::<Vec<_>>(), 0.0);
    let reread: f64 = pages
        .iter()
        .map(|m| common::sum(m, "session_exporter_slot_reread_messages_total"))
        .sum();
    eprintln!(
        "slots: {namespaces} namespaces, {slots} slots: checkpoint {slots_ms:.1} ms with slots, {plain_ms:.1} ms without; rolling 3 -> 5 in {rescale:.1} s, each restart to every slot held again {gaps:.2?} s, {reread} messages read again of {} published meanwhile",
        more.len()
    );
    println!("bench slots_checkpoint_ms_{namespaces} {slots_ms:.1}");
    println!("bench plain_checkpoint_ms_{namespaces} {plain_ms:.1}");
    println!("bench slots_checkpoint_ratio {:.2}", slots_ms / plain_ms);
    println!("bench slots_rescale_3_to_5_s {rescale:.1}");
    println!(
        "bench slots_restart_to_all_held_s_max {:.2}",
        gaps.iter().cloned().fold(0.0, f64::max)
    );
    println!("bench slots_reread_messages {reread:.0}");
    delete_stream(url, "SLOTS");
}

fn print_partition_memory(f: [f64; 4]) {
    println!("bench series_30k {:.0}", f[0]);
    println!("bench partition_series_per_replica_30k {:.0}", f[1]);
    println!("bench partition_series_ratio {:.3}", f[1] / f[0]);
    println!("bench rss_mib_30k {:.1}", f[2]);
    println!("bench partition_rss_mib_per_replica_30k {:.1}", f[3]);
    println!("bench partition_rss_ratio {:.3}", f[3] / f[2]);
}

fn get_metrics(addr: &str) -> usize {
    get_metrics_as(addr, "*/*")
}

/// What Prometheus sends with native histograms on: protobuf first.
const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// What Prometheus 2.x sends: OpenMetrics first.
const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn get_metrics_as(addr: &str, accept: &str) -> usize {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: b\r\nAccept: {accept}\r\n\r\n"
    )
    .unwrap();
    // One buffer for every read, as a scraper pools them (Prometheus does):
    // growing a fresh 44 MB one page by page is the client's cost, not the
    // exporter's, and on these two cores it slowed the exporter's too.
    thread_local!(static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        s.read_to_end(buf).unwrap();
        buf.len()
    })
}

/// End-to-end repetitions per `BENCH_REPS`: the figure the host's noise
/// moves most (±10-20% between runs a minute apart), and a repetition takes
/// only seconds, so it gets more of them.
const E2E_REPS_PER_REP: usize = 4;

/// End to end against a bare subscriber; the same with the exporter as
/// partition 0 of 3 reading every subject (a third of the events folded, the
/// rest skipped after their namespace); as partition 0 of 1,000 (nearly every
/// event skipped: the source path without the fold, so the difference from
/// the exporter is what the fold costs in the whole system); and once more
/// on an exporter that has folded `WARM_UP_EVENTS` first (its histograms
/// grown: the steady state of a running exporter).
fn bench_e2e(url: &str, reps: usize) -> E2e {
    use session_exporter::partition::Partition;
    let corpus = Arc::new(corpus(300_000, 1000, 2));
    eprintln!(
        "e2e: {} events published at full speed into nats-server, {reps} repetitions",
        corpus.len()
    );
    let third = Some(Partition { count: 3, index: 0 });
    // One of a thousand replicas: it owns about one namespace of the
    // corpus's thousand and skips nearly every event after scanning to its
    // namespace, so it is the exporter's source path with (almost) no fold.
    let thousandth = Some(Partition {
        count: 1000,
        index: 0,
    });
    let warm_up = self::corpus(WARM_UP_EVENTS, 1000, 5);
    let (mut exp, mut base, mut part, mut skip, mut warm, mut lost) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        0,
    );
    for rep in 0..reps {
        let b = run_baseline(url, &corpus);
        let (e, l) = run_exporter(url, &corpus, &[], None);
        let (p, pl) = run_exporter_as(url, &corpus, &[], None, third);
        let (s, sl) = run_exporter_as(url, &corpus, &[], None, thousandth);
        let (w, wl) = run_exporter(url, &corpus, &warm_up, None);
        eprintln!(
            "  rep {rep}: bare subscriber {b:.0}/s, exporter {e:.0}/s, partition 0 of 3 {p:.0}/s, of 1000 {s:.0}/s, warm exporter {w:.0}/s, lost {l} / {pl} / {sl} / {wl}"
        );
        base.push(b);
        exp.push(e);
        part.push(p);
        skip.push(s);
        warm.push(w);
        lost += l + pl + sl + wl;
    }

    let per = |a: &[f64]| -> Vec<f64> { a.iter().zip(&base).map(|(a, b)| a / b).collect() };
    let (ratios, part_ratios, skip_ratios, warm_ratios) =
        (per(&exp), per(&part), per(&skip), per(&warm));
    eprintln!("  bare subscriber: {}", spread(&base));
    eprintln!("  exporter:        {}", spread(&exp));
    eprintln!("  ratio:           {}", spread(&ratios));
    eprintln!("  partition ratio: {}", spread(&part_ratios));
    eprintln!("  skip ratio:      {}", spread(&skip_ratios));
    eprintln!("  warm ratio:      {}", spread(&warm_ratios));
    // Time per event in units of the bare subscriber's is 1/ratio: what
    // folding costs in the whole system is the exporter's time per event
    // less the skipping replica's, taken within each repetition (the bare
    // subscriber's rate moves the most).
    let fold: Vec<f64> = ratios
        .iter()
        .zip(&skip_ratios)
        .map(|(r, s)| 1.0 / r - 1.0 / s)
        .collect();
    eprintln!(
        "  folding costs, in the bare subscriber's time per event: {}",
        spread(&fold)
    );
    E2e {
        events_per_s: median(&exp),
        ratio: median(&ratios),
        partition_ratio: median(&part_ratios),
        warm_ratio: median(&warm_ratios),
        fold_share: median(&fold),
        skip_ratio: median(&skip_ratios),
        lost,
    }
}

struct E2e {
    events_per_s: f64,
    ratio: f64,
    partition_ratio: f64,
    warm_ratio: f64,
    fold_share: f64,
    skip_ratio: f64,
    lost: u64,
}

impl E2e {
    fn print(&self) {
        println!("bench e2e_events_per_s {:.0}", self.events_per_s);
        println!("bench e2e_ratio {:.3}", self.ratio);
        println!("bench e2e_partition_ratio {:.3}", self.partition_ratio);
        println!("bench e2e_warm_ratio {:.3}", self.warm_ratio);
        println!("bench e2e_fold_share {:.3}", self.fold_share);
        println!("bench e2e_skip_ratio {:.3}", self.skip_ratio);
        println!("bench e2e_lost {}", self.lost);
    }
}

fn bench_scrape_ingest(url: &str, reps: usize) -> f64 {
    let prefill = populate_corpus(1000);
    let corpus = Arc::new(corpus(600_000, 1000, 3));
    eprintln!(
        "scrape/ingest: {} events at 1,000 namespaces, with and without a scrape every second",
        corpus.len()
    );
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let (a, _) = run_exporter(url, &corpus, &prefill, None);
        let (b, _) = run_exporter(url, &corpus, &prefill, Some(Duration::from_secs(1)));
        eprintln!("  rep {rep}: no scrapes {a:.0}/s, scraped every 1s {b:.0}/s");
        without.push(a);
        with.push(b);
    }
    let ratios: Vec<f64> = with.iter().zip(&without).map(|(w, o)| w / o).collect();
    eprintln!("  ratio: {}", spread(&ratios));
    median(&ratios)
}

// ---------------------------------------------------------------- scrape

fn bench_scrape(namespaces: usize) -> Scrape {
    let rt = runtime();
    let exporter = Arc::new(Exporter::new(Catalog::default_mapping(), None, 0));
    let events = populate_corpus(namespaces);
    for chunk in events.chunks(512) {
        exporter.ingest(chunk.iter().map(|c| c.1.as_slice()));
    }
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = watch::channel(false);
    let mut rx = stopped;
    rt.spawn(http::serve(
        listener,
        exporter.clone(),
        http::Options::default(),
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    // Text, OpenMetrics and protobuf in turn, so all see the same machine.
    let formats = [
        ("text", "*/*"),
        ("OpenMetrics", OPENMETRICS),
        ("protobuf", PROTOBUF),
    ];
    let mut times = vec![Vec::new(); formats.len()];
    for _ in 0..21 {
        for (f, (_, accept)) in formats.iter().enumerate() {
            let t = Instant::now();
            get_metrics_as(&addr, accept);
            times[f].push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    for (f, (name, accept)) in formats.iter().enumerate() {
        eprintln!(
            "scrape at {namespaces} namespaces: {name} {} bytes, ms {}",
            get_metrics_as(&addr, accept),
            spread(&times[f])
        );
    }
    let (protobuf_bytes, text_bytes) = (
        get_metrics_as(&addr, PROTOBUF),
        get_metrics_as(&addr, "*/*"),
    );
    // The same, with every namespace changed since the scrape before (every
    // histogram, gauge and window quantile new): nothing a scrape could reuse.
    let mut churned = Vec::new();
    for _ in 0..9 {
        for chunk in events.chunks(512) {
            exporter.ingest(chunk.iter().map(|c| c.1.as_slice()));
        }
        let t = Instant::now();
        get_metrics_as(&addr, PROTOBUF);
        churned.push(t.elapsed().as_secs_f64() * 1e3);
    }
    eprintln!(
        "scrape at {namespaces} namespaces: protobuf, every namespace changed since the last, ms {}",
        spread(&churned)
    );
    let (concurrent_peak_rss_ratio, concurrent_p50_ms) = concurrent_scrapes(&addr, 16);
    let unshared_peak_rss_ratio = unshared_renders(&exporter, 16);
    eprintln!(
        "scrape at {namespaces} namespaces: 16 concurrent text scrapes, peak RSS {concurrent_peak_rss_ratio:.3}× idle, p50 {concurrent_p50_ms:.1} ms; 16 unshared renders held at once (the baseline: each scrape its own page) {unshared_peak_rss_ratio:.3}× idle"
    );
    let _ = stop.send(true);
    render_parts(&exporter, namespaces);
    Scrape {
        text_ms: median(&times[0]),
        openmetrics_ms: median(&times[1]),
        protobuf_ms: median(&times[2]),
        protobuf_churned_ms: median(&churned),
        protobuf_bytes,
        text_bytes,
        text_series: page::render_text(&exporter)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .count(),
        native_series: native_series(&exporter),
        concurrent_peak_rss_ratio,
        concurrent_p50_ms,
        unshared_peak_rss_ratio,
    }
}

/// The baseline for [`concurrent_scrapes`]: `n` threads each render their
/// own text page and hold it until all have one, as scrapes without sharing
/// did. Peak RSS over RSS before.
fn unshared_renders(exporter: &Arc<Exporter>, n: usize) -> f64 {
    let idle = self_kib("VmRSS");
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (start, held) = (
        Arc::new(std::sync::Barrier::new(n)),
        Arc::new(std::sync::Barrier::new(n)),
    );
    let renders: Vec<_> = (0..n)
        .map(|_| {
            let (exporter, start, held) = (exporter.clone(), start.clone(), held.clone());
            thread::spawn(move || {
                start.wait();
                let page =
                    page::render(&exporter, session_exporter::exposition::Format::Text, false);
                held.wait();
                page.len()
            })
        })
        .collect();
    for r in renders {
        r.join().unwrap();
    }
    self_kib("VmHWM") as f64 / idle as f64
}

/// A figure of this process from /proc/self/status, in KiB.
fn self_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap()
}

/// `n` text scrapes at once, three times: this process's peak RSS (the
/// exporter runs in it; the clients read into 64 KiB and discard) over its
/// RSS just before, and the scrapes' median latency.
fn concurrent_scrapes(addr: &str, n: usize) -> (f64, f64) {
    let (mut ratios, mut latencies) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let idle = self_kib("VmRSS");
        // Linux: 5 resets the peak (VmHWM) to the current RSS.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(n));
        let scrapers: Vec<_> = (0..n)
            .map(|_| {
                let (addr, barrier) = (addr.to_string(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let mut s = TcpStream::connect(&addr).unwrap();
                    write!(s, "GET /metrics HTTP/1.0\r\nHost: b\r\n\r\n").unwrap();
                    let mut buf = vec![0; 64 * 1024];
                    while s.read(&mut buf).unwrap() > 0 {}
                    t.elapsed().as_secs_f64() * 1e3
                })
            })
            .collect();
        latencies.extend(scrapers.into_iter().map(|t| t.join().unwrap()));
        ratios.push(self_kib("VmHWM") as f64 / idle as f64);
    }
    (median(&ratios), median(&latencies))
}

/// Where a scrape's time goes, in process: the snapshot (under the fold's
/// lock) and each renderer.
fn render_parts(exporter: &Exporter, namespaces: usize) {
    use session_exporter::exposition::Format;
    let mut parts = [
        ("whole text", Vec::new()),
        ("whole OpenMetrics", Vec::new()),
        ("whole protobuf", Vec::new()),
    ];
    for _ in 0..7 {
        for (i, f) in [Format::Text, Format::OpenMetrics, Format::Protobuf]
            .into_iter()
            .enumerate()
        {
            let t = Instant::now();
            page::render(exporter, f, false);
            parts[i].1.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (snap, _) = exporter.snapshot();
    let t = Instant::now();
    for _ in 0..7 {
        exporter.snapshot();
    }
    eprintln!(
        "  at {namespaces}: snapshot {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3 / 7.0
    );
    let t = Instant::now();
    let mut out = Vec::new();
    session_exporter::exposition::protobuf::render(&snap, &mut out);
    eprintln!(
        "  at {namespaces}: protobuf render of the domain {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let t = Instant::now();
    let mut text = String::new();
    session_exporter::exposition::render(&snap, &mut text);
    eprintln!(
        "  at {namespaces}: text render of the domain {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for (name, v) in &parts {
        eprintln!("  at {namespaces}: {name} in process, ms {}", spread(v));
    }
}

struct Scrape {
    text_ms: f64,
    openmetrics_ms: f64,
    protobuf_ms: f64,
    protobuf_churned_ms: f64,
    text_bytes: usize,
    protobuf_bytes: usize,
    /// Series in one text scrape (protobuf's: one per histogram instead of
    /// its buckets, sum and count).
    text_series: usize,
    native_series: usize,
    /// Peak RSS under 16 concurrent text scrapes ÷ RSS before them.
    concurrent_peak_rss_ratio: f64,
    concurrent_p50_ms: f64,
    /// The same without sharing: 16 pages rendered and held at once.
    unshared_peak_rss_ratio: f64,
}

impl Scrape {
    fn print(&self, tag: &str) {
        println!("bench scrape_ms_{tag} {:.2}", self.text_ms);
        println!(
            "bench scrape_openmetrics_ms_{tag} {:.2}",
            self.openmetrics_ms
        );
        println!("bench scrape_protobuf_ms_{tag} {:.2}", self.protobuf_ms);
        println!(
            "bench scrape_protobuf_churned_ms_{tag} {:.2}",
            self.protobuf_churned_ms
        );
        println!("bench scrape_bytes_{tag} {}", self.text_bytes);
        println!("bench scrape_protobuf_bytes_{tag} {}", self.protobuf_bytes);
        println!("bench series_text_{tag} {}", self.text_series);
        println!("bench series_native_{tag} {}", self.native_series);
        println!(
            "bench scrape_concurrent_peak_rss_ratio_{tag} {:.3}",
            self.concurrent_peak_rss_ratio
        );
        println!(
            "bench scrape_concurrent_p50_ms_{tag} {:.1}",
            self.concurrent_p50_ms
        );
        println!(
            "bench scrape_unshared_peak_rss_ratio_{tag} {:.3}",
            self.unshared_peak_rss_ratio
        );
    }
}

/// Series Prometheus stores from a protobuf scrape with native histograms:
/// the text format's, with each histogram's bucket, sum and count series
/// replaced by one.
fn native_series(exporter: &Exporter) -> usize {
    let text = page::render_text(exporter);
    let catalog = Catalog::default_mapping();
    let histograms: Vec<&str> = catalog
        .metrics
        .iter()
        .filter(|m| m.kind == session_exporter::config::Kind::Histogram)
        .map(|m| m.name.as_str())
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(['{', ' ']).next().unwrap_or("");
            !histograms.iter().any(|h| {
                name.strip_prefix(h)
                    .is_some_and(|rest| ["_bucket", "_sum"].contains(&rest))
            })
        })
        .count()
}

// ---------------------------------------------------------------- checkpoint

/// Taking one checkpoint (encode under the lock, plus the snapshot it
/// serves) and compressing it, with every family populated per namespace.
/// Returns (ms, compressed bytes).
fn bench_checkpoint(namespaces: usize) -> (f64, usize) {
    use std::io::Write as _;
    let exporter = Exporter::new(Catalog::default_mapping(), None, 100_000);
    for chunk in populate_corpus(namespaces).chunks(512) {
        exporter.ingest(chunk.iter().map(|c| c.1.as_slice()));
    }
    let mut bytes = 0;
    let times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let raw = exporter.checkpoint(&Default::default()).image.encode();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&raw).unwrap();
            bytes = gz.finish().unwrap().len();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    eprintln!(
        "checkpoint at {namespaces} namespaces: {bytes} bytes compressed, ms {}",
        spread(&times)
    );
    (median(&times), bytes)
}

/// The fold lock across checkpoints, in process, in the state store's
/// shape: `namespaces` namespaces, one thread folding 512-event batches (at
/// `rate`, or without pause) and taking a checkpoint every 2 s as the source
/// loop does (image under the lock, snapshot and encoding after, compression
/// on another thread), and one scraping protobuf every 100 ms (the last
/// checkpoint's snapshot). Figures: the longest hold of the fold lock and of
/// a checkpoint's, how long the loop was away from folding for a checkpoint
/// (the event lag it adds), ingest batches (their wait for the lock
/// included), scrapes, and peak RSS.
fn bench_lock_hold(namespaces: usize, rate: Option<u64>) -> LockHold {
    use session_exporter::exposition::Format;
    // No de-duplication: every pass over the corpus folds anew. With a state
    // store, as in production: scrapes serve the last checkpoint's snapshot.
    let exporter =
        Arc::new(Exporter::new(Catalog::default_mapping(), None, 0).serving_checkpoints());
    let corpus = Arc::new(populate_corpus(namespaces));
    for chunk in corpus.chunks(512) {
        exporter.ingest(chunk.iter().map(|c| c.1.as_slice()));
    }
    exporter.take_longest_hold();
    let idle = self_kib("VmRSS");
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Encoded checkpoints go to a thread of their own to compress, as the
    // source hands them to the store's task.
    let (encoded, compressor) = {
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        let compressor = thread::spawn(move || {
            let mut took = Vec::new();
            for (t, bytes) in rx {
                session_exporter::exposition::gzip(&bytes).unwrap();
                took.push(t.elapsed().as_secs_f64() * 1e3);
            }
            took
        });
        (tx, compressor)
    };
    // The source's loop: batches, and between them a checkpoint every 2 s,
    // taken under the lock, its snapshot and encoding awaited without it.
    let ingest = {
        let (exporter, corpus, stop) = (exporter.clone(), corpus.clone(), stop.clone());
        thread::spawn(move || {
            let (mut batches, mut taken, mut paused) = (Vec::new(), Vec::new(), Vec::new());
            let began = Instant::now();
            let mut next = began + Duration::from_secs(2);
            let mut folded = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for chunk in corpus.chunks(512) {
                    if let Some(rate) = rate {
                        let due = began + Duration::from_secs_f64(folded as f64 / rate as f64);
                        thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    folded += chunk.len() as u64;
                    let t = Instant::now();
                    exporter.ingest(chunk.iter().map(|c| c.1.as_slice()));
                    batches.push(t.elapsed().as_secs_f64() * 1e3);
                    if t >= next && taken.len() < 5 {
                        next += Duration::from_secs(2);
                        let t = Instant::now();
                        let cp = exporter.checkpoint(&Default::default());
                        taken.push(t.elapsed().as_secs_f64() * 1e3);
                        let snapshot = cp.image.snapshot();
                        let bytes = cp.image.encode();
                        paused.push(t.elapsed().as_secs_f64() * 1e3);
                        encoded.send((t, bytes)).unwrap();
                        // (Served once stored; storing is not measured here.)
                        exporter.publish(snapshot, cp.ingested);
                    }
                }
            }
            (batches, taken, paused)
        })
    };
    let scrapes = {
        let (exporter, stop) = (exporter.clone(), stop.clone());
        thread::spawn(move || {
            let mut times = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                page::render(&exporter, Format::Protobuf, false);
                times.push(t.elapsed().as_secs_f64() * 1e3);
                thread::sleep(Duration::from_millis(100));
            }
            times
        })
    };
    thread::sleep(Duration::from_millis(10_500));
    let longest_hold_ms = exporter.take_longest_hold() * 1e3;
    let peak_rss_ratio = self_kib("VmHWM") as f64 / idle as f64;
    stop.store(true, Ordering::Relaxed);
    let (batches, taken, paused) = ingest.join().unwrap();
    let checkpoints = compressor.join().unwrap();
    let scrapes = scrapes.join().unwrap();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let hold = LockHold {
        longest_hold_ms,
        checkpoint_hold_ms: max(&taken),
        checkpoint_pause_ms: max(&paused),
        ingest_batch_p50_ms: median(&batches),
        ingest_batch_max_ms: max(&batches),
        scrape_p50_ms: median(&scrapes),
        scrape_max_ms: max(&scrapes),
        peak_rss_ratio,
    };
    eprintln!(
        "fold lock at {namespaces} namespaces, ingest {}, a checkpoint every 2 s ({}): longest hold {:.1} ms, by a checkpoint {:.2} ms; folding paused {:.1} ms for a checkpoint; ingest batch p50 {:.2} ms, max {:.1} ms; protobuf scrape p50 {:.1} ms, max {:.1} ms; peak RSS {:.3}× before",
        rate.map_or("without pause".to_string(), |r| format!("at {r} events/s")),
        spread(&checkpoints),
        hold.longest_hold_ms,
        hold.checkpoint_hold_ms,
        hold.checkpoint_pause_ms,
        hold.ingest_batch_p50_ms,
        hold.ingest_batch_max_ms,
        hold.scrape_p50_ms,
        hold.scrape_max_ms,
        hold.peak_rss_ratio
    );
    hold
}

/// How long a reload holds the fold lock at `namespaces` namespaces: the
/// same mapping again, and one with other bucket bounds (every histogram
/// re-counted from HDR). Parsing is outside the lock; the swap is not.
fn bench_reload_hold(namespaces: usize) {
    let dir = std::env::temp_dir().join(format!("bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mapping.yml");
    let default = session_exporter::config::DEFAULT_MAPPING;
    std::fs::write(&file, default).unwrap();
    let exporter = Exporter::new(Catalog::default_mapping(), Some(file.clone()), 0);
    for chunk in populate_corpus(namespaces).chunks(512) {
        exporter.ingest(chunk.iter().map(|c| c.1.as_slice()));
    }
    let hold = |text: &str| {
        std::fs::write(&file, text).unwrap();
        exporter.take_longest_hold();
        exporter.reload().unwrap();
        exporter.take_longest_hold() * 1e3
    };
    let same = hold(default);
    let rebucketed = hold(&default.replace(
        "[0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]",
        "[0.5, 1, 5, 30, 300]",
    ));
    eprintln!("reload at {namespaces} namespaces: lock held {same:.1} ms (same mapping), {rebucketed:.1} ms (new buckets)");
    println!("bench reload_lock_hold_ms_10k {same:.2}");
    println!("bench reload_rebucket_lock_hold_ms_10k {rebucketed:.2}");
    let _ = std::fs::remove_dir_all(&dir);
}

struct LockHold {
    longest_hold_ms: f64,
    /// The longest a checkpoint itself held the lock.
    checkpoint_hold_ms: f64,
    /// The longest the loop was away from folding for one.
    checkpoint_pause_ms: f64,
    ingest_batch_p50_ms: f64,
    ingest_batch_max_ms: f64,
    scrape_p50_ms: f64,
    scrape_max_ms: f64,
    /// Peak RSS over the checkpoints ÷ RSS before them.
    peak_rss_ratio: f64,
}

impl LockHold {
    /// The figures at full ingest speed, and the memory at a paced rate.
    fn print(&self, paced: &LockHold) {
        println!(
            "bench checkpoint_peak_rss_ratio_10k {:.3}",
            self.peak_rss_ratio
        );
        println!(
            "bench checkpoint_peak_rss_ratio_10k_100k_per_s {:.3}",
            paced.peak_rss_ratio
        );
        println!(
            "bench checkpoint_ingest_batch_max_ms_10k_100k_per_s {:.2}",
            paced.ingest_batch_max_ms
        );
        println!(
            "bench fold_lock_longest_hold_ms_10k {:.2}",
            self.longest_hold_ms
        );
        println!(
            "bench checkpoint_lock_hold_ms_10k {:.2}",
            self.checkpoint_hold_ms
        );
        println!(
            "bench checkpoint_pause_ms_10k {:.2}",
            self.checkpoint_pause_ms
        );
        println!(
            "bench checkpoint_ingest_batch_max_ms_10k {:.2}",
            self.ingest_batch_max_ms
        );
        println!(
            "bench checkpoint_ingest_batch_p50_ms_10k {:.3}",
            self.ingest_batch_p50_ms
        );
        println!(
            "bench checkpoint_scrape_p50_ms_10k {:.2}",
            self.scrape_p50_ms
        );
        println!(
            "bench checkpoint_scrape_max_ms_10k {:.2}",
            self.scrape_max_ms
        );
    }
}

// ---------------------------------------------------------------- memory

fn rss(exporter: &common::Exporter) -> f64 {
    common::value(&exporter.metrics(), "process_resident_memory_bytes").unwrap()
}

fn bench_memory(url: &str) -> f64 {
    let n = 10_000;
    let events = populate_corpus(n);
    let exporter = common::Exporter::start(url, &[]);
    exporter.wait_ready();
    let before = rss(&exporter);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(common::publish(url, &events));
    let m = exporter.wait_received(events.len() as u64);
    assert_eq!(
        common::value(&m, "session_exporter_namespaces"),
        Some(n as f64)
    );
    let after = rss(&exporter);
    eprintln!(
        "memory: RSS {:.1} MiB at 0 namespaces, {:.1} MiB at {n} (all families populated)",
        before / 1048576.0,
        after / 1048576.0
    );
    (after - before) / n as f64
}

fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let t = Instant::now();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "jetstream" {
        let nats = nats_with_partitions();
        bench_jetstream(&nats.url(), reps.min(3)).print();
        return;
    }
    if only == "readers" {
        let nats = common::Nats::start_jetstream();
        let url = nats.url();
        let corpus = Arc::new(corpus(300_000, 1000, 4));
        for rep in 0..reps.min(3) {
            let (c, _) = run_exporter(&url, &corpus, &[], None);
            fill_stream(&url, "BENCH", &corpus);
            let ordered = run_bare_ordered(&url, "BENCH", corpus.len());
            let push = run_bare_push(&url, "BENCH", corpus.len());
            let p500 = run_bare_pull_none(&url, "BENCH", corpus.len(), 500);
            let p4k = run_bare_pull_none(&url, "BENCH", corpus.len(), 4096);
            let p16k = run_bare_pull_none(&url, "BENCH", corpus.len(), 16384);
            delete_stream(&url, "BENCH");
            eprintln!(
                "  rep {rep}: core exporter {c:.0}/s; bare readers of the stream: ordered pull {ordered:.0}/s, ordered push {push:.0}/s, pull without acks 500 a pull {p500:.0}/s, 4096 {p4k:.0}/s, 16384 {p16k:.0}/s"
            );
        }
        return;
    }
    if only == "slots" {
        let nats = common::Nats::start_jetstream();
        let slots = std::env::var("BENCH_SLOTS")
            .ok()
            .and_then(|s| s.parse().ok());
        bench_slots(&nats.url(), 30_000, slots.unwrap_or(720));
        return;
    }
    if only == "partitions" {
        let nats = common::Nats::start_jetstream();
        print_partition_memory(bench_partition_memory(&nats.url(), 30_000));
        return;
    }
    if only == "scrape" {
        bench_scrape(10_000).print("10k");
        return;
    }
    if only == "lock" {
        let paced = bench_lock_hold(10_000, Some(100_000));
        bench_lock_hold(10_000, None).print(&paced);
        bench_reload_hold(10_000);
        return;
    }
    if only == "e2e" {
        let nats = nats_with_partitions();
        bench_e2e(&nats.url(), E2E_REPS_PER_REP * reps).print();
        return;
    }
    if only == "ingest" {
        profile_ingest();
        return;
    }
    if only == "js-read" {
        profile_js_read();
        return;
    }
    let (fold, fold_ratio, fold_warm_ratio) = bench_fold(reps);
    let (skip_ns, namespace_scan_ns) = bench_skip(reps);
    let print_fold = || {
        println!("bench fold_events_per_s {fold:.0}");
        println!("bench fold_ratio {fold_ratio:.3}");
        println!("bench fold_warm_ratio {fold_warm_ratio:.3}");
        println!("bench fold_ns_per_event {:.0}", 1e9 / fold);
        println!("bench skip_ns_per_event {skip_ns:.0}");
        println!("bench namespace_scan_ns_per_event {namespace_scan_ns:.0}");
    };
    if only == "fold" {
        print_fold();
        return;
    }
    let nats = nats_with_partitions();
    let url = nats.url();
    let e2e = bench_e2e(&url, E2E_REPS_PER_REP * reps);
    let js = bench_jetstream(&url, reps.min(3));
    let partitions = bench_partition_memory(&url, 30_000);
    let (checkpoint_ms, checkpoint_bytes) = bench_checkpoint(10_000);
    let lock_hold_paced = bench_lock_hold(10_000, Some(100_000));
    let lock_hold = bench_lock_hold(10_000, None);
    let scrape_1k = bench_scrape(1_000);
    let scrape_10k = bench_scrape(10_000);
    let scrape_ingest = bench_scrape_ingest(&url, reps.min(3));
    let bytes_per_ns = bench_memory(&url);
    eprintln!("done in {:.0}s", t.elapsed().as_secs_f64());
    print_fold();
    e2e.print();
    js.print();
    print_partition_memory(partitions);
    println!("bench checkpoint_ms_10k {checkpoint_ms:.1}");
    println!("bench checkpoint_bytes_10k {checkpoint_bytes}");
    lock_hold.print(&lock_hold_paced);
    bench_reload_hold(10_000);
    scrape_1k.print("1k");
    scrape_10k.print("10k");
    println!("bench scrape_ingest_ratio {scrape_ingest:.3}");
    println!("bench bytes_per_namespace {bytes_per_ns:.0}");
}
