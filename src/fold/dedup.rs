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

    /// Take `slot`'s ids, hashed with `key`, oldest first. They come on
    /// top of what the window holds and push nothing out: appended as the
    /// newest, a takeover of many slots would evict this replica's own
    /// latest ids, whose publishers' retries may still be on their way.
    /// The window drains back to `cap` as new ids arrive ([`Dedup::remember`]).
    pub(super) fn adopt(&mut self, slot: u32, key: u64, ids: impl Iterator<Item = u64>) {
        let at = slot as usize;
        if self.slot_keys.len() <= at {
            self.slot_keys.resize(at + 1, 0);
        }
        self.slot_keys[at] = key;
        ids.for_each(|h| {
            self.insert(h, slot);
        });
    }

    pub(super) fn is_duplicate(&mut self, id: &str, slot: u32) -> bool {
        !self.remember(keyed_hash(self.key_of(slot), id), slot)
    }

    /// False when `h` was already remembered. Past `cap` (after taking
    /// slots) the two oldest go for each new id, so the window is back to
    /// `cap` after as many new ids as it was over: its own ids go first,
    /// oldest first, so its latest stay for about half as many new ids as
    /// it held of its own.
    pub(super) fn remember(&mut self, h: u64, slot: u32) -> bool {
        if !self.insert(h, slot) {
            return false;
        }
        for _ in 0..2 {
            if self.order.len() <= self.cap {
                break;
            }
            if let Some((old, _)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn insert(&mut self, h: u64, slot: u32) -> bool {
        let new = self.seen.insert(h);
        if new {
            self.order.push_back((h, slot));
        }
        new
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A full window that takes a slot's ids keeps its own latest, then
    /// drains back to its size.
    #[test]
    fn taking_a_slot_evicts_none_of_the_own_latest() {
        let mut d = Dedup::new(10, 1);
        (0..10).for_each(|h| assert!(d.remember(h, 0)));
        d.adopt(3, 2, 100..110);
        assert_eq!(d.order.len(), 20, "nothing pushed out");
        assert!(!d.remember(9, 0), "the own latest is still known");
        assert!(!d.remember(105, 3), "and so are the slot's");
        // Each new id takes two of the oldest with it: 20 → 10 in 10.
        (200..210).for_each(|h| assert!(d.remember(h, 0)));
        assert_eq!((d.order.len(), d.seen.len()), (10, 10));
        assert!(d.remember(109, 3), "the slot's ids went after the own ones");
    }
}
