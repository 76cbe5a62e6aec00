//! The CLI side of each subcommand: what each `pmhost` command does in the calling process.

mod dispatch;
mod error;
mod list;
mod logs;
mod new;
mod plan;
mod process;
mod restart;
mod scale;
mod shell;
mod start;
mod status;
mod stop;
mod top;
mod upgrade;
mod validate;
mod watch;

pub use dispatch::run;
pub use error::CommandError;
