//! Command line: `smsrelay [--config FILE] <run|migrate|check-config|demo|token|opt-out>`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::settings::Config;

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
    /// First run: start the daemon, send one SMS through its own API to a demo
    /// client and show it reach `sent`, then keep running.
    Demo,
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the list of recipients who unsubscribed.
    #[command(subcommand)]
    OptOut(OptOutCommand),
}

#[derive(Debug, Subcommand)]
pub enum OptOutCommand {
    /// Clear a number's opt-out (the recipient subscribed again), so that
    /// messages to it are sent again. National forms use validation.default_region.
    Remove {
        /// The phone number, in any form the platform stores it.
        number: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random token and the [[api.tokens]] entry to paste into the config.
    New {
        /// A name for the caller, e.g. "fineract" (shown in logs, scopes idempotency keys).
        name: String,
        /// sms:read and/or sms:send (repeat the flag for both).
        #[arg(long = "scope", required = true, value_parser = ["sms:read", "sms:send"])]
        scopes: Vec<String>,
    },
}

/// Exit code for configuration errors.
const CONFIG_ERROR: u8 = 2;

/// Runs the parsed command and returns the process exit code.
pub fn execute(cli: Cli) -> ExitCode {
    // Needs no configuration: it only prints.
    if let Command::Token(TokenCommand::New { name, scopes }) = &cli.command {
        let (token, digest) = crate::api::auth::new_token();
        let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
        // The token goes to stderr, the entry to stdout: `>> smsrelay.toml` stores only the digest.
        eprintln!("token (shown once; give it to the caller): {token}");
        println!("[[api.tokens]]");
        println!("name = {name:?}");
        println!("scopes = [{}]", scopes.join(", "));
        println!("sha256 = \"{digest}\"");
        return ExitCode::SUCCESS;
    }
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
            Command::Demo => crate::demo::run(config.clone()).await,
            Command::OptOut(OptOutCommand::Remove { number }) => {
                crate::app::remove_opt_out(&config, &number).await
            }
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
