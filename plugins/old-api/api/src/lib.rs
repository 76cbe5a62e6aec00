//! Stands in for an old release of pmhost-plugin-api: same root module name, older version, other layout.

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::RStr;
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings};

/// The old root module: a single `run` entry point instead of `init`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The interface version.
    pub api_version: RStr<'static>,
    /// The old entry point.
    #[sabi(last_prefix_field)]
    pub run: extern "C" fn(u64) -> u64,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}
    const BASE_NAME: &'static str = "pmhost_plugin";
    const NAME: &'static str = "pmhost plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
