//! Who a worker runs as and in which environment: the task's `user`, `group`, `environment`, `clear_env`,
//! `working_directory`, `umask` and `nice`, resolved and checked by `pmhost start` (a clear error before anything
//! starts) and applied by each worker after the fork, before the plugin loads (where a failure is the worker's
//! setup failure, reported like a bad resource limit).

use std::ffi::CString;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use crate::settings::ProcessSettings;

/// `PATH` of a worker started from an empty environment when the master has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A user and groups to switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups (the primary group among them).
    pub groups: Vec<Gid>,
    /// The user's name and home directory when the user database knows it (for `USER`, `LOGNAME`, `HOME`).
    pub account: Option<(String, String)>,
}

/// Why a process setting cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProcessError(pub String);

fn fail<T>(message: String) -> Result<T, ProcessError> {
    Err(ProcessError(message))
}

/// The identity the settings ask for (`None`: the master's), checked against the user and group databases and
/// against the master's privileges.
pub fn resolve(settings: &ProcessSettings) -> Result<Option<Identity>, ProcessError> {
    if settings.user.is_none() && settings.group.is_none() {
        return Ok(None);
    }
    let (uid, mut gid, account) = match settings.user.as_deref() {
        Some(user) => {
            let entry = match user.trim().parse::<u32>() {
                Ok(id) => User::from_uid(Uid::from_raw(id)),
                Err(_) => User::from_name(user.trim()),
            }
            .map_err(|e| ProcessError(format!("cannot look up user {user:?}: {e}")))?;
            match (entry, user.trim().parse::<u32>()) {
                (Some(entry), _) => (entry.uid, Some(entry.gid), Some(entry)),
                // A bare id the database does not know: that uid, no supplementary groups.
                (None, Ok(id)) => (Uid::from_raw(id), None, None),
                (None, Err(_)) => return fail(format!("unknown user {user:?}: no such user in the user database")),
            }
        }
        None => (Uid::effective(), None, None),
    };
    if let Some(group) = settings.group.as_deref() {
        let entry = match group.trim().parse::<u32>() {
            Ok(id) => Group::from_gid(Gid::from_raw(id)),
            Err(_) => Group::from_name(group.trim()),
        }
        .map_err(|e| ProcessError(format!("cannot look up group {group:?}: {e}")))?;
        gid = Some(match (entry, group.trim().parse::<u32>()) {
            (Some(entry), _) => entry.gid,
            (None, Ok(id)) => Gid::from_raw(id),
            (None, Err(_)) => return fail(format!("unknown group {group:?}: no such group in the group database")),
        });
    }
    let gid = match (gid, settings.user.is_some()) {
        (Some(gid), _) => gid,
        // A numeric user unknown to the database and no `group`: its id as the group too.
        (None, true) => Gid::from_raw(uid.as_raw()),
        (None, false) => Gid::effective(),
    };
    let mut groups = vec![gid];
    if let Some(entry) = &account {
        let name = CString::new(entry.name.as_str()).map_err(|e| ProcessError(e.to_string()))?;
        let member_of = nix::unistd::getgrouplist(&name, entry.gid)
            .map_err(|e| ProcessError(format!("cannot list the groups of user {}: {e}", entry.name)))?;
        groups.extend(member_of.into_iter().filter(|g| *g != gid));
    }
    let identity = Identity {
        uid,
        gid,
        groups,
        account: account.map(|entry| (entry.name, entry.dir.to_string_lossy().into_owned())),
    };
    let (euid, egid) = (Uid::effective(), Gid::effective());
    if !euid.is_root() && (identity.uid != euid || identity.gid != egid) {
        let asked = match (&settings.user, &settings.group) {
            (Some(user), Some(group)) => format!("user {user:?} and group {group:?}"),
            (Some(user), None) => format!("user {user:?}"),
            (None, group) => format!("group {:?}", group.as_deref().unwrap_or_default()),
        };
        return fail(format!(
            "cannot run workers as {asked}: the master runs as uid {euid}, and only a master running as root \
             can switch user or group"
        ));
    }
    Ok(Some(identity))
}

/// Checks what `pmhost start` can check before anything starts: the user and group exist and may be switched
/// to, the working directory is a directory.
pub fn check(settings: &ProcessSettings) -> Result<(), ProcessError> {
    resolve(settings)?;
    if let Some(dir) = &settings.working_directory {
        check_directory(dir)?;
    }
    for (name, value) in &settings.environment {
        if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
            return fail(format!(
                "environment variable {name:?} cannot be set: a name is not empty and has no = or NUL"
            ));
        }
    }
    Ok(())
}

fn check_directory(dir: &Path) -> Result<(), ProcessError> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => fail(format!("working_directory {} is not a directory", dir.display())),
        Err(e) => fail(format!("working_directory {} cannot be used: {e}", dir.display())),
    }
}

/// Applies the settings to this process (a worker, single-threaded, before any plugin code runs). `keep` are
/// variables `clear_env` keeps besides `PATH` (the worker mark).
pub fn apply(settings: &ProcessSettings, keep: &[&str]) -> Result<(), ProcessError> {
    let identity = resolve(settings)?;
    if let Some(nice) = settings.nice {
        // SAFETY: setpriority on this process; no pointers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
            let errno = nix::Error::last();
            return fail(format!("cannot set nice to {nice}: {errno} (only root can lower the niceness)"));
        }
    }
    if let Some(mask) = settings.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask as libc::mode_t));
    }
    // The worker is single-threaded here, just forked from the single-threaded master, before the plugin loads:
    // nothing reads the environment concurrently (the SAFETY of every set_var/remove_var below).
    if settings.clear_env {
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        for (name, _) in std::env::vars_os() {
            if !keep.iter().any(|k| name == *k) {
                // SAFETY: single-threaded, see above.
                unsafe { std::env::remove_var(&name) };
            }
        }
        // SAFETY: single-threaded, see above.
        unsafe { std::env::set_var("PATH", path) };
    }
    if let Some(Identity { account: Some((name, home)), .. }) = &identity {
        for (var, value) in [("USER", name), ("LOGNAME", name), ("HOME", home)] {
            // SAFETY: single-threaded, see above.
            unsafe { std::env::set_var(var, value) };
        }
    }
    for (name, value) in &settings.environment {
        // SAFETY: single-threaded, see above.
        unsafe { std::env::set_var(name, value) };
    }
    if let Some(identity) = &identity {
        switch_to(identity)?;
    }
    // After the switch: the directory must be usable by the user the worker runs as.
    if let Some(dir) = &settings.working_directory {
        check_directory(dir)?;
        nix::unistd::chdir(dir.as_path())
            .map_err(|e| ProcessError(format!("cannot enter working_directory {}: {e}", dir.display())))?;
    }
    Ok(())
}

fn switch_to(identity: &Identity) -> Result<(), ProcessError> {
    let Identity { uid, gid, groups, .. } = identity;
    let unchanged = *uid == Uid::effective() && *gid == Gid::effective();
    if unchanged && !Uid::effective().is_root() {
        return Ok(());
    }
    nix::unistd::setgroups(groups).map_err(|e| ProcessError(format!("cannot set the groups {groups:?}: {e}")))?;
    nix::unistd::setresgid(*gid, *gid, *gid).map_err(|e| ProcessError(format!("cannot switch to group {gid}: {e}")))?;
    nix::unistd::setresuid(*uid, *uid, *uid).map_err(|e| ProcessError(format!("cannot switch to user {uid}: {e}")))?;
    // A credential change makes the process undumpable (its /proc files root's, no core dumps): the worker is the
    // user's own process now, as if it had been executed as that user.
    let _ = nix::sys::prctl::set_dumpable(true);
    Ok(())
}
