//! Any web config text is refused with a message naming the file, or loads.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use session_exporter::http::WebConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = WebConfig::parse(text, Path::new("web.yml")) {
        assert!(e.to_string().starts_with("web.yml"), "{e}");
    }
});
