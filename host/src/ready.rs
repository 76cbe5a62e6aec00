//! The readiness pipe of `pmhost start -d`: the daemon (writer) tells the waiting command (reader) whether its
//! start succeeded, so the command can exit 0 only for a start that worked and say why one failed (the daemon's
//! own stderr is /dev/null). Both ends and the message format live here.
//!
//! The message is `ready PID\n`, or `error\n` followed by the reason; end of file without either means the daemon
//! died before it could say.

use std::io::Read;
use std::os::fd::OwnedFd;

/// The daemon's end: sends the outcome once.
pub struct ReadyNotifier(OwnedFd);

impl ReadyNotifier {
    /// Wraps the write end of the readiness pipe.
    pub fn new(fd: OwnedFd) -> ReadyNotifier {
        ReadyNotifier(fd)
    }

    /// Sends the outcome and closes the pipe.
    pub fn send(self, outcome: Result<(), &str>) {
        let message = match outcome {
            Ok(()) => format!("ready {}\n", std::process::id()),
            Err(reason) => format!("error\n{reason}"),
        };
        let _ = nix::unistd::write(&self.0, message.as_bytes());
    }
}

/// The waiting command's end: the daemon's pid once it is ready, or why the start failed.
pub fn wait_for_daemon(read_end: OwnedFd) -> Result<String, String> {
    let mut text = String::new();
    let mut file = std::fs::File::from(read_end);
    if let Err(e) = file.read_to_string(&mut text) {
        return Err(format!("cannot read the master's start report: {e}"));
    }
    parse(&text)
}

fn parse(text: &str) -> Result<String, String> {
    let mut lines = text.splitn(2, '\n');
    match (lines.next().unwrap_or(""), lines.next()) {
        (first, _) if first.starts_with("ready") => Ok(first.trim_start_matches("ready").trim().to_owned()),
        ("error", Some(reason)) => Err(reason.trim().to_owned()),
        _ => Err("the master exited before its workers were ready (see its log)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_daemon_sends_is_what_the_command_reads() {
        type Case<'a> = (Result<(), &'a str>, Result<String, String>);
        let cases: &[Case<'_>] = &[
            (Ok(()), Ok(std::process::id().to_string())),
            (Err("plugin init failed: db down"), Err("plugin init failed: db down".to_owned())),
            (Err("two\nlines"), Err("two\nlines".to_owned())),
        ];
        for (sent, read) in cases {
            let (read_end, write_end) = nix::unistd::pipe().unwrap();
            ReadyNotifier::new(write_end).send(*sent);
            assert_eq!(&wait_for_daemon(read_end), read, "{sent:?}");
        }
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        drop(write_end);
        assert!(wait_for_daemon(read_end).unwrap_err().contains("exited before"), "a daemon that died says nothing");
    }
}
