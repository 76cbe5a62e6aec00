//! The stop conversation between `pmhost stop` and a master: queued real-time signals that carry a value.
//!
//! A stop must work when nothing can be written (a full disk, a removed status directory) and must learn the
//! host's own grace period from the master itself, not from a file a tmp cleaner may have removed. So the CLI
//! sends [`stop_signal`] through its pidfd of the master, and the master answers the sender, through a pidfd it
//! opens on receipt, with [`reply_signal`]: first `Accepted { grace }` at once, then `Stopped { forced }` just
//! before it exits. Real-time signals queue (two `pmhost stop` never merge into one) and carry the value with
//! them; a second stop request is idempotent, unlike a second SIGTERM, which stops at once.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::unistd::Pid;

/// Asks for a graceful stop (CLI → master).
pub fn stop_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

/// Answers a stop request (master → CLI).
pub fn reply_signal() -> i32 {
    libc::SIGRTMIN() + 2
}

/// The master's answers to a stop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The stop began (or was already under way); workers have this long to finish before they are killed.
    Accepted { grace: Duration },
    /// The master is exiting; `forced`: some workers had to be killed.
    Stopped { forced: bool },
}

const ACCEPTED: i32 = 1 << 29;
const STOPPED: i32 = 2 << 29;
const PAYLOAD: i32 = (1 << 29) - 1;

impl Reply {
    /// The signal value: the kind in the top bits, the grace (ms, up to ~6 days) or the forced flag below.
    pub fn encode(self) -> i32 {
        match self {
            Reply::Accepted { grace } => ACCEPTED | (grace.as_millis().min(PAYLOAD as u128) as i32),
            Reply::Stopped { forced } => STOPPED | i32::from(forced),
        }
    }

    /// The reply a signal value carries, if it is one.
    pub fn decode(value: i32) -> Option<Reply> {
        match value & !PAYLOAD {
            ACCEPTED => Some(Reply::Accepted { grace: Duration::from_millis((value & PAYLOAD) as u64) }),
            STOPPED => Some(Reply::Stopped { forced: value & PAYLOAD != 0 }),
            _ => None,
        }
    }
}

/// The `siginfo_t` of a queued signal (`SI_QUEUE`), laid out as the kernel reads it: three ints, then the
/// `_rt` member of the union at pointer alignment, then padding to the kernel's 128 bytes.
#[repr(C)]
struct QueuedInfo {
    signo: i32,
    errno: i32,
    code: i32,
    rt: RtFields,
    _pad: [u8; 128 - 3 * 4 - std::mem::size_of::<RtFields>() - PAD_AFTER_CODE],
}

#[repr(C)]
struct RtFields {
    pid: i32,
    uid: u32,
    value: *mut libc::c_void,
}

const PAD_AFTER_CODE: usize = std::mem::align_of::<RtFields>() - 4;
const _: () = assert!(std::mem::size_of::<QueuedInfo>() == 128);

/// Sends `signo` with `value` to the process behind `pidfd` (never to a process that merely reuses its pid).
pub fn send(pidfd: BorrowedFd<'_>, signo: i32, value: i32) -> io::Result<()> {
    let info = QueuedInfo {
        signo,
        errno: 0,
        code: libc::SI_QUEUE,
        rt: RtFields {
            pid: std::process::id() as i32,
            uid: nix::unistd::getuid().as_raw(),
            value: value as isize as *mut libc::c_void,
        },
        _pad: [0; 128 - 3 * 4 - std::mem::size_of::<RtFields>() - PAD_AFTER_CODE],
    };
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, a siginfo of the kernel's size and layout
    // (checked above) that lives across the call, and no flags.
    let rc =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signo, &info as *const QueuedInfo, 0) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A pidfd of `pid`.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as i32) })
}

/// A signal set of the real-time signals `signos`, as nix's type (nix names only the classic signals).
pub fn sigset_of(base: &nix::sys::signal::SigSet, signos: &[i32]) -> nix::sys::signal::SigSet {
    let mut raw: libc::sigset_t = *base.as_ref();
    for signo in signos {
        // SAFETY: `raw` is a valid, initialised sigset_t and `signo` a valid signal number.
        unsafe { libc::sigaddset(&mut raw, *signo) };
    }
    // SAFETY: `raw` was copied from a valid set and only extended with sigaddset.
    unsafe { nix::sys::signal::SigSet::from_sigset_t_unchecked(raw) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_through_a_signal_value() {
        let cases = [
            Reply::Accepted { grace: Duration::from_secs(10) },
            Reply::Accepted { grace: Duration::ZERO },
            Reply::Accepted { grace: Duration::from_secs(3600) },
            Reply::Stopped { forced: false },
            Reply::Stopped { forced: true },
        ];
        for reply in cases {
            assert_eq!(Reply::decode(reply.encode()), Some(reply), "{reply:?}");
        }
        assert_eq!(Reply::decode(0), None);
        assert_eq!(Reply::decode(12345), None);
        // A grace beyond the payload is capped, never wrapped into another kind.
        let huge = Reply::Accepted { grace: Duration::from_secs(100 * 24 * 3600) };
        assert!(matches!(Reply::decode(huge.encode()), Some(Reply::Accepted { .. })));
    }
}
