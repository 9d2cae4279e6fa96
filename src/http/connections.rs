//! The open connections, bounded well below the process's file limit so the
//! listener, NATS and the state store always have descriptors left. At the
//! bound a new connection is not refused: the least recently active one that
//! is not in a request (still sending its headers, or idle between
//! keep-alive requests) is closed to make room. So no number of half-open
//! connections keeps a scrape out; each also ends at the header read timeout
//! (hyper's) or after `idle` without a request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One open connection, as the table keeps it.
struct Entry {
    /// When its last request ended, or it was accepted.
    active: Instant,
    /// In a request: never closed to make room.
    busy: bool,
    close: Arc<Notify>,
}

/// Why a connection was closed by us (the header read timeout is hyper's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The least recently active at the bound, for a new one.
    Evicted,
    /// No request within the idle timeout.
    Idle,
}

pub struct Connections {
    cap: usize,
    idle: Duration,
    // A std Mutex: held for a lookup or a scan, never across an `.await`.
    table: Mutex<(u64, HashMap<u64, Entry>)>,
}

impl Connections {
    pub fn new(cap: usize, idle: Duration) -> Arc<Connections> {
        Arc::new(Connections {
            cap: cap.max(1),
            idle,
            table: Mutex::new((0, HashMap::new())),
        })
    }

    /// Admit a new connection at `now`. At the bound, the least recently
    /// active connection not in a request is told to close (returned, to be
    /// counted); when every one is in a request, `None`: the new one waits.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Option<(Conn, Option<Closed>)> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = None;
        if t.1.len() >= self.cap {
            let oldest =
                t.1.iter()
                    .filter(|(_, e)| !e.busy)
                    .min_by_key(|(_, e)| e.active);
            let (&id, _) = oldest?;
            if let Some(e) = t.1.remove(&id) {
                e.close.notify_one();
                evicted = Some(Closed::Evicted);
            }
        }
        t.0 += 1;
        let id = t.0;
        let close = Arc::new(Notify::new());
        t.1.insert(
            id,
            Entry {
                active: now,
                busy: false,
                close: close.clone(),
            },
        );
        let conn = Conn {
            id,
            close,
            table: self.clone(),
        };
        Some((conn, evicted))
    }

    pub fn open(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).1.len()
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
        let mut t = self.table.table.lock().unwrap_or_else(|e| e.into_inner());
        t.1.get_mut(&self.id).map(f)
    }

    /// A request began: not closed to make room until it ends.
    pub fn begin(&self) {
        self.with(|e| e.busy = true);
    }

    /// A request ended at `now`.
    pub fn end(&self, now: Instant) {
        self.with(|e| (e.busy, e.active) = (false, now));
    }

    /// Resolves when the connection should close: told to make room, or
    /// idle (no request) for the table's idle timeout.
    pub async fn closed(&self) -> Closed {
        loop {
            let Some((busy, active)) = self.with(|e| (e.busy, e.active)) else {
                return Closed::Evicted;
            };
            let deadline = active + self.table.idle;
            if !busy && Instant::now() >= deadline {
                return Closed::Idle;
            }
            let wake = if busy {
                Instant::now() + self.table.idle
            } else {
                deadline
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
        let mut t = self.table.table.lock().unwrap_or_else(|e| e.into_inner());
        t.1.remove(&self.id);
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

    #[tokio::test]
    async fn at_the_bound_the_least_recently_active_idle_one_makes_room() {
        let table = Connections::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let (a, _) = table.admit(t0).unwrap();
        let (b, _) = table.admit(t0 + Duration::from_millis(1)).unwrap();
        // a is in a request: b, the older idle one after a's request, goes.
        a.begin();
        let (c, evicted) = table.admit(t0 + Duration::from_millis(2)).unwrap();
        assert_eq!(evicted, Some(Closed::Evicted));
        assert_eq!(b.closed().await, Closed::Evicted);
        assert_eq!(table.open(), 2);
        // With every connection in a request, a new one must wait.
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
    async fn an_idle_connection_closes_after_the_idle_timeout() {
        let table = Connections::new(4, Duration::from_millis(50));
        let started = Instant::now();
        let (a, _) = table.admit(started).unwrap();
        assert_eq!(a.closed().await, Closed::Idle);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
