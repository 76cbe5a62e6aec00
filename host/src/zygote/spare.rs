//! A zygote's spare: the next worker, cloned ahead, that takes its request from the master's request queue
//! itself (see the module docs of [`crate::zygote`], "Spares"). This file holds the spare's side (its clone,
//! its wait, what it tells the zygote) and the channel it tells it on.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};

use super::{
    Loaded, Message, Received, Request, TAKEN, TaskTemplate, become_worker, capture_ends, clone_for_master, receive,
};
use crate::exit::worker as code;

/// The channel spares tell the zygote on: that one was taken (its pid and the task it serves), or a request
/// given back (a "bounce": a task the spare has no template for). One `SOCK_SEQPACKET` pair made once per
/// zygote: the zygote reads one end; spares keep the other and close the zygote's right after their clone, so
/// that the zygote's death hangs their end up (`POLLHUP`) and ends them.
pub(super) struct Channel {
    /// The zygote's end, read (non-blocking) when the zygote's poll says so.
    pub(super) zygote: OwnedFd,
    /// The spares' end (the zygote holds it only to pass it on).
    spares: OwnedFd,
}

impl Channel {
    /// `None` if the socket pair cannot be made (the zygote then clones every request itself).
    pub(super) fn new() -> Option<Channel> {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let (zygote, spares) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags).ok()?;
        Some(Channel { zygote, spares })
    }
}

/// A spare waiting on the queue, as the zygote sees it: its pid. A spare that takes a request says so ("taken",
/// also before it gives one back); one that ends unasked (killed by hand, told to stop) reaches the zygote as
/// the master's notice (see `zygote`, "Spares").
pub(super) struct Spare {
    pub(super) pid: i32,
}

impl Spare {
    /// Clones a spare expecting a request of task `expected` (the last one's); `None` if it cannot be cloned
    /// (the zygote then reads the queue itself).
    pub(super) fn clone(
        build: &Loaded<'_>,
        tasks: &[TaskTemplate],
        expected: u32,
        queue: &OwnedFd,
        channel: &Channel,
        buffer: &mut [u8],
    ) -> Option<Spare> {
        match clone_for_master() {
            0 => run_spare(build, tasks, expected, queue, channel, buffer),
            pid if pid < 0 => None,
            pid => Some(Spare { pid: pid as i32 }),
        }
    }
}

/// In a spare just cloned: waits for a request and becomes its worker, or ends (never returns).
fn run_spare(
    build: &Loaded<'_>,
    tasks: &[TaskTemplate],
    expected: u32,
    queue: &OwnedFd,
    channel: &Channel,
    buffer: &mut [u8],
) -> ! {
    // Only the zygote may hold its end: its death must hang this spare's end up.
    let _ = nix::unistd::close(channel.zygote.as_raw_fd());
    // The footprint is learned from a spare's whole life, its wait included: most workers were spares, and a
    // worker cloned directly for its request never runs the code and data of that wait, which a footprint
    // learned from one left to fault in every spare's worker (1–3 faults each).
    super::footprint::claim_learning();
    // While it waits, a spare does what the path from request to first call would otherwise do: the setup that
    // does not depend on the task, the expected task's spec and title (measured in the module docs). A failure
    // is left for the worker's own setup to meet and report.
    let _ = crate::worker::prepare_signals_and_group(build.template.master);
    let prepared = tasks.iter().find(|t| t.index == expected).map(|task| {
        let spec = task.apply(build.template);
        // Its own title, so `ps` never counts a spare as a worker (it takes the worker's on its request, a cheap
        // second write once the first touched the title's memory).
        crate::title::set(&spec.title.replace(":Worker:", ":Spare:"));
        (expected, spec)
    });
    let Some((request, fds)) = wait_for_request(queue, &channel.spares, buffer) else {
        // The zygote or the master is gone, or the spare was told to stop: nothing of the plugin ran here.
        super::footprint::give_back_claim();
        // SAFETY: _exit ends this process at once, running no exit handler of the zygote's plugin.
        unsafe { libc::_exit(code::OK) }
    };
    // "Taken" either way: the zygote stops counting this spare as waiting and clones the next one.
    let mut taken = [0u8; TAKEN_LEN];
    taken[0] = TAKEN;
    taken[1..5].copy_from_slice(&(std::process::id() as i32).to_le_bytes());
    taken[5..9].copy_from_slice(&request.task.to_le_bytes());
    // Never blocks: a zygote that stopped reading is the master's to give up on, not this worker's.
    let _ = nix::sys::socket::send(channel.spares.as_raw_fd(), &taken, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT);
    if tasks.iter().any(|t| t.index == request.task) {
        become_worker(build, tasks, request, &fds, prepared, false)
    }
    // The task's template reached the zygote after this spare was cloned: the zygote serves the request. (Had
    // the zygote to wait for the master's notice of this spare's end, it would leave the queue unread
    // meanwhile, counting this spare as waiting: a restart of 64 tasks sharing a zygote meets one such request
    // per task.)
    super::footprint::give_back_claim();
    let _ = super::send_with(&channel.spares, request, capture_ends(request, &fds), MsgFlags::MSG_DONTWAIT);
    // SAFETY: as above.
    unsafe { libc::_exit(code::OK) }
}

/// The length of a "taken" message: [`TAKEN`], the spare's pid, the task of its request.
pub(super) const TAKEN_LEN: usize = 9;

/// A spare's wait for its request on the queue: `None` when the zygote died (the channel hangs up), the master
/// closed the queue, or a stop signal (SIGTERM, SIGINT) reached the spare. The stop handler (installed by
/// `worker::prepare_signals_and_group`) only records the request, so the stop event wakes this wait: the spare
/// ends without reading, rather than becoming a worker that begins stopped (`init`, no call, an exit the master
/// never asked for). A request another reader took first (`EAGAIN`) is waited past.
fn wait_for_request(queue: &OwnedFd, channel: &OwnedFd, buffer: &mut [u8]) -> Option<(Request, Vec<OwnedFd>)> {
    let poll_fd = |fd: RawFd, events: libc::c_short| libc::pollfd { fd, events, revents: 0 };
    let stop = crate::worker::stop_event().unwrap_or(-1);
    loop {
        let mut fds =
            [poll_fd(queue.as_raw_fd(), libc::POLLIN), poll_fd(channel.as_raw_fd(), 0), poll_fd(stop, libc::POLLIN)];
        // SAFETY: poll on an array of pollfds this frame owns; negative descriptors are ignored.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            if nix::errno::Errno::last() == nix::errno::Errno::EINTR {
                continue;
            }
            return None;
        }
        let ended = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        if fds[1].revents != 0 || fds[2].revents != 0 || fds[0].revents & ended != 0 {
            return None;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            match receive(queue, buffer) {
                Received::Message(Message::Spawn(request, fds)) => return Some((request, fds)),
                Received::Message(_) | Received::Nothing => continue,
                Received::Closed => return None,
            }
        }
    }
}
