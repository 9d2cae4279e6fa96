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

/// Index into `EVENT_NAMES`, or `EVENT_NAMES.len()` for `other`.
pub fn event_index(name: &str) -> usize {
    EVENT_NAMES
        .binary_search(&name)
        .unwrap_or(EVENT_NAMES.len())
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
    }
}
