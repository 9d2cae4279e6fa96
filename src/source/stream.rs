//! Reading a JetStream stream without acks: each replica's own ordered push
//! consumer (flow-controlled: faster than the ordered pull consumer, whose
//! pulls are 500 messages at most; `BENCH_ONLY=readers`), started right
//! after the stream sequence its checkpoint holds.
//! The checkpoint is the position (as Flink's NATS connector and Feldera
//! keep it): no ack per event, no redelivery, no `ack_wait`, and a restart
//! resumes exactly where the stored fold ends.
//!
//! The ordered consumer is our own, on a plain subscription (`Consumer`):
//! async-nats's wraps every message in a JetStream context (two allocations
//! and a dozen reference counts) and parses its reply subject with a `char`
//! splitter, a fifth of a message's cost (BENCHMARKS.md, "The JetStream read
//! path"); here the reply subject is read once, by bytes.
//!
//! Needs a stream that keeps what it holds (`limits` retention). Messages the
//! stream removed before this replica read them are counted
//! (`events_lost_total{reason="stream_truncated"}`) and logged, never skipped
//! silently.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{push, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{RetentionPolicy, State as StreamState, Stream};
use async_nats::{Client, Message, StatusCode, Subscriber};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::checkpoints::Checkpoints;
use super::{
    retrying, server_version, ticker, Folding, JetStreamConfig, NatsConfig, SourceError, BATCH,
};
use crate::exporter::Exporter;
use crate::partition::Origin;

/// Where the reader stands: the last stream sequence folded.
struct Position {
    last: u64,
    /// Read again up to here: a slot that moved here stood further back.
    reread_until: u64,
    /// Whether every stream sequence reaches this consumer (no filter), so a
    /// jump in sequence is a message that was removed before it was read.
    gaps_are_losses: bool,
    /// Counted lost up to here: a range is counted once, however many
    /// claims go back below it.
    lost_until: u64,
    /// Whether the log already said the server reads every subject for
    /// this consumer (2.9 and several filters).
    told_one_filter: bool,
}

/// Read `js_cfg`'s stream from where `folding`'s checkpoint stands until
/// `shutdown`, then fold what was delivered and store a last checkpoint.
pub(super) async fn run(
    folding: Folding,
    cfg: &NatsConfig,
    js_cfg: &JetStreamConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SourceError> {
    let Folding {
        client,
        connections,
        exporter,
        mut checkpoints,
        interval,
        restored,
    } = folding;
    tokio::pin!(shutdown);
    let located = locate(
        &client,
        cfg,
        js_cfg,
        &exporter,
        &mut checkpoints,
        restored,
        &mut shutdown,
    )
    .await?;
    // With slots, those claimed are released at the finish.
    if let Some(Located { stream, config, at }) = located {
        let by_slot = checkpoints.slots.is_some() && !cfg.partition_subjects.is_empty();
        let slots = exporter.ownership().slots;
        let mut reader = StreamReader {
            client,
            exporter,
            checkpoints,
            cfg,
            js_cfg,
            stream,
            config,
            at,
            slot_subjects: by_slot.then_some((cfg.partition_subjects.as_slice(), slots)),
        };
        if let Some(consumer) = reader.open(&mut shutdown).await {
            reader
                .follow(consumer, connections, interval, &mut shutdown)
                .await?;
        }
        checkpoints = reader.checkpoints;
    }
    checkpoints.finish(Duration::from_secs(10)).await
}

/// One replica's read of the stream: where it stands, with which consumer
/// configuration, and what it folds into.
struct StreamReader<'c> {
    client: Client,
    exporter: Arc<Exporter>,
    checkpoints: Checkpoints,
    cfg: &'c NatsConfig,
    js_cfg: &'c JetStreamConfig,
    stream: Stream,
    config: push::Config,
    at: Position,
    /// With slots whose subjects carry them: the subject templates and the
    /// count of slots, to read a message's slot from its subject.
    slot_subjects: Option<(&'c [String], u32)>,
}

impl StreamReader<'_> {
    /// Read with `consumer` until `shutdown`, making it anew when it must
    /// be, then fold what it delivered.
    async fn follow(
        &mut self,
        mut consumer: Consumer,
        mut connections: watch::Receiver<u64>,
        interval: Option<Duration>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), SourceError> {
        connections.mark_unchanged();
        self.subscribed(true);
        let mut tick = ticker(interval);
        let mut claims = tokio::time::interval(CLAIM_EVERY);
        let with_slots = self.checkpoints.slots.is_some();
        let silence = tokio::time::sleep(MISSED_HEARTBEATS);
        tokio::pin!(silence);
        let mut drain = true;
        loop {
            let reopen = tokio::select! {
                biased;
                _ = &mut *shutdown => break,
                stored = self.checkpoints.stored() => {
                    self.checkpoints.settle(stored)?;
                    None
                }
                batch = consumer.messages.next() => match batch {
                    Some(batch) => {
                        silence.as_mut().reset(Instant::now() + MISSED_HEARTBEATS);
                        self.step(&mut consumer, batch).await
                    }
                    None => Some(Reopen::SubscriptionEnded),
                },
                _ = tick.tick() => {
                    self.checkpoints.tick().await;
                    None
                }
                _ = claims.tick(), if with_slots => self.claim_round().await?,
                () = &mut silence => Some(Reopen::Silent),
                // After an outage the consumer may have gone with its server:
                // make it anew from the position rather than wait for two
                // missed heartbeats.
                Ok(()) = connections.changed() => Some(Reopen::Reconnected),
            };
            let Some(why) = reopen else { continue };
            match self.reopen(why, shutdown).await {
                Some(fresh) => std::mem::replace(&mut consumer, fresh).close(&self.stream),
                None => {
                    // What the old consumer holds is not after the position.
                    drain = false;
                    break;
                }
            }
            silence.as_mut().reset(Instant::now() + MISSED_HEARTBEATS);
        }
        self.exporter.set_subscribed(false);
        if drain {
            self.drain(&mut consumer);
        }
        consumer.close(&self.stream);
        self.subscribed(false);
        Ok(())
    }

    /// Mark the reader subscribed (or not) in the self-metrics and logs.
    fn subscribed(&self, on: bool) {
        let stats = &self.exporter.stats;
        stats.subscriptions.set(i64::from(on));
        if !on {
            return;
        }
        stats.stream_position.set(self.at.last as i64);
        self.exporter.set_subscribed(true);
        let partition = self.exporter.partition();
        tracing::info!(
            stream = %self.js_cfg.stream,
            from_sequence = self.at.last + 1,
            filter_subject = %self.config.filter_subject,
            filter_subjects = ?self.config.filter_subjects,
            partition = partition.index,
            partitions = partition.count,
            "reading JetStream without acks"
        );
    }

    /// Fold a batch and answer the flow-control requests it carried;
    /// `Some` when the consumer must be made anew.
    async fn step(&mut self, consumer: &mut Consumer, batch: Vec<Message>) -> Option<Reopen> {
        let folded = self.fold(consumer, batch);
        for reply in consumer.flow_control.drain(..) {
            let _ = self.client.publish(reply, bytes::Bytes::new()).await;
        }
        folded.err()
    }

    /// With slots: let go of those another replica wants, take those free.
    /// `Some` when one taken stands further back than the reader, or on
    /// subjects it does not read.
    async fn claim_round(&mut self) -> Result<Option<Reopen>, SourceError> {
        let slots = self
            .checkpoints
            .slots
            .clone()
            .expect("claim rounds run with slots");
        super::discovered(&slots, &self.exporter);
        super::release_wanted(&slots, &self.exporter, &mut self.checkpoints).await?;
        // The slots held keep the reader's position as their floor, in case
        // a slot claimed makes it go back.
        self.exporter.rewind(self.at.last);
        let floors = super::claim(&slots, &self.exporter).await;
        if floors.is_empty() {
            return Ok(None);
        }
        let mut reopen = None;
        let at = &mut self.at;
        if let Some(&floor) = floors.iter().min().filter(|&&f| f < at.last) {
            at.reread_until = at.reread_until.max(at.last);
            // Before any checkpoint: a slot is stored at the reader's
            // position or its floor, the higher.
            at.last = floor;
            let stored = floors.iter().copied().filter(|f| *f > 0).min();
            at.within(
                stored,
                &mut self.stream,
                &self.exporter,
                &self.js_cfg.stream,
            )
            .await;
            self.checkpoints.resume.stream_seq = at.last;
            reopen = Some(Reopen::Claimed);
        }
        // Serve them at once: what they hold is stored.
        self.checkpoints.tick().await;
        let by_slot_subjects = !self.cfg.partition_subjects.is_empty();
        Ok(reopen.or(by_slot_subjects.then_some(Reopen::NewSubjects)))
    }

    /// A consumer from the position (on the subjects of the slots held, if
    /// they name them); `None` if `shutdown` comes first.
    async fn reopen(
        &mut self,
        why: Reopen,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<Consumer> {
        tracing::info!(
            from_sequence = self.at.last + 1,
            why = %why,
            "making the ordered consumer anew"
        );
        let templates = &self.cfg.partition_subjects;
        if self.checkpoints.slots.is_some() && !templates.is_empty() {
            let filters = slot_filters(templates, &self.exporter);
            self.config = consumer_config(&self.client, &filters, &mut self.at);
        }
        // A filtered consumer sees no gap: what the stream removed while
        // this reader was away is counted here.
        let stored = (self.at.last > 0).then_some(self.at.last);
        self.at
            .within(
                stored,
                &mut self.stream,
                &self.exporter,
                &self.js_cfg.stream,
            )
            .await;
        self.open(shutdown).await
    }

    /// A consumer from just after the position, retried with backoff until
    /// it is made; `None` if `shutdown` comes first.
    async fn open(&self, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> Option<Consumer> {
        Consumer::open(
            &self.client,
            &self.stream,
            &self.config,
            self.at.last,
            shutdown,
        )
        .await
    }

    /// Fold what the consumer already delivered, so the last checkpoint
    /// holds it.
    fn drain(&mut self, consumer: &mut Consumer) {
        while let Some(Some(batch)) = consumer.messages.next().now_or_never() {
            if self.fold(consumer, batch).is_err() {
                break;
            }
        }
    }

    /// Fold a batch in order; `Err` names why the consumer must be made
    /// anew (what follows the gap is not folded).
    fn fold(&mut self, consumer: &mut Consumer, batch: Vec<Message>) -> Result<(), Reopen> {
        let (exporter, at, stream) = (&self.exporter, &mut self.at, &self.js_cfg.stream);
        let slot_subjects = self.slot_subjects;
        let mut payloads = Vec::with_capacity(batch.len());
        let mut pending = None;
        let mut verdict = Ok(());
        for m in &batch {
            if let Some(status) = m.status {
                if let Err(why) = consumer.status(m, status) {
                    verdict = Err(why);
                    break;
                }
                continue;
            }
            let Some(d) = m.reply.as_deref().and_then(Delivery::parse) else {
                tracing::debug!(subject = %m.subject, "a message without a JetStream reply subject on the consumer's inbox");
                continue;
            };
            if d.consumer_seq != consumer.delivered + 1 {
                verdict = Err(Reopen::Gap);
                break;
            }
            consumer.delivered = d.consumer_seq;
            // A consumer made anew may start over: what the fold already
            // holds is dropped.
            if d.stream_seq <= at.last {
                continue;
            }
            if at.gaps_are_losses && d.stream_seq > at.last + 1 {
                at.lost(exporter, stream, at.last, d.stream_seq - 1);
            }
            if d.stream_seq <= at.reread_until {
                exporter.stats.slot_reread.inc();
            }
            at.last = d.stream_seq;
            pending = Some(d.pending);
            let from = Origin {
                seq: d.stream_seq,
                slot: slot_subjects
                    .and_then(|(templates, slots)| slot_in_subject(templates, &m.subject, slots)),
            };
            payloads.push((from, m.payload.as_ref()));
        }
        exporter.ingest_at(payloads);
        self.checkpoints.resume.stream_seq = at.last;
        exporter.stats.stream_position.set(at.last as i64);
        if let Some(p) = pending {
            exporter.stats.stream_pending.set(p as i64);
        }
        super::state::failpoint("after-fold");
        verdict
    }
}

/// The stream found and checked, and where to read it from with which
/// consumer configuration.
struct Located {
    stream: Stream,
    config: push::Config,
    at: Position,
}

/// Find the stream (retrying until it exists, `None` if `shutdown` comes
/// first), check it can be read without acks, and set the position: the
/// checkpoint's (a legacy one's taken from its durable consumer), within
/// what the stream still holds.
async fn locate(
    client: &Client,
    cfg: &NatsConfig,
    js_cfg: &JetStreamConfig,
    exporter: &Exporter,
    checkpoints: &mut Checkpoints,
    restored: bool,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Located>, SourceError> {
    let js = jetstream::new(client.clone());
    let what = format!("JetStream stream {} not available", js_cfg.stream);
    let Some(mut stream) = retrying(&what, shutdown, || js.get_stream(&js_cfg.stream)).await else {
        return Ok(None);
    };
    check_retention(&stream, js_cfg)?;
    // A restored checkpoint without a position in this stream: the acking
    // design's, or core NATS's.
    if restored && checkpoints.resume.stream.is_empty() {
        checkpoints.resume.stream_seq =
            legacy_position(client, &stream, js_cfg, checkpoints).await?;
    }
    checkpoints.resume.stream = js_cfg.stream.clone();
    let filters = match (&cfg.partition_subjects, &checkpoints.slots) {
        (subjects, _) if subjects.is_empty() => js_cfg.filter_subjects.clone(),
        (subjects, Some(_)) => slot_filters(subjects, exporter),
        (subjects, None) => subjects.clone(),
    };
    let mut at = Position {
        last: checkpoints.resume.stream_seq,
        reread_until: 0,
        gaps_are_losses: filters.is_empty(),
        lost_until: 0,
        told_one_filter: false,
    };
    let mut stored = (at.last > 0).then_some(at.last);
    if checkpoints.slots.is_some() {
        // From the lowest position of the slots held; holding none yet,
        // from the end (a slot claimed later brings its own position).
        let end = stream.cached_info().state.last_sequence;
        let ownership = exporter.ownership();
        at.last = ownership.lowest().unwrap_or(end);
        stored = ownership.lowest_stored();
    }
    at.within(stored, &mut stream, exporter, &js_cfg.stream)
        .await;
    checkpoints.resume.stream_seq = at.last;
    let config = consumer_config(client, &filters, &mut at);
    Ok(Some(Located { stream, config, at }))
}

/// Reading without acks needs a stream that keeps what it holds.
fn check_retention(stream: &Stream, js_cfg: &JetStreamConfig) -> Result<(), SourceError> {
    let retention = stream.cached_info().config.retention;
    if retention == RetentionPolicy::Limits {
        return Ok(());
    }
    Err(SourceError::Stream {
        stream: js_cfg.stream.clone(),
        reason: format!(
            "retention {retention:?} removes messages once they are acknowledged or \
             have no interest, but with --state.bucket the exporter reads without acks, from the \
             position its checkpoint holds: use a stream with limits retention (a mirror or \
             source of this one will do), or run without --state.bucket (an acking durable \
             consumer, at-least-once)"
        ),
    })
}

impl Position {
    /// Bring the position within what the stream holds. `stored` is the
    /// lowest position something folded here was stored at (`None` for a
    /// first start, which reads what the stream still holds and loses
    /// nothing to it): what the stream removed after it is counted as lost.
    /// A position past the stream's end (it was made anew) reads it from
    /// its start.
    async fn within(
        &mut self,
        mut stored: Option<u64>,
        stream: &mut Stream,
        exporter: &Exporter,
        name: &str,
    ) {
        let state = stream_state(stream, name).await;
        let highest = exporter.ownership().highest().unwrap_or(0);
        if self.last.max(highest) > state.last_sequence {
            tracing::warn!(
                stream = %name,
                position = self.last.max(highest),
                last_sequence = state.last_sequence,
                "the checkpoint's position is past the end of the stream (it was deleted and made anew?): reading it from its start"
            );
            (self.last, stored, self.lost_until) = (0, None, 0);
            exporter.forget_floors();
        }
        let gone = state.first_sequence.saturating_sub(1);
        if let Some(from) = stored {
            self.lost(exporter, name, from, gone);
        }
        self.last = self.last.max(gone);
    }

    /// Count the messages after `from` up to `to` as lost, but for those
    /// counted already.
    fn lost(&mut self, exporter: &Exporter, stream: &str, from: u64, to: u64) {
        let from = from.max(self.lost_until);
        if from < to {
            lost(exporter, stream, from + 1, to);
            self.lost_until = to;
        }
    }
}

/// The stream's state from the server: asked a few times (a leader may be
/// moving), then what it answered last, with a warning (what it removed
/// since may go uncounted).
async fn stream_state(stream: &mut Stream, name: &str) -> StreamState {
    let mut error = String::new();
    for attempt in 0..3 {
        match stream.info().await {
            Ok(info) => return info.state.clone(),
            Err(e) => error = e.to_string(),
        }
        if attempt < 2 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tracing::warn!(stream = %name, %error, "stream state not read: going by the last one read");
    stream.cached_info().state.clone()
}

/// With slots whose subjects carry them: the subjects of each slot held
/// (`{slot}` in `templates` replaced). Holding none, those of slot number
/// `slots`, which no message is on: nothing is read until a slot is held.
fn slot_filters(templates: &[String], exporter: &Exporter) -> Vec<String> {
    let own = exporter.ownership();
    let mut held = own.held();
    if held.is_empty() {
        held.push(own.slots);
    }
    let each = |s: u32| {
        templates
            .iter()
            .map(move |t| t.replace("{slot}", &s.to_string()))
    };
    held.into_iter().flat_map(each).collect()
}

/// The slot a message's subject names, by the first of `templates` it
/// matches (`*` one token, `>` the rest, `{slot}` a slot number below
/// `slots` within its token); `None` if none matches.
fn slot_in_subject(templates: &[String], subject: &str, slots: u32) -> Option<u32> {
    templates.iter().find_map(|template| {
        let mut slot = None;
        let mut tokens = subject.split('.');
        for t in template.split('.') {
            if t == ">" {
                return tokens.next().and(slot);
            }
            let token = tokens.next()?;
            match t.split_once("{slot}") {
                Some((before, after)) => {
                    let digits = token.strip_prefix(before)?.strip_suffix(after)?;
                    // As the filters spell it: no sign, no leading zero.
                    let canonical = digits.bytes().all(|b| b.is_ascii_digit())
                        && (digits == "0" || !digits.starts_with('0'));
                    let n = digits
                        .parse::<u32>()
                        .ok()
                        .filter(|&n| canonical && n < slots)?;
                    if slot.is_some_and(|s| s != n) {
                        return None;
                    }
                    slot = Some(n);
                }
                None if t == "*" || t == token => {}
                None => return None,
            }
        }
        tokens.next().is_none().then_some(slot).flatten()
    })
}

/// The consumer's filter: several subjects on servers 2.10+; on older ones
/// one, or every subject of the stream (then gaps are not losses).
fn consumer_config(client: &Client, filters: &[String], at: &mut Position) -> push::Config {
    let mut config = push::Config::default();
    at.gaps_are_losses = filters.is_empty();
    match filters {
        [] => {}
        [one] => config.filter_subject = one.clone(),
        many if server_version(client) >= (2, 10) => config.filter_subjects = many.to_vec(),
        many => {
            // With slots the filters are made anew at each claim: said once.
            if !std::mem::replace(&mut at.told_one_filter, true) {
                tracing::warn!(
                    subjects = ?many,
                    server = %client.server_info().version,
                    "this nats-server allows one filter subject per consumer (2.10+ allow several): reading every subject of the stream"
                );
            }
            at.gaps_are_losses = true;
        }
    }
    config
}

/// Why the ordered consumer is made anew from the position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reopen {
    /// Its subscription ended (the client closed it).
    SubscriptionEnded,
    /// No message or heartbeat for three heartbeat intervals.
    Silent,
    /// The connection to NATS was made anew: the consumer may have gone
    /// with its server.
    Reconnected,
    /// A gap in the consumer's sequence: the client dropped a message.
    Gap,
    /// A heartbeat names a message this reader has not received.
    HeartbeatAhead,
    /// A slot claimed stands further back than the reader.
    Claimed,
    /// A slot claimed is on subjects the consumer does not read.
    NewSubjects,
}

impl std::fmt::Display for Reopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reopen::SubscriptionEnded => "its subscription ended",
            Reopen::Silent => "no message or heartbeat for three heartbeat intervals",
            Reopen::Reconnected => "reconnected",
            Reopen::Gap => "a gap in the consumer's sequence",
            Reopen::HeartbeatAhead => "a heartbeat names a message not received",
            Reopen::Claimed => "a slot claimed stands further back",
            Reopen::NewSubjects => "a slot claimed is on subjects not read yet",
        })
    }
}

/// The server's heartbeat to an idle or stalled consumer (one whose
/// flow-control request the client dropped); three missed mean it is gone.
const HEARTBEAT: Duration = Duration::from_secs(2);
const MISSED_HEARTBEATS: Duration = Duration::from_secs(6);

/// How often a replica with slots to take looks whether they were
/// released: what the stream takes in meanwhile is read again when the slot
/// comes (`session_exporter_slot_reread_messages_total`).
const CLAIM_EVERY: Duration = Duration::from_millis(100);

/// An ordered consumer: an ephemeral push consumer without acks, read in
/// order of its consumer sequence; a gap (a message the client dropped, or a
/// heartbeat naming a later one) means it is made anew from the position.
struct Consumer {
    messages: futures_util::stream::ReadyChunks<Subscriber>,
    /// The server's name for the consumer, to delete it when replaced.
    name: String,
    /// The last consumer sequence received.
    delivered: u64,
    /// Flow-control requests to answer once the batch is folded.
    flow_control: Vec<async_nats::Subject>,
}

impl Consumer {
    /// A consumer from just after `last`, retried with backoff until it is
    /// made; `None` if `shutdown` comes first.
    async fn open(
        client: &Client,
        stream: &Stream,
        config: &push::Config,
        last: u64,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Option<Consumer> {
        let what = format!(
            "ordered consumer of {} not made",
            stream.cached_info().config.name
        );
        let attempt = || async {
            // A subject of its own: an earlier consumer may still push to the last.
            let inbox = client.new_inbox();
            let subscriber = client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| e.to_string())?;
            let config = push::Config {
                deliver_subject: inbox,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: last + 1,
                },
                ack_policy: AckPolicy::None,
                max_deliver: 1,
                flow_control: true,
                idle_heartbeat: HEARTBEAT,
                inactive_threshold: Duration::from_secs(30),
                num_replicas: 1,
                memory_storage: true,
                ..config.clone()
            };
            let consumer = stream
                .create_consumer(config)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(Consumer {
                messages: subscriber.ready_chunks(BATCH),
                name: consumer.cached_info().name.clone(),
                delivered: 0,
                flow_control: Vec::new(),
            })
        };
        retrying(&what, shutdown, attempt).await
    }

    /// Stop reading; the server deletes the consumer (at the latest when
    /// it has had no interest for its inactive threshold).
    fn close(self, stream: &Stream) {
        drop(self.messages);
        let (stream, name) = (stream.clone(), self.name);
        tokio::spawn(async move { stream.delete_consumer(&name).await });
    }

    /// A status message: an idle heartbeat (checked against what was
    /// received) or a flow-control request (answered after the batch).
    fn status(&mut self, m: &Message, status: StatusCode) -> Result<(), Reopen> {
        // Flow-control requests and idle heartbeats share status 100
        // (async-nats names it IDLE_HEARTBEAT); anything else is informative.
        if status != StatusCode::IDLE_HEARTBEAT {
            tracing::debug!(%status, description = ?m.description, "JetStream status message");
            return Ok(());
        }
        // Of the two, only a flow-control request has a reply subject: the
        // server waits for an answer there before it sends more.
        if let Some(reply) = &m.reply {
            self.flow_control.push(reply.clone());
            return Ok(());
        }
        let header = |name| m.headers.as_ref()?.get(name).map(|v| v.as_str().to_owned());
        // A stalled consumer waits for its flow-control answer.
        if let Some(stalled) = header("Nats-Consumer-Stalled") {
            self.flow_control.push(stalled.into());
        }
        match header("Nats-Last-Consumer").and_then(|s| s.parse::<u64>().ok()) {
            Some(last) if last != self.delivered => Err(Reopen::HeartbeatAhead),
            _ => Ok(()),
        }
    }
}

/// What a JetStream message's reply subject says of it: ADR-15's
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or the longer form with `<domain>.<account hash>.` before the stream and
/// more tokens after.
#[derive(Debug, PartialEq)]
struct Delivery {
    stream_seq: u64,
    consumer_seq: u64,
    pending: u64,
}

impl Delivery {
    fn parse(reply: &str) -> Option<Delivery> {
        let rest = reply.as_bytes().strip_prefix(b"$JS.ACK.")?;
        // By bytes: `str::split` with a `char` looks for each dot with a
        // `memchr` call, the larger part of async-nats's parse of this.
        let mut tokens: [&[u8]; 9] = [b""; 9];
        let mut n = 0;
        for t in rest.split(|&b| b == b'.') {
            if n < tokens.len() {
                tokens[n] = t;
            }
            n += 1;
        }
        let at = match n {
            7 => 2,
            n if n >= 9 => 4,
            _ => return None,
        };
        let num = |i: usize| digits(tokens[at + i]);
        Some(Delivery {
            stream_seq: num(1)?,
            consumer_seq: num(2)?,
            pending: num(4)?,
        })
    }
}

/// A decimal `u64` (at most 19 digits: no overflow).
fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

fn lost(exporter: &Exporter, stream: &str, from: u64, to: u64) {
    let n = to - from + 1;
    exporter.stats.stream_truncated(n);
    tracing::warn!(
        stream,
        from_sequence = from,
        to_sequence = to,
        messages = n,
        "stream messages were removed (the stream's limits) before this replica read them; counted in session_exporter_events_lost_total{{reason=\"stream_truncated\"}}"
    );
}

/// A format-1 checkpoint (the acking design) holds no stream position: its
/// messages were acknowledged through the durable consumer. Send the acks it
/// lists, then carry on after that consumer's ack floor.
async fn legacy_position(
    client: &Client,
    stream: &Stream,
    js_cfg: &JetStreamConfig,
    checkpoints: &Checkpoints,
) -> Result<u64, SourceError> {
    for reply in &checkpoints.resume.legacy_acks {
        let _ = client.publish(reply.clone(), bytes::Bytes::new()).await;
    }
    let _ = client.flush().await;
    match stream.consumer_info(&js_cfg.consumer).await {
        Ok(info) => {
            let floor = info.ack_floor.stream_sequence;
            tracing::info!(consumer = %js_cfg.consumer, after_sequence = floor, "checkpoint from the acking design: reading on after its durable consumer's ack floor");
            Ok(floor)
        }
        Err(e) => Err(SourceError::Stream {
            stream: js_cfg.stream.clone(),
            reason: format!(
                "the checkpoint holds no position in it (it comes from core NATS or from the \
                 acking design of format 1), and durable consumer {} to take it from is not there \
                 ({e}): delete the key (nats kv del BUCKET KEY) to fold the stream from its start",
                js_cfg.consumer
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_is_read_from_the_subject() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let one = t(&["sessions.{slot}.*.*"]);
        assert_eq!(slot_in_subject(&one, "sessions.17.alpha.E", 720), Some(17));
        assert_eq!(slot_in_subject(&one, "sessions.0.alpha.E", 720), Some(0));
        for other in [
            "sessions.720.alpha.E",
            "sessions.x.alpha.E",
            "sessions.-1.alpha.E",
            "sessions.17.alpha",
            "sessions.17.alpha.E.more",
            "other.17.alpha.E",
            "sessions..alpha.E",
            "sessions.007.alpha.E",
            "sessions.+7.alpha.E",
            "sessions.00.alpha.E",
        ] {
            assert_eq!(slot_in_subject(&one, other, 720), None, "{other}");
        }
        let two = t(&["a.s{slot}x.>", "b.*.{slot}"]);
        assert_eq!(slot_in_subject(&two, "a.s5x.q.r", 10), Some(5));
        assert_eq!(slot_in_subject(&two, "a.s5x", 10), None);
        assert_eq!(slot_in_subject(&two, "b.q.9", 10), Some(9));
        let twice = t(&["a.{slot}.b.{slot}"]);
        assert_eq!(slot_in_subject(&twice, "a.3.b.3", 10), Some(3));
        assert_eq!(slot_in_subject(&twice, "a.3.b.4", 10), None);
    }

    #[test]
    fn reply_subjects_of_both_forms_are_read() {
        let d = |stream_seq, consumer_seq, pending| Delivery {
            stream_seq,
            consumer_seq,
            pending,
        };
        let v1 = "$JS.ACK.SESSIONS.c4Ke1.1.1042.17.1733140000000000000.958";
        assert_eq!(Delivery::parse(v1), Some(d(1042, 17, 958)));
        let v2 = "$JS.ACK.hub.ACCHASH.SESSIONS.c4Ke1.1.1042.17.1733140000000000000.958.x9";
        assert_eq!(Delivery::parse(v2), Some(d(1042, 17, 958)));
        let v2_short = "$JS.ACK._.ACCHASH.SESSIONS.c4Ke1.1.7.1.1733140000000000000.0";
        assert_eq!(Delivery::parse(v2_short), Some(d(7, 1, 0)));
        for bad in [
            "_INBOX.abc",
            "$JS.ACK.SESSIONS.c.1.2.3.4",
            "$JS.ACK.SESSIONS.c.1.x.17.1.9",
            "$JS.ACK.SESSIONS.c.1.-2.17.1.9",
            "$JS.ACK.SESSIONS.c.1..17.1.9",
            "$JS.ACK.SESSIONS.c.1.99999999999999999999.17.1.9",
        ] {
            assert_eq!(Delivery::parse(bad), None, "{bad}");
        }
    }
}
