//! Benchmark fixture for `pmhost-bench`: a plugin whose `work` does nothing, one 32-byte write, or timestamps
//! itself, chosen by its config, so the benchmark can observe the host from outside.
//!
//! Config (`--task-config` JSON): `{"mode": "empty" | "write" | "marker" | "slow", "marker_file": PATH,
//! "first_only": bool, "write_file": PATH, "work_ms": N}`.
//!
//! Marker lines go to `marker_file`, one `write(2)` per line on an `O_APPEND` descriptor (so lines of different
//! workers never interleave), with `CLOCK_MONOTONIC` nanoseconds, the clock the benchmark reads too:
//!
//! - `init PID SLOT GENERATION START_NS END_NS` when `init` finishes (any mode, when `marker_file` is set),
//! - `work PID SLOT GENERATION CALL NS` at the start of a call (`marker` mode; only the first call with
//!   `first_only`),
//! - `begin …` and `end …` (same fields) around a call that takes `work_ms` and ignores stop requests (`slow`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::time::Duration;

use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, export_job};

#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Empty,
    Write,
    Marker,
    Slow,
}

#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    mode: Mode,
    marker_file: Option<String>,
    first_only: bool,
    write_file: Option<String>,
    work_ms: u64,
}

/// Where this worker runs, for marker lines.
#[derive(Clone, Copy)]
struct Identity {
    pid: u32,
    slot: u32,
    generation: u32,
}

/// One variant per mode rather than one struct with options, so that `empty` is a single predictable branch
/// and then `Outcome::Continue`: the overhead figure must measure the host, not this plugin.
enum BenchJob {
    Empty,
    Write { file: File },
    Marker { file: File, first_only: bool, me: Identity },
    Slow { file: File, work: Duration, me: Identity },
}

/// The 32 bytes `write` mode writes per call (the benchmark's plain loop writes the same).
const PAYLOAD: &[u8; 32] = b"pmhost-bench 32-byte write call\n";

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn open_append(path: &str) -> Result<File, JobError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| JobError::msg(format!("cannot open marker file {path}: {e}")))
}

/// Appends one line with a single `write(2)`: an `O_APPEND` write of a few bytes is atomic, so concurrent
/// workers' lines stay whole. A marker that cannot be written is dropped: the benchmark then reports the
/// figure as missing rather than this worker failing.
fn mark(mut file: &File, kind: &str, me: &Identity, call: u64, ns: u64) {
    let line = format!("{kind} {} {} {} {call} {ns}\n", me.pid, me.slot, me.generation);
    let _ = file.write(line.as_bytes());
}

impl Job for BenchJob {
    fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
        let started = monotonic_ns();
        let config: Config = ctx.config()?;
        let me = Identity { pid: ctx.pid() as u32, slot: ctx.slot(), generation: ctx.generation() };
        let marker = config.marker_file.as_deref().map(open_append).transpose()?;
        let needs_marker = || -> Result<File, JobError> {
            let file = marker.as_ref().ok_or_else(|| JobError::msg("this mode needs marker_file"))?;
            Ok(file.try_clone()?)
        };
        let job = match config.mode {
            Mode::Empty => BenchJob::Empty,
            Mode::Write => {
                let path = config.write_file.as_deref().ok_or_else(|| JobError::msg("write mode needs write_file"))?;
                let file = File::create(path).map_err(|e| JobError::msg(format!("cannot create {path}: {e}")))?;
                BenchJob::Write { file }
            }
            Mode::Marker => BenchJob::Marker { file: needs_marker()?, first_only: config.first_only, me },
            Mode::Slow => BenchJob::Slow { file: needs_marker()?, work: Duration::from_millis(config.work_ms), me },
        };
        if let Some(file) = &marker {
            let line = format!("init {} {} {} {started} {}\n", me.pid, me.slot, me.generation, monotonic_ns());
            let _ = (&*file).write(line.as_bytes());
        }
        Ok(job)
    }

    fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
        match self {
            BenchJob::Empty => Outcome::Continue,
            BenchJob::Write { file } => {
                let _ = file.write(PAYLOAD);
                Outcome::Continue
            }
            BenchJob::Marker { file, first_only, me } => {
                if !*first_only || ctx.execution() == 1 {
                    mark(file, "work", me, ctx.execution(), monotonic_ns());
                }
                Outcome::Continue
            }
            BenchJob::Slow { file, work, me } => {
                mark(file, "begin", me, ctx.execution(), monotonic_ns());
                // Deliberately deaf to stop requests: the benchmark checks that the host lets the call finish.
                std::thread::sleep(*work);
                mark(file, "end", me, ctx.execution(), monotonic_ns());
                Outcome::Continue
            }
        }
    }
}

export_job!(BenchJob);
