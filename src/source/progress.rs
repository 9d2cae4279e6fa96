//! What happens after a batch is folded: acknowledge it at once, or, with a
//! state store, hold the acks until a checkpoint that includes the batch is
//! stored, then publish that checkpoint's snapshot to `/metrics` and ack.
//!
//! Checkpoints are taken by the source loop between batches (so the fold and
//! the list of unacked messages agree) and stored by a task of their own
//! while folding goes on; at most one is in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, Subject};
use bytes::Bytes;
use tokio::task::JoinHandle;

use super::state::StateStore;
use crate::exporter::Exporter;
use crate::fold::{Resume, Snapshot};

pub struct Progress {
    client: Client,
    exporter: Arc<Exporter>,
    store: Option<Arc<StateStore>>,
    /// Reply subjects of folded messages not yet covered by a stored checkpoint.
    unacked: Vec<Subject>,
    /// A checkpoint past this many unacked messages, not only on the timer:
    /// the consumer's `max_ack_pending` would otherwise stall delivery.
    ack_threshold: usize,
    pub broadcast_seq: u64,
    inflight: Option<JoinHandle<Stored>>,
}

impl Progress {
    pub fn new(
        client: Client,
        exporter: Arc<Exporter>,
        store: Option<Arc<StateStore>>,
        ack_threshold: usize,
    ) -> Progress {
        Progress {
            client,
            exporter,
            store,
            unacked: Vec::new(),
            ack_threshold: ack_threshold.max(1),
            broadcast_seq: 0,
            inflight: None,
        }
    }

    /// A batch was folded; `replies` are its JetStream reply subjects.
    pub async fn folded(&mut self, replies: impl Iterator<Item = Subject>) {
        if self.store.is_none() {
            let mut n = 0;
            for r in replies {
                self.ack(r).await;
                n += 1;
            }
            self.exporter.stats.js_acks.inc_by(n);
            return;
        }
        self.unacked.extend(replies);
        self.exporter
            .stats
            .js_unacked
            .set(self.unacked.len() as i64);
        if self.unacked.len() >= self.ack_threshold {
            self.start();
        }
    }

    /// The timer: store a checkpoint if anything changed since the last.
    pub fn tick(&mut self) {
        if self.store.is_none() || self.inflight.is_some() {
            return;
        }
        let stored = self.exporter.stored_changes();
        if self.exporter.changes() != stored || !self.unacked.is_empty() {
            self.start();
        } else {
            // Nothing new: serve a fresh snapshot of the same state, so gauges
            // still expire and windows still slide.
            let (snapshot, changes) = self.exporter.snapshot();
            if changes == stored {
                self.exporter.publish(snapshot, changes);
            }
        }
    }

    fn start(&mut self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        if self.inflight.is_some() {
            return;
        }
        let acks = std::mem::take(&mut self.unacked);
        let resume = Resume {
            acks: acks.iter().map(|s| s.to_string()).collect(),
            broadcast_seq: self.broadcast_seq,
        };
        let started = Instant::now();
        let cp = self.exporter.checkpoint(&resume);
        self.inflight = Some(tokio::spawn(async move {
            let result = store.save(cp.bytes).await.map_err(|e| e.to_string());
            Stored {
                result,
                acks,
                snapshot: Some(cp.snapshot),
                changes: cp.changes,
                started,
            }
        }));
    }

    /// Resolves when the checkpoint in flight is stored or has failed; never
    /// while none is. Cancel-safe: hand the result to [`Progress::settle`].
    pub async fn stored(&mut self) -> Stored {
        let Some(handle) = &mut self.inflight else {
            return std::future::pending().await;
        };
        let joined = handle.await;
        self.inflight = None;
        joined.unwrap_or_else(|e| Stored {
            // The acks went with the task: redelivery and the event-id window
            // take care of those messages.
            result: Err(format!("checkpoint task failed: {e}")),
            acks: Vec::new(),
            snapshot: None,
            changes: 0,
            started: Instant::now(),
        })
    }

    /// Serve and acknowledge what a stored checkpoint holds; on failure keep
    /// its acks for the next one.
    pub async fn settle(&mut self, stored: Stored) {
        let exporter = self.exporter.clone();
        let stats = &exporter.stats;
        stats
            .checkpoint_duration
            .observe(stored.started.elapsed().as_secs_f64());
        match stored.result {
            Ok(bytes) => {
                stats.checkpoints.inc();
                stats.checkpoint_bytes.set(bytes as i64);
                stats.checkpoint_last_success.set(unix_secs());
                if let Some(s) = stored.snapshot {
                    self.exporter.publish(s, stored.changes);
                }
                super::state::failpoint("checkpoint-before-acks");
                let n = stored.acks.len() as u64;
                for r in stored.acks {
                    self.ack(r).await;
                }
                stats.js_acks.inc_by(n);
                // Enough waited meanwhile: the server may have stopped
                // delivering (max_ack_pending), so no batch would ask.
                if self.unacked.len() >= self.ack_threshold {
                    self.start();
                }
            }
            Err(e) => {
                stats.checkpoint_failures.inc();
                tracing::warn!(error = %e, unacked = stored.acks.len() + self.unacked.len(), "checkpoint not stored; retrying with the next");
                let mut acks = stored.acks;
                acks.append(&mut self.unacked);
                self.unacked = acks;
            }
        }
        stats.js_unacked.set(self.unacked.len() as i64);
    }

    /// On shutdown: wait for the checkpoint in flight, then store a last one
    /// (bounded by `limit`), so a clean stop loses nothing and leaves no
    /// message unacknowledged.
    pub async fn finish(&mut self, limit: Duration) {
        if self.store.is_none() {
            return;
        }
        let last = async {
            if self.inflight.is_some() {
                let s = self.stored().await;
                self.settle(s).await;
            }
            self.start();
            if self.inflight.is_some() {
                let s = self.stored().await;
                self.settle(s).await;
            }
        };
        if tokio::time::timeout(limit, last).await.is_err() {
            tracing::warn!("last checkpoint not stored within {limit:?}");
        }
    }

    async fn ack(&self, reply: Subject) {
        if let Err(e) = self.client.publish(reply, Bytes::new()).await {
            tracing::debug!(error = %e, "JetStream ack not sent");
        }
    }
}

pub struct Stored {
    result: Result<usize, String>,
    acks: Vec<Subject>,
    snapshot: Option<Snapshot>,
    changes: u64,
    started: Instant,
}

fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
