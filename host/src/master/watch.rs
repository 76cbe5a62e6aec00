//! `--watch` (`watch = true`): a new build of a watched task's plugin file is rolled out as soon as it is
//! complete, through the very path `pmhost restart --task T --plugin FILE` takes. Meant for development.
//!
//! # Design
//!
//! - **inotify on the file's directory, not on the file.** Build tools replace their output: cargo hard-links the
//!   linker's output into place (a new inode), others rename a temp file over it. A watch on the file would stay
//!   on the old inode and go quiet. A watch on the directory sees every way the name gets new bytes:
//!   `IN_CREATE` (a hard link), `IN_MOVED_TO` (a rename), `IN_MODIFY` and `IN_CLOSE_WRITE` (an overwrite in
//!   place), `IN_DELETE` and `IN_MOVED_FROM`. Events for other names in the directory are read and dropped: they
//!   cost the master a wake-up only while something in that directory changes. (A plugin path that is a
//!   symbolic link is resolved once, when it is first watched: the directory of the file it points to is
//!   watched.)
//! - **No polling.** The inotify descriptor is one more entry of the master's one `poll` (see `events`), and a
//!   file's debounce is one more deadline of its timer (see `Master::next_deadline`); while nothing changes,
//!   nothing wakes the master. The master keeps its single thread.
//! - **Debounce and stability.** Every event for the file (re)starts a [`DEBOUNCE`] deadline. When it passes,
//!   the file is looked at only if it is still: no event for the whole debounce, no writer that wrote and has
//!   not closed it yet (an `IN_MODIFY` without its `IN_CLOSE_WRITE`: an overwrite in progress, however slowly
//!   it writes), and a modification time at least the debounce old (so a lost event, on an inotify queue
//!   overflow, cannot make a half-written file look still). 500 ms: long enough to cover the pauses of a
//!   writer that reopens the file between chunks and the steps of a build that deletes, then links its
//!   output; short enough that the new build runs about as soon as `cargo build` returns.
//! - **Only new bytes roll out.** A still file is hashed: the bytes of the running build roll nothing out, and
//!   the bytes of a build this watch rolled out that was rolled back are not rolled out again until the file
//!   changes (`pmhost restart` still forces them).
//! - **The rollout is a restart.** A new build becomes a [`RestartOrder`] for its task and file in the master's
//!   restart queue, as a `pmhost restart` request does: staged, rolled slot by slot, rolled back if a new
//!   worker fails to load or `init` (the first new worker is the check: a process of its own, with the task's
//!   init timeout as its deadline), logged with the reason, and recorded as the last restart (with
//!   `watched_file`). A change during a rollout waits for it: a file's deadline counts only while no rollout
//!   runs or is queued, so it is looked at right after.
//! - **A directory that disappears** (`cargo clean`): the watch moves to the nearest existing parent and waits
//!   for the missing directory to be created, then moves down again and looks at the file, which may already
//!   be there. That too is events, not polling; a watch that cannot be placed at all (no permission) is tried
//!   again at the check tick.
//! - **Upgrade.** inotify descriptors do not survive `execve` usefully (the watches are keyed by this image's
//!   descriptor numbers): the new image places its watches afresh from the tasks' settings and looks at each
//!   file once, so a build replaced during the exec is not missed. The hashes of rolled-back builds are handed
//!   over.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tracing::{debug, error, info, warn};

use super::core::{HostPhase, Master};
use super::rollout::RestartOrder;
use crate::status::{WatchState, WatchStatus};
use crate::sysinfo::Mono;

/// How long a watched plugin file must stay unchanged before it is looked at (see the module docs).
pub(super) const DEBOUNCE: Duration = Duration::from_millis(500);

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
enum Place {
    /// On the file's own directory.
    Directory(WatchDescriptor),
    /// The file's directory is missing: on `at`, its nearest existing parent, until `next` (the directory below
    /// `at` on the way down) appears.
    Parent { wd: WatchDescriptor, at: PathBuf, next: OsString },
    /// Nowhere, for this reason; tried again at the check tick.
    Nowhere(String),
}

impl Place {
    fn wd(&self) -> Option<WatchDescriptor> {
        match self {
            Place::Directory(wd) | Place::Parent { wd, .. } => Some(*wd),
            Place::Nowhere(_) => None,
        }
    }
}

/// One watched plugin file.
#[derive(Debug)]
struct Watched {
    task: String,
    /// The plugin file as the user named it (absolute): what is looked at, rolled out and shown.
    file: PathBuf,
    /// Where its bytes live: `file` with symlinks resolved when it was first watched (a link to a build
    /// output changes where the output's directory is).
    target: PathBuf,
    place: Place,
    /// The file changed: it is looked at once nothing happened to it until then.
    settle_at: Option<Mono>,
    /// Someone wrote to it and has not closed it yet.
    writing: bool,
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

/// Whether a file whose debounce is over is still.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stillness {
    /// Its bytes can be looked at.
    Still,
    /// A writer wrote and has not closed it: wait for the close, which brings an event.
    WriterOpen,
    /// Modified less than the debounce ago (an event was lost): wait this much more.
    ModifiedRecently(Duration),
}

fn stillness(writing: bool, modified_ago: Option<Duration>) -> Stillness {
    if writing {
        return Stillness::WriterOpen;
    }
    match modified_ago {
        // A modification time in the future (a clock step) says nothing: the events have been quiet.
        Some(ago) if ago < DEBOUNCE => Stillness::ModifiedRecently(DEBOUNCE - ago),
        _ => Stillness::Still,
    }
}

/// What a complete build in the file means for its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// The task runs these very bytes.
    Running,
    /// This watch rolled these bytes out before and they were rolled back.
    RolledBack,
    /// A new build: roll it out.
    RollOut,
}

fn decide(sha256: &str, running: &str, tried: Option<&str>) -> Decision {
    if sha256 == running {
        Decision::Running
    } else if tried == Some(sha256) {
        Decision::RolledBack
    } else {
        Decision::RollOut
    }
}

/// The watches on the plugin files of a host's watched tasks.
pub(super) struct PluginWatch {
    inotify: Inotify,
    files: Vec<Watched>,
    /// How many files use each watch descriptor (files in one directory share it).
    uses: BTreeMap<WatchDescriptor, usize>,
    /// Per task, the hash of the last build this watch rolled out.
    tried: BTreeMap<String, String>,
}

impl PluginWatch {
    fn new() -> std::io::Result<PluginWatch> {
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
    fn due(&self) -> Option<Mono> {
        self.files.iter().filter_map(|f| f.settle_at).min()
    }

    /// Watches `file`'s directory, or its nearest existing parent when the directory is missing.
    fn place(&mut self, file: &Path) -> Place {
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
    fn release(&mut self, wd: WatchDescriptor) {
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
    fn replace(&mut self, index: usize, now: Mono) {
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
    fn read_events(&mut self, now: Mono) {
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
    fn status(&self, task: &str, now: Mono, rollout_idle: bool) -> Option<WatchStatus> {
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

impl Master {
    /// Watches the plugin file of every running task that has `watch` on, and stops watching the others (after
    /// a start, an upgrade, and every rollout, which may change a task's file or setting). `look` has each newly
    /// watched file looked at once (after an upgrade: it may have changed during the exec).
    pub(super) fn sync_watches(&mut self, look: bool) {
        let wanted: Vec<(String, PathBuf)> = self
            .tasks
            .iter()
            .filter(|t| t.settings.watch && !t.retired)
            .map(|t| (t.settings.name.clone(), t.build.plugin.original.clone()))
            .collect();
        if wanted.is_empty() {
            if self.plugin_watch.take().is_some() {
                info!("watch: no task watches its plugin file any more");
            }
            return;
        }
        if self.plugin_watch.is_none() {
            match PluginWatch::new() {
                Ok(watch) => self.plugin_watch = Some(watch),
                Err(e) => {
                    error!(
                        "watch: cannot watch plugin files for new builds (inotify: {e}); trying again at the next rollout"
                    );
                    return;
                }
            }
        }
        let watch = self.plugin_watch.as_mut().expect("created above");
        let now = Mono::now();
        let stale: Vec<usize> = (0..watch.files.len())
            .filter(|&i| {
                !wanted.iter().any(|(task, file)| *task == watch.files[i].task && *file == watch.files[i].file)
            })
            .collect();
        for index in stale.into_iter().rev() {
            let gone = watch.files.remove(index);
            if let Some(wd) = gone.place.wd() {
                watch.release(wd);
            }
            info!(task = %gone.task, "watch: no longer watching {}", gone.file.display());
        }
        for (task, file) in wanted {
            if watch.files.iter().any(|f| f.task == task) {
                continue;
            }
            let target = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            let place = watch.place(&target);
            match &place {
                Place::Nowhere(reason) => {
                    error!(%task, "watch: cannot watch plugin {} for new builds: {reason}", file.display())
                }
                _ => info!(
                    %task,
                    "watch: watching {} for new builds (rolled out once unchanged for {} ms; meant for development)",
                    file.display(),
                    DEBOUNCE.as_millis()
                ),
            }
            let settle_at = look.then_some(now + DEBOUNCE);
            watch.files.push(Watched { task, file, target, place, settle_at, writing: false });
        }
    }

    /// Takes over the hashes of rolled-back builds from the previous image (`pmhost upgrade`).
    pub(super) fn restore_watch_tried(&mut self, tried: BTreeMap<String, String>) {
        if let Some(watch) = &mut self.plugin_watch {
            watch.tried = tried;
        }
    }

    /// No rollout runs or waits, and the host runs: a new build may be looked at.
    fn rollout_idle(&self) -> bool {
        matches!(self.phase, HostPhase::Running)
            && self.startup.is_none()
            && self.rollout.is_none()
            && self.restart_queue.is_empty()
    }

    /// The next moment a watched file must be looked at (none while a rollout runs: it is looked at after).
    pub(super) fn watch_deadline(&self) -> Option<Mono> {
        self.plugin_watch.as_ref().filter(|_| self.rollout_idle())?.due()
    }

    /// Step 4 of a wake-up (after the deadlines): reads what happened to the watched files, and looks at each
    /// file whose debounce is over, queueing the rollout of a complete new build.
    pub(super) fn handle_plugin_changes(&mut self, readable: bool) {
        let now = Mono::now();
        let Some(watch) = &mut self.plugin_watch else { return };
        if readable {
            watch.read_events(now);
        }
        if !self.rollout_idle() {
            return;
        }
        let watch = self.plugin_watch.as_mut().expect("checked above");
        let settled: Vec<usize> =
            (0..watch.files.len()).filter(|&i| watch.files[i].settle_at.is_some_and(|at| at <= now)).collect();
        for index in settled {
            if self.rollout_idle() {
                self.look_at_build(index, now);
            }
        }
    }

    /// At the check tick: tries again to watch the files that could not be watched.
    pub(super) fn retry_watches(&mut self) {
        let Some(watch) = &mut self.plugin_watch else { return };
        let now = Mono::now();
        for index in 0..watch.files.len() {
            if matches!(watch.files[index].place, Place::Nowhere(_)) {
                watch.replace(index, now);
            }
        }
    }

    /// Looks at watched file `index`, whose debounce is over: when it is still and holds a new build, queues
    /// the rollout of that build.
    fn look_at_build(&mut self, index: usize, now: Mono) {
        let Some(watch) = &mut self.plugin_watch else { return };
        let watched = &mut watch.files[index];
        watched.settle_at = None;
        let (task, file) = (watched.task.clone(), watched.file.clone());
        let modified_ago = match std::fs::metadata(&file) {
            Ok(meta) if meta.is_file() => meta.modified().ok().and_then(|at| SystemTime::now().duration_since(at).ok()),
            Ok(_) => {
                warn!(%task, "watch: {} is not a regular file; waiting for a new build", file.display());
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                info!(%task, "watch: {} is gone (deleted or being rebuilt); waiting for a new build", file.display());
                return;
            }
            Err(e) => {
                warn!(%task, "watch: cannot look at {}: {e}; waiting for its next change", file.display());
                return;
            }
        };
        match stillness(watched.writing, modified_ago) {
            Stillness::Still => {}
            Stillness::WriterOpen => {
                debug!(%task, "watch: {} is still open for writing; waiting for its writer to close it", file.display());
                return;
            }
            Stillness::ModifiedRecently(more) => {
                watched.settle_at = Some(now + more);
                return;
            }
        }
        let sha256 = match crate::plugin::content_hash(&file) {
            Ok(sha256) => sha256,
            Err(e) => {
                warn!(%task, "watch: cannot read {}: {e}; waiting for its next change", file.display());
                return;
            }
        };
        let Some(running) = self.tasks.iter().find(|t| t.settings.name == task).map(|t| &t.build.plugin.sha256) else {
            return;
        };
        let short = &sha256[..12];
        match decide(&sha256, running, watch.tried.get(&task).map(String::as_str)) {
            Decision::Running => {
                info!(%task, build = short, "watch: {} changed but holds the build already running: nothing to roll out", file.display());
            }
            Decision::RolledBack => info!(
                %task,
                build = short,
                "watch: {} holds build {short} again, which was rolled back: not rolled out again until the file \
                 changes (`pmhost restart` forces it)",
                file.display()
            ),
            Decision::RollOut => {
                info!(%task, build = short, "watch: new build of {} is complete: rolling it out", file.display());
                watch.tried.insert(task.clone(), sha256);
                self.restart_queue.push_back(RestartOrder {
                    plugin: Some(file.clone()),
                    task: Some(task),
                    watched_file: Some(file),
                    ..RestartOrder::default()
                });
            }
        }
    }

    /// The watch on `task`'s plugin file, for status.
    pub(super) fn watch_status(&self, task: &str) -> Option<WatchStatus> {
        self.plugin_watch.as_ref()?.status(task, Mono::now(), self.rollout_idle())
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

    #[test]
    fn a_file_is_still_once_closed_and_not_modified_for_the_debounce() {
        let ms = Duration::from_millis;
        let cases = [
            (false, Some(ms(800)), Stillness::Still),
            (false, Some(DEBOUNCE), Stillness::Still),
            (false, Some(ms(200)), Stillness::ModifiedRecently(DEBOUNCE - ms(200))),
            // An overwrite in progress waits for its writer's close, however old its last write.
            (true, Some(ms(10_000)), Stillness::WriterOpen),
            // A modification time in the future (a clock step): the quiet events decide.
            (false, None, Stillness::Still),
        ];
        for (writing, ago, expected) in cases {
            assert_eq!(stillness(writing, ago), expected, "writing {writing}, modified {ago:?} ago");
        }
    }

    #[test]
    fn only_new_bytes_roll_out() {
        let cases = [
            ("aa", "aa", None, Decision::Running),
            ("aa", "aa", Some("aa"), Decision::Running),
            ("bb", "aa", Some("bb"), Decision::RolledBack),
            ("bb", "aa", Some("cc"), Decision::RollOut),
            ("bb", "aa", None, Decision::RollOut),
        ];
        for (sha, running, tried, expected) in cases {
            assert_eq!(decide(sha, running, tried), expected, "{sha} running {running} tried {tried:?}");
        }
    }

    #[test]
    fn the_setting_s_help_states_the_debounce() {
        let watch = crate::settings::TASK_SETTINGS.iter().find(|s| s.key == "watch").expect("a watch setting");
        assert!(watch.help.contains(&format!("{} ms", DEBOUNCE.as_millis())), "{}", watch.help);
        assert!(watch.help.contains("development"), "{}", watch.help);
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
}
