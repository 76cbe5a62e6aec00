//! How the master's state crosses `pmhost upgrade`'s exec: serde adapters for the fields of the handover record
//! (see [`super::handover`]) that are not plain data — pids, shared values, static labels, and staged builds,
//! which travel as the numbers of descriptors the new image takes over.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// `Pid` as its number.
pub(super) mod pid {
    use super::*;

    pub fn serialize<S: serde::Serializer>(pid: &Pid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(pid.as_raw())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Pid, D::Error> {
        Ok(Pid::from_raw(i32::deserialize(d)?))
    }
}

/// An `Arc` by its value.
pub(super) mod arc {
    use super::*;

    pub fn serialize<S: serde::Serializer, T: Serialize>(value: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
        T::serialize(value, s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Arc<T>, D::Error> {
        Ok(Arc::new(T::deserialize(d)?))
    }
}

/// Exit counters by their metrics label.
pub(super) mod exits {
    use super::*;

    const LABELS: [&str; 4] = ["normal", "stopped", "killed", "crash"];

    pub fn serialize<S: serde::Serializer>(exits: &BTreeMap<&'static str, u64>, s: S) -> Result<S::Ok, S::Error> {
        exits.serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<&'static str, u64>, D::Error> {
        let read = BTreeMap::<String, u64>::deserialize(d)?;
        Ok(read.into_iter().filter_map(|(k, v)| LABELS.iter().find(|l| **l == k).map(|l| (*l, v))).collect())
    }
}

/// A staged build by its held descriptor's number; builds sharing a descriptor share it again after the exec.
pub(super) mod staged {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;
    use crate::plugin::StagedPlugin;

    thread_local! {
        static HELD: RefCell<HashMap<RawFd, Arc<OwnedFd>>> = RefCell::new(HashMap::new());
    }

    #[derive(Serialize, Deserialize)]
    struct Handed {
        original: PathBuf,
        staged: PathBuf,
        sha256: String,
        fd: RawFd,
    }

    pub fn serialize<S: serde::Serializer>(plugin: &StagedPlugin, s: S) -> Result<S::Ok, S::Error> {
        Handed {
            original: plugin.original.clone(),
            staged: plugin.staged.clone(),
            sha256: plugin.sha256.clone(),
            fd: plugin.raw_fd(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StagedPlugin, D::Error> {
        let handed = Handed::deserialize(d)?;
        let held = HELD.with(|held| {
            held.borrow_mut()
                .entry(handed.fd)
                .or_insert_with(|| {
                    // `--handover-check` only reads: it must not take (and close) descriptors it was not given.
                    if std::env::args_os().nth(1).is_some_and(|a| a == "--handover-check") {
                        return Arc::new(nix::unistd::dup(std::io::stdin().as_fd()).expect("dup stdin"));
                    }
                    // A duplicate: the original stays open for a rollback until the new image runs (the map
                    // shares one duplicate between the builds that name it).
                    Arc::new(super::super::handover::duplicate(handed.fd).unwrap_or_else(|e| panic!("{e}")))
                })
                .clone()
        });
        Ok(StagedPlugin::handed_over(handed.original, handed.staged, handed.sha256, held))
    }

    /// The descriptors taken over so far.
    pub fn held_fds() -> Vec<RawFd> {
        HELD.with(|held| held.borrow().keys().copied().collect())
    }
}
