//! Plugins: staging a content-addressed copy (master side) and loading it (worker side).

mod load;
mod stage;

pub use load::{LoadError, load};
pub use stage::{StageError, StagedPlugin, prune, stage};
