//! The master's only wait: one `poll` on the signalfd, the timerfd, the epoll set of worker output, the worker
//! report pipe (unless its reports are held, see `master::warm`, "Reports ride on other wake-ups") and, when a
//! task is watched, the inotify descriptor of its plugin file's directory.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::unistd::Pid;

use crate::report::ReportReader;
use crate::sysinfo::Mono;

/// What woke the master.
#[derive(Debug, Default)]
pub struct Woken {
    /// Signals received, in arrival order, with the sending process.
    pub signals: Vec<(Signal, Pid)>,
    /// Senders of stop requests ([`crate::control`]), in arrival order.
    pub stop_requests: Vec<Pid>,
    /// Some worker wrote output.
    pub output: bool,
    /// Something happened in the directory of a watched plugin file (`watch`).
    pub plugin_files: bool,
}

/// The master's event sources.
pub struct Events {
    signals: SignalFd,
    timer: TimerFd,
    armed: Option<Mono>,
}

impl Events {
    /// Creates the signalfd for `mask` (which the caller has already blocked) and the deadline timer.
    pub fn new(mask: &SigSet) -> io::Result<Events> {
        let signals = SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        let timer = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)?;
        Ok(Events { signals, timer, armed: None })
    }

    /// Sets the timer to fire at `at` (or disarms it). Re-arming to the same deadline costs nothing.
    pub fn arm(&mut self, at: Option<Mono>) -> io::Result<()> {
        if at == self.armed {
            return Ok(());
        }
        match at {
            // An absolute deadline of zero would disarm the timer: one nanosecond later is "now" as well.
            Some(at) => self.timer.set(
                Expiration::OneShot(TimeSpec::from_duration(at.0.max(std::time::Duration::from_nanos(1)))),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            )?,
            None => self.timer.unset()?,
        }
        self.armed = at;
        Ok(())
    }

    /// Blocks until a signal, the timer, worker output, (with `reports`) a worker report or (with
    /// `plugin_files`, the watch on plugin files) a file event; returns the signals and which sources are
    /// readable. Reports are read by the caller on every wake-up, whatever woke it.
    pub fn wait(
        &mut self,
        reports: Option<&ReportReader>,
        output: BorrowedFd<'_>,
        plugin_files: Option<BorrowedFd<'_>>,
    ) -> io::Result<Woken> {
        const OUTPUT: usize = 2;
        let mut fds = [
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.timer.as_fd(), PollFlags::POLLIN),
            PollFd::new(output, PollFlags::POLLIN),
            // The optional ones last, in this order; `polled` leaves out what is not asked for.
            PollFd::new(output, PollFlags::POLLIN),
            PollFd::new(output, PollFlags::POLLIN),
        ];
        let mut polled = OUTPUT + 1;
        if let Some(reports) = reports {
            fds[polled] = PollFd::new(reports.as_fd(), PollFlags::POLLIN);
            polled += 1;
        }
        let plugin_files_at = plugin_files.map(|fd| {
            fds[polled] = PollFd::new(fd, PollFlags::POLLIN);
            polled += 1;
            polled - 1
        });
        loop {
            match poll(&mut fds[..polled], PollTimeout::NONE) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let mut woken = Woken::default();
        let readable = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| r.intersects(PollFlags::POLLIN));
        if readable(&fds[1]) {
            // Reading clears the expiry count; the timer is one-shot, so it is disarmed now.
            let _ = self.timer.wait();
            self.armed = None;
        }
        woken.output = readable(&fds[OUTPUT]);
        woken.plugin_files = plugin_files_at.is_some_and(|at| readable(&fds[at]));
        if readable(&fds[0]) {
            self.read_signals(&mut woken);
        }
        Ok(woken)
    }

    /// Reads the pending signals, several at a time: a short read emptied the queue (reading one at a time
    /// until `EAGAIN` cost a read more on every wake-up, one per worker in a churn).
    fn read_signals(&mut self, woken: &mut Woken) {
        const RECORD: usize = std::mem::size_of::<libc::signalfd_siginfo>();
        let mut buf = [0u8; 16 * RECORD];
        loop {
            let n = match nix::unistd::read(&self.signals, &mut buf) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            };
            for record in buf[..n].chunks_exact(RECORD) {
                // SAFETY: the kernel writes whole `signalfd_siginfo` records; read unaligned from the bytes.
                let info: libc::signalfd_siginfo = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
                let sender = Pid::from_raw(info.ssi_pid as i32);
                if info.ssi_signo as i32 == crate::control::stop_signal() {
                    woken.stop_requests.push(sender);
                } else if let Some((signal, _)) = super::signals::action_of_number(info.ssi_signo as i32) {
                    // The queued snapshot request arrives as the SIGUSR1 it stands for.
                    woken.signals.push((signal, sender));
                }
            }
            if n < buf.len() {
                break;
            }
        }
    }
}
