//! session-exporter processes, HTTP to them, and reading their pages: series,
//! values, sums, and the comparison of partition replicas with a reference.

use super::*;

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

pub(crate) fn partitions_equal(
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
