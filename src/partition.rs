//! Partitions of the namespaces: replica `index` of `count` folds only the
//! namespaces that hash to it, so each series exists on exactly one replica.
//!
//! The hash is the one nats-server's `{{partition(count, token)}}` subject
//! transform applies (`subject_transform.go`: 32-bit FNV-1a of the token's
//! bytes, modulo the count), so a stream partitioned by the server and a
//! replica deciding for itself agree. It is part of the contract: changing it
//! would move every namespace to another replica.

use crate::event::{decode_limited, Event, Reason};
use crate::scan;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub count: u32,
    pub index: u32,
}

impl Default for Partition {
    /// One partition holding everything.
    fn default() -> Partition {
        Partition { count: 1, index: 0 }
    }
}

/// 32-bit FNV-1a, as Go's `hash/fnv.New32a`.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The partition a namespace belongs to, of `count`.
pub fn of(namespace: &str, count: u32) -> u32 {
    fnv1a32(namespace.as_bytes()) % count.max(1)
}

/// Which replica owns a message, and what was decoded on the way.
pub enum Owner<'a> {
    /// Another partition's namespace, seen before the rest of the message was read.
    Skipped,
    /// Decoded in full (or rejected), and owned by this replica.
    Mine(Result<Event<'a>, Reason>),
    /// Decoded in full (or rejected), and owned by another replica.
    Theirs,
}

impl Partition {
    pub fn is_split(&self) -> bool {
        self.count > 1
    }

    fn owns(&self, namespace: &str) -> bool {
        of(namespace, self.count) == self.index
    }

    /// Who folds `raw`. Every replica decides the same way from the bytes
    /// alone: by the first top-level `namespace` when it is a non-empty
    /// string (read without scanning further, so other partitions' events
    /// cost only their envelope up to it); else by the namespace the full
    /// decode finds; a message too broken to name one (or too large) goes
    /// to partition 0, which counts its rejection.
    pub fn owner<'a>(&self, raw: &'a [u8], max: usize) -> Owner<'a> {
        let leading = (raw.len() <= max)
            .then(|| scan::leading_namespace(raw).and_then(|s| s.text()))
            .flatten()
            .filter(|n| !n.is_empty());
        if leading.as_ref().is_some_and(|ns| !self.owns(ns)) {
            return Owner::Skipped;
        }
        let decoded = decode_limited(raw, max);
        let mine = match (&leading, &decoded) {
            // Its leading namespace is ours, even if the rest is broken.
            (Some(_), _) => true,
            (None, Ok(ev)) => ev
                .namespace
                .as_deref()
                .map_or(self.index == 0, |ns| self.owns(ns)),
            (None, Err(_)) => self.index == 0,
        };
        if mine {
            Owner::Mine(decoded)
        } else {
            Owner::Theirs
        }
    }
}

/// The StatefulSet ordinal at the end of a host name (`session-exporter-2` → 2).
pub fn ordinal(host: &str) -> Option<u32> {
    let (_, digits) = host.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite (and Go's hash/fnv tests).
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn ordinals_come_from_the_last_dash() {
        assert_eq!(ordinal("session-exporter-2"), Some(2));
        assert_eq!(ordinal("a-b-10"), Some(10));
        for bad in ["session-exporter", "exporter-", "x-2a", "7"] {
            assert_eq!(ordinal(bad), None, "{bad}");
        }
    }

    fn owner_of(p: Partition, raw: &str) -> &'static str {
        match p.owner(raw.as_bytes(), 65536) {
            Owner::Skipped => "skipped",
            Owner::Mine(_) => "mine",
            Owner::Theirs => "theirs",
        }
    }

    #[test]
    fn every_message_has_exactly_one_owner() {
        let msgs = [
            r#"{"name":"MetricAcquiringDsEvent","namespace":"alpha"}"#,
            r#"{"name":"MetricAcquiringDsEvent","namespace":"beta","payload":{"message":"x"}"#,
            r#"{"name":"MetricAcquiringDsEvent","payload":{"namespace":"gamma"}}"#,
            r#"{"name":"MetricAcquiringDsEvent","namespace":"","payload":{"namespace":"delta"}}"#,
            r#"{"name":"MetricAcquiringDsEvent","namespace":"a","namespace":"b"}"#,
            r#"{"name":"MetricAcquiringDsEvent","namespace":7}"#,
            r#"{"namespace":"epsilon"}"#,
            r#"{"name":"x""#,
            "not json",
            r#"{"name":"MetricAcquiringDsEvent","namespace":"\u0062eta"}"#,
        ];
        for m in msgs {
            for count in 1..5 {
                let owners: Vec<&str> = (0..count)
                    .map(|index| owner_of(Partition { count, index }, m))
                    .collect();
                let n = owners.iter().filter(|&&o| o == "mine").count();
                assert_eq!(n, 1, "{m} over {count}: {owners:?}");
            }
        }
        // An escaped namespace hashes as its decoded text.
        let three = |index| Partition { count: 3, index };
        let plain = (0..3).position(|i| owner_of(three(i), msgs[1]) == "mine");
        let escaped = (0..3).position(|i| owner_of(three(i), msgs[9]) == "mine");
        assert_eq!(plain, escaped);
        // Broken messages go to partition 0.
        assert_eq!(owner_of(three(0), "not json"), "mine");
    }
}
