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
//!   worker fails to load or `init`, logged with the reason, and recorded as the last restart (with
//!   `watched_file`). `pmhost restart` also loads a build in a probe process before it asks the master; the
//!   master never loads plugin code and must not block on a probe, so for a watched build the first new worker
//!   is that check: a process of its own, with the task's init timeout as its deadline, that fails before any
//!   old worker is stopped (the old workers keep their pids). A change during a rollout waits for it: a file's
//!   deadline counts only while no rollout runs or is queued, so it is looked at right after.
//! - **A directory that disappears** (`cargo clean`): the watch moves to the nearest existing parent and waits
//!   for the missing directory to be created, then moves down again and looks at the file, which may already
//!   be there. That too is events, not polling. A watch that cannot be placed at all (no permission, no inotify
//!   instance left) fails a start (asked for and impossible: the user hears it at once); later, after a
//!   rollout moved the task to another file, it is logged, shown as `failed` and tried again at the check tick.
//! - **Upgrade.** inotify descriptors do not survive `execve` usefully (the watches are keyed by this image's
//!   descriptor numbers): the new image places its watches afresh from the tasks' settings and looks at each
//!   file once, so a build replaced during the exec is not missed. The hashes of rolled-back builds are handed
//!   over.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tracing::{debug, error, info, warn};

use super::core::{HostPhase, Master};
use super::plugin_dirs::{Place, PluginWatch, Watched};
use super::rollout::RestartOrder;
use crate::status::WatchStatus;
use crate::sysinfo::Mono;

/// How long a watched plugin file must stay unchanged before it is looked at (see the module docs).
pub(super) const DEBOUNCE: Duration = Duration::from_millis(500);

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

impl Master {
    /// Watches the plugin file of every running task that has `watch` on, and stops watching the others (after
    /// a start, an upgrade, and every rollout, which may change a task's file or setting). `look` has each newly
    /// watched file looked at once (after an upgrade: it may have changed during the exec). Returns why a file
    /// cannot be watched, when one cannot (the first reason).
    pub(super) fn sync_watches(&mut self, look: bool) -> Option<String> {
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
            return None;
        }
        if self.plugin_watch.is_none() {
            match PluginWatch::new() {
                Ok(watch) => self.plugin_watch = Some(watch),
                Err(e) => {
                    let reason = format!("cannot watch plugin files for new builds (inotify: {e})");
                    error!("watch: {reason}; trying again at the next check tick");
                    return Some(reason);
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
        let mut problem = None;
        for (task, file) in wanted {
            if watch.files.iter().any(|f| f.task == task) {
                continue;
            }
            let target = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
            let place = watch.place(&target);
            match &place {
                Place::Nowhere(reason) => {
                    let reason = format!("cannot watch plugin {} for new builds: {reason}", file.display());
                    error!(%task, "watch: {reason}; trying again at every check tick");
                    problem.get_or_insert(reason);
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
        problem
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

    /// Step 5 of a wake-up (after the deadlines): reads what happened to the watched files, and looks at each
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

    /// At the check tick: tries again to watch the files that could not be watched (and to create the inotify
    /// instance, when that failed).
    pub(super) fn retry_watches(&mut self) {
        if self.plugin_watch.is_none() {
            // The inotify instance could not be created (too many open): try again.
            self.sync_watches(false);
        }
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
}
