//! Loading a staged plugin in a worker, and turning every way that can fail into one sentence.
//!
//! abi_stable keeps one root module per process and never unloads it, even after a failed load, so a worker
//! that failed to load must exit rather than retry. Only workers load plugin code; the master never does.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use abi_stable::library::{LibraryError, RootModule};
use pmhost_plugin_api::ffi::PluginModuleRef;
use thiserror::Error;

/// The symbol `export_job!` exports with the plugin-api version the plugin was built against.
const VERSION_SYMBOL: &[u8] = b"pmhost_plugin_api_version\0";

/// Why a plugin could not be loaded. Each message names the user's plugin file and the cause.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot load plugin {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error(
        "{path} is not a pmhost plugin: it exports no pmhost entry point (a plugin crate calls \
         pmhost_plugin_api::export_job! and is built with crate-type = [\"cdylib\"])"
    )]
    NotAPlugin { path: PathBuf },
    #[error(
        "plugin {path} was built against pmhost-plugin-api {built}, but this pmhost speaks {host}: \
         rebuild the plugin against pmhost-plugin-api {host}"
    )]
    IncompatibleVersion { path: PathBuf, built: String, host: String },
    #[error(
        "plugin {path} (built against pmhost-plugin-api {built}) does not match this pmhost's plugin interface \
         ({mismatch}): rebuild it against pmhost-plugin-api {host}"
    )]
    LayoutMismatch { path: PathBuf, built: String, host: String, mismatch: String },
    #[error("cannot load plugin {path}: {reason}")]
    Other { path: PathBuf, reason: String },
}

/// Loads the staged copy `staged` of the user's plugin `original` (which error messages name).
pub fn load(staged: &Path, original: &Path) -> Result<PluginModuleRef, LoadError> {
    let path = original.to_owned();
    // SAFETY: loading a library runs its initialisers; a pmhost plugin is trusted code the user asked to run.
    let library = unsafe { libloading::Library::new(staged) }
        .map_err(|e| LoadError::Open { path: path.clone(), reason: first_line(&dl_reason(&e, staged, original)) })?;
    // SAFETY: the symbol, when present, is the NUL-terminated byte array `export_job!` defines.
    let built = match unsafe { library.get::<*const libc::c_char>(VERSION_SYMBOL) } {
        // SAFETY: as above: a NUL-terminated array that lives as long as the library, which is never unloaded.
        Ok(symbol) => unsafe { CStr::from_ptr(*symbol as *const libc::c_char) }.to_string_lossy().into_owned(),
        Err(_) => return Err(LoadError::NotAPlugin { path }),
    };
    // abi_stable opens the library again (same handle) and keeps it; keep ours open too, never unloading.
    std::mem::forget(library);
    let host = pmhost_plugin_api::API_VERSION.to_owned();
    if !compatible(&built, &host) {
        return Err(LoadError::IncompatibleVersion { path, built, host });
    }
    PluginModuleRef::load_from_file(staged).map_err(|error| {
        tracing::debug!(plugin = %original.display(), "full loader report: {error}");
        match error {
            LibraryError::IncompatibleVersionNumber { .. } => LoadError::IncompatibleVersion { path, built, host },
            LibraryError::AbiInstability(report) => {
                LoadError::LayoutMismatch { path, built, host, mismatch: first_mismatch(&report.to_string()) }
            }
            LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path },
            other => LoadError::Other { path, reason: first_line(&other.to_string()) },
        }
    })
}

/// Semver compatibility as Cargo sees it: same major version, and same minor while the major is 0. This is the
/// compatibility promise written in pmhost-plugin-api's README (its table is checked against this function).
fn compatible(built: &str, host: &str) -> bool {
    let parts = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.trim().split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parts(built), parts(host)) {
        (Some((0, built_minor)), Some((0, host_minor))) => built_minor == host_minor,
        (Some((built_major, _)), Some((host_major, _))) => built_major == host_major,
        _ => false,
    }
}

/// The dynamic loader's message, with the staged path replaced by the user's.
fn dl_reason(error: &libloading::Error, staged: &Path, original: &Path) -> String {
    error.to_string().replace(&staged.display().to_string(), &original.display().to_string())
}

fn first_line(text: &str) -> String {
    text.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or("unknown error").to_owned()
}

/// Picks the first concrete difference out of abi_stable's layout report (hundreds of lines of nested type
/// layouts), so the user reads one line; the whole report goes to the debug log.
fn first_mismatch(report: &str) -> String {
    let mut lines = report.lines().map(str::trim).filter(|line| !line.is_empty());
    let mut found = None;
    let mut context = None;
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("Error:") {
            found = Some(rest.trim().to_owned());
            // The expected/found pair follows the error headline.
            let mut detail = Vec::new();
            for next in lines.by_ref().take(4) {
                if next.starts_with("Expected:") || next.starts_with("Found:") {
                    continue;
                }
                detail.push(next.to_owned());
                if detail.len() == 2 {
                    break;
                }
            }
            if !detail.is_empty() {
                found = Some(format!("{}: expected {}", rest.trim().trim_end_matches(':'), detail.join(", found ")));
            }
            break;
        }
        if context.is_none() && line.contains("field") {
            context = Some(line.to_owned());
        }
    }
    found.or(context).unwrap_or_else(|| first_line(report))
}

#[cfg(test)]
mod tests {
    mod v1 {
        /// The interface as the host knows it.
        #[repr(C)]
        #[derive(abi_stable::StableAbi)]
        pub struct Module {
            pub calls: u64,
            pub init: extern "C" fn(u32) -> u32,
        }
    }

    mod v2 {
        /// The same type, changed by a plugin built from a modified interface.
        #[repr(C)]
        #[derive(abi_stable::StableAbi)]
        pub struct Module {
            pub calls: u64,
            pub init: extern "C" fn(u64) -> u32,
        }
    }

    #[test]
    fn a_layout_report_is_reduced_to_one_line_naming_the_difference() {
        use abi_stable::StableAbi;
        use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
        let report = check_layout_compatibility(v1::Module::LAYOUT, v2::Module::LAYOUT).unwrap_err().to_string();
        assert!(report.lines().count() > 20, "abi_stable's report is long: {report}");
        let line = super::first_mismatch(&report);
        assert!(!line.contains('\n') && line.len() < 300, "{line}");
        assert!(line.contains("u32") || line.contains("u64") || line.contains("init"), "{line}\n--- from:\n{report}");
    }

    #[test]
    fn versions_compatible_as_cargo_sees_them() {
        assert!(super::compatible("0.1.3", "0.1.0"));
        assert!(!super::compatible("0.0.1", "0.1.0"));
        assert!(!super::compatible("0.1.0", "0.2.0"));
        assert!(super::compatible("0.2.5", "0.2.0"));
        assert!(super::compatible("1.4.0", "1.2.0"));
        assert!(!super::compatible("2.0.0", "1.2.0"));
        assert!(!super::compatible("garbage", "0.1.0"));
    }

    #[test]
    fn the_compatibility_promise_in_the_api_readme_is_what_the_loader_checks() {
        let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-api/README.md");
        let text = std::fs::read_to_string(&readme).unwrap();
        let section = text.split("## Compatibility").nth(1).expect("the README has a Compatibility section");
        let rows: Vec<Vec<&str>> = section
            .lines()
            .filter(|line| line.starts_with("| ") && !line.starts_with("| pmhost speaks"))
            .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
            .collect();
        assert!(rows.len() >= 6, "the table is missing: {rows:?}");
        for row in &rows {
            let [host, built, loaded] = row[..] else { panic!("a row of three cells: {row:?}") };
            let expected = match loaded {
                "yes" => true,
                "no" => false,
                other => panic!("loaded is yes or no, not {other:?}"),
            };
            assert_eq!(super::compatible(built, host), expected, "pmhost at {host}, plugin built against {built}");
        }
        // The sentence the README quotes is the loader's.
        let error = super::LoadError::IncompatibleVersion {
            path: "/srv/jobs/libmailer.so".into(),
            built: "0.1.0".into(),
            host: "0.2.0".into(),
        };
        assert!(section.contains(&error.to_string()), "the README quotes another sentence than\n{error}");
    }
}
