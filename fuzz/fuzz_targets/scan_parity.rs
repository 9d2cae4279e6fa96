//! The envelope scanner accepts exactly what serde_json accepts, and reads
//! the same fields (a differential target). And partition ownership, which
//! reads the envelope's leading namespace before the full decode: every
//! message has exactly one owner among the partitions, for any count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_exporter::partition::{Owner, Partition};
use session_exporter::scan::parity::agree;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = agree(data) {
        panic!("{e}");
    }
    for count in 1..=4 {
        let owners = (0..count)
            .filter(|&index| matches!(Partition { count, index }.owner(data, 65536), Owner::Mine(_)))
            .count();
        assert_eq!(owners, 1, "{count} partitions: {owners} owners");
    }
});
