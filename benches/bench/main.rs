//! `scripts/bench`: throughput, scrape cost and memory, each against a baseline
//! measured in the same run. Progress goes to stderr; the last lines on stdout
//! are `bench <key> <value>`.
//!
//! A module per thing measured: `fold` (in process), `e2e` (through
//! nats-server), `jetstream` (reading a stream), `scrape`, `memory`, `slots`
//! (elastic partitions) and `state` (checkpoints and the fold's lock); here,
//! the corpus, the statistics and `main`, which runs all or `BENCH_ONLY`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::de::IgnoredAny;
use session_exporter::config::Catalog;
use session_exporter::exporter::Exporter;
use session_exporter::exposition::page;
use session_exporter::simulate::{unix_ms, Generator, Profile};
use session_exporter::source::{self, NatsConfig};
use session_exporter::{http, seed};
use tokio::sync::watch;

mod e2e;
mod fold;
mod jetstream;
mod memory;
mod scrape;
mod slots;
mod state;

use e2e::*;
use fold::*;
use jetstream::*;
use memory::*;
use scrape::*;
use slots::*;
use state::*;

type Corpus = Vec<(String, Vec<u8>)>;

fn corpus(n: usize, namespaces: usize, seed: u64) -> Corpus {
    let mut g = Generator::new(Profile {
        namespaces,
        seed,
        ..Profile::default()
    });
    let now = unix_ms();
    (0..n).map(|_| g.next_event(now)).collect()
}

/// Every `Metric*` family for each of `namespaces` namespaces.
fn populate_corpus(namespaces: usize) -> Corpus {
    let mut g = Generator::new(Profile {
        namespaces,
        seed: 99,
        ..Profile::default()
    });
    let now = unix_ms();
    (0..namespaces)
        .flat_map(|ns| g.metric_events_for(ns, now))
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let m = median(v);
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    format!(
        "median {m:.4}, range {lo:.4}..{hi:.4} (spread ±{:.1}%)",
        50.0 * (hi - lo) / m
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------- fold

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// CPU seconds used by this process's threads, but for those named `skip`
/// (from /proc: the exporter's own cost, without the in-process publisher).
fn cpu_secs(skip: &str) -> f64 {
    let ticks: u64 = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            let (head, rest) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1;
            let f: Vec<&str> = rest.split(' ').collect();
            // utime and stime: fields 14 and 15, here 11 and 12 after the state.
            let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            (comm != skip).then_some(t)
        })
        .sum();
    ticks as f64 / 100.0
}

fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        url: url.to_string(),
        subjects: seed::default_subjects(),
        subscription_capacity: source::DEFAULT_SUBSCRIPTION_CAPACITY,
        ..NatsConfig::default()
    }
}

/// Wait until `count()` reaches `n` or stops moving for two seconds; returns
/// the time it reached its final value, measured from `start`, and that value.
fn wait_count(start: Instant, n: u64, count: impl Fn() -> u64) -> (f64, u64) {
    let (mut last, mut last_change) = (count(), Instant::now());
    loop {
        let c = count();
        if c != last {
            (last, last_change) = (c, Instant::now());
        }
        if c >= n || last_change.elapsed() > Duration::from_secs(2) {
            return (last_change.duration_since(start).as_secs_f64(), c);
        }
        thread::sleep(Duration::from_micros(500));
    }
}

fn main() {
    let reps: usize = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let t = Instant::now();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only == "jetstream" {
        let nats = nats_with_partitions();
        bench_jetstream(&nats.url(), reps.min(3)).print();
        return;
    }
    if only == "readers" {
        let nats = common::Nats::start_jetstream();
        let url = nats.url();
        let corpus = Arc::new(corpus(300_000, 1000, 4));
        for rep in 0..reps.min(3) {
            let (c, _) = run_exporter(&url, &corpus, &[], None);
            fill_stream(&url, "BENCH", &corpus);
            let ordered = run_bare_ordered(&url, "BENCH", corpus.len());
            let push = run_bare_push(&url, "BENCH", corpus.len());
            let p500 = run_bare_pull_none(&url, "BENCH", corpus.len(), 500);
            let p4k = run_bare_pull_none(&url, "BENCH", corpus.len(), 4096);
            let p16k = run_bare_pull_none(&url, "BENCH", corpus.len(), 16384);
            delete_stream(&url, "BENCH");
            eprintln!(
                "  rep {rep}: core exporter {c:.0}/s; bare readers of the stream: ordered pull {ordered:.0}/s, ordered push {push:.0}/s, pull without acks 500 a pull {p500:.0}/s, 4096 {p4k:.0}/s, 16384 {p16k:.0}/s"
            );
        }
        return;
    }
    if only == "slots" {
        let nats = common::Nats::start_jetstream();
        let slots = std::env::var("BENCH_SLOTS")
            .ok()
            .and_then(|s| s.parse().ok());
        bench_slots(&nats.url(), 30_000, slots.unwrap_or(720));
        return;
    }
    if only == "partitions" {
        let nats = common::Nats::start_jetstream();
        print_partition_memory(bench_partition_memory(&nats.url(), 30_000));
        return;
    }
    if only == "scrape" {
        bench_scrape(10_000).print("10k");
        return;
    }
    if only == "lock" {
        let paced = bench_lock_hold(10_000, Some(100_000));
        bench_lock_hold(10_000, None).print(&paced);
        bench_reload_hold(10_000);
        return;
    }
    if only == "e2e" {
        let nats = nats_with_partitions();
        bench_e2e(&nats.url(), E2E_REPS_PER_REP * reps).print();
        return;
    }
    if only == "ingest" {
        profile_ingest();
        return;
    }
    if only == "js-read" {
        profile_js_read();
        return;
    }
    let (fold, fold_ratio, fold_warm_ratio) = bench_fold(reps);
    let (skip_ns, namespace_scan_ns) = bench_skip(reps);
    let print_fold = || {
        println!("bench fold_events_per_s {fold:.0}");
        println!("bench fold_ratio {fold_ratio:.3}");
        println!("bench fold_warm_ratio {fold_warm_ratio:.3}");
        println!("bench fold_ns_per_event {:.0}", 1e9 / fold);
        println!("bench skip_ns_per_event {skip_ns:.0}");
        println!("bench namespace_scan_ns_per_event {namespace_scan_ns:.0}");
    };
    if only == "fold" {
        print_fold();
        return;
    }
    let nats = nats_with_partitions();
    let url = nats.url();
    let e2e = bench_e2e(&url, E2E_REPS_PER_REP * reps);
    let js = bench_jetstream(&url, reps.min(3));
    let partitions = bench_partition_memory(&url, 30_000);
    let (checkpoint_ms, checkpoint_bytes) = bench_checkpoint(10_000);
    let lock_hold_paced = bench_lock_hold(10_000, Some(100_000));
    let lock_hold = bench_lock_hold(10_000, None);
    let scrape_1k = bench_scrape(1_000);
    let scrape_10k = bench_scrape(10_000);
    let scrape_ingest = bench_scrape_ingest(&url, reps.min(3));
    let bytes_per_ns = bench_memory(&url);
    eprintln!("done in {:.0}s", t.elapsed().as_secs_f64());
    print_fold();
    e2e.print();
    js.print();
    print_partition_memory(partitions);
    println!("bench checkpoint_ms_10k {checkpoint_ms:.1}");
    println!("bench checkpoint_bytes_10k {checkpoint_bytes}");
    lock_hold.print(&lock_hold_paced);
    bench_reload_hold(10_000);
    scrape_1k.print("1k");
    scrape_10k.print("10k");
    println!("bench scrape_ingest_ratio {scrape_ingest:.3}");
    println!("bench bytes_per_namespace {bytes_per_ns:.0}");
}
