//! Test harness: real `nats-server` and `session-exporter` processes on free
//! loopback ports, found from their own logs; polling, never fixed sleeps.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub const EXPORTER: &str = env!("CARGO_BIN_EXE_session-exporter");

/// Poll `f` every 20 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Spawn `cmd`, keep its stderr in a shared buffer, and return the first
/// capture of `find` over its log lines.
pub fn spawn_and_find(
    mut cmd: Command,
    find: impl Fn(&str) -> Option<String> + Send + 'static,
) -> (Child, String, Arc<Mutex<String>>) {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(found) = tx.as_ref().and_then(|_| find(&line)) {
                let _ = tx.take().map(|t| t.send(found));
            }
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(found) => (child, found, log),
        Err(_) => {
            let _ = child.kill();
            panic!("{cmd:?} did not start:\n{}", log.lock().unwrap());
        }
    }
}

/// The built-in mapping with `from` replaced by `to`, written to a fresh file.
pub fn mapping_file(tag: &str, from: &str, to: &str) -> PathBuf {
    let default = session_exporter::config::DEFAULT_MAPPING;
    assert!(default.contains(from), "the default mapping has `{from}`");
    let path = temp_dir(tag).join("mapping.yml");
    std::fs::write(&path, default.replace(from, to)).unwrap();
    path
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "session-exporter-{tag}-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// `file` inside the one folder of `.tools/` whose name starts with
/// `prefix` (a pinned release `scripts/setup` installed).
fn pinned_tool(prefix: &str, file: &str) -> PathBuf {
    let tools = repo_path(".tools");
    std::fs::read_dir(&tools)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path().join(file))
        .filter(|p| p.exists())
        .unwrap_or_else(|| panic!("no {prefix}* under {}: run scripts/setup", tools.display()))
}

/// The nats-server binaries every JetStream test runs against: Debian's
/// (2.9) and the pinned current release `scripts/setup` puts under `.tools/`.
pub fn nats_servers() -> Vec<PathBuf> {
    let current = pinned_tool("nats-server-", "bin/nats-server");
    vec![PathBuf::from("nats-server"), current]
}

/// `nats-server --version`, e.g. `nats-server: v2.9.10`.
pub fn nats_version(bin: &Path) -> String {
    run_ok(bin.to_str().unwrap(), &["--version"])
        .trim()
        .to_string()
}

pub struct Nats {
    child: Child,
    pub port: u16,
    bin: PathBuf,
    store: Option<PathBuf>,
    extra: Vec<String>,
    pub log: Arc<Mutex<String>>,
}

impl Nats {
    pub fn start() -> Nats {
        Nats::spawn(Path::new("nats-server"), None, None, &[])
    }

    pub fn start_jetstream() -> Nats {
        Nats::spawn(Path::new("nats-server"), None, Some(temp_dir("js")), &[])
    }

    /// A JetStream server from the binary `bin` (see [`nats_servers`]).
    pub fn start_jetstream_on(bin: &Path) -> Nats {
        Nats::spawn(bin, None, Some(temp_dir("js")), &[])
    }

    /// A JetStream cluster of `n` nodes on loopback (`--routes` between them).
    /// Route ports must be known before the nodes start, so free ones are
    /// taken from the kernel; another process can take one before its node
    /// binds it, and that node then exits. The cluster is started again on
    /// new ports then, a bounded number of times.
    pub fn start_cluster(bin: &Path, n: usize) -> Vec<Nats> {
        for _ in 0..5 {
            let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
            let mut nodes: Vec<Nats> = (0..n)
                .map(|i| {
                    let others: Vec<u16> = (0..n).filter(|j| *j != i).map(|j| ports[j]).collect();
                    let name = format!("n{i}");
                    let cluster = format!("nats://127.0.0.1:{}", ports[i]);
                    let routes = cluster_routes(&others);
                    let extra = [
                        "--name",
                        &name,
                        "--cluster_name",
                        "test",
                        "--cluster",
                        &cluster,
                        "--routes",
                        &routes,
                    ];
                    Nats::spawn(bin, None, Some(temp_dir("cluster")), &extra)
                })
                .collect();
            if nodes.iter_mut().zip(&ports).all(|(n, p)| n.routes_on(*p)) {
                return nodes;
            }
            eprintln!("a route port was taken before its node bound it: starting again");
        }
        panic!("no cluster of {n} on loopback after 5 tries");
    }

    /// Whether this node listens for routes on `port` (false once it exited).
    fn routes_on(&mut self, port: u16) -> bool {
        let line = format!("Listening for route connections on 127.0.0.1:{port}");
        wait_for(Duration::from_secs(10), "route listener or exit", || {
            if self.log.lock().unwrap().contains(&line) {
                return Some(true);
            }
            self.child.try_wait().ok().flatten().map(|_| false)
        })
    }

    /// A JetStream server from `bin` with extra flags (e.g. `-c mapping.conf`).
    pub fn start_jetstream_with(bin: &Path, extra: &[&str]) -> Nats {
        Nats::spawn(bin, None, Some(temp_dir("js")), extra)
    }

    /// With extra nats-server flags (e.g. `--user u --pass p`).
    pub fn start_with(extra: &[&str]) -> Nats {
        Nats::spawn(Path::new("nats-server"), None, None, extra)
    }

    fn spawn(bin: &Path, port: Option<u16>, store: Option<PathBuf>, extra: &[&str]) -> Nats {
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p"]);
        cmd.arg(port.map_or("-1".to_string(), |p| p.to_string()));
        if let Some(dir) = &store {
            cmd.arg("-js").arg("-sd").arg(dir);
        }
        cmd.args(extra);
        let (child, port, log) = spawn_and_find(cmd, |line| {
            line.split("Listening for client connections on ")
                .nth(1)
                .and_then(|a| a.rsplit(':').next())
                .map(|p| p.trim().to_string())
        });
        Nats {
            child,
            port: port.parse().expect("port"),
            bin: bin.to_path_buf(),
            store,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same port (and JetStream store).
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        let bin = self.bin.clone();
        let store = self.store.take();
        let extra = self.extra.clone();
        *self = wait_for(Duration::from_secs(10), "nats-server restart", || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            std::panic::catch_unwind(|| Nats::spawn(&bin, Some(port), store.clone(), &extra)).ok()
        });
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn cluster_routes(ports: &[u16]) -> String {
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    urls.join(",")
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.store {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub struct Exporter {
    child: Child,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
}

impl Exporter {
    pub fn start(nats_url: &str, extra: &[&str]) -> Exporter {
        Exporter::start_env(nats_url, extra, &[])
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(&self.addr, "GET", path)
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Wait until `session_exporter_messages_received_total` reaches `n`.
    pub fn wait_received(&self, n: u64) -> String {
        wait_for(
            Duration::from_secs(20),
            &format!("{n} messages received"),
            || {
                let m = self.metrics();
                (value(&m, "session_exporter_messages_received_total").unwrap_or(0.0) >= n as f64)
                    .then_some(m)
            },
        )
    }

    pub fn wait_ready(&self) {
        wait_for(Duration::from_secs(20), "ready", || {
            (self.get("/-/ready").0 == 200).then_some(())
        });
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Wait for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let status = wait_for(Duration::from_secs(20), "exporter exit", || {
            self.child.try_wait().ok().flatten()
        });
        // And for its last lines: the thread reading stderr holds the other
        // reference to the log until it reads the end of the pipe.
        wait_for(
            Duration::from_secs(20),
            "the exporter's log read to its end",
            || (Arc::strong_count(&self.log) == 1).then_some(()),
        );
        status.code()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Exporter {
    /// SIGKILL: no drain, no last checkpoint.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start with extra environment variables.
    pub fn start_env(nats_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Exporter {
        let mut cmd = Command::new(EXPORTER);
        cmd.args([
            "--nats.url",
            nats_url,
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.level",
            "debug",
        ]);
        cmd.args(extra);
        cmd.envs(env.iter().copied());
        Exporter::spawn(cmd)
    }

    /// Start a command that runs the exporter (its address is read from its
    /// log, in either log format).
    pub fn spawn(cmd: Command) -> Exporter {
        let (child, addr, log) = spawn_and_find(cmd, |line| {
            let rest = line
                .split("listen_address=")
                .nth(1)
                .or_else(|| line.split("\"listen_address\":\"").nth(1))?;
            rest.split([' ', '"']).next().map(str::to_string)
        });
        Exporter { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

/// The domain series of a `/metrics` text (no comments, self-metrics or
/// `process_*`), sorted.
pub fn domain(metrics: &str) -> Vec<String> {
    let mut v: Vec<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter(|l| !l.starts_with("session_exporter_") && !l.starts_with("process_"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// (series, value) of each line.
pub fn series(lines: &[String]) -> Vec<(String, f64)> {
    lines
        .iter()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 client: status and body.
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let (status, _, body) = http_with(addr, method, path, &[]);
    (status, body)
}

/// The body of `GET path` when it answers 200; `None` when it does not or
/// nothing listens (a replica stopping or not up yet).
pub fn try_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// The same with request headers: status, response head, body.
pub fn http_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    // Bodies may be binary (protobuf): lossy is enough for status and head.
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// The value of the series whose text (name and labels) is exactly `series`.
pub fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok())?
    })
}

/// Sum of every series of `name` (any labels).
pub fn sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// `promtool check metrics` of every Prometheus version must accept the
/// text with nothing to say.
pub fn promtool_check(metrics: &str) {
    for bin in prometheus_versions() {
        promtool_check_with(&bin, metrics);
    }
}

fn promtool_check_with(bin: &PromBin, metrics: &str) {
    let mut child = Command::new(&bin.promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{} check metrics:\n{said}",
        bin.promtool.display()
    );
}

pub fn examples_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/events.jsonl")
}

/// `(subject, body)` for each line of a `{"subject":…,"event":…}` JSONL file.
pub fn load_events(path: &Path) -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let subject = v["subject"].as_str().unwrap().to_string();
            (subject, serde_json::to_vec(&v["event"]).unwrap())
        })
        .collect()
}

/// A file-backed stream named `name` over every seed channel (`<channel>.>`).
pub async fn channels_stream(url: &str, name: &str) -> async_nats::jetstream::Context {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.expect("connect to NATS"));
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.into(),
        subjects: session_exporter::seed::CHANNELS
            .iter()
            .map(|c| format!("{c}.>"))
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

/// Wait until a durable consumer has delivered everything it matches and
/// seen all of it acked.
pub async fn wait_consumer_drained(
    js: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_consumer(consumer)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "consumer not drained: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Into JetStream, acks awaited a window at a time (the client bounds the
/// acks in flight, so collecting them all would stall it).
pub async fn js_publish(js: &async_nats::jetstream::Context, events: &[(String, Vec<u8>)]) {
    for window in events.chunks(1000) {
        let mut acks = Vec::with_capacity(window.len());
        for (subject, body) in window {
            acks.push(
                js.publish(subject.clone(), body.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
    }
}

/// Publish on core NATS; returns once the server has taken every message
/// (a flush only writes them to the socket, and closing a socket that has
/// unread data from the server resets it, losing what was still in flight).
pub async fn publish(url: &str, messages: &[(String, Vec<u8>)]) {
    use futures_util::StreamExt;
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let done = client.new_inbox();
    let mut echo = client.subscribe(done.clone()).await.unwrap();
    for (subject, body) in messages {
        client
            .publish(subject.clone(), body.clone().into())
            .await
            .unwrap();
    }
    // The server handles one connection's messages in order.
    client.publish(done, bytes::Bytes::new()).await.unwrap();
    client.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), echo.next())
        .await
        .expect("the server took the messages")
        .expect("the echo");
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A running `session-exporter simulate`, stopped on drop.
pub struct Simulator(Child);

impl Simulator {
    /// `namespaces` namespaces named `degraded-…` whose DS fleet is 60 times
    /// slower than the healthy simulator's (most acquisitions over 30 s), 100
    /// events/s.
    pub fn degraded(nats_url: &str, namespaces: usize) -> Simulator {
        let n = namespaces.to_string();
        Simulator::start(
            nats_url,
            &[
                "--rate",
                "100",
                "--namespaces",
                &n,
                "--seed",
                "7",
                "--ds-wait-scale",
                "60",
                "--namespace-prefix",
                "degraded-",
            ],
        )
    }

    pub fn start(nats_url: &str, extra: &[&str]) -> Simulator {
        let child = Command::new(EXPORTER)
            .args(["simulate", "--nats.url", nats_url, "--log.level", "warn"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn simulator");
        Simulator(child)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Prometheus release the tests run: Debian's 2.42, and the 3.x that
/// `scripts/setup` unpacks from Debian sid under `.tools/`.
#[derive(Debug, Clone)]
pub struct PromBin {
    pub prometheus: PathBuf,
    pub promtool: PathBuf,
    pub major: u32,
}

impl PromBin {
    /// Debian's (bookworm) Prometheus on the PATH.
    pub fn debian() -> PromBin {
        PromBin {
            prometheus: "prometheus".into(),
            promtool: "promtool".into(),
            major: 2,
        }
    }

    pub fn version(&self) -> String {
        let v = run_ok(self.prometheus.to_str().unwrap(), &["--version"]);
        v.lines().next().unwrap_or("").to_string()
    }
}

/// Every Prometheus the tests run against: 2.42 and 3.x.
pub fn prometheus_versions() -> Vec<PromBin> {
    let current = pinned_tool("prometheus-3", "usr/bin");
    vec![
        PromBin::debian(),
        PromBin {
            prometheus: current.join("prometheus"),
            promtool: current.join("promtool"),
            major: 3,
        },
    ]
}

/// A real Prometheus scraping `target` every second with the repo's rules.
pub struct Prometheus {
    child: Child,
    pub addr: String,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(target: &str, rule_files: &[PathBuf]) -> Prometheus {
        Prometheus::start_flags(target, rule_files, &[])
    }

    /// With extra command-line flags (`--enable-feature=…`).
    pub fn start_flags(target: &str, rule_files: &[PathBuf], flags: &[&str]) -> Prometheus {
        Prometheus::start_on(&PromBin::debian(), target, rule_files, flags, "")
    }

    /// `bin`'s Prometheus, with extra flags and extra YAML for the scrape
    /// job (e.g. `    scrape_protocols: [PrometheusProto]\n`).
    pub fn start_on(
        bin: &PromBin,
        target: &str,
        rule_files: &[PathBuf],
        flags: &[&str],
        job: &str,
    ) -> Prometheus {
        let dir = temp_dir("prometheus");
        let config = scrape_config(target, rule_files, job, "");
        Prometheus::launch(bin, dir.clone(), &dir.join("data"), &config, flags)
    }

    /// `bin`'s Prometheus scraping `target` with `rule_files`, sending alerts
    /// to the Alertmanager at `alertmanager` and re-sending them every
    /// second (an alert sent before it found the Alertmanager is otherwise
    /// resent only after a minute).
    pub fn start_alerting(
        bin: &PromBin,
        target: &str,
        rule_files: &[PathBuf],
        alertmanager: &str,
    ) -> Prometheus {
        let dir = temp_dir("prometheus");
        let alerting = format!(
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n"
        );
        let config = scrape_config(target, rule_files, "", &alerting);
        let flags = ["--rules.alert.resend-delay=1s"];
        Prometheus::launch(bin, dir.clone(), &dir.join("data"), &config, &flags)
    }

    /// A Prometheus that scrapes nothing, over the TSDB blocks in `data`
    /// (as `promtool tsdb create-blocks-from` writes them).
    pub fn start_on_blocks(bin: &PromBin, data: &Path) -> Prometheus {
        Prometheus::launch(
            bin,
            temp_dir("prometheus"),
            data,
            "global:\n  scrape_interval: 1m\n",
            &[],
        )
    }

    fn launch(
        bin: &PromBin,
        dir: PathBuf,
        data: &Path,
        config: &str,
        flags: &[&str],
    ) -> Prometheus {
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        // Prometheus cannot report a port it chose, so take a free one from the
        // kernel and retry in the rare case another process grabs it first.
        wait_for(Duration::from_secs(30), "prometheus start", || {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .ok()?
                .local_addr()
                .ok()?
                .port();
            let addr = format!("127.0.0.1:{port}");
            let mut child = Command::new(&bin.prometheus)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .args(flags)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("prometheus (Debian package prometheus) is installed");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return None;
                }
                if TcpStream::connect(&addr).is_ok() && http(&addr, "GET", "/-/ready").0 == 200 {
                    return Some(Prometheus {
                        child,
                        addr,
                        dir: dir.clone(),
                    });
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            None
        })
    }

    /// The `data` of a GET on the HTTP API (`path` with its query string).
    pub fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = http(&self.addr, "GET", path);
        assert_eq!(status, 200, "{path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"].clone()
    }

    /// The `data.result` of an instant query at Unix time `at`.
    pub fn query_at(&self, promql: &str, at: f64) -> Vec<serde_json::Value> {
        let (status, body) = http(
            &self.addr,
            "GET",
            &format!("/api/v1/query?query={}&time={at}", urlencode(promql)),
        );
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The `data.result` of an instant query.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let (status, body) = http(
            &self.addr,
            "GET",
            &format!("/api/v1/query?query={}", urlencode(promql)),
        );
        assert_eq!(status, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Run a command; panic with its output unless it succeeds. Returns stdout+stderr.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?} failed:\n{text}");
    text
}

/// A strict third-party OpenMetrics parser (Python's prometheus-client,
/// installed by scripts/setup under .tools/python) must accept the text.
/// Returns the number of samples it read.
pub fn openmetrics_check(text: &str) -> usize {
    let script = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
print(sum(len(f.samples) for f in parse(sys.stdin.read())))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", repo_path(".tools/python"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus-client rejects the OpenMetrics text (run scripts/setup if it is missing):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

pub fn namespace_of(line: &str) -> Option<&str> {
    let rest = line.split("game_namespace=\"").nth(1)?;
    rest.split('"').next()
}

/// The replicas' domain series, together, equal the reference's, line for
/// line; every namespace is on exactly one replica, the one its hash names;
/// the event counts add up.
/// `restarted`: replicas were restarted, so their self-metrics (process
/// counters) start again from 0 and are not compared.
pub fn assert_partitions_equal(
    what: &str,
    reference: &Exporter,
    replicas: &[Exporter],
    n: usize,
    restarted: bool,
) {
    partitions_equal(what, reference, replicas, n, restarted, false)
}

/// [`assert_partitions_equal`] where replicas came and went: only the
/// namespaced series, which move with their namespaces; a per-replica
/// counter such as `session_events_total` went with the replica that
/// counted it.
pub fn assert_namespaces_equal(what: &str, reference: &Exporter, replicas: &[Exporter], n: usize) {
    partitions_equal(what, reference, replicas, n, true, true)
}

fn partitions_equal(
    what: &str,
    reference: &Exporter,
    replicas: &[Exporter],
    n: usize,
    restarted: bool,
    namespaced_only: bool,
) {
    reference.wait_received(n as u64);
    let keep = |l: &String| !namespaced_only || namespace_of(l).is_some();
    let want: Vec<String> = domain(&reference.metrics())
        .into_iter()
        .filter(keep)
        .collect();
    let total = |name: &str| -> f64 { replicas.iter().map(|r| sum(&r.metrics(), name)).sum() };
    let want_series: std::collections::BTreeMap<String, f64> = series(&want).into_iter().collect();
    // Namespaced series come from one replica each; the rest (events by
    // name) add up over the replicas.
    let combine = |pages: &[Vec<String>]| {
        let mut all = std::collections::BTreeMap::<String, f64>::new();
        for page in pages {
            for (k, v) in series(page) {
                if namespace_of(&k).is_some() && all.contains_key(&k) {
                    all.insert(format!("{k} (twice)"), v);
                } else {
                    *all.entry(k).or_default() += v;
                }
            }
        }
        all
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let pages = loop {
        let pages: Vec<Vec<String>> = replicas
            .iter()
            .map(|r| domain(&r.metrics()).into_iter().filter(keep).collect())
            .collect();
        let got = combine(&pages);
        if got == want_series {
            break pages;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = want_series
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: {v} (replicas: {:?})", got.get(k)))
                .take(20)
                .collect();
            let extra: Vec<_> = got
                .iter()
                .filter(|(k, _)| !want_series.contains_key(*k))
                .take(20)
                .collect();
            panic!("{what}: replicas differ from the reference:\nreference has {missing:#?}\nreplicas have {extra:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let count = replicas.len() as u32;
    let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<usize>> =
        std::collections::BTreeMap::new();
    for (i, page) in pages.iter().enumerate() {
        for ns in page.iter().filter_map(|l| namespace_of(l)) {
            seen.entry(ns.to_string()).or_default().insert(i);
        }
    }
    let namespaces: std::collections::BTreeSet<&str> =
        want.iter().filter_map(|l| namespace_of(l)).collect();
    assert!(
        namespaces.len() >= 5
            && seen
                .keys()
                .map(String::as_str)
                .eq(namespaces.iter().copied()),
        "{what}: namespaces {seen:?}"
    );
    for (ns, on) in &seen {
        let home = session_exporter::partition::of(ns, count) as usize;
        assert_eq!(
            on,
            &std::collections::BTreeSet::from([home]),
            "{what}: {ns} is on replicas {on:?}"
        );
    }
    if restarted {
        return;
    }
    let reference_page = reference.metrics();
    for name in [
        "session_exporter_messages_received_total",
        "session_exporter_events_folded_total",
        "session_exporter_events_rejected_total",
        "session_exporter_events_duplicate_total",
    ] {
        assert_eq!(total(name), sum(&reference_page, name), "{what}: {name}");
    }
}

/// A request with a body: status and response body.
pub fn http_send(addr: &str, method: &str, path: &str, json: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (status.unwrap_or(0), body.to_string())
}

/// An Alertmanager release `scripts/setup` unpacked from a Debian package
/// under `.tools/`.
#[derive(Debug, Clone)]
pub struct AmBin {
    root: PathBuf,
}

impl AmBin {
    pub fn amtool(&self) -> PathBuf {
        self.root.join("usr/bin/amtool")
    }

    /// The folder's name, e.g. `alertmanager-0.25.0`.
    pub fn name(&self) -> String {
        self.root
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
}

/// A Prometheus configuration scraping `target` every second as job
/// `session-exporter` (with `job`'s extra YAML), evaluating `rule_files`
/// every second, with `top` (more top-level YAML) before the scrape configs.
fn scrape_config(target: &str, rule_files: &[PathBuf], job: &str, top: &str) -> String {
    let rules: Vec<String> = rule_files
        .iter()
        .map(|p| format!("  - {}", p.display()))
        .collect();
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\n{top}\
         scrape_configs:\n  - job_name: session-exporter\n{job}    static_configs:\n      - targets: ['{target}']\n",
        rules.join("\n")
    )
}

/// Every Alertmanager the tests run: Debian's 0.25 and sid's 0.33.
pub fn alertmanager_versions() -> Vec<AmBin> {
    ["alertmanager-0.25.", "alertmanager-0.33."]
        .iter()
        .map(|prefix| AmBin {
            root: pinned_tool(prefix, "usr/bin/amtool")
                .ancestors()
                .nth(3)
                .unwrap()
                .to_path_buf(),
        })
        .collect()
}

/// Where Debian's Alertmanager build reads its default template from.
const AM_TEMPLATES: &str = "/usr/share/prometheus/alertmanager";

/// A real Alertmanager on a free loopback port, with its own storage and no
/// cluster (gossip would bind a fixed port).
pub struct Alertmanager {
    child: Child,
    pub addr: String,
    dir: PathBuf,
    pub log: Arc<Mutex<String>>,
}

impl Alertmanager {
    pub fn start(bin: &AmBin, config: &Path) -> Alertmanager {
        let dir = temp_dir("alertmanager");
        // In a private mount namespace, this version's templates at the path
        // the binary reads (`unshare` and `sh` exec, so the PID is
        // Alertmanager's). Without root, a user namespace maps us to root.
        let root = run_ok("id", &["-u"]).trim() == "0";
        let mut cmd = Command::new("unshare");
        if !root {
            cmd.arg("--map-root-user");
        }
        let script = r#"mkdir -p "$2" && mount --bind "$1" "$2" && shift 2 && exec "$@""#;
        cmd.args(["--mount", "sh", "-c", script, "sh"])
            .arg(bin.root.join("usr/share/prometheus/alertmanager"))
            .arg(AM_TEMPLATES)
            .arg(bin.root.join("usr/bin/prometheus-alertmanager"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.display()))
            .args([
                "--web.listen-address=127.0.0.1:0",
                "--cluster.listen-address=",
            ]);
        let (child, addr, log) = spawn_and_find(cmd, |line| {
            let rest = line.split("msg=\"Listening on\" address=").nth(1)?;
            rest.split_whitespace().next().map(str::to_string)
        });
        let am = Alertmanager {
            child,
            addr,
            dir,
            log,
        };
        wait_for(Duration::from_secs(20), "alertmanager ready", || {
            (http(&am.addr, "GET", "/-/ready").0 == 200).then_some(())
        });
        am
    }

    /// POST `alerts` (a JSON array) to the v2 API.
    pub fn post(&self, alerts: &serde_json::Value) {
        let (status, body) = http_send(&self.addr, "POST", "/api/v2/alerts", &alerts.to_string());
        assert_eq!(status, 200, "POST /api/v2/alerts: {body}");
    }

    /// Every alert it holds, with its status (`state`, `inhibitedBy`).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = http(&self.addr, "GET", "/api/v2/alerts");
        assert_eq!(status, 200, "GET /api/v2/alerts: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A webhook receiver on a free loopback port: keeps the path and JSON body
/// of every POST, answers 200.
pub struct Webhook {
    pub url: String,
    received: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let sink = sink.clone();
                thread::spawn(move || {
                    if let Some(request) = read_post(&stream) {
                        sink.lock().unwrap().push(request);
                    }
                    let _ = (&stream).write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                });
            }
        });
        Webhook { url, received }
    }

    /// (path, body) of each POST so far.
    pub fn received(&self) -> Vec<(String, serde_json::Value)> {
        self.received.lock().unwrap().clone()
    }
}

/// The path and JSON body of one HTTP/1.1 POST.
fn read_post(stream: &TcpStream) -> Option<(String, serde_json::Value)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, serde_json::from_slice(&body).ok()?))
}

/// `curl -sS` with `args`: the status code and the body.
pub fn curl(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

/// A fresh self-signed certificate for 127.0.0.1 (openssl): its paths.
pub fn self_signed(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(tag);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
    );
    (cert, key)
}

/// The events as publishers send them for server-side partitions:
/// each on `sessions.<namespace>.<event>` (`none` for a namespace that is
/// not one subject token, which cannot be mapped).
pub fn by_namespace_subject(events: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let token = |n: &&str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    };
    events
        .into_iter()
        .map(|(subject, body)| {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let ns = v["namespace"].as_str().filter(token).unwrap_or("none");
            let event = subject.rsplit('.').next().unwrap();
            (format!("sessions.{ns}.{event}"), body)
        })
        .collect()
}

/// `n` events over `namespaces` namespaces, every kind of event, 1%
/// malformed, timestamps out of order (so the latest gauge value is not the
/// last published), and every fiftieth sent again 300 events later (a
/// publisher's retry after its timeout, same id).
pub fn churned_corpus(n: u64, namespaces: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    use session_exporter::simulate::{unix_ms, Generator, Profile};
    let mut g = Generator::new(Profile {
        namespaces,
        seed,
        invalid_ratio: 0.01,
        ..Profile::default()
    });
    let base = unix_ms() - 600_000;
    let mut out = Vec::new();
    let mut retried = std::collections::VecDeque::new();
    for i in 0..n {
        while retried.front().is_some_and(|(due, _)| *due == i) {
            out.push(retried.pop_front().unwrap().1);
        }
        let e = g.next_event(base + (i * 104_729) % 300_000);
        if i % 50 == 0 {
            retried.push_back((i + 300, e.clone()));
        }
        out.push(e);
    }
    out.extend(retried.into_iter().map(|(_, e)| e));
    out
}
