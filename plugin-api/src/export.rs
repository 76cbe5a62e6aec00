//! The glue `export_job!` expands to: a root module built for the author's `Job` type, with every entry point
//! guarded so that a panic becomes an error value instead of crossing the FFI boundary.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::prefix_type::WithMetadata;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::staticref;
use abi_stable::std_types::{RErr, RNone, ROk, ROption, RResult, RSome, RStr, RString};

use crate::context::{InitContext, WorkContext};
use crate::ffi::{InitFailure, JobBox, PluginModule, PluginModuleRef, RawJob, RawJob_TO, WorkResult};
use crate::{Job, Outcome, bridge};

/// The plugin-api version compiled into every plugin, as a C string (read by the host before the layout check,
/// so a mismatch can name the version the plugin was built against).
pub const API_VERSION_TEXT: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
/// Length of [`API_VERSION_CSTR`].
pub const API_VERSION_LEN: usize = API_VERSION_TEXT.len();
/// The version text as a byte array, for the exported `pmhost_plugin_api_version` symbol.
pub const API_VERSION_CSTR: [u8; API_VERSION_LEN] = {
    let bytes = API_VERSION_TEXT.as_bytes();
    let mut out = [0u8; API_VERSION_LEN];
    let mut i = 0;
    while i < bytes.len() {
        out[i] = bytes[i];
        i += 1;
    }
    out
};

struct Glue<J>(PhantomData<J>);

impl<J: Job> Glue<J> {
    staticref!(const MODULE: WithMetadata<PluginModule> = WithMetadata::new(PluginModule {
        api_version: RStr::from_str(env!("CARGO_PKG_VERSION")),
        init: init_job::<J>,
    }));
}

/// The root module for job type `J`.
pub fn root_module<J: Job>() -> PluginModuleRef {
    PluginModuleRef(Glue::<J>::MODULE.as_prefix())
}

extern "C" fn init_job<J: Job>(ctx: &InitContext<'_>) -> RResult<JobBox, InitFailure> {
    bridge::install(ctx.logger());
    install_panic_capture();
    match guarded(|| J::init(ctx)) {
        Ok(Ok(job)) => ROk(RawJob_TO::from_value(Adapter(ManuallyDrop::new(job)), TD_Opaque)),
        Ok(Err(error)) => RErr(InitFailure::Failed(error.to_string().into())),
        Err(panic) => RErr(InitFailure::Panicked(panic.into())),
    }
}

/// The job behind the FFI boundary. Its drop is guarded like every other call into it: the host never drops a
/// job (its worker exits), but the test kit does, and a panic in the job's own `Drop` reaching abi_stable's
/// drop glue would abort the whole test process without the message.
struct Adapter<J>(ManuallyDrop<J>);

impl<J> Drop for Adapter<J> {
    fn drop(&mut self) {
        // SAFETY: the job is dropped once, here, and never used again.
        let dropped = guarded(|| unsafe { ManuallyDrop::drop(&mut self.0) });
        if let Err(message) = dropped {
            #[cfg(feature = "testing")]
            crate::testing::job_drop_panicked(message);
            #[cfg(not(feature = "testing"))]
            drop(message);
        }
    }
}

impl<J: Job> RawJob for Adapter<J> {
    #[inline]
    fn work(&mut self, ctx: &WorkContext<'_>) -> WorkResult {
        match guarded(|| self.0.work(ctx)) {
            Ok(Outcome::Continue) => WorkResult::Continue,
            Ok(Outcome::Retire) => WorkResult::Retire,
            Ok(Outcome::Failed(message)) => WorkResult::Failed(message.into()),
            Err(panic) => WorkResult::Panicked(panic.into()),
        }
    }

    fn shutdown(&mut self) -> ROption<RString> {
        match guarded(|| self.0.shutdown()) {
            Ok(()) => RNone,
            Err(panic) => RSome(panic.into()),
        }
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the plugin's panic hook (the plugin has its own copy of std, so this does not touch the host's) with
/// one that keeps the message and location for the host instead of printing to stderr.
///
/// In a test process (feature `testing`), the kit shares std with the test harness: there the hook keeps the
/// message only for panics inside the kit's calls into the job, and hands every other panic (a failed
/// assertion in the test itself) to the hook it replaced, so the test's output still shows it.
fn install_panic_capture() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        #[cfg(feature = "testing")]
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            #[cfg(feature = "testing")]
            if crate::testing::passes_on_panics() {
                return previous(info);
            }
            let message = payload_text(info.payload());
            let text = match info.location() {
                Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
                None => message,
            };
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
        }));
    });
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// Runs `f`, turning a panic into its message.
#[inline]
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(f))
        .map_err(|payload| LAST_PANIC.with(|last| last.borrow_mut().take()).unwrap_or_else(|| payload_text(&*payload)))
}

/// Exports a [`Job`](crate::Job) type as this library's pmhost plugin. Call it once, in the crate root of a
/// `cdylib` crate.
///
/// ```
/// use pmhost_plugin_api::{InitContext, Job, JobError, Outcome, WorkContext};
///
/// struct Mailer;
///
/// impl Job for Mailer {
///     fn init(_ctx: &InitContext<'_>) -> Result<Self, JobError> { Ok(Mailer) }
///     fn work(&mut self, _ctx: &WorkContext<'_>) -> Outcome { Outcome::Continue }
/// }
///
/// pmhost_plugin_api::export_job!(Mailer);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_job {
    ($job:ty) => {
        /// The plugin-api version this plugin was built against (read by the host before loading).
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static pmhost_plugin_api_version: [u8; $crate::__private::API_VERSION_LEN] =
            $crate::__private::API_VERSION_CSTR;

        /// abi_stable's library header: the host's loader finds the root module through it.
        #[unsafe(no_mangle)]
        #[allow(non_upper_case_globals)]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::__private::LibHeader = {
            extern "C" fn erased_root_module() -> $crate::__private::RootModuleResult {
                $crate::__private::__call_root_module_loader(|| $crate::__private::root_module::<$job>())
            }
            // SAFETY: the header is built for the root module type that `erased_root_module` returns.
            unsafe {
                $crate::__private::LibHeader::from_constructor::<$crate::__private::PluginModuleRef>(
                    erased_root_module,
                    $crate::__private::CheckTypeLayout::Yes,
                )
            }
        };
    };
}
