//! A call of the kit into the job: the worker's capture as the thread's subscriber, and the panic hook told that
//! a panic now is the job's (kept for the host's report) rather than the test's (handed on to the test harness).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Dispatch;

/// Set once the kit built a worker in this process: from then on the export glue's panic hook hands panics
/// outside the kit's calls to the test harness's hook (see `export::install_panic_capture`).
static KIT_IN_USE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether this thread is inside a call of the kit into the job.
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
    /// The message of a panic in the job's own `Drop`, caught by the export glue while the kit dropped it.
    static DROP_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps the message of a panic in the job's `Drop` for the kit (the export glue caught it).
pub(crate) fn job_drop_panicked(message: String) {
    DROP_PANIC.with(|last| *last.borrow_mut() = Some(message));
}

/// The message of a panic in the job's `Drop` since the last look, if any.
pub(crate) fn take_drop_panic() -> Option<String> {
    DROP_PANIC.with(|last| last.borrow_mut().take())
}

/// Records that this process uses the kit (before its first call into a job).
pub(crate) fn mark_in_use() {
    KIT_IN_USE.store(true, Ordering::Relaxed);
}

/// Runs `call` into the job with `dispatch` (the worker's capture) as the thread's subscriber, and with the job's
/// panics kept for the export glue.
pub(crate) fn in_call<T>(dispatch: &Dispatch, call: impl FnOnce() -> T) -> T {
    let _inside = InCall::enter();
    tracing::dispatcher::with_default(dispatch, call)
}

/// Marks this thread as inside a call of the kit into the job until dropped.
pub(crate) struct InCall {
    outer: bool,
}

impl InCall {
    pub(crate) fn enter() -> InCall {
        InCall { outer: IN_CALL.replace(true) }
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        IN_CALL.set(self.outer);
    }
}

/// Whether the panic hook should hand this panic on instead of keeping it for the host's report: in a test
/// process using the kit, for a panic outside the kit's calls into the job.
pub(crate) fn passes_on_panics() -> bool {
    KIT_IN_USE.load(Ordering::Relaxed) && !IN_CALL.get()
}
