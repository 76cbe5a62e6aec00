//! The `pmhost` binary: parse the command line, run the command, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use pmhost::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match &cli.command {
        Command::Start(args) => args.log_level.clone(),
        _ => "warn".to_owned(),
    };
    pmhost::logging::init(&level);
    match pmhost::commands::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            let code = error.exit_code();
            eprintln!("pmhost: error: {:#}", anyhow::Error::new(error));
            ExitCode::from(code as u8)
        }
    }
}
