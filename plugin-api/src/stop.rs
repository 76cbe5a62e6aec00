//! Waiting on the host's stop request: the interruptible sleep behind `ctx.sleep`, and the descriptor behind
//! `ctx.stop_fd`.
//!
//! The host hands every context the same descriptor (an eventfd in the worker): its stop-signal handler writes
//! to it, so it becomes readable at the stop request and, since nobody reads it, stays readable. Waiting on it
//! cannot miss a request that arrives just before the wait, unlike waiting for the signal itself.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The host's stop descriptor as a borrowed fd that lives as long as the worker.
pub(crate) fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    assert!(fd >= 0, "the host passed no stop descriptor (a host older than this plugin interface?)");
    // SAFETY: the host opens the descriptor before building any context and never closes it while the process
    // lives (contract of the contexts' constructors), so it is open for 'static; it is not -1 (checked above).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Sleeps for `length` unless a stop is requested (`stop` set, `fd` readable); returns false when one was.
pub(crate) fn sleep(stop: &AtomicBool, fd: RawFd, length: Duration) -> bool {
    let deadline = Instant::now() + length;
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        let timeout = libc::timespec {
            tv_sec: left.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // A negative fd is ignored by ppoll: then this is a plain sleep.
        let mut entry = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd and a valid timespec, both living through the call; no signal mask change.
        let ready = unsafe { libc::ppoll(&mut entry, 1, &timeout, std::ptr::null()) };
        if ready > 0 {
            if entry.revents & libc::POLLIN != 0 {
                return false;
            }
            // POLLNVAL: the descriptor was closed behind our back; wake-ups are lost, the flag still works.
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
        // 0: timed out; -1: EINTR (a signal, perhaps the stop signal): the loop re-checks flag and deadline.
    }
}

/// Resolves once a stop is requested. Registers a duplicate of the stop descriptor with the current tokio
/// runtime's reactor (a duplicate, so a job that registered `stop_fd()` itself does not clash with it); nothing
/// ever reads the descriptor, so its readiness is never cleared.
#[cfg(feature = "tokio")]
pub(crate) async fn stopped(stop: &AtomicBool, fd: RawFd) {
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    if stop.load(Ordering::Acquire) {
        return;
    }
    let watch = borrow(fd).try_clone_to_owned().and_then(|own| {
        // SAFETY: the AsyncFd owns the duplicate and nothing replaces or closes it while it is registered.
        unsafe { AsyncFd::register_with_interest(own, Interest::READABLE) }.map_err(std::io::Error::from)
    });
    let failure = match watch {
        Ok(watch) => match watch.readable().await {
            Ok(_ready) => return,
            Err(e) => e,
        },
        Err(e) => e,
    };
    // Out of descriptors, or the reactor refused it: the flag still tells, checked at a coarse pace.
    tracing::warn!("cannot wait on the stop descriptor ({failure}); checking the stop flag every 50 ms instead");
    while !stop.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn eventfd() -> OwnedFd {
        // SAFETY: eventfd with valid flags returns a new descriptor or -1 (checked).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn signal(fd: &OwnedFd) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an open eventfd.
        assert_eq!(unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) }, 8);
    }

    #[test]
    fn sleep_runs_its_length_without_a_stop_request() {
        let (flag, fd) = (AtomicBool::new(false), eventfd());
        let started = Instant::now();
        assert!(sleep(&flag, fd.as_raw_fd(), Duration::from_millis(30)));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn sleep_returns_false_at_once_when_the_descriptor_is_readable() {
        let (flag, fd) = (AtomicBool::new(false), eventfd());
        signal(&fd);
        let started = Instant::now();
        assert!(!sleep(&flag, fd.as_raw_fd(), Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_secs(5));
        // The wake-up is not consumed: a second sleep returns at once too.
        assert!(!sleep(&flag, fd.as_raw_fd(), Duration::from_secs(30)));
    }

    #[test]
    fn sleep_is_woken_by_a_request_during_the_pause() {
        let (flag, fd) = (AtomicBool::new(false), eventfd());
        let raw = fd.as_raw_fd();
        let started = Instant::now();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                signal(&fd);
            });
            assert!(!sleep(&flag, raw, Duration::from_secs(30)));
        });
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_set_flag_ends_the_sleep_before_it_starts() {
        let (flag, fd) = (AtomicBool::new(true), eventfd());
        assert!(!sleep(&flag, fd.as_raw_fd(), Duration::from_secs(30)));
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn stopped_resolves_on_a_request_and_at_once_after_it() {
        let (flag, fd) = (AtomicBool::new(false), eventfd());
        let raw = fd.as_raw_fd();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                signal(&fd);
            });
            runtime.block_on(async {
                let waited = tokio::time::timeout(Duration::from_secs(30), stopped(&flag, raw)).await;
                assert!(waited.is_ok(), "stopped() did not resolve on the request");
            });
        });
        runtime.block_on(async {
            let again = tokio::time::timeout(Duration::from_secs(5), stopped(&flag, raw)).await;
            assert!(again.is_ok(), "the request was consumed by the first wait");
        });
    }
}
