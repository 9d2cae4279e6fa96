//! `session-exporter replay`: fold a JSONL capture offline, with the live
//! exporter's decode and fold, and render the result.
//!
//! Without a step the capture is folded as a live exporter would fold it
//! arriving now, and one exposition is written. With a step, time is the
//! events' own (`timestamp`): the state is rendered at every step boundary of
//! event time (a frame holds every event stamped at or before it), each sample
//! stamped with its boundary, as OpenMetrics history for
//! `promtool tsdb create-blocks-from openmetrics`; the frames go to a
//! temporary file as they are made (`spill`), so memory is the fold's, not
//! the capture's.

mod spill;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::clock::unix_now;
use crate::config::Catalog;
use crate::event::decode_limited;
use crate::exposition::{self, openmetrics};
use crate::fold::{Fold, Outcome, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

pub struct Options {
    pub format: Format,
    /// Render a frame at every multiple of this, in event time.
    pub step: Option<Duration>,
    /// Recent event ids remembered to drop duplicates (0: off).
    pub dedup_window: usize,
}

/// What a replay did, for stderr.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub lines: u64,
    pub folded: u64,
    pub duplicates: u64,
    /// Rejected lines by reason (the live exporter's reasons, and
    /// `missing_timestamp` with a step: such an event has no place in time).
    pub rejected: BTreeMap<&'static str, u64>,
    /// With a step: events stamped before a frame already written, folded
    /// into the next one.
    pub late: u64,
    pub frames: usize,
    pub seconds: f64,
}

/// A capture line as the repository's examples keep them, the message under
/// `event` beside its subject; a plain line is the message itself.
#[derive(Deserialize)]
struct Captured<'a> {
    #[allow(dead_code)]
    subject: &'a str,
    #[serde(borrow)]
    event: &'a RawValue,
}

/// The message a line holds.
fn message(line: &[u8]) -> &[u8] {
    let trimmed = line.trim_ascii_start();
    if trimmed.starts_with(b"{\"subject\"") {
        if let Ok(c) = serde_json::from_slice::<Captured>(trimmed) {
            return c.event.get().as_bytes();
        }
    }
    line
}

/// Event time as the fold's clock: `origin` is the fold's start, `t0` the
/// first event's time; the clock never runs backwards.
struct EventClock {
    origin: Instant,
    t0: Option<f64>,
    latest: Instant,
}

impl EventClock {
    fn at(&mut self, t: f64) -> Instant {
        let t0 = *self.t0.get_or_insert(t);
        let now = self.origin + Duration::from_secs_f64((t - t0).max(0.0));
        self.latest = self.latest.max(now);
        self.latest
    }
}

/// A folded capture, ready to be written.
pub struct Replayed {
    pub report: Report,
    output: Output,
}

enum Output {
    Page(String),
    /// `--step`: the frames, spilled to a temporary file.
    History(spill::Spill),
}

impl Replayed {
    /// Write the exposition (with a step: the merged history, `# EOF` last).
    pub fn write(self, out: &mut impl Write) -> std::io::Result<()> {
        match self.output {
            Output::Page(page) => out.write_all(page.as_bytes()),
            Output::History(spill) => write_history(spill, out),
        }
    }
}

/// The spilled frames merged into one OpenMetrics history, `# EOF` last.
fn write_history(spill: spill::Spill, out: &mut impl Write) -> std::io::Result<()> {
    // Every frame's blocks carry their family's header: the first one is kept.
    let mut headed = None;
    spill.merge(&mut |family, key, text| {
        if key.is_empty() {
            if headed == Some(family) {
                return Ok(());
            }
            headed = Some(family);
        }
        out.write_all(text)
    })?;
    out.write_all(b"# EOF\n")
}

/// One frame into the spill, as a run of its own.
fn spill_frame(spill: &mut spill::Spill, at: f64, snapshot: &Snapshot) -> std::io::Result<()> {
    let frame = openmetrics::Frame {
        snapshot,
        at: Some(at),
        created: false,
    };
    let mut result = Ok(());
    openmetrics::frame_blocks(frame, |family, key, text| {
        if result.is_ok() {
            result = spill.block(family, key.as_bytes(), text.as_bytes());
        }
    });
    spill.end_run();
    result
}

/// Fold every line of `input`; the result is written by [`Replayed::write`].
pub fn replay(input: impl BufRead, catalog: Catalog, opts: &Options) -> std::io::Result<Replayed> {
    let started = Instant::now();
    let max = catalog.limits.max_message_bytes;
    let mut fold = Fold::new(Arc::new(catalog)).with_dedup(opts.dedup_window);
    let mut clock = EventClock {
        origin: Instant::now(),
        t0: None,
        latest: Instant::now(),
    };
    let step = opts.step.map(|s| s.as_secs_f64());
    let mut spill = match step {
        Some(_) => Some(spill::Spill::new()?),
        None => None,
    };
    // The last boundary written, and the next (event time) to write.
    let mut written: Option<f64> = None;
    let mut next: Option<f64> = None;
    let mut report = Report::default();
    let wall = unix_now();

    for line in input.split(b'\n') {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.trim_ascii().is_empty() {
            continue;
        }
        report.lines += 1;
        let ev = match decode_limited(message(line), max) {
            Ok(ev) => ev,
            Err(reason) => {
                report.reject(reason.as_str());
                continue;
            }
        };
        let (now, event_time) = match (step, ev.time(), spill.as_mut()) {
            (Some(s), Some(t), Some(spill)) => {
                let boundary = next.get_or_insert((t / s).ceil() * s);
                while t > *boundary {
                    spill_frame(spill, *boundary, &fold.snapshot(clock.at(*boundary)))?;
                    report.frames += 1;
                    written = Some(*boundary);
                    *boundary += s;
                }
                if written.is_some_and(|w| t <= w) {
                    report.late += 1;
                }
                (clock.at(t), t)
            }
            (Some(_), None, _) => {
                report.reject("missing_timestamp");
                continue;
            }
            (_, t, _) => (Instant::now(), t.unwrap_or(wall)),
        };
        match fold.apply(&ev, now, event_time) {
            Ok(Outcome::Folded | Outcome::Overflowed) => report.folded += 1,
            Ok(Outcome::Duplicate) => report.duplicates += 1,
            Err(reason) => report.reject(reason.as_str()),
        }
    }

    let output = match (opts.format, next, spill) {
        (Format::Text, _, _) => {
            let mut page = String::new();
            exposition::render(&fold.snapshot(Instant::now()), &mut page);
            Output::Page(page)
        }
        (Format::OpenMetrics, Some(last), Some(mut spill)) => {
            spill_frame(&mut spill, last, &fold.snapshot(clock.at(last)))?;
            report.frames += 1;
            Output::History(spill)
        }
        (Format::OpenMetrics, _, _) => {
            let snap = fold.snapshot(Instant::now());
            let frame = openmetrics::Frame {
                snapshot: &snap,
                at: None,
                created: false,
            };
            let mut page = String::new();
            openmetrics::render(&[frame], &mut page);
            Output::Page(page)
        }
    };
    report.frames = report.frames.max(1);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(Replayed { report, output })
}

impl Report {
    fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_default() += 1;
    }

    /// What stderr gets: a summary line, then one line per reject reason.
    pub fn summary(&self) -> String {
        let rejected: u64 = self.rejected.values().sum();
        let rate = self.lines as f64 / self.seconds.max(1e-9);
        let mut s = format!(
            "replay: {} lines: {} folded, {} rejected, {} duplicates, {} late; {} frame(s) in {:.3}s ({:.0} events/s)\n",
            self.lines, self.folded, rejected, self.duplicates, self.late, self.frames, self.seconds, rate
        );
        for (reason, n) in &self.rejected {
            s.push_str(&format!("replay: rejected {reason}: {n}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str, step: Option<u64>, format: Format) -> (String, Report) {
        let opts = Options {
            format,
            step: step.map(Duration::from_secs),
            dedup_window: 0,
        };
        let replayed = replay(input.as_bytes(), Catalog::default_mapping(), &opts).unwrap();
        let mut out = Vec::new();
        let report = Report {
            ..replayed.report.clone()
        };
        replayed.write(&mut out).unwrap();
        (String::from_utf8(out).unwrap(), report)
    }

    /// Spilled and merged, many frames are byte for byte what rendering
    /// them all at once in memory gives: every kind, several namespaces
    /// coming and going, windows, a family that starts late.
    #[test]
    fn spilled_history_equals_rendering_every_frame_at_once() {
        let catalog = Arc::new(Catalog::default_mapping());
        let mut fold = Fold::new(catalog);
        let mut g = crate::simulate::Generator::new(crate::simulate::Profile {
            namespaces: 7,
            seed: 3,
            ..Default::default()
        });
        let origin = Instant::now();
        let mut snapshots = Vec::new();
        for f in 0..40u64 {
            let events = if f < 5 { 3 } else { 60 };
            for _ in 0..events {
                let (_, body) = g.next_event(1_800_000_000_000 + f * 60_000);
                let ev = crate::event::decode(&body).unwrap();
                let _ = fold.apply(
                    &ev,
                    origin + Duration::from_secs(f * 60),
                    1.8e9 + f as f64 * 60.0,
                );
            }
            let at = 1.8e9 + f as f64 * 60.0;
            snapshots.push((at, fold.snapshot(origin + Duration::from_secs(f * 60))));
        }
        let frames: Vec<openmetrics::Frame> = snapshots
            .iter()
            .map(|(at, snapshot)| openmetrics::Frame {
                snapshot,
                at: Some(*at),
                created: false,
            })
            .collect();
        let mut want = String::new();
        openmetrics::render(&frames, &mut want);
        let mut spill = spill::Spill::new().unwrap();
        for (at, snapshot) in &snapshots {
            spill_frame(&mut spill, *at, snapshot).unwrap();
        }
        let mut got = Vec::new();
        write_history(spill, &mut got).unwrap();
        assert!(want.len() > 50_000, "{}", want.len());
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }

    fn ev(name: &str, ns: &str, ts: &str, message: &str) -> String {
        format!(
            r#"{{"name":"{name}","namespace":"{ns}","timestamp":"{ts}","payload":{{"message":"{message}"}}}}"#
        )
    }

    #[test]
    fn captured_lines_unwrap_to_their_message() {
        let plain = ev("MetricAcquiringDsEvent", "g", "2026-01-01T00:00:00Z", "");
        let wrapped = format!(r#"{{"subject":"mpv2SessionHistory.X","event":{plain}}}"#);
        assert_eq!(message(wrapped.as_bytes()), plain.as_bytes());
        assert_eq!(message(plain.as_bytes()), plain.as_bytes());
        assert_eq!(message(b"{\"subject\":1}"), b"{\"subject\":1}");
    }

    #[test]
    fn rejects_are_counted_by_reason() {
        let good = ev("MetricAcquiringDsEvent", "g", "2026-01-01T00:00:00Z", "");
        let input = format!("{good}\n{{\n\n{{\"namespace\":\"g\"}}\r\n{good}\n");
        let (out, report) = run(&input, None, Format::Text);
        assert_eq!((report.lines, report.folded), (4, 2));
        assert_eq!(report.rejected["invalid_json"], 1);
        assert_eq!(report.rejected["missing_name"], 1);
        assert!(out.contains("session_ds_acquisitions_total{game_namespace=\"g\"} 2\n"));
    }

    #[test]
    fn steps_render_the_state_at_each_boundary_of_event_time() {
        let a = |ts| ev("MetricAcquiringDsEvent", "g", ts, "");
        let input = [
            a("2026-01-01T00:00:05Z"),
            a("2026-01-01T00:01:00Z"),
            ev("MetricAcquiringDsEvent", "g", "", ""),
            a("2026-01-01T00:03:30Z"),
            a("2026-01-01T00:00:10Z"),
        ]
        .join("\n");
        let (out, report) = run(&input, Some(60), Format::OpenMetrics);
        assert_eq!(report.rejected["missing_timestamp"], 1);
        assert_eq!((report.frames, report.late), (4, 1));
        let t0 = crate::event::parse_rfc3339("2026-01-01T00:01:00Z").unwrap();
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("session_ds_acquisitions_total"))
            .collect();
        let want: Vec<String> = [(0, 2), (60, 2), (120, 2), (180, 4)]
            .iter()
            .map(|(dt, n)| {
                format!(
                    "session_ds_acquisitions_total{{game_namespace=\"g\"}} {n} {}",
                    t0 + *dt as f64
                )
            })
            .collect();
        assert_eq!(lines, want);
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn gauges_expire_in_event_time() {
        let gauge = |ts| ev("MetricTotalActiveSessionEvent", "g", ts, "7");
        let other = |ts| ev("MetricAcquiringDsEvent", "g", ts, "");
        let input = [gauge("2026-01-01T00:00:00Z"), other("2026-01-01T01:00:00Z")].join("\n");
        let (out, _) = run(&input, Some(600), Format::OpenMetrics);
        let gauges = out
            .lines()
            .filter(|l| l.starts_with("session_active_sessions{"))
            .count();
        // TTL 10m: live at 00:00 and 00:10 (an age of exactly the TTL is
        // still live), gone from 00:20 on although the counter goes on.
        assert_eq!(gauges, 2, "{out}");
    }
}
