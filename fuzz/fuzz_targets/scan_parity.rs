//! The envelope scanner accepts exactly what serde_json accepts, and reads
//! the same fields (a differential target). And partition ownership, which
//! reads the envelope's leading namespace before the full decode: every
//! message has exactly one owner among the partitions, for any count, with
//! slots or without, and with or without a slot read from its subject.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_exporter::partition::{slot_owner, Origin, Owner, Ownership, Partition};
use session_exporter::scan::parity::agree;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = agree(data) {
        panic!("{e}");
    }
    for count in 1..=4 {
        let by_slots = |p: Partition| {
            let mut own = Ownership::by_slots(p, 12);
            (0..12).filter(|&s| slot_owner(s, count) == p.index).for_each(|s| own.hold(s, 0));
            own
        };
        // Any slot the subject may name, from the message's first byte.
        let subject_slot = data.first().map(|b| u32::from(*b) % 12);
        for (slots, slot) in [(false, None), (true, None), (true, subject_slot)] {
            let from = Origin { seq: 1, slot };
            let owners = (0..count)
                .map(|index| Partition { count, index })
                .map(|p| if slots { by_slots(p) } else { Ownership::by_hash(p) })
                .filter(|own| matches!(own.owner(data, 65536, from), Owner::Mine(_)))
                .count();
            assert_eq!(owners, 1, "{count} partitions (slots {slots}, {slot:?}): {owners} owners");
        }
    }
});
