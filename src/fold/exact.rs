//! Counters and sums as exact integers.

/// A sum in billionths, as an integer: the same whatever order the values
/// arrive in (an `f64` sum is not, and a replica or a restarted exporter folds
/// redelivered events in another order than one that never died). Values are
/// kept to 1e-9 of their unit, far below what any Prometheus query resolves.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Exact(pub(super) i128);

const EXACT_SCALE: f64 = 1e9;

impl Exact {
    pub(super) fn add(&mut self, v: f64) {
        // `as` saturates: a value beyond ±1.7e29 cannot wrap the sum.
        self.0 = self.0.saturating_add((v * EXACT_SCALE).round() as i128);
    }

    pub(super) fn get(self) -> f64 {
        // Whole units and the fraction apart, so that integers stay exact.
        let whole = self.0 / 1_000_000_000;
        let frac = self.0 % 1_000_000_000;
        whole as f64 + frac as f64 / EXACT_SCALE
    }
}
