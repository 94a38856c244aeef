//! Command line: `smsrelay [--config FILE] <run|migrate|check-config>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// SMS outbox daemon: sends the rows of the `sms` table through a provider.
#[derive(Debug, Parser)]
#[command(name = "smsrelay", version, about)]
pub struct Cli {
    /// TOML config file (see config/smsrelay.toml); SMSRELAY_<SECTION>__<KEY> variables override it.
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
}

/// Exit code for configuration errors.
const CONFIG_ERROR: u8 = 2;

/// Runs the parsed command and returns the process exit code.
pub fn execute(cli: Cli) -> ExitCode {
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("smsrelay: {e}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    if let Command::CheckConfig = cli.command {
        print!("{}", config.to_redacted_toml());
        return ExitCode::SUCCESS;
    }
    if let Err(e) = crate::telemetry::init(&config.log) {
        eprintln!("smsrelay: {e}");
        return ExitCode::from(CONFIG_ERROR);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("smsrelay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate => crate::app::migrate(&config).await,
            _ => {
                let stop = CancellationToken::new();
                crate::shutdown::cancel_on_signal(stop.clone())?;
                crate::app::Application::build(&config)?
                    .run_until_stopped(stop)
                    .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "smsrelay failed");
            eprintln!("smsrelay: {e:#}");
            ExitCode::FAILURE
        }
    }
}
