//! The checkpoint's wire primitives: varints, little-endian floats, strings,
//! series starts and HDR cells, written and read back with every length and
//! value checked (a corrupt checkpoint is an error, never a panic).

use hdrhistogram::Histogram;

use super::CheckpointError;
use crate::config::Kind;
use crate::fold::Exact;

pub(super) fn kind_code(k: Kind) -> u64 {
    match k {
        Kind::Counter => 1,
        Kind::Gauge => 2,
        Kind::Histogram => 3,
    }
}

pub(super) fn kind_from(code: u64) -> Result<Kind, CheckpointError> {
    match code {
        1 => Ok(Kind::Counter),
        2 => Ok(Kind::Gauge),
        3 => Ok(Kind::Histogram),
        _ => Err(CheckpointError::Corrupt(format!(
            "unknown metric type {code}"
        ))),
    }
}

pub(super) struct Writer(pub(super) Vec<u8>);

impl Writer {
    pub(super) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    pub(super) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub(super) fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    pub(super) fn exact(&mut self, v: Exact) {
        self.0.extend_from_slice(&v.0.to_le_bytes());
    }

    /// A series' start; NaN for unknown.
    pub(super) fn start(&mut self, s: crate::fold::Start) {
        self.f64(s.unwrap_or(f64::NAN));
    }

    pub(super) fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Recorded cells as (lowest value, ascending, as a delta; count).
    pub(super) fn hdr(&mut self, h: &Histogram<u32>) {
        let cells: Vec<(u64, u64)> = h
            .iter_recorded()
            .map(|it| {
                (
                    h.lowest_equivalent(it.value_iterated_to()),
                    it.count_at_value().into(),
                )
            })
            .collect();
        self.varint(cells.len() as u64);
        let mut prev = 0;
        for (v, n) in cells {
            self.varint(v - prev);
            self.varint(n);
            prev = v;
        }
    }
}

pub(super) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn truncated(&self) -> CheckpointError {
        CheckpointError::Corrupt(format!("checkpoint truncated at byte {}", self.at))
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| self.truncated())?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub(super) fn varint(&mut self) -> Result<u64, CheckpointError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(CheckpointError::Corrupt(format!(
            "bad varint at byte {}",
            self.at
        )))
    }

    /// A count of items at least `min_bytes` long each: never more than the
    /// bytes left could hold, so a corrupt count cannot reserve memory.
    pub(super) fn count(&mut self, min_bytes: usize) -> Result<usize, CheckpointError> {
        let n = self.varint()?;
        let left = (self.buf.len() - self.at) / min_bytes.max(1);
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| {
                CheckpointError::Corrupt(format!("count {n} at byte {} is past the end", self.at))
            })
    }

    pub(super) fn u64(&mut self) -> Result<u64, CheckpointError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub(super) fn f64(&mut self) -> Result<f64, CheckpointError> {
        self.u64().map(f64::from_bits)
    }

    pub(super) fn start(&mut self) -> Result<crate::fold::Start, CheckpointError> {
        match self.f64()? {
            s if s.is_nan() => Ok(None),
            s if s.is_finite() && s > 0.0 => Ok(Some(s)),
            s => Err(CheckpointError::Corrupt(format!(
                "series start {s} is not a time"
            ))),
        }
    }

    pub(super) fn exact(&mut self) -> Result<Exact, CheckpointError> {
        let b = self.take(16)?;
        Ok(Exact(i128::from_le_bytes(b.try_into().expect("16 bytes"))))
    }

    pub(super) fn str(&mut self) -> Result<&'a str, CheckpointError> {
        let n = self.count(1)?;
        let at = self.at;
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| CheckpointError::Corrupt(format!("string at byte {at} is not UTF-8")))
    }

    pub(super) fn hdr(&mut self, sigfig: u8) -> Result<Histogram<u32>, CheckpointError> {
        let mut h = Histogram::new(sigfig).expect("sigfig checked to 1..=5");
        let mut v = 0u64;
        for _ in 0..self.count(2)? {
            v = v
                .checked_add(self.varint()?)
                .ok_or_else(|| CheckpointError::Corrupt("HDR value overflows".into()))?;
            let n = u32::try_from(self.varint()?).unwrap_or(u32::MAX);
            if h.record_n(v, n).is_err() {
                return Err(CheckpointError::Corrupt(format!(
                    "HDR value {v} out of range"
                )));
            }
        }
        Ok(h)
    }
}
