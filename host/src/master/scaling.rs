//! Changing the number of workers at runtime (`pmhost scale`, SIGTTIN/SIGTTOU) and reading the CLI's control
//! requests (restart to another build, scale).

use std::time::Duration;

use tracing::{info, warn};

use super::core::{HostPhase, Master};
use crate::settings::MAX_WORKERS;
use crate::sysinfo::Mono;

impl Master {
    /// USR2: the CLI left control requests.
    pub(super) fn handle_requests(&mut self) {
        let now_ns = crate::sysinfo::monotonic_ns();
        for request in crate::requests::take_all(self.status_dir()) {
            if request.expired(now_ns) {
                warn!(request = ?request, "dropping a control request its command gave up on (it timed out)");
                continue;
            }
            match request {
                crate::requests::Request::Restart { id, plugin, task, surge, init_timeout_ms, expires_at_mono_ns } => {
                    info!(request = %id, "restart requested");
                    self.restart_queue.push_back(super::rollout::RestartOrder {
                        request_id: Some(id),
                        plugin,
                        task,
                        surge,
                        init_timeout: init_timeout_ms.map(Duration::from_millis),
                        expires_at: expires_at_mono_ns.map(|ns| Mono(Duration::from_nanos(ns))),
                        watched_file: None,
                    });
                }
                crate::requests::Request::Upgrade { id, binary, .. } => {
                    info!(request = %id, "upgrade requested");
                    self.upgrade_wanted = Some(super::handover::UpgradeOrder { request_id: Some(id), binary });
                }
                crate::requests::Request::Scale { id, task, workers, expires_at_mono_ns } => {
                    let error = self.scale_to(task.as_deref(), workers).err();
                    if let (None, Some(ns)) = (&error, expires_at_mono_ns) {
                        // Its command now waits for the workers: their changes are written without delay.
                        self.scale_waited = Some((task.clone(), Mono(Duration::from_nanos(ns))));
                    }
                    self.last_scale = Some(crate::status::ScaleStatus { request_id: id, error });
                }
            }
        }
        self.host_changed();
    }

    /// TTIN/TTOU: one worker more or fewer (never below one) for every task. A burst of these signals within
    /// one wake-up counts as one step in its net direction, so a signal storm cannot fork hundreds of workers.
    pub(super) fn apply_scale_signals(&mut self) {
        let net = std::mem::take(&mut self.scale_signals);
        if net.abs() > 1 {
            info!(net, "coalescing a burst of scale signals into one step");
        }
        if net != 0 {
            self.handle_scale(net.signum());
        }
    }

    fn handle_scale(&mut self, delta: i32) {
        let live: Vec<usize> = (0..self.tasks.len()).filter(|i| !self.tasks[*i].retired).collect();
        for index in live {
            let wanted = self.tasks[index].settings.workers.saturating_add_signed(delta).clamp(1, MAX_WORKERS);
            let name = self.tasks[index].settings.name.clone();
            let _ = self.scale_to(Some(&name), wanted);
        }
    }

    /// Sets the worker count of one task (or of every task); surplus slots are stopped gracefully by
    /// `manage_workers`, the highest first.
    fn scale_to(&mut self, task: Option<&str>, workers: u32) -> Result<(), String> {
        if matches!(self.phase, HostPhase::Stopping { .. }) {
            return Err("the host is stopping".to_owned());
        }
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(format!("worker count {workers} is out of range 1..={MAX_WORKERS}"));
        }
        if let Some(name) = task
            && !self.tasks.iter().any(|t| t.settings.name == name && !t.retired)
        {
            return Err(format!("no task named {name}"));
        }
        for t in self.tasks.iter_mut().filter(|t| !t.retired && task.is_none_or(|name| t.settings.name == name)) {
            if t.settings.workers != workers {
                info!(task = %t.settings.name, from = t.settings.workers, to = workers, "scaling");
                t.settings.workers = workers;
            }
        }
        self.recheck_all = true;
        self.host_changed();
        Ok(())
    }
}
