//! When checkpoints are stored, and what happens once one is: `/metrics`
//! serves its snapshot from then on.
//!
//! Checkpoints are taken by the source loop between batches (so the fold and
//! the stream position in [`Checkpoints::resume`] agree) and stored by a task
//! of their own while folding goes on; at most one is in flight.
//!
//! Taking one holds the fold's lock for a pointer per namespace (an
//! [`crate::fold::Image`]). Its snapshot and encoding then run on a
//! blocking thread while the loop waits, lock released: the image shares
//! the namespaces with the fold, and a namespace folded into meanwhile
//! would be copied whole. Folding on instead cost 1.37x peak RSS at 100,000
//! events/s and 10,000 namespaces, and its copies held the lock longer than
//! the encode saved (BENCHMARKS.md, "The fold lock across checkpoints").
//! Compressing and storing need no image: folding goes on during them. A
//! reload waits for the encode to end (the image would make it copy every
//! namespace).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::slots::Slots;
use super::state::{SaveError, StateStore};
use super::SourceError;
use crate::exporter::Exporter;
use crate::fold::{Resume, Snapshot};

pub struct Checkpoints {
    exporter: Arc<Exporter>,
    store: Option<Arc<StateStore>>,
    /// Where the fold stands; the source updates it after every batch.
    pub resume: Resume,
    inflight: Option<JoinHandle<Stored>>,
    /// With slots: each held slot's state goes to its own key.
    pub slots: Option<Arc<Slots>>,
}

impl Checkpoints {
    pub fn new(exporter: Arc<Exporter>, store: Option<Arc<StateStore>>, resume: Resume) -> Self {
        Checkpoints {
            exporter,
            store,
            resume,
            inflight: None,
            slots: None,
        }
    }

    /// The timer: store a checkpoint if anything changed since the last.
    pub async fn tick(&mut self) {
        if self.store.is_none() || self.inflight.is_some() {
            return;
        }
        let stored = self.exporter.checkpointed();
        if self.exporter.ingested() != stored {
            self.start(false).await;
        } else {
            // Nothing new: serve a fresh snapshot of the same state, so gauges
            // still expire and windows still slide.
            let (snapshot, ingested) = self.exporter.snapshot();
            if ingested == stored {
                self.exporter.publish(snapshot, ingested);
            }
        }
    }

    /// Take a checkpoint and store it in a task of its own; with slots,
    /// `release` stores them released (the last one, on shutdown).
    async fn start(&mut self, release: bool) {
        let Some(store) = self.store.clone() else {
            return;
        };
        if self.inflight.is_some() {
            return;
        }
        if let Some(slots) = self.slots.clone() {
            return self.start_slots(store, slots, release).await;
        }
        let started = Instant::now();
        let (exporter, resume) = (self.exporter.clone(), self.resume.clone());
        let made = tokio::task::spawn_blocking(move || exporter.encode_checkpoint(&resume)).await;
        self.inflight = Some(tokio::spawn(async move {
            let (snapshot, result, ingested) = match made {
                Ok((snapshot, bytes, ingested)) => {
                    (Some(snapshot), store.save(bytes).await, ingested)
                }
                Err(e) => (
                    None,
                    Err(SaveError::Failed(format!(
                        "checkpoint encoding failed: {e}"
                    ))),
                    0,
                ),
            };
            Stored {
                result,
                snapshot,
                ingested,
                started,
                lost: Vec::new(),
            }
        }));
    }

    /// [`Checkpoints::start`] with slots: the held slots' keys first, then
    /// this replica's own.
    async fn start_slots(&mut self, store: Arc<StateStore>, slots: Arc<Slots>, release: bool) {
        let started = Instant::now();
        let (exporter, resume) = (self.exporter.clone(), self.resume.clone());
        let made =
            tokio::task::spawn_blocking(move || exporter.encode_slot_checkpoint(&resume)).await;
        self.inflight = Some(tokio::spawn(async move {
            let cp = match made {
                Ok(cp) => cp,
                Err(e) => {
                    return Stored {
                        result: Err(SaveError::Failed(format!(
                            "checkpoint encoding failed: {e}"
                        ))),
                        snapshot: None,
                        ingested: 0,
                        started,
                        lost: Vec::new(),
                    }
                }
            };
            let (lost, stored) = slots.store(cp.slots, release).await;
            let result = match stored {
                Ok(()) => store.save(cp.record).await,
                Err(e) => Err(SaveError::Failed(e)),
            };
            Stored {
                result,
                snapshot: Some(cp.snapshot),
                ingested: cp.ingested,
                started,
                lost,
            }
        }));
    }

    /// Resolves when the checkpoint in flight is stored or has failed; never
    /// while none is. Cancel-safe: hand the result to [`Checkpoints::settle`].
    pub async fn stored(&mut self) -> Stored {
        let Some(handle) = &mut self.inflight else {
            return std::future::pending().await;
        };
        let joined = handle.await;
        self.inflight = None;
        joined.unwrap_or_else(|e| Stored {
            result: Err(SaveError::Failed(format!("checkpoint task failed: {e}"))),
            snapshot: None,
            ingested: 0,
            started: Instant::now(),
            lost: Vec::new(),
        })
    }

    /// Wait for the checkpoint in flight, if any, and settle it.
    pub async fn settle_inflight(&mut self) -> Result<(), SourceError> {
        if self.inflight.is_some() {
            let s = self.stored().await;
            self.settle(s)?;
        }
        Ok(())
    }

    /// Serve what a stored checkpoint holds. An error only when another
    /// process writes this key: then the source must stop.
    pub fn settle(&mut self, stored: Stored) -> Result<(), SourceError> {
        let stats = &self.exporter.stats;
        stats
            .checkpoint_duration
            .observe(stored.started.elapsed().as_secs_f64());
        if !stored.lost.is_empty() {
            // Taken by another replica: let them go, and serve nothing of
            // this checkpoint (it holds them).
            tracing::warn!(slots = ?stored.lost, "slots taken by another replica: no longer folded or served here");
            self.exporter.drop_slots(&stored.lost);
            if let Some(slots) = &self.slots {
                slots.forget(&stored.lost);
            }
            stats.slot_moves(crate::stats::SlotMove::Lost, stored.lost.len());
            return match stored.result {
                Err(SaveError::Fenced(e)) => Err(SourceError::Fenced(e)),
                _ => Ok(()),
            };
        }
        match stored.result {
            Ok(bytes) => {
                stats.checkpoints.inc();
                stats.checkpoint_bytes.set(bytes as i64);
                stats
                    .checkpoint_last_success
                    .set(crate::clock::unix_now() as i64);
                if let Some(s) = stored.snapshot {
                    self.exporter.publish(s, stored.ingested);
                }
                Ok(())
            }
            Err(SaveError::Failed(e)) => {
                stats.checkpoint_failures.inc();
                tracing::warn!(error = %e, "checkpoint not stored; retrying with the next");
                Ok(())
            }
            Err(SaveError::Fenced(e)) => {
                stats.checkpoint_failures.inc();
                Err(SourceError::Fenced(e))
            }
        }
    }

    /// On shutdown: wait for the checkpoint in flight, then store a last one,
    /// all within `limit` (logged when it does not make it: what it would have
    /// held is read again from the stream, or lost on core NATS).
    pub async fn finish(&mut self, limit: Duration) -> Result<(), SourceError> {
        if self.store.is_none() {
            return Ok(());
        }
        let last = async {
            if self.inflight.is_some() {
                let s = self.stored().await;
                self.settle(s)?;
            }
            if let Some(slots) = self.slots.clone() {
                // Releases not written yet first (the fold let them go).
                slots.release_again().await;
                // Stop serving the slots before they are released: a new
                // owner may serve them as soon as it claims them.
                self.exporter.unpublish();
                let held = self.exporter.ownership().held().len();
                self.start(true).await;
                let s = self.stored().await;
                self.settle(s)?;
                tracing::info!(slots = held, of = slots.count(), "slots released");
                self.exporter
                    .stats
                    .slot_moves(crate::stats::SlotMove::Released, held);
            } else if self.exporter.ingested() != self.exporter.checkpointed() {
                self.start(false).await;
                let s = self.stored().await;
                self.settle(s)?;
            }
            Ok(())
        };
        match tokio::time::timeout(limit, last).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("last checkpoint not stored within {limit:?}");
                Ok(())
            }
        }
    }
}

pub struct Stored {
    result: Result<usize, SaveError>,
    snapshot: Option<Snapshot>,
    ingested: u64,
    started: Instant,
    /// Slots another replica took meanwhile.
    lost: Vec<u32>,
}
