//! `pmhost new`: a ready plugin crate, generated. The crate name's rules (`crate_name`), where its
//! `pmhost-plugin-api` comes from (`api_source`), the files (`files`) and writing them all or nothing (`create`).

mod api_source;
mod crate_name;
mod create;
mod files;

pub use api_source::ApiSource;
pub use crate_name::{CrateNameError, check_crate_name};
pub use create::{NewCrate, ScaffoldError, create};
pub use files::{Flavor, render};
