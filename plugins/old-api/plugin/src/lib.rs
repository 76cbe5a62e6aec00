//! A plugin built against the old interface in `../api`.

use abi_stable::export_root_module;
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::RStr;
use pmhost_plugin_api::{PluginModule, PluginModuleRef};

extern "C" fn run(calls: u64) -> u64 {
    calls + 1
}

#[export_root_module]
fn root_module() -> PluginModuleRef {
    PluginModule { api_version: RStr::from_str("0.1.0"), run }.leak_into_prefix()
}

/// The version marker pmhost plugins export.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static pmhost_plugin_api_version: [u8; 6] = *b"0.1.0\0";
