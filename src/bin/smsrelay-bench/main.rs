//! `smsrelay-bench`: throughput and latency of the real daemon against a
//! PostgreSQL on this machine, side by side with the database's own ceiling
//! for the same SQL. README "Performance" has the command and the figures.
//! Exit 0: every count checked out; 1: a wrong count; 2: the run failed.

mod burndown;
mod ceiling;
mod daemon;
mod database;
mod latency;
mod provider;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Unix microseconds: the inserter's stamps and the provider share this clock.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "smsrelay-bench",
    about = "Burn-down, ceiling and latency of smsrelay on PostgreSQL; prints a table, writes JSON"
)]
pub struct Args {
    /// Admin URL of the PostgreSQL server; each section creates, then drops, a fresh database on it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Messages pre-inserted for the burn-down and the ceiling.
    #[arg(long, default_value_t = 100_000)]
    pub messages: i64,
    /// Offered rate of the latency section, messages per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long the latency section inserts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub latency_duration: Duration,
    /// Connections inserting in the latency section, one row per INSERT each
    /// (a commit costs milliseconds here, so one connection cannot offer 1,000 a second).
    #[arg(long, default_value_t = 16)]
    pub inserters: u32,
    /// Rows per claim, for the daemon ([dispatch] batch_size) and the ceiling alike.
    #[arg(long, env = "SMSRELAY_DISPATCH__BATCH_SIZE", default_value_t = 256)]
    pub batch_size: u32,
    /// Sends in flight ([dispatch] concurrency); unset: the daemon's default.
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Connections the ceiling claims and records on, each in its own loop.
    #[arg(long, default_value_t = 4)]
    pub ceiling_connections: u32,
    /// Finished rows (with their attempt and event rows) put in the outbox
    /// before a second burn-down, reported as a ratio to the first; 0: no
    /// growth section. 10000000 is the size (slow: many minutes).
    #[arg(long, default_value_t = 0)]
    pub growth_rows: i64,
    /// Small sizes, so that the whole run takes about a minute (the test suite's smoke run).
    #[arg(long)]
    pub quick: bool,
    /// Sections to run, comma-separated: ceiling, burndown, latency.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ceiling,burndown,latency"
    )]
    pub sections: Vec<String>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/smsrelay-bench.json")]
    pub json: PathBuf,
    /// A section that has not finished by then fails.
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Args {
    /// `--quick` caps every size so the whole run fits in about a minute.
    fn sized(mut self) -> Self {
        if self.quick {
            self.messages = self.messages.min(10_000);
            self.latency_duration = self.latency_duration.min(Duration::from_secs(5));
            self.growth_rows = self.growth_rows.min(100_000);
        }
        self
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

fn main() -> ExitCode {
    let args = Args::parse().sized();
    if args.messages < 1
        || args.rate < 1
        || args.inserters < 1
        || args.batch_size < 1
        || args.ceiling_connections < 1
    {
        eprintln!(
            "smsrelay-bench: --messages, --rate, --inserters, --batch-size and --ceiling-connections must be at least 1"
        );
        return ExitCode::from(2);
    }
    if let Some(unknown) = args
        .sections
        .iter()
        .find(|s| !["ceiling", "burndown", "latency"].contains(&s.as_str()))
    {
        eprintln!("smsrelay-bench: --sections: {unknown:?} is not ceiling, burndown or latency");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("smsrelay-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(report::run(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("smsrelay-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
