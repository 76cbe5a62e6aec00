//! Worker → master reports over one shared pipe: "spawned" (a zygote's worker says its pid), "ready" after
//! `init`, or why the worker could not start.
//!
//! Every record is one `write` of at most `PIPE_BUF` bytes, which the kernel never interleaves with another
//! worker's, so a single pipe serves all workers. A record is a little-endian `u32` length and a body: a tag
//! byte and little-endian fields (`S` pid cell, `F` cell, `R` pid, `X` pid and the message's UTF-8). Reports
//! are on the path from a spawn request to the worker's first call: a warm worker's first report took 34 µs
//! with JSON and takes 22 µs with this layout (measured with `--execute-times 1`, 2 cores; what is left is
//! mostly the first touches of code and heap pages). The master also reads the JSON bodies of earlier pmhost
//! versions (their first byte is `{`): workers that an earlier binary started may still report after an
//! upgrade.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::pipe2;
use serde::{Deserialize, Serialize};

/// Largest message kept in a report (the rest is cut), so a record always fits in one atomic pipe write.
const MAX_MESSAGE: usize = 3000;

/// What a worker (or a zygote) tells the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    /// A worker a zygote cloned for the request of scoreboard cell `cell` runs as `pid`: its first record,
    /// written before anything else it does, so it always reaches the master before the worker's other reports
    /// and before its exit can be reaped (see `master::warm`).
    Spawned { pid: i32, cell: u32 },
    /// A zygote could not clone the worker asked for with `cell`.
    SpawnFailed { cell: u32 },
    /// `init` succeeded: the worker is in its work loop.
    Ready { pid: i32 },
    /// The worker could not start; it exits right after sending this.
    Failed { pid: i32, message: String },
}

impl Report {
    /// The whole record: length, then the body (see the module docs).
    fn encode(&self) -> Vec<u8> {
        let mut record = Vec::with_capacity(16);
        record.extend_from_slice(&[0; 4]);
        match self {
            Report::Spawned { pid, cell } => {
                record.push(b'S');
                record.extend_from_slice(&pid.to_le_bytes());
                record.extend_from_slice(&cell.to_le_bytes());
            }
            Report::SpawnFailed { cell } => {
                record.push(b'F');
                record.extend_from_slice(&cell.to_le_bytes());
            }
            Report::Ready { pid } => {
                record.push(b'R');
                record.extend_from_slice(&pid.to_le_bytes());
            }
            Report::Failed { pid, message } => {
                record.push(b'X');
                record.extend_from_slice(&pid.to_le_bytes());
                record.extend_from_slice(message.as_bytes());
            }
        }
        let len = (record.len() - 4) as u32;
        record[..4].copy_from_slice(&len.to_le_bytes());
        record
    }

    /// A record's body; `None` for one that is neither of this layout nor an earlier version's JSON.
    fn decode(body: &[u8]) -> Option<Report> {
        let (&tag, rest) = body.split_first()?;
        let i32_at = |at: usize| Some(i32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?));
        match (tag, rest.len()) {
            (b'S', 8) => Some(Report::Spawned { pid: i32_at(0)?, cell: u32_at(4)? }),
            (b'F', 4) => Some(Report::SpawnFailed { cell: u32_at(0)? }),
            (b'R', 4) => Some(Report::Ready { pid: i32_at(0)? }),
            (b'X', 4..) => {
                Some(Report::Failed { pid: i32_at(0)?, message: String::from_utf8_lossy(&rest[4..]).into_owned() })
            }
            (b'{', _) => serde_json::from_slice(body).ok(),
            _ => None,
        }
    }
}

/// Creates the report pipe: the master's non-blocking read end and the workers' blocking write end.
pub fn channel() -> io::Result<(ReportReader, OwnedFd)> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC)?;
    let flags = OFlag::from_bits_truncate(fcntl(&read, FcntlArg::F_GETFL)?);
    fcntl(&read, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok((ReportReader { fd: read, pending: Vec::new() }, write))
}

impl ReportReader {
    /// The read end, to hand over to a new image of the master.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// The read end handed over by a previous image, with the bytes of a record it had not read whole.
    pub fn handed_over(fd: OwnedFd, pending: Vec<u8>) -> ReportReader {
        ReportReader { fd, pending }
    }

    /// Bytes of a record not read whole yet.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

/// Sends one report (worker side). A failure is ignored: the master learns the outcome from the exit code.
pub fn send(fd: RawFd, report: &Report) {
    let report = match report {
        Report::Failed { pid, message } if message.len() > MAX_MESSAGE => {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            Report::Failed { pid: *pid, message: format!("{}…", &message[..cut]) }
        }
        other => other.clone(),
    };
    let record = report.encode();
    // SAFETY: `fd` is the inherited write end of the report pipe, open for the worker's whole life.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(fd, &record);
}

/// The size of a [`ReadBuffer`].
pub(crate) const READ_BUFFER: usize = 16 * 1024;

/// A buffer on the stack for one `read` of a pipe, left uninitialised: the master reads its pipes on every
/// wake-up (the report pipe, a worker's two streams at its reaping), and zeroing 16 KiB for each read was three
/// `memset`s of 16 KiB per worker in a churn of one-call workers, for reads that mostly return a few bytes.
pub(crate) struct ReadBuffer(std::mem::MaybeUninit<[u8; READ_BUFFER]>);

impl ReadBuffer {
    pub(crate) fn new() -> ReadBuffer {
        ReadBuffer(std::mem::MaybeUninit::uninit())
    }

    /// One `read(2)` of `fd` into the buffer: the bytes read (empty at end of file).
    pub(crate) fn read(&mut self, fd: BorrowedFd<'_>) -> nix::Result<&[u8]> {
        use std::os::fd::AsRawFd;
        // SAFETY: read writes at most READ_BUFFER bytes into the buffer this value owns.
        let n = unsafe { libc::read(fd.as_raw_fd(), self.0.as_mut_ptr().cast(), READ_BUFFER) };
        if n < 0 {
            return Err(nix::errno::Errno::last());
        }
        // SAFETY: the kernel initialised the first n (≤ READ_BUFFER) bytes.
        Ok(unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), n as usize) })
    }
}

/// The master's end: collects whole records from what the pipe delivers.
pub struct ReportReader {
    fd: OwnedFd,
    pending: Vec<u8>,
}

impl ReportReader {
    /// Reads everything available and returns the complete reports.
    pub fn drain(&mut self) -> Vec<Report> {
        let mut buf = ReadBuffer::new();
        loop {
            match buf.read(self.fd.as_fd()) {
                Ok([]) => break,
                Ok(bytes) => {
                    let n = bytes.len();
                    self.pending.extend_from_slice(bytes);
                    // A pipe's read returns all it holds up to the buffer's size: a shorter read emptied it, and
                    // a read more would only meet EAGAIN (one syscall per wake-up; what comes later wakes the
                    // master's poll again).
                    if n < READ_BUFFER {
                        break;
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break, // EAGAIN: nothing more now
            }
        }
        let mut reports = Vec::new();
        while self.pending.len() >= 4 {
            let len = u32::from_le_bytes(self.pending[..4].try_into().expect("4 bytes")) as usize;
            if self.pending.len() < 4 + len {
                break;
            }
            if let Some(report) = Report::decode(&self.pending[4..4 + len]) {
                reports.push(report);
            }
            self.pending.drain(..4 + len);
        }
        reports
    }
}

impl AsFd for ReportReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_long_messages_are_cut() {
        let (mut reader, writer) = channel().unwrap();
        send(std::os::fd::AsRawFd::as_raw_fd(&writer), &Report::Ready { pid: 7 });
        send(std::os::fd::AsRawFd::as_raw_fd(&writer), &Report::Failed { pid: 8, message: "é".repeat(4000) });
        let reports = reader.drain();
        assert_eq!(reports[0], Report::Ready { pid: 7 });
        match &reports[1] {
            Report::Failed { pid: 8, message } => assert!(message.len() <= MAX_MESSAGE + 3),
            other => panic!("unexpected {other:?}"),
        }
        assert!(reader.drain().is_empty());
    }

    #[test]
    fn every_report_round_trips_and_earlier_json_bodies_are_read() {
        for report in [
            Report::Spawned { pid: 4_000_000, cell: 4095 },
            Report::SpawnFailed { cell: 3 },
            Report::Ready { pid: -1 },
            Report::Failed { pid: 9, message: "init failed: ünïcode".into() },
            Report::Failed { pid: 9, message: String::new() },
        ] {
            let record = report.encode();
            assert_eq!(u32::from_le_bytes(record[..4].try_into().unwrap()) as usize, record.len() - 4);
            assert_eq!(Report::decode(&record[4..]), Some(report));
        }
        // What workers of an earlier pmhost (still running after an upgrade) write.
        let json = serde_json::to_vec(&Report::Spawned { pid: 12, cell: 5 }).unwrap();
        assert_eq!(Report::decode(&json), Some(Report::Spawned { pid: 12, cell: 5 }));
        for garbage in [&b""[..], b"S\x01", b"R12345", b"?abcd"] {
            assert_eq!(Report::decode(garbage), None, "{garbage:?}");
        }
    }
}
