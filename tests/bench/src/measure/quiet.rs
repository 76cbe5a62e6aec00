//! A quiet host: whether the master stays asleep while its workers work (CPU ticks and wake-ups over a
//! window), and what the master and its workers cost in memory (PSS).

use anyhow::{Result, ensure};

use crate::Bench;
use crate::clock::sleep_window;
use crate::config::RHYTHM;
use crate::procfs;
use crate::report::{Check, Figure, Unit, spread};
use crate::sandbox::{Mode, Sandbox, StartSpec};

const MIB: f64 = 1024.0 * 1024.0;

/// One fresh host per run: an idle window on the master, then a memory reading of every process.
/// The longest wait for a master to fall asleep after `start -d` returned (a window then begins anyway).
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

pub fn measure(bench: &Bench<'_>) -> Result<Vec<Figure>> {
    let workers = bench.config.workers;
    let window = bench.config.idle_window;
    let (mut ticks, mut wakeups, mut watched_wakeups) = (Vec::new(), Vec::new(), Vec::new());
    let (mut master_mem, mut worker_mem, mut total_mem) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=bench.config.runs {
        bench.progress(&format!("master idle ({} s) and memory: run {run}/{}", window.as_secs(), bench.config.runs));
        let sb = Sandbox::new(bench.artifacts, "quiet")?;
        // Empty calls on a steady rhythm: the workers are busy, nothing concerns the master.
        sb.start(&StartSpec::new(workers, RHYTHM, Mode::Empty))?;
        let master = sb.master_pid()?;
        // From its first sleep: `start -d` returns as soon as the master says the start is decided, and the
        // master then finishes that wake-up (it gives its start-up memory back). On a loaded machine it was
        // still running 8 ms later, and the sleep that ended it counted as a wake-up of the window.
        procfs::wait_asleep(master, SETTLE_LIMIT)?;
        let (ticks_before, switches_before) = (procfs::cpu_ticks(master)?, procfs::context_switches(master)?);
        sleep_window(window)?;
        ticks.push((procfs::cpu_ticks(master)? - ticks_before) as f64);
        wakeups.push((procfs::context_switches(master)? - switches_before) as f64);

        let pids = sb.worker_pids()?;
        ensure!(pids.len() == workers as usize, "{} workers listed, expected {workers}", pids.len());
        let master_pss = procfs::pss_bytes(master)? as f64 / MIB;
        let worker_pss =
            pids.iter().map(|&pid| Ok(procfs::pss_bytes(pid)? as f64 / MIB)).collect::<Result<Vec<f64>>>()?;
        master_mem.push(master_pss);
        worker_mem.push(spread(&worker_pss).0);
        total_mem.push(master_pss + worker_pss.iter().sum::<f64>());
        drop(sb);

        // The same with `--watch`: the plugin, copied into a directory of its own, is watched for new builds.
        bench.progress(&format!("master idle with --watch ({} s): run {run}/{}", window.as_secs(), bench.config.runs));
        let sb = Sandbox::new(bench.artifacts, "quietwatch")?;
        let plugin = sb.path("build/libbench.so");
        std::fs::create_dir_all(sb.path("build"))?;
        std::fs::copy(&bench.artifacts.plugin, &plugin)?;
        let mut spec = StartSpec::new(workers, RHYTHM, Mode::Empty);
        spec.extra.push("--watch".to_owned());
        sb.start_with(&spec, &plugin)?;
        let master = sb.master_pid()?;
        procfs::wait_asleep(master, SETTLE_LIMIT)?;
        let switches_before = procfs::context_switches(master)?;
        sleep_window(window)?;
        watched_wakeups.push((procfs::context_switches(master)? - switches_before) as f64);
    }
    let seconds = window.as_secs();
    let idle_method = format!(
        "{workers} workers in empty calls every 100 ms, default check tick (300 s); over {seconds} s after `start -d` \
         returned, from the master's first sleep after it (state `S` in /proc/PID/stat): utime+stime from /proc/PID/stat (ticks of 10 ms) and voluntary+nonvoluntary context switches \
         from /proc/PID/status of the master (each wake-up from its poll is one switch)."
    );
    // Sized from the 8-worker target (1 MiB master + 5 MiB for 8 workers) when the run has another count.
    let total_limit = 1.0 + 5.0 * f64::from(workers) / 8.0;
    let total_text = match workers {
        8 => "≤ 6 MiB".to_owned(),
        _ => format!("≤ {total_limit:.2} MiB (1 MiB + 5 MiB × workers/8)"),
    };
    Ok(vec![
        Figure::new("master idle", &format!("master idle: CPU ticks over {seconds} s"), Unit::Ticks, ticks)
            .target("0", Check::AllAtMost(0.0))
            .method(idle_method),
        Figure::new("master idle", &format!("master idle: wake-ups over {seconds} s"), Unit::WakeUps, wakeups)
            .target("0 (no event, no check tick in the window)", Check::AllAtMost(0.0)),
        Figure::new(
            "master idle, --watch",
            &format!("master idle, --watch on: wake-ups over {seconds} s"),
            Unit::WakeUps,
            watched_wakeups,
        )
        .target("0 (the watched directory is quiet)", Check::AllAtMost(0.0))
        .method(format!(
            "As **master idle**, on a host of its own started with `--watch`, its plugin copied into a \
                 directory nothing else writes to; wake-ups over {seconds} s."
        )),
        Figure::new("memory", "memory: master PSS", Unit::MiB, master_mem)
            .target("≤ 1 MiB", Check::MedianAtMost(1.0))
            .method(format!(
                "Pss from /proc/PID/smaps_rollup after the idle window (shared pages split among their sharers); \
                 one worker = the median worker of the run; total = master + all {workers} workers."
            )),
        Figure::new("memory", "memory: one worker PSS", Unit::MiB, worker_mem)
            .target("≤ 1 MiB", Check::MedianAtMost(1.0)),
        Figure::new("memory", &format!("memory: master + {workers} workers PSS"), Unit::MiB, total_mem)
            .target(total_text, Check::MedianAtMost(total_limit)),
    ])
}
