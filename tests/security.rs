//! The audit's findings, one test each, against the running binary: auth
//! that tells nothing and cannot be flooded, secrets that never reach a log,
//! an error or a response, a lifecycle endpoint that is off by default, and
//! TLS files that follow their rotation.

mod common;

use base64::Engine;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A web config with `alice`'s password hashed at `cost`.
fn web_config(tag: &str, cost: u32) -> std::path::PathBuf {
    let hash = bcrypt::hash("s3cret", cost).unwrap();
    let web = temp_dir(tag).join("web.yml");
    std::fs::write(&web, format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
    web
}

fn get_as(addr: &str, path: &str, authorization: &str) -> u16 {
    http_with(addr, "GET", path, &[("Authorization", authorization)]).0
}

/// A command's output; killed by its PID, and the test failed, if it runs
/// past `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// An unknown user costs what a known user with a wrong password costs.
#[test]
fn unknown_users_take_as_long_as_wrong_passwords() {
    let web = web_config("timing", 10);
    let nats = Nats::start();
    let e = Exporter::start(&nats.url(), &["--web.config.file", web.to_str().unwrap()]);
    let time = |user: &str, i: usize| {
        // A new password each time: nothing remembered answers for it.
        let t = Instant::now();
        assert_eq!(
            get_as(&e.addr, "/-/healthy", &basic(user, &format!("guess-{i}"))),
            401
        );
        t.elapsed()
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..5 {
        known.push(time("alice", i));
        unknown.push(time("mallory", i));
    }
    let (k, u) = (median(known), median(unknown));
    let ratio = u.as_secs_f64() / k.as_secs_f64();
    eprintln!("wrong password {k:?}, unknown user {u:?}: ratio {ratio:.2}");
    assert!((0.5..2.0).contains(&ratio), "unknown/known = {ratio:.2}");
    // Lowercase `basic` is the same scheme (RFC 7617).
    let lower = basic("alice", "s3cret").replacen("Basic", "basic", 1);
    assert_eq!(get_as(&e.addr, "/-/healthy", &lower), 200);
}

/// 200 concurrent wrong passwords: a scraper with valid credentials stays
/// fast, and the flood gets answers (401, or 503 past the queue), not threads.
#[test]
fn a_wrong_password_flood_does_not_slow_a_scraper() {
    let web = web_config("flood", 10);
    let nats = Nats::start();
    let e = Exporter::start(&nats.url(), &["--web.config.file", web.to_str().unwrap()]);
    let good = basic("alice", "s3cret");
    assert_eq!(get_as(&e.addr, "/metrics", &good), 200);
    let flood: Vec<_> = (0..200)
        .map(|i| {
            let addr = e.addr.clone();
            std::thread::spawn(move || get_as(&addr, "/metrics", &basic("alice", &format!("x{i}"))))
        })
        .collect();
    let auth = |result: &str| {
        let m = http_with(&e.addr, "GET", "/metrics", &[("Authorization", &good)]).2;
        value(
            &m,
            &format!("session_exporter_http_auth_requests_total{{result=\"{result}\"}}"),
        )
        .unwrap()
    };
    // The queue is full: the flood is on.
    wait_for(Duration::from_secs(20), "a full bcrypt queue", || {
        (auth("busy") > 0.0).then_some(())
    });
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(get_as(&e.addr, "/metrics", &good), 200);
        latencies.push(t.elapsed());
    }
    let threads = std::fs::read_to_string(format!("/proc/{}/status", e.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Threads:")
                .map(|n| n.trim().parse::<u32>().unwrap())
        })
        .unwrap();
    let codes: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    let worst = *latencies.iter().max().unwrap();
    eprintln!("scrape during the flood: worst {worst:?}; exporter threads {threads}");
    assert!(worst < Duration::from_secs(1), "{latencies:?}");
    assert!(codes.iter().all(|c| *c == 401 || *c == 503), "{codes:?}");
    assert!(threads < 40, "{threads} threads");
    assert_eq!(auth("denied") + auth("busy"), 200.0);
}

/// Credentials in the URL or the environment reach no log line (at debug),
/// no error and no `--help`; they still authenticate.
#[test]
fn nats_credentials_never_reach_a_log_or_help() {
    let secret = "pw-Zq7Secret";
    let nats = Nats::start_with(&["--user", "u", "--pass", secret]);
    let port = nats.url().rsplit(':').next().unwrap().to_string();
    let url = format!("nats://u:{secret}@127.0.0.1:{port}");
    let e = Exporter::start(&url, &[]);
    e.wait_ready();
    assert!(!e.log().contains(secret), "{}", e.log());

    let mut bad = Command::new(EXPORTER);
    bad.args([
        "--nats.url",
        &format!("nats://u:{secret}@[::1"),
        "--web.listen-address",
        "127.0.0.1:0",
    ]);
    let bad = output_within(bad, Duration::from_secs(20));
    let both =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(!both.contains(secret), "{both}");

    let mut sim = Command::new(EXPORTER);
    sim.args([
        "simulate",
        "--nats.url",
        &url,
        "--count",
        "10",
        "--log.level",
        "debug",
    ]);
    let sim = output_within(sim, Duration::from_secs(30));
    let both =
        String::from_utf8_lossy(&sim.stdout).to_string() + &String::from_utf8_lossy(&sim.stderr);
    assert!(
        sim.status.success() && both.contains("published 10"),
        "{both}"
    );
    assert!(!both.contains(secret), "{both}");

    let help = Command::new(EXPORTER)
        .arg("--help")
        .env("SESSION_EXPORTER_NATS_URL", &url)
        .env("SESSION_EXPORTER_NATS_PASSWORD", secret)
        .env("SESSION_EXPORTER_NATS_TOKEN", secret)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--nats.password-file"), "{text}");
    assert!(!text.contains(secret), "{text}");
}

/// Secrets from files: a password file authenticates, a loose mode is
/// warned about, and a password without a user is refused.
#[test]
fn passwords_come_from_files() {
    use std::os::unix::fs::PermissionsExt;
    let secret = "pw-from-file";
    let nats = Nats::start_with(&["--user", "u", "--pass", secret]);
    let file = temp_dir("pwfile").join("password");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Exporter::start(
        &nats.url(),
        &[
            "--nats.user",
            "u",
            "--nats.password-file",
            file.to_str().unwrap(),
        ],
    );
    e.wait_ready();
    let log = e.log();
    assert!(log.contains("readable by group or others"), "{log}");
    assert!(!log.contains(secret), "{log}");

    let alone = Command::new(EXPORTER)
        .args([
            "--nats.password-file",
            file.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&alone.stderr);
    assert_eq!(alone.status.code(), Some(1), "{err}");
    assert!(err.contains("needs --nats.user"), "{err}");
}

/// Files that may hold secrets are never quoted: `check-config` on a creds
/// file, a reload over HTTP of a mapping turned into a link to one.
#[test]
fn errors_give_a_line_not_the_content() {
    let dir = temp_dir("creds");
    let creds = dir.join("user.creds");
    std::fs::write(
        &creds,
        "-----BEGIN NATS USER JWT-----\neyJhbGciOiJlZDI1NTE5LW5rZXkifQ.SECRETJWT\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\nSUASECRETSEEDSECRETSEED\n------END USER NKEY SEED------\n",
    )
    .unwrap();
    let out = Command::new(EXPORTER)
        .args(["check-config", creds.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("line 1 column 1"), "{err}");
    assert!(!err.contains("SECRET") && !err.contains("BEGIN"), "{err}");
    // A mapping keeps its helpful snippet.
    let mapping = dir.join("mapping.yml");
    std::fs::write(&mapping, "mappings:\n  - event: [\n").unwrap();
    let out = Command::new(EXPORTER)
        .args(["check-config", mapping.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("- event: ["));

    let link = dir.join("link.yml");
    std::fs::write(&link, session_exporter::config::DEFAULT_MAPPING).unwrap();
    let nats = Nats::start();
    let e = Exporter::start(
        &nats.url(),
        &[
            "--config.file",
            link.to_str().unwrap(),
            "--web.enable-lifecycle",
        ],
    );
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&creds, &link).unwrap();
    let (status, body) = http(&e.addr, "POST", "/-/reload");
    assert_eq!(status, 500);
    assert!(body.contains("line 1 column 1"), "{body}");
    assert!(
        !body.contains("SECRET") && !e.log().contains("SECRET"),
        "{body}"
    );
}

/// `/-/reload` is off by default, POST only, and refuses another site's page.
#[test]
fn reload_is_opt_in_and_same_origin() {
    let nats = Nats::start();
    let off = Exporter::start(&nats.url(), &[]);
    assert_eq!(http(&off.addr, "POST", "/-/reload").0, 403);
    let on = Exporter::start(&nats.url(), &["--web.enable-lifecycle"]);
    assert_eq!(http(&on.addr, "POST", "/-/reload").0, 200);
    let form = [
        ("Origin", "http://evil.example"),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    assert_eq!(http_with(&on.addr, "POST", "/-/reload", &form).0, 403);
    let fetch = [("Sec-Fetch-Site", "cross-site")];
    assert_eq!(http_with(&on.addr, "POST", "/-/reload", &fetch).0, 403);
    let same = format!("http://{}", on.addr);
    assert_eq!(
        http_with(&on.addr, "POST", "/-/reload", &[("Origin", &same)]).0,
        200
    );
    let m = on.metrics();
    assert_eq!(
        value(
            &m,
            "session_exporter_config_reloads_total{result=\"success\"}"
        ),
        Some(2.0)
    );
}

/// The landing page escapes what it is given.
#[test]
fn the_landing_page_escapes_the_telemetry_path() {
    let nats = Nats::start();
    let e = Exporter::start(
        &nats.url(),
        &["--web.telemetry-path", "/m\"><script>x</script>"],
    );
    let (status, page) = e.get("/");
    assert_eq!(status, 200);
    assert!(page.contains("href=\"/m&quot;&gt;&lt;script&gt;"), "{page}");
    assert!(!page.contains("<script>"), "{page}");
}

/// A CA without a client-certificate policy would check nothing: refused.
#[test]
fn a_client_ca_without_a_policy_is_refused() {
    let (cert, key) = self_signed("clientca");
    let web = cert.with_file_name("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {0}\n  key_file: {1}\n  client_ca_file: {0}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = Command::new(EXPORTER)
        .args([
            "--web.config.file",
            web.to_str().unwrap(),
            "--web.listen-address",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("client_ca_file") && err.contains("client_auth_type"),
        "{err}"
    );
}

/// A certificate replaced on disk is served from the next handshake on.
#[test]
fn a_rotated_certificate_is_served_without_a_restart() {
    let (cert, key) = self_signed("rotate-a");
    let (cert2, key2) = self_signed("rotate-b");
    let web = cert.with_file_name("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    // The first certificate, kept apart to verify against.
    let first = cert.with_file_name("first.pem");
    std::fs::copy(&cert, &first).unwrap();
    let nats = Nats::start();
    let e = Exporter::start(&nats.url(), &["--web.config.file", web.to_str().unwrap()]);
    let url = format!("https://{}/-/healthy", e.addr);
    assert_eq!(curl(&["--cacert", first.to_str().unwrap(), &url]).0, "200");
    // Replace both files (as a renewal does: new files renamed over the old).
    for (from, to) in [(&key2, &key), (&cert2, &cert)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    wait_for(Duration::from_secs(10), "the new certificate", || {
        (curl(&["--cacert", cert2.to_str().unwrap(), &url]).0 == "200").then_some(())
    });
    assert_ne!(curl(&["--cacert", first.to_str().unwrap(), &url]).0, "200");
    assert!(e.log().contains("TLS certificate reloaded"));
}
