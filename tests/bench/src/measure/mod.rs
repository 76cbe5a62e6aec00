//! The measurements, one file per group of figures that share a host setup.

pub mod inflight;
pub mod lifecycle;
pub mod overhead;
pub mod queue;
pub mod quiet;
pub mod respawn;
pub mod restart;
pub mod spawn;
