//! The envelope scanner accepts exactly what serde_json accepts, and reads
//! the same fields (a differential target).
#![no_main]

use libfuzzer_sys::fuzz_target;
use session_exporter::scan::parity::agree;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = agree(data) {
        panic!("{e}");
    }
});
