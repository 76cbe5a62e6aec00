//! The master process: a single-threaded event loop that forks, watches, replaces and stops workers.

mod capture;
mod children;
mod core;
mod events;
mod orphans;
mod rollout;
mod scaling;
pub mod signals;
mod snapshot;
mod supervise;

pub use core::{Master, MasterError, MasterParts, ReadyNotifier, Stopped};
pub use orphans::WORKER_MARK;
pub use snapshot::SNAPSHOT_WRITTEN;
