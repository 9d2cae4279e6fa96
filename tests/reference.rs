//! The reference cannot go stale: every flag of every subcommand's `--help`
//! has a row in docs/configuration.md, every metric family the exporter
//! serves has a row in docs/metrics.md, every key of the shipped mapping
//! files has a line in the mapping file's reference, and every relative link
//! and `#anchor` in the README and docs/ resolves. Each check is also run on
//! a doctored page and must fail there (its negative control).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use common::*;

const SUBCOMMANDS: [&str; 6] = [
    "",
    "simulate",
    "replay",
    "partition",
    "check-config",
    "print-default-config",
];

fn read(path: &str) -> String {
    let path = repo_path(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The table rows of a page, one string.
fn rows(page: &str) -> String {
    let rows = page.lines().filter(|l| l.trim_start().starts_with('|'));
    rows.collect::<Vec<_>>().join("\n")
}

/// The long flags a `--help` lists (but `--help` and `--version`).
fn flags(help: &str) -> Vec<String> {
    let named = help.lines().filter_map(|l| {
        let l = l.trim_start();
        let l = l
            .strip_prefix('-')
            .filter(|r| r.get(1..3) == Some(", "))
            .map_or(l, |r| &r[3..]);
        let name = l.strip_prefix("--")?.split([' ', '=', '<', ',']).next()?;
        Some(format!("--{name}"))
    });
    named
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

/// The flags of `help` without a row naming them in `page`.
fn undocumented_flags(help: &str, page: &str) -> Vec<String> {
    let rows = rows(page);
    let missing = flags(help).into_iter();
    missing
        .filter(|f| !rows.contains(&format!("`{f}`")))
        .collect()
}

#[test]
fn every_flag_has_a_row_in_the_configuration_page() {
    let page = read("docs/configuration.md");
    for sub in SUBCOMMANDS {
        let args: Vec<&str> = [sub, "--help"]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let help = run_ok(EXPORTER, &args);
        assert!(
            flags(&help).contains(&"--log.level".to_string()),
            "{sub}: {help}"
        );
        let missing = undocumented_flags(&help, &page);
        assert!(
            missing.is_empty(),
            "`{sub} --help`: {missing:?} have no row in docs/configuration.md"
        );
    }
    // The negative control: a page without --state.interval's row.
    let doctored: Vec<&str> = page
        .lines()
        .filter(|l| !l.contains("`--state.interval`"))
        .collect();
    let help = run_ok(EXPORTER, &["--help"]);
    assert_eq!(
        undocumented_flags(&help, &doctored.join("\n")),
        ["--state.interval"]
    );
}

/// The families of a text exposition that `page`'s tables do not name:
/// `` `name` `` or `` `name{…` ``, a self-metric also as `` `…_rest` ``
/// (the tables' short form), `process_*` as `` `process_*` ``.
fn undocumented_families(exposition: &str, page: &str) -> BTreeSet<String> {
    let rows = rows(page);
    let named = |n: &str| rows.contains(&format!("`{n}`")) || rows.contains(&format!("`{n}{{"));
    let families = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next());
    families
        .filter(|f| {
            let short = f
                .strip_prefix("session_exporter")
                .map(|rest| format!("…{rest}"));
            !(named(f)
                || short.is_some_and(|s| named(&s))
                || (f.starts_with("process_") && rows.contains("`process_*`")))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn every_served_family_has_a_row_in_the_metrics_page() {
    // The stream, a state store and slots, every kind of event, malformed
    // ones too: as many families as one exporter serves.
    let nats = Nats::start_jetstream();
    let url = nats.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let js = rt.block_on(channels_stream(&url, "SESSIONS"));
    let events = churned_corpus(2000, 5, 3);
    rt.block_on(js_publish(&js, &events));
    let args = [
        "--nats.jetstream.stream",
        "SESSIONS",
        "--state.bucket",
        "STATE",
        "--state.key",
        "reference",
        "--partition.slots",
        "6",
    ];
    let e = Exporter::start(&url, &args);
    let exposition = wait_for(
        std::time::Duration::from_secs(20),
        "every event folded",
        || {
            let m = e.metrics();
            let read = value(&m, "session_exporter_messages_received_total")?;
            (read == events.len() as f64 && m.contains("session_active_sessions{")).then_some(m)
        },
    );
    let page = read("docs/metrics.md");
    let missing = undocumented_families(&exposition, &page);
    assert!(
        missing.is_empty(),
        "{missing:?} have no row in docs/metrics.md"
    );
    let served = undocumented_families(&exposition, "");
    assert!(
        served.len() > 40,
        "too few families served to check: {served:?}"
    );
    // The negative control: a page without the slot moves' row.
    let doctored: Vec<&str> = page
        .lines()
        .filter(|l| !l.contains("slot_moves_total"))
        .collect();
    let missing = undocumented_families(&exposition, &doctored.join("\n"));
    assert_eq!(
        missing,
        BTreeSet::from(["session_exporter_slot_moves_total".to_string()])
    );
}

/// Every key of a YAML document, at any depth, but the names under a
/// `namespaces:` (a user's namespaces, not keys of the format).
fn yaml_keys(v: &serde_json::Value, keys: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                keys.insert(k.clone());
                if k != "namespaces" {
                    yaml_keys(v, keys);
                } else if let serde_json::Value::Object(per) = v {
                    per.values().for_each(|v| yaml_keys(v, keys));
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| yaml_keys(v, keys)),
        _ => {}
    }
}

/// The keys of the shipped mapping files that `reference` has no `key:`
/// line for.
fn undocumented_keys(reference: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for file in ["config/default.yml", "examples/mapping.yml"] {
        let v: serde_json::Value = serde_saphyr::from_str(&read(file)).unwrap();
        yaml_keys(&v, &mut keys);
    }
    let documented = |k: &String| {
        reference.lines().any(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.starts_with(&format!("{k}:"))
        })
    };
    keys.into_iter().filter(|k| !documented(k)).collect()
}

#[test]
fn every_mapping_key_has_a_line_in_the_reference() {
    let page = read("docs/configuration.md");
    let reference = &page[page
        .find("## The mapping file")
        .expect("the mapping file's section")..];
    let missing = undocumented_keys(reference);
    assert!(
        missing.is_empty(),
        "{missing:?} have no line in docs/configuration.md's mapping reference"
    );
    // The negative control: a reference without `ttl:`.
    let doctored: Vec<&str> = reference.lines().filter(|l| !l.contains("ttl:")).collect();
    assert_eq!(
        undocumented_keys(&doctored.join("\n")),
        BTreeSet::from(["ttl".to_string()])
    );
}

/// GitHub's anchor of a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces to `-`; a repeated one gets `-1`, `-2`…
fn anchors(page: &str) -> BTreeSet<String> {
    let (mut seen, mut out) = (HashMap::new(), BTreeSet::new());
    for heading in outside_code(page).filter_map(|l| l.strip_prefix('#')) {
        let text = heading.trim_start_matches('#').trim().to_lowercase();
        let slug: String = text
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The lines of `page` outside fenced code blocks.
fn outside_code(page: &str) -> impl Iterator<Item = &str> {
    let mut fenced = false;
    page.lines().filter(move |l| {
        if l.trim_start().starts_with("```") {
            fenced = !fenced;
            return false;
        }
        !fenced
    })
}

/// The relative links of `page` (in `dir`) that do not resolve: a missing
/// file, or an `#anchor` no heading of the target has.
fn broken_links(page: &str, dir: &Path) -> Vec<String> {
    let mut broken = Vec::new();
    for line in outside_code(page) {
        for target in line.split("](").skip(1).filter_map(|t| t.split(')').next()) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() {
                None
            } else {
                Some(dir.join(path))
            };
            let text = match &file {
                None => page.to_string(),
                Some(f) if !f.exists() => {
                    broken.push(format!("{target}: no such file"));
                    continue;
                }
                Some(f) if anchor.is_empty() || f.is_dir() => continue,
                Some(f) => std::fs::read_to_string(f).unwrap_or_default(),
            };
            if !anchor.is_empty() && !anchors(&text).contains(anchor) {
                broken.push(format!("{target}: no heading has that anchor"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let docs = std::fs::read_dir(repo_path("docs")).unwrap();
    let mut pages: Vec<PathBuf> = docs.map(|e| e.unwrap().path()).collect();
    pages.retain(|p| p.extension().is_some_and(|x| x == "md"));
    pages.push(repo_path("README.md"));
    pages.push(repo_path("BENCHMARKS.md"));
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        let broken = broken_links(&text, page.parent().unwrap());
        assert!(broken.is_empty(), "{}: {broken:#?}", page.display());
    }
    // The negative controls: a missing file and a missing anchor.
    let doctored =
        "[a](docs/nowhere.md) [b](docs/scaling.md#no-such-heading) [c](#the-two-commands)";
    let readme = repo_path("README.md");
    let broken = broken_links(doctored, readme.parent().unwrap());
    assert_eq!(broken.len(), 3, "{broken:?}");
    let doctored = format!("{doctored}\n\n## The two commands\n");
    assert_eq!(broken_links(&doctored, readme.parent().unwrap()).len(), 2);
}
