use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use session_exporter::cli::{Cli, Command, LogArgs, LogFormat, SimulateArgs};
use session_exporter::config::{Catalog, DEFAULT_MAPPING};
use session_exporter::{shutdown, simulate, source, BoxError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::PrintDefaultConfig) => {
            print!("{DEFAULT_MAPPING}");
            Ok(())
        }
        Some(Command::Simulate(args)) => runtime().and_then(|rt| rt.block_on(simulate(*args))),
        None => runtime()
            .and_then(|rt| rt.block_on(session_exporter::run(cli.run, shutdown::terminate()))),
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
        "{}: OK ({} metrics from {} events)",
        file.display(),
        catalog.metrics.len(),
        catalog.rules.len()
    );
    Ok(())
}

async fn simulate(args: SimulateArgs) -> Result<(), BoxError> {
    let cfg = args.nats.config();
    // The simulator has no /metrics; its exporter state only absorbs connection events.
    let sink = Arc::new(session_exporter::exporter::Exporter::new(
        Catalog::default_mapping(),
        None,
        0,
    ));
    let client = source::connect(&cfg, sink).await?;
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
        shutdown::terminate(),
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
