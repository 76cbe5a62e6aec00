//! From a parsed command line to the subcommand that runs it.

use super::{CommandError, list, logs, new, restart, scale, shell, start, status, stop, top, upgrade, validate};
use crate::cli::{Cli, Command};

/// Runs a parsed command line; `Ok` carries the exit code of a command that ran (0, or `status --check`'s 5).
pub fn run(cli: Cli) -> Result<i32, CommandError> {
    match cli.command {
        Command::Start(args) => start::start(args),
        Command::Stop(args) => stop::stop(args),
        Command::Status(args) => status::status(args),
        Command::Restart(args) => restart::restart(args),
        Command::Scale(args) => scale::scale(args),
        Command::Upgrade(args) => upgrade::upgrade(args),
        Command::List(args) => list::list(args),
        Command::Logs(args) => logs::logs(args),
        Command::Top(args) => top::top(args),
        Command::Validate(args) => validate::validate(args),
        Command::New(args) => new::new(args),
        Command::Completions { shell } => shell::completions(shell),
        Command::Man => shell::man(),
    }
}
