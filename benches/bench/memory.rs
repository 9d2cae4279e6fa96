//! Series and resident memory: one exporter against partition replicas at 30,000 namespaces, and memory per namespace.

use super::*;

/// At `namespaces` namespaces (every family populated), read from one
/// stream: one exporter holding all against three partition replicas, each
/// its own process. Series and RSS of each, once everything is served.
pub(crate) fn bench_partition_memory(url: &str, namespaces: usize) -> [f64; 4] {
    let events = populate_corpus(namespaces);
    fill_stream(url, "MEMORY", &events);
    let mapping = common::temp_dir("bench").join("mapping.yml");
    let yaml = session_exporter::config::DEFAULT_MAPPING.replace(
        "max_namespaces: 10000",
        &format!("max_namespaces: {}", namespaces * 2),
    );
    assert!(yaml.contains(&format!("max_namespaces: {}", namespaces * 2)));
    std::fs::write(&mapping, yaml).unwrap();
    let run = unix_ms();
    let start = |count: u32, index: u32| {
        let key = format!("memory-{run}-{count}-{index}");
        let (count, index) = (count.to_string(), index.to_string());
        let args = [
            "--config.file",
            mapping.to_str().unwrap(),
            "--nats.jetstream.stream",
            "MEMORY",
            "--state.bucket",
            "BENCHSTATE",
            "--state.key",
            &key,
            "--state.interval",
            "1s",
            "--partition.count",
            &count,
            "--partition.index",
            &index,
        ];
        common::Exporter::start(url, &args)
    };
    let single = start(1, 0);
    let replicas: Vec<common::Exporter> = (0..3).map(|i| start(3, i)).collect();
    let served = |e: &common::Exporter| {
        let m = e.metrics();
        let received = common::value(&m, "session_exporter_messages_received_total")?;
        let pending = common::value(&m, "session_exporter_state_pending_messages")?;
        let checkpoints = common::value(&m, "session_exporter_state_checkpoints_total")?;
        (pending == 0.0 && checkpoints >= 1.0).then_some((m, received))
    };
    let pages = common::wait_for(
        Duration::from_secs(300),
        "everything read and served",
        || {
            let all: Vec<(String, f64)> = std::iter::once(&single)
                .chain(&replicas)
                .map(served)
                .collect::<Option<_>>()?;
            let split: f64 = all[1..].iter().map(|p| p.1).sum();
            (all[0].1 == events.len() as f64 && split == events.len() as f64).then_some(all)
        },
    );
    let figure = |m: &str| {
        (
            common::value(m, "session_exporter_series").unwrap(),
            common::value(m, "process_resident_memory_bytes").unwrap() / 1048576.0,
        )
    };
    let (series, rss) = figure(&pages[0].0);
    let each: Vec<(f64, f64)> = pages[1..].iter().map(|p| figure(&p.0)).collect();
    let split_series = each.iter().map(|e| e.0).fold(0.0, f64::max);
    let split_rss = each.iter().map(|e| e.1).fold(0.0, f64::max);
    eprintln!(
        "partitions: {namespaces} namespaces, {} events: one exporter {series} series, {rss:.1} MiB; 3 partitions {:?} series, {:?} MiB",
        events.len(),
        each.iter().map(|e| e.0).collect::<Vec<_>>(),
        each.iter().map(|e| (e.1 * 10.0).round() / 10.0).collect::<Vec<_>>(),
    );
    delete_stream(url, "MEMORY");
    [series, split_series, rss, split_rss]
}

pub(crate) fn print_partition_memory(f: [f64; 4]) {
    println!("bench series_30k {:.0}", f[0]);
    println!("bench partition_series_per_replica_30k {:.0}", f[1]);
    println!("bench partition_series_ratio {:.3}", f[1] / f[0]);
    println!("bench rss_mib_30k {:.1}", f[2]);
    println!("bench partition_rss_mib_per_replica_30k {:.1}", f[3]);
    println!("bench partition_rss_ratio {:.3}", f[3] / f[2]);
}

pub(crate) fn rss(exporter: &common::Exporter) -> f64 {
    common::value(&exporter.metrics(), "process_resident_memory_bytes").unwrap()
}

pub(crate) fn bench_memory(url: &str) -> f64 {
    let n = 10_000;
    let events = populate_corpus(n);
    let exporter = common::Exporter::start(url, &[]);
    exporter.wait_ready();
    let before = rss(&exporter);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(common::publish(url, &events));
    let m = exporter.wait_received(events.len() as u64);
    assert_eq!(
        common::value(&m, "session_exporter_namespaces"),
        Some(n as f64)
    );
    let after = rss(&exporter);
    eprintln!(
        "memory: RSS {:.1} MiB at 0 namespaces, {:.1} MiB at {n} (all families populated)",
        before / 1048576.0,
        after / 1048576.0
    );
    (after - before) / n as f64
}
