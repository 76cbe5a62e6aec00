//! Host and log settings (`[host]`, `[log]`), each defined once: its key, the `start` flag that overrides it, its
//! default as people read it, and what it means.
//!
//! Unlike task settings (see [`super::task`]) these have forms of their own (environment variables for the roots,
//! an inverted `--no-log-files`, value enums, a batch-mode interval), so their parsing and merge stay written out
//! in `config` and `commands::plan`; this table is what they are checked against: the file's keys are taken from
//! it, and tests hold the `start` flags, the README's settings table and `examples/pmhost.toml` to it.

/// Which table of the file a setting lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Host,
    Log,
}

/// One host or log setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSetting {
    pub section: Section,
    /// The key in its section of `pmhost.toml`.
    pub key: &'static str,
    /// The `start` flag that overrides it, if one does.
    pub flag: Option<&'static str>,
    /// The default, as the README's settings table shows it (`None`: the table has no row for it).
    pub default: Option<&'static str>,
    pub help: &'static str,
}

const fn host(
    key: &'static str,
    flag: Option<&'static str>,
    default: Option<&'static str>,
    help: &'static str,
) -> HostSetting {
    HostSetting { section: Section::Host, key, flag, default, help }
}

const fn log(
    key: &'static str,
    flag: Option<&'static str>,
    default: Option<&'static str>,
    help: &'static str,
) -> HostSetting {
    HostSetting { section: Section::Log, key, flag, default, help }
}

/// Every `[host]` and `[log]` setting.
pub const HOST_SETTINGS: &[HostSetting] = &[
    host(
        "name",
        Some("--name"),
        Some("`process`"),
        "the master's name: `[A-Za-z0-9_.-]{1,64}`; pid file, status directory and titles derive from it (baseTitle in process_manage)",
    ),
    host(
        "title_prefix",
        Some("--title-prefix"),
        Some("`process_m`"),
        "process titles `{prefix}:Master:{name}` and `{prefix}:Worker:{name}`",
    ),
    host("pid_root", Some("--pid-root"), None, "directory of pid files"),
    host("status_root", Some("--status-root"), None, "directory of status directories"),
    host(
        "check_interval",
        Some("--check-interval"),
        Some("300 (s)"),
        "the check tick (status refresh); 0 or less = batch mode: no respawn, the master exits when its workers are done (0, or 8 if any of them crashed)",
    ),
    host(
        "stop_timeout",
        Some("--stop-timeout"),
        Some("10s"),
        "grace period of a graceful stop before the remaining workers are killed",
    ),
    host(
        "subreaper",
        Some("--subreaper"),
        Some("on"),
        "adopt and reap orphaned descendants; always on (see \"What happens when...\"), the flag is accepted for old command lines",
    ),
    log("enabled", Some("--no-log-files"), Some("off"), "no log files (foreground runs still log to stderr)"),
    log("dir", Some("--log-dir"), None, "directory of log files"),
    log("process", None, None, "name of the process log (master and worker lifecycle)"),
    log("run", None, None, "name of the run log (what plugins and workers' output log)"),
    log("error_prefix", None, None, "prefix of the files that repeat error records"),
    log("fatal_prefix", None, None, "prefix of the file of records that ended the master"),
    log("rotation", Some("--log-rotation"), Some("`daily`"), "`daily`, `hourly` or `never`"),
    log("format", Some("--log-format"), Some("`text`"), "`text` or `json`"),
    log(
        "level",
        Some("--log-level"),
        Some("`info`"),
        "`error` … `trace`, or `RUST_LOG` syntax; `RUST_LOG` overrides it",
    ),
];

/// The keys of a section, in the table's order.
pub fn keys(section: Section) -> Vec<&'static str> {
    HOST_SETTINGS.iter().filter(|s| s.section == section).map(|s| s.key).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn every_flag_exists_on_start_with_its_help() {
        let cli = <crate::cli::Cli as clap::CommandFactory>::command();
        let start = cli.find_subcommand("start").expect("a start command");
        for setting in HOST_SETTINGS {
            let Some(flag) = setting.flag else { continue };
            let long = flag.trim_start_matches("--");
            assert!(
                start.get_arguments().any(|a| a.get_long() == Some(long)),
                "start has no {flag} for `{}`",
                setting.key
            );
        }
    }

    #[test]
    fn the_readme_and_the_example_file_follow_the_definition() {
        let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
        for setting in HOST_SETTINGS {
            if let (Some(flag), Some(default)) = (setting.flag, setting.default) {
                let row = format!("| `{flag}` | {default} | {} |", setting.help);
                assert!(readme.contains(&row), "README.md lacks the settings row\n{row}\n(from settings/host.rs)");
            }
        }
        let example = std::fs::read_to_string(root().join("examples/pmhost.toml")).unwrap();
        for (section, header) in [(Section::Host, "[host]"), (Section::Log, "[log]")] {
            let start = example.find(header).unwrap();
            let block = &example[start..];
            let block = &block[..block[1..].find("\n[").map_or(block.len(), |end| end + 1)];
            for key in keys(section) {
                let listed = block
                    .lines()
                    .any(|line| line.trim_start_matches('#').trim_start().starts_with(&format!("{key} =")));
                assert!(listed, "examples/pmhost.toml does not list `{key}` in its {header}");
            }
        }
    }
}
