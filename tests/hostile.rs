//! Hostile input end to end, in process: mutated events and label values with
//! every kind of character must never panic the exporter, and `/metrics` must
//! stay valid for promtool whatever was folded.

mod common;

use session_exporter::config::Catalog;
use session_exporter::exporter::Exporter;
use session_exporter::simulate::{unix_ms, Generator, Profile};

#[test]
fn mutated_events_never_break_the_exposition() {
    let exporter = Exporter::new(Catalog::default_mapping(), 0);
    let mut g = Generator::new(Profile::default());
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let alphabet: &[u8] = b"{}[]\":,\\ 0123456789-+.eEnul\x00\x01\x7f\xc3\xa9\xff\n\t";
    let mut batch = Vec::new();
    for _ in 0..20_000 {
        let (_, mut body) = g.next_event(unix_ms());
        for _ in 0..next() % 4 {
            let at = (next() as usize) % body.len();
            body[at] = alphabet[(next() as usize) % alphabet.len()];
        }
        batch.push(body);
    }
    // Namespaces made of escapes that decode to control characters, quotes,
    // backslashes, newlines and non-Latin scripts.
    for ns in [
        r#"\u0000nul"#,
        r#"tab\tand\rcr"#,
        r#"quote\"back\\slash"#,
        r#"line\nbreak"#,
        "日本語のゲーム",
        "emoji 🎮",
        r#"\u007f\u0085\u2028"#,
        " ",
        "{}[]=,",
    ] {
        let e = format!(
            r#"{{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"{ns}","payload":{{"message":"1500"}}}}"#
        );
        batch.push(e.into_bytes());
    }
    let folded = exporter.ingest(batch.iter().map(Vec::as_slice));
    assert!(folded > 10_000, "most mutations still decode: {folded}");
    let text = session_exporter::exposition::page::render_text(&exporter);
    common::promtool_check(&text);
    // The same fold in OpenMetrics passes a strict parser.
    let om = session_exporter::exposition::page::render(
        &exporter,
        session_exporter::exposition::Format::OpenMetrics,
        false,
    );
    common::openmetrics_check(&String::from_utf8(om).unwrap());
    for ns in [
        "日本語のゲーム",
        "emoji 🎮",
        "quote\\\"back\\\\slash",
        "line\\nbreak",
    ] {
        assert!(text.contains(&format!("game_namespace=\"{ns}\"")), "{ns}");
    }
}
