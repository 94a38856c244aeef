use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    smsrelay::cli::execute(smsrelay::cli::Cli::parse())
}
