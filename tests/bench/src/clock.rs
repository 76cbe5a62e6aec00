//! The benchmark's clock and its only way to pass time: `CLOCK_MONOTONIC` (the clock the bench plugin stamps
//! its markers with and the master stamps its snapshots with), and measurement windows that end early when
//! the user interrupts the run, so that cleanup still runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::time::{ClockId, clock_gettime};

/// Set by the SIGINT/SIGTERM handler. A static because a signal handler can reach nothing else.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Nanoseconds on `CLOCK_MONOTONIC`, comparable with the bench plugin's markers and the master's snapshots.
pub fn mono_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Nanoseconds as milliseconds.
pub fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes Ctrl-C (and SIGTERM) end the run through the normal error path, so every host it started is killed
/// by its guard instead of being left running in the background.
pub fn install_interrupt_handler() -> nix::Result<()> {
    // No SA_RESTART: a blocking poll returns EINTR and the waiter sees the flag at once.
    let action = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        sigaction(Signal::SIGINT, &action)?;
        sigaction(Signal::SIGTERM, &action)?;
    }
    Ok(())
}

/// Fails when the user asked the run to end.
pub fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// Lets `length` pass (a measurement window, never a wait for a condition); ends early on interruption.
pub fn sleep_window(length: Duration) -> anyhow::Result<()> {
    let until = mono_ns() + length.as_nanos() as u64;
    loop {
        check_interrupted()?;
        let now = mono_ns();
        if now >= until {
            return Ok(());
        }
        // A bare poll with no descriptors is a sleep that a signal interrupts (std's sleep resumes after EINTR).
        let left_ms = (until - now).div_ceil(1_000_000).min(i32::MAX as u64) as i32;
        let timeout = nix::poll::PollTimeout::try_from(left_ms).unwrap_or(nix::poll::PollTimeout::MAX);
        let _ = nix::poll::poll(&mut [], timeout);
    }
}
