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
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::OnceCell;

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
/// The render of a kind in flight, which its scrapes wait for.
type Render = Arc<OnceCell<Page>>;

/// Scrapes in flight, by kind, sharing one render each.
#[derive(Default)]
pub struct Pages {
    /// `_created` samples in OpenMetrics pages (`--web.openmetrics-created`).
    created: bool,
    inflight: Mutex<HashMap<Kind, Render>>,
}

impl Pages {
    pub fn new(created: bool) -> Pages {
        Pages {
            created,
            inflight: Mutex::default(),
        }
    }

    /// The page for `format` (gzipped if `gzip` and it shrinks): the one
    /// being rendered if a render of this kind is in flight, else a new one.
    /// Rendering and compressing run on a blocking thread.
    pub async fn get(
        &self,
        exporter: &Arc<Exporter>,
        format: Format,
        gzip: bool,
    ) -> Result<(Page, Served), tokio::task::JoinError> {
        let key = (format, gzip);
        let cell = self
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let mut served = Served::Shared;
        let page = cell
            .get_or_try_init(|| {
                served = Served::Rendered;
                let (exporter, created) = (exporter.clone(), self.created);
                tokio::task::spawn_blocking(move || {
                    let body = render(&exporter, format, created);
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
                })
            })
            .await
            .cloned();
        // The render is over: the next scrape of this kind renders anew.
        let mut inflight = self.lock();
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        Ok((page?, served))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Kind, Render>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Catalog;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_scrapes_share_a_render() {
        let e = Arc::new(Exporter::new(Catalog::default_mapping(), None, 0));
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
        assert!(pages.lock().is_empty());
    }
}
