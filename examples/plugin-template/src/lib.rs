//! A pmhost plugin template: a job that takes items from a queue directory and handles them, one file per
//! `work` call. Copy this crate, rename it, and replace `handle` with your job.

use std::path::PathBuf;

use pmhost_plugin_api::tracing::{info, warn};
use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, export_job};

/// The task's `[task.config]` (or `--task-config` JSON).
#[derive(serde::Deserialize)]
struct Settings {
    /// Directory to take items from; it is created if missing.
    inbox: PathBuf,
    /// Directory to move handled items to.
    #[serde(default)]
    done: Option<PathBuf>,
}

struct QueueJob {
    settings: Settings,
    handled: u64,
}

impl QueueJob {
    /// The job itself: here, log the item and move it to `done` (or delete it).
    fn handle(&mut self, item: &std::path::Path) -> std::io::Result<()> {
        let body = std::fs::read_to_string(item)?;
        info!(item = %item.display(), bytes = body.len(), "handled");
        match &self.settings.done {
            Some(done) => std::fs::rename(item, done.join(item.file_name().unwrap_or_default())),
            None => std::fs::remove_file(item),
        }
    }

    /// The oldest item in the inbox, if any (each worker claims items by renaming them, so two workers never
    /// handle the same one).
    fn claim(&self, slot: u32) -> Option<PathBuf> {
        let mut items: Vec<PathBuf> = std::fs::read_dir(&self.settings.inbox)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_none_or(|e| e != "claimed"))
            .collect();
        items.sort();
        items.into_iter().find_map(|item| {
            let claimed = item.with_extension(format!("{slot}.claimed"));
            std::fs::rename(&item, &claimed).ok().map(|()| claimed)
        })
    }
}

impl Job for QueueJob {
    fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
        let settings: Settings = ctx.config()?;
        std::fs::create_dir_all(&settings.inbox)?;
        if let Some(done) = &settings.done {
            std::fs::create_dir_all(done)?;
        }
        info!(inbox = %settings.inbox.display(), "ready");
        Ok(QueueJob { settings, handled: 0 })
    }

    fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
        let Some(item) = self.claim(ctx.slot()) else { return Outcome::Continue };
        match self.handle(&item) {
            Ok(()) => {
                self.handled += 1;
                Outcome::Continue
            }
            Err(e) => {
                warn!(item = %item.display(), "cannot handle: {e}");
                Outcome::failed(format!("{}: {e}", item.display()))
            }
        }
    }

    fn shutdown(&mut self) {
        info!(handled = self.handled, "bye");
    }
}

export_job!(QueueJob);

/// The job under `cargo test`, without a host: the test kit runs `init`, `work` and `shutdown` as a worker does.
#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use pmhost_plugin_api::testing::{Error, LoopEnd, Worker};
    use pmhost_plugin_api::{Outcome, tracing::Level};

    /// A fresh directory for one test, removed when the test ends.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("job-test-{}-{label}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create the test directory");
            Scratch(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn items_are_handled_one_per_call_and_moved_to_done() {
        let scratch = Scratch::new("handled");
        let (inbox, done) = (scratch.path("inbox"), scratch.path("done"));
        // The config from a value of the test's own (or `.config_toml(...)`, or `.config_json(...)`).
        #[derive(serde::Serialize)]
        struct Config<'a> {
            inbox: &'a Path,
            done: &'a Path,
        }
        let config = Config { inbox: &inbox, done: &done };
        let mut worker = Worker::builder().task("job").slot(1).config(&config).init::<super::QueueJob>().unwrap();
        std::fs::write(inbox.join("a"), "first").unwrap();
        std::fs::write(inbox.join("b"), "second!").unwrap();

        let calls = worker.work_times(3).unwrap();
        assert_eq!(calls.outcomes, [Outcome::Continue, Outcome::Continue, Outcome::Continue]);
        assert_eq!(calls.end, LoopEnd::Limit);
        assert!(names(&inbox).is_empty(), "left in the inbox: {:?}", names(&inbox));
        // Claimed by slot 1, then moved.
        assert_eq!(names(&done), ["a.1.claimed", "b.1.claimed"]);
        worker.shutdown().unwrap();

        let events = worker.events();
        let handled: Vec<_> = events.iter().filter(|e| e.message == "handled").collect();
        assert_eq!(handled.len(), 2);
        assert_eq!(handled[1].field("bytes"), Some("7"));
        assert_eq!(events.last().unwrap().text(), "bye handled=2");
    }

    #[test]
    fn an_item_that_cannot_be_handled_fails_the_call_and_the_job_goes_on() {
        let scratch = Scratch::new("unreadable");
        let inbox = scratch.path("inbox");
        let mut worker =
            Worker::builder().config_toml(&format!("inbox = {:?}", inbox)).init::<super::QueueJob>().unwrap();
        // Not valid UTF-8: read_to_string refuses it.
        std::fs::write(inbox.join("bad"), [0xff, 0xfe]).unwrap();
        let Outcome::Failed(message) = worker.work().unwrap() else { panic!("the call did not fail") };
        assert!(message.contains("bad.0.claimed"), "{message}");
        let warning = worker.events().into_iter().find(|e| e.level == Level::WARN).expect("a warning");
        assert!(warning.message.starts_with("cannot handle"), "{warning:?}");
        assert_eq!(worker.work().unwrap(), Outcome::Continue);
    }

    #[test]
    fn a_config_without_an_inbox_is_refused_as_the_host_reports_it() {
        let error =
            Worker::builder().task("job").config_toml("done = '/tmp/done'").init::<super::QueueJob>().unwrap_err();
        assert!(matches!(error, Error::InitFailed(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            "plugin init failed: invalid [task.config] for task job: missing field `inbox`"
        );
    }
}
