//! Half-open connections (a request that never finishes its headers) cannot
//! keep a scrape out: with the exporter's file limit at 128, 300 of them
//! leave a real scrape served at once (the least recently active connection
//! not in a request is closed to admit a new one), the exporter stays up and
//! its log quiet; and one alone is closed at the header read timeout.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A connection that sends a request line and one header, then nothing.
fn half_open(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    s
}

#[test]
fn half_open_connections_past_the_file_limit_do_not_keep_a_scrape_out() {
    let nats = Nats::start();
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=128:128", EXPORTER, "--nats.url", &nats.url()])
        .args([
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.level",
            "debug",
        ]);
    let exporter = Exporter::spawn(cmd);
    exporter.wait_ready();
    assert!(
        exporter.log().contains("max_connections=64"),
        "{}",
        exporter.log()
    );

    let attackers: Vec<TcpStream> = (0..300).map(|_| half_open(&exporter.addr)).collect();
    let started = Instant::now();
    let (status, body) = exporter.get("/metrics");
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert!(body.contains("session_exporter_messages_received_total"));
    // Not after the header read timeout (10 s): at once.
    assert!(took < Duration::from_secs(5), "the scrape took {took:?}");
    let m = exporter.metrics();
    let evicted = value(
        &m,
        "session_exporter_http_connections_closed_total{reason=\"evicted\"}",
    );
    assert!(evicted.is_some_and(|n| n >= 200.0), "{evicted:?}");
    assert!(value(&m, "session_exporter_http_connections").is_some_and(|n| n <= 64.0));
    drop(attackers);
    assert_eq!(exporter.get("/-/ready").0, 200);
    let accept_failures = exporter.log().matches("accept failed").count();
    assert!(
        accept_failures <= 2,
        "{accept_failures} accept failures logged"
    );
}

#[test]
fn a_request_whose_headers_never_end_is_closed_at_the_header_timeout() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &["--web.read-header-timeout", "1s"]);
    exporter.wait_ready();
    let mut s = half_open(&exporter.addr);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    // The server answers 408 or just closes; either way the read ends.
    let n = s.read(&mut buf).unwrap_or(0);
    let said = String::from_utf8_lossy(&buf[..n]);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}: {said}"
    );
    assert!(n == 0 || said.starts_with("HTTP/1.1 408"), "{said}");
}

/// Reads one response (headers and a Content-Length body) off `s`.
fn response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0usize);
            if body.len() >= length {
                return head.to_string();
            }
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_keep_alive_connection_outlives_the_header_timeout_between_requests() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &["--web.read-header-timeout", "1s"]);
    exporter.wait_ready();
    let mut s = TcpStream::connect(&exporter.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(request).unwrap();
    assert!(response(&mut s).starts_with("HTTP/1.1 200"));
    // Longer than the header timeout between requests, as Prometheus waits
    // a scrape interval: the header timeout runs from a request's first byte.
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(request).unwrap();
    assert!(response(&mut s).starts_with("HTTP/1.1 200"));
}
