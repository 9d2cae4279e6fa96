//! Half-open connections (a request that never finishes its headers) cannot
//! keep a scrape out: with the exporter's file limit at 128, 300 of them
//! leave a real scrape served at once (the least recently active connection
//! not in a request is closed to admit a new one), the exporter stays up and
//! its log quiet; and one alone is closed at the header read timeout.
//! Malformed and misdirected requests get a clear status, are counted, and
//! their connections closed.

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

/// Send `raw` on a new connection; the status line's code and whether the
/// exporter closed the connection afterwards (read to the end within 10 s).
fn answer(addr: &str, raw: &[u8]) -> (u16, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A refused request may be answered before all of it is written.
    let _ = s.write_all(raw);
    let mut got = Vec::new();
    let closed = s.read_to_end(&mut got).is_ok();
    let head = String::from_utf8_lossy(&got);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, closed)
}

#[test]
fn hostile_requests_get_clear_answers_and_are_counted() {
    let nats = Nats::start();
    let exporter = Exporter::start(&nats.url(), &[]);
    let addr = exporter.addr.as_str();
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(500_000)
    );
    let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    let many = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let cases: [(&[u8], u16); 7] = [
        (big.as_bytes(), 431),
        (many.as_bytes(), 431),
        (b"FOO /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /-/healthy HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nabc", 400),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            400,
        ),
        (b"GARBAGE\r\n\r\n", 400),
    ];
    for (raw, want) in cases {
        let started = Instant::now();
        let (code, closed) = answer(addr, raw);
        let first = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned();
        assert_eq!(code, want, "{first}");
        // Answered and closed, never left hanging.
        assert!(
            closed && started.elapsed() < Duration::from_secs(5),
            "{first}"
        );
    }
    // hyper's own answers are counted when their connection task ends,
    // which may be just after the client saw the close.
    wait_for(Duration::from_secs(10), "the refusals counted", || {
        let m = exporter.metrics();
        let refused = |r: &str| {
            value(
                &m,
                &format!("session_exporter_http_requests_refused_total{{reason=\"{r}\"}}"),
            )
            .unwrap()
        };
        let counted = [
            refused("headers_too_large"),
            refused("method"),
            refused("body"),
            refused("malformed"),
        ];
        eprintln!("refused: {counted:?}");
        (counted == [2.0, 2.0, 2.0, 1.0]).then_some(())
    });
}
