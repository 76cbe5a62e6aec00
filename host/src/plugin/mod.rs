//! Plugins: staging a content-addressed copy (master side), loading it (worker side), and loading it in a probe
//! process (commands that check a build: validate, restart).

mod load;
pub mod probe;
mod stage;

pub use load::{LoadError, load};
pub use stage::{StageError, StagedPlugin, content_hash, prune, stage};
