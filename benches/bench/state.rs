//! The state store's costs: one checkpoint, and how long the fold's lock is held (ingest, scrapes, checkpoints, reloads).

use super::*;
use session_exporter::reload::Reload;

/// Taking one checkpoint (encode under the lock, plus the snapshot it
/// serves) and compressing it, with every family populated per namespace.
/// Returns (ms, compressed bytes).
pub(crate) fn bench_checkpoint(namespaces: usize) -> (f64, usize) {
    use std::io::Write as _;
    let exporter = Exporter::new(Catalog::default_mapping(), 100_000);
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
pub(crate) fn bench_lock_hold(namespaces: usize, rate: Option<u64>) -> LockHold {
    use session_exporter::exposition::Format;
    // No de-duplication: every pass over the corpus folds anew. With a state
    // store, as in production: scrapes serve the last checkpoint's snapshot.
    let exporter = Arc::new(Exporter::new(Catalog::default_mapping(), 0).serving_checkpoints());
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
pub(crate) fn bench_reload_hold(namespaces: usize) {
    let dir = std::env::temp_dir().join(format!("bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mapping.yml");
    let default = session_exporter::config::DEFAULT_MAPPING;
    std::fs::write(&file, default).unwrap();
    let exporter = Arc::new(Exporter::new(Catalog::default_mapping(), 0));
    let reload = Reload::new(Some(file.clone()), exporter.clone());
    for chunk in populate_corpus(namespaces).chunks(512) {
        exporter.ingest(chunk.iter().map(|c| c.1.as_slice()));
    }
    let hold = |text: &str| {
        std::fs::write(&file, text).unwrap();
        exporter.take_longest_hold();
        reload.now().unwrap();
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

pub(crate) struct LockHold {
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
    pub(crate) fn print(&self, paced: &LockHold) {
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
