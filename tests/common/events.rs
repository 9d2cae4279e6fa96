//! Event corpora: the examples file, mappings with one key changed, a churned
//! corpus with publisher retries, and subjects that carry the namespace.

use super::*;

/// The built-in mapping with `from` replaced by `to`, written to a fresh file.
pub fn mapping_file(tag: &str, from: &str, to: &str) -> PathBuf {
    let default = session_exporter::config::DEFAULT_MAPPING;
    assert!(default.contains(from), "the default mapping has `{from}`");
    let path = temp_dir(tag).join("mapping.yml");
    std::fs::write(&path, default.replace(from, to)).unwrap();
    path
}

pub fn examples_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/events.jsonl")
}

/// `(subject, body)` for each line of a `{"subject":…,"event":…}` JSONL file.
pub fn load_events(path: &Path) -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let subject = v["subject"].as_str().unwrap().to_string();
            (subject, serde_json::to_vec(&v["event"]).unwrap())
        })
        .collect()
}

/// The events as publishers send them for server-side partitions:
/// each on `sessions.<namespace>.<event>` (`none` for a namespace that is
/// not one subject token, which cannot be mapped).
pub fn by_namespace_subject(events: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let token = |n: &&str| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    };
    events
        .into_iter()
        .map(|(subject, body)| {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let ns = v["namespace"].as_str().filter(token).unwrap_or("none");
            let event = subject.rsplit('.').next().unwrap();
            (format!("sessions.{ns}.{event}"), body)
        })
        .collect()
}

/// `n` events over `namespaces` namespaces, every kind of event, 1%
/// malformed, timestamps out of order (so the latest gauge value is not the
/// last published), and every fiftieth sent again 300 events later (a
/// publisher's retry after its timeout, same id).
pub fn churned_corpus(n: u64, namespaces: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    use session_exporter::simulate::{unix_ms, Generator, Profile};
    let mut g = Generator::new(Profile {
        namespaces,
        seed,
        invalid_ratio: 0.01,
        ..Profile::default()
    });
    let base = unix_ms() - 600_000;
    let mut out = Vec::new();
    let mut retried = std::collections::VecDeque::new();
    for i in 0..n {
        while retried.front().is_some_and(|(due, _)| *due == i) {
            out.push(retried.pop_front().unwrap().1);
        }
        let e = g.next_event(base + (i * 104_729) % 300_000);
        if i % 50 == 0 {
            retried.push_back((i + 300, e.clone()));
        }
        out.push(e);
    }
    out.extend(retried.into_iter().map(|(_, e)| e));
    out
}
