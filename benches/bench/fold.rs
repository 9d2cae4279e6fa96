//! In-process decode and fold against serde_json parsing the same bytes, the skip path of a partition replica, and the ingest loops `scripts/profile` counts.

use super::*;

/// Events an exporter folds before a "warm" measurement: enough that its
/// histograms have grown to their values' range (HDR counts arrays grow with
/// the largest value seen; after 50,000 events over 1,000 namespaces, the
/// next 50,000 still grew one 9,521 times, each a realloc that glibc pays
/// for by consolidating its free lists).
pub(crate) const WARM_UP_EVENTS: usize = 1_000_000;

/// Decode + fold against serde_json parsing the same bytes: on a fresh
/// exporter (every namespace's series made during the run, as before) and on
/// one that already holds them all (the steady state a running exporter is
/// in: no allocations, no first touches of new memory). Returns medians of
/// (cold events/s, cold ratio, warm ratio).
pub(crate) fn bench_fold(reps: usize) -> (f64, f64, f64) {
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

        let exporter = Exporter::new(catalog(), dedup);
        let t = Instant::now();
        let folded = fold_all(&exporter, &corpus);
        fold.push(corpus.len() as f64 / t.elapsed().as_secs_f64());
        assert_eq!(folded, corpus.len());

        let exporter = Exporter::new(catalog(), dedup);
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
pub(crate) fn bench_skip(reps: usize) -> (f64, f64) {
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
        let exporter = Exporter::new(Catalog::default_mapping(), 0).with_partition(p, false);
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
pub(crate) fn profile_ingest() {
    let corpus = corpus(50_000, 1000, 1);
    let count = std::env::var("BENCH_PARTITIONS").map_or(1, |s| s.parse().unwrap());
    let mut exporter = Exporter::new(Catalog::default_mapping(), 0);
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
pub(crate) fn parse_all(corpus: &Corpus) -> usize {
    corpus
        .iter()
        .filter(|(_, b)| serde_json::from_slice::<IgnoredAny>(b).is_ok())
        .count()
}

#[inline(never)]
pub(crate) fn ingest_all_untimed(exporter: &Exporter, corpus: &Corpus) {
    for c in corpus.chunks(512) {
        exporter.ingest(c.iter().map(|e| e.1.as_slice()));
    }
}

#[inline(never)]
pub(crate) fn ingest_all(exporter: &Exporter, corpus: &Corpus) -> usize {
    corpus
        .chunks(512)
        .map(|c| exporter.ingest(c.iter().map(|e| e.1.as_slice())))
        .sum()
}
