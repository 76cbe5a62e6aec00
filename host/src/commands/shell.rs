//! `pmhost completions SHELL` and `pmhost man`: generated from the command-line definition, so they never drift.

use clap::CommandFactory;

use super::CommandError;
use crate::cli::Cli;
use crate::exit::cli as code;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<i32, CommandError> {
    clap_complete::generate(shell, &mut Cli::command(), "pmhost", &mut std::io::stdout());
    Ok(code::OK)
}

/// Prints the man page.
pub fn man() -> Result<i32, CommandError> {
    clap_mangen::Man::new(Cli::command())
        .render(&mut std::io::stdout())
        .map_err(|e| CommandError::system("write the man page", e))?;
    Ok(code::OK)
}
