//! The binary's command-line surface: help, config checks, refusal of bad config.

mod common;

use common::*;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(EXPORTER).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--help` lists the flags by topic, in the order a reader scans them, and
/// each flag under the heading of its prefix.
#[test]
fn help_groups_the_flags_by_topic() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    let topics = [
        ("NATS:", "--nats."),
        ("JetStream:", "--nats.jetstream."),
        ("State store:", "--state."),
        ("Partitions:", "--partition."),
        ("Web:", "--web."),
        ("Mapping file:", "--config."),
        ("Shutdown:", "--shutdown."),
        ("Logging:", "--log."),
    ];
    let at: Vec<usize> = topics
        .iter()
        .map(|(h, _)| {
            out.lines()
                .position(|l| l == *h)
                .unwrap_or_else(|| panic!("no {h}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "headings out of order: {at:?}"
    );
    let mut heading = "";
    for line in out.lines() {
        if let Some((h, _)) = topics.iter().find(|(h, _)| line == *h) {
            heading = h;
        }
        let Some(flag) = line.trim_start().strip_prefix("--") else {
            continue;
        };
        let (_, prefix) = topics
            .iter()
            .find(|(h, _)| *h == heading)
            .expect("under a topic");
        let flag = format!("--{flag}");
        // NATS holds the connection flags and --nats.subject & co, not JetStream's.
        let jetstream = flag.starts_with("--nats.jetstream.");
        let fits = flag.starts_with(prefix) && (heading == "JetStream:" || !jetstream);
        assert!(fits, "{flag} under {heading}");
    }
}

#[test]
fn help_names_the_conventional_flags_and_their_env_vars() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--nats.url",
        "--web.listen-address",
        "--web.telemetry-path",
        "--config.file",
        "--log.level",
        "--log.format",
        "SESSION_EXPORTER_NATS_URL",
        "check-config",
        "simulate",
        "rules",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
}

#[test]
fn the_printed_default_and_the_example_config_both_validate() {
    let (code, default, _) = run(&["print-default-config"]);
    assert_eq!(code, 0);
    let dir = temp_dir("cli");
    let path = dir.join("default.yml");
    std::fs::write(&path, &default).unwrap();
    let (code, out, err) = run(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK (8 metrics"), "{out}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/mapping.yml");
    let (code, out, err) = run(&["check-config", example]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK (10 metrics"), "{out}");
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let dir = temp_dir("cli");
    let cases = [
        (
            "mappings:\n  - {event: A, metric: a_total, type: counter, bukets: [1]}\n",
            "bukets",
        ),
        (
            "mappings:\n  - {event: A, metric: a, type: counter}\n",
            "mappings[0].metric",
        ),
        (
            "limits: {max_namespaces: -1}\nmappings: []\n",
            "max_namespaces",
        ),
        (
            "mappings:\n  - {event: A, metric: a, type: histogram, buckets: [5, 1]}\n",
            "mappings[0].buckets",
        ),
        (
            "mappings:\n  - {event: A, metric: a_seconds, type: histogram, unit: milliseconds}\n\
             slos:\n  - {name: a, metric: a_seconds, threshold: 1s, objective: 0.9}\n",
            "slos[0].objective",
        ),
    ];
    for (i, (yaml, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.yml"));
        std::fs::write(&path, yaml).unwrap();
        let (code, _, err) = run(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{yaml}");
        assert!(err.contains(key), "check-config: {err} should name {key}");
        // The exporter itself refuses to start with it.
        let (code, _, err) = run(&[
            "--config.file",
            path.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ]);
        assert_eq!(code, 1, "{yaml}");
        assert!(err.contains(key), "start: {err} should name {key}");
        // And so does the rule generator.
        let (code, out, err) = run(&["rules", "--config.file", path.to_str().unwrap()]);
        assert_eq!((code, out.as_str()), (1, ""), "{yaml}");
        assert!(err.contains(key), "rules: {err} should name {key}");
    }
}

#[test]
fn starts_and_serves_with_nats_down() {
    // A socket that accepts but never speaks NATS, held for the whole test so
    // no parallel test's nats-server can take its port.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let exporter = Exporter::start(&format!("nats://127.0.0.1:{port}"), &[]);
    let m = exporter.metrics();
    assert_eq!(value(&m, "session_exporter_nats_connected"), Some(0.0));
    assert_eq!(exporter.get("/-/ready").0, 503);
    assert_eq!(exporter.get("/-/healthy").0, 200);
    promtool_check(&m);
    drop(silent);
}

#[test]
fn nats_credentials_are_used() {
    let nats = Nats::start_with(&["--user", "exporter", "--pass", "hunter2"]);
    let good = Exporter::start(
        &nats.url(),
        &["--nats.user", "exporter", "--nats.password", "hunter2"],
    );
    good.wait_ready();
    let bad = Exporter::start(
        &nats.url(),
        &["--nats.user", "exporter", "--nats.password", "wrong"],
    );
    // Refused by the server: never connected, still serving, not ready.
    wait_for(
        std::time::Duration::from_secs(10),
        "auth failure logged",
        || {
            bad.log()
                .to_lowercase()
                .contains("authorization")
                .then_some(())
        },
    );
    assert_eq!(bad.get("/-/ready").0, 503);
    assert_eq!(
        value(&bad.metrics(), "session_exporter_nats_connected"),
        Some(0.0)
    );

    let nats = Nats::start_with(&["--auth", "s3cr3t-token"]);
    let token = Exporter::start(&nats.url(), &["--nats.token", "s3cr3t-token"]);
    token.wait_ready();
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut child = Command::new(EXPORTER)
        .args([
            "--log.format",
            "json",
            "--web.listen-address",
            "127.0.0.1:0",
            "--nats.url",
            "nats://127.0.0.1:1",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|l| l.contains("listening"))
        .expect("a listening line");
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
    assert_eq!(v["level"], "INFO");
    assert!(
        v["fields"]["listen_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{line}"
    );
}

#[test]
fn a_comma_separated_nats_url_lists_a_cluster() {
    let nats = Nats::start();
    // The first server is down; the client finds the second.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("nats://127.0.0.1:{}", silent.local_addr().unwrap().port());
    drop(silent);
    let exporter = Exporter::start(&format!("{down}, {}", nats.url()), &[]);
    exporter.wait_ready();
}

/// Without --partition.index, a partition replica takes the StatefulSet
/// ordinal at the end of its host name; a name without one is refused at
/// start, before anything is read.
#[test]
fn the_partition_index_comes_from_the_host_name_or_the_start_is_refused() {
    let out = Command::new(EXPORTER)
        .args([
            "--partition.count",
            "3",
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .env("HOSTNAME", "exporter-without-ordinal")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--partition.index") && err.contains("exporter-without-ordinal"),
        "{err}"
    );
    let nats = Nats::start();
    let mut cmd = Command::new(EXPORTER);
    cmd.args(["--nats.url", &nats.url(), "--partition.count", "3"])
        .args(["--web.listen-address", "127.0.0.1:0"])
        .env("HOSTNAME", "session-exporter-1");
    let e = Exporter::spawn(cmd);
    e.wait_ready();
    let m = e.metrics();
    let info = "session_exporter_partition_info{count=\"3\",index=\"1\"} 1";
    assert!(m.lines().any(|l| l == info), "{m}");
    let (code, out, _) = run(&["partition", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--partition.count"), "{out}");
}
