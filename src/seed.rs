//! Facts of the seed schema ("Session Notification Events 0.1.0", both copies
//! in `shared/seeds/`): its channels and every event name it lists.

/// The channels of the seed; the default subjects are each, bare and with `.>`.
pub const CHANNELS: [&str; 4] = [
    "session",
    "sessionNotification",
    "sessionEvent",
    "mpv2SessionHistory",
];

/// Every event name of the seed, sorted (byte order) for binary search. These
/// and `other` are the only values of `session_events_total{event}`, so a
/// producer cannot mint series by inventing names.
pub const EVENT_NAMES: [&str; 40] = [
    "GameSessionBackfillUpdateEvent",
    "GameSessionCodeChangedEvent",
    "GameSessionCodeRevokedEvent",
    "GameSessionCreatedEvent",
    "GameSessionDSStatusChangedEvent",
    "GameSessionEndedEvent",
    "GameSessionInvitedEvent",
    "GameSessionJoinedEvent",
    "GameSessionKickedEvent",
    "GameSessionMembersChangedEvent",
    "GameSessionRejectedEvent",
    "GameSessionUpdatedEvent",
    "MatchHistoryEvent",
    "MetricAcquiringDsEvent",
    "MetricAcquiringDsWaitTimeEvent",
    "MetricCreatedMatchmakingTicketEvent",
    "MetricMatchLengthDurationEvent",
    "MetricMatchMatchmakingEvent",
    "MetricMatchMatchmakingTicketEvent",
    "MetricTotalActiveSessionEvent",
    "MetricTotalPlayerPersessionEvent",
    "OnSessionEnded",
    "PartyBanEvent",
    "PartyCreatedEvent",
    "PartyDeletedEvent",
    "PartyDisconnectedEvent",
    "PartyDroppedEvent",
    "PartyInviteCancelled",
    "PartyInvitedEvent",
    "PartyJoinedEvent",
    "PartyKickedEvent",
    "PartyLeaderChanged",
    "PartyLeaveEvent",
    "PartyLeftEvent",
    "PartyMembersChangedEvent",
    "PartyRejectedEvent",
    "PartyRejoinedEvent",
    "PartyUpdatedEvent",
    "onPartyCreated",
    "sessionNotification",
];

/// The label value for names outside the seed.
pub const OTHER_EVENT: &str = "other";

/// Index into `EVENT_NAMES`, or `EVENT_NAMES.len()` for `other`. Called for
/// every event: one hash into a fixed table and one comparison.
pub fn event_index(name: &str) -> usize {
    let table = TABLE.get_or_init(build_table);
    let mut slot = home(name);
    loop {
        match table[slot] {
            u8::MAX => return EVENT_NAMES.len(),
            i if EVENT_NAMES[usize::from(i)] == name => return usize::from(i),
            _ => slot = (slot + 1) % TABLE_SIZE,
        }
    }
}

/// Open addressing, under a sixth full; `u8::MAX` marks an empty slot.
const TABLE_SIZE: usize = 256;
static TABLE: std::sync::OnceLock<[u8; TABLE_SIZE]> = std::sync::OnceLock::new();

fn build_table() -> [u8; TABLE_SIZE] {
    let mut table = [u8::MAX; TABLE_SIZE];
    for (i, name) in EVENT_NAMES.iter().enumerate() {
        let mut slot = home(name);
        while table[slot] != u8::MAX {
            slot = (slot + 1) % TABLE_SIZE;
        }
        table[slot] = i as u8;
    }
    table
}

/// A name's first slot: its bytes eight at a time, multiplied, top byte.
/// The table holds only the fixed seed names, so there is no flooding
/// concern; byte-at-a-time FNV cost several times more per event
/// (`scripts/profile`; BENCHMARKS.md, "Per-event cost").
fn home(name: &str) -> usize {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let b = name.as_bytes();
    let (words, _) = b.as_chunks::<8>();
    // The last eight bytes (overlapping the words), or the few there are.
    let last = match b.last_chunk::<8>() {
        Some(w) => u64::from_le_bytes(*w),
        None => b.iter().fold(0, |w, &c| w << 8 | u64::from(c)),
    };
    let h = words
        .iter()
        .map(|w| u64::from_le_bytes(*w))
        .chain([last])
        .fold(b.len() as u64, |h, w| (h ^ w).wrapping_mul(K));
    (h >> 56) as usize % TABLE_SIZE
}

pub fn event_label(index: usize) -> &'static str {
    EVENT_NAMES.get(index).copied().unwrap_or(OTHER_EVENT)
}

/// Default subjects: each channel, bare and with `.>`.
pub fn default_subjects() -> Vec<String> {
    CHANNELS
        .iter()
        .flat_map(|c| [c.to_string(), format!("{c}.>")])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_and_found() {
        assert!(EVENT_NAMES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            event_label(event_index("MetricAcquiringDsEvent")),
            "MetricAcquiringDsEvent"
        );
        assert_eq!(event_label(event_index("Invented\n")), "other");
        assert_eq!(event_label(event_index("")), "other");
        for (i, name) in EVENT_NAMES.iter().enumerate() {
            assert_eq!(event_index(name), i);
        }
    }
}
