//! Elastic partitions: the checkpoint cost of slots and a rolling 3 -> 5 under load.

use super::*;

/// `BENCH_ONLY=slots`: 3 replicas holding `namespaces` namespaces, with
/// `slots` slots and without (the baseline, same invocation): the time of a
/// checkpoint; then a rolling 3 → 5 with slots while events arrive: how long
/// it takes, how long one slot is served by nobody, and what is read again.
pub(crate) fn bench_slots(url: &str, namespaces: usize, slots: u32) {
    let events = populate_corpus(namespaces);
    fill_stream(url, "SLOTS", &events);
    let mapping = common::temp_dir("bench").join("mapping.yml");
    let yaml = session_exporter::config::DEFAULT_MAPPING.replace(
        "max_namespaces: 10000",
        &format!("max_namespaces: {}", namespaces * 2),
    );
    std::fs::write(&mapping, yaml).unwrap();
    let run = unix_ms();
    let k = slots.to_string();
    let start = |count: u32, index: u32, with_slots: bool| {
        let key = format!("slots-{run}-{with_slots}-{index}");
        let (count, index) = (count.to_string(), index.to_string());
        let mut args = vec![
            "--config.file",
            mapping.to_str().unwrap(),
            "--nats.jetstream.stream",
            "SLOTS",
            "--state.bucket",
            if with_slots {
                "BENCHSLOTS"
            } else {
                "BENCHPLAIN"
            },
            "--state.key",
            &key,
            "--state.interval",
            "2s",
            "--partition.count",
            &count,
            "--partition.index",
            &index,
            "--nats.broadcast-subject",
            "",
        ];
        if with_slots {
            args.extend(["--partition.slots", &k]);
        }
        common::Exporter::start(url, &args)
    };
    let settled = |replicas: &[&common::Exporter], total: f64| {
        common::wait_for(Duration::from_secs(300), "read and checkpointed", || {
            let pages: Vec<String> = replicas.iter().map(|r| r.metrics()).collect();
            let read: f64 = pages
                .iter()
                .map(|m| common::sum(m, "session_exporter_messages_received_total"))
                .sum();
            let pending: f64 = pages
                .iter()
                .map(|m| common::sum(m, "session_exporter_state_pending_messages"))
                .sum();
            (read >= total && pending == 0.0).then_some(pages)
        })
    };
    // A checkpoint's time, the mean of each replica's after everything was read.
    let checkpoint_ms = |pages: &[String]| {
        let each: Vec<f64> = pages
            .iter()
            .map(|m| {
                let sum = common::sum(m, "session_exporter_state_checkpoint_duration_seconds_sum");
                let n = common::sum(
                    m,
                    "session_exporter_state_checkpoint_duration_seconds_count",
                );
                1000.0 * sum / n.max(1.0)
            })
            .collect();
        each.iter().sum::<f64>() / each.len() as f64
    };
    let total = events.len() as f64;
    let plain: Vec<common::Exporter> = (0..3).map(|i| start(3, i, false)).collect();
    let plain_ms = checkpoint_ms(&settled(&plain.iter().collect::<Vec<_>>(), total));
    drop(plain);
    let mut fleet: Vec<common::Exporter> = (0..3).map(|i| start(3, i, true)).collect();
    let slots_ms = checkpoint_ms(&settled(&fleet.iter().collect::<Vec<_>>(), total));
    // The rolling 3 -> 5, with events arriving all along.
    let more = Arc::new(corpus(200_000, namespaces, 9));
    let publishing = {
        let (url, more) = (url.to_string(), more.clone());
        // 20,000 events/s for 10 s, while the replicas roll.
        thread::spawn(move || {
            runtime().block_on(async {
                let client = async_nats::connect(url).await.unwrap();
                for chunk in more.chunks(1000) {
                    for (subject, body) in chunk {
                        let body = body.clone().into();
                        client.publish(subject.clone(), body).await.unwrap();
                    }
                    client.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
    };
    let t = Instant::now();
    fleet.extend((3..5).map(|i| start(5, i, true)));
    let mut gaps = Vec::new();
    for i in (0..3).rev() {
        let stopped = Instant::now();
        fleet[i].signal("TERM");
        fleet[i].wait_exit();
        fleet[i] = start(5, i as u32, true);
        // One handover: until every slot is held again.
        common::wait_for(Duration::from_secs(120), "every slot held", || {
            let held: f64 = fleet
                .iter()
                .map(|r| common::sum(&r.metrics(), "session_exporter_slots_held"))
                .sum();
            (held == f64::from(slots)).then_some(())
        });
        gaps.push(stopped.elapsed().as_secs_f64());
    }
    let rescale = t.elapsed().as_secs_f64();
    publishing.join().unwrap();
    let pages = settled(&fleet.iter().collect::<Vec<_>>(), 0.0);
    let reread: f64 = pages
        .iter()
        .map(|m| common::sum(m, "session_exporter_slot_reread_messages_total"))
        .sum();
    eprintln!(
        "slots: {namespaces} namespaces, {slots} slots: checkpoint {slots_ms:.1} ms with slots, {plain_ms:.1} ms without; rolling 3 -> 5 in {rescale:.1} s, each restart to every slot held again {gaps:.2?} s, {reread} messages read again of {} published meanwhile",
        more.len()
    );
    println!("bench slots_checkpoint_ms_{namespaces} {slots_ms:.1}");
    println!("bench plain_checkpoint_ms_{namespaces} {plain_ms:.1}");
    println!("bench slots_checkpoint_ratio {:.2}", slots_ms / plain_ms);
    println!("bench slots_rescale_3_to_5_s {rescale:.1}");
    println!(
        "bench slots_restart_to_all_held_s_max {:.2}",
        gaps.iter().cloned().fold(0.0, f64::max)
    );
    println!("bench slots_reread_messages {reread:.0}");
    delete_stream(url, "SLOTS");
}
