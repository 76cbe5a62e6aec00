//! The `pmhost-bench` command: parses the command line, builds and finds pmhost and the bench plugin, runs the
//! benchmark, prints the Markdown table and writes the JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use pmhost_bench::{Config, Group, artifacts, clock};

/// Benchmark of pmhost: drives the release `pmhost` binary and the bench plugin and measures from outside.
#[derive(Debug, Parser)]
#[command(name = "pmhost-bench")]
struct Args {
    /// Fewer runs and shorter windows (under a minute).
    #[arg(long)]
    quick: bool,
    /// Worker counts of the start, stop and status rows.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: Option<Vec<u32>>,
    /// Runs per figure (default: 5, or 3 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    runs: Option<u32>,
    /// Measure only these groups of figures.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Option<Vec<Group>>,
    /// Also write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmhost-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    clock::install_interrupt_handler().context("install the Ctrl-C handler")?;
    let mut config = if args.quick { Config::quick() } else { Config::full() };
    if let Some(workers) = args.workers {
        config.worker_counts = workers;
    }
    if let Some(groups) = args.only {
        config.groups = groups;
    }
    if let Some(runs) = args.runs {
        config.runs = runs as usize;
    }
    let artifacts = artifacts::build()?;
    if artifacts.profile != "release" {
        eprintln!("pmhost-bench: measuring a {} build: run with --release for real figures", artifacts.profile);
    }
    let report = pmhost_bench::run(&config, &artifacts)?;
    print!("{}", report.markdown());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("serialize the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))?;
        eprintln!("pmhost-bench: figures written to {}", path.display());
    }
    let misses = report.misses();
    if !misses.is_empty() {
        eprintln!("pmhost-bench: {} figure(s) missed their target", misses.len());
    }
    Ok(())
}
