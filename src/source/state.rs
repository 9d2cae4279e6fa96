//! The state store: fold checkpoints in a NATS KV bucket on the same NATS,
//! one key per replica (`--state.key`).
//!
//! A checkpoint is gzip-compressed and split into chunks the server accepts
//! (its `max_payload`). Chunks go to one of two slots, `<key>.a.<i>` or
//! `<key>.b.<i>`, alternating; the manifest at `<key>` is written last and
//! names the slot. A crash mid-checkpoint leaves the previous manifest and its
//! slot intact, so the store always holds one whole checkpoint. gzip's CRC-32
//! and length check the bytes on the way back.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::SourceError;

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub bucket: String,
    pub key: String,
    pub interval: Duration,
    pub replicas: usize,
    pub on_invalid: OnInvalid,
}

/// What to do with a checkpoint that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnInvalid {
    /// Exit with an error naming the problem (nothing is overwritten).
    Refuse,
    /// Log it, count it, start empty; the next checkpoint replaces it.
    StartEmpty,
}

/// The manifest at `<key>`: which slot holds the current checkpoint.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u64,
    generation: u64,
    slot: String,
    chunks: usize,
    bytes: usize,
}

const MANIFEST_FORMAT: u64 = 1;

pub struct StateStore {
    kv: kv::Store,
    key: String,
    chunk: usize,
    /// (generation, slot) of the stored checkpoint; one writer at a time.
    current: Mutex<(u64, u8)>,
}

/// A KV bucket's stream, as the KV clients make it, keeping one value per key.
fn kv_stream(bucket: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("session-exporter checkpoints".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_message_size: -1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// A KV key: NATS subject tokens of `[-/_=.a-zA-Z0-9]`, no empty token.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
}

impl StateStore {
    /// Open the bucket, creating it if missing.
    pub async fn open(
        client: &async_nats::Client,
        cfg: &StateConfig,
    ) -> Result<StateStore, String> {
        let js = jetstream::new(client.clone());
        let kv = match js.get_key_value(&cfg.bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                // The stream a KV bucket is, made directly: async-nats's
                // `create_key_value` first asks for account info in a shape
                // nats-server 2.9 does not answer with.
                js.create_stream(kv_stream(&cfg.bucket, cfg.replicas))
                    .await
                    .map_err(|e| format!("state bucket {}: {e}", cfg.bucket))?;
                js.get_key_value(&cfg.bucket)
                    .await
                    .map_err(|e| format!("state bucket {}: {e}", cfg.bucket))?
            }
        };
        // Headers and the subject ride along with each chunk.
        let max = client.server_info().max_payload.max(64 * 1024);
        Ok(StateStore {
            kv,
            key: cfg.key.clone(),
            chunk: (max - 8 * 1024).min(1 << 20),
            current: Mutex::new((0, 1)),
        })
    }

    fn chunk_key(&self, slot: u8, i: usize) -> String {
        format!("{}.{}.{i}", self.key, if slot == 0 { 'a' } else { 'b' })
    }

    /// The stored checkpoint, uncompressed; `None` when there is none yet.
    /// `Err(Invalid)` when what is stored is not a readable checkpoint.
    pub async fn load(&self) -> Result<Option<Vec<u8>>, LoadError> {
        let unreachable = |e: &dyn std::fmt::Display| LoadError::Unreachable(e.to_string());
        let Some(raw) = self.kv.get(&self.key).await.map_err(|e| unreachable(&e))? else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_slice(&raw)
            .map_err(|e| LoadError::Invalid(format!("manifest at key {}: {e}", self.key)))?;
        let slot = match m.slot.as_str() {
            "a" => 0,
            "b" => 1,
            s => return Err(LoadError::Invalid(format!("manifest names slot {s:?}"))),
        };
        if m.format != MANIFEST_FORMAT {
            return Err(LoadError::Invalid(format!(
                "manifest format {} is not one this build reads ({MANIFEST_FORMAT})",
                m.format
            )));
        }
        let mut compressed = Vec::with_capacity(m.bytes.min(1 << 30));
        for i in 0..m.chunks {
            let key = self.chunk_key(slot, i);
            match self.kv.get(&key).await.map_err(|e| unreachable(&e))? {
                Some(b) => compressed.extend_from_slice(&b),
                None => return Err(LoadError::Invalid(format!("chunk {key} is missing"))),
            }
        }
        if compressed.len() != m.bytes {
            return Err(LoadError::Invalid(format!(
                "chunks hold {} bytes, the manifest says {}",
                compressed.len(),
                m.bytes
            )));
        }
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut raw)
            .map_err(|e| LoadError::Invalid(format!("checkpoint does not decompress: {e}")))?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = (m.generation, slot);
        Ok(Some(raw))
    }

    /// Compress and store `raw`; returns the stored (compressed) size. Only
    /// once this returns `Ok` does the store hold it.
    pub async fn save(&self, raw: Vec<u8>) -> Result<usize, SourceError> {
        let compressed = tokio::task::spawn_blocking(move || {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::fast(),
            );
            gz.write_all(&raw).and_then(|_| gz.finish())
        })
        .await
        .map_err(|e| SourceError(format!("checkpoint compression: {e}")))?
        .map_err(|e| SourceError(format!("checkpoint compression: {e}")))?;
        let (generation, slot) = *self.current.lock().unwrap_or_else(|e| e.into_inner());
        let slot = 1 - slot;
        let chunks: Vec<&[u8]> = compressed.chunks(self.chunk).collect();
        for (i, c) in chunks.iter().enumerate() {
            self.kv
                .put(self.chunk_key(slot, i), Bytes::copy_from_slice(c))
                .await
                .map_err(|e| SourceError(format!("checkpoint chunk {i}: {e}")))?;
        }
        failpoint("checkpoint-before-manifest");
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            generation: generation + 1,
            slot: if slot == 0 { "a" } else { "b" }.into(),
            chunks: chunks.len(),
            bytes: compressed.len(),
        };
        let body = serde_json::to_vec(&manifest).expect("a manifest serializes");
        self.kv
            .put(&self.key, body.into())
            .await
            .map_err(|e| SourceError(format!("checkpoint manifest: {e}")))?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = (generation + 1, slot);
        Ok(compressed.len())
    }
}

/// Crash points for the crash tests: with `SESSION_EXPORTER_FAILPOINT=NAME:N`
/// the process aborts (as if SIGKILLed) the Nth time it passes `NAME`.
pub(crate) fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static POINT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static PASSED: AtomicU64 = AtomicU64::new(0);
    let point = POINT.get_or_init(|| {
        let v = std::env::var("SESSION_EXPORTER_FAILPOINT").ok()?;
        let (n, count) = v.split_once(':').unwrap_or((&v, "1"));
        Some((n.to_string(), count.parse().unwrap_or(1)))
    });
    if let Some((n, count)) = point {
        if n == name && PASSED.fetch_add(1, Ordering::Relaxed) + 1 == *count {
            eprintln!("failpoint {name}:{count} reached; aborting");
            std::process::abort();
        }
    }
}

#[derive(Debug)]
pub enum LoadError {
    /// NATS or the bucket did not answer: try again.
    Unreachable(String),
    /// What is stored is not a checkpoint this build can read.
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_nats_tokens() {
        for ok in ["exporter-0", "a.b", "pod_1=x/y"] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in ["", "a b", "a..b", ".a", "a.", "a*", "a>", "ü"] {
            assert!(!valid_key(bad), "{bad}");
        }
    }

    #[test]
    fn manifest_is_strict() {
        let m: Result<Manifest, _> = serde_json::from_str(
            r#"{"format":1,"generation":2,"slot":"a","chunks":1,"bytes":3,"extra":0}"#,
        );
        assert!(m.is_err());
    }
}
