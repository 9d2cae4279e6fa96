//! Decoding one NATS message into a borrowed view of the seed's event envelope,
//! and reading a measurement out of it under the value contract of DESIGN.md.
//! Nothing here allocates for a well-formed event whose strings have no escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{Fallback, Source, ValueSpec};
use crate::scan::{self, Message, RawString, ScanError};

/// Why an event was not folded. The label values of
/// `session_exporter_events_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    InvalidType,
    MissingName,
    MissingNamespace,
    InvalidNamespace,
    MissingValue,
    InvalidValue,
    ValueOutOfRange,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::TooLarge,
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::InvalidType,
        Reason::MissingName,
        Reason::MissingNamespace,
        Reason::InvalidNamespace,
        Reason::MissingValue,
        Reason::InvalidValue,
        Reason::ValueOutOfRange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidType => "invalid_type",
            Reason::MissingName => "missing_name",
            Reason::MissingNamespace => "missing_namespace",
            Reason::InvalidNamespace => "invalid_namespace",
            Reason::MissingValue => "missing_value",
            Reason::InvalidValue => "invalid_value",
            Reason::ValueOutOfRange => "value_out_of_range",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoded event, borrowing from the message bytes.
#[derive(Debug)]
pub struct Event<'a> {
    pub raw: &'a [u8],
    pub id: Option<Cow<'a, str>>,
    pub name: Cow<'a, str>,
    /// Envelope `namespace`, else `payload.namespace`; never empty.
    pub namespace: Option<Cow<'a, str>>,
    pub timestamp: Option<Cow<'a, str>>,
    /// `traceId` when it is a string, undecoded and unchecked: see
    /// [`Event::trace`].
    pub trace_id: Option<RawString<'a>>,
    /// `payload.message`, undecoded unless a mapping reads it, so counters
    /// and unmapped events never unescape it.
    pub message: Option<Message<'a>>,
    pub user_count: Option<usize>,
}

/// A message object's `value`, the contract's default pointer.
#[derive(Deserialize)]
struct ValueField<'a> {
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
}

/// A JSON string, borrowed when it has no escapes. (serde's own `Cow` inside an
/// `Option` always copies.)
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The longest `traceId` kept: an exemplar's labels (`trace_id="…"`) must
/// stay within OpenMetrics' 128 characters.
pub const MAX_TRACE_ID: usize = 120;

/// Why a `traceId` is not kept as an exemplar (counted, never fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceProblem {
    TooLong,
    /// Empty, or a character outside letters, digits and `-_.:` (what W3C,
    /// B3, Jaeger and X-Ray trace ids are made of).
    Invalid,
}

impl TraceProblem {
    /// In the order of [`TraceProblem::index`].
    pub const ALL: [TraceProblem; 2] = [TraceProblem::TooLong, TraceProblem::Invalid];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TraceProblem::TooLong => "too_long",
            TraceProblem::Invalid => "invalid",
        }
    }
}

/// Whether a `traceId` can be an exemplar label value as it is.
pub fn check_trace_id(t: &str) -> Result<(), TraceProblem> {
    if t.len() > MAX_TRACE_ID {
        return Err(TraceProblem::TooLong);
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':');
    if t.is_empty() || !t.bytes().all(ok) {
        return Err(TraceProblem::Invalid);
    }
    Ok(())
}

/// Decode one message of at most `max` bytes (longer ones are `TooLarge`):
/// what the live exporter and `replay` both do with each message.
pub fn decode_limited(raw: &[u8], max: usize) -> Result<Event<'_>, Reason> {
    if raw.len() > max {
        return Err(Reason::TooLarge);
    }
    decode(raw)
}

/// Decode one message. The size limit is checked by the caller, which knows it.
pub fn decode(raw: &[u8]) -> Result<Event<'_>, Reason> {
    let f = scan::envelope(raw).map_err(|e| match e {
        ScanError::Type => Reason::InvalidType,
        ScanError::Utf8 => Reason::InvalidUtf8,
        ScanError::Syntax if std::str::from_utf8(raw).is_err() => Reason::InvalidUtf8,
        ScanError::Syntax => Reason::InvalidJson,
    })?;
    let name = match f.name {
        Some(n) if !n.is_empty() => n,
        _ => return Err(Reason::MissingName),
    };
    let namespace = [f.namespace, f.payload_namespace]
        .into_iter()
        .flatten()
        .find(|n| !n.is_empty());
    Ok(Event {
        raw,
        id: f.id,
        name,
        namespace,
        timestamp: f.timestamp,
        trace_id: f.trace_id,
        message: f.message,
        user_count: f.user_count,
    })
}

impl<'a> Event<'a> {
    /// The `traceId` an exemplar can carry, or why it cannot; `None` when
    /// there is none or it is not a string that decodes (ignored, uncounted).
    /// Decoded and checked only when asked: by the fold, for observations
    /// that keep exemplars.
    pub fn trace(&self) -> Option<Result<Cow<'a, str>, TraceProblem>> {
        let text = self.trace_id?.text()?;
        Some(check_trace_id(&text).map(|()| text))
    }

    /// The event's own time (its RFC 3339 `timestamp`), in Unix seconds.
    pub fn time(&self) -> Option<f64> {
        self.timestamp.as_deref().and_then(parse_rfc3339)
    }

    /// [`Event::time`], reusing the last event's minute when it is the same.
    pub fn time_after(&self, last: &mut Minute) -> Option<f64> {
        parse_rfc3339_after(self.timestamp.as_deref()?, last)
    }

    /// The measurement for one mapping, converted to the exposed unit.
    pub fn value(&self, spec: &ValueSpec) -> Result<f64, Reason> {
        let raw = match spec.source {
            Source::Message => self.message_value(spec.pointer.as_deref())?,
            Source::Envelope => self.envelope_value(spec.pointer.as_deref().unwrap_or(""))?,
        };
        let v = match (raw, spec.fallback) {
            (Some(v), _) => v,
            (None, Fallback::UserCount) => self.user_count.ok_or(Reason::MissingValue)? as f64,
            (None, Fallback::None) => return Err(Reason::MissingValue),
        };
        if !v.is_finite() || v < 0.0 {
            return Err(Reason::InvalidValue);
        }
        let v = v / spec.divisor;
        if v > spec.max_value {
            return Err(Reason::ValueOutOfRange);
        }
        Ok(v)
    }

    fn message_value(&self, pointer: Option<&str>) -> Result<Option<f64>, Reason> {
        // The seed's string, or (from lenient producers) a bare number or object.
        let text: Cow<str> = match self.message {
            None => return Ok(None),
            // The scanner checked the string: without escapes, its contents
            // are its text.
            Some(Message::Text(t)) => Cow::Borrowed(t),
            Some(Message::Json(raw)) => {
                if let (None | Some("/value"), Some(n)) = (pointer, escaped_value_number(raw)) {
                    return parse_number(n).map(Some);
                }
                if !raw.starts_with('"') {
                    Cow::Borrowed(raw)
                } else {
                    serde_json::from_str::<Text>(raw)
                        .map_err(|_| Reason::InvalidValue)?
                        .0
                }
            }
        };
        let text = text.trim();
        if text.is_empty() || text == "null" {
            return Ok(None);
        }
        if !text.starts_with('{') {
            return parse_number(text).map(Some);
        }
        match pointer {
            None | Some("/value") => {
                let obj: ValueField =
                    serde_json::from_str(text).map_err(|_| Reason::InvalidValue)?;
                obj.value.map_or(Ok(None), |v| number_in(v.get()))
            }
            Some(p) => {
                let obj: serde_json::Value =
                    serde_json::from_str(text).map_err(|_| Reason::InvalidValue)?;
                number_at(&obj, p)
            }
        }
    }

    fn envelope_value(&self, pointer: &str) -> Result<Option<f64>, Reason> {
        let doc: serde_json::Value =
            serde_json::from_slice(self.raw).map_err(|_| Reason::InvalidJson)?;
        number_at(&doc, pointer)
    }
}

/// The number in the seed's escaped object `"{\"value\":N}"`, read in
/// place: what unescaping it and parsing the object (below) give, without
/// what they cost (a large share of a seed event's decode: BENCHMARKS.md, "Per-event cost").
/// Anything else, a space included, goes the general way.
fn escaped_value_number(raw: &str) -> Option<&str> {
    let n = raw.strip_prefix(r#""{\"value\":"#)?.strip_suffix(r#"}""#)?;
    json_number(n.as_bytes()).then_some(n)
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, all of `b`.
fn json_number(b: &[u8]) -> bool {
    let digits = |b: &[u8]| b.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = usize::from(b.first() == Some(&b'-'));
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(&b[i..]),
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(&b[i + 1..]);
        if n == 0 {
            return false;
        }
        i += 1 + n;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let n = digits(&b[i..]);
        if n == 0 {
            return false;
        }
        i += n;
    }
    i == b.len()
}

/// A raw JSON value that should hold a number or numeric string.
fn number_in(raw: &str) -> Result<Option<f64>, Reason> {
    if raw.starts_with('"') {
        let s = serde_json::from_str::<Text>(raw)
            .map_err(|_| Reason::InvalidValue)?
            .0;
        let s = s.trim();
        return if s.is_empty() {
            Ok(None)
        } else {
            parse_number(s).map(Some)
        };
    }
    match raw {
        "null" => Ok(None),
        n => parse_number(n).map(Some),
    }
}

/// A JSON number or numeric string at `pointer`; absent or null means no value.
fn number_at(doc: &serde_json::Value, pointer: &str) -> Result<Option<f64>, Reason> {
    match doc.pointer(pointer) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n.as_f64().map(Some).ok_or(Reason::InvalidValue),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => parse_number(s.trim()).map(Some),
        Some(_) => Err(Reason::InvalidValue),
    }
}

/// Decimal numbers only: Rust's parser would also take `inf` and `NaN`.
fn parse_number(s: &str) -> Result<f64, Reason> {
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !plain {
        return Err(Reason::InvalidValue);
    }
    s.parse::<f64>().map_err(|_| Reason::InvalidValue)
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp
/// (`2026-11-22T10:00:01Z`, `2026-11-22T10:00:01.250+01:00`).
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    parse_rfc3339_after(s, &mut Minute::default())
}

/// The date, hour and minute of the last timestamp read, and their Unix
/// seconds: the events of one batch mostly share them, and then only the
/// seconds, fraction and offset are read (BENCHMARKS.md, "Per-event cost").
#[derive(Debug, Default)]
pub struct Minute {
    /// `YYYY-MM-DDTHH:MM`, as written.
    head: Option<[u8; 16]>,
    secs: i64,
}

/// [`parse_rfc3339`], reusing `last` when the timestamp's first 16 bytes are
/// the last one's.
pub fn parse_rfc3339_after(s: &str, last: &mut Minute) -> Option<f64> {
    let (head, rest) = s.as_bytes().split_first_chunk::<16>()?;
    let minute = match last.head {
        Some(h) if h == *head => last.secs,
        _ => {
            let secs = minute(head)?;
            *last = Minute {
                head: Some(*head),
                secs,
            };
            secs
        }
    };
    let [b':', s0, s1, rest @ ..] = rest else {
        return None;
    };
    let (s0, s1) = (digit(*s0), digit(*s1));
    if s0 > 9 || s1 > 9 || s0 * 10 + s1 > 60 {
        return None;
    }
    let sec = i64::from(s0 * 10 + s1);
    let mut i = 0;
    let mut frac = 0.0;
    if rest.first() == Some(&b'.') {
        i = 1;
        let (mut digits, mut scale) = (0u64, 1u64);
        while let Some(d) = rest.get(i).map(|&c| digit(c)).filter(|&d| d <= 9) {
            // Nanoseconds are the finest a timestamp carries; ignore the rest.
            if i <= 9 {
                digits = digits * 10 + u64::from(d);
                scale *= 10;
            }
            i += 1;
        }
        if i == 1 {
            return None;
        }
        frac = digits as f64 / scale as f64;
    }
    let offset = match &rest[i..] {
        [b'Z' | b'z'] => 0,
        &[sign @ (b'+' | b'-'), a, b, b':', c, d] => {
            if [a, b, c, d].iter().any(|&c| digit(c) > 9) {
                return None;
            }
            let o = two(a, b) * 3600 + two(c, d) * 60;
            if sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    Some((minute + sec - offset) as f64 + frac)
}

/// `YYYY-MM-DDTHH:MM` as Unix seconds.
fn minute(head: &[u8; 16]) -> Option<i64> {
    let [y0, y1, y2, y3, b'-', mo0, mo1, b'-', d0, d1, b'T' | b't' | b' ', h0, h1, b':', mi0, mi1] =
        *head
    else {
        return None;
    };
    let all = [y0, y1, y2, y3, mo0, mo1, d0, d1, h0, h1, mi0, mi1];
    if all.iter().any(|&c| digit(c) > 9) {
        return None;
    }
    let year = two(y0, y1) * 100 + two(y2, y3);
    let (month, day) = (two(mo0, mo1), two(d0, d1));
    let (hour, min) = (two(h0, h1), two(mi0, mi1));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86400 + hour * 3600 + min * 60)
}

fn digit(c: u8) -> u8 {
    c.wrapping_sub(b'0')
}

/// Two digits already checked.
fn two(a: u8, b: u8) -> i64 {
    i64::from(digit(a) * 10 + digit(b))
}

/// Howard Hinnant's days-from-civil: days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pointer: Option<&str>, fallback: Fallback) -> ValueSpec {
        ValueSpec {
            source: Source::Message,
            pointer: pointer.map(str::to_owned),
            fallback,
            divisor: 1e3,
            max_value: 1000.0,
        }
    }

    fn ev(json: &str) -> Event<'_> {
        decode(json.as_bytes()).unwrap()
    }

    #[test]
    fn reads_every_accepted_encoding() {
        let s = spec(None, Fallback::None);
        let cases = [
            (r#""1532""#, 1.532),
            (r#"" 1532 ""#, 1.532),
            (r#""{\"value\":870}""#, 0.87),
            (r#""{\"value\":\"870\"}""#, 0.87),
            ("250", 0.25),
            (r#"{"value":640}"#, 0.64),
            ("2.5e3", 2.5),
        ];
        for (msg, want) in cases {
            let j = format!(r#"{{"name":"X","namespace":"g","payload":{{"message":{msg}}}}}"#);
            let got = ev(&j).value(&s).unwrap();
            assert!((got - want).abs() < 1e-12, "{msg}: {got}");
        }
    }

    #[test]
    fn bad_values_are_rejected_by_reason() {
        let s = spec(None, Fallback::None);
        let cases = [
            (r#""""#, Reason::MissingValue),
            ("null", Reason::MissingValue),
            (r#""{\"other\":1}""#, Reason::MissingValue),
            (r#""abc""#, Reason::InvalidValue),
            (r#""NaN""#, Reason::InvalidValue),
            (r#""inf""#, Reason::InvalidValue),
            (r#""1e999""#, Reason::InvalidValue),
            (r#""-5""#, Reason::InvalidValue),
            (r#""{\"value\":[1]}""#, Reason::InvalidValue),
            (r#""{broken""#, Reason::InvalidValue),
            (r#""99999999""#, Reason::ValueOutOfRange),
        ];
        for (msg, want) in cases {
            let j = format!(r#"{{"name":"X","namespace":"g","payload":{{"message":{msg}}}}}"#);
            assert_eq!(ev(&j).value(&s), Err(want), "{msg}");
        }
        let j = r#"{"name":"X","namespace":"g"}"#;
        assert_eq!(ev(j).value(&s), Err(Reason::MissingValue));
    }

    #[test]
    fn the_escaped_value_shortcut_takes_only_json_numbers() {
        for n in [
            "870", "0", "-0", "1.5", "2.5e3", "1E+2", "1e-2", "1e400", "01", "1.", ".5", "1e",
            "+1", "-", "", "1.5.2", "0x10", "1_000", "NaN", "1e+", "--1", "12a",
        ] {
            let raw = format!(r#""{{\"value\":{n}}}""#);
            let valid = serde_json::from_str::<&serde_json::value::RawValue>(n).is_ok();
            assert_eq!(escaped_value_number(&raw), valid.then_some(n), "{n}");
        }
        // What the shortcut reads is what the general path reads.
        let s = spec(None, Fallback::None);
        for (msg, want) in [
            (r#""{\"value\":870}""#, Ok(0.87)),
            (r#""{\"value\":01}""#, Err(Reason::InvalidValue)),
            (r#""{\"value\": 870}""#, Ok(0.87)),
            (r#""{\"value\":-5}""#, Err(Reason::InvalidValue)),
        ] {
            let j = format!(r#"{{"name":"X","namespace":"g","payload":{{"message":{msg}}}}}"#);
            assert_eq!(ev(&j).value(&s), want, "{msg}");
        }
    }

    #[test]
    fn players_fall_back_to_user_count() {
        let mut s = spec(None, Fallback::UserCount);
        s.divisor = 1.0;
        let j = r#"{"name":"X","namespace":"g","payload":{"userIds":["a","b","c"],"message":""}}"#;
        assert_eq!(ev(j).value(&s), Ok(3.0));
        let j = r#"{"name":"X","namespace":"g","payload":{"userIds":["a"],"message":"8"}}"#;
        assert_eq!(ev(j).value(&s), Ok(8.0));
    }

    #[test]
    fn pointers_reach_message_and_envelope() {
        let mut s = spec(Some("/stats/wait"), Fallback::None);
        let j = r#"{"name":"X","namespace":"g","payload":{"message":"{\"stats\":{\"wait\":40}}"}}"#;
        assert_eq!(ev(j).value(&s), Ok(0.04));
        s.source = Source::Envelope;
        s.pointer = Some("/version".into());
        let j = r#"{"name":"X","namespace":"g","version":7}"#;
        assert_eq!(ev(j).value(&s), Ok(0.007));
    }

    #[test]
    fn envelope_is_checked() {
        let cases: [(&[u8], Reason); 7] = [
            (b"not json", Reason::InvalidJson),
            (b"[1,2]", Reason::InvalidType),
            (br#"{"name":5}"#, Reason::InvalidType),
            (br#"{"namespace":"g"}"#, Reason::MissingName),
            (br#"{"name":""}"#, Reason::MissingName),
            (
                br#"{"name":"X","payload":{"userIds":"a"}}"#,
                Reason::InvalidType,
            ),
            (b"{\"name\":\"\xff\"}", Reason::InvalidUtf8),
        ];
        for (raw, want) in cases {
            assert_eq!(
                decode(raw).err(),
                Some(want),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn namespace_prefers_envelope_then_payload() {
        let j = r#"{"name":"X","namespace":"","payload":{"namespace":"p"}}"#;
        assert_eq!(ev(j).namespace.as_deref(), Some("p"));
        let j = r#"{"name":"X","namespace":"e","payload":{"namespace":"p"}}"#;
        assert_eq!(ev(j).namespace.as_deref(), Some("e"));
        let j = r#"{"name":"onPartyCreated"}"#;
        assert_eq!(ev(j).namespace, None);
    }

    #[test]
    fn well_formed_events_borrow() {
        let j = r#"{"id":"e1","name":"X","namespace":"g","payload":{"message":"12"}}"#;
        let e = ev(j);
        assert!(matches!(e.name, Cow::Borrowed(_)));
        assert!(matches!(e.namespace, Some(Cow::Borrowed(_))));
        assert_eq!(e.message, Some(Message::Text("12")));
    }

    #[test]
    fn rfc3339_parses() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2026-11-22T10:00:01Z"), Some(1_795_341_601.0));
        assert_eq!(
            parse_rfc3339("2026-11-22T11:00:01.5+01:00"),
            Some(1_795_341_601.5)
        );
        assert_eq!(
            parse_rfc3339("2019-08-24T14:15:22-02:30"),
            Some(1_566_665_122.0)
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-13-01T00:00:00Z",
            "2026-11-22T10:00:01",
            "2026-11-22T10:00:01.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_reused_minute_reads_what_a_fresh_parse_reads() {
        // One `Minute` through every one-byte mutation of a few timestamps,
        // in turn, against a fresh parse of each: a cached head must never
        // stand for a different or invalid one.
        let mut last = Minute::default();
        let mut checked = 0;
        for base in [
            "2026-11-22T10:00:01Z",
            "2026-11-22T10:00:59.250Z",
            "2026-11-22T10:01:00+01:00",
            "2026-02-29t23:59:60-02:30",
        ] {
            for at in 0..base.len() {
                for c in ['0', '9', ':', '-', 'T', ' ', 'Z', '.', '+', 'x'] {
                    let mut t = base.to_string();
                    t.replace_range(at..at + 1, &c.to_string());
                    for s in [base, t.as_str()] {
                        assert_eq!(parse_rfc3339_after(s, &mut last), parse_rfc3339(s), "{s}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 10 * (20 + 24 + 25 + 25));
    }
}
