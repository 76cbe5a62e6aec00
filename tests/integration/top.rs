//! `pmhost top`: one frame as text (`--once`), and the live view driven through a real pseudo-terminal.

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use nix::pty::{Winsize, openpty};
use nix::sys::termios::{LocalFlags, tcgetattr};

use crate::harness::{ProcessWaiter, SOON, Sandbox, describe, fixtures};

fn start_hello(sb: &Sandbox, workers: &str) {
    sb.start_daemon(&fixtures().hello, &["--workers", workers, "--execute-times", "0", "--execute-usleep", "20ms"]);
}

#[test]
fn top_once_prints_the_header_the_task_line_and_a_row_per_worker() {
    let sb = Sandbox::new("toponce");
    start_hello(&sb, "2");
    let workers =
        sb.wait_for("two ready workers", SOON, || (sb.ready_workers().len() == 2).then(|| sb.ready_workers()));
    let out = sb.run(["top", "--name", &sb.name, "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains(&format!("pmhost top · {}", sb.name)) && lines[0].contains("state running"), "{text}");
    assert!(lines[0].contains("generation 1") && lines[0].contains("last restart: none"), "{text}");
    assert!(lines[1].contains(&format!("master pid {}", sb.master_pid())), "{text}");
    let task = lines.iter().find(|l| l.contains("workers 2/2")).unwrap_or_else(|| panic!("no task line:\n{text}"));
    assert!(task.contains(&sb.name) && task.contains("crashes/min 0"), "{task}");
    // Two samples a second apart: the rate is a number (workers call every 20 ms), not "-".
    let rate: f64 = task.split("calls/s").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(rate > 0.0, "{task}");
    for (slot, pid) in workers {
        let row = lines
            .iter()
            .find(|l| l.split_whitespace().take(2).eq([slot.to_string(), pid.to_string()].iter().map(String::as_str)))
            .unwrap_or_else(|| panic!("no row for slot {slot} pid {pid}:\n{text}"));
        assert!(row.contains("idle") || row.contains("busy"), "{row}");
    }
    sb.stop();

    let out = sb.run(["top", "--name", &sb.name, "--once"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("master not running"), "{}", describe(&out));
}

/// What a pseudo-terminal received: the raw bytes, and the screen they paint (ratatui sends only the cells that
/// changed, so text is looked for on the screen, escape sequences in the bytes).
struct Screen {
    rx: Receiver<Vec<u8>>,
    raw: Vec<u8>,
    parser: vt100::Parser,
}

impl Screen {
    /// Reads the pty's master side in a thread (it ends with EIO once nothing holds the terminal side).
    fn new(master: OwnedFd, rows: u16) -> Screen {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut file = std::fs::File::from(master);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 8192];
            while let Ok(n @ 1..) = file.read(&mut buffer) {
                if tx.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Screen {
            rx,
            raw: Vec::new(),
            parser: vt100::Parser::new(NonZeroU16::new(rows).expect("rows"), NonZeroU16::new(120).expect("columns"), 0),
        }
    }

    /// Reads until `done` holds for (raw bytes, screen text); panics at the deadline.
    fn wait(&mut self, what: &str, mut done: impl FnMut(&[u8], &str) -> bool) {
        let until = Instant::now() + SOON;
        while !done(&self.raw, &self.parser.screen().contents()) {
            match self.rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(bytes) => {
                    self.parser.process(&bytes);
                    self.raw.extend(bytes);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "the terminal never showed {what}; the screen:\n{}\nbytes:\n{:?}",
                    self.parser.screen().contents(),
                    String::from_utf8_lossy(&self.raw)
                ),
            }
        }
    }

    /// Waits until the screen shows `text`.
    fn wait_text(&mut self, text: &str) {
        self.wait(text, |_, screen| screen.contains(text));
    }

    /// Waits until the terminal received the byte sequence `sequence`.
    fn wait_sequence(&mut self, sequence: &str) {
        self.wait(&format!("{sequence:?}"), |raw, _| raw.windows(sequence.len()).any(|w| w == sequence.as_bytes()));
    }
}

/// `pmhost top --name NAME` on a fresh pseudo-terminal of `rows` x 120 as its controlling terminal: the child,
/// the keyboard (the pty's master side), what the terminal receives, and the terminal side (to read its modes).
fn top_in_a_pty(sb: &Sandbox, rows: u16) -> (std::process::Child, std::fs::File, Screen, OwnedFd) {
    let size = Winsize { ws_row: rows, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
    let pty = openpty(Some(&size), None).expect("openpty");
    let mut cmd = sb.pmhost(["top", "--name", &sb.name]);
    let terminal = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
    cmd.stdin(terminal(&pty.slave)).stdout(terminal(&pty.slave)).stderr(terminal(&pty.slave)).env("TERM", "xterm");
    // SAFETY: between fork and exec only async-signal-safe calls: a new session whose controlling terminal is
    // the pty, as a login shell would have.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    eprintln!("$ {cmd:?}");
    let child = cmd.spawn().expect("spawn pmhost top");
    let keyboard = std::fs::File::from(pty.master.try_clone().expect("dup the pty"));
    (child, keyboard, Screen::new(pty.master, rows), pty.slave)
}

#[test]
fn top_in_a_terminal_scales_on_plus_and_minus_restarts_on_r_and_restores_the_terminal_on_q() {
    let sb = Sandbox::new("toppty");
    start_hello(&sb, "1");
    sb.wait_for("a ready worker", SOON, || (sb.ready_workers().len() == 1).then_some(()));
    let (mut child, mut keyboard, mut screen, terminal) = top_in_a_pty(&sb, 40);

    screen.wait_sequence("\x1b[?1049h");
    screen.wait_text("workers 1/1");
    let raw = tcgetattr(&terminal).unwrap();
    assert!(!raw.local_flags.contains(LocalFlags::ICANON), "top runs the terminal in raw mode");

    keyboard.write_all(b"+").unwrap();
    sb.wait_for("a second ready worker after +", SOON, || {
        let status = sb.snapshot()?;
        (status.tasks.first()?.workers_wanted == 2 && sb.ready_workers().len() == 2).then_some(())
    });
    screen.wait_text("workers 2/2");

    // r: a rolling restart, followed on the screen; - : back to one worker.
    keyboard.write_all(b"r").unwrap();
    sb.wait_for("the restart to generation 2", SOON, || {
        let restart = sb.snapshot()?.last_restart?;
        (restart.generation == 2 && restart.ok).then_some(())
    });
    screen.wait_text("restart: generation 2 ok");
    keyboard.write_all(b"-").unwrap();
    sb.wait_for("one worker again after -", SOON, || {
        let status = sb.snapshot()?;
        let task = status.tasks.first()?;
        (task.workers_wanted == 1 && task.workers.len() == 1).then_some(())
    });
    screen.wait_text("workers 1/1");
    // Drawing happens in the one thread top has: ratatui and crossterm start none.
    let threads = std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap().count();
    assert_eq!(threads, 1, "top runs {threads} threads");

    keyboard.write_all(b"q").unwrap();
    assert!(ProcessWaiter::new(child.id() as i32).wait(SOON), "top did not exit on q");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "top exits 0 on q");
    screen.wait_sequence("\x1b[?1049l");
    let restored = tcgetattr(&terminal).unwrap();
    assert!(
        restored.local_flags.contains(LocalFlags::ICANON | LocalFlags::ECHO),
        "the terminal is back in line mode with echo"
    );
    drop(terminal);
    sb.stop();
}

#[test]
fn top_shows_a_stopped_master_as_such_and_picks_up_a_new_one() {
    let sb = Sandbox::new("topwait");
    let (mut child, mut keyboard, mut screen, _terminal) = top_in_a_pty(&sb, 30);
    screen.wait_text("master not running");

    start_hello(&sb, "1");
    let first = sb.master_pid();
    screen.wait_text(&format!("master pid {first}"));
    // Not Sandbox::stop: top, which also names the host, keeps running.
    let out = sb.run(["stop", "--name", &sb.name]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    screen.wait_text("master not running");
    start_hello(&sb, "1");
    let second = sb.master_pid();
    screen.wait_text(&format!("master pid {second}"));

    keyboard.write_all(b"q").unwrap();
    assert!(ProcessWaiter::new(child.id() as i32).wait(SOON), "top did not exit on q");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    sb.stop();
}
