//! Any mapping text is refused with a message or loads into a catalog whose
//! empty exposition is valid; nothing panics.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use session_exporter::config::Catalog;
use session_exporter::exposition;
use session_exporter::fold::Fold;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Catalog::from_yaml(text) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(catalog) => {
            let fold = Fold::new(Arc::new(catalog));
            let mut out = String::new();
            exposition::render(&fold.snapshot(Instant::now()), &mut out);
            openmetrics_parser::prometheus::parse_prometheus(&out)
                .unwrap_or_else(|e| panic!("{e:?}\n{out}"));
        }
    }
});
