//! `smsrelay-chaos`: K real `smsrelay run` processes against a PostgreSQL of
//! its own and a faulty provider, with seeded faults (SIGKILL, SIGSTOP,
//! backend terminations, immediate restarts); then it judges what the
//! database and the provider saw and prints one summary line. Exit 0: every
//! check held; 1: a violation (listed on stderr); 2: the run itself failed.
//! README "Guarantees" has the command and the figures.

mod checks;
mod cluster;
mod fleet;
mod outbox;
mod provider;
mod run;
mod seeded;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::checks::Guarantee;

/// Unix milliseconds: the provider's log, the stop windows and the database share this clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[derive(Debug, Parser)]
#[command(
    name = "smsrelay-chaos",
    about = "Fault-injection run of smsrelay; prints one summary line"
)]
pub struct Args {
    /// Decides the provider's answers and the fault schedule.
    #[arg(long)]
    pub seed: u64,
    /// Messages to enqueue.
    #[arg(long, default_value_t = 600)]
    pub messages: i64,
    /// `smsrelay run` processes.
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// How long faults are injected (messages are enqueued over its first two thirds).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// `[dispatch] guarantee` of the daemons.
    #[arg(long, default_value = "at-least-once", value_parser = parse_guarantee)]
    pub guarantee: Guarantee,
    /// How long to wait, after the faults, for every message to be final.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
    /// Where the daemons' logs, the provider's log and the violations go
    /// (default: target/chaos/seed-<seed>-<guarantee>).
    #[arg(long)]
    pub artifacts: Option<std::path::PathBuf>,
}

fn parse_guarantee(value: &str) -> Result<Guarantee, String> {
    match value {
        "at-least-once" => Ok(Guarantee::AtLeastOnce),
        "at-most-once" => Ok(Guarantee::AtMostOnce),
        other => Err(format!("{other:?}: expected at-least-once or at-most-once")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.messages < 1 || args.instances < 1 {
        eprintln!("smsrelay-chaos: --messages and --instances must be at least 1");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("smsrelay-chaos: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run::run(&args) => outcome,
            signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}; cleaned up")),
        }
    });
    // The run's cluster and processes are gone by now (dropped with the run).
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("smsrelay-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Ctrl-C or SIGTERM: the run is dropped, which stops the daemons and removes the cluster.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
