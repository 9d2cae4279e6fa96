//! The state store: fold checkpoints in a NATS KV bucket on the same NATS,
//! one key per replica (`--state.key`).
//!
//! A checkpoint is gzip-compressed and split into chunks the server accepts
//! (its `max_payload`). Chunks go to one of two slots of this process's own,
//! `<key>.<instance>.a.<i>` or `….b.<i>`, alternating; the manifest at `<key>`
//! is written last and names them. A crash mid-checkpoint leaves the previous
//! manifest and its chunks intact, so the store always holds one whole
//! checkpoint. gzip's CRC-32 and length check the bytes on the way back.
//!
//! The manifest is written only over the revision this process last read or
//! wrote (compare-and-set): a second process with the same key cannot
//! overwrite a newer checkpoint, and as the chunk keys carry the process's
//! instance, it cannot overwrite the chunks the manifest names either.

use std::io::{Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

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

/// The manifest at `<key>`: where the current checkpoint's chunks are.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Manifest {
    format: u64,
    generation: u64,
    /// Format 1: the slot, `a` or `b`, of chunks at `<key>.<slot>.<i>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot: Option<String>,
    /// Format 2: the chunks are at `<chunks_at>.<i>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks_at: Option<String>,
    chunks: usize,
    bytes: usize,
}

const MANIFEST_FORMAT: u64 = 2;

/// Why a checkpoint was not stored.
#[derive(Debug)]
pub enum SaveError {
    /// Try again with the next one.
    Failed(String),
    /// Another process wrote the key since this one read it: stop writing.
    Fenced(String),
}

impl std::fmt::Display for SaveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaveError::Failed(e) | SaveError::Fenced(e) => f.write_str(e),
        }
    }
}

pub struct StateStore {
    js: jetstream::Context,
    kv: kv::Store,
    bucket: String,
    replicas: usize,
    key: String,
    /// `<key>.<instance>`: this process's chunk keys start with it.
    own: String,
    chunk: usize,
    current: Mutex<Current>,
}

/// What this process knows of the stored checkpoint; one writer at a time.
#[derive(Default)]
struct Current {
    generation: u64,
    slot: u8,
    /// The manifest's revision as last read or written; `None`: no manifest.
    revision: Option<u64>,
    /// Chunk keys of an earlier process's checkpoint, removed once this
    /// process has stored its first.
    stale: Vec<String>,
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

/// Eight hex digits, different for every process.
fn instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:08x}", h.finish() as u32)
}

fn slot_name(slot: u8) -> char {
    if slot == 0 {
        'a'
    } else {
        'b'
    }
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
            js,
            kv,
            bucket: cfg.bucket.clone(),
            replicas: cfg.replicas,
            own: format!("{}.{}", cfg.key, instance_id()),
            key: cfg.key.clone(),
            chunk: (max - 8 * 1024).min(1 << 20),
            current: Mutex::new(Current {
                slot: 1,
                ..Current::default()
            }),
        })
    }

    pub(super) fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// The largest value one key takes (what the server accepts in one
    /// message, less room for headers and the subject).
    pub(super) fn max_value(&self) -> usize {
        self.chunk
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk keys a manifest names, and those of the other slot of the
    /// same writer (`chunks` of each at most).
    fn chunk_keys(&self, m: &Manifest) -> Result<(Vec<String>, Vec<String>), String> {
        let (at, other) = match (&m.slot, &m.chunks_at) {
            (Some(s), None) if m.format == 1 && (s == "a" || s == "b") => {
                let other = if s == "a" { 'b' } else { 'a' };
                (format!("{}.{s}", self.key), format!("{}.{other}", self.key))
            }
            (None, Some(at)) if m.format == 2 && valid_key(at) => {
                let (writer, slot) = at.rsplit_once('.').unwrap_or((at, ""));
                let other = match slot {
                    "a" => 'b',
                    "b" => 'a',
                    _ => return Err(format!("manifest names chunks at {at:?}, not a slot")),
                };
                (at.clone(), format!("{writer}.{other}"))
            }
            _ if m.format != 1 && m.format != MANIFEST_FORMAT => {
                return Err(format!(
                    "manifest format {} is not one this build reads (1 or {MANIFEST_FORMAT})",
                    m.format
                ))
            }
            _ => return Err(format!("manifest names no chunks it can hold: {m:?}")),
        };
        let keys = |p: &str| (0..m.chunks).map(|i| format!("{p}.{i}")).collect();
        Ok((keys(&at), keys(&other)))
    }

    /// The stored checkpoint, uncompressed; `None` when there is none yet.
    /// `Err(Invalid)` when what is stored is not a readable checkpoint.
    pub async fn load(&self) -> Result<Option<Vec<u8>>, LoadError> {
        let unreachable = |e: &dyn std::fmt::Display| LoadError::Unreachable(e.to_string());
        let entry = self
            .kv
            .entry(&self.key)
            .await
            .map_err(|e| unreachable(&e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        // What this process replaces, readable or not (--state.on-invalid=start-empty).
        self.current().revision = Some(entry.revision);
        let m: Manifest = serde_json::from_slice(&entry.value)
            .map_err(|e| LoadError::Invalid(format!("manifest at key {}: {e}", self.key)))?;
        let (keys, other) = self.chunk_keys(&m).map_err(LoadError::Invalid)?;
        let mut compressed = Vec::with_capacity(m.bytes.min(1 << 30));
        for key in &keys {
            match self.kv.get(key).await.map_err(|e| unreachable(&e))? {
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
        let mut c = self.current();
        c.generation = m.generation;
        c.stale = keys.into_iter().chain(other).collect();
        Ok(Some(raw))
    }

    /// Compress and store `raw`; returns the stored (compressed) size. Only
    /// once this returns `Ok` does the store hold it.
    pub async fn save(&self, raw: Vec<u8>) -> Result<usize, SaveError> {
        let failed =
            |what: &str, e: &dyn std::fmt::Display| SaveError::Failed(format!("{what}: {e}"));
        let compressed = tokio::task::spawn_blocking(move || {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(raw.len() / 4),
                flate2::Compression::fast(),
            );
            gz.write_all(&raw).and_then(|_| gz.finish())
        })
        .await
        .map_err(|e| failed("checkpoint compression", &e))?
        .map_err(|e| failed("checkpoint compression", &e))?;
        let (generation, slot, revision) = {
            let c = self.current();
            (c.generation, 1 - c.slot, c.revision)
        };
        let at = format!("{}.{}", self.own, slot_name(slot));
        let chunks: Vec<&[u8]> = compressed.chunks(self.chunk).collect();
        for (i, c) in chunks.iter().enumerate() {
            if let Err(e) = self
                .kv
                .put(format!("{at}.{i}"), Bytes::copy_from_slice(c))
                .await
            {
                self.ensure_bucket().await;
                return Err(failed(&format!("checkpoint chunk {i}"), &e));
            }
        }
        failpoint("checkpoint-before-manifest");
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            generation: generation + 1,
            slot: None,
            chunks_at: Some(at),
            chunks: chunks.len(),
            bytes: compressed.len(),
        };
        let body: Bytes = serde_json::to_vec(&manifest)
            .expect("a manifest serializes")
            .into();
        let written = match revision {
            Some(r) => self
                .kv
                .update(&self.key, body.clone(), r)
                .await
                .map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
            None => self.kv.create(&self.key, body.clone()).await.map_err(|e| {
                (
                    e.kind() == kv::CreateErrorKind::AlreadyExists,
                    e.to_string(),
                )
            }),
        };
        let revision = match written {
            Ok(r) => r,
            Err((true, e)) => self.after_conflict(&body, revision, &e).await?,
            Err((false, e)) => return Err(failed("checkpoint manifest", &e)),
        };
        let stale = {
            let mut c = self.current();
            (c.generation, c.slot, c.revision) = (generation + 1, slot, Some(revision));
            std::mem::take(&mut c.stale)
        };
        self.remove(stale).await;
        Ok(compressed.len())
    }

    /// The manifest was not at the revision this process knew: unless what is
    /// there is the very manifest it just wrote (an earlier reply lost on the
    /// way), another process writes this key.
    async fn after_conflict(
        &self,
        body: &Bytes,
        known: Option<u64>,
        e: &str,
    ) -> Result<u64, SaveError> {
        if let Ok(Some(entry)) = self.kv.entry(&self.key).await {
            if entry.operation == kv::Operation::Put && entry.value == *body {
                return Ok(entry.revision);
            }
            if entry.operation != kv::Operation::Put && known.is_some() {
                // Deleted (`nats kv del`): nobody else's checkpoint to keep.
                self.current().revision = Some(entry.revision);
                return Err(SaveError::Failed(
                    "the checkpoint manifest was deleted; storing anew".into(),
                ));
            }
            return Err(SaveError::Fenced(format!(
                "state bucket {} key {}: another process stored a checkpoint under this key (revision {}, this process knew {}): two exporters share --state.key; this one stops without overwriting it",
                self.bucket,
                self.key,
                entry.revision,
                known.map_or("none".to_string(), |r| r.to_string()),
            )));
        }
        Err(SaveError::Failed(format!("checkpoint manifest: {e}")))
    }

    /// Make the bucket again if it is gone (deleted, or its creation never
    /// reached the rest of a cluster whose meta leader died): the next
    /// checkpoint then starts it afresh.
    async fn ensure_bucket(&self) {
        let name = format!("KV_{}", self.bucket);
        use jetstream::context::GetStreamErrorKind;
        use jetstream::ErrorCode;
        if let Err(e) = self.js.get_stream(&name).await {
            let gone = matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND);
            if gone
                && self
                    .js
                    .create_stream(kv_stream(&self.bucket, self.replicas))
                    .await
                    .is_ok()
            {
                tracing::warn!(bucket = %self.bucket, "the state bucket was gone: made it anew");
                self.current().revision = None;
            }
        }
    }

    /// Remove an earlier process's chunks (a stream purge of each exact key
    /// leaves no delete marker behind); what fails stays, harmless.
    async fn remove(&self, keys: Vec<String>) {
        if keys.is_empty() {
            return;
        }
        let Ok(stream) = self.js.get_stream(format!("KV_{}", self.bucket)).await else {
            return;
        };
        for key in keys.iter().filter(|k| !k.starts_with(&self.own)) {
            let subject = format!("$KV.{}.{key}", self.bucket);
            if let Err(e) = stream.purge().filter(subject).await {
                tracing::debug!(key, error = %e, "old checkpoint chunk not removed");
            }
        }
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
        // Both formats read; what they name is checked.
        for ok in [
            r#"{"format":1,"generation":2,"slot":"a","chunks":1,"bytes":3}"#,
            r#"{"format":2,"generation":2,"chunks_at":"k.0a1b2c3d.b","chunks":1,"bytes":3}"#,
        ] {
            let m: Manifest = serde_json::from_str(ok).unwrap();
            assert!(m.chunks_at.is_some() || m.slot.is_some(), "{ok}");
        }
    }
}
