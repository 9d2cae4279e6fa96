//! The state store: an exporter reading a stream without acks and killed at
//! any moment (SIGKILL between checkpoints, aborted mid-checkpoint, aborted
//! between a fold and the checkpoint holding it) ends with exactly the values
//! of one that never died, and never serves a counter lower than it served
//! before. Truncated streams are counted, same-key writers fenced. Against
//! Debian's nats-server 2.9 and the pinned current release.

mod common;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use common::*;
use session_exporter::simulate::{unix_ms, Generator, Profile};

type Events = Vec<(String, Vec<u8>)>;

/// Every kind of event over six namespaces, 1% malformed, timestamps out of
/// order (so gauge updates arrive out of order), every 40th event published
/// twice (a publisher retry: same id).
fn corpus(n: usize) -> Events {
    let mut g = Generator::new(Profile {
        namespaces: 6,
        seed: 11,
        invalid_ratio: 0.01,
        ..Profile::default()
    });
    let base = unix_ms() - 120_000;
    let mut out = Vec::new();
    for i in 0..n as u64 {
        let e = g.next_event(base + (i * 7919) % 60_000);
        if i % 40 == 0 {
            out.push(e.clone());
        }
        out.push(e);
    }
    out
}

/// Counter-like series must never go down: a reset to Prometheus.
fn assert_not_lower(before: &[String], after: &[String], when: &str) {
    let after: std::collections::HashMap<String, f64> = series(after).into_iter().collect();
    for (k, v) in series(before) {
        let counter =
            ["_total", "_count", "_sum"].iter().any(|s| k.contains(s)) || k.contains("_bucket{");
        if counter && !k.contains("_window_") {
            let now = after.get(&k).copied().unwrap_or(0.0);
            assert!(now >= v, "{when}: {k} went from {v} to {now}");
        }
    }
}

/// The first page once the checkpoint is restored (before that, the domain
/// series are absent: stale to Prometheus, never lower); `None` if the
/// exporter died first (a failpoint reached before the test looked).
fn first_page(e: &mut Exporter) -> Option<Vec<String>> {
    wait_for(Duration::from_secs(20), "restored", || {
        if e.exited().is_some() {
            return Some(None);
        }
        let (status, body) = std::panic::catch_unwind(|| e.get("/metrics")).ok()?;
        let restored = sum(&body, "session_exporter_state_restores_total");
        (status == 200 && restored >= 1.0).then(|| Some(domain(&body)))
    })
}

/// What the exporter serves now, if it answers.
fn served(e: &Exporter) -> Option<Vec<String>> {
    let (status, body) = std::panic::catch_unwind(|| e.get("/metrics")).ok()?;
    (status == 200).then(|| domain(&body))
}

fn crash_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--nats.jetstream.stream",
        "SESSIONS",
        "--state.bucket",
        "STATE",
        "--state.key",
        "crashy-0",
        "--state.interval",
        "100ms",
    ];
    v.extend_from_slice(extra);
    v
}

/// How the exporter dies in one phase.
enum Death {
    /// SIGKILL once it has folded at least this many messages.
    KillAfter(u64),
    /// Abort at a failpoint of the checkpoint path.
    Failpoint(&'static str),
}

fn crash_and_compare(bin: &Path) {
    let version = nats_version(bin);
    let nats = Nats::start_jetstream_on(bin);
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = corpus(3000);
    let context = rt.block_on(channels_stream(&url, "SESSIONS"));
    let parts: Vec<&[(String, Vec<u8>)]> = events.chunks(events.len() / 6 + 1).collect();
    rt.block_on(js_publish(&context, parts[0]));

    let reference = Exporter::start(
        &url,
        &[
            "--nats.jetstream.stream",
            "SESSIONS",
            "--nats.jetstream.consumer",
            "reference",
        ],
    );
    let deaths = [
        Death::KillAfter(200),
        Death::Failpoint("checkpoint-before-manifest:1"),
        Death::KillAfter(50),
        Death::Failpoint("after-fold:3"),
        Death::KillAfter(1),
    ];
    let mut last_served: Vec<String> = Vec::new();
    for (i, death) in deaths.iter().enumerate() {
        let env: Vec<(&str, &str)> = match death {
            Death::Failpoint(p) => vec![("SESSION_EXPORTER_FAILPOINT", *p)],
            Death::KillAfter(_) => vec![],
        };
        if let Death::Failpoint(_) = death {
            rt.block_on(js_publish(&context, parts[i + 1]));
        }
        let mut e = Exporter::start_env(&url, &crash_args(&[]), &env);
        // The first page after a restart continues from the last one served.
        if let Some(first) = first_page(&mut e) {
            assert_not_lower(&last_served, &first, &format!("{version}: restart {i}"));
            last_served = first;
        }
        match death {
            Death::KillAfter(n) => {
                // Published a little at a time while it folds and
                // checkpoints, so the kill lands somewhere in between.
                let part = parts[i + 1].to_vec();
                let url = url.clone();
                let publisher = std::thread::spawn(move || {
                    let rt = tokio::runtime::Runtime::new().unwrap();
                    let js = rt.block_on(async {
                        jetstream::new(async_nats::connect(&url).await.unwrap())
                    });
                    for chunk in part.chunks(20) {
                        rt.block_on(js_publish(&js, chunk));
                        std::thread::sleep(Duration::from_millis(3));
                    }
                });
                wait_for(
                    Duration::from_secs(20),
                    "messages folded and checkpointed",
                    || {
                        assert!(e.exited().is_none(), "exporter died:\n{}", e.log());
                        let m = e.metrics();
                        last_served = domain(&m);
                        let received = value(&m, "session_exporter_messages_received_total")?;
                        let stored = value(&m, "session_exporter_state_checkpoints_total")?;
                        (received >= *n as f64 && stored >= 1.0).then_some(())
                    },
                );
                if let Some(m) = served(&e) {
                    last_served = m;
                }
                e.kill();
                publisher.join().unwrap();
            }
            Death::Failpoint(p) => {
                wait_for(Duration::from_secs(30), p, || {
                    if let Some(m) = served(&e) {
                        last_served = m;
                    }
                    e.exited()
                });
                assert!(e.log().contains("failpoint"), "{}", e.log());
            }
        }
    }
    rt.block_on(js_publish(
        &context,
        parts[deaths.len() + 1..].concat().as_slice(),
    ));
    let mut survivor = Exporter::start(&url, &crash_args(&[]));
    let first = first_page(&mut survivor).expect("the survivor is up");
    assert_not_lower(&last_served, &first, &format!("{version}: last restart"));

    reference.wait_received(events.len() as u64);
    let want = domain(&reference.metrics());
    assert!(
        want.len() > 100,
        "the reference folded the corpus: {want:?}"
    );
    // Once caught up and checkpointed, line for line what the immortal
    // reference shows.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let mut got = Vec::new();
    while std::time::Instant::now() < deadline {
        got = served(&survivor).unwrap_or_default();
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let missing: Vec<_> = want.iter().filter(|l| !got.contains(l)).collect();
    let extra: Vec<_> = got.iter().filter(|l| !want.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{version}: reference only {missing:#?}\nsurvivor only {extra:#?}\n{}",
        survivor.metrics()
    );
    let m = survivor.metrics();
    assert_eq!(
        value(
            &m,
            "session_exporter_state_restores_total{result=\"restored\"}"
        ),
        Some(1.0),
        "{}",
        survivor.log()
    );
    assert!(value(&m, "session_exporter_state_checkpoints_total").unwrap() >= 1.0);
}

#[test]
fn killed_at_any_moment_ends_exactly_like_an_exporter_that_never_died() {
    for bin in nats_servers() {
        crash_and_compare(&bin);
    }
}

#[test]
fn an_unreadable_checkpoint_is_refused_or_replaced_as_asked() {
    let nats = Nats::start_jetstream();
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        let js = jetstream::new(client);
        let kv = state_bucket(&js).await;
        kv.put(
            "bad",
            r#"{"format":1,"generation":3,"slot":"a","chunks":1,"bytes":4}"#.into(),
        )
        .await
        .unwrap();
        kv.put("bad.a.0", "nope".into()).await.unwrap();
        kv.put("foreign", "{\"hello\":1}".into()).await.unwrap();
    });
    for (key, says) in [
        ("bad", "does not decompress"),
        ("foreign", "manifest at key foreign"),
    ] {
        let args = ["--state.bucket", "STATE", "--state.key", key];
        let mut e = Exporter::start(&url, &args);
        assert_eq!(e.wait_exit(), Some(1), "{key}");
        let log = e.log();
        assert!(
            log.contains("unreadable checkpoint") && log.contains(says),
            "{log}"
        );
    }
    let args = [
        "--state.bucket",
        "STATE",
        "--state.key",
        "bad",
        "--state.on-invalid",
        "start-empty",
        "--state.interval",
        "100ms",
    ];
    let e = Exporter::start(&url, &args);
    e.wait_ready();
    let m = e.metrics();
    assert_eq!(
        value(
            &m,
            "session_exporter_state_restores_total{result=\"invalid\"}"
        ),
        Some(1.0)
    );
    // It replaces the bad checkpoint with a good one.
    publish_sync(&url, &load_events(&examples_file()));
    wait_for(Duration::from_secs(20), "a checkpoint", || {
        let m = e.metrics();
        (value(&m, "session_exporter_state_checkpoints_total")? >= 1.0).then_some(())
    });
}

/// The bucket `STATE`, made by hand (to put what a test wants in it).
async fn state_bucket(js: &jetstream::Context) -> jetstream::kv::Store {
    js.create_stream(jetstream::stream::Config {
        name: "KV_STATE".into(),
        subjects: vec!["$KV.STATE.>".into()],
        max_messages_per_subject: 1,
        allow_direct: true,
        allow_rollup: true,
        ..Default::default()
    })
    .await
    .unwrap();
    js.get_key_value("STATE").await.unwrap()
}

fn publish_sync(url: &str, events: &[(String, Vec<u8>)]) {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(publish(url, events));
}

#[test]
fn core_nats_keeps_counters_across_restarts() {
    let nats = Nats::start_jetstream();
    let url = nats.url();
    let events = load_events(&examples_file());
    let args = [
        "--state.bucket",
        "CORE",
        "--state.key",
        "core-0",
        "--state.interval",
        "100ms",
    ];
    let mut e = Exporter::start(&url, &args);
    e.wait_ready();
    publish_sync(&url, &events);
    let before = wait_for(
        Duration::from_secs(20),
        "a checkpoint with everything",
        || {
            let m = e.metrics();
            let n = value(&m, "session_exporter_messages_received_total")?;
            let pending = value(&m, "session_exporter_state_pending_messages")?;
            // (Pending is read before the received count: both 0 and all
            // can be seen a batch before the checkpoint holding it is served.)
            let served = value(
                &m,
                "session_ds_acquisitions_total{game_namespace=\"mygame\"}",
            );
            (n >= events.len() as f64 && pending == 0.0 && served.is_some()).then(|| domain(&m))
        },
    );
    let acquisitions = "session_ds_acquisitions_total{game_namespace=\"mygame\"}";
    assert_eq!(value(&before.join("\n"), acquisitions), Some(1.0));
    // A clean stop stores a last checkpoint; a restart serves it at once.
    e.signal("TERM");
    assert_eq!(e.wait_exit(), Some(0));
    let mut e = Exporter::start(&url, &args);
    e.wait_ready();
    assert_eq!(domain(&e.metrics()), before);
    // More events, then a SIGKILL: nothing served is lost.
    publish_sync(&url, &events);
    let served_now = wait_for(Duration::from_secs(20), "second batch served", || {
        let m = e.metrics();
        (value(&m, acquisitions)? == 2.0).then(|| domain(&m))
    });
    e.kill();
    let e = Exporter::start(&url, &args);
    e.wait_ready();
    assert_not_lower(&served_now, &domain(&e.metrics()), "core restart");
    assert_eq!(value(&e.metrics(), acquisitions), Some(2.0));
}

/// A stream that dropped messages (its limits) while the exporter was down:
/// the gap is counted exactly, in stream messages, logged with its range,
/// and reading goes on from the first message the stream still has.
#[test]
fn a_truncated_stream_is_counted_not_silent() {
    for bin in nats_servers() {
        let nats = Nats::start_jetstream_on(&bin);
        let url = nats.url();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let js = rt.block_on(async {
            let js = jetstream::new(async_nats::connect(&url).await.unwrap());
            js.create_stream(jetstream::stream::Config {
                name: "SMALL".into(),
                subjects: vec!["mpv2SessionHistory.>".into()],
                max_messages: 100,
                ..Default::default()
            })
            .await
            .unwrap();
            js
        });
        let acquisition = |i: usize| {
            let body =
                format!(r#"{{"id":"t{i}","name":"MetricAcquiringDsEvent","namespace":"trunc"}}"#);
            (
                "mpv2SessionHistory.MetricAcquiringDsEvent".to_string(),
                body.into_bytes(),
            )
        };
        let events: Vec<_> = (0..250).map(acquisition).collect();
        rt.block_on(js_publish(&js, &events[..50]));
        let args = [
            "--nats.jetstream.stream",
            "SMALL",
            "--state.bucket",
            "STATE",
            "--state.key",
            "trunc-0",
            "--state.interval",
            "100ms",
        ];
        let mut e = Exporter::start(&url, &args);
        e.wait_received(50);
        e.signal("TERM");
        assert_eq!(e.wait_exit(), Some(0), "{}", e.log());
        // 200 more while it is down: the stream keeps the last 100 (151..250).
        rt.block_on(js_publish(&js, &events[50..]));
        let e = Exporter::start(&url, &args);
        let counter = "session_ds_acquisitions_total{game_namespace=\"trunc\"}";
        let m = wait_for(Duration::from_secs(20), "the rest folded", || {
            let m = e.metrics();
            (value(&m, counter)? >= 150.0).then_some(m)
        });
        let version = nats_version(&bin);
        assert_eq!(value(&m, counter), Some(150.0), "{version}: {m}");
        let lost = "session_exporter_events_lost_total{reason=\"stream_truncated\"}";
        assert_eq!(value(&m, lost), Some(100.0), "{version}: {m}");
        let log = e.log();
        assert!(
            log.contains("from_sequence=51") && log.contains("to_sequence=150"),
            "{version}: {log}"
        );
    }
}

/// Two processes with one `--state.key`: checkpoints are written over the
/// revision a process last read or wrote, so the one behind exits non-zero
/// naming the key, and the other's checkpoint is never overwritten.
#[test]
fn a_second_writer_of_one_key_is_fenced_off() {
    let nats = Nats::start_jetstream();
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(channels_stream(&url, "SESSIONS"));
    let args = |interval: &'static str| {
        [
            "--nats.jetstream.stream",
            "SESSIONS",
            "--state.bucket",
            "STATE",
            "--state.key",
            "shared-key",
            "--state.interval",
            interval,
        ]
    };
    let events = corpus(400);
    rt.block_on(js_publish(&js, &events[..200]));
    let first = Exporter::start(&url, &args("100ms"));
    wait_for(Duration::from_secs(20), "a checkpoint", || {
        let m = first.metrics();
        (value(&m, "session_exporter_state_checkpoints_total")? >= 1.0
            && value(&m, "session_exporter_state_pending_messages")? == 0.0)
            .then_some(())
    });
    // The second restores that checkpoint, then the first writes on.
    let mut second = Exporter::start(&url, &args("1s"));
    second.wait_ready();
    rt.block_on(js_publish(&js, &events[200..]));
    let code = second.wait_exit();
    assert_eq!(code, Some(1), "{}", second.log());
    let log = second.log();
    assert!(
        log.contains("key shared-key") && log.contains("share --state.key"),
        "{log}"
    );
    // The first goes on storing its checkpoints.
    let before = value(&first.metrics(), "session_exporter_state_checkpoints_total").unwrap();
    rt.block_on(js_publish(&js, &corpus(10)));
    wait_for(Duration::from_secs(20), "the first stores on", || {
        let m = first.metrics();
        (value(&m, "session_exporter_state_checkpoints_total")? > before).then_some(())
    });
    let m = first.metrics();
    assert_eq!(
        value(&m, "session_exporter_state_checkpoint_failures_total"),
        Some(0.0),
        "{m}"
    );
}

/// A stream that removes what is acknowledged (or has no interest) cannot be
/// read from a checkpointed position: refused at start, saying why.
#[test]
fn a_work_queue_stream_is_refused_with_a_state_store() {
    let nats = Nats::start_jetstream();
    let url = nats.url();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        js.create_stream(jetstream::stream::Config {
            name: "WORK".into(),
            subjects: vec!["mpv2SessionHistory.>".into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let args = [
        "--nats.jetstream.stream",
        "WORK",
        "--state.bucket",
        "STATE",
        "--state.key",
        "w",
    ];
    let mut e = Exporter::start(&url, &args);
    assert_eq!(e.wait_exit(), Some(1));
    let log = e.log();
    assert!(
        log.contains("stream WORK: retention WorkQueue") && log.contains("limits retention"),
        "{log}"
    );
}

/// A checkpoint of format 1 (the acking design) holds no stream position: the
/// exporter sends the acks it lists, then reads on after the old durable
/// consumer's ack floor, on top of the restored fold.
#[test]
fn a_format_1_checkpoint_reads_on_after_the_old_consumers_ack_floor() {
    use std::io::Write;
    let nats = Nats::start_jetstream();
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let acquisition = |i: usize| {
        let body = format!(r#"{{"id":"old{i}","name":"MetricAcquiringDsEvent","namespace":"g"}}"#);
        (
            "mpv2SessionHistory.MetricAcquiringDsEvent".to_string(),
            body.into_bytes(),
        )
    };
    let events: Vec<_> = (0..10).map(acquisition).collect();
    rt.block_on(async {
        let js = channels_stream(&url, "SESSIONS").await;
        js_publish(&js, &events).await;
        // The old design's durable consumer: the first four acked.
        let consumer: jetstream::consumer::PullConsumer = js
            .get_stream("SESSIONS")
            .await
            .unwrap()
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("session-exporter".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batch = consumer.fetch().max_messages(4).messages().await.unwrap();
        use futures_util::StreamExt;
        while let Some(m) = batch.next().await {
            m.unwrap().double_ack().await.unwrap();
        }
        let kv = state_bucket(&js).await;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(include_bytes!("data/checkpoint-format-1.bin"))
            .unwrap();
        let chunk = gz.finish().unwrap();
        let manifest = format!(
            r#"{{"format":1,"generation":7,"slot":"a","chunks":1,"bytes":{}}}"#,
            chunk.len()
        );
        kv.put("old.a.0", chunk.into()).await.unwrap();
        kv.put("old", manifest.into()).await.unwrap();
    });
    let args = [
        "--nats.jetstream.stream",
        "SESSIONS",
        "--state.bucket",
        "STATE",
        "--state.key",
        "old",
        "--state.interval",
        "100ms",
    ];
    let e = Exporter::start(&url, &args);
    let acquisitions = "session_ds_acquisitions_total{game_namespace=\"g\"}";
    // Six come after the ack floor (4), on top of the fixture's counts.
    let m = wait_for(Duration::from_secs(20), "the rest folded", || {
        let m = e.metrics();
        (value(&m, acquisitions)? >= 6.0).then_some(m)
    });
    assert_eq!(value(&m, acquisitions), Some(6.0), "{m}");
    let by_name = "session_events_total{event=\"MetricAcquiringDsEvent\"}";
    assert_eq!(value(&m, by_name), Some(7.0), "{m}");
    assert!(
        m.contains("session_events_total{event=\"onPartyCreated\"} 1"),
        "{m}"
    );
    assert!(e.log().contains("after_sequence=4"), "{}", e.log());
}

/// The ack-free reader is an ordered consumer: a gap in its consumer
/// sequence (here the client drops messages, its buffer holding 8) or a
/// consumer that is gone (deleted on the server) makes it anew from the
/// position, and nothing is lost or counted twice.
#[test]
fn the_ordered_reader_heals_dropped_messages_and_a_deleted_consumer() {
    for bin in nats_servers() {
        let version = nats_version(&bin);
        let nats = Nats::start_jetstream_on(&bin);
        let url = nats.url();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let events = corpus(1500);
        let half = events.len() / 2;
        let context = rt.block_on(channels_stream(&url, "SESSIONS"));
        rt.block_on(js_publish(&context, &events[..half]));
        let reference = Exporter::start(
            &url,
            &[
                "--nats.jetstream.stream",
                "SESSIONS",
                "--nats.jetstream.consumer",
                "reference",
            ],
        );
        let args = [
            "--nats.jetstream.stream",
            "SESSIONS",
            "--state.bucket",
            "STATE",
            "--state.key",
            "heal",
            "--nats.subscription-capacity",
            "64",
        ];
        let healing = Exporter::start(&url, &args);
        let m = wait_for(Duration::from_secs(40), "the first half read", || {
            let m = healing.metrics();
            let got = value(&m, "session_exporter_messages_received_total")?;
            (got >= half as f64).then_some(m)
        });
        let drops = value(&m, "session_exporter_nats_slow_consumer_drops_total").unwrap_or(0.0);
        assert!(drops > 0.0, "{version}: the client dropped nothing: {m}");
        assert!(
            healing.log().contains("a gap in the consumer's sequence"),
            "{version}: {}",
            healing.log()
        );

        // Delete the reader's consumer under it, then publish the rest.
        rt.block_on(async {
            use futures_util::StreamExt;
            let stream = context.get_stream("SESSIONS").await.unwrap();
            let names: Vec<String> = stream
                .consumer_names()
                .filter_map(|n| async move { n.ok() })
                .collect()
                .await;
            for name in names.iter().filter(|n| *n != "reference") {
                stream.delete_consumer(name).await.unwrap();
            }
        });
        rt.block_on(js_publish(&context, &events[half..]));
        wait_for(Duration::from_secs(40), "the rest read", || {
            let m = healing.metrics();
            (value(&m, "session_exporter_messages_received_total")? >= events.len() as f64)
                .then_some(())
        });
        assert!(
            healing.log().contains("no message or heartbeat"),
            "{version}: {}",
            healing.log()
        );
        assert_partitions_equal(&version, &reference, &[healing], events.len(), false);
    }
}
