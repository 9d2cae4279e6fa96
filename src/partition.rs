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

/// The slot a namespace belongs to, of `slots` (the same hash as [`of`]).
pub fn slot_of(namespace: &str, slots: u32) -> u32 {
    of(namespace, slots)
}

/// With slots, the replica that owns slot `slot` at `count` replicas, so that
/// when `count` divides the slots a replica owns exactly the namespaces
/// `hash mod count` gave it before slots: a deployment moves to slots
/// without moving a namespace.
pub fn slot_owner(slot: u32, count: u32) -> u32 {
    slot % count.max(1)
}

/// What this replica folds: its partition, or with slots (`slots > 0`) the
/// slots it holds now, each from the stream position after which its state
/// ends (its floor): a slot that moved here from a replica further along
/// skips what its state already holds.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    pub partition: Partition,
    /// Slots of the deployment; 0: none (namespaces by `hash mod count`).
    pub slots: u32,
    held: Vec<bool>,
    floors: Vec<u64>,
}

impl Ownership {
    /// Namespaces by `hash mod count`, as before slots.
    pub fn by_hash(partition: Partition) -> Ownership {
        Ownership {
            partition,
            ..Ownership::default()
        }
    }

    /// Slots, none held yet.
    pub fn by_slots(partition: Partition, slots: u32) -> Ownership {
        Ownership {
            partition,
            slots,
            held: vec![false; slots as usize],
            floors: vec![0; slots as usize],
        }
    }

    /// Whether another replica's messages reach this one, to be skipped.
    pub fn is_split(&self) -> bool {
        self.partition.is_split() || self.slots > 0
    }

    /// Hold `slot`, whose state ends at stream sequence `floor`.
    pub fn hold(&mut self, slot: u32, floor: u64) {
        self.held[slot as usize] = true;
        self.floors[slot as usize] = floor;
    }

    pub fn release(&mut self, slot: u32) {
        self.held[slot as usize] = false;
    }

    pub fn holds(&self, slot: u32) -> bool {
        self.held.get(slot as usize).copied().unwrap_or(false)
    }

    /// The slots held, ascending.
    pub fn held(&self) -> Vec<u32> {
        (0..self.slots).filter(|&s| self.holds(s)).collect()
    }

    /// Where `slot`'s state ends: its floor, or `read` (the last sequence
    /// the reader folded) once the reader is past it.
    pub fn position(&self, slot: u32, read: u64) -> u64 {
        self.floors[slot as usize].max(read)
    }

    /// The reader stands at `from` and may go back: every held slot keeps
    /// its position as a floor, so nothing is folded twice.
    pub fn rewind(&mut self, from: u64) {
        for (f, _) in self.floors.iter_mut().zip(&self.held).filter(|(_, &h)| h) {
            *f = (*f).max(from);
        }
    }

    /// The lowest position among the held slots: where reading starts.
    pub fn lowest(&self) -> Option<u64> {
        let held = self.floors.iter().zip(&self.held).filter(|(_, &h)| h);
        held.map(|(&f, _)| f).min()
    }

    /// The highest position among the held slots.
    pub fn highest(&self) -> Option<u64> {
        let held = self.floors.iter().zip(&self.held).filter(|(_, &h)| h);
        held.map(|(&f, _)| f).max()
    }

    /// The stream was made anew: every slot reads it from its start.
    pub fn forget_floors(&mut self) {
        self.floors.iter_mut().for_each(|f| *f = 0);
    }

    /// The lowest position among the held slots that were stored before
    /// (a slot made anew has none): what the stream removed after it was
    /// never folded here.
    pub fn lowest_stored(&self) -> Option<u64> {
        let held = self.floors.iter().zip(&self.held).filter(|(_, &h)| h);
        held.map(|(&f, _)| f).filter(|f| *f > 0).min()
    }

    fn owns(&self, namespace: &str, seq: u64) -> bool {
        if self.slots == 0 {
            return self.partition.owns(namespace);
        }
        self.owns_slot(slot_of(namespace, self.slots), seq)
    }

    fn owns_slot(&self, slot: u32, seq: u64) -> bool {
        self.holds(slot) && seq > self.floors[slot as usize]
    }

    /// Whether a message no replica can name a namespace for is this one's:
    /// partition 0's; with slots, the holder of the slot its subject names
    /// (on 2.10+ the only replica the server sends it to; on 2.9 a replica
    /// with several slots reads all and skips), else of slot 0.
    fn owns_unnamed(&self, from: Origin) -> bool {
        match (self.slots, from.slot) {
            (0, _) => self.partition.index == 0,
            (_, Some(slot)) => self.owns_slot(slot, from.seq),
            (_, None) => self.owns_slot(0, from.seq),
        }
    }

    /// Whether `namespace` (not this replica's) came on the subject of a
    /// slot it holds: the publisher's subject names another slot than the
    /// body's namespace hashes to.
    fn misrouted(&self, namespace: &str, from: Origin) -> bool {
        from.slot.is_some_and(|s| {
            self.slots > 0 && self.owns_slot(s, from.seq) && slot_of(namespace, self.slots) != s
        })
    }

    /// Who folds `raw`, read `from` where.
    /// Every replica decides the same way from the bytes and their subject:
    /// by the first top-level `namespace` when it is a non-empty string
    /// (read without scanning further, so other partitions' events cost
    /// only their envelope up to it); else by the namespace the full decode
    /// finds; a message too broken to name one (or too large) goes to
    /// partition 0, or with slots to its subject's slot (else slot 0),
    /// which counts its rejection.
    pub fn owner<'a>(&self, raw: &'a [u8], max: usize, from: Origin) -> Owner<'a> {
        let seq = from.seq;
        let leading = (raw.len() <= max)
            .then(|| scan::leading_namespace(raw).and_then(|s| s.text()))
            .flatten()
            .filter(|n| !n.is_empty());
        if let Some(ns) = leading.as_deref().filter(|ns| !self.owns(ns, seq)) {
            return match self.misrouted(ns, from) {
                true => Owner::Misrouted,
                false => Owner::Skipped,
            };
        }
        let decoded = decode_limited(raw, max);
        let mine = match (&leading, &decoded) {
            // Its leading namespace is ours, even if the rest is broken.
            (Some(_), _) => true,
            (None, Ok(ev)) => match ev.namespace.as_deref() {
                Some(ns) if self.owns(ns, seq) => true,
                Some(ns) if self.misrouted(ns, from) => return Owner::Misrouted,
                Some(_) => false,
                None => self.owns_unnamed(from),
            },
            (None, Err(_)) => self.owns_unnamed(from),
        };
        if mine {
            Owner::Mine(decoded)
        } else {
            Owner::Theirs
        }
    }
}

/// Where a message was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Its stream sequence (`u64::MAX` off a stream): a slot that moved
    /// here skips what its state already holds.
    pub seq: u64,
    /// The slot its subject names, when the server sends each replica its
    /// slots' subjects (`--partition.filter-subject` with `{slot}`).
    pub slot: Option<u32>,
}

impl Origin {
    /// Core NATS, or a consumer that acknowledges: no position.
    pub const UNORDERED: Origin = Origin {
        seq: u64::MAX,
        slot: None,
    };

    pub fn at(seq: u64) -> Origin {
        Origin { seq, slot: None }
    }
}

/// Which replica owns a message, and what was decoded on the way.
pub enum Owner<'a> {
    /// Another partition's namespace, seen before the rest of the message was read.
    Skipped,
    /// Decoded in full (or rejected), and owned by this replica.
    Mine(Result<Event<'a>, Reason>),
    /// Decoded in full (or rejected), and owned by another replica.
    Theirs,
    /// Another replica's namespace on the subject of a slot this one
    /// holds: counted here, folded by its namespace's holder only if that
    /// replica reads this subject too (nats-server 2.9, several slots).
    Misrouted,
}

impl Partition {
    pub fn is_split(&self) -> bool {
        self.count > 1
    }

    fn owns(&self, namespace: &str) -> bool {
        of(namespace, self.count) == self.index
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
        match Ownership::by_hash(p).owner(raw.as_bytes(), 65536, Origin::UNORDERED) {
            Owner::Skipped => "skipped",
            Owner::Mine(_) => "mine",
            Owner::Theirs => "theirs",
            Owner::Misrouted => "misrouted",
        }
    }

    /// With slots a multiple of the count, a replica holding the slots the
    /// count gives it owns what `hash mod count` gave it; a slot's floor
    /// skips what its state already holds.
    #[test]
    fn slots_own_what_partitions_owned() {
        let names: Vec<String> = (0..300).map(|i| format!("game-{i}")).collect();
        for count in [1, 2, 3, 5, 6] {
            for index in 0..count {
                let p = Partition { count, index };
                let mut own = Ownership::by_slots(p, 30);
                (0..30)
                    .filter(|&s| slot_owner(s, count) == index)
                    .for_each(|s| own.hold(s, 0));
                for n in &names {
                    assert_eq!(own.owns(n, 1), p.owns(n), "{n} {p:?}");
                }
            }
        }
        let mut own = Ownership::by_slots(Partition::default(), 30);
        let slot = slot_of("game-1", 30);
        own.hold(slot, 100);
        assert!(!own.owns("game-1", 100) && own.owns("game-1", 101));
        assert_eq!(own.lowest(), Some(100));
        own.rewind(250);
        assert_eq!((own.position(slot, 7), own.position(slot, 900)), (250, 900));
        own.release(slot);
        assert!(!own.owns("game-1", 1_000) && own.lowest().is_none());
    }

    /// With the slot in the subject, a message that names no namespace is
    /// that slot's holder's (past its floor); a named one goes by its name.
    #[test]
    fn unnamed_messages_go_to_their_subjects_slot() {
        let mut own = Ownership::by_slots(Partition::default(), 30);
        own.hold(7, 100);
        let mine =
            |raw: &str, from| matches!(own.owner(raw.as_bytes(), 65536, from), Owner::Mine(_));
        let unnamed = r#"{"name":"MetricAcquiringDsEvent"}"#;
        let slot = |seq, slot| Origin { seq, slot };
        assert!(mine(unnamed, slot(101, Some(7))));
        assert!(!mine(unnamed, slot(100, Some(7))), "below the floor");
        assert!(!mine(unnamed, slot(101, Some(8))));
        assert!(
            !mine(unnamed, slot(101, None)),
            "slot 0's without a subject slot"
        );
        assert!(!mine("{broken", slot(101, Some(8))));
        assert!(mine("{broken", slot(101, Some(7))));
        let named = format!(
            r#"{{"name":"MetricAcquiringDsEvent","namespace":"{}"}}"#,
            (0..)
                .map(|i| format!("g{i}"))
                .find(|n| slot_of(n, 30) == 7)
                .unwrap()
        );
        assert!(mine(&named, slot(101, Some(3))), "a name goes by its hash");
        let elsewhere = r#"{"name":"MetricAcquiringDsEvent","namespace":"x"}"#;
        assert_ne!(slot_of("x", 30), 7);
        let owner = |raw: &str, from| match own.owner(raw.as_bytes(), 65536, from) {
            Owner::Mine(_) => "mine",
            Owner::Skipped => "skipped",
            Owner::Theirs => "theirs",
            Owner::Misrouted => "misrouted",
        };
        assert_eq!(owner(elsewhere, slot(101, Some(7))), "misrouted");
        assert_eq!(
            owner(elsewhere, slot(100, Some(7))),
            "skipped",
            "read again"
        );
        assert_eq!(owner(elsewhere, slot(101, None)), "skipped");
        let late = r#"{"name":"MetricAcquiringDsEvent","payload":{"namespace":"x"}}"#;
        assert_eq!(owner(late, slot(101, Some(7))), "misrouted");
        assert_eq!(owner(late, slot(101, Some(8))), "theirs");
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
