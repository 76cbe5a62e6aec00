//! The master process: a single-threaded event loop that forks, watches, replaces and stops workers.

mod children;
mod core;
mod events;
pub mod signals;

pub use core::{Master, MasterError, MasterParts, ReadyNotifier};
