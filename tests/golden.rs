//! The exposition of the example events, compared with a file under review.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test --test golden` and read the diff.

mod common;

use std::sync::Arc;
use std::time::Instant;

use session_exporter::config::Catalog;
use session_exporter::event::{decode, parse_rfc3339};
use session_exporter::exposition::{openmetrics, protobuf, render};
use session_exporter::fold::Fold;

#[test]
fn example_events_render_as_the_golden_file() {
    // Series start at a fixed moment, so the protobuf bytes do not change.
    let mut fold = Fold::new(Arc::new(Catalog::default_mapping())).with_clock(|| 1_795_341_600.25);
    let now = Instant::now();
    for (_, body) in common::load_events(&common::examples_file()) {
        let ev = decode(&body).unwrap();
        let t = ev.timestamp.as_deref().and_then(parse_rfc3339).unwrap();
        fold.apply(&ev, now, t).unwrap();
    }
    let mut out = String::new();
    let snap = fold.snapshot(now);
    render(&snap, &mut out);
    common::promtool_check(&out);
    let lines = out.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(
        snap.series(),
        lines,
        "session_exporter_series matches what is rendered"
    );

    golden("examples.prom", out.as_bytes());

    // OpenMetrics: the same samples (and exemplars), accepted by a strict parser.
    let mut om = String::new();
    let frame = openmetrics::Frame {
        snapshot: &snap,
        at: None,
        created: false,
    };
    openmetrics::render(&[frame], &mut om);
    let parsed = common::openmetrics_check(&om);
    assert_eq!(parsed, lines, "the same number of samples");
    assert!(om.contains(" # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} "));
    golden("examples.om", om.as_bytes());

    // With `--web.openmetrics-created`: each counter, histogram and summary
    // series gains one `_created` sample, which the strict parser accepts.
    let mut created = String::new();
    openmetrics::render(
        &[openmetrics::Frame {
            created: true,
            ..frame
        }],
        &mut created,
    );
    let extra: Vec<&str> = created
        .lines()
        .filter(|l| l.contains("_created{"))
        .collect();
    let starts = snap.event_starts.len()
        + snap
            .families
            .iter()
            .flat_map(|f| &f.samples)
            .filter(|s| s.start.is_some())
            .count()
        + snap
            .catalog
            .metrics
            .iter()
            .zip(&snap.families)
            .filter(|(d, _)| d.window.is_some())
            .map(|(_, f)| f.samples.len())
            .sum::<usize>()
        // An SLO's good and bad series.
        + 2 * snap.slis.iter().filter(|s| s.sli.start.is_some()).count();
    assert_eq!(extra.len(), starts, "{created}");
    assert!(
        extra.iter().all(|l| l.ends_with(" 1795341600.25")),
        "{extra:?}"
    );
    assert_eq!(common::openmetrics_check(&created), lines + starts);

    // Protobuf (delimited MetricFamily messages), byte for byte.
    let mut pb = Vec::new();
    protobuf::render(&snap, &mut pb);
    golden("examples.pb", &pb);
}

fn golden(name: &str, got: &[u8]) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).unwrap();
    }
    let want = std::fs::read(&path).expect("golden file; UPDATE_GOLDEN=1 writes it");
    assert!(
        got == want.as_slice(),
        "exposition differs from {path}:\n{}",
        String::from_utf8_lossy(got)
    );
}
