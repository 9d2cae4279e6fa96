use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use session_exporter::cli::{
    Cli, Command, LogArgs, LogFormat, ReplayArgs, ReplayFormat, SimulateArgs,
};
use session_exporter::config::{Catalog, DEFAULT_MAPPING};
use session_exporter::{replay, shutdown, simulate, source, BoxError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::PrintDefaultConfig) => {
            print!("{DEFAULT_MAPPING}");
            Ok(())
        }
        Some(Command::Rules {
            config_file,
            scrape_interval,
        }) => rules(config_file.as_deref(), scrape_interval),
        Some(Command::Replay(args)) => replay(&args),
        Some(Command::Partition(args)) => {
            use session_exporter::partition::{of, slot_of, slot_owner};
            for ns in &args.namespaces {
                match args.slots {
                    0 => println!("{ns}\t{}", of(ns, args.count)),
                    k => {
                        let slot = slot_of(ns, k);
                        println!(
                            "{ns}\tslot {slot}\treplica {}",
                            slot_owner(slot, args.count)
                        );
                    }
                }
            }
            Ok(())
        }
        Some(Command::Simulate(args)) => runtime().and_then(|rt| rt.block_on(simulate(*args))),
        None => runtime().and_then(|rt| {
            // Handlers first, in the runtime (they need it).
            let stop = {
                let _in_runtime = rt.enter();
                shutdown::terminate()
            };
            rt.block_on(session_exporter::run(cli.run, stop))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("session-exporter: {e}");
            ExitCode::FAILURE
        }
    }
}

fn rules(
    config_file: Option<&std::path::Path>,
    scrape_interval: std::time::Duration,
) -> Result<(), BoxError> {
    let catalog = match config_file {
        Some(path) => Catalog::from_file(path)?,
        None => Catalog::default_mapping(),
    };
    print!(
        "{}",
        session_exporter::rules::render(&catalog, scrape_interval)
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(log: &LogArgs) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(log.level)
        .with_writer(std::io::stderr)
        .with_target(false);
    match log.format {
        LogFormat::Logfmt => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check_config(file: &std::path::Path) -> Result<(), BoxError> {
    let catalog = Catalog::from_file(file)?;
    println!(
        "{}: OK ({} metrics from {} events, {} SLOs)",
        file.display(),
        catalog.metrics.len(),
        catalog.rules.len(),
        catalog.slos.len()
    );
    Ok(())
}

fn replay(args: &ReplayArgs) -> Result<(), BoxError> {
    let format = match args.format {
        ReplayFormat::Text => replay::Format::Text,
        ReplayFormat::Openmetrics => replay::Format::OpenMetrics,
    };
    if args.step.is_some_and(|s| s.is_zero()) {
        return Err("--step must be above 0".into());
    }
    if args.step.is_some() && format != replay::Format::OpenMetrics {
        return Err("--step writes timestamped history: add --format openmetrics".into());
    }
    let catalog = match &args.config_file {
        Some(path) => Catalog::from_file(path)?,
        None => Catalog::default_mapping(),
    };
    let opts = replay::Options {
        format,
        step: args.step,
        dedup_window: args.dedup_window,
    };
    let replayed = if args.file.as_os_str() == "-" {
        replay::replay(std::io::stdin().lock(), catalog, &opts)
    } else {
        let file =
            std::fs::File::open(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
        replay::replay(std::io::BufReader::new(file), catalog, &opts)
    }
    .map_err(|e| format!("{}: {e}", args.file.display()))?;
    eprint!("{}", replayed.report.summary());
    if replayed.report.folded == 0 {
        return Err(format!("{}: no event could be folded", args.file.display()).into());
    }
    use std::io::Write;
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    replayed.write(&mut stdout)?;
    stdout.flush()?;
    Ok(())
}

async fn simulate(args: SimulateArgs) -> Result<(), BoxError> {
    let stop = shutdown::terminate();
    let cfg = args.nats.config()?;
    // The simulator has no /metrics; its exporter state only absorbs connection events.
    let sink = Arc::new(session_exporter::exporter::Exporter::new(
        Catalog::default_mapping(),
        0,
    ));
    let client = source::connect(&cfg, sink).await?.client;
    let profile = simulate::Profile {
        namespaces: args.namespaces,
        seed: args.seed,
        ds_wait_scale: args.ds_wait_scale,
        invalid_ratio: args.invalid_ratio.clamp(0.0, 1.0),
        namespace_prefix: args.namespace_prefix,
    };
    let plan = simulate::Plan {
        rate: args.rate,
        count: args.count,
        duration: args.duration,
    };
    tracing::info!(?plan, ?profile, url = %cfg.url, "simulating");
    let start = std::time::Instant::now();
    let sent = simulate::publish(
        &client,
        simulate::Generator::new(profile),
        &plan,
        stop,
        args.shutdown_timeout,
    )
    .await?;
    let secs = start.elapsed().as_secs_f64();
    tracing::info!(
        events = sent,
        seconds = secs,
        rate = sent as f64 / secs.max(1e-9),
        "simulation done"
    );
    println!("published {sent} events in {secs:.2}s");
    Ok(())
}
