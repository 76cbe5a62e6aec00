//! The quick-start plugin: says hello from every worker and counts its calls.

use pmhost_plugin_api::tracing::info;
use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext, export_job};

#[derive(serde::Deserialize)]
struct Settings {
    /// Who to greet (`[task.config] greeting = "..."`).
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "hello".to_owned()
}

struct Hello {
    settings: Settings,
    calls: u64,
}

impl Job for Hello {
    fn init(ctx: &InitContext<'_>) -> Result<Self, JobError> {
        let settings: Settings = ctx.config()?;
        info!("worker ready");
        Ok(Hello { settings, calls: 0 })
    }

    fn work(&mut self, ctx: &WorkContext<'_>) -> Outcome {
        self.calls += 1;
        info!(call = ctx.execution(), "{} from slot {}", self.settings.greeting, ctx.slot());
        Outcome::Continue
    }

    fn shutdown(&mut self) {
        info!(calls = self.calls, "worker done");
    }
}

export_job!(Hello);
