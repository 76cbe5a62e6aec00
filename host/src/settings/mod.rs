//! Settings: the resolved values everything downstream reads ([`resolved`]), and the task settings, each defined
//! once, from which file keys, flags, merge and docs derive ([`task`]).

mod host;
mod resolved;
mod task;

pub use host::{HOST_SETTINGS, HostSetting, Section, keys as section_keys};
pub use resolved::*;
pub use task::{
    DEFAULT_INIT_TIMEOUT, DEFAULT_WORKERS, Kind, Setting, TASK_SETTINGS, TaskFlags, TaskOverrides, TaskValues, Value,
};
