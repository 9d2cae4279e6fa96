//! Command-line flags in the Prometheus exporter convention, each with an
//! environment-variable equivalent.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::partition::{self, Partition};
use crate::seed;
use crate::source::state::{valid_key, OnInvalid, StateConfig};
use crate::source::{JetStreamConfig, NatsConfig};

#[derive(Parser, Debug)]
#[command(
    name = "session-exporter",
    version,
    about = "Prometheus exporter for game-session Metric* events read from NATS",
    long_about = "Subscribes to the session service's events on NATS, folds the Metric* events \
into per-game-namespace counters, gauges and histograms, and serves them on /metrics.\n\n\
Without a subcommand it runs the exporter. Every flag can also be set through the \
environment variable shown with it."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a mapping file and exit (0 when valid).
    CheckConfig {
        /// The mapping file (YAML).
        file: PathBuf,
    },
    /// Print the built-in mapping: a commented starting point for --config.file.
    PrintDefaultConfig,
    /// Print the Prometheus rules for the mapping's SLOs: burn-rate
    /// recording rules and the SessionSLOErrorBudgetBurn page and ticket
    /// alerts, each namespace held to its own objective.
    #[command(after_help = "Example:\n  \
        session-exporter rules --config.file mapping.yml > slo.rules.yml\n  \
        promtool check rules slo.rules.yml")]
    Rules {
        /// The mapping file (YAML); the built-in mapping without it.
        #[arg(long = "config.file", env = "SESSION_EXPORTER_CONFIG_FILE")]
        config_file: Option<PathBuf>,
        /// How often Prometheus scrapes the exporter: no alert window is
        /// made shorter than four intervals (a short SLO period scales the
        /// workbook's 5m window down to period / 8640).
        #[arg(long = "scrape-interval", default_value = "1m", value_parser = parse_timeout)]
        scrape_interval: std::time::Duration,
    },
    /// Publish realistic seed-shaped events to NATS (for demos, tests and benchmarks).
    Simulate(Box<SimulateArgs>),
    /// Fold a JSONL capture (one published message per line) offline and
    /// print the exposition; rejects by reason and events/s go to stderr.
    /// Exits 1 when nothing could be folded.
    #[command(after_help = "Examples:\n  \
        nats sub --raw 'mpv2SessionHistory.>' > capture.jsonl   # capture\n  \
        session-exporter replay capture.jsonl\n  \
        session-exporter replay --step 1m --format openmetrics capture.jsonl > history.om\n  \
        promtool tsdb create-blocks-from openmetrics history.om data/")]
    Replay(ReplayArgs),
    /// Print the partition each namespace belongs to, as replicas with
    /// --partition.count N and NATS's `{{partition(N, token)}}` place it.
    #[command(
        after_help = "Example:\n  session-exporter partition --partition.count 3 mygame othergame\n\n\
        Prints one line per namespace: the namespace, a tab, its partition index \
        (with --partition.slots, its slot and the index of the replica that holds it)."
    )]
    Partition(PartitionArgs),
}

#[derive(Args, Debug)]
pub struct PartitionArgs {
    /// How many partitions.
    #[arg(long = "partition.count", value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// The deployment's slots: also print each namespace's slot.
    #[arg(long = "partition.slots", default_value_t = 0)]
    pub slots: u32,
    /// Game namespaces.
    #[arg(required = true)]
    pub namespaces: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The capture: a file, or - for standard input.
    #[arg(default_value = "-")]
    pub file: PathBuf,
    /// Mapping file (YAML). Default: the built-in mapping.
    #[arg(long = "config.file", env = "SESSION_EXPORTER_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Output format: text (0.0.4, as /metrics serves it) or openmetrics.
    #[arg(
        long = "format",
        id = "replay_format",
        value_enum,
        default_value = "text"
    )]
    pub format: ReplayFormat,
    /// Write the state at every step of event time (e.g. 1m), each sample
    /// stamped, for `promtool tsdb create-blocks-from openmetrics`. Needs
    /// --format openmetrics; events without a timestamp are rejected.
    #[arg(long, value_parser = parse_duration)]
    pub step: Option<std::time::Duration>,
    /// Recent event ids remembered to drop duplicates, as JetStream mode does
    /// (0 turns it off).
    #[arg(long = "dedup-window", default_value_t = 0)]
    pub dedup_window: usize,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayFormat {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 text.
    Openmetrics,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log level: error, warn, info, debug or trace.
    #[arg(
        long = "log.level",
        env = "SESSION_EXPORTER_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub level: tracing::Level,
    /// Log format.
    #[arg(
        long = "log.format",
        env = "SESSION_EXPORTER_LOG_FORMAT",
        value_enum,
        default_value = "logfmt",
        global = true
    )]
    pub format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable key=value lines.
    Logfmt,
    /// One JSON object per line.
    Json,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "NATS")]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated. Credentials in a URL
    /// (nats://user:password@host, nats://token@host) are taken out of it and
    /// given to the client apart, so no log line holds them.
    #[arg(
        long = "nats.url",
        env = "SESSION_EXPORTER_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub url: String,
    /// NATS user (with --nats.password or --nats.password-file).
    #[arg(long = "nats.user", env = "SESSION_EXPORTER_NATS_USER")]
    pub user: Option<String>,
    /// NATS password. Visible in `ps`: prefer --nats.password-file.
    #[arg(
        long = "nats.password",
        env = "SESSION_EXPORTER_NATS_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_file"
    )]
    pub password: Option<String>,
    /// File holding the NATS password (one line).
    #[arg(
        long = "nats.password-file",
        env = "SESSION_EXPORTER_NATS_PASSWORD_FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// NATS token. Visible in `ps`: prefer --nats.token-file.
    #[arg(
        long = "nats.token",
        env = "SESSION_EXPORTER_NATS_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the NATS token (one line).
    #[arg(long = "nats.token-file", env = "SESSION_EXPORTER_NATS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// File holding an nkey seed.
    #[arg(long = "nats.nkey-file", env = "SESSION_EXPORTER_NATS_NKEY_FILE")]
    pub nkey_file: Option<PathBuf>,
    /// NATS credentials (.creds) file.
    #[arg(long = "nats.creds-file", env = "SESSION_EXPORTER_NATS_CREDS_FILE")]
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS server.
    #[arg(long = "nats.tls-ca-file", env = "SESSION_EXPORTER_NATS_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(
        long = "nats.tls-cert-file",
        env = "SESSION_EXPORTER_NATS_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(
        long = "nats.tls-key-file",
        env = "SESSION_EXPORTER_NATS_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to NATS without TLS.
    #[arg(long = "nats.tls-required", env = "SESSION_EXPORTER_NATS_TLS_REQUIRED")]
    pub tls_required: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Subject to subscribe to (repeat or comma-separate). Default: each seed channel, bare and with `.>`.
    #[arg(
        help_heading = "NATS",
        long = "nats.subject",
        env = "SESSION_EXPORTER_NATS_SUBJECTS",
        value_delimiter = ','
    )]
    pub subjects: Vec<String>,
    /// Queue group: replicas in one group each receive a share of the events.
    #[arg(
        help_heading = "NATS",
        long = "nats.queue-group",
        env = "SESSION_EXPORTER_NATS_QUEUE_GROUP"
    )]
    pub queue_group: Option<String>,
    /// Messages the client buffers per subscription before dropping them
    /// (counted as slow-consumer drops).
    #[arg(help_heading = "NATS", 
        long = "nats.subscription-capacity",
        env = "SESSION_EXPORTER_NATS_SUBSCRIPTION_CAPACITY",
        default_value_t = crate::source::DEFAULT_SUBSCRIPTION_CAPACITY
    )]
    pub subscription_capacity: usize,
    /// Subjects every replica receives in full, besides its share (repeat or
    /// comma-separate; empty turns it off): their gauge events are folded by
    /// all replicas, so `max by` over replicas is the latest value. Used with
    /// --nats.queue-group and in JetStream mode.
    #[arg(
        help_heading = "NATS",
        long = "nats.broadcast-subject",
        env = "SESSION_EXPORTER_NATS_BROADCAST_SUBJECTS",
        value_delimiter = ',',
        default_value = "mpv2SessionHistory.MetricTotalActiveSessionEvent"
    )]
    pub broadcast_subjects: Vec<String>,
    /// Read this JetStream stream instead of core subjects: without acks from
    /// the checkpointed position with --state.bucket, else through an acking
    /// durable consumer.
    #[arg(
        help_heading = "JetStream",
        long = "nats.jetstream.stream",
        env = "SESSION_EXPORTER_NATS_JETSTREAM_STREAM"
    )]
    pub js_stream: Option<String>,
    /// Durable consumer name, without a state store (shared by replicas,
    /// which then split the stream).
    #[arg(
        help_heading = "JetStream",
        long = "nats.jetstream.consumer",
        env = "SESSION_EXPORTER_NATS_JETSTREAM_CONSUMER",
        default_value = "session-exporter"
    )]
    pub js_consumer: String,
    /// Recent event ids remembered to drop duplicates (a publisher's retries,
    /// redeliveries) in JetStream mode (0 turns it off).
    #[arg(
        help_heading = "JetStream",
        long = "nats.jetstream.dedup-window",
        env = "SESSION_EXPORTER_NATS_JETSTREAM_DEDUP_WINDOW",
        default_value_t = 100_000
    )]
    pub js_dedup_window: usize,
    /// Without a state store: how long the server waits for an ack before
    /// redelivering.
    #[arg(help_heading = "JetStream", long = "nats.jetstream.ack-wait", env = "SESSION_EXPORTER_NATS_JETSTREAM_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub js_ack_wait: std::time::Duration,
    /// Without a state store: messages delivered and not yet acked, across
    /// all replicas of the consumer.
    #[arg(
        help_heading = "JetStream",
        long = "nats.jetstream.max-ack-pending",
        env = "SESSION_EXPORTER_NATS_JETSTREAM_MAX_ACK_PENDING",
        default_value_t = 200_000
    )]
    pub js_max_ack_pending: i64,
    /// Messages asked for per pull request (the acking consumer).
    #[arg(
        help_heading = "JetStream",
        long = "nats.jetstream.pull-batch",
        env = "SESSION_EXPORTER_NATS_JETSTREAM_PULL_BATCH",
        default_value_t = 1024
    )]
    pub js_pull_batch: usize,
    /// Keep the fold state in this NATS KV bucket (created if missing):
    /// restored on start, checkpointed every --state.interval and on SIGTERM.
    /// /metrics then serves the last stored checkpoint.
    #[arg(
        help_heading = "State store",
        long = "state.bucket",
        env = "SESSION_EXPORTER_STATE_BUCKET"
    )]
    pub state_bucket: Option<String>,
    /// This replica's key in the bucket. Default: the host name (a
    /// StatefulSet pod's name is stable across restarts).
    #[arg(
        help_heading = "State store",
        long = "state.key",
        env = "SESSION_EXPORTER_STATE_KEY"
    )]
    pub state_key: Option<String>,
    /// Time between checkpoints.
    #[arg(help_heading = "State store", long = "state.interval", env = "SESSION_EXPORTER_STATE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub state_interval: std::time::Duration,
    /// Replicas of the bucket's stream when the exporter creates it (1, 3 or 5).
    #[arg(
        help_heading = "State store",
        long = "state.replicas",
        env = "SESSION_EXPORTER_STATE_REPLICAS",
        default_value_t = 1
    )]
    pub state_replicas: usize,
    /// What to do with a stored checkpoint that cannot be read.
    #[arg(
        help_heading = "State store",
        long = "state.on-invalid",
        env = "SESSION_EXPORTER_STATE_ON_INVALID",
        value_enum,
        default_value = "refuse"
    )]
    pub state_on_invalid: OnInvalid,
    /// Partitions of the namespaces: replicas with the same count fold
    /// disjoint shares (by a hash of the namespace), so each series exists
    /// once. 1: this replica holds every namespace.
    #[arg(help_heading = "Partitions", long = "partition.count", env = "SESSION_EXPORTER_PARTITION_COUNT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partition_count: u32,
    /// This replica's partition, 0 to count-1. Default: the StatefulSet
    /// ordinal at the end of the host name (`session-exporter-2` is 2).
    #[arg(
        help_heading = "Partitions",
        long = "partition.index",
        env = "SESSION_EXPORTER_PARTITION_INDEX"
    )]
    pub partition_index: Option<u32>,
    /// Where the subjects carry the partition (a NATS `{{partition(N,k)}}`
    /// mapping): this replica reads only these subjects, `{index}` replaced
    /// by its index (repeat or comma-separate), instead of reading all and
    /// skipping others' namespaces. With --partition.slots the subjects
    /// carry the slot (`{{partition(SLOTS,k)}}`) and name it `{slot}`: the
    /// replica reads the subjects of the slots it holds.
    #[arg(
        help_heading = "Partitions",
        long = "partition.filter-subject",
        env = "SESSION_EXPORTER_PARTITION_FILTER_SUBJECTS",
        value_delimiter = ','
    )]
    pub partition_filter_subjects: Vec<String>,
    /// Slots of the namespaces, fixed for a deployment (elastic
    /// partitions): replicas hold slots, each slot's state and position
    /// stored apart, so --partition.count can change without a re-read. Pick
    /// a multiple of every count you may run (e.g. 5040). 0: no slots.
    #[arg(
        help_heading = "Partitions",
        long = "partition.slots",
        env = "SESSION_EXPORTER_PARTITION_SLOTS",
        default_value_t = 0
    )]
    pub partition_slots: u32,
    /// With slots: how long a replica's heartbeat may stand still before
    /// the others take its slots from their last checkpoint (a replica that
    /// cannot write its own for half of it stops serving).
    #[arg(help_heading = "Partitions", long = "partition.dead-after", env = "SESSION_EXPORTER_PARTITION_DEAD_AFTER", default_value = "15s", value_parser = parse_duration)]
    pub partition_dead_after: std::time::Duration,
    /// With slots: take the count and this replica's index from the
    /// replicas present (their heartbeats in the state bucket; the index is
    /// the rank of --state.key), so scaling the StatefulSet is all a rescale
    /// needs. --partition.count and --partition.index are then ignored.
    #[arg(
        help_heading = "Partitions",
        long = "partition.discover",
        env = "SESSION_EXPORTER_PARTITION_DISCOVER"
    )]
    pub partition_discover: bool,
    /// Address to serve /metrics on (`:9750` means all interfaces).
    #[arg(help_heading = "Web", long = "web.listen-address", env = "SESSION_EXPORTER_WEB_LISTEN_ADDRESS", default_value = ":9750", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Path under which metrics are served.
    #[arg(
        help_heading = "Web",
        long = "web.telemetry-path",
        env = "SESSION_EXPORTER_WEB_TELEMETRY_PATH",
        default_value = "/metrics"
    )]
    pub telemetry_path: String,
    /// Add a `_created` sample (the series' start, Unix seconds) to every
    /// counter, histogram and summary in OpenMetrics scrapes. Off by default:
    /// to a Prometheus that does not read them as start timestamps they are
    /// extra series. Protobuf scrapes always carry starts.
    #[arg(
        help_heading = "Web",
        long = "web.openmetrics-created",
        env = "SESSION_EXPORTER_WEB_OPENMETRICS_CREATED"
    )]
    pub openmetrics_created: bool,
    /// Open HTTP connections at most; at the bound the least recently active
    /// one not in a request is closed to admit a new one. 0: half the soft
    /// limit on open files, at most 4096.
    #[arg(
        help_heading = "Web",
        long = "web.max-connections",
        env = "SESSION_EXPORTER_WEB_MAX_CONNECTIONS",
        default_value_t = 0
    )]
    pub max_connections: usize,
    /// Scrapes in flight at most; past it they are answered 503 (as
    /// node_exporter's flag). Scrapes of one format in flight share one
    /// render, so this is a backstop, not a memory bound.
    #[arg(help_heading = "Web", 
        long = "web.max-requests",
        env = "SESSION_EXPORTER_WEB_MAX_REQUESTS",
        default_value_t = 40,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_requests: u64,
    /// A request's headers must arrive within this; slower connections are
    /// closed.
    #[arg(help_heading = "Web", long = "web.read-header-timeout", env = "SESSION_EXPORTER_WEB_READ_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub read_header_timeout: std::time::Duration,
    /// TLS and basic-auth settings for the HTTP endpoints, in the Prometheus
    /// exporter-toolkit format (tls_server_config, basic_auth_users).
    #[arg(
        help_heading = "Web",
        long = "web.config.file",
        env = "SESSION_EXPORTER_WEB_CONFIG_FILE"
    )]
    pub web_config_file: Option<PathBuf>,
    /// Answer POST /-/reload (re-read the mapping file), as Prometheus's
    /// flag of the same name. Off: 403. SIGHUP reloads either way.
    #[arg(
        help_heading = "Web",
        long = "web.enable-lifecycle",
        env = "SESSION_EXPORTER_WEB_ENABLE_LIFECYCLE"
    )]
    pub enable_lifecycle: bool,
    /// Mapping file (YAML). Default: the built-in mapping (see print-default-config).
    #[arg(
        help_heading = "Mapping file",
        long = "config.file",
        env = "SESSION_EXPORTER_CONFIG_FILE"
    )]
    pub config_file: Option<PathBuf>,
    /// After SIGTERM or SIGINT: how long the drain (and the last checkpoint)
    /// may take before the process exits anyway, e.g. with NATS gone. A
    /// second signal exits at once.
    #[arg(help_heading = "Shutdown", long = "shutdown.timeout", env = "SESSION_EXPORTER_SHUTDOWN_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_timeout: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Stop after this many events (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Stop after this long, e.g. 30s or 5m (0: no limit).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub duration: std::time::Duration,
    /// Distinct game namespaces.
    #[arg(long, default_value_t = 5)]
    pub namespaces: usize,
    /// Random seed; the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Multiply DS wait times (e.g. 20 simulates a degraded DS fleet).
    #[arg(long = "ds-wait-scale", default_value_t = 1.0)]
    pub ds_wait_scale: f64,
    /// Fraction of deliberately malformed messages (0 to 1).
    #[arg(long = "invalid-ratio", default_value_t = 0.0)]
    pub invalid_ratio: f64,
    /// Prefix for every namespace name (to run several profiles side by side).
    #[arg(long = "namespace-prefix", default_value = "")]
    pub namespace_prefix: String,
    /// After SIGTERM or SIGINT (or the end of the plan): how long the last
    /// flush to NATS may take before the simulator exits anyway.
    #[arg(long = "shutdown.timeout", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: std::time::Duration,
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|e| format!("`{s}` is not host:port ({e})"))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    crate::config::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration like 30s or 5m"))
}

/// A timeout: more than zero, at most a day.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() || d > std::time::Duration::from_secs(86_400) {
        return Err(format!("`{s}` is not a timeout between 1ms and 1d"));
    }
    Ok(d)
}

impl NatsArgs {
    /// The connection settings, secrets read from their files; credentials
    /// given twice, or a password without a user, are refused.
    pub fn config(&self) -> Result<NatsConfig, String> {
        let servers = crate::source::url::Servers::parse(&self.url)
            .map_err(|e| format!("--nats.url: {e}"))?;
        let password = secret("--nats.password-file", &self.password, &self.password_file)?;
        let token = secret("--nats.token-file", &self.token, &self.token_file)?;
        for (flag, file) in [
            ("--nats.nkey-file", &self.nkey_file),
            ("--nats.creds-file", &self.creds_file),
        ] {
            if let Some(path) = file {
                warn_if_readable_by_others(flag, path);
            }
        }
        let (user, password, token) = match servers.credentials {
            None => (self.user.clone(), password, token),
            Some(_) if self.user.is_some() || password.is_some() || token.is_some() => {
                return Err("--nats.url holds credentials and --nats.user, --nats.password or --nats.token gives them again: give them once".into());
            }
            Some(crate::source::url::Credentials::UserPassword(u, p)) => (Some(u), Some(p), None),
            Some(crate::source::url::Credentials::Token(t)) => (None, None, Some(t)),
        };
        match (&user, &password) {
            (None, Some(_)) => {
                return Err("--nats.password (or --nats.password-file) needs --nats.user".into())
            }
            (Some(_), None) => {
                return Err("--nats.user needs --nats.password or --nats.password-file".into())
            }
            _ => {}
        }
        if user.is_some() && token.is_some() {
            return Err("--nats.user and --nats.token: give one way to authenticate".into());
        }
        use crate::source::Secret;
        Ok(NatsConfig {
            url: servers.urls.join(","),
            user,
            password: password.map(Secret),
            token: token.map(Secret),
            nkey_file: self.nkey_file.clone(),
            creds_file: self.creds_file.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
            tls_required: self.tls_required,
            subscription_capacity: crate::source::DEFAULT_SUBSCRIPTION_CAPACITY,
            ..NatsConfig::default()
        })
    }
}

/// A secret given on the command line, or read from its file (trailing
/// newline dropped). Errors name the flag and path, never the content.
fn secret(
    flag: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<String>, String> {
    let Some(path) = file else {
        return Ok(value.clone());
    };
    warn_if_readable_by_others(flag, path);
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(format!("{flag} {}: the file is empty", path.display()));
    }
    Ok(Some(text.to_string()))
}

/// Secrets belong in files only their owner reads: say so when others can.
fn warn_if_readable_by_others(flag: &str, path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                flag,
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "a secret file is readable by group or others; chmod 600 it"
            );
        }
    }
}

impl RunArgs {
    pub fn nats_config(&self) -> Result<NatsConfig, String> {
        let subjects = if self.subjects.is_empty() {
            seed::default_subjects()
        } else {
            self.subjects.clone()
        };
        Ok(NatsConfig {
            subjects,
            queue_group: self.queue_group.clone(),
            subscription_capacity: self.subscription_capacity.max(1),
            broadcast_subjects: self
                .broadcast_subjects
                .iter()
                .filter(|s| !s.trim().is_empty())
                .cloned()
                .collect(),
            jetstream: self.js_stream.as_ref().map(|stream| JetStreamConfig {
                stream: stream.clone(),
                consumer: self.js_consumer.clone(),
                filter_subjects: self.subjects.clone(),
                ack_wait: self.js_ack_wait.max(std::time::Duration::from_secs(1)),
                max_ack_pending: self.js_max_ack_pending.max(1),
                pull_batch: self.js_pull_batch.clamp(1, 100_000),
            }),
            state: self.state_config()?,
            partition: self.partition()?,
            partition_subjects: self.partition_subjects()?,
            slots: self.slots()?,
            slot_discover: self.partition_discover && self.partition_slots > 0,
            slot_dead_after: self
                .partition_dead_after
                .max(std::time::Duration::from_secs(2)),
            ..self.nats.config()?
        })
    }

    /// This replica's partition, checked against the other flags.
    pub fn partition(&self) -> Result<Partition, String> {
        let count = self.partition_count.max(1);
        let index = match (self.partition_index, count) {
            (Some(i), _) => i,
            (None, 1) => 0,
            (None, _) => {
                let host = host_name().unwrap_or_default();
                partition::ordinal(&host).ok_or_else(|| {
                    format!(
                        "--partition.index: not given, and the host name {host:?} does not end in -<ordinal> \
                         (a StatefulSet pod's name does, e.g. session-exporter-2); set --partition.index"
                    )
                })?
            }
        };
        if index >= count {
            return Err(format!(
                "--partition.index {index}: partitions are numbered 0 to {} (--partition.count {count})",
                count - 1
            ));
        }
        if count > 1 && self.queue_group.is_some() {
            return Err("--partition.count and --nats.queue-group: a partition replica reads every \
                        event and folds its own namespaces; a queue group would hide some of them from it"
                .into());
        }
        if count > 1 && self.js_stream.is_some() && self.state_bucket.is_none() {
            return Err(
                "--partition.count with --nats.jetstream.stream needs a state store \
                        (--state.bucket): each partition replica reads the stream without acks, \
                        from the position its checkpoint holds"
                    .into(),
            );
        }
        Ok(Partition { count, index })
    }

    /// The deployment's slots, checked against the other flags.
    fn slots(&self) -> Result<u32, String> {
        let slots = self.partition_slots;
        if slots == 0 && self.partition_discover {
            return Err(
                "--partition.discover needs --partition.slots: the replicas present \
                        share the slots among them"
                    .into(),
            );
        }
        if slots == 0 {
            return Ok(0);
        }
        if self.js_stream.is_none() || self.state_bucket.is_none() {
            return Err(
                "--partition.slots needs --nats.jetstream.stream and --state.bucket: a \
                        slot moves with its state and its position in the stream"
                    .into(),
            );
        }
        let count = self.partition_count.max(1);
        if slots < count {
            return Err(format!(
                "--partition.slots {slots}: fewer slots than replicas (--partition.count {count})"
            ));
        }
        Ok(slots)
    }

    /// This replica's subjects (`{index}` replaced), or with slots the
    /// subjects of each slot (`{slot}`, replaced by the source for each
    /// slot it holds).
    fn partition_subjects(&self) -> Result<Vec<String>, String> {
        let index = self.partition()?.index.to_string();
        let (name, what) = match self.partition_slots {
            0 => ("{index}", "partition"),
            _ => ("{slot}", "slot (with --partition.slots)"),
        };
        self.partition_filter_subjects
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                if self.partition_slots == 0 && s.contains("{slot}") {
                    Err(format!(
                        "--partition.filter-subject {s:?}: {{slot}} names a slot, and slots need --partition.slots"
                    ))
                } else if s.contains(name) {
                    Ok(s.replace("{index}", &index))
                } else {
                    Err(format!(
                        "--partition.filter-subject {s:?}: it must name the {what} as {name}, e.g. sessions.{name}.>"
                    ))
                }
            })
            .collect()
    }

    fn state_config(&self) -> Result<Option<StateConfig>, String> {
        let Some(bucket) = &self.state_bucket else {
            return Ok(None);
        };
        let key = match &self.state_key {
            Some(k) => k.clone(),
            None => host_name().ok_or(
                "--state.key: no host name to default to (HOSTNAME unset, /proc/sys/kernel/hostname unreadable); set --state.key",
            )?,
        };
        if !valid_key(&key) {
            return Err(format!(
                "--state.key {key:?}: a NATS KV key is letters, digits and - / _ = . (no empty dot-separated part)"
            ));
        }
        let bucket_ok = !bucket.is_empty()
            && bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !bucket_ok {
            return Err(format!(
                "--state.bucket {bucket:?}: a NATS KV bucket name is letters, digits, - and _"
            ));
        }
        if self.state_interval.is_zero() {
            return Err("--state.interval must be above 0".into());
        }
        Ok(Some(StateConfig {
            bucket: bucket.clone(),
            key,
            interval: self.state_interval,
            replicas: self.state_replicas.max(1),
            on_invalid: self.state_on_invalid,
        }))
    }

    pub fn dedup_window(&self) -> usize {
        if self.js_stream.is_some() {
            self.js_dedup_window
        } else {
            0
        }
    }
}

/// The pod name under Kubernetes (its `HOSTNAME`), else the kernel's.
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn listen_address_accepts_go_style() {
        assert_eq!(parse_listen(":9750").unwrap().to_string(), "0.0.0.0:9750");
        assert!(parse_listen("nope").is_err());
    }

    #[test]
    fn defaults_subscribe_to_every_channel() {
        let cli = Cli::try_parse_from(["session-exporter"]).unwrap();
        let cfg = cli.run.nats_config().unwrap();
        assert_eq!(cfg.subjects.len(), 8);
        assert!(cfg.subjects.contains(&"mpv2SessionHistory.>".to_string()));
        assert!(cfg.jetstream.is_none());
        assert!(cfg.state.is_none());
        assert_eq!(
            cfg.broadcast_subjects,
            ["mpv2SessionHistory.MetricTotalActiveSessionEvent"]
        );
    }

    #[test]
    fn slot_flags_are_checked() {
        let parse = |args: &[&str]| {
            let mut all = vec!["session-exporter", "--partition.count", "3"];
            all.extend_from_slice(&["--partition.index", "1"]);
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().run.nats_config()
        };
        let durable = ["--nats.jetstream.stream", "S", "--state.bucket", "B"];
        let ok = parse(&[&durable[..], &["--partition.slots", "30"]].concat()).unwrap();
        assert_eq!(ok.slots, 30);
        assert_eq!(parse(&durable).unwrap().slots, 0);
        // The slot's subjects stay a template: the source fills in each slot.
        let by_slot = [
            "--partition.slots",
            "30",
            "--partition.filter-subject",
            "s.{slot}",
        ];
        let ok = parse(&[&durable[..], &by_slot].concat()).unwrap();
        assert_eq!(ok.partition_subjects, ["s.{slot}"]);
        for (args, says) in [
            (vec!["--partition.slots", "30"], "--state.bucket"),
            (vec!["--partition.slots", "2"], "fewer slots than replicas"),
            (
                vec![
                    "--partition.slots",
                    "30",
                    "--partition.filter-subject",
                    "s.{index}",
                ],
                "as {slot}",
            ),
        ] {
            let with = if says == "--state.bucket" {
                args
            } else {
                [&durable[..], &args].concat()
            };
            let err = parse(&with).unwrap_err();
            assert!(err.contains(says), "{with:?}: {err}");
        }
    }

    #[test]
    fn partition_flags_are_checked() {
        let parse = |args: &[&str]| {
            let mut all = vec!["session-exporter"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().run.nats_config()
        };
        let p = parse(&["--partition.count", "3", "--partition.index", "2"]).unwrap();
        assert_eq!(p.partition, Partition { count: 3, index: 2 });
        let unsplit = parse(&[]).unwrap();
        assert_eq!(unsplit.partition, Partition::default());
        let err = parse(&["--partition.count", "3", "--partition.index", "3"]).unwrap_err();
        assert!(err.contains("0 to 2"), "{err}");
        let queue = [
            "--partition.count",
            "2",
            "--partition.index",
            "0",
            "--nats.queue-group",
            "q",
        ];
        assert!(parse(&queue).unwrap_err().contains("--nats.queue-group"));
        let no_state = [
            "--partition.count",
            "2",
            "--partition.index",
            "1",
            "--nats.jetstream.stream",
            "S",
        ];
        assert!(parse(&no_state)
            .unwrap_err()
            .contains("needs a state store"));
        let filter = parse(&[
            "--partition.count",
            "3",
            "--partition.index",
            "1",
            "--partition.filter-subject",
            "sessions.{index}.*.*",
        ])
        .unwrap();
        assert_eq!(filter.partition_subjects, ["sessions.1.*.*"]);
        let err = parse(&["--partition.filter-subject", "sessions.>"]).unwrap_err();
        assert!(err.contains("{index}"), "{err}");
        let err = parse(&["--partition.filter-subject", "s.{index}.{slot}"]).unwrap_err();
        assert!(err.contains("--partition.slots"), "{err}");
        assert!(Cli::try_parse_from(["session-exporter", "--partition.count", "0"]).is_err());
    }

    #[test]
    fn replay_takes_its_own_flags() {
        let cli = Cli::try_parse_from([
            "session-exporter",
            "replay",
            "--format",
            "openmetrics",
            "--step",
            "1m",
            "--log.format",
            "json",
            "c.jsonl",
        ])
        .unwrap();
        let Some(Command::Replay(args)) = cli.command else {
            panic!("not replay")
        };
        assert_eq!(args.format, ReplayFormat::Openmetrics);
        assert_eq!(args.step, Some(std::time::Duration::from_secs(60)));
        assert_eq!(args.file, PathBuf::from("c.jsonl"));
        assert_eq!(cli.log.format, LogFormat::Json);
    }

    #[test]
    fn state_flags_are_checked() {
        let parse = |args: &[&str]| {
            let mut all = vec!["session-exporter"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).unwrap().run.nats_config()
        };
        let cfg = parse(&["--state.bucket", "b", "--state.key", "pod-0"]).unwrap();
        let state = cfg.state.unwrap();
        assert_eq!((state.bucket.as_str(), state.key.as_str()), ("b", "pod-0"));
        let err = parse(&["--state.bucket", "b", "--state.key", "a b"]).unwrap_err();
        assert!(err.contains("--state.key"), "{err}");
        let err = parse(&["--state.bucket", "b.c", "--state.key", "k"]).unwrap_err();
        assert!(err.contains("--state.bucket"), "{err}");
        let off = parse(&["--nats.broadcast-subject", ""]).unwrap();
        assert!(off.broadcast_subjects.is_empty());
    }
}
