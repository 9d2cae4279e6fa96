//! End to end through nats-server: the exporter against a bare subscriber, as a partition, and warm.

use super::*;

/// Publish the corpus at full speed from its own thread and runtime.
pub(crate) fn publish_thread(url: String, corpus: Arc<Corpus>) -> thread::JoinHandle<f64> {
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

/// A bare async-nats subscriber on the same subjects that only counts.
pub(crate) fn run_baseline(url: &str, corpus: &Arc<Corpus>) -> f64 {
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
pub(crate) fn run_exporter(
    url: &str,
    corpus: &Arc<Corpus>,
    prefill: &[(String, Vec<u8>)],
    scrape_every: Option<Duration>,
) -> (f64, u64) {
    run_exporter_as(url, corpus, prefill, scrape_every, None)
}

/// `run_exporter`, optionally as one partition replica that reads every
/// subject and skips the other partitions' events (counted as handled).
pub(crate) fn run_exporter_as(
    url: &str,
    corpus: &Arc<Corpus>,
    prefill: &[(String, Vec<u8>)],
    scrape_every: Option<Duration>,
    partition: Option<session_exporter::partition::Partition>,
) -> (f64, u64) {
    let rt = runtime();
    let mut exporter = Exporter::new(Catalog::default_mapping(), 0);
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
    pub(crate) static CPU_US: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// nats-server with the partition mapping of `deploy/nats/partitions.conf`.
pub(crate) fn nats_with_partitions() -> common::Nats {
    let conf = common::temp_dir("bench").join("partitions.conf");
    std::fs::write(&conf, include_str!("../../deploy/nats/partitions.conf")).unwrap();
    common::Nats::start_jetstream_with(
        std::path::Path::new("nats-server"),
        &["-c", conf.to_str().unwrap()],
    )
}

/// End-to-end repetitions per `BENCH_REPS`: the figure the host's noise
/// moves most (±10-20% between runs a minute apart), and a repetition takes
/// only seconds, so it gets more of them.
pub(crate) const E2E_REPS_PER_REP: usize = 4;

/// End to end against a bare subscriber; the same with the exporter as
/// partition 0 of 3 reading every subject (a third of the events folded, the
/// rest skipped after their namespace); as partition 0 of 1,000 (nearly every
/// event skipped: the source path without the fold, so the difference from
/// the exporter is what the fold costs in the whole system); and once more
/// on an exporter that has folded `WARM_UP_EVENTS` first (its histograms
/// grown: the steady state of a running exporter).
pub(crate) fn bench_e2e(url: &str, reps: usize) -> E2e {
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

pub(crate) struct E2e {
    events_per_s: f64,
    ratio: f64,
    partition_ratio: f64,
    warm_ratio: f64,
    fold_share: f64,
    skip_ratio: f64,
    lost: u64,
}

impl E2e {
    pub(crate) fn print(&self) {
        println!("bench e2e_events_per_s {:.0}", self.events_per_s);
        println!("bench e2e_ratio {:.3}", self.ratio);
        println!("bench e2e_partition_ratio {:.3}", self.partition_ratio);
        println!("bench e2e_warm_ratio {:.3}", self.warm_ratio);
        println!("bench e2e_fold_share {:.3}", self.fold_share);
        println!("bench e2e_skip_ratio {:.3}", self.skip_ratio);
        println!("bench e2e_lost {}", self.lost);
    }
}
