//! Realistic seed-shaped events: the demo's, the tests' and the benchmarks'
//! source. Deterministic for a given seed, so a corpus can be rebuilt exactly.

use std::fmt::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Event kinds with their relative frequency, roughly one matchmaking cycle:
/// tickets are created and matched, a match acquires a DS, the session runs.
const MIX: [(&str, &str, u32); 14] = [
    (
        "mpv2SessionHistory",
        "MetricCreatedMatchmakingTicketEvent",
        20,
    ),
    (
        "mpv2SessionHistory",
        "MetricMatchMatchmakingTicketEvent",
        18,
    ),
    ("mpv2SessionHistory", "MetricMatchMatchmakingEvent", 6),
    ("mpv2SessionHistory", "MetricAcquiringDsEvent", 6),
    ("mpv2SessionHistory", "MetricAcquiringDsWaitTimeEvent", 6),
    ("mpv2SessionHistory", "MetricTotalPlayerPersessionEvent", 6),
    ("mpv2SessionHistory", "MetricMatchLengthDurationEvent", 5),
    ("mpv2SessionHistory", "MetricTotalActiveSessionEvent", 3),
    ("mpv2SessionHistory", "GameSessionCreatedEvent", 6),
    ("mpv2SessionHistory", "GameSessionEndedEvent", 5),
    ("mpv2SessionHistory", "GameSessionJoinedEvent", 8),
    ("sessionEvent", "OnSessionEnded", 3),
    ("sessionNotification", "sessionNotification", 2),
    ("session", "onPartyCreated", 2),
];

#[derive(Debug, Clone)]
pub struct Profile {
    pub namespaces: usize,
    pub seed: u64,
    /// Multiplies DS wait times: 1 is healthy, 20 is a degraded fleet.
    pub ds_wait_scale: f64,
    /// Fraction of messages that are malformed on purpose.
    pub invalid_ratio: f64,
    /// Prepended to every namespace name, to run several profiles side by side.
    pub namespace_prefix: String,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            namespaces: 5,
            seed: 1,
            ds_wait_scale: 1.0,
            invalid_ratio: 0.0,
            namespace_prefix: String::new(),
        }
    }
}

pub struct Generator {
    profile: Profile,
    rng: u64,
    seq: u64,
    namespaces: Vec<String>,
    /// Cumulative Zipf-like weights: a few big games, a long tail.
    ns_weights: Vec<f64>,
    active: Vec<f64>,
    mix_total: u32,
}

impl Generator {
    pub fn new(profile: Profile) -> Generator {
        let n = profile.namespaces.max(1);
        let mut acc = 0.0;
        let ns_weights = (0..n)
            .map(|i| {
                acc += 1.0 / (i as f64 + 1.0);
                acc
            })
            .collect();
        Generator {
            rng: profile.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            seq: 0,
            namespaces: (0..n)
                .map(|i| format!("{}{}", profile.namespace_prefix, namespace_name(i)))
                .collect(),
            ns_weights,
            active: vec![200.0; n],
            mix_total: MIX.iter().map(|m| m.2).sum(),
            profile,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// One message: its subject and body, stamped with `unix_ms`.
    pub fn next_event(&mut self, unix_ms: u64) -> (String, Vec<u8>) {
        self.seq += 1;
        if self.unit() < self.profile.invalid_ratio {
            return (
                "mpv2SessionHistory.MetricAcquiringDsWaitTimeEvent".into(),
                self.invalid(),
            );
        }
        let mut pick = (self.next_u64() % u64::from(self.mix_total)) as u32;
        let (channel, name, _) = *MIX
            .iter()
            .find(|m| {
                let hit = pick < m.2;
                pick = pick.saturating_sub(m.2);
                hit
            })
            .unwrap_or(&MIX[0]);
        let r = self.unit() * self.ns_weights.last().copied().unwrap_or(1.0);
        let ns = self
            .ns_weights
            .partition_point(|&w| w < r)
            .min(self.namespaces.len() - 1);
        self.build(channel, name, ns, unix_ms)
    }

    /// One event of every `Metric*` kind for namespace number `ns`: populates
    /// every metric family of a namespace (benchmarks of scrape cost and memory).
    pub fn metric_events_for(&mut self, ns: usize, unix_ms: u64) -> Vec<(String, Vec<u8>)> {
        let ns = ns.min(self.namespaces.len() - 1);
        MIX.iter()
            .filter(|m| m.1.starts_with("Metric"))
            .map(|(channel, name, _)| {
                self.seq += 1;
                self.build(channel, name, ns, unix_ms)
            })
            .collect()
    }

    fn build(&mut self, channel: &str, name: &str, ns: usize, unix_ms: u64) -> (String, Vec<u8>) {
        let (message, users) = self.message(name, ns);
        let body = self.envelope(name, ns, &message, users, unix_ms);
        (format!("{channel}.{name}"), body)
    }

    /// `payload.message` in one of the accepted encodings, and how many userIds.
    fn message(&mut self, name: &str, ns: usize) -> (String, usize) {
        let users = 1 + (self.next_u64() % 4) as usize;
        let ms = match name {
            "MetricAcquiringDsWaitTimeEvent" => {
                // Log-normal around 1.5 s: most fast, a long tail.
                (1500.0 * (0.7 * self.normal()).exp() * self.profile.ds_wait_scale).min(3.0e6)
            }
            "MetricMatchLengthDurationEvent" => {
                (900_000.0 + 300_000.0 * self.normal()).max(60_000.0)
            }
            "MetricTotalActiveSessionEvent" => {
                let step = 10.0 * (self.unit() - 0.5);
                let a = &mut self.active[ns];
                *a = (*a + step).max(0.0);
                a.round()
            }
            "MetricTotalPlayerPersessionEvent" => {
                let players = (8.0 + 3.0 * self.normal()).round().clamp(1.0, 16.0) as usize;
                // Half the time the count is only the userIds list.
                if self.next_u64().is_multiple_of(2) {
                    return (String::new(), players);
                }
                players as f64
            }
            n if n.starts_with("Metric") => return (String::new(), users),
            _ => {
                let s = format!(
                    r#"{{"SessionID":"{:016x}","CreatedBy":"{:016x}","TextChat":false}}"#,
                    self.next_u64(),
                    self.next_u64()
                );
                return (s, users);
            }
        };
        let v = ms.round() as u64;
        let text = if self.next_u64().is_multiple_of(2) {
            v.to_string()
        } else {
            format!(r#"{{"value":{v}}}"#)
        };
        (text, users)
    }

    fn envelope(
        &mut self,
        name: &str,
        ns: usize,
        message: &str,
        users: usize,
        unix_ms: u64,
    ) -> Vec<u8> {
        let ids: [u64; 4] = std::array::from_fn(|_| self.next_u64());
        let user_ids: Vec<u64> = (0..users).map(|_| self.next_u64()).collect();
        let namespace = &self.namespaces[ns];
        let mut s = String::with_capacity(512);
        let _ = write!(
            s,
            r#"{{"id":"sim-{:x}-{}","version":1,"name":"{name}","namespace":"{namespace}","parentNamespace":"studio","timestamp":"{}","userId":"{:016x}","traceId":"{:016x}{:016x}","sessionId":"{:016x}","spanContext":"""#,
            self.profile.seed,
            self.seq,
            rfc3339(unix_ms),
            ids[0],
            ids[1],
            ids[2],
            ids[3],
        );
        if name != "onPartyCreated" {
            s.push_str(r#","payload":{"userIds":["#);
            for (i, id) in user_ids.iter().enumerate() {
                let _ = write!(s, "{}\"{id:016x}\"", if i > 0 { "," } else { "" });
            }
            let _ = write!(
                s,
                r#"],"namespace":"{namespace}","topicName":"mpv2SessionHistory","message":"#
            );
            s.push_str(&serde_json::Value::String(message.to_string()).to_string());
            s.push('}');
        }
        s.push('}');
        s.into_bytes()
    }

    fn invalid(&mut self) -> Vec<u8> {
        let bad: &[u8] = match self.next_u64() % 5 {
            0 => b"{not json",
            1 => br#"{"namespace":"sim","payload":{"message":"5"}}"#,
            2 => br#"{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"sim","payload":{"message":"soon"}}"#,
            3 => br#"{"name":"MetricAcquiringDsEvent","payload":{"message":""}}"#,
            _ => br#"{"name":"MetricAcquiringDsWaitTimeEvent","namespace":"sim","payload":{"message":"-1"}}"#,
        };
        bad.to_vec()
    }
}

fn namespace_name(i: usize) -> String {
    const GAMES: [&str; 8] = [
        "skyforge",
        "tidebreak",
        "ironhowl",
        "emberfall",
        "starlane",
        "voidrun",
        "mossgate",
        "quartz",
    ];
    match (GAMES.get(i), i / GAMES.len()) {
        (Some(g), _) => (*g).to_string(),
        (None, round) => format!("{}{round}", GAMES[i % GAMES.len()]),
    }
}

/// `2026-11-22T10:00:01.250Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Events per second; 0 publishes as fast as NATS takes them.
    pub rate: u64,
    /// Stop after this many events (0: no limit).
    pub count: u64,
    /// Stop after this long (zero: no limit).
    pub duration: Duration,
}

/// Publish until the plan is done or `stop` resolves; returns events published.
/// The last flush waits at most `flush_limit` (NATS may be gone).
pub async fn publish(
    client: &async_nats::Client,
    mut generator: Generator,
    plan: &Plan,
    stop: impl std::future::Future<Output = ()>,
    flush_limit: Duration,
) -> Result<u64, async_nats::Error> {
    tokio::pin!(stop);
    let start = Instant::now();
    let mut sent = 0u64;
    let tick = Duration::from_millis(10);
    loop {
        let elapsed = start.elapsed();
        if (plan.count > 0 && sent >= plan.count)
            || (!plan.duration.is_zero() && elapsed >= plan.duration)
        {
            break;
        }
        let due = if plan.rate == 0 {
            sent + 1000
        } else {
            (elapsed.as_secs_f64() * plan.rate as f64) as u64 + 1
        };
        let due = if plan.count > 0 {
            due.min(plan.count)
        } else {
            due
        };
        let now = unix_ms();
        let burst = async {
            while sent < due {
                let (subject, body) = generator.next_event(now);
                client.publish(subject, Bytes::from(body)).await?;
                sent += 1;
            }
            Ok::<_, async_nats::Error>(())
        };
        // A publish waits while the client's buffer is full (NATS gone): the
        // stop signal must still get through.
        tokio::select! {
            biased;
            _ = &mut stop => break,
            r = burst => r?,
        }
        let pause = if plan.rate > 0 { tick } else { Duration::ZERO };
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    match tokio::time::timeout(flush_limit, client.flush()).await {
        Ok(r) => r?,
        Err(_) => tracing::warn!(
            limit = ?flush_limit,
            "the last flush to NATS did not finish (is it reachable?): some events may not have reached it"
        ),
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Catalog;
    use crate::exporter::Exporter;

    #[test]
    fn timestamps_round_trip() {
        let t = 1_795_341_601_250;
        assert_eq!(rfc3339(t), "2026-11-22T10:00:01.250Z");
        assert_eq!(
            crate::event::parse_rfc3339(&rfc3339(t)),
            Some(1_795_341_601.25)
        );
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn generated_events_all_fold() {
        let exporter = Exporter::new(Catalog::default_mapping(), 0);
        let mut g = Generator::new(Profile::default());
        let bodies: Vec<Vec<u8>> = (0..2000).map(|_| g.next_event(unix_ms()).1).collect();
        let folded = exporter.ingest(bodies.iter().map(Vec::as_slice));
        assert_eq!(folded, 2000);
        let text = crate::exposition::page::render_text(&exporter);
        for family in [
            "session_active_sessions{",
            "session_ds_acquisitions_total{",
            "session_ds_acquisition_wait_seconds_bucket{",
            "session_match_duration_seconds_sum{",
            "session_matchmaking_tickets_created_total{",
            "session_matchmaking_matches_total{",
            "session_matchmaking_tickets_matched_total{",
            "session_players_per_session_count{",
            "session_events_total{event=\"onPartyCreated\"}",
        ] {
            assert!(text.contains(family), "missing {family}");
        }
    }

    #[test]
    fn invalid_ratio_produces_rejections() {
        let exporter = Exporter::new(Catalog::default_mapping(), 0);
        let profile = Profile {
            invalid_ratio: 0.5,
            ..Profile::default()
        };
        let mut g = Generator::new(profile);
        let bodies: Vec<Vec<u8>> = (0..400).map(|_| g.next_event(unix_ms()).1).collect();
        let folded = exporter.ingest(bodies.iter().map(Vec::as_slice));
        assert!((100..300).contains(&folded), "{folded}");
    }
}
