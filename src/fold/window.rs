//! Windowed quantiles: each histogram with a `window` keeps five rotating
//! HDR sub-histograms, merged at scrape time.

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::record_hdr;
use crate::config::{MetricDef, WindowDef};

/// Sub-histograms a window rotates through: the window covers the last
/// `length` in steps of `length / WINDOW_STEPS`.
pub(super) const WINDOW_STEPS: usize = 5;

/// The recent values of one histogram, for exact windowed quantiles.
#[derive(Debug)]
pub(super) struct Window {
    pub(super) steps: Vec<Histogram<u32>>,
    /// The step number (time since the fold began / step length) each holds.
    pub(super) held: [u64; WINDOW_STEPS],
    /// Bumped by every record.
    pub(super) version: u64,
    /// The quantiles last computed: a scrape visits every namespace, most of
    /// which nothing changed since the last (reading a quantile scans the
    /// histogram's counts). Behind a lock of its own, so that a snapshot
    /// reads windows through shared references: the namespace may be
    /// shared with a checkpoint being encoded, and writing to it would copy
    /// it.
    cached: Mutex<Cached>,
}

/// Quantiles, and the step and version they are of.
#[derive(Debug, Default)]
struct Cached {
    of: Option<(u64, u64)>,
    values: Vec<f64>,
}

impl Clone for Window {
    /// A copy starts without cached quantiles.
    fn clone(&self) -> Window {
        Window {
            steps: self.steps.clone(),
            held: self.held,
            version: self.version,
            cached: Mutex::default(),
        }
    }
}

impl Window {
    pub(super) fn new(sigfig: u8) -> Window {
        Window {
            steps: (0..WINDOW_STEPS)
                .map(|_| Histogram::new(sigfig).expect("sigfig validated to 1..=5"))
                .collect(),
            held: [0; WINDOW_STEPS],
            version: 0,
            cached: Mutex::default(),
        }
    }

    pub(super) fn record(&mut self, step: u64, v: f64) {
        self.version += 1;
        let i = (step % WINDOW_STEPS as u64) as usize;
        if self.held[i] != step {
            self.steps[i].reset();
            self.held[i] = step;
        }
        record_hdr(&mut self.steps[i], v);
    }

    /// Everything recorded in the last `WINDOW_STEPS` steps: the one live
    /// step itself, or several merged into `scratch` (a scrape visits every
    /// namespace, so the copy is skipped when it can be).
    pub(super) fn live<'a>(
        &'a self,
        step: u64,
        scratch: &'a mut Histogram<u32>,
    ) -> &'a Histogram<u32> {
        let mut live = self
            .steps
            .iter()
            .zip(&self.held)
            .filter(|(h, &held)| step.saturating_sub(held) < WINDOW_STEPS as u64 && !h.is_empty())
            .map(|(h, _)| h);
        let Some(first) = live.next() else {
            scratch.reset();
            return scratch;
        };
        let Some(second) = live.next() else {
            return first;
        };
        scratch.reset();
        for h in [first, second].into_iter().chain(live) {
            let _ = scratch.add(h);
        }
        scratch
    }

    /// Append the window's quantiles at `step` to `out`, in the exposed unit
    /// (NaN: nothing recorded within the window). `scratch` merges steps.
    pub(super) fn quantiles(
        &self,
        step: u64,
        def: &WindowDef,
        hdr_scale: f64,
        scratch: &mut Histogram<u32>,
        out: &mut Vec<f64>,
    ) {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if cached.of != Some((step, self.version)) {
            // Refilled in place: no allocation per window per scrape.
            let mut values = std::mem::take(&mut cached.values);
            values.clear();
            let live = self.live(step, scratch);
            // Lowest equivalent, as the buckets count it.
            let value = |v: u64| live.lowest_equivalent(v) as f64 / hdr_scale;
            if live.is_empty() {
                values.extend(def.quantiles.iter().map(|_| f64::NAN));
            } else if def.quantiles.windows(2).all(|q| q[0] < q[1]) {
                // One pass for all of them.
                values.extend(
                    live.value_at_quantiles(def.quantiles.iter().copied())
                        .map(value),
                );
            }
            if values.len() != def.quantiles.len() {
                values.clear();
                values.extend(
                    def.quantiles
                        .iter()
                        .map(|&q| value(live.value_at_quantile(q))),
                );
            }
            cached.values = values;
            cached.of = Some((step, self.version));
        }
        out.extend_from_slice(&cached.values);
    }
}

/// Step numbers start here rather than at 0, so a restored step that is
/// older than the process (`now - age`) is still a positive number.
pub(super) const STEP_ORIGIN: u64 = 5 << 32;

/// A window step's length in nanoseconds (1 for histograms without a window).
pub(super) fn step_nanos(def: &MetricDef) -> u64 {
    def.window.as_ref().map_or(1, |w| {
        (w.length.as_nanos() as u64 / WINDOW_STEPS as u64).max(1)
    })
}

/// Which window step `now` falls in (64-bit arithmetic: 584 years of uptime).
pub(super) fn window_step(def: &MetricDef, started: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(started).as_nanos() as u64 / step_nanos(def) + STEP_ORIGIN
}
