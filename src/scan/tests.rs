use super::parity::{agree, ours, reference};
use super::*;

const SAMPLES: [&str; 7] = [
    // The producer's order (`TOP`), as the simulator writes it.
    r#"{"id":"sim-1","version":1,"name":"MetricMatchLengthDurationEvent","namespace":"g7","parentNamespace":"studio","timestamp":"2026-11-22T10:00:03.250Z","userId":"u","traceId":"4bf92f3577b34da6a3ce929d0e0e4736","sessionId":"s","spanContext":"","payload":{"userIds":["a"],"namespace":"g7","topicName":"t","message":"1260000"}}"#,
    r#"{"id":"e1","name":"MetricAcquiringDsWaitTimeEvent","timestamp":"2026-11-22T10:00:03Z","version":1,"namespace":"mygame","parentNamespace":"s","userId":"u","traceId":"t","sessionId":"s","spanContext":"","payload":{"userIds":["a","b"],"namespace":"mygame","topicName":"x","message":"{\"value\":870}"}}"#,
    r#"{"name":"onPartyCreated","namespace":"g\u00e9\"q","version":1.5e3,"x":[true,false,null,{"a":[]},-0.5]}"#,
    r#" { "name" : "X" , "payload" : { "message" : 12 , "userIds" : [ ] } } "#,
    r#"{"na\u006de":"X","payload":null,"namespace":null}"#,
    r#"[1,2]"#,
    r#"{"name":5}"#,
];

#[test]
fn agrees_with_serde_json_on_samples() {
    for s in SAMPLES {
        let b = s.as_bytes();
        assert_eq!(Some(ours(b)), reference(b), "{s}");
    }
}

#[test]
fn agrees_with_serde_json_on_mutations() {
    // Deterministic mutations of the samples: flips, deletions, insertions,
    // truncations. Acceptance and every field read must match serde_json.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let alphabet = b"{}[]\":,\\ 0123456789-+.eEtrufalsn\x01\xff\xc3u";
    let mut checked = 0;
    for _ in 0..40_000 {
        let mut b = SAMPLES[(next() % 5) as usize].as_bytes().to_vec();
        for _ in 0..1 + next() % 3 {
            let at = (next() as usize) % (b.len() + 1);
            let c = alphabet[(next() as usize) % alphabet.len()];
            match next() % 4 {
                0 if at < b.len() => b[at] = c,
                1 if at < b.len() => {
                    b.remove(at);
                }
                2 => b.insert(at, c),
                _ => b.truncate(at),
            }
        }
        if let Err(e) = agree(&b) {
            panic!("{e}");
        }
        checked += 1;
    }
    assert_eq!(checked, 40_000);
}

#[test]
fn fuzzer_findings_agree() {
    // Accepted by serde_json's syntax, unreadable by its Value: refused
    // by us too where we read them (or not objects at all); a raw
    // message is only read by a mapping, later.
    for (b, refused) in [
        (b"\"n\xff\xfe\xff\"".as_slice(), true),
        (br#"{"name":"X","namespace":"\ud66c\udfae"}"#, true),
        (b"21111000000000000e43297379214", true),
        (
            br#"{"name":"X","payload":{"message":"{\"a\":\"\udf1c\"}"}}"#,
            false,
        ),
    ] {
        assert_eq!(agree(b), Ok(()));
        assert_eq!(
            envelope(b).is_err(),
            refused,
            "{}",
            String::from_utf8_lossy(b)
        );
    }
    // Out of range where we only skip: both accept the syntax.
    assert!(envelope(br#"{"name":"X","x":1e999}"#).is_ok());
    // A repeated key: its last value counts, whatever came before (the
    // fuzzer's: a first payload of the wrong type, then a good one).
    for b in [
        br#"{"e":"X" , "payload" :"X" , "payload" : { "message" :0}}"#.as_slice(),
        br#"{"name":1,"name":"X","payload":{"namespace":"a","userIds":3},"payload":{"message":1}}"#,
        br#"{"name":"X","payload":{"namespace":"a"},"payload":null}"#,
        br#"{"name":"X","payload":{"userIds":3,"userIds":[1]}}"#,
    ] {
        assert_eq!(agree(b), Ok(()), "{}", String::from_utf8_lossy(b));
        assert!(envelope(b).is_ok(), "{}", String::from_utf8_lossy(b));
    }
}

#[test]
fn keys_read_alike_in_any_order_and_spelling() {
    // The expected order is only the fast path: reversed, spaced,
    // escaped or repeated, the same members read the same.
    let members = [
        r#""id":"e""#,
        r#""version":1"#,
        r#""name":"MetricAcquiringDsWaitTimeEvent""#,
        r#""namespace":"g""#,
        r#""timestamp":"2026-11-22T10:00:03Z""#,
        r#""traceId":"t""#,
        r#""payload":{"userIds":["a","b"],"namespace":"p","topicName":"x","message":"5"}"#,
    ];
    let producer = format!("{{{}}}", members.join(","));
    let read = |b: &str| format!("{:?}", envelope(b.as_bytes()));
    let want = read(&producer);
    assert!(
        want.starts_with(r#"Ok(Fields { id: Some("e"), name: Some("MetricAcq"#),
        "{want}"
    );
    let mut reversed = members;
    reversed.reverse();
    for other in [
        format!("{{{}}}", reversed.join(",")),
        format!("{{ {} }}", members.join(" , ").replace("\":", "\" : ")),
        producer.replace(r#""name":"#, r#""n\u0061me":"#),
        producer.replace(r#""id":"e","#, r#""id":"x","name":"y","id":"e","#),
    ] {
        assert_eq!(read(&other), want, "{other}");
        assert_eq!(agree(other.as_bytes()), Ok(()), "{other}");
    }
}

#[test]
fn a_key_is_matched_whole() {
    let at = |b: &[u8], k: &Key| {
        Scanner {
            b,
            i: 0,
            wrong: 0,
            field: 0,
            bad_utf8: false,
        }
        .at(k)
    };
    let long = key(b"parentNamespace", Member::Unread);
    assert!(at(br#""parentNamespace":"s""#, &long));
    // A difference in the second word, or the input ends within it.
    assert!(!at(br#""parentNamespacX":"s""#, &long));
    assert!(!at(br#""parentNamespace""#, &long));
    let short = key(b"name", Member::Name);
    assert!(at(br#""name":"MetricX"}"#, &short));
    assert!(!at(br#""names":"MetricX"}"#, &short));
    assert!(!at(br#""name" :"MetricX"}"#, &short));
    // Fewer than 16 bytes left.
    assert!(at(br#""name":"X"}"#, &short));
    assert!(!at(br#""name""#, &short));
    assert!(!at(br#""nam"#, &short));
    assert_eq!(
        envelope(br#"{"name":"X"}"#).unwrap().name.as_deref(),
        Some("X")
    );
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{{\"x\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(envelope(deep.as_bytes()).err(), Some(ScanError::Syntax));
}
