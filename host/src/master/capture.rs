//! Worker output capture: what a worker (its plugin, the libraries it uses, the processes it starts) writes to
//! stdout and stderr reaches the run log, line by line, tagged like the plugin's own log events.
//!
//! Design (chosen over a per-host writer process and direct appends, which cannot tag lines or would cost a
//! process): each worker's stdout and stderr are the write ends of two pipes whose read ends the master holds
//! in one epoll set; the epoll descriptor is one more source of the master's `poll`, so a silent host costs no
//! wake-up at all. Reading is bounded per wake-up ([`READ_BUDGET`] per stream), so a worker printing as fast as
//! it can never starves the master's other events; the pipe then fills and the worker blocks in `write`: it is
//! slowed, never killed. When a worker is reaped, what its pipes still hold is read before its exit is logged,
//! and a stream is closed only at end of file (when every process holding its write end, the worker's
//! children included, is gone), with a final line that lacks its newline logged too.
//!
//! The master holds a copy of each worker's write ends until it reaps the worker, then closes it and reads
//! the streams to their end at once. Without it, a worker's exit closed the last writer of both pipes, and each
//! hang-up woke the master (and cost the exiting worker a cross-CPU wake-up) just before the exit's own
//! SIGCHLD woke it again. Measured on a churn of 2 slots (`--execute-times 1 --execute-usleep 0`, 2 cores,
//! interleaved A/B, 5 runs of 3 s): CPU per worker, all processes, 391 → 367 µs (the master's 58 → 52, the
//! worker's 189 → 178); workers/s 4 474 → 4 821. The cost is two more descriptors per worker in the master
//! (its `RLIMIT_NOFILE` is raised to the hard limit at start). They are close-on-exec: a master that
//! re-executes itself (`pmhost upgrade`) hands over the read ends only, and its workers' exits close the
//! pipes as before. The copies are held only while they take at most a quarter of the master's
//! `RLIMIT_NOFILE` ([`holds_write_ends`]): beyond it a worker's write ends are closed after its spawn, as before
//! (held for every worker, 64 workers under a limit of 320 left the master no descriptor for its status file).
//!
//! Tried and not kept: lending a reaped worker's pipes to its slot's next worker instead of making two new
//! ones (14 syscalls of the master per one-call worker for its pipes). Lent with the write ends the master
//! held, a worker's `O_NONBLOCK` on its stdout reached the next one (the open file is shared), and a helper
//! that escaped the worker's group and wrote after the reap had its lines logged under the next worker. Done
//! right (the master closes its copies at the reap, lends the pipes only when epoll reports them hung up, and
//! opens new write ends through `/proc/self/fd`), it saved nothing measurable: 2 slots turning over,
//! interleaved, 5 and 6 runs of 3 s, the master's CPU per worker 53.8 / 58.1 µs with new pipes against 58.9 /
//! 52.8 µs lent, workers/s 4 584 / 4 553 against 4 479 / 4 423.
//!
//! Lines longer than
//! [`LINE_LIMIT`] bytes are split, never dropped; bytes that are not UTF-8 and control characters are escaped
//! (`\xNN`), so output can neither garble nor forge a log line.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::unistd::Pid;

/// Longest line logged as one record; longer lines are split at this many bytes.
pub const LINE_LIMIT: usize = 16 * 1024;
/// Most bytes read from one stream per wake-up of the master.
const READ_BUDGET: usize = 32 * 1024;
/// Most bytes read from one stream of a worker just reaped: what a pipe holds at most (the kernel's default
/// `fs.pipe-max-size`, the largest an unprivileged worker can make its pipe).
const REAP_BUDGET: usize = 1024 * 1024;

/// Which of a worker's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    fn name(self) -> &'static str {
        match self {
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
        }
    }
}

/// Who wrote a stream: the tags of its lines.
#[derive(Debug, Clone)]
pub struct Origin {
    pub task: String,
    pub slot: u32,
    pub pid: Pid,
    pub generation: u32,
    pub title: String,
}

struct Stream {
    fd: OwnedFd,
    /// The master's copy of the write end, until the worker is reaped.
    held: Option<HeldEnd>,
    kind: StreamKind,
    /// Shared by a worker's two streams (at 1024 workers, a copy per stream was 2 × 64 bytes in the table plus
    /// 2 strings per worker).
    origin: Rc<Origin>,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
}

/// One captured stream as a master hands it over to its new image.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct HandedStream {
    pub fd: RawFd,
    pub stderr: bool,
    pub task: String,
    pub slot: u32,
    pub pid: i32,
    pub generation: u32,
    pub title: String,
    pub partial: Vec<u8>,
}

/// The write ends a worker gets as its stdout and stderr (the master keeps its copies until it reaps the
/// worker, see the module docs).
pub struct WorkerEnds {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A new worker's two pipes: the read ends the master watches, the write ends the worker gets.
pub struct Pipes {
    reads: [OwnedFd; 2],
    pub writes: WorkerEnds,
}

/// A new worker's pipes once spawned: the read ends, and the write ends if the master holds them.
pub struct Watched {
    reads: [OwnedFd; 2],
    held: Option<[HeldEnd; 2]>,
}

/// The master's copy of a worker's write end, counted while it is open.
struct HeldEnd {
    _fd: OwnedFd,
    count: Rc<Cell<usize>>,
}

impl Drop for HeldEnd {
    fn drop(&mut self) {
        self.count.set(self.count.get().saturating_sub(1));
    }
}

/// Whether the master holds two more write ends, `held` being held, under an open-file limit of `nofile`: at
/// most a quarter of it goes to them, the rest stays for the read ends, the workers' `statm` and everything else.
fn holds_write_ends(held: usize, nofile: u64) -> bool {
    (held as u64).saturating_add(2) <= nofile / 4
}

/// The read ends of the worker pipes, in one epoll set.
pub struct Captures {
    epoll: Epoll,
    /// Write ends held (see [`holds_write_ends`]).
    held: Rc<Cell<usize>>,
    /// The soft `RLIMIT_NOFILE`, read at the first spawn (after the master raised it).
    nofile: Option<u64>,
    streams: HashMap<RawFd, Stream>,
    /// The streams of each worker still open, so reaping one reads its own without a look at every stream.
    by_pid: HashMap<Pid, Vec<RawFd>>,
}

impl Captures {
    pub fn new() -> io::Result<Captures> {
        Ok(Captures {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            streams: HashMap::new(),
            by_pid: HashMap::new(),
            held: Rc::new(Cell::new(0)),
            nofile: None,
        })
    }

    /// The descriptor the master polls: readable when some stream has output.
    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.0.as_fd()
    }

    /// Creates the two pipes of a worker about to be forked: the read ends (for [`Captures::watch`] once the
    /// worker's pid is known) and the write ends (the worker's stdout and stderr).
    pub fn pipes() -> io::Result<Pipes> {
        // Read ends: non-blocking and close-on-exec; write ends: blocking (a worker that outpaces the log waits).
        let (out_read, out_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        for fd in [&out_read, &err_read] {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        }
        Ok(Pipes { reads: [out_read, err_read], writes: WorkerEnds { stdout: out_write, stderr: err_write } })
    }

    /// A new worker's pipes once their write ends reached it (forked, or sent with its request): the master
    /// keeps its copies of the write ends while [`holds_write_ends`] allows, else closes them now.
    pub fn hold(&mut self, pipes: Pipes) -> Watched {
        let nofile = *self.nofile.get_or_insert_with(|| {
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
        });
        let Pipes { reads, writes } = pipes;
        let held = holds_write_ends(self.held.get(), nofile).then(|| {
            self.held.set(self.held.get() + 2);
            [writes.stdout, writes.stderr].map(|fd| HeldEnd { _fd: fd, count: Rc::clone(&self.held) })
        });
        Watched { reads, held }
    }

    /// Starts reading a new worker's streams (and holds their write ends, if [`Captures::hold`] kept them,
    /// until it is reaped).
    pub fn watch(&mut self, watched: Watched, origin: Origin) -> io::Result<()> {
        let origin = Rc::new(origin);
        let Watched { reads, held } = watched;
        let held = match held {
            Some([stdout, stderr]) => [Some(stdout), Some(stderr)],
            None => [None, None],
        };
        let ends = [StreamKind::Stdout, StreamKind::Stderr].into_iter().zip(held);
        for (fd, (kind, held)) in reads.into_iter().zip(ends) {
            let raw = fd.as_raw_fd();
            self.epoll.add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, raw as u64))?;
            let stream = Stream { fd, held, kind, origin: Rc::clone(&origin), partial: Vec::new() };
            self.streams.insert(raw, stream);
            self.by_pid.entry(origin.pid).or_default().push(raw);
        }
        Ok(())
    }

    /// Every stream, to hand over to a new image of the master (`pmhost upgrade`): each read end is kept open
    /// across `execve`.
    pub fn hand_over(&self) -> io::Result<Vec<HandedStream>> {
        let mut handed = Vec::new();
        for (fd, stream) in &self.streams {
            crate::upgrade::keep_across_exec(&stream.fd)?;
            handed.push(HandedStream {
                fd: *fd,
                stderr: stream.kind == StreamKind::Stderr,
                task: stream.origin.task.clone(),
                slot: stream.origin.slot,
                pid: stream.origin.pid.as_raw(),
                generation: stream.origin.generation,
                title: stream.origin.title.clone(),
                partial: stream.partial.clone(),
            });
        }
        Ok(handed)
    }

    /// Watches the streams a previous image of the master handed over.
    pub fn take_over(&mut self, handed: Vec<HandedStream>) -> io::Result<()> {
        for stream in handed {
            // A close-on-exec duplicate: the original stays open (for a rollback) until the new image runs.
            // SAFETY: the previous image kept this descriptor open across `execve`; it is only borrowed here.
            let fd = unsafe { BorrowedFd::borrow_raw(stream.fd) }.try_clone_to_owned()?;
            let raw = fd.as_raw_fd();
            let kind = if stream.stderr { StreamKind::Stderr } else { StreamKind::Stdout };
            let origin = Rc::new(Origin {
                task: stream.task,
                slot: stream.slot,
                pid: Pid::from_raw(stream.pid),
                generation: stream.generation,
                title: stream.title,
            });
            self.epoll.add(&fd, EpollEvent::new(EpollFlags::EPOLLIN, raw as u64))?;
            self.streams.insert(raw, Stream { fd, held: None, kind, origin, partial: stream.partial });
        }
        Ok(())
    }

    /// Reads what the streams that are ready hold, at most [`READ_BUDGET`] each, and logs it line by line.
    pub fn read_ready(&mut self) {
        let mut events = [EpollEvent::empty(); 64];
        let Ok(n) = self.epoll.wait(&mut events, EpollTimeout::ZERO) else { return };
        for event in &events[..n] {
            self.read_stream(event.data() as RawFd, READ_BUDGET);
        }
    }

    /// Reads everything the streams of `pid` hold now (a worker just reaped: its last words come before its
    /// exit line), after closing the master's copies of their write ends: a stream no child of the worker holds
    /// ends here.
    ///
    /// At most what a pipe can hold is read ([`REAP_BUDGET`]), until its end if no child of the worker holds
    /// it: a helper that left the worker's process group and keeps writing would otherwise keep the master in
    /// this loop for as long as it outpaced the log, every other event waiting (a `yes` so started did, until
    /// it was killed by hand). What follows is read as any stream's, [`READ_BUDGET`] per wake-up. (A bound, not
    /// a `FIONREAD` of what is queued: that was one more syscall per stream on every worker's exit.)
    pub fn read_all_of(&mut self, pid: Pid) {
        let fds = self.by_pid.get(&pid).cloned().unwrap_or_default();
        for fd in fds {
            if let Some(stream) = self.streams.get_mut(&fd) {
                stream.held = None;
            }
            self.read_stream(fd, REAP_BUDGET);
        }
    }

    fn read_stream(&mut self, fd: RawFd, budget: usize) {
        let Some(stream) = self.streams.get_mut(&fd) else { return };
        let mut buf = crate::report::ReadBuffer::new();
        let mut read = 0;
        let ended = loop {
            if read >= budget {
                break false;
            }
            match buf.read(stream.fd.as_fd()) {
                Ok([]) => break true,
                Ok(bytes) => {
                    read += bytes.len();
                    stream.take(bytes);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break false,
                Err(_) => break true,
            }
        };
        if ended {
            stream.flush();
            let _ = self.epoll.delete(&stream.fd);
            let pid = stream.origin.pid;
            self.streams.remove(&fd);
            if let Some(fds) = self.by_pid.get_mut(&pid) {
                fds.retain(|open| *open != fd);
                if fds.is_empty() {
                    self.by_pid.remove(&pid);
                }
            }
        }
    }
}

impl Stream {
    /// Logs each complete line of `bytes` (after what was pending), keeps the rest.
    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&bytes[..end]);
            self.emit_all();
            bytes = &bytes[end + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() > LINE_LIMIT {
            let rest = self.partial.split_off(LINE_LIMIT);
            self.emit();
            self.partial = rest;
        }
    }

    /// Logs what is pending as a line (the stream ended without a final newline).
    fn flush(&mut self) {
        if !self.partial.is_empty() {
            self.emit_all();
        }
    }

    /// Logs the pending line, in pieces of at most [`LINE_LIMIT`] bytes.
    fn emit_all(&mut self) {
        let mut line = std::mem::take(&mut self.partial);
        while line.len() > LINE_LIMIT {
            let rest = line.split_off(LINE_LIMIT);
            self.partial = line;
            self.emit();
            line = rest;
        }
        self.partial = line;
        self.emit();
    }

    fn emit(&mut self) {
        let text = escape(&self.partial);
        self.partial.clear();
        let o = &self.origin;
        let stream = self.kind.name();
        crate::logging::as_process(&o.title, o.pid.as_raw() as u32, || match self.kind {
            StreamKind::Stdout => tracing::info!(
                target: crate::logging::RUN_TARGET,
                stream = %stream, task = %o.task, slot = o.slot, pid = o.pid.as_raw(), generation = o.generation,
                "{text}"
            ),
            StreamKind::Stderr => tracing::warn!(
                target: crate::logging::RUN_TARGET,
                stream = %stream, task = %o.task, slot = o.slot, pid = o.pid.as_raw(), generation = o.generation,
                "{text}"
            ),
        });
    }
}

/// The bytes as text: UTF-8 kept, other bytes and control characters (but tab) as `\xNN`, a trailing `\r`
/// (CRLF output) dropped.
pub fn escape(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() && c != '\t' {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_ends_are_held_within_a_quarter_of_the_open_file_limit() {
        for (held, nofile, holds) in [
            (0, 20_000, true),
            (4_998, 20_000, true),
            (4_999, 20_000, false),
            (78, 320, true),
            (80, 320, false),
            (0, 4, false),
            (0, 0, false),
        ] {
            assert_eq!(holds_write_ends(held, nofile), holds, "{held} held, limit {nofile}");
        }
    }

    #[test]
    fn output_is_escaped_not_garbled() {
        let cases: &[(&[u8], &str)] = &[
            (b"plain text", "plain text"),
            (b"tab\tkept", "tab\tkept"),
            ("ünïcödé".as_bytes(), "ünïcödé"),
            (b"bell\x07 and escape\x1b[31m", "bell\\x07 and escape\\x1b[31m"),
            (b"\xff\xfe binary", "\\xff\\xfe binary"),
            (b"crlf\r", "crlf"),
            (b"fake\rline", "fake\\x0dline"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(escape(bytes), *expected, "{bytes:?}");
        }
    }
}
