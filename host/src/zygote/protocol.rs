//! The zygote's messages: what the master sends it (templates on the control socket, spawn requests on the
//! request queue) and what its spares tell it (taken; a request given back), and how each is read and written.
//! See [`crate::zygote`] for the conversation.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use crate::worker::WorkerSpec;

/// The byte a zygote sends once its plugin is loaded.
pub const READY: u8 = b'R';

/// The first byte of a spawn request.
const SPAWN: u8 = b'S';
/// The first byte of a task's template (JSON of [`TaskTemplate`] follows).
const TEMPLATE: u8 = b'T';
/// The first byte of a spare's "taken" message (see `zygote::spare`).
pub(super) const TAKEN: u8 = b'K';
/// The first byte of the master's notice that a child it did not know of ended (its pid follows): perhaps one
/// of the zygote's spares (see `zygote`, "Spares").
const GONE: u8 = b'G';
/// The length of a [`GONE`] notice.
const GONE_LEN: usize = 5;

/// A spawn request: the task (by its index in the master, whose template the zygote was given before), slot,
/// scoreboard cell, and whether two capture descriptors are attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub task: u32,
    pub slot: u32,
    pub cell: u32,
    pub output: bool,
}

impl Request {
    pub const LEN: usize = 14;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[0] = SPAWN;
        bytes[1..5].copy_from_slice(&self.task.to_le_bytes());
        bytes[5..9].copy_from_slice(&self.slot.to_le_bytes());
        bytes[9..13].copy_from_slice(&self.cell.to_le_bytes());
        bytes[13] = u8::from(self.output);
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Request> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        if bytes[0] != SPAWN {
            return None;
        }
        Some(Request {
            task: u32::from_le_bytes(bytes[1..5].try_into().ok()?),
            slot: u32::from_le_bytes(bytes[5..9].try_into().ok()?),
            cell: u32::from_le_bytes(bytes[9..13].try_into().ok()?),
            output: bytes[13] != 0,
        })
    }
}

/// What a worker of one task takes from its task rather than from the build: a zygote serves every task of its
/// staged build and generation, and is given each task's template once, before that task's first request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskTemplate {
    /// The task's index in the master (what requests name).
    pub index: u32,
    pub task: String,
    pub limits: crate::settings::Limits,
    pub config_json: String,
    pub process: crate::settings::ProcessSettings,
    pub title: String,
}

impl TaskTemplate {
    /// The template of `spec`'s task, as the master sends it.
    pub fn of(index: u32, spec: &WorkerSpec) -> TaskTemplate {
        TaskTemplate {
            index,
            task: spec.task.clone(),
            limits: spec.limits,
            config_json: spec.config_json.clone(),
            process: (*spec.process).clone(),
            title: spec.title.clone(),
        }
    }

    /// A worker of this task built on the zygote's own spec (its build, report pipe and host-wide settings).
    pub(super) fn apply(&self, base: &WorkerSpec) -> WorkerSpec {
        WorkerSpec {
            task: self.task.clone(),
            limits: self.limits,
            config_json: self.config_json.clone(),
            process: std::sync::Arc::new(self.process.clone()),
            title: self.title.clone(),
            ..base.clone()
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![TEMPLATE];
        // A template is plain data (strings, numbers, maps): serializing it cannot fail.
        bytes.extend(serde_json::to_vec(self).unwrap_or_default());
        bytes
    }
}

/// One message from the master (templates, requests) or from a spare (taken; a request given back).
pub(super) enum Message {
    /// A spare took a request of `task` and becomes its worker.
    Taken {
        pid: i32,
        task: u32,
    },
    Template(Box<TaskTemplate>),
    /// A child of the master it did not know of ended (the master's notice; the pid may be a spare's).
    Gone {
        pid: i32,
    },
    /// A template that did not parse (its task's requests fail: the master then spawns it cold), or a message
    /// of no known kind (ignored).
    Unreadable,
    Spawn(Request, Vec<OwnedFd>),
}

/// The worker's capture pipe ends (stdout, stderr) that came with `request`, when it says it has them.
pub(super) fn capture_ends(request: Request, fds: &[OwnedFd]) -> Option<[RawFd; 2]> {
    match (request.output, fds) {
        (true, [stdout, stderr]) => Some([stdout.as_raw_fd(), stderr.as_raw_fd()]),
        _ => None,
    }
}

/// What one non-blocking read of a socket found.
pub(super) enum Received {
    Message(Message),
    /// Nothing queued (or another reader took it first).
    Nothing,
    /// The other end closed (or the read failed).
    Closed,
}

/// The next message queued on `socket`, without waiting (every reader polls first).
pub(super) fn receive(socket: &impl AsRawFd, bytes: &mut [u8]) -> Received {
    let mut space = nix::cmsg_space!([RawFd; 2]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut *bytes)];
        let flags = MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT;
        let received = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), flags).map(|msg| {
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in this process for us.
                    fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
            (msg.bytes, fds)
        });
        let message = match received {
            Ok((0, _)) => return Received::Closed,
            Ok((len, _)) if bytes.first() == Some(&TEMPLATE) => {
                serde_json::from_slice(&bytes[1..len]).map_or(Message::Unreadable, |t| Message::Template(Box::new(t)))
            }
            Ok((GONE_LEN, _)) if bytes.first() == Some(&GONE) => {
                Message::Gone { pid: i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) }
            }
            Ok((super::spare::TAKEN_LEN, _)) if bytes.first() == Some(&TAKEN) => Message::Taken {
                pid: i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]),
                task: u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]),
            },
            Ok((len, fds)) => Request::decode(&bytes[..len]).map_or(Message::Unreadable, |r| Message::Spawn(r, fds)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Received::Nothing,
            Err(_) => return Received::Closed,
        };
        return Received::Message(message);
    }
}

/// The largest message a zygote reads: a template's JSON (a task's config and environment) must fit.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Sends a task's template (the master's side), before that task's first request to this zygote.
pub fn send_template(socket: &OwnedFd, template: &TaskTemplate) -> nix::Result<()> {
    use nix::sys::socket::{MsgFlags, send};
    let bytes = template.encode();
    if bytes.len() > MAX_MESSAGE {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    send(socket.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL).map(|_| ())
}

/// Tells a zygote (the master's side, on its control socket) that a child of the master it did not know of
/// ended: `pid` may have been one of the zygote's spares. Never waits (the master's end is non-blocking).
pub fn send_gone(socket: &OwnedFd, pid: i32) -> nix::Result<()> {
    use nix::sys::socket::{MsgFlags, send};
    let mut bytes = [0u8; GONE_LEN];
    bytes[0] = GONE;
    bytes[1..].copy_from_slice(&pid.to_le_bytes());
    send(socket.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT).map(|_| ())
}

/// Sends a request (the master's side, on the queue); the capture ends go along when given.
pub fn send(socket: &OwnedFd, request: Request, output: Option<[RawFd; 2]>) -> nix::Result<()> {
    send_with(socket, request, output, MsgFlags::empty())
}

/// [`send`] with extra `sendmsg` flags (a spare giving a request back never waits: `MSG_DONTWAIT`).
pub(super) fn send_with(
    socket: &OwnedFd,
    request: Request,
    output: Option<[RawFd; 2]>,
    flags: MsgFlags,
) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, sendmsg};
    let bytes = request.encode();
    let iov = [IoSlice::new(&bytes)];
    let fds;
    let cmsgs: Vec<ControlMessage<'_>> = match &output {
        Some(ends) => {
            fds = *ends;
            vec![ControlMessage::ScmRights(&fds)]
        }
        None => Vec::new(),
    };
    sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL | flags, None).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for request in [
            Request { task: 0, slot: 0, cell: 0, output: false },
            Request { task: 63, slot: 1023, cell: 77, output: true },
        ] {
            assert_eq!(Request::decode(&request.encode()), Some(request));
        }
        assert_eq!(Request::decode(&[1, 2, 3]), None);
        let mut template_like = Request { task: 1, slot: 2, cell: 3, output: false }.encode();
        template_like[0] = TEMPLATE;
        assert_eq!(Request::decode(&template_like), None, "a template is never read as a request");
    }

    #[test]
    fn a_gone_notice_names_the_pid_and_is_never_read_as_a_request() {
        let (master, zygote) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        send_gone(&master, 4_194_303).unwrap();
        let mut buffer = vec![0u8; MAX_MESSAGE];
        match receive(&zygote, &mut buffer) {
            Received::Message(Message::Gone { pid }) => assert_eq!(pid, 4_194_303),
            _ => panic!("not read as a notice"),
        }
        assert!(matches!(receive(&zygote, &mut buffer), Received::Nothing));
    }
}
