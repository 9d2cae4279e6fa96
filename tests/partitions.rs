//! Partition replicas: each folds only the namespaces that hash to it, so
//! together they equal one exporter that sees everything, series by series
//! (the gauge included, with no broadcast), each namespace on exactly one
//! replica. The hash is nats-server's own `partition()`; where the subjects
//! carry the partition, a replica reads only its share. Crashes of replicas
//! at random points change nothing in the end. Against Debian's nats-server
//! 2.9 and the pinned current release.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use common::*;
use futures_util::StreamExt;
use session_exporter::partition;
use session_exporter::simulate::unix_ms;

type Events = Vec<(String, Vec<u8>)>;

/// 30 namespaces, every kind of event, 1% malformed, timestamps out of
/// order (so the latest gauge value is not the last published), publisher
/// retries (same id).
fn corpus(n: u64, seed: u64) -> Events {
    churned_corpus(n, 30, seed)
}

fn partition_args(i: usize, extra: &[&'static str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--partition.count",
        "3",
        "--partition.index",
        &i.to_string(),
        "--nats.broadcast-subject",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start(url: &str, args: &[String]) -> Exporter {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Exporter::start(url, &args)
}

#[test]
fn core_nats_partitions_equal_one_exporter() {
    let nats = Nats::start();
    let url = nats.url();
    let events = corpus(6000, 3);
    let reference = Exporter::start(&url, &[]);
    let replicas: Vec<Exporter> = (0..3)
        .map(|i| start(&url, &partition_args(i, &[])))
        .collect();
    reference.wait_ready();
    replicas.iter().for_each(Exporter::wait_ready);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(publish(&url, &events));
    assert_partitions_equal("core NATS", &reference, &replicas, events.len(), false);
    // Each replica skipped what the others folded.
    let skipped: f64 = replicas
        .iter()
        .map(|r| {
            sum(
                &r.metrics(),
                "session_exporter_partition_skipped_messages_total",
            )
        })
        .sum();
    assert_eq!(skipped, 2.0 * events.len() as f64);
}

/// Three partition replicas with a state store, killed and restarted at
/// random points while events arrive; no served counter ever goes down, and
/// in the end they equal the reference that never died.
fn crashing_partitions(bin: &Path) {
    let version = nats_version(bin);
    let nats = Nats::start_jetstream_on(bin);
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(channels_stream(&url, "SESSIONS"));
    let events = corpus(6000, 7);
    let reference = Exporter::start(&url, &["--nats.jetstream.stream", "SESSIONS"]);
    let args = |i: usize| {
        let key: &'static str = ["part-0", "part-1", "part-2"][i];
        partition_args(
            i,
            &[
                "--nats.jetstream.stream",
                "SESSIONS",
                "--state.bucket",
                "STATE",
                "--state.key",
                key,
                "--state.interval",
                "50ms",
            ],
        )
    };
    let mut replicas: Vec<Exporter> = (0..3).map(|i| start(&url, &args(i))).collect();
    let mut served: Vec<HashMap<String, f64>> = vec![HashMap::new(); 3];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ unix_ms();
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut kills = 0;
    for chunk in events.chunks(100) {
        rt.block_on(js_publish(&js, chunk));
        for (i, r) in replicas.iter().enumerate() {
            let Some(page) = page_of(r) else { continue };
            assert_not_lower(&served[i], &page, &format!("{version}: replica {i}"));
            served[i].extend(page);
        }
        if rand(4) == 0 {
            let i = rand(3) as usize;
            replicas[i].kill();
            kills += 1;
            replicas[i] = start(&url, &args(i));
        }
    }
    assert!(kills > 5, "{version}: only {kills} kills");
    let what = format!("{version}, {kills} kills");
    assert_partitions_equal(&what, &reference, &replicas, events.len(), true);
}

fn page_of(e: &Exporter) -> Option<HashMap<String, f64>> {
    let (status, body) = std::panic::catch_unwind(|| e.get("/metrics")).ok()?;
    (status == 200).then(|| series(&domain(&body)).into_iter().collect())
}

fn assert_not_lower(before: &HashMap<String, f64>, after: &HashMap<String, f64>, when: &str) {
    if after.is_empty() {
        return; // not restored yet: absent (stale), never lower
    }
    for (k, v) in before {
        let counter =
            ["_total", "_count", "_sum"].iter().any(|s| k.contains(s)) || k.contains("_bucket{");
        if counter && !k.contains("_window_") {
            let now = after.get(k).copied().unwrap_or(0.0);
            assert!(now >= *v, "{when}: {k} went from {v} to {now}");
        }
    }
}

#[test]
fn partition_replicas_killed_at_random_end_equal_one_exporter() {
    for bin in nats_servers() {
        crashing_partitions(&bin);
    }
}

/// Where the server partitions the subjects (an account mapping to
/// `{{partition(3,1)}}`, the recipe in the README), each replica reads only
/// its own share of the stream and skips nothing.
fn server_side(bin: &Path) {
    let version = nats_version(bin);
    let conf = temp_dir("mapping").join("partitions.conf");
    std::fs::write(&conf, include_str!("../deploy/nats/partitions.conf")).unwrap();
    let nats = Nats::start_jetstream_with(bin, &["-c", conf.to_str().unwrap()]);
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        js.create_stream(jetstream::stream::Config {
            name: "PARTITIONED".into(),
            subjects: vec!["sessions.*.*.*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js
    });
    let events = by_namespace_subject(corpus(3000, 9));
    rt.block_on(js_publish(&js, &events));
    let reference = Exporter::start(&url, &["--nats.jetstream.stream", "PARTITIONED"]);
    let replicas: Vec<Exporter> = (0..3)
        .map(|i| {
            let key: &'static str = ["server-0", "server-1", "server-2"][i];
            start(
                &url,
                &partition_args(
                    i,
                    &[
                        "--nats.jetstream.stream",
                        "PARTITIONED",
                        "--partition.filter-subject",
                        "sessions.{index}.*.*",
                        "--state.bucket",
                        "STATE",
                        "--state.key",
                        key,
                        "--state.interval",
                        "100ms",
                    ],
                ),
            )
        })
        .collect();
    assert_partitions_equal(&version, &reference, &replicas, events.len(), false);
    // Each message reached one replica only, and none was skipped.
    let mut reads = Vec::new();
    for r in &replicas {
        let m = r.metrics();
        reads.push(sum(&m, "session_exporter_messages_received_total"));
        let skipped = sum(&m, "session_exporter_partition_skipped_messages_total");
        assert_eq!(skipped, 0.0, "{version}");
    }
    let total = events.len() as f64;
    assert_eq!(reads.iter().sum::<f64>(), total, "{version}: {reads:?}");
    assert!(reads.iter().all(|&r| r < total), "{version}: {reads:?}");
}

#[test]
fn server_side_partitions_read_a_share_each() {
    for bin in nats_servers() {
        server_side(&bin);
    }
}

/// The exporter's hash is the one nats-server's `partition()` mapping applies:
/// namespaces mapped by the server land where `session-exporter partition`
/// says.
#[test]
fn the_hash_is_nats_servers_partition() {
    for bin in nats_servers() {
        let conf = temp_dir("hash").join("hash.conf");
        std::fs::write(
            &conf,
            "mappings = {\n  \"ns.*\": \"p3.{{partition(3,1)}}.{{wildcard(1)}}\"\n  \"ns7.*\": \"p7.{{partition(7,1)}}.{{wildcard(1)}}\"\n}\n",
        )
        .unwrap();
        let nats = Nats::start_jetstream_with(&bin, &["-c", conf.to_str().unwrap()]);
        let names: Vec<String> = (0..200)
            .map(|i| format!("game-{i}_{}", ["eu", "us", "ap"][i % 3]))
            .collect();
        let got = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let client = async_nats::connect(nats.url()).await.unwrap();
            let mut sub = client.subscribe("p3.>").await.unwrap();
            let mut sub7 = client.subscribe("p7.>").await.unwrap();
            client.flush().await.unwrap();
            for n in &names {
                client.publish(format!("ns.{n}"), "x".into()).await.unwrap();
                client
                    .publish(format!("ns7.{n}"), "x".into())
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
            let mut got = Vec::new();
            for s in [&mut sub, &mut sub7] {
                for _ in 0..names.len() {
                    let m = tokio::time::timeout(Duration::from_secs(10), s.next())
                        .await
                        .unwrap()
                        .unwrap();
                    got.push(m.subject.to_string());
                }
            }
            got
        });
        let version = nats_version(&bin);
        for subject in got {
            let mut parts = subject.splitn(3, '.');
            let count: u32 = parts.next().unwrap()[1..].parse().unwrap();
            let index: u32 = parts.next().unwrap().parse().unwrap();
            let ns = parts.next().unwrap();
            assert_eq!(partition::of(ns, count), index, "{version}: {subject}");
        }
        // And the subcommand prints the same.
        let out = run_ok(
            env!("CARGO_BIN_EXE_session-exporter"),
            &["partition", "--partition.count", "3", &names[0], &names[1]],
        );
        let want = format!(
            "{}\t{}\n{}\t{}\n",
            names[0],
            partition::of(&names[0], 3),
            names[1],
            partition::of(&names[1], 3)
        );
        assert_eq!(out, want);
    }
}
