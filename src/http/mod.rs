//! The HTTP surface: `/metrics` (or `--web.telemetry-path`), a landing page,
//! `/-/healthy`, `/-/ready` and `/-/reload`. One task per connection, the
//! connections bounded ([`connections`]) and each with a header read
//! timeout; accept errors are logged at most once a second and survived.

mod auth;
mod config;
mod connections;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_ENCODING,
    CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, TRANSFER_ENCODING, VARY, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::exporter::Exporter;
use crate::exposition::page::{Pages, Served};
use crate::exposition::Format;
use crate::reload::Reload;
use crate::stats::{Closed, Refused, Scrape};

pub use auth::Verdict;
pub use config::WebConfig;
pub use connections::default_cap as default_max_connections;
use connections::{Conn, Connections, Watched};

type Body = Full<Bytes>;

/// Bounds on the connections of clients that are slow, hostile or many.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most (`--web.max-connections`).
    pub max_connections: usize,
    /// A request's headers must arrive within this (`--web.read-header-timeout`).
    pub read_header_timeout: Duration,
    /// A connection without a request for this long is closed.
    pub idle_timeout: Duration,
    /// Scrapes in flight at most (`--web.max-requests`); past it, 503.
    pub max_requests: usize,
}

impl Default for Limits {
    /// The flags' defaults.
    fn default() -> Limits {
        Limits {
            max_connections: default_max_connections(),
            read_header_timeout: Duration::from_secs(10),
            idle_timeout: IDLE_TIMEOUT,
            max_requests: 40,
        }
    }
}

/// Idle keep-alive connections close after this: longer than any scrape
/// interval in use (Prometheus reconnects at no cost if it is shorter).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What the HTTP surface serves and how it guards it.
#[derive(Clone)]
pub struct Options {
    /// `--web.telemetry-path`.
    pub telemetry_path: String,
    /// `--web.config.file`: TLS and basic auth.
    pub web: WebConfig,
    pub limits: Limits,
    /// `--web.enable-lifecycle`: `/-/reload` reloads the mapping through
    /// this (SIGHUP always reloads).
    pub lifecycle: Option<Reload>,
    /// `--web.openmetrics-created`: `_created` samples in OpenMetrics pages.
    pub openmetrics_created: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            telemetry_path: "/metrics".into(),
            web: WebConfig::default(),
            limits: Limits::default(),
            lifecycle: None,
            openmetrics_created: false,
        }
    }
}

/// What every connection needs.
struct Site {
    exporter: Arc<Exporter>,
    options: Options,
    pages: Pages,
    /// Scrapes in flight, for `--web.max-requests`.
    scrapes: AtomicUsize,
}

/// Serve until `shutdown` resolves. In-flight requests finish on their own tasks.
pub async fn serve(
    listener: TcpListener,
    exporter: Arc<Exporter>,
    options: Options,
    shutdown: impl Future<Output = ()>,
) {
    let limits = options.limits;
    let connections = Connections::new(
        limits.max_connections,
        limits.read_header_timeout,
        limits.idle_timeout,
    );
    let site = Arc::new(Site {
        exporter,
        pages: Pages::new(options.openmetrics_created),
        options,
        scrapes: AtomicUsize::new(0),
    });
    let stats = &site.exporter.stats;
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_errors.log(&e, Instant::now());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((conn, evicted)) = connections.admit(Instant::now()) else {
            // Every connection is in a request: this one cannot be served now.
            stats.http_closed(Closed::Refused);
            continue;
        };
        if let Some(why) = evicted {
            stats.http_closed(why);
        }
        stats.http_connections.inc();
        let site = site.clone();
        tokio::spawn(async move {
            let conn = Arc::new(conn);
            let stream = Watched {
                inner: stream,
                conn: conn.clone(),
            };
            let stats = &site.exporter.stats;
            tokio::select! {
                _ = accepted(stream, site.clone(), conn.clone()) => {}
                why = conn.closed() => {
                    // (Evictions were counted when they were made.)
                    if why != Closed::Evicted {
                        stats.http_closed(why);
                    }
                }
            }
            stats.http_connections.dec();
        });
    }
}

/// One accepted connection: its TLS handshake (bounded), then HTTP/1.1.
async fn accepted(stream: Watched<tokio::net::TcpStream>, site: Arc<Site>, conn: Arc<Conn>) {
    match &site.options.web.tls {
        None => connection(stream, site.clone(), conn).await,
        Some(tls) => {
            match tokio::time::timeout(Duration::from_secs(10), tls.accept(stream)).await {
                Ok(Ok(stream)) => connection(stream, site.clone(), conn).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn connection<S>(stream: S, site: Arc<Site>, conn: Arc<Conn>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let stats_site = site.clone();
    let service = service_fn(move |req| {
        let (site, conn) = (site.clone(), conn.clone());
        async move {
            let response = handle(req, site, &conn).await;
            // In a request until hyper has taken its body's last frame.
            Ok::<_, Infallible>(response.map(|body| Sent::new(body, conn)))
        }
    });
    if let Err(e) = http1::Builder::new()
        // A request's head past this is 431. hyper's default (about 400 KiB) let
        // a head that arrived whole in one read through (seen once in CI).
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        // hyper answered these itself (431, 400) before closing.
        let stats = &stats_site.exporter.stats;
        if e.is_parse_too_large() {
            stats.http_refused(Refused::HeadersTooLarge);
        } else if e.is_parse() {
            stats.http_refused(Refused::Malformed);
        }
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// A response body that ends its connection's request when hyper has taken
/// its last frame (and drops it). It is handed over in 64 KiB frames, which
/// hyper takes as it writes, so a connection writing a large page stays in
/// its request, not one to close to make room, until about its last frame.
struct Sent {
    rest: Bytes,
    conn: Arc<Conn>,
}

const FRAME: usize = 64 * 1024;

/// The largest request head read: scrapers send a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

impl Sent {
    fn new(body: Body, conn: Arc<Conn>) -> Sent {
        // A `Full` body is one frame, ready at once: take its bytes to hand
        // them over in parts.
        use futures_util::FutureExt;
        use http_body_util::BodyExt;
        let mut body = body;
        let frame = body.frame().now_or_never().flatten();
        let rest = frame
            .and_then(|f| f.ok()?.into_data().ok())
            .unwrap_or_default();
        Sent { rest, conn }
    }
}

impl hyper::body::Body for Sent {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let n = this.rest.len().min(FRAME);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.conn.end(Instant::now());
    }
}

/// `accept` failures (out of file descriptors, say) come in bursts: one
/// warning a second at most, saying how many were not logged.
#[derive(Default)]
struct AcceptErrors {
    last: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    fn log(&mut self, e: &std::io::Error, now: Instant) {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(error = %e, unlogged = self.unlogged, "accept failed");
        (self.last, self.unlogged) = (Some(now), 0);
    }
}

/// A request whose headers are in. `conn` enters the request once
/// credentials pass: requests that only wait for a bcrypt check are never
/// protected from being closed to make room, so they cannot starve scrapes.
async fn handle(req: Request<Incoming>, site: Arc<Site>, conn: &Conn) -> Response<Body> {
    conn.heard_headers();
    if let Some(refused) = refuse(&req, &site.options.telemetry_path) {
        site.exporter.stats.http_refused(refused);
        return refused_reply(refused);
    }
    if let Some(users) = &site.options.web.users {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let verdict = users.check(header).await;
        site.exporter.stats.http_auth(verdict);
        match verdict {
            Verdict::Allowed => {}
            Verdict::Denied => {
                let mut r = reply(StatusCode::UNAUTHORIZED, TEXT, "Unauthorized\n".into());
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"session-exporter\""),
                );
                return r;
            }
            Verdict::Busy => return busy("Too many requests wait for a password check\n"),
        }
    }
    conn.begin();
    let exporter = &site.exporter;
    let telemetry = site.options.telemetry_path.as_str();
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        p if p == telemetry && get => scrape(&req, &site).await,
        "/" if get => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            landing(telemetry),
        ),
        "/-/healthy" if get => reply(StatusCode::OK, TEXT, "Healthy\n".into()),
        "/-/ready" if get => {
            if exporter.is_ready() {
                reply(StatusCode::OK, TEXT, "Ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "Not ready: not subscribed to NATS\n".into(),
                )
            }
        }
        "/-/reload" => reload(&req, &site).await,
        _ => reply(StatusCode::NOT_FOUND, TEXT, "Not found\n".into()),
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// A request refused before anything else is looked at: a method a path
/// does not take, or a body where none belongs (a GET or HEAD with one, or
/// with both `Content-Length` and `Transfer-Encoding`, the request-smuggling
/// shape RFC 9112 says to refuse).
fn refuse(req: &Request<Incoming>, telemetry: &str) -> Option<Refused> {
    let method = req.method();
    let h = req.headers();
    if h.contains_key(TRANSFER_ENCODING) && h.contains_key(CONTENT_LENGTH) {
        return Some(Refused::Body);
    }
    let get = matches!(*method, Method::GET | Method::HEAD);
    let has_body = h.contains_key(TRANSFER_ENCODING)
        || h.get(CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    if get && has_body {
        return Some(Refused::Body);
    }
    let path = req.uri().path();
    let get_only = path == telemetry || matches!(path, "/" | "/-/healthy" | "/-/ready");
    (get_only && !get).then_some(Refused::Method)
}

fn refused_reply(refused: Refused) -> Response<Body> {
    let mut r = match refused {
        Refused::Method => {
            let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "Use GET\n".into());
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        _ => reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            "This request takes no body\n".into(),
        ),
    };
    // Whatever body was sent is not read: the connection cannot be reused.
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// `/metrics`: at most `--web.max-requests` at once (503 past it), each
/// served from a render of its kind shared with the scrapes in flight.
async fn scrape(req: &Request<Incoming>, site: &Arc<Site>) -> Response<Body> {
    let stats = &site.exporter.stats;
    let Some(_slot) = InFlight::enter(&site.scrapes, site.options.limits.max_requests) else {
        stats.scrape(Scrape::Rejected);
        return busy("Too many scrapes in flight (--web.max-requests)\n");
    };
    let format = Format::negotiate(req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()));
    let page = site
        .pages
        .get(&site.exporter, format, accepts_gzip(req))
        .await;
    let (page, served) = match page {
        Ok(p) => p,
        Err(_) => {
            tracing::error!("a render of /metrics panicked");
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                "render failed\n".into(),
            );
        }
    };
    stats.scrape(match served {
        Served::Rendered => Scrape::Rendered,
        Served::Shared => Scrape::Shared,
    });
    let mut r = Response::new(Full::new(page.body));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    if page.gzipped {
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// One scrape in flight, counted while it lives (a client that goes away
/// drops it with the request's future).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Option<InFlight<'a>> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(count))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `/-/reload`: behind `--web.enable-lifecycle` as in Prometheus, POST only,
/// and never from another site's page (a form posted cross-origin). The
/// answer names the file, line and column of a failure, never its content.
async fn reload(req: &Request<Incoming>, site: &Arc<Site>) -> Response<Body> {
    let Some(lifecycle) = &site.options.lifecycle else {
        return reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "Lifecycle API is not enabled (--web.enable-lifecycle); SIGHUP reloads\n".into(),
        );
    };
    if req.method() != Method::POST {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "Use POST\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    if cross_site(req) {
        return reply(
            StatusCode::FORBIDDEN,
            TEXT,
            "Cross-origin reload refused\n".into(),
        );
    }
    match lifecycle.run().await {
        Ok(()) => {
            tracing::info!("mapping reloaded");
            reply(StatusCode::OK, TEXT, "Reloaded\n".into())
        }
        Err(e) => {
            tracing::error!(error = %e, "mapping reload failed; keeping the old one");
            let body = format!("failed to reload config: {}\n", e.unquoted());
            reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, body)
        }
    }
}

/// A request a browser sent from another site's page: its `Origin` names
/// another host than the one it asks, or `Sec-Fetch-Site` says so. Clients
/// that are not browsers send neither.
fn cross_site(req: &Request<Incoming>) -> bool {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if header("sec-fetch-site").is_some_and(|s| s != "same-origin" && s != "none") {
        return true;
    }
    let Some(origin) = header("origin") else {
        return false;
    };
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    header("host").is_none_or(|host| !origin_host.eq_ignore_ascii_case(host))
}

/// Prometheus asks for gzip; the text shrinks ~20× (mostly repeated label sets).
fn accepts_gzip(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().is_some_and(|t| t.trim() == "gzip"))
}

/// 503 with `Retry-After: 1`: a bound was reached; the next try may pass.
fn busy(why: &'static str) -> Response<Body> {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, why.into());
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `text` for an HTML attribute or element.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn landing(telemetry: &str) -> String {
    let path = html_escape(telemetry);
    format!(
        "<!DOCTYPE html>\n<html><head><title>session-exporter</title></head><body>\n\
         <h1>session-exporter</h1>\n<p>Game-session metrics from NATS, version {}.</p>\n<ul>\n\
         <li><a href=\"{path}\">Metrics</a></li>\n<li><a href=\"/-/healthy\">Health</a></li>\n\
         <li><a href=\"/-/ready\">Readiness</a></li>\n</ul>\n</body></html>\n",
        env!("CARGO_PKG_VERSION")
    )
}
