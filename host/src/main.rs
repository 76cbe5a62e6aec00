//! The `pmhost` binary: parse the command line, run the command, turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use pmhost::cli::{Cli, Command};

fn main() -> ExitCode {
    // Asked by `pmhost upgrade` (and by a master about to re-execute itself) of a new binary: which handover
    // versions it reads. Answered before any parsing, so every future pmhost can answer it the same way.
    let first = std::env::args_os().nth(1);
    if first.as_ref().is_some_and(|arg| arg == "--handover-version") {
        println!("{}", pmhost::upgrade::version_line());
        return ExitCode::SUCCESS;
    }
    // Run by a master about to upgrade: can this binary read its state (on stdin)?
    if first.as_ref().is_some_and(|arg| arg == "--handover-check") {
        return ExitCode::from(pmhost::master::handover_check() as u8);
    }
    // The new image of an upgraded master (same pid): take the state over and run.
    if first.as_ref().is_some_and(|arg| arg == "--resume-handover") {
        let args: Vec<_> = std::env::args_os().collect();
        return ExitCode::from(pmhost::master::resume_handover(&args) as u8);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => match pmhost::cli::empty_env_var(&error) {
            Some(sentence) => {
                eprintln!("pmhost: error: {sentence}");
                return ExitCode::from(pmhost::exit::cli::USAGE as u8);
            }
            None => error.exit(),
        },
    };
    if !matches!(cli.command, Command::Start(_)) {
        // `start` sets up its own logging once it knows where its files go.
        pmhost::logging::init_cli();
    }
    match pmhost::commands::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            let code = error.exit_code();
            eprintln!("pmhost: error: {:#}", anyhow::Error::new(error));
            ExitCode::from(code as u8)
        }
    }
}
