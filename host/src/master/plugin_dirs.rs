//! The inotify side of `--watch` (see `watch` for the design): where each watched plugin file's watch sits (its
//! directory, or the nearest existing parent while the directory is missing), and what the events of those
//! directories mean for the files.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tracing::{debug, error, info, warn};

use super::watch::DEBOUNCE;
use crate::status::{WatchState, WatchStatus};
use crate::sysinfo::Mono;

/// What every watch asks for. Every watch gets the same mask: inotify keeps one watch per directory, and a
/// second `add_watch` on it replaces the mask.
const MASK: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The most watches tried while placing one file's (a directory created and removed all the while).
const PLACE_ATTEMPTS: usize = 64;

/// Where a file's watch sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Place {
    /// On the file's own directory.
    Directory(WatchDescriptor),
    /// The file's directory is missing: on `at`, its nearest existing parent, until `next` (the directory below
    /// `at` on the way down) appears.
    Parent { wd: WatchDescriptor, at: PathBuf, next: OsString },
    /// Nowhere, for this reason; tried again at the check tick.
    Nowhere(String),
}

impl Place {
    pub(super) fn wd(&self) -> Option<WatchDescriptor> {
        match self {
            Place::Directory(wd) | Place::Parent { wd, .. } => Some(*wd),
            Place::Nowhere(_) => None,
        }
    }
}

/// One watched plugin file.
#[derive(Debug)]
pub(super) struct Watched {
    pub(super) task: String,
    /// The plugin file as the user named it (absolute): what is looked at, rolled out and shown.
    pub(super) file: PathBuf,
    /// Where its bytes live: `file` with symlinks resolved when it was first watched (a link to a build
    /// output changes where the output's directory is).
    pub(super) target: PathBuf,
    pub(super) place: Place,
    /// The file changed: it is looked at once nothing happened to it until then.
    pub(super) settle_at: Option<Mono>,
    /// Someone wrote to it and has not closed it yet.
    pub(super) writing: bool,
}

/// What an event in the file's directory, naming the file, says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Bytes were written; the writer still has it open.
    Written,
    /// A writer closed it.
    Closed,
    /// Another file took the name (a hard link, a rename, a new file).
    Replaced,
    /// The name is gone (deleted, renamed away), perhaps for a moment.
    Removed,
    /// Its metadata changed (mode, link count).
    Touched,
}

/// The change an event mask stands for; `None` for events that say nothing about the file.
fn change_of(mask: AddWatchFlags) -> Option<Change> {
    // One event carries one of these; the order only matters for a mask that would carry several.
    if mask.contains(AddWatchFlags::IN_CLOSE_WRITE) {
        Some(Change::Closed)
    } else if mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
        Some(Change::Replaced)
    } else if mask.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM) {
        Some(Change::Removed)
    } else if mask.contains(AddWatchFlags::IN_MODIFY) {
        Some(Change::Written)
    } else if mask.contains(AddWatchFlags::IN_ATTRIB) {
        Some(Change::Touched)
    } else {
        None
    }
}

/// The watches on the plugin files of a host's watched tasks.
pub(super) struct PluginWatch {
    inotify: Inotify,
    pub(super) files: Vec<Watched>,
    /// How many files use each watch descriptor (files in one directory share it).
    uses: BTreeMap<WatchDescriptor, usize>,
    /// Per task, the hash of the last build this watch rolled out.
    pub(super) tried: BTreeMap<String, String>,
}

impl PluginWatch {
    pub(super) fn new() -> std::io::Result<PluginWatch> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        Ok(PluginWatch { inotify, files: Vec::new(), uses: BTreeMap::new(), tried: BTreeMap::new() })
    }

    /// The descriptor the master polls.
    pub(super) fn as_fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Per task, the hash of the last build this watch rolled out (handed over by an upgrade).
    pub(super) fn tried(&self) -> &BTreeMap<String, String> {
        &self.tried
    }

    /// The earliest deadline of a file that changed.
    pub(super) fn due(&self) -> Option<Mono> {
        self.files.iter().filter_map(|f| f.settle_at).min()
    }

    /// Watches `file`'s directory, or its nearest existing parent when the directory is missing.
    pub(super) fn place(&mut self, file: &Path) -> Place {
        let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) else {
            return Place::Nowhere(format!("{} has no directory", file.display()));
        };
        let mut at = dir.to_path_buf();
        for _ in 0..PLACE_ATTEMPTS {
            match self.inotify.add_watch(&at, MASK) {
                Ok(wd) => {
                    *self.uses.entry(wd).or_default() += 1;
                    if at == dir {
                        return Place::Directory(wd);
                    }
                    let Some(next) = dir.strip_prefix(&at).ok().and_then(|rest| rest.components().next()) else {
                        return Place::Nowhere(format!(
                            "cannot tell which directory below {} to wait for",
                            at.display()
                        ));
                    };
                    let next = next.as_os_str().to_owned();
                    // It may have been created between the failed watch on it and this one: go down again.
                    if at.join(&next).is_dir() {
                        self.release(wd);
                        at = dir.to_path_buf();
                        continue;
                    }
                    return Place::Parent { wd, at, next };
                }
                Err(Errno::ENOENT | Errno::ENOTDIR) => match at.parent() {
                    Some(parent) => at = parent.to_path_buf(),
                    None => return Place::Nowhere(format!("no directory on the way to {} exists", dir.display())),
                },
                Err(e) => return Place::Nowhere(format!("cannot watch {}: {e}", at.display())),
            }
        }
        Place::Nowhere(format!("the directories on the way to {} keep changing", dir.display()))
    }

    /// Gives up one use of a watch descriptor; the watch goes with its last use.
    pub(super) fn release(&mut self, wd: WatchDescriptor) {
        if let Some(count) = self.uses.get_mut(&wd) {
            *count -= 1;
            if *count == 0 {
                self.uses.remove(&wd);
                // Fails harmlessly when the kernel already dropped it (its directory is gone).
                let _ = self.inotify.rm_watch(wd);
            }
        }
    }

    /// Places file `index`'s watch again (its directory went, came back, or could not be watched), logs where
    /// it is now, and has the file looked at when its directory is watched again.
    pub(super) fn replace(&mut self, index: usize, now: Mono) {
        let old = std::mem::replace(&mut self.files[index].place, Place::Nowhere(String::new()));
        if let Some(wd) = old.wd() {
            self.release(wd);
        }
        let (file, target) = (self.files[index].file.clone(), self.files[index].target.clone());
        let place = self.place(&target);
        let watched = &mut self.files[index];
        let dir = target.parent().unwrap_or(Path::new("/")).display();
        match (&old, &place) {
            (Place::Directory(_), Place::Directory(_)) => {
                info!(task = %watched.task, "watch: {dir} was replaced; watching the new one");
            }
            (_, Place::Directory(_)) => info!(task = %watched.task, "watch: {dir} is there again; watching it"),
            (Place::Parent { .. }, Place::Parent { at, .. }) => {
                debug!(task = %watched.task, "watch: on the way down to {dir}: watching {}", at.display())
            }
            (_, Place::Parent { at, next, .. }) => warn!(
                task = %watched.task,
                "watch: {dir}, the directory of plugin {}, is gone (removed or moved, as by `cargo clean`); \
                 watching {} until {} is created again",
                file.display(),
                at.display(),
                at.join(next).display()
            ),
            (_, Place::Nowhere(reason)) => error!(
                task = %watched.task,
                "watch: cannot watch plugin {} for new builds: {reason}; trying again at every check tick",
                file.display()
            ),
        }
        if matches!(place, Place::Directory(_)) {
            watched.settle_at = Some(now + DEBOUNCE);
            watched.writing = false;
        }
        watched.place = place;
    }

    /// Reads every pending event and applies it.
    pub(super) fn read_events(&mut self, now: Mono) {
        loop {
            match self.inotify.read_events() {
                Ok(events) if events.is_empty() => return,
                Ok(events) => {
                    for event in events {
                        self.apply(event, now);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(e) => {
                    warn!("watch: cannot read plugin file events: {e}");
                    return;
                }
            }
        }
    }

    fn apply(&mut self, event: InotifyEvent, now: Mono) {
        if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            warn!("watch: too many file events at once (inotify queue overflow): looking at every watched plugin");
            for file in &mut self.files {
                file.writing = false;
                file.settle_at = Some(now + DEBOUNCE);
            }
            return;
        }
        let users: Vec<usize> = (0..self.files.len()).filter(|&i| self.files[i].place.wd() == Some(event.wd)).collect();
        let gone = AddWatchFlags::IN_IGNORED
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_UNMOUNT;
        if event.mask.intersects(gone) {
            // The watched directory itself went: forget its watch, then place each file's again.
            if self.uses.remove(&event.wd).is_some() {
                let _ = self.inotify.rm_watch(event.wd);
            }
            for index in users {
                self.replace(index, now);
            }
            return;
        }
        let Some(name) = event.name.as_deref() else { return };
        for index in users {
            match &self.files[index].place {
                Place::Directory(_) if Some(name) == self.files[index].target.file_name() => {
                    let Some(change) = change_of(event.mask) else { continue };
                    let watched = &mut self.files[index];
                    debug!(task = %watched.task, ?change, "watch: plugin file event");
                    match change {
                        Change::Written => watched.writing = true,
                        Change::Closed | Change::Replaced | Change::Removed => watched.writing = false,
                        Change::Touched => {}
                    }
                    watched.settle_at = Some(now + DEBOUNCE);
                }
                Place::Parent { next, .. }
                    if name == next.as_os_str()
                        && event.mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) =>
                {
                    self.replace(index, now);
                }
                _ => {}
            }
        }
    }

    /// What the watch on `task`'s file is doing, as status shows it.
    pub(super) fn status(&self, task: &str, now: Mono, rollout_idle: bool) -> Option<WatchStatus> {
        let watched = self.files.iter().find(|f| f.task == task)?;
        let (state, note) = match &watched.place {
            Place::Nowhere(reason) => (WatchState::Failed, Some(reason.clone())),
            Place::Parent { at, next, .. } => {
                (WatchState::DirectoryMissing, Some(format!("waiting for {} to be created", at.join(next).display())))
            }
            Place::Directory(_) => match watched.settle_at {
                Some(at) if at <= now && !rollout_idle => (WatchState::Waiting, None),
                Some(_) => (WatchState::Settling, None),
                None => (WatchState::Watching, None),
            },
        };
        Some(WatchStatus { file: watched.file.display().to_string(), state, note })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_naming_the_file_say_how_it_changed() {
        let cases = [
            (AddWatchFlags::IN_MODIFY, Some(Change::Written)),
            (AddWatchFlags::IN_CLOSE_WRITE, Some(Change::Closed)),
            (AddWatchFlags::IN_CREATE, Some(Change::Replaced)),
            (AddWatchFlags::IN_MOVED_TO, Some(Change::Replaced)),
            (AddWatchFlags::IN_DELETE, Some(Change::Removed)),
            (AddWatchFlags::IN_MOVED_FROM, Some(Change::Removed)),
            (AddWatchFlags::IN_ATTRIB, Some(Change::Touched)),
            (AddWatchFlags::IN_OPEN, None),
            (AddWatchFlags::IN_ACCESS, None),
        ];
        for (mask, change) in cases {
            assert_eq!(change_of(mask), change, "{mask:?}");
        }
    }

    /// Waits (at most 5 s) for the watch's inotify descriptor to be readable, then applies its events.
    fn settle_events(watch: &mut PluginWatch, now: Mono) {
        let mut fds = [nix::poll::PollFd::new(watch.as_fd(), nix::poll::PollFlags::POLLIN)];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(5000u16));
        watch.read_events(now);
    }

    #[test]
    fn a_removed_directory_is_waited_for_from_its_parent_and_watched_again_when_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("target/debug");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("libjob.so");
        let mut watch = PluginWatch::new().unwrap();
        let place = watch.place(&file);
        assert!(matches!(place, Place::Directory(_)), "{place:?}");
        let (task, target) = ("t".to_owned(), file.clone());
        watch.files.push(Watched { task, file: file.clone(), target, place, settle_at: None, writing: false });
        let now = Mono::now();

        // A write in place: the writer has it open until it closes it.
        let mut out = std::fs::File::create(&file).unwrap();
        std::io::Write::write_all(&mut out, b"\x7fELF half").unwrap();
        settle_events(&mut watch, now);
        assert!(watch.files[0].writing && watch.files[0].settle_at == Some(now + DEBOUNCE));
        drop(out);
        settle_events(&mut watch, now);
        assert!(!watch.files[0].writing);

        // `cargo clean`: the watch waits on the nearest existing parent.
        std::fs::remove_dir_all(tmp.path().join("target")).unwrap();
        settle_events(&mut watch, now);
        let Place::Parent { at, next, .. } = &watch.files[0].place else { panic!("{:?}", watch.files[0].place) };
        assert_eq!((at.as_path(), next.as_os_str()), (tmp.path(), std::ffi::OsStr::new("target")));
        let status = watch.status("t", now, true).unwrap();
        assert_eq!(status.state, WatchState::DirectoryMissing, "{status:?}");

        // The build creates the directories again, one level at a time: the watch follows them down.
        std::fs::create_dir(tmp.path().join("target")).unwrap();
        settle_events(&mut watch, now);
        assert!(matches!(&watch.files[0].place, Place::Parent { next, .. } if next == "debug"));
        watch.files[0].settle_at = None;
        std::fs::create_dir(&dir).unwrap();
        settle_events(&mut watch, now);
        assert!(matches!(watch.files[0].place, Place::Directory(_)), "{:?}", watch.files[0].place);
        // Back: the file is looked at (it may be there already).
        assert_eq!(watch.files[0].settle_at, Some(now + DEBOUNCE));
        // Only the directory's watch is left.
        assert_eq!(watch.uses.len(), 1, "{:?}", watch.uses);
    }

    #[test]
    fn status_says_what_the_watch_is_doing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("libjob.so");
        let mut watch = PluginWatch::new().unwrap();
        let place = watch.place(&file);
        let (task, target) = ("t".to_owned(), file.clone());
        watch.files.push(Watched { task, file, target, place, settle_at: None, writing: false });
        let now = Mono::now();
        let state = |watch: &PluginWatch, idle: bool| watch.status("t", now, idle).map(|s| s.state);
        assert_eq!(state(&watch, true), Some(WatchState::Watching));
        watch.files[0].settle_at = Some(now + DEBOUNCE);
        assert_eq!(state(&watch, false), Some(WatchState::Settling));
        // Due, but a rollout runs: the new build waits for it.
        watch.files[0].settle_at = Some(now);
        assert_eq!(state(&watch, false), Some(WatchState::Waiting));
        watch.files[0].place = Place::Nowhere("no permission".into());
        let status = watch.status("t", now, true).unwrap();
        assert_eq!((status.state, status.note.as_deref()), (WatchState::Failed, Some("no permission")));
        assert_eq!(watch.status("other", now, true), None);
    }
}
