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
        info!(slot = ctx.slot(), inbox = %settings.inbox.display(), "ready");
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
