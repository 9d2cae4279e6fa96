//! Messages (the input split at newlines) through decode, fold and both
//! renderers: nothing panics, the text format and OpenMetrics parse with a
//! real exposition parser, and the namespaces stay within max_namespaces.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use session_exporter::config::Catalog;
use session_exporter::event::decode_limited;
use session_exporter::exposition::protobuf::wire::{as_bytes, as_sint, as_uint, delimited, fields, get};
use session_exporter::exposition::{self, openmetrics, protobuf};
use session_exporter::fold::Fold;

fuzz_target!(|data: &[u8]| {
    // The default mapping with a small namespace bound, so overflow is reached.
    static CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();
    let catalog = CATALOG.get_or_init(|| {
        let mut c = Catalog::default_mapping();
        c.limits.max_namespaces = 4;
        Arc::new(c)
    });
    let max = catalog.limits.max_message_bytes;
    let mut fold = Fold::new(catalog.clone()).with_dedup(16);
    let now = Instant::now();
    for message in data.split(|&b| b == b'\n') {
        if let Ok(ev) = decode_limited(message, max) {
            let _ = fold.apply(&ev, now, ev.time().unwrap_or(1_800_000_000.0));
        }
    }
    // Four namespaces and the overflow series.
    assert!(fold.namespace_count() <= 5, "{}", fold.namespace_count());
    let snap = fold.snapshot(now);
    let mut text = String::new();
    exposition::render(&snap, &mut text);
    openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("text: {e:?}\n{text}"));
    // Protobuf: every family decodes, and every native histogram's buckets
    // add up to its count.
    let mut pb = Vec::new();
    protobuf::render(&snap, &mut pb);
    for family in delimited(&pb) {
        let f = fields(&family);
        for metric in get(&f, 4) {
            let m = fields(as_bytes(metric));
            let Some(h) = get(&m, 7).next() else { continue };
            let h = fields(as_bytes(h));
            let count = as_uint(get(&h, 1).next().expect("sample_count"));
            let zero = get(&h, 7).next().map_or(0, as_uint);
            let (mut bucket, mut total) = (0i64, 0i64);
            for d in get(&h, 13) {
                bucket += as_sint(d);
                assert!(bucket >= 0, "negative native bucket");
                total += bucket;
            }
            assert_eq!(total as u64 + zero, count, "native buckets vs count");
        }
    }
    let frame = openmetrics::Frame {
        snapshot: &snap,
        at: None,
        created: false,
    };
    let mut om = String::new();
    openmetrics::render(&[frame], &mut om);
    // With `_created` samples: the same page plus only those lines.
    // (openmetrics-parser 0.5 refuses a summary's `_created`, which
    // OpenMetrics allows, so the parser reads the page without them; the
    // golden test has Python's reference parser read them.)
    let mut created = String::new();
    openmetrics::render(&[openmetrics::Frame { created: true, ..frame }], &mut created);
    let rest: String = created
        .lines()
        .filter(|l| !l.split('{').next().is_some_and(|name| name.ends_with("_created")))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(rest, om, "_created samples changed other lines");
    // openmetrics-parser refuses an exposition without families, which the
    // OpenMetrics grammar allows (`metricset = *metricfamily`).
    if snap.events.is_empty() && snap.families.iter().all(|f| f.samples.is_empty()) {
        assert_eq!(om, "# EOF\n");
        return;
    }
    // openmetrics-parser also refuses `# UNIT` on histograms and summaries,
    // which OpenMetrics allows: check those lines here (the unit is the
    // family name's suffix), and parse the rest.
    let mut family = "";
    let mut rest = String::with_capacity(om.len());
    for line in om.lines() {
        if let Some(f) = line.strip_prefix("# TYPE ") {
            family = f.split(' ').next().unwrap_or("");
        }
        match line.strip_prefix("# UNIT ") {
            Some(u) => {
                let (name, unit) = u.split_once(' ').expect("# UNIT name unit");
                assert!(
                    name == family && family.ends_with(&format!("_{unit}")),
                    "{line}"
                );
            }
            None => {
                rest.push_str(line);
                rest.push('\n');
            }
        }
    }
    openmetrics_parser::openmetrics::parse_openmetrics(&rest)
        .unwrap_or_else(|e| panic!("openmetrics: {e:?}\n{om}"));
});
