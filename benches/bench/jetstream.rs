//! Reading a JetStream stream: the exporter without acks, partitioned, and acking, against bare async-nats readers of the same stream.

use super::*;

/// `BENCH_ONLY=js-read`, for `scripts/profile js`: a stream filled with
/// 50,000 events (untimed), then read to its end by a bare ordered push
/// consumer that only counts (`bench::js_bare_all`), and by the exporter's
/// own ack-free source with a state store (`bench::js_source_all`). Each
/// runs on a current-thread runtime inside that function, so the client's
/// connection task is counted with it.
pub(crate) fn profile_js_read() {
    let nats = common::Nats::start_jetstream();
    let url = nats.url();
    let corpus = corpus(50_000, 1000, 1);
    fill_stream(&url, "PROFILE", &corpus);
    js_bare_all(&url, corpus.len());
    let folded = js_source_all(&url, corpus.len());
    println!("js-read: {} events, {folded} folded", corpus.len());
}

#[inline(never)]
pub(crate) fn js_bare_all(url: &str, n: usize) {
    use async_nats::jetstream::consumer::push;
    current_thread().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream("PROFILE").await.unwrap();
        let config = push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        };
        let messages = stream.create_consumer(config).await.unwrap();
        count_until(messages.messages().await.unwrap(), n).await;
    });
}

#[inline(never)]
pub(crate) fn js_source_all(url: &str, n: usize) -> u64 {
    let exporter = Arc::new(Exporter::new(Catalog::default_mapping(), 0).serving_checkpoints());
    let mut cfg = nats_config(url);
    cfg.jetstream = Some(source::JetStreamConfig {
        stream: "PROFILE".into(),
        consumer: "profile".into(),
        filter_subjects: Vec::new(),
        ack_wait: Duration::from_secs(30),
        max_ack_pending: JS_MAX_ACK_PENDING,
        pull_batch: JS_PULL_BATCH,
    });
    cfg.state = Some(source::state::StateConfig {
        bucket: "PROFILESTATE".into(),
        key: format!("profile-{}", unix_ms()),
        interval: Duration::from_secs(3600),
        replicas: 1,
        on_invalid: source::state::OnInvalid::Refuse,
    });
    let e = exporter.clone();
    current_thread().block_on(async move {
        let client = source::connect(&cfg, e.clone()).await.unwrap();
        let done = {
            let e = e.clone();
            async move {
                while e.stats.messages_received.get() < n as u64 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        source::run(client, &cfg, e, done).await.unwrap();
    });
    exporter.stats.messages_received.get()
}

// ---------------------------------------------------------------- end to end

/// The corpus stored in a fresh JetStream stream.
pub(crate) fn fill_stream(url: &str, name: &str, corpus: &Corpus) {
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(name).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: seed::CHANNELS.iter().map(|c| format!("{c}.>")).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        common::js_publish(&js, corpus).await;
    });
}

/// The corpus in a fresh stream whose subjects carry the partition:
/// published as `sessions.<namespace>.<event>`, stored by the server's
/// mapping (`deploy/nats/partitions.conf`) as `sessions.<p>.<namespace>.<event>`.
pub(crate) fn fill_partitioned_stream(url: &str, name: &str, corpus: &Corpus) {
    let mapped: Corpus = corpus
        .iter()
        .map(|(subject, body)| {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let ns = v["namespace"].as_str().unwrap_or("none");
            let event = subject.rsplit('.').next().unwrap_or("x");
            (format!("sessions.{ns}.{event}"), body.clone())
        })
        .collect();
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(name).await;
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: vec!["sessions.*.*.*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        common::js_publish(&js, &mapped).await;
    });
}

/// A bare async-nats pull consumer of the stream that acks every message
/// (sent per ready batch, as the exporter does) and only counts.
pub(crate) fn run_bare_jetstream(url: &str, stream: &str, n: usize) -> f64 {
    use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
    let rt = runtime();
    let t = Instant::now();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let consumer: PullConsumer = js
            .get_stream(stream)
            .await
            .unwrap()
            .create_consumer(pull::Config {
                durable_name: Some("bare".into()),
                ack_policy: AckPolicy::Explicit,
                max_ack_pending: JS_MAX_ACK_PENDING,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut batches = consumer
            .stream()
            .max_messages_per_batch(JS_PULL_BATCH)
            .messages()
            .await
            .unwrap()
            .ready_chunks(512);
        let mut count = 0;
        while count < n {
            for m in batches.next().await.unwrap() {
                let reply = m.unwrap().message.reply.unwrap();
                client.publish(reply, bytes::Bytes::new()).await.unwrap();
                count += 1;
            }
        }
        client.flush().await.unwrap();
    });
    n as f64 / t.elapsed().as_secs_f64()
}

/// Take `n` messages off `messages`, a ready batch at a time, doing nothing
/// with them: a bare reader.
pub(crate) async fn count_until<T>(
    messages: impl futures_util::Stream<Item = T> + Unpin,
    n: usize,
) {
    let mut batches = messages.ready_chunks(512);
    let mut count = 0;
    while count < n {
        count += batches.next().await.unwrap().len();
    }
}

/// Time a bare reader of `stream` that takes `n` messages off what `open`
/// makes from the client and the stream, doing nothing with them.
pub(crate) fn time_reader<F, Fut, S, T>(url: &str, stream: &str, n: usize, open: F) -> f64
where
    F: FnOnce(async_nats::Client, async_nats::jetstream::stream::Stream) -> Fut,
    Fut: std::future::Future<Output = S>,
    S: futures_util::Stream<Item = T> + Unpin,
{
    let rt = runtime();
    let t = Instant::now();
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let stream = js.get_stream(stream).await.unwrap();
        count_until(open(client, stream).await, n).await;
    });
    n as f64 / t.elapsed().as_secs_f64()
}

/// A bare async-nats ordered pull consumer of the stream (no acks), for
/// `BENCH_ONLY=readers`.
pub(crate) fn run_bare_ordered(url: &str, stream: &str, n: usize) -> f64 {
    use async_nats::jetstream::consumer::pull;
    time_reader(url, stream, n, |_, s| async move {
        let c = s
            .create_consumer(pull::OrderedConfig::default())
            .await
            .unwrap();
        c.messages().await.unwrap()
    })
}

/// A bare async-nats ordered push consumer (flow control): the baseline of
/// the ack-free reading, which reads through one.
pub(crate) fn run_bare_push(url: &str, stream: &str, n: usize) -> f64 {
    use async_nats::jetstream::consumer::push;
    time_reader(url, stream, n, |client, s| async move {
        let config = push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        };
        s.create_consumer(config)
            .await
            .unwrap()
            .messages()
            .await
            .unwrap()
    })
}

/// An ephemeral pull consumer without acks, `batch` per pull, for
/// `BENCH_ONLY=readers`.
pub(crate) fn run_bare_pull_none(url: &str, stream: &str, n: usize, batch: usize) -> f64 {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    time_reader(url, stream, n, |_, s| async move {
        let config = pull::Config {
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        };
        let c = s.create_consumer(config).await.unwrap();
        c.stream()
            .max_messages_per_batch(batch)
            .messages()
            .await
            .unwrap()
    })
}

/// How the exporter reads the stream in a JetStream run.
#[derive(Clone, Copy)]
pub(crate) enum Reading {
    /// No state store: an acking durable consumer.
    Acking,
    /// A state store: without acks, from the checkpoint's position, split
    /// over this many partition replicas (in this process, each with its
    /// own source loop and fold).
    AckFree(u32),
    /// As `AckFree`, each replica reading only its partition's subjects (a
    /// stream filled by `fill_partitioned_stream` through the server's
    /// `partition()` mapping).
    ServerSide(u32),
}

/// The exporter in JetStream mode reading a stream that already holds the
/// corpus (filled untimed), until every event is received. Returns
/// (events/s, lost).
pub(crate) fn run_jetstream(
    url: &str,
    name: &str,
    corpus: &Arc<Corpus>,
    reading: Reading,
) -> (f64, u64) {
    let rt = runtime();
    let replicas = match reading {
        Reading::Acking => 1,
        Reading::AckFree(n) | Reading::ServerSide(n) => n,
    };
    let run = unix_ms();
    let (stop, stopped) = watch::channel(false);
    let mut exporters = Vec::new();
    let mut sources = Vec::new();
    for index in 0..replicas {
        let partition = session_exporter::partition::Partition {
            count: replicas,
            index,
        };
        let by_server = matches!(reading, Reading::ServerSide(_));
        let mut exporter =
            Exporter::new(Catalog::default_mapping(), 100_000).with_partition(partition, by_server);
        let mut cfg = nats_config(url);
        cfg.partition = partition;
        if by_server {
            cfg.partition_subjects = vec![format!("sessions.{index}.*.*")];
        }
        cfg.jetstream = Some(source::JetStreamConfig {
            stream: name.to_string(),
            consumer: "bench".into(),
            filter_subjects: Vec::new(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: JS_MAX_ACK_PENDING,
            pull_batch: JS_PULL_BATCH,
        });
        if !matches!(reading, Reading::Acking) {
            exporter = exporter.serving_checkpoints();
            cfg.state = Some(source::state::StateConfig {
                bucket: "BENCHSTATE".into(),
                key: format!("bench-{run}-{index}"),
                interval: Duration::from_secs(5),
                replicas: 1,
                on_invalid: source::state::OnInvalid::Refuse,
            });
        }
        let e = Arc::new(exporter);
        exporters.push(e.clone());
        let handle = rt.handle().clone();
        let mut rx = stopped.clone();
        // As the binary runs it: the source loop in `block_on` on its own thread.
        sources.push(thread::spawn(move || {
            handle.block_on(async move {
                let client = source::connect(&cfg, e.clone()).await.unwrap();
                source::run(client, &cfg, e, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
            })
        }));
    }
    let cpu = cpu_secs("publisher");
    let start = Instant::now();
    let (secs, got) = wait_count(start, corpus.len() as u64, || {
        exporters
            .iter()
            .map(|e| e.stats.messages_received.get())
            .sum()
    });
    CPU_US.with(|c| c.set((cpu_secs("publisher") - cpu) * 1e6 / got.max(1) as f64));
    let _ = stop.send(true);
    sources.into_iter().for_each(|s| s.join().unwrap());
    rt.shutdown_timeout(Duration::from_secs(2));
    (got as f64 / secs, corpus.len() as u64 - got)
}

pub(crate) const JS_MAX_ACK_PENDING: i64 = 200_000;

pub(crate) const JS_PULL_BATCH: usize = 1024;

/// Medians of a JetStream run, each against a baseline of the same rep.
pub(crate) struct JetStream {
    /// Ack-free, with a state store: events/s, ÷ core NATS, ÷ a bare ordered push consumer.
    events_per_s: f64,
    ratio: f64,
    bare_ratio: f64,
    bare_events_per_s: f64,
    /// Three partition replicas reading the one stream together.
    partitioned_events_per_s: f64,
    partitioned_ratio: f64,
    /// Three partition replicas each reading only its subjects (server-side partitions).
    server_partitioned_events_per_s: f64,
    server_partitioned_ratio: f64,
    /// Without a state store: the acking durable consumer, ÷ core, and a bare acking consumer.
    acking_events_per_s: f64,
    acking_ratio: f64,
    bare_acking_events_per_s: f64,
    core_cpu_us: f64,
    cpu_us: f64,
    acking_cpu_us: f64,
    lost: u64,
}

pub(crate) fn bench_jetstream(url: &str, reps: usize) -> JetStream {
    let corpus = Arc::new(corpus(300_000, 1000, 4));
    eprintln!(
        "jetstream: {} events read from a stream (filled untimed) vs the same events live on core NATS, {reps} repetitions",
        corpus.len()
    );
    let mut v: [Vec<f64>; 12] = Default::default();
    let mut lost = 0;
    for rep in 0..reps {
        let (c, l) = run_exporter(url, &corpus, &[], None);
        let core_us = CPU_US.with(|c| c.get());
        // The stream is only there while it is read: on core runs it would
        // store what they publish. No reader here removes anything from it.
        fill_stream(url, "BENCH", &corpus);
        let bare = run_bare_push(url, "BENCH", corpus.len());
        let (free, fl) = run_jetstream(url, "BENCH", &corpus, Reading::AckFree(1));
        let free_us = CPU_US.with(|c| c.get());
        let (split, sl) = run_jetstream(url, "BENCH", &corpus, Reading::AckFree(3));
        let bare_acking = run_bare_jetstream(url, "BENCH", corpus.len());
        let (acking, al) = run_jetstream(url, "BENCH", &corpus, Reading::Acking);
        let acking_us = CPU_US.with(|c| c.get());
        delete_stream(url, "BENCH");
        fill_partitioned_stream(url, "PARTITIONED", &corpus);
        let (server, pl) = run_jetstream(url, "PARTITIONED", &corpus, Reading::ServerSide(3));
        delete_stream(url, "PARTITIONED");
        eprintln!(
            "  rep {rep}: core {c:.0}/s; ack-free {free:.0}/s, 3 partitions {split:.0}/s, 3 server-side partitions {server:.0}/s, bare ordered push consumer {bare:.0}/s; acking {acking:.0}/s, bare acking consumer {bare_acking:.0}/s; lost {l} / {fl} / {sl} / {pl} / {al}"
        );
        let row = [
            free,
            free / c,
            free / bare,
            bare,
            split,
            split / c,
            acking,
            acking / c,
            bare_acking,
            core_us,
            server,
            server / c,
        ];
        for (col, x) in v.iter_mut().zip(row) {
            col.push(x);
        }
        lost += l + fl + sl + al + pl;
        CPU.with_borrow_mut(|cpu| cpu.push((free_us, acking_us)));
    }
    let names = [
        "ack-free",
        "÷ core",
        "÷ bare ordered",
        "bare ordered",
        "3 partitions",
        "3 partitions ÷ core",
        "acking",
        "acking ÷ core",
        "bare acking",
    ];
    for (name, col) in names.iter().zip(&v) {
        eprintln!("  {name:<20} {}", spread(col));
    }
    let (free_us, acking_us): (Vec<f64>, Vec<f64>) = CPU.with_borrow(|c| c.iter().copied().unzip());
    eprintln!(
        "  exporter CPU µs per event, ack-free: {}",
        spread(&free_us)
    );
    eprintln!(
        "  exporter CPU µs per event, acking:   {}",
        spread(&acking_us)
    );
    JetStream {
        events_per_s: median(&v[0]),
        ratio: median(&v[1]),
        bare_ratio: median(&v[2]),
        bare_events_per_s: median(&v[3]),
        partitioned_events_per_s: median(&v[4]),
        partitioned_ratio: median(&v[5]),
        server_partitioned_events_per_s: median(&v[10]),
        server_partitioned_ratio: median(&v[11]),
        acking_events_per_s: median(&v[6]),
        acking_ratio: median(&v[7]),
        bare_acking_events_per_s: median(&v[8]),
        core_cpu_us: median(&v[9]),
        cpu_us: median(&free_us),
        acking_cpu_us: median(&acking_us),
        lost,
    }
}

thread_local! {
    /// (ack-free, acking) exporter CPU µs per event, one pair per rep.
    static CPU: std::cell::RefCell<Vec<(f64, f64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub(crate) fn delete_stream(url: &str, name: &str) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let _ = async_nats::jetstream::new(client).delete_stream(name).await;
    });
}

impl JetStream {
    pub(crate) fn print(&self) {
        println!("bench js_events_per_s {:.0}", self.events_per_s);
        println!("bench js_ratio {:.3}", self.ratio);
        println!("bench js_bare_ratio {:.3}", self.bare_ratio);
        println!("bench js_bare_events_per_s {:.0}", self.bare_events_per_s);
        println!(
            "bench js_partitioned_events_per_s {:.0}",
            self.partitioned_events_per_s
        );
        println!("bench js_partitioned_ratio {:.3}", self.partitioned_ratio);
        println!(
            "bench js_server_partitioned_events_per_s {:.0}",
            self.server_partitioned_events_per_s
        );
        println!(
            "bench js_server_partitioned_ratio {:.3}",
            self.server_partitioned_ratio
        );
        println!(
            "bench js_acking_events_per_s {:.0}",
            self.acking_events_per_s
        );
        println!("bench js_acking_ratio {:.3}", self.acking_ratio);
        println!(
            "bench js_bare_acking_events_per_s {:.0}",
            self.bare_acking_events_per_s
        );
        println!("bench core_cpu_us_per_event {:.2}", self.core_cpu_us);
        println!("bench js_cpu_us_per_event {:.2}", self.cpu_us);
        println!("bench js_acking_cpu_us_per_event {:.2}", self.acking_cpu_us);
        println!("bench js_lost {}", self.lost);
    }
}

// ---------------------------------------------------------------- partitions
