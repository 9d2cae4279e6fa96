//! A checkpoint read back into a fold: each metric by name into the current
//! mapping (unchanged ones keep their state, changed bucket bounds are
//! re-counted from HDR, anything else is dropped and reported), ages turned
//! back into times, and the source's position.

use super::wire::{kind_from, Reader};
use super::*;

impl Fold {
    /// Load a checkpoint into this fold, which must be empty (just built with
    /// the current mapping). On error the fold is left empty.
    pub fn restore(
        &mut self,
        bytes: &[u8],
        now: Instant,
        wall: f64,
    ) -> Result<Restored, CheckpointError> {
        let result = self.restore_inner(bytes, now, wall);
        if result.is_err() {
            self.clear();
        }
        result
    }

    /// Back to empty, as just built with the current mapping.
    pub fn clear(&mut self) {
        self.namespaces = Default::default();
        self.events.iter_mut().for_each(|n| *n = 0);
        self.event_starts.iter_mut().for_each(|s| *s = None);
        if let Some(d) = &mut self.dedup {
            d.reset(d.key);
        }
    }

    fn restore_inner(
        &mut self,
        bytes: &[u8],
        now: Instant,
        wall: f64,
    ) -> Result<Restored, CheckpointError> {
        let mut r = Reader { buf: bytes, at: 0 };
        if r.take(4).ok() != Some(MAGIC.as_slice()) {
            return Err(CheckpointError::Corrupt(
                "not a session-exporter checkpoint (no SXST magic)".into(),
            ));
        }
        let format = r.varint()?;
        if !(1..=FORMAT).contains(&format) {
            return Err(CheckpointError::Corrupt(format!(
                "checkpoint format {format} is not one this build reads (format {FORMAT})"
            )));
        }
        let written = r.f64()?;
        let age = (wall - written).max(0.0);
        let mut out = Restored {
            age_seconds: age,
            format,
            ..Restored::default()
        };
        for _ in 0..r.count(2)? {
            let label = r.str()?;
            let n = r.varint()?;
            let start = if format >= 3 { r.start()? } else { None };
            let i = seed::event_index(label);
            self.event_starts[i] = start;
            let count = &mut self.events[i];
            *count = count.checked_add(n).ok_or_else(|| {
                CheckpointError::Corrupt(format!("event count of {label:?} overflows"))
            })?;
        }
        let catalog = self.catalog.clone();
        let stored = r.count(8)?;
        let mut table = Vec::with_capacity(stored);
        for _ in 0..stored {
            let name = r.str()?.to_string();
            let kind = kind_from(r.varint()?)?;
            let sigfig = r.varint()?;
            let hdr_scale = r.f64()?;
            let buckets: Vec<f64> = (0..r.count(8)?)
                .map(|_| r.f64())
                .collect::<Result<_, _>>()?;
            let step = r.varint()?;
            let target = catalog.metrics.iter().position(|d| {
                d.name == name
                    && d.kind == kind
                    && u64::from(d.sigfig) == sigfig
                    && d.hdr_scale == hdr_scale
                    && d.window.as_ref().map_or(0, |_| step_nanos(d)) == step
            });
            match target {
                Some(i) if catalog.metrics[i].buckets != buckets => out.rebucketed.push(name),
                Some(_) => {}
                None => out.dropped_metrics.push(name),
            }
            if !(1..=5).contains(&sigfig) {
                return Err(CheckpointError::Corrupt(format!(
                    "metric {:?}: significant figures {sigfig} out of range",
                    table.len()
                )));
            }
            table.push(StoredMetric {
                kind,
                sigfig: sigfig as u8,
                buckets: buckets.len(),
                windowed: step > 0,
                step_nanos: step.max(1),
                target,
            });
        }
        // Each stored SLO's place in the current mapping, if its counts carry over.
        let stored_slos = if format >= 4 { r.count(2)? } else { 0 };
        let mut slo_table = Vec::with_capacity(stored_slos);
        for _ in 0..stored_slos {
            let (name, metric) = (r.str()?, r.str()?);
            let target = catalog
                .slos
                .iter()
                .position(|s| s.name == name && catalog.metrics[s.metric].name == metric);
            if target.is_none() {
                out.dropped_slos.push(name.to_string());
            }
            slo_table.push(target);
        }
        let namespaces = r.count(2)?;
        for _ in 0..namespaces {
            let name = r.str()?;
            let mut slots: Vec<Slot> = catalog.metrics.iter().map(|_| Slot::Empty).collect();
            for m in &table {
                let slot = self.decode_slot(&mut r, m, format, now, age)?;
                if let Some(i) = m.target {
                    slots[i] = slot;
                }
            }
            let mut slis = vec![Sli::default(); catalog.slos.len()];
            for target in &slo_table {
                let sli = Sli {
                    start: r.start()?,
                    good: r.varint()?,
                    bad: r.varint()?,
                };
                if sli.good.checked_add(sli.bad).is_none() {
                    return Err(CheckpointError::Corrupt(format!(
                        "SLI counts of namespace {name:?} overflow"
                    )));
                }
                if let Some(k) = target {
                    slis[*k] = sli;
                }
            }
            if self.namespaces.index.contains_key(name) {
                return Err(CheckpointError::Corrupt(format!(
                    "namespace {name:?} appears twice"
                )));
            }
            let i = self.namespaces.insert(name, &catalog);
            let ns = self.namespaces.get_mut(i);
            (ns.slots, ns.slis) = (slots, slis);
        }
        for ns in &mut self.namespaces.list {
            let ns = std::sync::Arc::make_mut(ns);
            for (slot, def) in ns.slots.iter_mut().zip(catalog.metrics.iter()) {
                if let Slot::Histogram(h) = slot {
                    if out.rebucketed.contains(&def.name) {
                        h.rebucket(def);
                    }
                }
            }
        }
        out.namespaces = namespaces;
        let key = r.u64()?;
        let remembered = r.count(8)?;
        let ids: Vec<u64> = (0..remembered).map(|_| r.u64()).collect::<Result<_, _>>()?;
        if let Some(d) = &mut self.dedup {
            d.reset(if remembered > 0 { key } else { d.key });
            // Their slots are not stored: a slot's ids are tagged as it is
            // adopted (`Fold::adopt`).
            for h in ids {
                d.remember(h, NO_SLOT);
            }
        }
        if format == 1 {
            out.resume.legacy_acks = (0..r.count(1)?)
                .map(|_| r.str().map(str::to_string))
                .collect::<Result<_, _>>()?;
            r.varint()?; // the broadcast consumer's position: no such consumer now
        } else {
            let (count, index) = (r.varint()?, r.varint()?);
            if count == 0 || index >= count || count > u64::from(u32::MAX) {
                return Err(CheckpointError::Corrupt(format!(
                    "partition {index} of {count} is not a partition"
                )));
            }
            out.resume.partition = Partition {
                count: count as u32,
                index: index as u32,
            };
            out.resume.stream = r.str()?.to_string();
            out.resume.stream_seq = r.varint()?;
        }
        if format >= 5 {
            let slots = r.varint()?;
            let held: Vec<u64> = (0..r.count(1)?)
                .map(|_| r.varint())
                .collect::<Result<_, _>>()?;
            if slots > u64::from(u32::MAX) || held.iter().any(|&s| s >= slots) {
                return Err(CheckpointError::Corrupt(format!(
                    "slots {held:?} of {slots} are not slots"
                )));
            }
            out.resume.slots = slots as u32;
            out.resume.held = held.into_iter().map(|s| s as u32).collect();
        }
        if r.at != bytes.len() {
            return Err(CheckpointError::Corrupt(format!(
                "{} bytes after the end of the checkpoint",
                bytes.len() - r.at
            )));
        }
        Ok(out)
    }

    fn decode_slot(
        &self,
        r: &mut Reader,
        m: &StoredMetric,
        format: u64,
        now: Instant,
        age: f64,
    ) -> Result<Slot, CheckpointError> {
        let tag = r.varint()?;
        let mismatch =
            || CheckpointError::Corrupt(format!("slot of type {tag} in a {:?} metric", m.kind));
        let mut start = || if format >= 3 { r.start() } else { Ok(None) };
        Ok(match tag {
            0 => Slot::Empty,
            1 if m.kind == Kind::Counter => Slot::Counter {
                start: start()?,
                sum: r.exact()?.non_negative("counter")?,
            },
            2 if m.kind == Kind::Gauge => {
                let value = r.f64()?;
                let event_time = r.f64()?;
                // The fold only keeps values an event could set: finite, not negative.
                if !(value.is_finite() && value >= 0.0 && event_time.is_finite()) {
                    return Err(CheckpointError::Corrupt(format!(
                        "gauge value {value} at event time {event_time} is not one the fold keeps"
                    )));
                }
                let since = Duration::try_from_secs_f64(r.f64()? + age)
                    .map_err(|_| CheckpointError::Corrupt("gauge age is not a duration".into()))?;
                // A gauge older than the process clock can date is at least
                // as old as the process: it has expired, or is about to.
                let seen = now.checked_sub(since).unwrap_or(now);
                Slot::Gauge {
                    value,
                    event_time,
                    seen,
                }
            }
            3 if m.kind == Kind::Histogram => {
                let start = start()?;
                let sum = r.exact()?.non_negative("histogram sum")?;
                let count = r.varint()?;
                let buckets = (0..m.buckets)
                    .map(|_| r.varint())
                    .collect::<Result<Vec<_>, _>>()?;
                // Per-bucket counts: together at most the count (the rest is above the last bound).
                let below = buckets.iter().try_fold(0u64, |a, &b| a.checked_add(b));
                if below.is_none_or(|b| b > count) {
                    return Err(CheckpointError::Corrupt(format!(
                        "histogram bucket counts add up to more than its count {count}"
                    )));
                }
                let hdr = r.hdr(m.sigfig)?;
                // Buckets are re-counted from HDR when their bounds changed.
                if hdr.len() > count {
                    return Err(CheckpointError::Corrupt(format!(
                        "histogram records {} values but counts {count}",
                        hdr.len()
                    )));
                }
                let steps = r.count(2)?;
                let mut window = m.windowed.then(|| Box::new(Window::new(m.sigfig)));
                for _ in 0..steps {
                    let step_age = r.varint()?;
                    let h = r.hdr(m.sigfig)?;
                    let (Some(w), Some(i)) = (&mut window, m.target) else {
                        continue;
                    };
                    let gap = (age * 1e9 / m.step_nanos as f64) as u64;
                    let total = step_age.saturating_add(gap);
                    if total < WINDOW_STEPS as u64 {
                        let held = window_step(&self.catalog.metrics[i], self.started, now) - total;
                        let at = (held % WINDOW_STEPS as u64) as usize;
                        w.steps[at] = h;
                        w.held[at] = held;
                    }
                }
                // Exemplars are not kept: new observations bring new ones.
                // Native buckets come back from HDR, within its precision.
                let def = m.target.map(|i| &self.catalog.metrics[i]);
                let native = def.map_or_else(
                    || crate::fold::Native::new(crate::config::DEFAULT_NATIVE_SCHEMA),
                    |d| crate::fold::Native::from_hdr(&hdr, d.hdr_scale, d.native_schema),
                );
                Slot::Histogram(Box::new(Hist {
                    hdr,
                    buckets,
                    sum,
                    count,
                    window,
                    exemplars: Vec::new(),
                    native,
                    start,
                }))
            }
            _ => return Err(mismatch()),
        })
    }
}

impl Exact {
    /// Sums and counters only grow from zero: a negative one is not ours.
    fn non_negative(self, what: &str) -> Result<Exact, CheckpointError> {
        if self.0 < 0 {
            return Err(CheckpointError::Corrupt(format!("{what} is negative")));
        }
        Ok(self)
    }
}

struct StoredMetric {
    kind: Kind,
    sigfig: u8,
    buckets: usize,
    windowed: bool,
    step_nanos: u64,
    /// Index in the current mapping, if the state carries over.
    target: Option<usize>,
}
