//! Worker → master reports over one shared pipe: "spawned" (a zygote's worker says its pid), "ready" after
//! `init`, or why the worker could not start.
//!
//! Every record is one `write` of at most `PIPE_BUF` bytes, which the kernel never interleaves with another
//! worker's, so a single pipe serves all workers. A record is a little-endian `u32` length and a JSON body.

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
    let body = serde_json::to_vec(&report).expect("reports serialize");
    let mut record = (body.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&body);
    // SAFETY: `fd` is the inherited write end of the report pipe, open for the worker's whole life.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(fd, &record);
}

/// The master's end: collects whole records from what the pipe delivers.
pub struct ReportReader {
    fd: OwnedFd,
    pending: Vec<u8>,
}

impl ReportReader {
    /// Reads everything available and returns the complete reports.
    pub fn drain(&mut self) -> Vec<Report> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
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
            if let Ok(report) = serde_json::from_slice(&self.pending[4..4 + len]) {
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
}
