//! The open connections, bounded well below the process's file limit so the
//! listener, NATS and the state store always have descriptors left. At the
//! bound the least recently active connection that is not in a request
//! (still sending its headers, or idle between keep-alive requests) is
//! closed to admit the new one, so no number of half-open connections keeps
//! a scrape out; when every one is in a request the new one is closed.
//!
//! Each connection also ends when a request's headers take longer than the
//! header timeout from their first byte, or after the idle timeout without
//! one. (hyper's own header timeout also runs while a keep-alive connection
//! waits for its next request, so a 10 s timeout would close Prometheus's
//! connections between 15 s scrapes: the first byte is watched here
//! instead, by [`Watched`].)

use crate::stats::Closed;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// One open connection, as the table keeps it.
struct Entry {
    /// When its last request ended, or it was accepted.
    active: Instant,
    /// When the first byte of a request not yet begun arrived.
    heard: Option<Instant>,
    /// In a request: never closed to make room.
    busy: bool,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Entry>,
}

pub struct Connections {
    cap: usize,
    header: Duration,
    idle: Duration,
    // A std Mutex: held for a lookup or a scan, never across an `.await`.
    table: Mutex<Table>,
}

impl Connections {
    pub fn new(cap: usize, header: Duration, idle: Duration) -> Arc<Connections> {
        Arc::new(Connections {
            cap: cap.max(1),
            header,
            idle,
            table: Mutex::default(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit a new connection at `now`. At the bound, the least recently
    /// active connection not in a request is told to close (and `Evicted`
    /// returned, to be counted); `None` when every one is in a request.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<(Conn, Option<Closed>)> {
        let mut t = self.table();
        let mut evicted = None;
        if t.open.len() >= self.cap {
            let oldest = t
                .open
                .iter()
                .filter(|(_, e)| !e.busy)
                .min_by_key(|(_, e)| e.active);
            let (&id, _) = oldest?;
            if let Some(e) = t.open.remove(&id) {
                e.close.notify_one();
                evicted = Some(Closed::Evicted);
            }
        }
        t.next += 1;
        let id = t.next;
        let close = Arc::new(Notify::new());
        let entry = Entry {
            active: now,
            heard: None,
            busy: false,
            close: close.clone(),
        };
        t.open.insert(id, entry);
        let conn = Conn {
            id,
            close,
            table: self.clone(),
        };
        Some((conn, evicted))
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.table().open.len()
    }
}

/// A connection's place in the table; leaving it (drop) frees the place.
pub struct Conn {
    id: u64,
    close: Arc<Notify>,
    table: Arc<Connections>,
}

impl Conn {
    fn with<R>(&self, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        self.table.table().open.get_mut(&self.id).map(f)
    }

    /// Bytes arrived at `now`: between requests, the start of the next one.
    pub fn heard(&self, now: Instant) {
        self.with(|e| {
            if !e.busy && e.heard.is_none() {
                e.heard = Some(now);
            }
        });
    }

    /// A request's headers are in: the header timeout stops.
    pub fn heard_headers(&self) {
        self.with(|e| e.heard = None);
    }

    /// A request began (its headers are in): not closed to make room until
    /// it ends.
    pub fn begin(&self) {
        self.with(|e| (e.busy, e.heard) = (true, None));
    }

    /// A request ended at `now`.
    pub fn end(&self, now: Instant) {
        self.with(|e| (e.busy, e.active) = (false, now));
    }

    /// Resolves when the connection should close: told to make room, its
    /// headers late, or idle for the idle timeout.
    pub async fn closed(&self) -> Closed {
        let (header, idle) = (self.table.header, self.table.idle);
        loop {
            let Some((busy, active, heard)) = self.with(|e| (e.busy, e.active, e.heard)) else {
                return Closed::Evicted;
            };
            let now = Instant::now();
            let wake = match (busy, heard) {
                (true, _) => now + idle,
                (false, Some(t)) if now >= t + header => return Closed::HeaderTimeout,
                (false, Some(t)) => t + header,
                (false, None) if now >= active + idle => return Closed::Idle,
                (false, None) => (active + idle).min(now + header),
            };
            tokio::select! {
                _ = self.close.notified() => return Closed::Evicted,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.table.table().open.remove(&self.id);
    }
}

/// A connection's stream, telling its [`Conn`] when bytes arrive.
pub struct Watched<S> {
    pub inner: S,
    pub conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.heard(Instant::now());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The default bound: half the soft limit on open files (Linux's
/// /proc/self/limits), at most 4,096; 512 where the limit cannot be read.
pub fn default_cap() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<usize>().ok());
    soft.map_or(512, |n| (n / 2).clamp(1, 4096))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn at_the_bound_the_least_recently_active_idle_one_makes_room() {
        let table = Connections::new(2, LONG, LONG);
        let t0 = Instant::now();
        let (a, _) = table.admit(t0).unwrap();
        let (b, _) = table.admit(t0 + Duration::from_millis(1)).unwrap();
        // a is in a request: b, the only one not in a request, goes.
        a.begin();
        let (c, evicted) = table.admit(t0 + Duration::from_millis(2)).unwrap();
        assert_eq!(evicted, Some(Closed::Evicted));
        assert_eq!(b.closed().await, Closed::Evicted);
        assert_eq!(table.open(), 2);
        // With every connection in a request, a new one is not admitted.
        c.begin();
        assert!(table.admit(t0 + Duration::from_millis(3)).is_none());
        // Ended requests make their connections evictable again, oldest first.
        a.end(t0 + Duration::from_millis(5));
        c.end(t0 + Duration::from_millis(4));
        let (_d, evicted) = table.admit(t0 + Duration::from_millis(6)).unwrap();
        assert_eq!(evicted, Some(Closed::Evicted));
        assert_eq!(c.closed().await, Closed::Evicted);
        drop(b);
        drop(c);
        assert_eq!(table.open(), 2);
    }

    #[tokio::test]
    async fn idle_closes_after_the_idle_timeout_and_late_headers_after_theirs() {
        let table = Connections::new(4, Duration::from_millis(40), Duration::from_millis(120));
        let started = Instant::now();
        let (a, _) = table.admit(started).unwrap();
        // Idle: the header timeout does not apply before a byte arrives.
        assert_eq!(a.closed().await, Closed::Idle);
        assert!(started.elapsed() >= Duration::from_millis(120));
        let (b, _) = table.admit(Instant::now()).unwrap();
        let heard = Instant::now();
        b.heard(heard);
        assert_eq!(b.closed().await, Closed::HeaderTimeout);
        let took = heard.elapsed();
        assert!(
            took >= Duration::from_millis(40) && took < Duration::from_millis(120),
            "{took:?}"
        );
    }
}
