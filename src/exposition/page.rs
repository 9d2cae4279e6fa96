//! A scrape's page: the served snapshot and the self-metrics in the format
//! asked for ([`render`]), and [`Pages`], through which concurrent scrapes
//! of one kind share one render and one buffer.
//!
//! Without sharing, N scrapers arriving together render N pages and hold N
//! copies until each is written out: memory grew by about a page per
//! scraper (BENCHMARKS.md, "Concurrent scrapes"). With it, a scrape that
//! arrives while a render of its kind (format, gzip) is in flight waits for
//! that render and is served the same bytes, reference-counted; whatever N
//! is, one page is rendered and held per kind.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;

use super::{openmetrics, protobuf, Format};
use crate::exporter::Exporter;
use crate::stats::{SERIES, SERIES_HELP};

/// Render a page now. `created`: OpenMetrics pages carry `_created` samples.
pub fn render(exporter: &Exporter, format: Format, created: bool) -> Vec<u8> {
    let start = Instant::now();
    // Self-metrics first: a message they count as received is then already
    // in the snapshot (ingest counts it after folding).
    let families = exporter.self_metrics();
    let snap = exporter.served(start);
    let live = snap.as_ref().map_or(0, |s| s.namespaces.len());
    let series = snap.as_ref().map_or(0, |s| s.series());
    let out = match format {
        Format::Protobuf => {
            let mut out = Vec::with_capacity(4096 + live * 2048);
            if let Some(s) = &snap {
                protobuf::render(s, &mut out);
            }
            protobuf::render_registry(&families, &mut out);
            protobuf::gauge(&mut out, SERIES, SERIES_HELP, series as f64);
            out
        }
        Format::Text | Format::OpenMetrics => {
            let mut stats = String::new();
            let mut buf = Vec::new();
            if prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &families, &mut buf)
                .is_ok()
            {
                stats.push_str(&String::from_utf8_lossy(&buf));
            }
            exporter.stats.render_series(&mut stats, series);
            let mut out = String::with_capacity(stats.len() + 4096 + live * 4096);
            if format == Format::Text {
                if let Some(s) = &snap {
                    super::render(s, &mut out);
                }
                out.push_str(&stats);
            } else {
                if let Some(s) = &snap {
                    let frame = openmetrics::Frame {
                        snapshot: s,
                        at: None,
                        created,
                    };
                    openmetrics::render_families(&[frame], &mut out);
                }
                openmetrics::from_text(&stats, &mut out);
                out.push_str("# EOF\n");
            }
            out.into_bytes()
        }
    };
    exporter
        .stats
        .scrape_duration
        .observe(start.elapsed().as_secs_f64());
    out
}

/// The text page (tests, benchmarks, the simulator's self-check).
pub fn render_text(exporter: &Exporter) -> String {
    String::from_utf8(render(exporter, Format::Text, false)).unwrap_or_default()
}

/// A rendered page, ready to send.
#[derive(Clone)]
pub struct Page {
    pub body: Bytes,
    /// The body is gzip-compressed.
    pub gzipped: bool,
}

/// How a scrape got its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// It rendered the page.
    Rendered,
    /// It took the page of a render already in flight.
    Shared,
}

/// A kind of page: its format, and whether it is gzipped.
type Kind = (Format, bool);

/// The render of a kind in flight: its number, and where its page will be.
type Render = (u64, watch::Receiver<Option<Page>>);

/// Scrapes in flight, by kind, sharing one render each.
#[derive(Default)]
pub struct Pages {
    /// `_created` samples in OpenMetrics pages (`--web.openmetrics-created`).
    created: bool,
    inflight: Arc<Mutex<HashMap<Kind, Render>>>,
    renders: std::sync::atomic::AtomicU64,
}

/// A render failed (it panicked): the scrape is answered 500.
#[derive(Debug)]
pub struct RenderFailed;

impl Pages {
    pub fn new(created: bool) -> Pages {
        Pages {
            created,
            ..Pages::default()
        }
    }

    /// The page for `format` (gzipped if `gzip` and it shrinks): the one
    /// being rendered if a render of this kind is in flight, else a new one.
    /// A render runs on a blocking thread to its end, whoever still waits,
    /// and takes its kind out of flight when done: a scrape that comes after
    /// gets a new page, and scrapes that go away start no second render.
    pub async fn get(
        &self,
        exporter: &Arc<Exporter>,
        format: Format,
        gzip: bool,
    ) -> Result<(Page, Served), RenderFailed> {
        let kind = (format, gzip);
        let (mut page, served) = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&kind) {
                Some((_, page)) => (page.clone(), Served::Shared),
                None => {
                    let n = self.renders.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(kind, (n, rx.clone()));
                    let (exporter, created) = (exporter.clone(), self.created);
                    let inflight = self.inflight.clone();
                    tokio::task::spawn_blocking(move || {
                        let page = make(&exporter, format, gzip, created);
                        let mut inflight = lock(&inflight);
                        if inflight.get(&kind).is_some_and(|(m, _)| *m == n) {
                            inflight.remove(&kind);
                        }
                        let _ = tx.send(Some(page));
                    });
                    (rx, Served::Rendered)
                }
            }
        };
        // An error: the render panicked and dropped its sender.
        let page = page
            .wait_for(Option::is_some)
            .await
            .map_err(|_| RenderFailed)?;
        Ok((page.clone().ok_or(RenderFailed)?, served))
    }
}

/// Render a page and compress it if asked (and it shrinks).
fn make(exporter: &Exporter, format: Format, gzip: bool, created: bool) -> Page {
    let body = render(exporter, format, created);
    match gzip.then(|| super::gzip(&body)).flatten() {
        Some(gz) => Page {
            body: Bytes::from(gz),
            gzipped: true,
        },
        None => Page {
            body: Bytes::from(body),
            gzipped: false,
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Catalog;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_a_render() {
        let e = Arc::new(Exporter::new(Catalog::default_mapping(), 0));
        e.ingest([br#"{"name":"MetricAcquiringDsEvent","namespace":"g"}"#.as_slice()]);
        let pages = Arc::new(Pages::new(false));
        let scrapes: Vec<_> = (0..16)
            .map(|_| {
                let (pages, e) = (pages.clone(), e.clone());
                tokio::spawn(async move { pages.get(&e, Format::Text, false).await.unwrap() })
            })
            .collect();
        let mut rendered = 0;
        let mut bodies = Vec::new();
        for s in scrapes {
            let (page, served) = s.await.unwrap();
            rendered += usize::from(served == Served::Rendered);
            bodies.push(page.body);
        }
        // One buffer per render: a scrape that shared got the very bytes.
        let buffers: std::collections::HashSet<_> = bodies.iter().map(|b| b.as_ptr()).collect();
        assert!(rendered >= 1);
        assert_eq!(buffers.len(), rendered);
        assert!(bodies.iter().all(|b| b.starts_with(b"# HELP")));
        // Nothing stays in flight.
        assert!(lock(&pages.inflight).is_empty());
    }
}
