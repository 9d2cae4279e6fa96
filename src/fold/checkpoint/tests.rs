use super::*;
use crate::config::Catalog;
use crate::exposition;
use std::sync::Arc;

fn render(f: &mut Fold, now: Instant) -> String {
    let mut out = String::new();
    exposition::render(&f.snapshot(now), &mut out);
    out
}

fn empty() -> Fold {
    Fold::new(Arc::new(Catalog::default_mapping())).with_dedup(10)
}

#[test]
fn round_trip_renders_the_same() {
    let (mut f, now) = sample_fold();
    let resume = Resume {
        partition: Partition { count: 3, index: 2 },
        stream: "SESSIONS".into(),
        stream_seq: 12345,
        legacy_acks: Vec::new(),
        ..Resume::default()
    };
    let bytes = f.encode(now, 1.7e9, &resume);
    let mut g = empty();
    let restored = g.restore(&bytes, now, 1.7e9).unwrap();
    assert_eq!(restored.resume, resume);
    assert_eq!(restored.namespaces, 3);
    assert!(restored.dropped_metrics.is_empty() && restored.rebucketed.is_empty());
    assert_eq!(render(&mut g, now), render(&mut f, now));
    // The de-duplication window came along, key and all.
    let dup =
        crate::event::decode(br#"{"id":"3","name":"MetricAcquiringDsEvent","namespace":"g"}"#)
            .unwrap();
    assert_eq!(
        g.apply(&dup, now, 1.7e9),
        Ok(super::super::Outcome::Duplicate)
    );
    // And a second round trip is byte-identical.
    assert_eq!(g.encode(now, 1.7e9, &resume), bytes);
}

/// A format-1 checkpoint as the first release with a state store wrote
/// it (`sample_fold().encode` at wall time 1.7e9). Never regenerate it:
/// later releases must go on loading exactly these bytes.
const FORMAT_1: &[u8] = include_bytes!("../../../tests/data/checkpoint-format-1.bin");

#[test]
fn format_1_checkpoints_load() {
    let mut g = empty();
    let now = Instant::now();
    let restored = g.restore(FORMAT_1, now, 1.7e9 + 60.0).unwrap();
    assert_eq!(restored.namespaces, 3);
    assert_eq!((restored.format, restored.resume.stream_seq), (1, 0));
    let text = render(&mut g, now);
    for line in [
        "session_ds_acquisition_wait_seconds_count{game_namespace=\"g\"} 2",
        "session_ds_acquisition_wait_seconds_sum{game_namespace=\"g\"} 2.402",
        "session_active_sessions{game_namespace=\"g\"} 42",
        "session_players_per_session_count{game_namespace=\"h\"} 1",
        "session_events_total{event=\"onPartyCreated\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
}

/// A format-2 checkpoint as the first ack-free release wrote it
/// (`sample_fold().encode` at wall time 1.7e9, partition 1 of 3 of
/// stream SESSIONS at sequence 4242). Never regenerate it.
const FORMAT_2: &[u8] = include_bytes!("../../../tests/data/checkpoint-format-2.bin");

#[test]
fn format_2_checkpoints_load_with_their_position() {
    let mut g = empty();
    let now = Instant::now();
    let restored = g.restore(FORMAT_2, now, 1.7e9 + 60.0).unwrap();
    assert_eq!(restored.format, 2);
    let want = Resume {
        partition: Partition { count: 3, index: 1 },
        stream: "SESSIONS".into(),
        stream_seq: 4242,
        legacy_acks: Vec::new(),
        ..Resume::default()
    };
    assert_eq!(restored.resume, want);
    let text = render(&mut g, now);
    assert!(text.contains("session_ds_acquisition_wait_seconds_count{game_namespace=\"g\"} 2\n"));
    // A partition that is not one is refused.
    let mut bad = FORMAT_2.to_vec();
    let tail = bad.len() - (1 + 1 + 1 + "SESSIONS".len() + 2);
    bad[tail + 1] = 3;
    let e = empty().restore(&bad, now, 1.7e9).unwrap_err();
    assert!(e.to_string().contains("partition 3 of 3"), "{e}");
}

/// A format-3 checkpoint as the first release with series starts wrote it
/// (`sample_fold().encode` at wall time 1.7e9, partition 2 of 3 of stream
/// SESSIONS at sequence 777; every series began at 1.7e9 - 30.5). Written
/// once by that release; never regenerate it.
const FORMAT_3: &str = "../../tests/data/checkpoint-format-3.bin";

#[test]
fn format_3_checkpoints_keep_series_starts() {
    let path = format!(
        "{}/tests/data/checkpoint-format-3.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let now = Instant::now();
    let resume = Resume {
        partition: Partition { count: 3, index: 2 },
        stream: "SESSIONS".into(),
        stream_seq: 777,
        legacy_acks: Vec::new(),
        ..Resume::default()
    };
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{FORMAT_3}: {e}"));
    let mut g = empty().with_clock(|| 1.9e9);
    let restored = g.restore(&bytes, now, 1.7e9 + 60.0).unwrap();
    assert_eq!((restored.format, restored.resume), (3, resume));
    let snap = g.snapshot(now);
    let starts: Vec<_> = snap
        .families
        .iter()
        .flat_map(|f| f.samples.iter().map(|s| s.start))
        .chain(snap.event_starts.iter().copied())
        .collect();
    // Counters and histograms keep their start; gauges have none.
    assert!(
        starts.iter().filter(|s| s.is_some()).count() >= 5,
        "{starts:?}"
    );
    assert!(
        starts.iter().flatten().all(|&t| t == 1.7e9 - 30.5),
        "{starts:?}"
    );
    // A new series after the restore starts by the clock.
    let ev =
        crate::event::decode(br#"{"name":"MetricAcquiringDsEvent","namespace":"new"}"#).unwrap();
    g.apply(&ev, now, 1.9e9).unwrap();
    let snap = g.snapshot(now);
    let i = snap
        .catalog
        .metrics
        .iter()
        .position(|m| m.name == "session_ds_acquisitions_total");
    let fam = &snap.families[i.unwrap()];
    let new = fam
        .samples
        .iter()
        .find(|s| snap.namespaces.get(s.namespace) == "new");
    assert_eq!(new.unwrap().start, Some(1.9e9));
}

/// A checkpoint from before slots (the format-4 fixture) taken apart
/// into slots, each restored into a fold of its own and adopted, renders
/// as the whole did: every namespace went to its slot, with the
/// checkpoint's position; the event counts stayed in the replica's own.
#[test]
fn checkpoints_from_before_slots_split_into_slots() {
    let path = format!(
        "{}/tests/data/checkpoint-format-4.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let now = Instant::now();
    let mut whole = empty();
    let restored = whole.restore(&bytes, now, 1.7e9 + 60.0).unwrap();
    let want = render(&mut whole, now);
    let held: Vec<u32> = (0..6).collect();
    let resume = Resume {
        slots: 6,
        held: held.clone(),
        ..restored.resume
    };
    let (record, states) = whole
        .image(now, 1.7e9 + 60.0, &resume)
        .encode_slots(|_| 4040);
    let mut again = empty();
    let r = again.restore(&record, now, 1.7e9 + 60.0).unwrap();
    assert_eq!((r.namespaces, r.resume.slots), (0, 6));
    for (slot, _, state) in states {
        let mut one = empty();
        let r = one.restore(&state, now, 1.7e9 + 60.0).unwrap();
        assert_eq!((r.resume.stream_seq, r.resume.held), (4040, vec![slot]));
        let names = one.snapshot(now).namespaces;
        for i in 0..names.len() {
            assert_eq!(crate::partition::slot_of(names.get(i), 6), slot);
        }
        again.adopt(slot, one);
    }
    assert_eq!(render(&mut again, now), want);
    // Letting slots go takes their namespaces; the replica's event
    // counts stay (a counter of its own must not go down).
    (0..6).for_each(|s| again.drop_slot(s, 6));
    let text = render(&mut again, now);
    assert!(!text.contains("game_namespace="), "{text}");
    assert!(text.contains("session_events_total{"), "{text}");
}

/// With slots each remembered event id goes with its namespace's slot,
/// hashed with the slot's key: every next holder (whatever its own key)
/// drops a retry of an event a previous holder folded; the id of an
/// event without a namespace stays in the replica's own checkpoint.
#[test]
fn remembered_ids_move_with_their_slot() {
    let now = Instant::now();
    let decode = crate::event::decode;
    let moved = br#"{"id":"m","name":"MetricAcquiringDsEvent","namespace":"g"}"#;
    let moved = decode(moved).unwrap();
    let kept = decode(br#"{"id":"k","name":"onPartyCreated"}"#).unwrap();
    let slot = crate::partition::slot_of("g", 6);
    let resume = Resume {
        slots: 6,
        held: vec![slot],
        ..Resume::default()
    };
    let slotted = || {
        let mut f = empty();
        f.set_slots(6);
        f
    };
    // `from` stores the slot; a fold with a key of its own takes it.
    let moved_on = |from: &Fold| {
        let (record, states) = from.image(now, 1.7e9, &resume).encode_slots(|_| 1);
        let mut next = slotted();
        let mut taken = next.empty_like();
        taken.restore(&states[0].2, now, 1.7e9).unwrap();
        next.adopt(slot, taken);
        (record, next)
    };
    let mut first = slotted();
    first.apply(&moved, now, 1.7e9).unwrap();
    first.apply(&kept, now, 1.7e9).unwrap();
    let (record, second) = moved_on(&first);
    let (_, mut third) = moved_on(&second);
    assert_eq!(
        third.apply(&moved, now, 1.7e9),
        Ok(crate::fold::Outcome::Duplicate)
    );
    assert_eq!(
        third.apply(&kept, now, 1.7e9),
        Ok(crate::fold::Outcome::Folded)
    );
    let mut own = slotted();
    own.restore(&record, now, 1.7e9).unwrap();
    assert_eq!(
        own.apply(&kept, now, 1.7e9),
        Ok(crate::fold::Outcome::Duplicate)
    );
    assert_eq!(
        own.apply(&moved, now, 1.7e9),
        Ok(crate::fold::Outcome::Folded)
    );
}

/// A format-4 checkpoint as the first release with SLIs wrote it
/// (`sample_fold().encode` at wall time 1.7e9, partition 0 of 1 of stream
/// SESSIONS at sequence 4040). Written once with `WRITE_FORMAT_4=1`;
/// never regenerate it.
#[test]
fn format_4_checkpoints_keep_slis_and_format_3_starts_them_at_zero() {
    let path = format!(
        "{}/tests/data/checkpoint-format-4.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let resume = Resume {
        stream: "SESSIONS".into(),
        stream_seq: 4040,
        ..Resume::default()
    };
    if std::env::var_os("WRITE_FORMAT_4").is_some() {
        let (f, now) = sample_fold();
        std::fs::write(&path, f.encode(now, 1.7e9, &resume)).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let now = Instant::now();
    let mut g = empty();
    let restored = g.restore(&bytes, now, 1.7e9 + 60.0).unwrap();
    assert_eq!((restored.format, restored.resume), (4, resume));
    let text = render(&mut g, now);
    for line in [
        "session_slo_events_total{game_namespace=\"g\",slo=\"ds-acquisition\",result=\"good\"} 2",
        "session_slo_events_total{game_namespace=\"h\",slo=\"ds-acquisition\",result=\"bad\"} 1",
        "session_slo_objective_ratio{game_namespace=\"h\",slo=\"ds-acquisition\"} 0.99",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    let snap = g.snapshot(now);
    assert!(snap.slis.iter().all(|s| s.sli.start == Some(1.7e9 - 30.5)));
    // Into a mapping whose SLO has another name: dropped, and said so.
    let yaml = crate::config::DEFAULT_MAPPING.replace("name: ds-acquisition", "name: ds");
    let mut g = Fold::new(Arc::new(Catalog::from_yaml(&yaml).unwrap()));
    let restored = g.restore(&bytes, now, 1.7e9).unwrap();
    assert_eq!(restored.dropped_slos, ["ds-acquisition"]);
    assert!(g.snapshot(now).slis.is_empty());
    // Format 3 had no SLIs: they begin at zero, with the next event.
    let mut g = empty().with_clock(|| 1.9e9);
    g.restore(FORMAT_2, now, 1.7e9).unwrap();
    assert!(g.snapshot(now).slis.is_empty());
    let ev = crate::event::decode(
        br#"{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"g","payload":{"message":"31000"}}"#,
    )
    .unwrap();
    g.apply(&ev, now, 1.9e9).unwrap();
    let s = g.snapshot(now).slis[0];
    assert_eq!((s.sli.good, s.sli.bad, s.sli.start), (0, 1, Some(1.9e9)));
}

#[test]
fn earlier_formats_restore_with_unknown_starts_and_clear_forgets_them() {
    let mut g = empty().with_clock(|| 1.9e9);
    g.restore(FORMAT_2, Instant::now(), 1.7e9).unwrap();
    let snap = g.snapshot(Instant::now());
    assert!(snap
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .all(|s| s.start.is_none()));
    assert!(snap.event_starts.iter().all(Option::is_none));
    // More events keep an unknown start unknown (the series is the same one)...
    let ev = crate::event::decode(br#"{"name":"MetricAcquiringDsEvent","namespace":"g"}"#).unwrap();
    g.apply(&ev, Instant::now(), 1.9e9).unwrap();
    let snap = g.snapshot(Instant::now());
    assert!(snap.event_starts.iter().all(Option::is_none));
    // ...and a reset series begins again, with a start.
    g.clear();
    g.apply(&ev, Instant::now(), 1.9e9).unwrap();
    let snap = g.snapshot(Instant::now());
    assert_eq!(snap.event_starts, [Some(1.9e9)]);
    assert!(snap
        .families
        .iter()
        .flat_map(|f| &f.samples)
        .all(|s| s.start == Some(1.9e9)));
}

/// Checkpoints the fuzzer made: each refused with a message, the fold left empty.
#[test]
fn impossible_states_are_refused() {
    let over = include_bytes!("../../../tests/data/fuzz/checkpoint-buckets-over-count.bin");
    let mut g = empty();
    let e = g.restore(over, Instant::now(), 1.8e9).unwrap_err();
    assert!(e.to_string().contains("bucket counts"), "{e}");
    assert_eq!(g.namespace_count(), 0);
    let over = include_bytes!("../../../tests/data/fuzz/checkpoint-event-count-overflow.bin");
    let e = g.restore(over, Instant::now(), 1.8e9).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    assert_eq!(g.namespace_count(), 0);
    let over = include_bytes!("../../../tests/data/fuzz/checkpoint-hdr-over-count.bin");
    let e = g.restore(over, Instant::now(), 1.8e9).unwrap_err();
    assert!(e.to_string().contains("records"), "{e}");
    assert_eq!(g.namespace_count(), 0);
    // A negative counter: the format-1 fixture with one counter's sign flipped.
    let (f, now) = sample_fold();
    let good = f.encode(now, 1.7e9, &Resume::default());
    let mut flipped = 0;
    for at in 0..good.len() - 16 {
        let mut bad = good.clone();
        // An i128 of small magnitude: flip it to its negative.
        let v = i128::from_le_bytes(bad[at..at + 16].try_into().unwrap());
        if v <= 0 || v > 1_000_000_000_000 || v % 1_000_000_000 != 0 {
            continue;
        }
        bad[at..at + 16].copy_from_slice(&(-v).to_le_bytes());
        let mut g = empty();
        if let Err(e) = g.restore(&bad, now, 1.7e9) {
            flipped += usize::from(e.to_string().contains("negative"));
        }
    }
    assert!(flipped > 0, "no negative counter or sum was refused");
}

#[test]
fn gauges_keep_aging_across_the_gap() {
    let (mut f, now) = sample_fold();
    let bytes = f.encode(now, 1.7e9, &Resume::default());
    let mut g = empty();
    // Restored 11 minutes later: the 10-minute gauge has expired.
    g.restore(&bytes, now, 1.7e9 + 660.0).unwrap();
    assert!(!render(&mut g, now).contains("session_active_sessions{"));
    assert!(render(&mut f, now).contains("session_active_sessions{game_namespace=\"g\"} 42"));
}

#[test]
fn changed_buckets_rebucket_and_unknown_metrics_drop() {
    let (f, now) = sample_fold();
    let bytes = f.encode(now, 1.7e9, &Resume::default());
    let yaml = crate::config::DEFAULT_MAPPING
        .replace(
            "[0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]",
            "[1, 2]",
        )
        .replace("session_ds_acquisitions_total", "session_ds_acquired_total");
    let mut g = Fold::new(Arc::new(Catalog::from_yaml(&yaml).unwrap()));
    let restored = g.restore(&bytes, now, 1.7e9).unwrap();
    assert_eq!(restored.rebucketed, ["session_ds_acquisition_wait_seconds"]);
    assert_eq!(restored.dropped_metrics, ["session_ds_acquisitions_total"]);
    let text = render(&mut g, now);
    assert!(text
        .contains("session_ds_acquisition_wait_seconds_bucket{game_namespace=\"g\",le=\"1\"} 1\n"));
    assert!(text
        .contains("session_ds_acquisition_wait_seconds_bucket{game_namespace=\"g\",le=\"2\"} 2\n"));
    assert!(!text.contains("session_ds_acquisitions_total{"));
}

#[test]
fn every_truncation_and_corruption_is_an_error_not_a_panic() {
    let (f, now) = sample_fold();
    let bytes = f.encode(now, 1.7e9, &Resume::default());
    for len in 0..bytes.len() {
        let mut g = empty();
        assert!(
            g.restore(&bytes[..len], now, 1.7e9).is_err(),
            "prefix {len}"
        );
        assert_eq!(g.namespace_count(), 0);
    }
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % b.len() as u64) as usize;
        b[at] ^= (x >> 32) as u8 | 1;
        let mut g = empty();
        let _ = g.restore(&b, now, 1.7e9);
    }
    let mut g = empty();
    let err = g.restore(b"{\"json\":1}", now, 1.7e9).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a session-exporter checkpoint"),
        "{err}"
    );
    let mut future = bytes.clone();
    future[4] = 9;
    assert!(g
        .restore(&future, now, 1.7e9)
        .unwrap_err()
        .to_string()
        .contains("format 9"));
}
