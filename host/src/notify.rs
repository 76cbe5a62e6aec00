//! systemd's notify protocol (`Type=notify`): `READY=1` once every worker is ready, `RELOADING=1` / `READY=1`
//! around a restart, `STOPPING=1`, `STATUS=` with a one-line summary, and `WATCHDOG=1` when systemd asked for a
//! watchdog. One datagram per message to `$NOTIFY_SOCKET`; no thread, no library.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    watchdog: Option<Duration>,
    last_status: String,
    /// `$NOTIFY_SOCKET` as it was, for a new image of the master (`pmhost upgrade`).
    socket_var: std::ffi::OsString,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` (and `$WATCHDOG_USEC`, `$WATCHDOG_PID`) and removes them from the environment, so
    /// workers and the processes plugins spawn never talk to systemd on the master's behalf. Call it while
    /// single-threaded.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog_usec: Option<u64> = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse().ok());
        let watchdog_pid: Option<u32> = std::env::var("WATCHDOG_PID").ok().and_then(|v| v.parse().ok());
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY: called while the process is single-threaded (see above).
            unsafe { std::env::remove_var(key) };
        }
        let bytes = path.as_encoded_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name).ok()?,
            None => SocketAddr::from_pathname(std::path::Path::new(&path)).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        let ours = watchdog_pid.is_none_or(|pid| pid == std::process::id());
        let watchdog = watchdog_usec.filter(|usec| *usec > 0 && ours).map(Duration::from_micros);
        Some(Notifier { socket, address, watchdog, last_status: String::new(), socket_var: path })
    }

    /// The environment a new image of this master (same pid) reads its notifier from.
    pub fn handover_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let mut env = vec![("NOTIFY_SOCKET", self.socket_var.clone())];
        if let Some(watchdog) = self.watchdog {
            env.push(("WATCHDOG_USEC", watchdog.as_micros().to_string().into()));
            env.push(("WATCHDOG_PID", std::process::id().to_string().into()));
        }
        env
    }

    /// Sends one message (`KEY=value` lines). A lost datagram is not an error worth stopping for.
    pub fn send(&self, message: &str) {
        let _ = self.socket.send_to_addr(message.as_bytes(), &self.address);
    }

    /// `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_owned();
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// `RELOADING=1` (with the monotonic time systemd's notify-reload mode asks for).
    pub fn reloading(&self) {
        let usec = crate::sysinfo::monotonic_ns() / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=restarting"));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// `STATUS=...`, only when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_owned();
            self.send(&format!("STATUS={status}"));
        }
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// How often to send `WATCHDOG=1` (half the interval systemd asked for), if it asked.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|interval| interval / 2)
    }
}
