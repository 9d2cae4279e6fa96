//! Failover: a 3-node NATS cluster on loopback with a replicated (R3) stream
//! and an R3 state bucket. The node the exporter is connected to is killed;
//! the exporter reconnects to another within 2 s, JetStream consumption
//! resumes, and the totals stay exact (equal to a reference exporter on a
//! node that stayed up).

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

fn failover(bin: &Path) {
    let version = nats_version(bin);
    let mut nodes = Nats::start_cluster(bin, 3);
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let js = jetstream::new(async_nats::connect(&urls[1]).await.unwrap());
        // The cluster elects its JetStream meta leader first: retry until then.
        let deadline = Instant::now() + Duration::from_secs(30);
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
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "{version}: no R3 stream: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let first = events(2000, 1);
    rt.block_on(publish_when_ready(&urls[1], &first));

    let args = |consumer: &'static str| {
        vec![
            "--nats.jetstream.stream",
            "SESSIONS",
            "--nats.jetstream.consumer",
            consumer,
            "--nats.jetstream.ack-wait",
            "3s",
        ]
    };
    let mut with_state = args("failover");
    with_state.extend([
        "--state.bucket",
        "STATE",
        "--state.key",
        "failover-0",
        "--state.replicas",
        "3",
        "--state.interval",
        "200ms",
    ]);
    // Only node 0 is given: the others are learnt from the cluster.
    let exporter = Exporter::start(&urls[0], &with_state);
    let reference = Exporter::start(&urls[2], &args("reference"));
    reference.wait_received(first.len() as u64);
    wait_for(Duration::from_secs(30), "first half folded", || {
        let m = exporter.metrics();
        (value(&m, "session_exporter_messages_received_total")? >= first.len() as f64).then_some(())
    });

    nodes[0].stop();
    let killed = Instant::now();
    let reconnect = wait_for(Duration::from_secs(20), "reconnected", || {
        let m = exporter.metrics();
        let back = value(&m, "session_exporter_nats_connected")? == 1.0
            && value(&m, "session_exporter_nats_reconnects_total")? >= 1.0;
        back.then(|| killed.elapsed())
    });
    eprintln!("{version}: reconnected {reconnect:?} after its node was killed");
    assert!(
        reconnect <= Duration::from_secs(2),
        "{version}: reconnect took {reconnect:?}"
    );

    let second = events(2000, 2);
    rt.block_on(publish_when_ready(&urls[1], &second));
    let total = (first.len() + second.len()) as u64;
    reference.wait_received(total);
    let want = domain(&reference.metrics());
    let got = wait_for(Duration::from_secs(60), "the exporter caught up", || {
        let got = domain(&exporter.metrics());
        (got == want).then_some(got)
    });
    assert_eq!(got, want, "{version}");
}

#[test]
fn losing_the_connected_node_loses_nothing() {
    for bin in nats_servers() {
        failover(&bin);
    }
}
