//! The test kit's stop request: the flag and the eventfd a worker's stop-signal handler sets, set from a test.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What the host's worker holds for stop requests: the flag `stop_requested()` reads, and the eventfd that
/// `stop_fd()`, `sleep()` and `stopped()` wait on.
pub(crate) struct StopSignal {
    pub(crate) flag: AtomicBool,
    event: OwnedFd,
}

impl StopSignal {
    pub(crate) fn new() -> std::io::Result<StopSignal> {
        // The worker's own flags: close-on-exec, and non-blocking so the write can never block.
        // SAFETY: eventfd with valid flags returns a new descriptor or -1 (checked).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(StopSignal { flag: AtomicBool::new(false), event })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// What the worker's SIGTERM handler does: set the flag, then make the descriptor readable.
    fn request(&self) {
        self.flag.store(true, Ordering::Release);
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 bytes from a live buffer to the eventfd this struct owns. It cannot fail but by overflowing
        // the counter (2^64 - 1 requests), and a counter above zero is readable either way.
        unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// Asks the job's worker to stop, as `pmhost stop` or `restart` would: from the test's thread, from another
/// thread, or after a delay. Cloning gives another handle to the same worker's request.
///
/// Once requested, the request stays: [`WorkContext::stop_requested`](crate::WorkContext::stop_requested) is
/// true, [`stop_fd`](crate::WorkContext::stop_fd) is readable, [`sleep`](crate::WorkContext::sleep) returns
/// `false` at once and `stopped()` resolves, as in a worker of the host.
#[derive(Clone)]
pub struct StopHandle(pub(crate) Arc<StopSignal>);

impl StopHandle {
    /// Requests the stop now.
    pub fn request(&self) {
        self.0.request();
    }

    /// Requests the stop `delay` from now, from a timer thread, while the test goes on (say, into a `work`
    /// call that waits for it). If the worker is gone by then, nothing happens.
    ///
    /// # Panics
    ///
    /// If the process cannot start a thread.
    pub fn request_after(&self, delay: Duration) {
        let signal: Weak<StopSignal> = Arc::downgrade(&self.0);
        std::thread::Builder::new()
            .name("pmhost-test-stop".to_owned())
            .spawn(move || {
                std::thread::sleep(delay);
                if let Some(signal) = signal.upgrade() {
                    signal.request();
                }
            })
            .expect("cannot start the timer thread of a delayed stop request");
    }

    /// Whether the stop was requested.
    pub fn is_requested(&self) -> bool {
        self.0.flag.load(Ordering::Acquire)
    }
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle").field("requested", &self.is_requested()).finish()
    }
}
