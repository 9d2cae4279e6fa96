//! The exporter's metrics about itself (prefix `session_exporter_`), in one
//! struct with its own registry: no global state, so tests can make their own.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::event::Reason;

const P: &str = "session_exporter_";
const STREAM_TRUNCATED: &str = "stream_truncated";

fn reload_result(ok: bool) -> &'static str {
    if ok {
        "success"
    } else {
        "failure"
    }
}
/// Rendered by hand after the snapshot it counts (every format).
pub const SERIES: &str = "session_exporter_series";
pub const SERIES_HELP: &str = "Domain series in this scrape.";

pub struct Stats {
    registry: Registry,
    /// The NATS client's own counters, mirrored into `nats_messages_in` at
    /// each scrape (`synced` is the value already mirrored).
    client: OnceLock<Arc<async_nats::Statistics>>,
    synced: AtomicU64,
    pub nats_messages_in: IntCounter,
    pub messages_received: IntCounter,
    pub events_folded: IntCounter,
    pub events_rejected: IntCounterVec,
    /// `traceId`s not kept as exemplars, by reason.
    pub exemplars_dropped: IntCounterVec,
    pub overflow_events: IntCounter,
    pub namespaces: IntGauge,
    pub max_namespaces: IntGauge,
    pub event_lag: Histogram,
    pub nats_connected: IntGauge,
    pub nats_reconnects: IntCounter,
    pub slow_consumer_drops: IntCounter,
    pub subscriptions: IntGauge,
    pub js_acks: IntCounter,
    pub js_redeliveries: IntCounter,
    pub duplicates: IntCounter,
    pub broadcast_messages: IntCounter,
    /// Messages of other partitions' namespaces, left to their replicas.
    pub partition_skipped: IntCounter,
    /// Of those, the ones on a subject of a slot this replica holds.
    pub partition_misrouted: IntCounter,
    /// This replica's partition: `{count, index}`, always 1.
    pub partition: IntGaugeVec,
    /// With slots: how many this replica holds, and how many moved.
    pub slots_held: IntGauge,
    slot_moves: IntCounterVec,
    /// Stream messages read again because a slot that moved here stood
    /// further back than the reader.
    pub slot_reread: IntCounter,
    /// Stream messages this replica never read, by reason (`stream_truncated`).
    events_lost: IntCounterVec,
    /// The last stream sequence folded (ack-free JetStream reading).
    pub stream_position: IntGauge,
    /// Stream messages after the last one delivered, as the server reports them.
    pub stream_pending: IntGauge,
    pub checkpoints: IntCounter,
    pub state_pending: IntGauge,
    pub checkpoint_failures: IntCounter,
    pub checkpoint_duration: Histogram,
    pub checkpoint_bytes: IntGauge,
    pub checkpoint_last_success: IntGauge,
    restores: IntCounterVec,
    reloads: IntCounterVec,
    pub reload_success: IntGauge,
    pub scrape_duration: Histogram,
    /// How long each hold of the fold lock lasted.
    pub fold_lock_hold: Histogram,
    /// Open HTTP connections.
    pub http_connections: IntGauge,
    /// Connections closed by the exporter, by reason (`evicted`, `idle`,
    /// `header_timeout`, `refused`).
    http_connections_closed: IntCounterVec,
    /// Requests' credentials checked, by verdict.
    http_auth: IntCounterVec,
    /// Scrapes by how they were served.
    scrapes: IntCounterVec,
    /// Requests refused as malformed or misdirected, by reason.
    http_refused: IntCounterVec,
}

/// Why a request was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 431: headers over hyper's buffer (64 KiB) or over 100 of them.
    HeadersTooLarge,
    /// 400: not HTTP/1.x hyper could parse.
    Malformed,
    /// 405: a method the path does not take.
    Method,
    /// 400: a body on GET or HEAD, or Content-Length with Transfer-Encoding.
    Body,
}

impl Refused {
    pub const ALL: [Refused; 4] = [
        Refused::HeadersTooLarge,
        Refused::Malformed,
        Refused::Method,
        Refused::Body,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refused::HeadersTooLarge => "headers_too_large",
            Refused::Malformed => "malformed",
            Refused::Method => "method",
            Refused::Body => "body",
        }
    }
}

/// A slot moving to or from this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotMove {
    /// Taken: never stored before, released by its last owner, or this
    /// replica's own from before a restart.
    Claimed,
    /// Let go on shutdown or because the count no longer gives it here.
    Released,
    /// Another replica wrote it: it took the slot.
    Lost,
}

impl SlotMove {
    const ALL: [SlotMove; 3] = [SlotMove::Claimed, SlotMove::Released, SlotMove::Lost];

    fn as_str(self) -> &'static str {
        match self {
            SlotMove::Claimed => "claimed",
            SlotMove::Released => "released",
            SlotMove::Lost => "lost",
        }
    }
}

/// What a start with a state store found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restore {
    Restored,
    /// No checkpoint yet.
    Empty,
    /// Unreadable, and started empty (`--state.on-invalid=start-empty`).
    Invalid,
}

impl Restore {
    const ALL: [Restore; 3] = [Restore::Restored, Restore::Empty, Restore::Invalid];

    fn as_str(self) -> &'static str {
        match self {
            Restore::Restored => "restored",
            Restore::Empty => "empty",
            Restore::Invalid => "invalid",
        }
    }
}

/// Why the exporter closed an HTTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The least recently active at the bound, for a new one.
    Evicted,
    /// No request within the idle timeout.
    Idle,
    /// A request's headers did not arrive within the header timeout.
    HeaderTimeout,
    /// Every connection was in a request: a new one could not be served.
    Refused,
}

impl Closed {
    const ALL: [Closed; 4] = [
        Closed::Evicted,
        Closed::Idle,
        Closed::HeaderTimeout,
        Closed::Refused,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Closed::Evicted => "evicted",
            Closed::Idle => "idle",
            Closed::HeaderTimeout => "header_timeout",
            Closed::Refused => "refused",
        }
    }
}

/// How a scrape was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scrape {
    /// It rendered its page.
    Rendered,
    /// It was served the page of a render in flight.
    Shared,
    /// 503: `--web.max-requests` scrapes were in flight.
    Rejected,
}

impl Scrape {
    pub const ALL: [Scrape; 3] = [Scrape::Rendered, Scrape::Shared, Scrape::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Scrape::Rendered => "rendered",
            Scrape::Shared => "shared",
            Scrape::Rejected => "rejected",
        }
    }
}

fn name(s: &str) -> String {
    format!("{P}{s}")
}

fn counter(r: &Registry, n: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name(n), help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, n: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name(n), help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, n: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name(n), help).buckets(buckets))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn counter_vec(r: &Registry, n: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name(n), help), &[label]).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Stats {
    pub fn new() -> Stats {
        let r = Registry::new();
        let http_connections_closed = counter_vec(
            &r,
            "http_connections_closed_total",
            "HTTP connections the exporter closed, by reason: evicted (the least recently active one not in a request, to admit a new one at --web.max-connections), idle (no request within the idle timeout), header_timeout (headers not in within --web.read-header-timeout of their first byte), refused (every connection was in a request).",
            "reason",
        );
        let http_auth = counter_vec(
            &r,
            "http_auth_requests_total",
            "Requests whose basic-auth credentials were checked, by result: allowed, denied (wrong or missing), busy (too many waited for a password check: 503).",
            "result",
        );
        for v in crate::http::Verdict::ALL {
            http_auth.with_label_values(&[v.as_str()]);
        }
        let scrapes = counter_vec(
            &r,
            "scrapes_total",
            "Scrapes of /metrics, by result: rendered (made its page), shared (served the page of a render of its format already in flight), rejected (503 at --web.max-requests).",
            "result",
        );
        for s in Scrape::ALL {
            scrapes.with_label_values(&[s.as_str()]);
        }
        let http_refused = counter_vec(
            &r,
            "http_requests_refused_total",
            "HTTP requests refused before being served, by reason: headers_too_large (431), malformed (400: not parseable HTTP/1.x), method (405), body (400: a body on GET or HEAD, or Content-Length with Transfer-Encoding).",
            "reason",
        );
        for reason in Refused::ALL {
            http_refused.with_label_values(&[reason.as_str()]);
        }
        let events_rejected = counter_vec(
            &r,
            "events_rejected_total",
            "Messages not folded, by reason.",
            "reason",
        );
        // Every reason exists from the start, so rates and alerts see zero, not nothing.
        for reason in Reason::ALL {
            events_rejected.with_label_values(&[reason.as_str()]);
        }
        let exemplars_dropped = counter_vec(
            &r,
            "exemplars_dropped_total",
            "Event traceIds not kept as exemplars (too long for OpenMetrics, or characters a trace id does not have), by reason.",
            "reason",
        );
        for problem in crate::event::TraceProblem::ALL {
            exemplars_dropped.with_label_values(&[problem.as_str()]);
        }
        let reloads = counter_vec(
            &r,
            "config_reloads_total",
            "Mapping reloads, by result.",
            "result",
        );
        for ok in [true, false] {
            reloads.with_label_values(&[reload_result(ok)]);
        }
        let restores = counter_vec(
            &r,
            "state_restores_total",
            "Start-ups with a state store, by what was found: restored, empty (no checkpoint yet), invalid (started empty with --state.on-invalid=start-empty).",
            "result",
        );
        for r in Restore::ALL {
            restores.with_label_values(&[r.as_str()]);
        }
        let events_lost = counter_vec(
            &r,
            "events_lost_total",
            "Stream messages this replica could never read, by reason: stream_truncated (removed by the stream's limits before it read them).",
            "reason",
        );
        events_lost.with_label_values(&[STREAM_TRUNCATED]);
        let slot_moves = counter_vec(
            &r,
            "slot_moves_total",
            "Slots that moved to or from this replica (with --partition.slots), by direction: claimed, released, lost (taken by another replica).",
            "direction",
        );
        for m in SlotMove::ALL {
            slot_moves.with_label_values(&[m.as_str()]);
        }
        let partition = IntGaugeVec::new(
            Opts::new(
                name("partition_info"),
                "This replica's partition of the namespaces (count 1: it holds them all); always 1.",
            ),
            &["count", "index"],
        )
        .expect("valid metric");
        r.register(Box::new(partition.clone()))
            .expect("unique metric");
        let build = IntGaugeVec::new(
            Opts::new(name("build_info"), "Build information; always 1."),
            &["version", "revision", "rustc"],
        )
        .expect("valid metric");
        build
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("GIT_REVISION"),
                env!("RUSTC_VERSION"),
            ])
            .set(1);
        r.register(Box::new(build)).expect("unique metric");
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");

        let stats = Stats {
            client: OnceLock::new(),
            synced: AtomicU64::new(0),
            nats_messages_in: counter(
                &r,
                "nats_messages_in_total",
                "Messages the NATS client took off the wire for the subscriptions. Minus messages_received_total: still queued, or dropped as a slow consumer.",
            ),
            messages_received: counter(&r, "messages_received_total", "NATS messages received."),
            events_folded: counter(
                &r,
                "events_folded_total",
                "Events accepted and folded into metrics (including unmapped events, counted by name only).",
            ),
            events_rejected,
            exemplars_dropped,
            overflow_events: counter(
                &r,
                "cardinality_overflow_events_total",
                "Events folded into the __overflow__ namespace because max_namespaces was reached.",
            ),
            namespaces: gauge(&r, "namespaces", "Game namespaces with live state."),
            max_namespaces: gauge(&r, "max_namespaces", "The configured namespace limit."),
            event_lag: histogram(
                &r,
                "event_lag_seconds",
                "Receive time minus event timestamp.",
                vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
            ),
            nats_connected: gauge(&r, "nats_connected", "1 while connected to NATS."),
            nats_reconnects: counter(&r, "nats_reconnects_total", "Reconnections to NATS after the first connect."),
            slow_consumer_drops: counter(
                &r,
                "nats_slow_consumer_drops_total",
                "Slow-consumer events from the NATS client: messages dropped because a subscription buffer was full. A lower bound under a drop storm (the client's event queue holds 128); nats_messages_in_total minus messages_received_total is exact once the backlog is empty.",
            ),
            subscriptions: gauge(&r, "nats_subscriptions", "Active NATS subscriptions (or JetStream consumers)."),
            js_acks: counter(&r, "jetstream_acks_total", "JetStream messages acknowledged after folding."),
            js_redeliveries: counter(
                &r,
                "jetstream_redeliveries_total",
                "JetStream messages received with a delivery count above 1.",
            ),
            duplicates: counter(&r, "events_duplicate_total", "Events dropped because their id was seen recently."),
            broadcast_messages: counter(
                &r,
                "broadcast_messages_total",
                "Messages of the broadcast subjects (gauge events every replica folds), outside messages_received_total.",
            ),
            partition_skipped: counter(
                &r,
                "partition_skipped_messages_total",
                "Messages of namespaces another partition owns, skipped unfolded (outside messages_received_total).",
            ),
            partition_misrouted: counter(
                &r,
                "partition_misrouted_messages_total",
                "Of partition_skipped_messages_total, those on the subject of a slot this replica holds whose namespace hashes to another slot: with per-slot filters on nats-server 2.10+, no replica folds them.",
            ),
            partition,
            slots_held: gauge(
                &r,
                "slots_held",
                "Slots this replica holds (with --partition.slots): folds and serves their namespaces.",
            ),
            slot_moves,
            slot_reread: counter(
                &r,
                "slot_reread_messages_total",
                "Stream messages read again because a slot that moved here stood further back than the reader (what it already held was skipped).",
            ),
            events_lost,
            stream_position: gauge(
                &r,
                "jetstream_stream_position",
                "Stream sequence of the last message read from the JetStream stream (its checkpoint resumes after it).",
            ),
            stream_pending: gauge(
                &r,
                "jetstream_pending_messages",
                "Messages in the stream after the last one delivered to this replica (its filter only), as the server reports them.",
            ),
            checkpoints: counter(&r, "state_checkpoints_total", "Checkpoints stored in the state bucket."),
            state_pending: gauge(
                &r,
                "state_pending_messages",
                "Messages ingested since the last stored checkpoint: not yet on /metrics, which serves the checkpointed state.",
            ),
            checkpoint_failures: counter(
                &r,
                "state_checkpoint_failures_total",
                "Checkpoints that could not be stored (what they held goes into the next one).",
            ),
            checkpoint_duration: histogram(
                &r,
                "state_checkpoint_duration_seconds",
                "Time to encode, compress and store one checkpoint.",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            checkpoint_bytes: gauge(&r, "state_checkpoint_size_bytes", "Compressed size of the last stored checkpoint."),
            checkpoint_last_success: gauge(
                &r,
                "state_checkpoint_last_success_timestamp_seconds",
                "Unix time of the last stored checkpoint.",
            ),
            restores,
            reloads,
            reload_success: gauge(&r, "config_last_reload_successful", "1 if the last mapping reload succeeded."),
            scrape_duration: histogram(
                &r,
                "scrape_duration_seconds",
                "Time to render /metrics.",
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0],
            ),
            fold_lock_hold: histogram(
                &r,
                "fold_lock_hold_seconds",
                "How long each hold of the fold's lock lasted (a batch folded, a snapshot or a checkpoint's copy taken, a reload applied): ingest and scrapes wait for it.",
                vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
            ),
            http_connections: gauge(&r, "http_connections", "Open HTTP connections."),
            http_connections_closed,
            http_auth,
            scrapes,
            http_refused,
            registry: r,
        };
        for c in Closed::ALL {
            stats
                .http_connections_closed
                .with_label_values(&[c.as_str()]);
        }
        stats.reload_success.set(1);
        stats
    }

    pub fn http_auth(&self, verdict: crate::http::Verdict) {
        self.http_auth.with_label_values(&[verdict.as_str()]).inc();
    }

    /// `n` slots moved to or from this replica.
    pub fn slot_moves(&self, m: SlotMove, n: usize) {
        self.slot_moves
            .with_label_values(&[m.as_str()])
            .inc_by(n as u64);
    }

    pub fn restored(&self, r: Restore) {
        self.restores.with_label_values(&[r.as_str()]).inc();
    }

    /// A mapping reload, and whether it took.
    pub fn reloaded(&self, ok: bool) {
        self.reloads.with_label_values(&[reload_result(ok)]).inc();
        self.reload_success.set(i64::from(ok));
    }

    /// `n` stream messages removed by the stream's limits before they were read.
    pub fn stream_truncated(&self, n: u64) {
        self.events_lost
            .with_label_values(&[STREAM_TRUNCATED])
            .inc_by(n);
    }

    pub fn http_closed(&self, why: Closed) {
        self.http_connections_closed
            .with_label_values(&[why.as_str()])
            .inc();
    }

    pub fn http_refused(&self, why: Refused) {
        self.http_refused.with_label_values(&[why.as_str()]).inc();
    }

    pub fn scrape(&self, how: Scrape) {
        self.scrapes.with_label_values(&[how.as_str()]).inc();
    }

    pub fn reject(&self, reason: Reason) {
        self.events_rejected
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Mirror this client's counters from now on.
    pub fn watch_client(&self, client: Arc<async_nats::Statistics>) {
        let _ = self.client.set(client);
    }

    /// `session_exporter_series`: rendered by hand after the snapshot it
    /// counts, so that it describes this very scrape (the registry's families
    /// are rendered before the snapshot; see `Exporter::scrape`).
    pub fn render_series(&self, out: &mut String, series: usize) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP {SERIES} {SERIES_HELP}\n# TYPE {SERIES} gauge\n{SERIES} {series}\n"
        );
    }

    /// The self-metrics as they are now.
    pub fn families(&self) -> Vec<prometheus::proto::MetricFamily> {
        if let Some(c) = self.client.get() {
            let now = c.in_messages.load(Ordering::Relaxed);
            let before = self.synced.fetch_max(now, Ordering::Relaxed);
            if now > before {
                self.nats_messages_in.inc_by(now - before);
            }
        }
        self.registry.gather()
    }

    /// Append the self-metrics in text format.
    pub fn render(&self, out: &mut String) {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.families(), &mut buf)
            .is_ok()
        {
            out.push_str(&String::from_utf8_lossy(&buf));
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}
