//! Every process stops when told, even with NATS gone: the drain is bounded
//! by `--shutdown.timeout`, and a second signal exits at once.

mod common;

use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use common::*;

/// The durable shape with its last checkpoint still to store.
fn durable(nats: &Nats, timeout: &str) -> Exporter {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(channels_stream(&nats.url(), "SESSIONS"));
    let events = load_events(&examples_file());
    rt.block_on(js_publish(&js, &events));
    let args = [
        "--nats.jetstream.stream",
        "SESSIONS",
        "--state.bucket",
        "STATE",
        "--state.key",
        "stopper",
        // No checkpoint before the signal: the last one is still to store.
        "--state.interval",
        "1h",
        "--shutdown.timeout",
        timeout,
    ];
    let e = Exporter::start(&nats.url(), &args);
    e.wait_received(events.len() as u64);
    e
}

fn exit_within(e: &mut Exporter, limit: Duration) -> (Duration, Option<i32>) {
    let t = Instant::now();
    let status = wait_for(limit, "the exporter to exit", || e.exited());
    (t.elapsed(), status.code())
}

#[test]
fn the_exporter_stops_within_its_bound_with_nats_gone() {
    let mut nats = Nats::start_jetstream();
    let mut e = durable(&nats, "2s");
    nats.stop();
    e.signal("TERM");
    let (took, code) = exit_within(&mut e, Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", e.log());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let log = e.log();
    assert!(
        log.contains("did not finish within the shutdown timeout"),
        "{log}"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut nats = Nats::start_jetstream();
    let mut e = durable(&nats, "1m");
    nats.stop();
    e.signal("TERM");
    wait_for(Duration::from_secs(10), "the drain", || {
        e.log().contains("SIGTERM received").then_some(())
    });
    e.signal("INT");
    let (took, code) = exit_within(&mut e, Duration::from_secs(10));
    assert_eq!(code, Some(130), "{}", e.log());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(e.log().contains("second signal"), "{}", e.log());
}

#[test]
fn the_simulator_stops_within_its_bound_with_nats_gone() {
    let mut nats = Nats::start();
    let mut cmd = Command::new(EXPORTER);
    cmd.args(["simulate", "--nats.url", &nats.url(), "--rate", "0"])
        .args(["--shutdown.timeout", "1s"]);
    let (mut sim, _, log) = spawn_and_find(cmd, |l| l.contains("simulating").then(String::new));
    nats.stop();
    let pid = sim.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    let status = wait_for(Duration::from_secs(10), "the simulator to exit", || {
        sim.try_wait().ok().flatten()
    });
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(status.success(), "{status:?}: {}", log.lock().unwrap());
}

#[test]
fn replay_stops_when_told_while_reading_a_pipe() {
    let mut replay = Command::new(EXPORTER)
        .args(["replay", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // stdin stays open: replay waits for more lines.
    let _stdin = replay.stdin.take();
    let pid = replay.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_for(Duration::from_secs(5), "replay to exit", || {
        replay.try_wait().ok().flatten()
    });
    assert!(!status.success(), "{status:?}");
}
