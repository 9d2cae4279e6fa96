//! The event-id de-duplication window.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// An id whose event has no namespace, or a fold without slots.
pub(super) const NO_SLOT: u32 = u32::MAX;

/// Remembers the last `cap` event ids, by a 64-bit hash keyed with a random
/// `key`. The key travels in checkpoints, so a restored window still matches
/// the ids it remembers; producers cannot aim collisions at an unknown key.
/// With slots each id keeps its namespace's slot, and a slot's ids are
/// hashed with the slot's key: both move with the slot to its next holder.
pub(super) struct Dedup {
    pub(super) key: u64,
    /// The key of each slot taken from another replica (0: `key`).
    pub(super) slot_keys: Vec<u64>,
    pub(super) seen: HashSet<u64, BuildHasherDefault<Prehashed>>,
    /// Oldest first: each id's hash and its slot ([`NO_SLOT`] for none).
    pub(super) order: VecDeque<(u64, u32)>,
    pub(super) cap: usize,
}

impl Dedup {
    pub(super) fn new(cap: usize, key: u64) -> Dedup {
        Dedup {
            key,
            slot_keys: Vec::new(),
            seen: HashSet::with_capacity_and_hasher(cap, Default::default()),
            order: VecDeque::with_capacity(cap),
            cap,
        }
    }

    /// Empty again, with `key`.
    pub(super) fn reset(&mut self, key: u64) {
        *self = Dedup::new(self.cap, key);
    }

    /// The key `slot`'s ids are hashed with.
    pub(super) fn key_of(&self, slot: u32) -> u64 {
        slot_key(self.key, &self.slot_keys, slot)
    }

    /// Take `slot`'s ids, hashed with `key`, oldest first.
    pub(super) fn adopt(&mut self, slot: u32, key: u64, ids: impl Iterator<Item = u64>) {
        let at = slot as usize;
        if self.slot_keys.len() <= at {
            self.slot_keys.resize(at + 1, 0);
        }
        self.slot_keys[at] = key;
        ids.for_each(|h| {
            self.remember(h, slot);
        });
    }

    pub(super) fn is_duplicate(&mut self, id: &str, slot: u32) -> bool {
        !self.remember(keyed_hash(self.key_of(slot), id), slot)
    }

    /// False when `h` was already remembered.
    pub(super) fn remember(&mut self, h: u64, slot: u32) -> bool {
        if !self.seen.insert(h) {
            return false;
        }
        self.order.push_back((h, slot));
        if self.order.len() > self.cap {
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// The key of `slot`'s ids: its own in `slot_keys`, else `key`.
pub(super) fn slot_key(key: u64, slot_keys: &[u64], slot: u32) -> u64 {
    match slot_keys.get(slot as usize) {
        Some(&k) if k != 0 => k,
        _ => key,
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
