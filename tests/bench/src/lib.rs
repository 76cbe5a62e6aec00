//! pmhost-bench: drives the real `pmhost` binary and the bench plugin, measures every figure from outside the
//! master (`CLOCK_MONOTONIC` on both sides), repeats each, and reports median and spread against its target.
//!
//! [`run`] is the whole benchmark; the `pmhost-bench` binary parses the command line around it, and the smoke
//! test calls it with [`Config::smoke`].

pub mod artifacts;
pub mod clock;
pub mod config;
pub mod markers;
mod measure;
pub mod procfs;
pub mod report;
pub mod sandbox;
pub mod wait;

use anyhow::Result;

pub use artifacts::Artifacts;
pub use config::{Config, Group};
pub use report::{Figure, Report};

/// What every measurement gets: the settings and the programs to drive.
pub struct Bench<'a> {
    pub config: &'a Config,
    pub artifacts: &'a Artifacts,
}

impl Bench<'_> {
    /// One progress line on stderr (the table goes to stdout).
    pub fn progress(&self, what: &str) {
        eprintln!("[pmhost-bench] {what}");
    }
}

/// Runs the measurements of `config` against `artifacts` and returns the figures in table order.
pub fn run(config: &Config, artifacts: &Artifacts) -> Result<Report> {
    let bench = Bench { config, artifacts };
    let load_before = load_average();
    let wanted = |group: Group| config.groups.contains(&group);
    let lifecycle = if wanted(Group::Lifecycle) { Some(measure::lifecycle::measure(&bench)?) } else { None };
    let respawn = if wanted(Group::Respawn) { Some(measure::respawn::measure(&bench)?) } else { None };
    let inflight = if wanted(Group::Inflight) { Some(measure::inflight::measure(&bench)?) } else { None };
    let restart = if wanted(Group::Restart) { measure::restart::measure(&bench)? } else { Vec::new() };
    let quiet = if wanted(Group::Quiet) { measure::quiet::measure(&bench)? } else { Vec::new() };
    let overhead = if wanted(Group::Overhead) { measure::overhead::measure(&bench)? } else { Vec::new() };
    let mut notes = Vec::new();
    let queue = if wanted(Group::Queue) {
        match measure::queue::measure(&bench)? {
            Ok(figures) => figures,
            Err(skipped) => {
                notes.push(skipped);
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    let spawn = if wanted(Group::Spawn) { measure::spawn::measure(&bench)? } else { Vec::new() };

    // Table order follows the targets' list, which interleaves the groups.
    let mut figures = Vec::new();
    let (start, stop, status) = lifecycle.map_or_else(Default::default, |l| (l.start, l.stop, l.status));
    figures.extend(start);
    figures.extend(respawn);
    figures.extend(stop);
    figures.extend(inflight);
    figures.extend(restart);
    figures.extend(status);
    figures.extend(quiet);
    figures.extend(overhead);
    figures.extend(queue);
    figures.extend(spawn);
    report::share_methods(&mut figures);
    Ok(Report {
        config: config.clone(),
        profile: artifacts.profile.clone(),
        plugin_bytes: std::fs::metadata(&artifacts.plugin).map_or(0, |m| m.len()),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        load_before,
        load_after: load_average(),
        figures,
        notes,
    })
}

/// The 1, 5 and 15 minute load averages: other work on the machine shows in every figure, so the report says
/// how busy it was.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
