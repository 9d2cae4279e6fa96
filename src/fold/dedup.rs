//! The event-id de-duplication window.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// Remembers the last `cap` event ids, by a 64-bit hash keyed with a random
/// `key`. The key travels in checkpoints, so a restored window still matches
/// the ids it remembers; producers cannot aim collisions at an unknown key.
pub(super) struct Dedup {
    pub(super) key: u64,
    pub(super) seen: HashSet<u64, BuildHasherDefault<Prehashed>>,
    pub(super) order: VecDeque<u64>,
    pub(super) cap: usize,
}

impl Dedup {
    pub(super) fn new(cap: usize, key: u64) -> Dedup {
        Dedup {
            key,
            seen: HashSet::with_capacity_and_hasher(cap, Default::default()),
            order: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub(super) fn is_duplicate(&mut self, id: &str) -> bool {
        !self.remember(keyed_hash(self.key, id))
    }

    /// False when `h` was already remembered.
    pub(super) fn remember(&mut self, h: u64) -> bool {
        if !self.seen.insert(h) {
            return false;
        }
        self.order.push_back(h);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// The set's keys are already keyed hashes: hashing them again is waste.
#[derive(Default)]
pub(super) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// FNV-1a over the key and the id, then a SplitMix64 finaliser to spread the bits.
pub(super) fn keyed_hash(key: u64, id: &str) -> u64 {
    let h = key
        .to_le_bytes()
        .iter()
        .chain(id.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
