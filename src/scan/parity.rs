//! The scanner against serde_json: acceptance and every field read must
//! match. For the tests and the fuzzer (`fuzz/`, built with `--cfg fuzzing`).

use super::*;
use serde::de::IgnoredAny;
use serde_json::Value;

/// name, namespace, payload namespace, user count, message, trace id.
pub type Read = std::result::Result<
    (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<usize>,
        Option<String>,
        Option<String>,
    ),
    ScanError,
>;

/// The same fields, read through serde_json's `Value`; `None` when
/// serde_json accepts the syntax (`IgnoredAny`) but its `Value` cannot
/// hold it (invalid UTF-8 or a lone surrogate in a string, a number out
/// of range): there is no reference reading then.
pub fn reference(b: &[u8]) -> Option<Read> {
    if serde_json::from_slice::<IgnoredAny>(b).is_err() {
        return Some(Err(ScanError::Syntax));
    }
    let v: Value = serde_json::from_slice(b).ok()?;
    let Value::Object(o) = &v else {
        return Some(Err(ScanError::Type));
    };
    Some(read(o))
}

fn read(o: &serde_json::Map<String, Value>) -> Read {
    let s = |x: Option<&Value>| match x {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ScanError::Type),
    };
    let name = s(o.get("name"))?;
    let ns = s(o.get("namespace"))?;
    s(o.get("id"))?;
    s(o.get("timestamp"))?;
    let (pns, count, msg) = match o.get("payload") {
        None | Some(Value::Null) => (None, None, None),
        Some(Value::Object(p)) => {
            let count = match p.get("userIds") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) => Some(a.len()),
                Some(_) => return Err(ScanError::Type),
            };
            let msg = p
                .get("message")
                .filter(|m| !m.is_null())
                .map(|m| m.to_string());
            (s(p.get("namespace"))?, count, msg)
        }
        Some(_) => return Err(ScanError::Type),
    };
    let trace = o.get("traceId").and_then(Value::as_str).map(str::to_string);
    Ok((name, ns, pns, count, msg, trace))
}

pub fn ours(b: &[u8]) -> Read {
    let f = envelope(b)?;
    // The message stays raw JSON; one Value cannot hold (a lone
    // surrogate) has no reference reading either.
    let msg = f.message.map(|m| {
        serde_json::from_str::<Value>(&m.json())
            .map_or_else(|e| format!("unreadable: {e}"), |v| v.to_string())
    });
    let o = |c: Option<Cow<str>>| c.map(|c| c.into_owned());
    Ok((
        o(f.name),
        o(f.namespace),
        o(f.payload_namespace),
        f.user_count,
        msg,
        f.trace_id.and_then(|t| t.text()).map(Cow::into_owned),
    ))
}

/// `Err` with both readings when they differ.
pub fn agree(b: &[u8]) -> std::result::Result<(), String> {
    let got = ours(b);
    match reference(b) {
        None => Ok(()),
        Some(want) if got == want => Ok(()),
        Some(want) => Err(format!(
            "scan: {got:?}\nserde_json: {want:?}\ninput: {}",
            String::from_utf8_lossy(b)
        )),
    }
}
