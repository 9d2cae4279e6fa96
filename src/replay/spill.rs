//! `replay --step` history in memory bounded by the fold, not by the capture:
//! each frame is cut into blocks (`openmetrics::frame_blocks`) and appended
//! to a temporary file as one sorted run; at the end the runs are merged by
//! (family, series), frame after frame, which is the order OpenMetrics wants
//! (each series' points together, in time order). At most `FAN_IN` runs are
//! merged at once; more are merged in passes into longer runs first, so
//! memory stays a few buffers per run merged whatever the number of steps.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;

/// Receives merged blocks: (family, key, text).
pub type Sink<'s> = &'s mut dyn FnMut(u32, &[u8], &[u8]) -> io::Result<()>;

/// Runs merged at once: each holds a 4 KiB buffer and its current block.
const FAN_IN: usize = 128;
const BUFFER: usize = 4096;

/// A temporary file of sorted runs. Its name is removed as soon as it is
/// open, so nothing is left behind however the process ends.
pub struct Spill {
    file: BufWriter<File>,
    written: u64,
    runs: Vec<(u64, u64)>,
    run_start: u64,
}

impl Spill {
    pub fn new() -> io::Result<Spill> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "session-exporter-replay-{}-{n}.spill",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(Spill {
            file: BufWriter::new(file),
            written: 0,
            runs: Vec::new(),
            run_start: 0,
        })
    }

    /// Append one block of the run being written (blocks of a run must come
    /// in (family, key) order).
    pub fn block(&mut self, family: u32, key: &[u8], text: &[u8]) -> io::Result<()> {
        let record = record(family, key, text);
        self.file.write_all(&record)?;
        self.written += record.len() as u64;
        Ok(())
    }

    /// The run being written is complete.
    pub fn end_run(&mut self) {
        self.runs.push((self.run_start, self.written));
        self.run_start = self.written;
    }

    /// Merge every run: `sink(family, key, text)` for each block, in
    /// (family, key, run) order.
    pub fn merge(mut self, sink: Sink) -> io::Result<()> {
        self.file.flush()?;
        let mut runs = std::mem::take(&mut self.runs);
        // Passes of FAN_IN runs into one, until one pass is enough.
        while runs.len() > FAN_IN {
            let mut next = Spill::new()?;
            for group in runs.chunks(FAN_IN) {
                merge_runs(self.file.get_ref(), group, &mut |f, k, t| {
                    next.block(f, k, t)
                })?;
                next.end_run();
            }
            next.file.flush()?;
            runs = std::mem::take(&mut next.runs);
            std::mem::swap(&mut self, &mut next);
        }
        merge_runs(self.file.get_ref(), &runs, sink)
    }
}

fn record(family: u32, key: &[u8], text: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(12 + key.len() + text.len());
    r.extend_from_slice(&family.to_le_bytes());
    r.extend_from_slice(&(key.len() as u32).to_le_bytes());
    r.extend_from_slice(key);
    r.extend_from_slice(&(text.len() as u32).to_le_bytes());
    r.extend_from_slice(text);
    r
}

/// Reads one run's records, a buffer at a time.
struct Cursor<'f> {
    file: &'f File,
    at: u64,
    end: u64,
    buf: Vec<u8>,
    lo: usize,
    /// The current record: family, key and text ranges in `buf`.
    current: Option<(u32, std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl<'f> Cursor<'f> {
    /// At least `n` bytes buffered from `lo` (fewer at the run's end).
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.buf.len() - self.lo >= n {
            return Ok(());
        }
        self.buf.drain(..self.lo);
        self.lo = 0;
        let want = (n - self.buf.len())
            .max(BUFFER)
            .min((self.end - self.at) as usize);
        let old = self.buf.len();
        self.buf.resize(old + want, 0);
        self.file.read_exact_at(&mut self.buf[old..], self.at)?;
        self.at += want as u64;
        Ok(())
    }

    fn u32_at(&self, i: usize) -> usize {
        u32::from_le_bytes(self.buf[i..i + 4].try_into().expect("4 bytes")) as usize
    }

    /// Move to the next record; false at the end of the run.
    fn advance(&mut self) -> io::Result<bool> {
        if let Some((_, _, text)) = self.current.take() {
            self.lo = text.end;
        }
        self.fill(8)?;
        if self.buf.len() - self.lo < 8 {
            return Ok(false);
        }
        let family = self.u32_at(self.lo) as u32;
        let key_len = self.u32_at(self.lo + 4);
        self.fill(8 + key_len + 4)?;
        if self.buf.len() - self.lo < 12 + key_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a spill record is cut short",
            ));
        }
        let text_len = self.u32_at(self.lo + 8 + key_len);
        self.fill(12 + key_len + text_len)?;
        let key = self.lo + 8..self.lo + 8 + key_len;
        let text = key.end + 4..key.end + 4 + text_len;
        if text.end > self.buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a spill record is cut short",
            ));
        }
        self.current = Some((family, key, text));
        Ok(true)
    }
}

fn merge_runs(file: &File, runs: &[(u64, u64)], sink: Sink) -> io::Result<()> {
    let mut cursors: Vec<Cursor> = runs
        .iter()
        .map(|&(start, end)| Cursor {
            file,
            at: start,
            end,
            buf: Vec::new(),
            lo: 0,
            current: None,
        })
        .collect();
    // (family, key, run): the run breaks ties, so frames stay in order.
    let mut heap = BinaryHeap::new();
    for (i, c) in cursors.iter_mut().enumerate() {
        if c.advance()? {
            let (family, key, _) = c.current.clone().expect("a record");
            heap.push(Reverse((family, c.buf[key].to_vec(), i)));
        }
    }
    while let Some(Reverse((family, key, i))) = heap.pop() {
        let c = &mut cursors[i];
        let (_, _, text) = c.current.clone().expect("a record");
        sink(family, &key, &c.buf[text])?;
        if c.advance()? {
            let (family, key, _) = c.current.clone().expect("a record");
            heap.push(Reverse((family, c.buf[key].to_vec(), i)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of (family, key, text) merge by (family, key), run after run,
    /// through one pass or several.
    #[test]
    fn runs_merge_in_family_key_run_order() {
        for runs in [3, FAN_IN + 5, 3 * FAN_IN + 1] {
            let mut spill = Spill::new().unwrap();
            for r in 0..runs {
                for (family, key) in [(0, "a"), (0, "b"), (2, ""), (2, "x")] {
                    let text = format!("{family}{key}{r};");
                    spill
                        .block(family, key.as_bytes(), text.as_bytes())
                        .unwrap();
                }
                spill.end_run();
            }
            let mut got = Vec::new();
            spill
                .merge(&mut |f, k, t| {
                    got.push((
                        f,
                        String::from_utf8(k.to_vec()).unwrap(),
                        String::from_utf8(t.to_vec()).unwrap(),
                    ));
                    Ok(())
                })
                .unwrap();
            let mut want = Vec::new();
            for (family, key) in [(0, "a"), (0, "b"), (2, ""), (2, "x")] {
                for r in 0..runs {
                    want.push((family, key.to_string(), format!("{family}{key}{r};")));
                }
            }
            assert_eq!(got, want, "{runs} runs");
        }
    }

    #[test]
    fn a_block_larger_than_the_buffer_reads_whole() {
        let mut spill = Spill::new().unwrap();
        let big = vec![b'x'; 3 * BUFFER + 17];
        spill.block(1, b"k", &big).unwrap();
        spill.block(1, b"l", b"small").unwrap();
        spill.end_run();
        let mut got = Vec::new();
        spill
            .merge(&mut |_, _, t| {
                got.push(t.len());
                Ok(())
            })
            .unwrap();
        assert_eq!(got, [big.len(), 5]);
    }
}
