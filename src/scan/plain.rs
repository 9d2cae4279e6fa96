//! The inner loop of string scanning: the run of bytes from a position that
//! need no attention (are not `"`, `\` or a control character), and whether
//! they are all ASCII. Sixteen bytes a step with SSE2 on x86_64, eight with
//! the word trick serde_json uses elsewhere, then one at a time.

use std::str::Utf8Error;

/// Plain string bytes, with what the scan saw of them.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// Private with `ascii`, so that nothing can pair a flag with other bytes.
    bytes: &'a [u8],
    /// No byte of `bytes` is 0x80 or above (then they are UTF-8 as they are).
    ascii: bool,
}

impl<'a> Run<'a> {
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The run as text: ASCII needs no second look, anything else is checked.
    pub fn text(&self) -> Result<&'a str, Utf8Error> {
        if self.ascii {
            // SAFETY: every byte is below 0x80 (`run` checked each one as it
            // scanned), and ASCII is UTF-8. `from_utf8` on the five strings a
            // seed event's fields are read from was a measurable share of an
            // event's cost (BENCHMARKS.md, "Per-event cost").
            #[allow(unsafe_code)]
            return Ok(unsafe { std::str::from_utf8_unchecked(self.bytes) });
        }
        std::str::from_utf8(self.bytes)
    }
}

/// The run of plain string bytes at the start of `b`.
#[inline]
pub fn run(b: &[u8]) -> Run<'_> {
    let (len, high) = scan::<true>(b);
    Run {
        bytes: &b[..len],
        ascii: !high,
    }
}

/// The length of the run of plain string bytes at the start of `b`.
#[inline]
pub fn len(b: &[u8]) -> usize {
    scan::<false>(b).0
}

/// The run's length, and (if `HIGH` is asked for) whether a byte of it is
/// 0x80 or above. Inlined into its two callers whatever the codegen units:
/// left out of line by a split that unrelated changes moved, it cost the
/// decoder measurably (BENCHMARKS.md, "The fold lock across checkpoints").
#[inline]
fn scan<const HIGH: bool>(b: &[u8]) -> (usize, bool) {
    let mut i = 0;
    let mut high = false;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = b[i..].first_chunk::<16>() {
        // SAFETY: SSE2 is part of every x86_64 target's baseline, so the
        // function's one target feature is always present. (16 bytes a
        // step beat the 8-byte word loop alone: BENCHMARKS.md, "Per-event cost".)
        #[allow(unsafe_code)]
        let (special, top) = unsafe { sse2::classify(chunk) };
        if special != 0 {
            let before = (1u32 << special.trailing_zeros()) - 1;
            return (
                i + special.trailing_zeros() as usize,
                high | (top & before != 0),
            );
        }
        high |= top != 0;
        i += 16;
    }
    let (n, h) = words(&b[i..]);
    (i + n, high | h)
}

/// Eight bytes a step, then one: the last bytes of a message, and other
/// targets.
#[inline(never)]
fn words(b: &[u8]) -> (usize, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_in = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut i = 0;
    let mut high = 0;
    while let Some(chunk) = b[i..].first_chunk::<8>() {
        let x = u64::from_le_bytes(*chunk);
        let special = zero_in(x ^ (ONES * u64::from(b'"')))
            | zero_in(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        if special != 0 {
            // The lowest flagged byte is exact (false positives only follow it).
            let at = special.trailing_zeros() / 8;
            let before = (1u64 << (8 * at)) - 1;
            return (i + at as usize, high | (x & HIGH & before) != 0);
        }
        high |= x & HIGH;
        i += 8;
    }
    let rest = b[i..].iter().take_while(|&&c| !special(c));
    let (n, h) = rest.fold((0, false), |(n, h), &c| (n + 1, h | (c >= 0x80)));
    (i + n, high != 0 || h)
}

fn special(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// One bit per byte of `c` that is `"`, `\` or below 0x20, and one per
    /// byte that is 0x80 or above.
    #[target_feature(enable = "sse2")]
    pub fn classify(c: &[u8; 16]) -> (u32, u32) {
        let (lo, hi) = c.split_at(8);
        let word = |h: &[u8]| i64::from_le_bytes(h.try_into().expect("8 bytes"));
        let v = _mm_set_epi64x(word(hi), word(lo));
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        let special = _mm_or_si128(_mm_or_si128(quote, backslash), control);
        (
            _mm_movemask_epi8(special) as u32,
            _mm_movemask_epi8(v) as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of special byte at every position, with and without a
    /// high byte before or after it, at every offset into the 16- and 8-byte
    /// steps, against the byte-at-a-time answer.
    #[test]
    fn runs_match_the_bytewise_answer() {
        for size in 0..40usize {
            for at in 0..=size {
                for c in [b'"', b'\\', 0x00, 0x1f, b' ', 0x7f, 0x80, 0xff, b'a'] {
                    for high in [None, Some(0), Some(size / 2), Some(size.saturating_sub(1))] {
                        let mut b = vec![b'x'; size];
                        if let Some(h) = high.filter(|&h| h < size) {
                            b[h] = 0xc3;
                        }
                        if at < size {
                            b[at] = c;
                        }
                        let n = b.iter().take_while(|&&c| !special(c)).count();
                        let want = (n, b[..n].iter().any(|&c| c >= 0x80));
                        let case = format!("size {size}, byte {c:#x} at {at}, high {high:?}");
                        assert_eq!(len(&b), n, "{case}");
                        assert_eq!(scan::<true>(&b), want, "{case}");
                        assert_eq!(words(&b), want, "words: {case}");
                    }
                }
            }
        }
    }

    #[test]
    fn text_checks_what_is_not_ascii() {
        assert_eq!(run(b"abc\"").text(), Ok("abc"));
        assert_eq!(run("é\"".as_bytes()).text(), Ok("é"));
        assert!(run(b"\xff\xfe\"").text().is_err());
    }
}
