//! Failover: a 3-node NATS cluster on loopback with a replicated (R3) stream
//! and an R3 state bucket, read by three partition replicas. The node they
//! are connected to is killed; each reconnects to another within 2 s, reading
//! resumes, and together they stay exact (equal, series by series, to a
//! reference exporter on a node that stayed up).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use session_exporter::seed;
use session_exporter::simulate::{unix_ms, Generator, Profile};

fn events(n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut g = Generator::new(Profile {
        namespaces: 5,
        seed,
        ..Profile::default()
    });
    let now = unix_ms();
    (0..n).map(|_| g.next_event(now)).collect()
}

/// Publish through `url` once the stream answers there (after a node dies
/// its replicas elect new leaders).
async fn publish_when_ready(url: &str, events: &[(String, Vec<u8>)]) {
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.get_stream("SESSIONS").await.is_err() {
        assert!(Instant::now() < deadline, "stream never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    js_publish(&js, events).await;
}

/// Every node's log, for a cluster that did not form.
fn node_logs(nodes: &[Nats]) -> String {
    let logs = nodes.iter().enumerate();
    logs.map(|(i, n)| format!("--- n{i}\n{}", n.log.lock().unwrap()))
        .collect()
}

fn failover(bin: &Path) {
    let version = nats_version(bin);
    let mut nodes = Nats::start_cluster(bin, 3);
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&urls[1]).await.unwrap());
        // The cluster elects its JetStream meta leader and learns its peers
        // first (about 10 s on an idle machine, longer under load): retry.
        let started = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let made = js
                .create_stream(jetstream::stream::Config {
                    name: "SESSIONS".into(),
                    subjects: seed::CHANNELS.iter().map(|c| format!("{c}.>")).collect(),
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            match made {
                Ok(_) => {
                    eprintln!("{version}: R3 stream after {:?}", started.elapsed());
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{version}: no R3 stream: {e}\n{}",
                    node_logs(&nodes)
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let first = events(2000, 1);
    rt.block_on(publish_when_ready(&urls[1], &first));

    // Only node 0 is given: the others are learnt from the cluster.
    let replicas: Vec<Exporter> = (0..3)
        .map(|i| {
            let index = i.to_string();
            let key = format!("failover-{i}");
            let args = [
                "--nats.jetstream.stream",
                "SESSIONS",
                "--partition.count",
                "3",
                "--partition.index",
                &index,
                "--nats.broadcast-subject",
                "",
                "--state.bucket",
                "STATE",
                "--state.key",
                &key,
                "--state.replicas",
                "3",
                "--state.interval",
                "200ms",
            ];
            Exporter::start(&urls[0], &args)
        })
        .collect();
    let reference = Exporter::start(&urls[2], &["--nats.jetstream.stream", "SESSIONS"]);
    reference.wait_received(first.len() as u64);
    for r in &replicas {
        wait_for(Duration::from_secs(30), "first half checkpointed", || {
            let m = r.metrics();
            (value(&m, "session_exporter_state_pending_messages")? == 0.0
                && value(&m, "session_exporter_state_checkpoints_total")? >= 1.0)
                .then_some(())
        });
    }

    nodes[0].stop();
    let killed = Instant::now();
    for r in &replicas {
        let reconnect = wait_for(Duration::from_secs(20), "reconnected", || {
            let m = r.metrics();
            let back = value(&m, "session_exporter_nats_connected")? == 1.0
                && value(&m, "session_exporter_nats_reconnects_total")? >= 1.0;
            back.then(|| killed.elapsed())
        });
        eprintln!("{version}: reconnected {reconnect:?} after its node was killed");
        assert!(
            reconnect <= Duration::from_secs(2),
            "{version}: reconnect took {reconnect:?}"
        );
    }

    let second = events(2000, 2);
    rt.block_on(publish_when_ready(&urls[1], &second));
    let total = first.len() + second.len();
    assert_partitions_equal(&version, &reference, &replicas, total, false);
}

#[test]
fn losing_the_connected_node_loses_nothing() {
    for bin in nats_servers() {
        failover(&bin);
    }
}
