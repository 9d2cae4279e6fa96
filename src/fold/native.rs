//! Prometheus native-histogram buckets: sparse exponential buckets, kept
//! exact as values arrive (like the classic buckets), at the mapping's
//! schema. Bucket `k` of schema `s` holds values in
//! `(2^((k-1)·2^-s), 2^(k·2^-s)]`; values at or below `ZERO_THRESHOLD` go
//! to the zero bucket. When more than `MAX_BUCKETS` are in use the schema
//! drops by one (each pair of buckets merges), as the Go client does.

use std::sync::OnceLock;

use hdrhistogram::Histogram;

/// Prometheus' default zero threshold (2^-128): only zero is below it here.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

/// Buckets per histogram before the resolution halves.
pub const MAX_BUCKETS: usize = 160;

pub const MIN_SCHEMA: i8 = -4;
pub const MAX_SCHEMA: i8 = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct Native {
    pub schema: i8,
    pub zero_count: u64,
    /// (bucket key, count), sorted by key.
    pub buckets: Vec<(i32, u64)>,
}

/// A native histogram as a snapshot holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NativeView<'a> {
    pub schema: i8,
    pub zero_count: u64,
    /// (bucket key, count), sorted by key.
    pub buckets: &'a [(i32, u64)],
}

impl Native {
    pub fn new(schema: i8) -> Native {
        Native {
            schema: schema.clamp(MIN_SCHEMA, MAX_SCHEMA),
            zero_count: 0,
            buckets: Vec::new(),
        }
    }

    pub fn record(&mut self, v: f64) {
        self.add(v, 1);
    }

    fn add(&mut self, v: f64, n: u64) {
        if v <= ZERO_THRESHOLD {
            self.zero_count += n;
            return;
        }
        let key = bucket_key(v, self.schema);
        match self.buckets.binary_search_by_key(&key, |b| b.0) {
            Ok(i) => self.buckets[i].1 += n,
            Err(i) => self.buckets.insert(i, (key, n)),
        }
        while self.buckets.len() > MAX_BUCKETS && self.schema > MIN_SCHEMA {
            self.downscale();
        }
    }

    /// One schema lower: bucket `k` becomes `ceil(k / 2)`.
    fn downscale(&mut self) {
        self.schema -= 1;
        let mut merged: Vec<(i32, u64)> = Vec::with_capacity(self.buckets.len() / 2 + 1);
        for &(k, n) in &self.buckets {
            let k = (k + 1) >> 1;
            match merged.last_mut() {
                Some(last) if last.0 == k => last.1 += n,
                _ => merged.push((k, n)),
            }
        }
        self.buckets = merged;
    }

    /// From HDR cells (state restored from a checkpoint, or a changed
    /// schema): each cell counts at its lowest value, as the classic buckets
    /// count it, within HDR's precision.
    pub fn from_hdr(hdr: &Histogram<u32>, scale: f64, schema: i8) -> Native {
        let mut n = Native::new(schema);
        for it in hdr.iter_recorded() {
            let low = hdr.lowest_equivalent(it.value_iterated_to());
            n.add(low as f64 / scale, it.count_since_last_iteration());
        }
        n
    }

    pub fn count(&self) -> u64 {
        self.zero_count + self.buckets.iter().map(|b| b.1).sum::<u64>()
    }
}

/// The bucket holding `v` (> 0, finite) at `schema`, as Prometheus computes
/// it: from the mantissa and exponent, so powers of two land exactly on an
/// upper bound.
pub fn bucket_key(v: f64, schema: i8) -> i32 {
    let (frac, exp) = frexp(v);
    if schema > 0 {
        let bounds = octave(schema);
        let j = bounds.partition_point(|&b| b < frac) as i32;
        j + (exp - 1) * bounds.len() as i32
    } else {
        let mut key = exp;
        if frac == 0.5 {
            key -= 1;
        }
        let offset = (1i32 << -schema) - 1;
        (key + offset) >> -schema
    }
}

/// The bounds of one octave at a positive schema, in `frac` terms:
/// `2^(j/2^schema - 1)` for `j` in `0..2^schema`. Computed once per schema.
fn octave(schema: i8) -> &'static [f64] {
    static TABLES: [OnceLock<Vec<f64>>; MAX_SCHEMA as usize + 1] =
        [const { OnceLock::new() }; MAX_SCHEMA as usize + 1];
    TABLES[schema as usize].get_or_init(|| {
        let per = 1u32 << schema;
        (0..per)
            .map(|j| 2f64.powf(j as f64 / per as f64 - 1.0))
            .collect()
    })
}

/// `v = frac · 2^exp` with `frac` in [0.5, 1), for positive normal `v`.
fn frexp(v: f64) -> (f64, i32) {
    let bits = v.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale into the normal range first.
        let (f, e) = frexp(v * 2f64.powi(64));
        return (f, e - 64);
    }
    let frac = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (frac, exp - 1022)
}

/// The upper bound of bucket `key` at `schema`.
pub fn upper_bound(key: i32, schema: i8) -> f64 {
    2f64.powf(key as f64 * 2f64.powi(-(schema as i32)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_prometheus_for_a_table_of_values_and_schemas() {
        // (value, schema, key): from the bucket definition, with values on,
        // just above and just below bounds.
        let cases = [
            (1.0, 0, 0),
            (1.0000001, 0, 1),
            (2.0, 0, 1),
            (2.5, 0, 2),
            (0.5, 0, -1),
            (0.75, 0, 0),
            (1.0, 3, 0),
            (1.09, 3, 1), // just below 2^(1/8)
            (1.0906, 3, 2),
            (2.0, 3, 8),
            (3.0, 3, 13),
            (0.001, 3, -79),
            (300.0, 3, 66),
            (1.5, 1, 2),
            (1.41, 1, 1),
            (1.42, 1, 2),
            (4.0, -1, 1),
            (4.1, -1, 2),
            (16.0, -2, 1),
            (17.0, -2, 2),
            (1e-3, -4, -0),
        ];
        for (v, schema, want) in cases {
            assert_eq!(bucket_key(v, schema), want, "v={v} schema={schema}");
        }
    }

    #[test]
    fn every_value_lies_within_its_bucket() {
        for schema in MIN_SCHEMA..=MAX_SCHEMA {
            let mut v = 1e-3;
            while v < 1e7 {
                let k = bucket_key(v, schema);
                let (lo, hi) = (upper_bound(k - 1, schema), upper_bound(k, schema));
                assert!(
                    lo < v * (1.0 + 1e-12) && v <= hi * (1.0 + 1e-12),
                    "v={v} s={schema} k={k} ({lo}, {hi}]"
                );
                v *= 1.37;
            }
        }
    }

    #[test]
    fn too_many_buckets_lower_the_schema() {
        let mut n = Native::new(8);
        let mut v = 1e-3;
        let mut recorded = 0;
        while v < 1e6 {
            n.record(v);
            recorded += 1;
            v *= 1.01;
        }
        n.record(0.0);
        assert!(n.buckets.len() <= MAX_BUCKETS, "{}", n.buckets.len());
        assert!(n.schema < 8);
        assert_eq!(n.count(), recorded + 1);
        assert_eq!(n.zero_count, 1);
        assert!(n.buckets.windows(2).all(|w| w[0].0 < w[1].0));
        // Downscaled keys are the keys the lower schema gives directly.
        let mut direct = Native::new(n.schema);
        let mut v = 1e-3;
        while v < 1e6 {
            direct.record(v);
            v *= 1.01;
        }
        assert_eq!(direct.buckets, n.buckets);
    }
}
