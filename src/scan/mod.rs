//! A validating JSON scanner for the event envelope: it reads the handful of
//! fields the exporter uses and checks, without building anything, that the rest
//! is well-formed JSON. Measured 2× faster than serde's derive on seed-shaped
//! events (BENCHMARKS.md), because keys are matched as bytes and skipped
//! values are only validated. Strings that need unescaping are handed to
//! serde_json, so escapes and surrogates follow its rules exactly.

mod plain;

use std::borrow::Cow;

/// serde_json's own nesting limit, so hostile input cannot exhaust the stack.
const MAX_DEPTH: u32 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Not JSON.
    Syntax,
    /// JSON, but a field we read has the wrong type (or the top is not an object).
    Type,
    /// A string we read is not UTF-8.
    Utf8,
}

/// A string as scanned: its contents without the quotes.
enum Token<'a> {
    Plain(plain::Run<'a>),
    /// With escapes, undecoded.
    Escaped(&'a [u8]),
}

impl<'a> Token<'a> {
    fn raw(&self) -> &'a [u8] {
        match self {
            Token::Plain(run) => run.bytes(),
            Token::Escaped(raw) => raw,
        }
    }
}

/// The envelope fields the exporter reads.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    pub id: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub namespace: Option<Cow<'a, str>>,
    pub timestamp: Option<Cow<'a, str>>,
    /// `traceId` when it is a string, undecoded: most events feed no
    /// exemplar, so it is decoded only for those that do.
    pub trace_id: Option<RawString<'a>>,
    pub payload_namespace: Option<Cow<'a, str>>,
    /// `payload.message` (`null` reads as absent).
    pub message: Option<Message<'a>>,
    pub user_count: Option<usize>,
}

/// `payload.message` as it stands in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A string without escapes: its text.
    Text(&'a str),
    /// Any other value, a string with escapes among them, as raw JSON text.
    Json(&'a str),
}

impl<'a> Message<'a> {
    /// As raw JSON text.
    pub fn json(&self) -> Cow<'a, str> {
        match *self {
            Message::Text(t) => Cow::Owned(format!("\"{t}\"")),
            Message::Json(j) => Cow::Borrowed(j),
        }
    }
}

type Result<T> = std::result::Result<T, ScanError>;

/// A string value as it stands in the message, quotes included, read on
/// demand.
#[derive(Debug, Clone, Copy)]
pub struct RawString<'a> {
    quoted: &'a [u8],
    /// Its contents, when it has no escapes.
    plain: Option<plain::Run<'a>>,
}

impl<'a> RawString<'a> {
    /// Its text; `None` when it does not decode (not UTF-8, a lone surrogate).
    pub fn text(&self) -> Option<Cow<'a, str>> {
        match self.plain {
            Some(run) => run.text().ok().map(Cow::Borrowed),
            None => unescape(self.quoted).ok().map(Cow::Owned),
        }
    }
}

pub fn envelope(b: &[u8]) -> Result<Fields<'_>> {
    let mut s = Scanner {
        b,
        i: 0,
        wrong: 0,
        field: 0,
        bad_utf8: false,
    };
    let mut f = Fields::default();
    s.ws();
    if s.peek() != Some(b'{') {
        // Valid JSON of another type is a type error, as serde_json reports it.
        s.skip_value(0)?;
        s.end()?;
        return Err(ScanError::Type);
    }
    s.object(0, &TOP, |s, member| {
        match member {
            Member::Id => f.id = s.reading(ID).opt_string()?,
            Member::Name => f.name = s.reading(NAME).opt_string()?,
            Member::Namespace => f.namespace = s.reading(NAMESPACE).opt_string()?,
            Member::Timestamp => f.timestamp = s.reading(TIMESTAMP).opt_string()?,
            Member::TraceId => f.trace_id = s.raw_string()?,
            Member::Payload => {
                // A repeated key replaces the whole earlier payload, as in serde_json.
                (f.payload_namespace, f.message, f.user_count) = (None, None, None);
                s.wrong &= !PAYLOAD_FIELDS;
                s.reading(PAYLOAD).payload(&mut f)?
            }
            _ => s.skip_value(1)?,
        }
        Ok(())
    })?;
    s.end()?;
    if s.bad_utf8 {
        return Err(ScanError::Utf8);
    }
    if s.wrong != 0 {
        return Err(ScanError::Type);
    }
    Ok(f)
}

/// The first top-level `namespace` member, when its value is a string, read
/// without scanning past it: what a partition replica needs to skip another
/// partition's event (`partition::Partition::owner`). `None` when the message
/// is not an object, breaks, or ends before one.
pub fn leading_namespace(b: &[u8]) -> Option<RawString<'_>> {
    let mut s = Scanner {
        b,
        i: 0,
        wrong: 0,
        field: 0,
        bad_utf8: false,
    };
    s.ws();
    if s.peek() != Some(b'{') {
        return None;
    }
    let mut found = None;
    // Stopping early is an error to `object`; `found` tells the two apart.
    let _ = s.object(0, &TOP, |s, member| {
        if member == Member::Namespace {
            found = s.raw_string()?;
            return Err(ScanError::Syntax);
        }
        s.skip_value(1)
    });
    found
}

/// What a member's key names, for the fields read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Id,
    Name,
    Namespace,
    Timestamp,
    TraceId,
    Payload,
    UserIds,
    Message,
    Unread,
}

/// A member's key as the producer writes it: quotes and colon included, up
/// to 32 bytes, compared as one or two 16-byte words.
struct Key {
    name: &'static [u8],
    member: Member,
    /// `"name":` in its first 16 bytes (zero past its end), and which bytes count.
    head: u128,
    head_mask: u128,
    /// Its last 16 bytes, when it is longer than 16.
    tail: u128,
    len: usize,
}

const fn key(name: &'static [u8], member: Member) -> Key {
    let len = name.len() + 3;
    assert!(len <= 32, "keys up to 29 bytes");
    let mut quoted = [0u8; 32];
    quoted[0] = b'"';
    let mut i = 0;
    while i < name.len() {
        quoted[i + 1] = name[i];
        i += 1;
    }
    quoted[len - 2] = b'"';
    quoted[len - 1] = b':';
    let (mut head, mut tail) = ([0u8; 16], [0u8; 16]);
    let mut i = 0;
    while i < 16 {
        head[i] = quoted[i];
        if len > 16 {
            tail[i] = quoted[len - 16 + i];
        }
        i += 1;
    }
    let head_mask = match len {
        16.. => u128::MAX,
        _ => (1u128 << (8 * len)) - 1,
    };
    Key {
        name,
        member,
        head: u128::from_le_bytes(head),
        head_mask,
        tail: u128::from_le_bytes(tail),
        len,
    }
}

/// The envelope's keys in the order the session service writes them (the
/// seed's schema, `../shared/seeds/001_…`): each member is first compared
/// with the key expected next, and only scanned and looked up when it is
/// another. Any order is read alike; this one is read fastest.
const TOP: [Key; 11] = [
    key(b"id", Member::Id),
    key(b"version", Member::Unread),
    key(b"name", Member::Name),
    key(b"namespace", Member::Namespace),
    key(b"parentNamespace", Member::Unread),
    key(b"timestamp", Member::Timestamp),
    key(b"userId", Member::Unread),
    key(b"traceId", Member::TraceId),
    key(b"sessionId", Member::Unread),
    key(b"spanContext", Member::Unread),
    key(b"payload", Member::Payload),
];

const PAYLOAD_KEYS: [Key; 4] = [
    key(b"userIds", Member::UserIds),
    key(b"namespace", Member::Namespace),
    key(b"topicName", Member::Unread),
    key(b"message", Member::Message),
];

/// The fields read, one bit each, for `Scanner::wrong`.
const ID: u32 = 1;
const NAME: u32 = 2;
const NAMESPACE: u32 = 4;
const TIMESTAMP: u32 = 8;
const PAYLOAD: u32 = 16;
const USER_IDS: u32 = 32;
const PAYLOAD_NAMESPACE: u32 = 64;
const PAYLOAD_FIELDS: u32 = PAYLOAD | USER_IDS | PAYLOAD_NAMESPACE;

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// The fields read whose last value had the wrong type (a repeated key's
    /// last value counts, as in serde_json). Reported only once the whole
    /// document is known to be JSON, so broken JSON is always `Syntax`.
    wrong: u32,
    /// The field being read.
    field: u32,
    /// Likewise for a string we read that is not UTF-8.
    bad_utf8: bool,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        // Compact JSON has none: one comparison says so (whitespace is <= ' ').
        if self.b.get(self.i).is_some_and(|&c| c > b' ') {
            return;
        }
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<()> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(ScanError::Syntax)
        }
    }

    fn end(&mut self) -> Result<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(ScanError::Syntax)
        }
    }

    /// `{ "key": value, ... }`, calling `field` with what each key names in
    /// `keys` (`Member::Unread` when none) once the scanner stands before
    /// its value. `keys` is in the order expected.
    fn object(
        &mut self,
        depth: u32,
        keys: &[Key],
        mut field: impl FnMut(&mut Self, Member) -> Result<()>,
    ) -> Result<()> {
        if self.open(depth, b'{', b'}')? {
            return Ok(());
        }
        let mut next = 0;
        loop {
            self.ws();
            let found = match keys.get(next) {
                Some(k) if self.at(k) => {
                    self.i += k.len;
                    Some(next)
                }
                _ => self.key(keys)?,
            };
            let member = match found {
                Some(k) => {
                    next = k + 1;
                    keys[k].member
                }
                None => Member::Unread,
            };
            field(self, member)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(ScanError::Syntax),
            }
        }
    }

    /// Whether the bytes at the scanner are `k`'s key and colon.
    #[inline(always)]
    fn at(&self, k: &Key) -> bool {
        let b = &self.b[self.i..];
        let head = match b.first_chunk::<16>() {
            Some(head) => *head,
            // Near the end: zeros after it, which no key byte is.
            None => {
                let mut head = [0; 16];
                head[..b.len()].copy_from_slice(b);
                head
            }
        };
        if (u128::from_le_bytes(head) ^ k.head) & k.head_mask != 0 {
            return false;
        }
        k.len <= 16
            || b.get(k.len - 16..k.len)
                .and_then(|t| t.first_chunk::<16>())
                .is_some_and(|t| u128::from_le_bytes(*t) == k.tail)
    }

    /// A key and its colon, scanned: its place in `keys`, if it has one.
    #[inline(never)]
    fn key(&mut self, keys: &[Key]) -> Result<Option<usize>> {
        let key = self.string()?;
        self.eat(b':')?;
        let find = |name: &[u8]| keys.iter().position(|k| k.name == name);
        match key {
            Token::Plain(run) => Ok(find(run.bytes())),
            Token::Escaped(raw) => match unescape(self.quoted(raw)) {
                Ok(name) => Ok(find(name.as_bytes())),
                Err(ScanError::Utf8) => {
                    self.bad_utf8 = true;
                    Ok(None)
                }
                Err(e) => Err(e),
            },
        }
    }

    fn payload(&mut self, f: &mut Fields<'a>) -> Result<()> {
        self.ws();
        match self.peek() {
            Some(b'n') => return self.literal(b"null"),
            Some(b'{') => {}
            _ => return self.skip_wrong_type(1),
        }
        self.object(1, &PAYLOAD_KEYS, |s, member| {
            match member {
                Member::UserIds => f.user_count = s.reading(USER_IDS).opt_count()?,
                Member::Namespace => {
                    f.payload_namespace = s.reading(PAYLOAD_NAMESPACE).opt_string()?
                }
                Member::Message => f.message = s.message()?,
                _ => s.skip_value(2)?,
            }
            Ok(())
        })
    }

    /// `payload.message`: a string without escapes read as one (the seed's,
    /// and most of them: no second look at its bytes), any other value as
    /// raw text; `None` for null or when not UTF-8.
    fn message(&mut self) -> Result<Option<Message<'a>>> {
        self.ws();
        let start = self.i;
        if self.peek() == Some(b'"') {
            if let Token::Plain(run) = self.string()? {
                let text = run.text();
                self.bad_utf8 |= text.is_err();
                return Ok(text.ok().map(Message::Text));
            }
        } else {
            self.skip_value(2)?;
        }
        match std::str::from_utf8(&self.b[start..self.i]) {
            Ok(raw) => Ok((raw != "null").then_some(Message::Json(raw))),
            Err(_) => {
                self.bad_utf8 = true;
                Ok(None)
            }
        }
    }

    /// A string or null.
    #[inline(always)]
    fn opt_string(&mut self) -> Result<Option<Cow<'a, str>>> {
        self.ws();
        match self.peek() {
            Some(b'"') => {}
            Some(b'n') => return self.literal(b"null").map(|_| None),
            _ => return self.skip_wrong_type(1).map(|_| None),
        }
        let text = match self.string()? {
            Token::Plain(run) => run.text().map(Cow::Borrowed).map_err(|_| ScanError::Utf8),
            Token::Escaped(raw) => unescape(self.quoted(raw)).map(Cow::Owned),
        };
        match text {
            Ok(t) => Ok(Some(t)),
            Err(ScanError::Utf8) => {
                self.bad_utf8 = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A string, if the value is one, left undecoded; any other value is
    /// only validated, as an unread one would be.
    fn raw_string(&mut self) -> Result<Option<RawString<'a>>> {
        self.ws();
        if self.peek() != Some(b'"') {
            return self.skip_value(1).map(|_| None);
        }
        let token = self.string()?;
        Ok(Some(RawString {
            quoted: self.quoted(token.raw()),
            plain: match token {
                Token::Plain(run) => Some(run),
                Token::Escaped(_) => None,
            },
        }))
    }

    /// The length of an array, or null.
    fn opt_count(&mut self) -> Result<Option<usize>> {
        self.ws();
        match self.peek() {
            Some(b'[') => self.array(2).map(Some),
            Some(b'n') => self.literal(b"null").map(|_| None),
            _ => self.skip_wrong_type(2).map(|_| None),
        }
    }

    /// Enter an object or array (within the nesting limit); true if it is
    /// empty and already closed.
    fn open(&mut self, depth: u32, open: u8, close: u8) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Err(ScanError::Syntax);
        }
        self.eat(open)?;
        self.ws();
        let empty = self.peek() == Some(close);
        if empty {
            self.i += 1;
        }
        Ok(empty)
    }

    /// `[ value, ... ]`: checks every element and returns how many there were.
    fn array(&mut self, depth: u32) -> Result<usize> {
        if self.open(depth, b'[', b']')? {
            return Ok(0);
        }
        let mut n = 0;
        loop {
            self.skip_value(depth + 1)?;
            n += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(n);
                }
                _ => return Err(ScanError::Syntax),
            }
        }
    }

    /// Start reading `field`: its earlier value, if the key repeats, no longer counts.
    fn reading(&mut self, field: u32) -> &mut Self {
        self.wrong &= !field;
        self.field = field;
        self
    }

    /// A value of the wrong type where we read one.
    fn skip_wrong_type(&mut self, depth: u32) -> Result<()> {
        self.wrong |= self.field;
        self.skip_value(depth)
    }

    /// The slice `raw` (a string's contents) with its quotes.
    fn quoted(&self, raw: &[u8]) -> &'a [u8] {
        let start = raw.as_ptr() as usize - self.b.as_ptr() as usize;
        &self.b[start - 1..start + raw.len() + 1]
    }

    /// At `"`: the string up to its closing quote. Always in line: called
    /// out of line it costs a large share of a seed event's decode
    /// (`scripts/profile`), and the compiler's own choice flips with small
    /// changes elsewhere.
    #[inline(always)]
    fn string(&mut self) -> Result<Token<'a>> {
        if self.peek() != Some(b'"') {
            return Err(ScanError::Syntax);
        }
        let start = self.i + 1;
        let run = plain::run(&self.b[start..]);
        let end = start + run.bytes().len();
        // Most strings have no escapes: one run of plain bytes, then the quote.
        if self.b.get(end) == Some(&b'"') {
            self.i = end + 1;
            return Ok(Token::Plain(run));
        }
        self.i = end;
        self.string_rest(start).map(Token::Escaped)
    }

    /// A string, unread.
    fn skip_string(&mut self) -> Result<()> {
        let start = self.i + 1;
        let end = start + plain::len(&self.b[start..]);
        if self.b.get(end) == Some(&b'"') {
            self.i = end + 1;
            return Ok(());
        }
        self.i = end;
        self.string_rest(start).map(|_| ())
    }

    /// The rest of a string from `i` (a byte that is not plain) on: the
    /// contents of a string with escapes.
    #[inline(never)]
    fn string_rest(&mut self, start: usize) -> Result<&'a [u8]> {
        loop {
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(&self.b[start..self.i - 1]);
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self
                                .b
                                .get(self.i + 1..self.i + 5)
                                .ok_or(ScanError::Syntax)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(ScanError::Syntax);
                            }
                            self.i += 5;
                        }
                        _ => return Err(ScanError::Syntax),
                    }
                }
                Some(c) if *c < 0x20 => return Err(ScanError::Syntax),
                Some(_) => self.i += 1,
                None => return Err(ScanError::Syntax),
            }
            self.i += plain::len(&self.b[self.i..]);
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Result<()> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(ScanError::Syntax)
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(ScanError::Syntax),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.need_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.need_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn need_digits(&mut self) -> Result<()> {
        let start = self.i;
        self.digits();
        if self.i == start {
            Err(ScanError::Syntax)
        } else {
            Ok(())
        }
    }

    /// Any value, unread; strings, the most common, in line.
    #[inline(always)]
    fn skip_value(&mut self, depth: u32) -> Result<()> {
        self.ws();
        match self.peek() {
            Some(b'"') => self.skip_string(),
            _ => self.skip_other(depth),
        }
    }

    #[inline(never)]
    fn skip_other(&mut self, depth: u32) -> Result<()> {
        match self.peek() {
            Some(b'{') => self.object(depth, &[], |s, _| s.skip_value(depth + 1)),
            Some(b'[') => self.array(depth).map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(ScanError::Syntax),
        }
    }
}

/// A quoted JSON string with escapes, decoded by serde_json.
fn unescape(quoted: &[u8]) -> Result<String> {
    serde_json::from_slice::<String>(quoted).map_err(|_| {
        if std::str::from_utf8(quoted).is_err() {
            ScanError::Utf8
        } else {
            ScanError::Syntax
        }
    })
}

#[cfg(any(test, fuzzing))]
pub mod parity;

#[cfg(test)]
mod tests;
