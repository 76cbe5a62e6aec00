//! `pmhost-plain-consumer PLUGIN CONFIG_JSON SLOT`: the benchmark's reference for a queue consumer without
//! pmhost. One plain process that loads the same plugin build, runs its `init` once and its `work` in a loop
//! with no pause, no supervision, no scoreboard and no stop handling, until it is killed. The benchmark starts
//! four of them to compare their jobs/s with four pmhost workers running the same code.

use std::os::fd::IntoRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use abi_stable::std_types::RStr;
use pmhost_plugin_api::ffi::{HostLogger, WorkResult};
use pmhost_plugin_api::{InitContext, WorkContext};

/// Never set: nothing stops this loop but a signal's default action.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn print_log(level: u8, _target: RStr<'_>, message: RStr<'_>) {
    if level <= 2 {
        eprintln!("plain consumer: {message}");
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, plugin, config, slot] = args.as_slice() else {
        eprintln!("usage: pmhost-plain-consumer PLUGIN CONFIG_JSON SLOT");
        return ExitCode::from(2);
    };
    let slot: u32 = slot.parse().unwrap_or(0);
    let module = match pmhost::plugin::load(Path::new(plugin), Path::new(plugin)) {
        Ok(module) => module,
        Err(e) => {
            eprintln!("plain consumer: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop_fd = match pmhost::worker::open_stop_event() {
        Ok(fd) => fd.into_raw_fd(),
        Err(e) => {
            eprintln!("plain consumer: cannot open an eventfd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logger = HostLogger { max_level: 2, log: print_log };
    let pid = std::process::id() as i32;
    let init = InitContext::new("plain", config, slot, 1, pid, &STOP, stop_fd, logger);
    let mut job = match (module.init())(&init).into_result() {
        Ok(job) => job,
        Err(failure) => {
            eprintln!("plain consumer: init failed: {failure:?}");
            return ExitCode::FAILURE;
        }
    };
    let mut ctx = WorkContext::new(slot, 1, &STOP, stop_fd);
    let mut calls: u64 = 0;
    loop {
        calls += 1;
        ctx.set_execution(calls);
        match job.work(&ctx) {
            WorkResult::Continue => {}
            WorkResult::Failed(message) => eprintln!("plain consumer: work failed: {message}"),
            WorkResult::Retire => return ExitCode::SUCCESS,
            WorkResult::Panicked(message) => {
                eprintln!("plain consumer: work panicked: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
}
