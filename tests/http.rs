//! HTTP endpoints, reloads and shutdown, against the running binary.

mod common;

use common::*;
use std::time::Duration;

const BUCKETS: &str = "[0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]";

fn mapping(buckets: &str) -> String {
    session_exporter::config::DEFAULT_MAPPING.replace(BUCKETS, buckets)
}

#[test]
fn endpoints_answer_as_exporters_do() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &["--web.telemetry-path", "/custom"]);
    exporter.wait_ready();
    let (status, body) = exporter.get("/");
    assert_eq!(status, 200);
    assert!(body.contains("href=\"/custom\""), "{body}");
    assert_eq!(exporter.get("/custom").0, 200);
    assert_eq!(exporter.get("/metrics").0, 404);
    assert_eq!(exporter.get("/-/healthy"), (200, "Healthy\n".to_string()));
    assert_eq!(exporter.get("/-/ready"), (200, "Ready\n".to_string()));
    // Off without --web.enable-lifecycle, as in Prometheus.
    assert_eq!(http(&exporter.addr, "POST", "/-/reload").0, 403);
    let (_, m) = exporter.get("/custom");
    assert!(m.contains("session_exporter_build_info{"), "build_info");
    // Built from this checkout: the revision is its HEAD.
    let head = run_ok(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ],
    );
    let revision = format!("revision=\"{}\"", head.trim());
    assert!(m.contains(&revision), "{revision} in build_info");
    assert!(
        m.contains("process_resident_memory_bytes "),
        "process metrics"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_changes_buckets_keeps_data_and_refuses_bad_files() {
    let nats = Nats::start();
    let path = mapping_file("reload", BUCKETS, BUCKETS);
    let exporter = Exporter::start(
        &nats.url(),
        &[
            "--config.file",
            path.to_str().unwrap(),
            "--web.enable-lifecycle",
        ],
    );
    exporter.wait_ready();
    assert_eq!(exporter.get("/-/reload").0, 405, "POST only");
    let events = load_events(&examples_file());
    publish(&nats.url(), &events).await;
    exporter.wait_received(events.len() as u64);

    // New buckets apply to data already recorded.
    std::fs::write(&path, mapping("[1.5, 3]")).unwrap();
    assert_eq!(http(&exporter.addr, "POST", "/-/reload").0, 200);
    let m = exporter.metrics();
    let b = |le: &str| {
        value(&m, &format!("session_ds_acquisition_wait_seconds_bucket{{game_namespace=\"mygame\",le=\"{le}\"}}"))
    };
    assert_eq!((b("1.5"), b("3"), b("1")), (Some(1.0), Some(2.0), None));
    assert_eq!(
        value(
            &m,
            "session_ds_acquisitions_total{game_namespace=\"mygame\"}"
        ),
        Some(1.0)
    );

    // A broken file is refused; the running mapping stays.
    std::fs::write(&path, "mappings: [{event: A}]\n").unwrap();
    let (status, body) = http(&exporter.addr, "POST", "/-/reload");
    assert_eq!(status, 500);
    // The answer names the file, never its content; the log says why.
    assert!(body.contains(path.to_str().unwrap()), "{body}");
    assert!(!body.contains("event: A"), "{body}");
    assert!(exporter.log().contains("metric"), "the reason is logged");
    let m = exporter.metrics();
    assert_eq!(
        value(&m, "session_exporter_config_last_reload_successful"),
        Some(0.0)
    );
    assert!(m.contains("le=\"1.5\""));

    // SIGHUP reloads too.
    std::fs::write(&path, mapping(BUCKETS)).unwrap();
    exporter.signal("HUP");
    wait_for(Duration::from_secs(10), "SIGHUP reload", || {
        let m = exporter.metrics();
        (value(
            &m,
            "session_exporter_config_reloads_total{result=\"success\"}",
        ) == Some(2.0))
        .then_some(())
    });
    assert!(exporter.metrics().contains("le=\"0.25\""));
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let nats = Nats::start();
    let mut exporter = Exporter::start(&nats.url(), &[]);
    exporter.wait_ready();
    exporter.signal("TERM");
    assert_eq!(exporter.wait_exit(), Some(0));
    let log = exporter.log();
    assert!(
        log.contains("SIGTERM received; draining") && log.contains("stopped"),
        "{log}"
    );
}

#[test]
fn tls_and_basic_auth_from_the_web_config_file() {
    let (cert, key) = self_signed("tls");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = cert.with_file_name("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  alice: '{hash}'\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &["--web.config.file", web.to_str().unwrap()]);
    let url = format!("https://{}/metrics", exporter.addr);
    let ca = cert.to_str().unwrap();

    let (code, _) = curl(&["--cacert", ca, &url]);
    assert_eq!(code, "401", "no credentials");
    let (code, _) = curl(&["--cacert", ca, "-u", "alice:wrong", &url]);
    assert_eq!(code, "401", "wrong password");
    let (code, body) = curl(&["--cacert", ca, "-u", "alice:s3cret", &url]);
    assert_eq!(code, "200");
    assert!(body.contains("session_exporter_build_info"), "{body}");
    // Plain HTTP is not served on a TLS port.
    let (code, _) = curl(&[&format!("http://{}/metrics", exporter.addr)]);
    assert_ne!(code, "200");
}

#[test]
fn a_bad_web_config_is_refused_at_start() {
    let dir = temp_dir("webbad");
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: /missing.crt\n  key_file: /missing.key\n",
    )
    .unwrap();
    let out = std::process::Command::new(EXPORTER)
        .args([
            "--web.config.file",
            web.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls_server_config.cert_file"), "{err}");
}

#[test]
fn metrics_are_gzipped_when_asked() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    let url = format!("http://{}/metrics", exporter.addr);
    let headers = temp_dir("gzip").join("headers");
    let (code, body) = curl(&["--compressed", "-D", headers.to_str().unwrap(), &url]);
    assert_eq!(code, "200");
    let head = std::fs::read_to_string(&headers).unwrap().to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(
        body.contains("session_exporter_build_info"),
        "decompressed body"
    );
    promtool_check(&body);
    // Without Accept-Encoding: plain text.
    let (status, plain) = exporter.get("/metrics");
    assert_eq!(status, 200);
    assert!(plain.starts_with("# HELP"));
}

/// A TLS setting for NATS requires TLS: against a plaintext server the
/// exporter refuses to connect (and so never sends the password in clear).
#[test]
fn a_nats_tls_setting_refuses_a_plaintext_server() {
    let (cert, _) = self_signed("nats-tls");
    let nats = Nats::start();
    let exporter = Exporter::start(
        &nats.url(),
        &[
            "--nats.tls-ca-file",
            cert.to_str().unwrap(),
            "--nats.user",
            "u",
            "--nats.password",
            "secret-pw",
        ],
    );
    wait_for(
        Duration::from_secs(20),
        "a refused connection in the log",
        || {
            // The client tries TLS; the plaintext server cannot answer it.
            let log = exporter.log();
            (log.contains("NATS TLS required") && log.contains("connection attempt failed"))
                .then_some(())
        },
    );
    let m = exporter.metrics();
    assert_eq!(value(&m, "session_exporter_nats_connected"), Some(0.0));
    assert_ne!(exporter.get("/-/ready").0, 200);
}
