//! The `pmhost` binary: parse the command line, run the command, turn the outcome into an exit code.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;

use clap::Parser;
use pmhost::cli::{Cli, Command};

/// The system allocator, which tries once more after a failure if a master's split code could be joined first
/// (`pmhost::master::join_on_allocation_failure`: `vm.max_map_count` lowered below the mappings of a master
/// whose code is split leaves it no heap to grow).
struct Allocator;

// SAFETY: every call is the system allocator's, with the same arguments; a failed one is only retried.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() && pmhost::master::join_on_allocation_failure() {
            // SAFETY: as above.
            return unsafe { System.alloc(layout) };
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() && pmhost::master::join_on_allocation_failure() {
            // SAFETY: as above.
            return unsafe { System.alloc_zeroed(layout) };
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on; a failed realloc leaves `ptr` as it was, so it may be retried.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if new.is_null() && pmhost::master::join_on_allocation_failure() {
            // SAFETY: as above.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

fn main() -> ExitCode {
    // Asked by `pmhost upgrade` (and by a master about to re-execute itself) of a new binary: which handover
    // versions it reads. Answered before any parsing, so every future pmhost can answer it the same way.
    let first = std::env::args_os().nth(1);
    if first.as_ref().is_some_and(|arg| arg == "--handover-version") {
        println!("{}", pmhost::upgrade::version_line());
        return ExitCode::SUCCESS;
    }
    // Run by a master about to upgrade: can this binary read its state (on stdin)?
    if first.as_ref().is_some_and(|arg| arg == "--handover-check") {
        return ExitCode::from(pmhost::master::handover_check() as u8);
    }
    // The new image of an upgraded master (same pid): take the state over and run.
    if first.as_ref().is_some_and(|arg| arg == "--resume-handover") {
        let args: Vec<_> = std::env::args_os().collect();
        return ExitCode::from(pmhost::master::resume_handover(&args) as u8);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => match pmhost::cli::empty_env_var(&error) {
            Some(sentence) => {
                eprintln!("pmhost: error: {sentence}");
                return ExitCode::from(pmhost::exit::cli::USAGE as u8);
            }
            None => error.exit(),
        },
    };
    if !matches!(cli.command, Command::Start(_)) {
        // `start` sets up its own logging once it knows where its files go.
        pmhost::logging::init_cli();
    }
    match pmhost::commands::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(error) => {
            let code = error.exit_code();
            eprintln!("pmhost: error: {:#}", anyhow::Error::new(error));
            ExitCode::from(code as u8)
        }
    }
}
