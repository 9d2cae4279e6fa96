//! Prometheus, promtool and Alertmanager processes (every version the tests
//! run), an OpenMetrics parser check, and a webhook receiver for alerts.

use super::*;

/// `promtool check metrics` of every Prometheus version must accept the
/// text with nothing to say.
pub fn promtool_check(metrics: &str) {
    for bin in prometheus_versions() {
        promtool_check_with(&bin, metrics);
    }
}

pub(crate) fn promtool_check_with(bin: &PromBin, metrics: &str) {
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
pub(crate) fn scrape_config(target: &str, rule_files: &[PathBuf], job: &str, top: &str) -> String {
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
pub(crate) const AM_TEMPLATES: &str = "/usr/share/prometheus/alertmanager";

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
pub(crate) fn read_post(stream: &TcpStream) -> Option<(String, serde_json::Value)> {
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
