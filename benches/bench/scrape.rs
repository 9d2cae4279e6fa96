//! Scrapes: each format at 1,000 and 10,000 namespaces, concurrent scrapes sharing a render, and ingest while scraped.

use super::*;

pub(crate) fn get_metrics(addr: &str) -> usize {
    get_metrics_as(addr, "*/*")
}

/// What Prometheus sends with native histograms on: protobuf first.
pub(crate) const PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

/// What Prometheus 2.x sends: OpenMetrics first.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

pub(crate) fn get_metrics_as(addr: &str, accept: &str) -> usize {
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

pub(crate) fn bench_scrape_ingest(url: &str, reps: usize) -> f64 {
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

pub(crate) fn bench_scrape(namespaces: usize) -> Scrape {
    let rt = runtime();
    let exporter = Arc::new(Exporter::new(Catalog::default_mapping(), 0));
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
pub(crate) fn unshared_renders(exporter: &Arc<Exporter>, n: usize) -> f64 {
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
pub(crate) fn self_kib(field: &str) -> u64 {
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
pub(crate) fn concurrent_scrapes(addr: &str, n: usize) -> (f64, f64) {
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
pub(crate) fn render_parts(exporter: &Exporter, namespaces: usize) {
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

pub(crate) struct Scrape {
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
    pub(crate) fn print(&self, tag: &str) {
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
pub(crate) fn native_series(exporter: &Exporter) -> usize {
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
