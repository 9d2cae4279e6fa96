//! nats-server processes (one, or a cluster on loopback), the binaries the
//! tests run against, and JetStream helpers: a stream of the seed channels,
//! publishing with acks.

use super::*;

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

pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub(crate) fn cluster_routes(ports: &[u16]) -> String {
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
