//! Reading a host's log files back: parsing lines, finding a log's files across rotation, merging logs in time
//! order, filtering. `pmhost logs` is built on it.

pub mod files;
mod filter;
mod record;
mod stream;

pub use filter::{Filter, HostScope};
pub use record::{LogLevel, Record};
pub use stream::{Coverage, LineSplitter, LogStream, MAX_LINE, Merged};
