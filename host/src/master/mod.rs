//! The master process: a single-threaded event loop that forks, watches, replaces and stops workers.

mod capture;
mod children;
mod core;
mod deadlines;
mod events;
pub(crate) mod footprint;
mod handed;
mod handover;
pub use footprint::join_on_allocation_failure;
pub use handover::{check_from_stdin as handover_check, resume as resume_handover};
mod latency;
mod life;
mod orphans;
mod plugin_dirs;
mod policy;
mod progress;
mod rollout;
mod scaling;
pub mod signals;
mod snapshot;
mod startup;
mod state;
mod stopping;
mod supervise;
mod warm;
mod watch;

pub use core::{Master, MasterError, MasterParts, Stopped};
pub use orphans::WORKER_MARK;
pub use snapshot::SNAPSHOT_WRITTEN;
