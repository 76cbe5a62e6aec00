//! Process titles: `{prefix}:Master:{name}` and `{prefix}:Worker:{task}` in `ps` and `pgrep -f`.
//!
//! Linux shows `/proc/PID/cmdline`, which is the memory between the kernel's `arg_start` and `arg_end` (or up
//! to `env_end` when the byte before `arg_end` is no longer a NUL). Rewriting that memory in place gives a
//! title of any length up to the size of the original argv and environment, the way long-running daemons
//! have always done it. Environment strings live in the same area, so they are first copied to the heap and
//! `environ` is rebuilt from the copies. `std::env::args()` must have been read before (clap has done so).
//! `PR_SET_NAME` sets the short name (`comm`, 15 bytes) shown by `top` and `ps -o comm`.
//!
//! Everything here runs while the process is single-threaded: the master before its loop, a worker right after fork.
//! The area and the relocation are done once per process image: a worker inherits both from the master (or its
//! zygote), so its title costs a copy into memory it already has, not a read of `/proc` and a copy of the
//! whole environment (about a tenth of a warm worker's short life, measured with `perf`).

use std::ffi::CString;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The argv area, read once per process image: a forked child (a worker) inherits it with the memory, so it
/// sets its title without reading `/proc` again.
static AREA: OnceLock<Option<ArgArea>> = OnceLock::new();
/// The environment strings were moved out of the argv area (also inherited by forked children, whose
/// environment is already on the heap).
static RELOCATED: AtomicBool = AtomicBool::new(false);

/// The area the kernel reports for argv and environment, read from `/proc/self/stat`.
#[derive(Clone, Copy)]
struct ArgArea {
    start: usize,
    end: usize,
}

fn arg_area() -> Option<ArgArea> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces and parentheses: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Field n (1-based) of the whole line is at index n - 3 of `rest`.
    let field = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    let (start, end) = (field(48)?, field(51)?);
    (start != 0 && end > start).then_some(ArgArea { start, end })
}

/// Moves every environment string out of the argv area: copies them, clears `environ` and sets them again, so
/// the libc allocates fresh strings on the heap.
fn relocate_environment() {
    let vars: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    // SAFETY: single-threaded (see module docs); clearenv only resets the environ pointer.
    unsafe { libc::clearenv() };
    for (key, value) in vars {
        // SAFETY: single-threaded, so no other thread reads the environment concurrently.
        unsafe { std::env::set_var(key, value) };
    }
}

/// Sets the process title shown by `ps -o args` and the short name shown by `ps -o comm`.
pub fn set(title: &str) {
    set_short_name(title);
    let Some(area) = *AREA.get_or_init(arg_area) else { return };
    if !RELOCATED.swap(true, Ordering::Relaxed) {
        relocate_environment();
    }
    let capacity = area.end - area.start;
    let bytes = title.as_bytes();
    let len = bytes.len().min(capacity.saturating_sub(1));
    // SAFETY: [start, end) is this process's own argv/environ memory as reported by the kernel; its former
    // contents (argv strings and environment strings) are no longer referenced: the environment was relocated
    // above and argv was parsed before.
    unsafe {
        let base = area.start as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), base, len);
        std::ptr::write_bytes(base.add(len), 0, capacity - len);
    }
}

fn set_short_name(title: &str) {
    // `comm` holds 15 bytes: the role's initial and the name (`M:mailer`, `W:mailer`), cut to fit.
    let mut parts = title.rsplitn(3, ':');
    let name = parts.next().unwrap_or(title);
    let short = match parts.next() {
        Some(role) => format!("{}:{name}", role.chars().next().unwrap_or('?')),
        None => name.to_owned(),
    };
    let mut cut = short.len().min(15);
    while !short.is_char_boundary(cut) {
        cut -= 1;
    }
    if let Ok(name) = CString::new(short[..cut].replace('\0', "")) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}
