//! Criterion micro-benchmarks of a worker's hot path: the scoreboard update, one plugin `work` call through the
//! ABI (the bench plugin's empty mode, loaded the way a worker loads it), and the whole loop iteration shape of
//! `host/src/worker.rs` built from those two.

use std::hint::black_box;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use abi_stable::std_types::RStr;
use criterion::{Criterion, criterion_group, criterion_main};
use pmhost::scoreboard::Scoreboard;
use pmhost_plugin_api::ffi::{HostLogger, WorkResult};
use pmhost_plugin_api::{InitContext, WorkContext};

/// The stop flag a worker's signal handler sets; never set here.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn discard_log(_level: u8, _target: RStr<'_>, _message: RStr<'_>) {}

fn hot_path(c: &mut Criterion) {
    let mut board = Scoreboard::new().expect("map the scoreboard");
    let index = board.claim().expect("a free cell");
    let cell = board.cell(index);

    let mut finished: u64 = 0;
    c.bench_function("scoreboard: begin_work + end_work", |b| {
        b.iter(|| {
            cell.begin_work(black_box(finished));
            finished += 1;
            cell.end_work(black_box(finished));
        })
    });

    let artifacts = pmhost_bench::artifacts::build().expect("build the bench plugin");
    let module = pmhost::plugin::load(&artifacts.plugin, &artifacts.plugin).expect("load the bench plugin");
    let logger = HostLogger { max_level: 0, log: discard_log };
    let pid = std::process::id() as i32;
    let stop_fd = pmhost::worker::open_stop_event().expect("an eventfd").into_raw_fd();
    let init_ctx = InitContext::new("bench", r#"{"mode": "empty"}"#, 0, 1, pid, &STOP, stop_fd, logger);
    let mut job = match (module.init())(&init_ctx).into_result() {
        Ok(job) => job,
        Err(failure) => panic!("bench plugin init failed: {failure:?}"),
    };
    let mut ctx = WorkContext::new(0, 1, &STOP, stop_fd);

    // The result is matched, not passed to black_box: black_box would force the whole `WorkResult` (an enum
    // with string variants) through memory, which the worker never does.
    c.bench_function("plugin: empty `work` call through the ABI", |b| {
        b.iter(|| match job.work(black_box(&ctx)) {
            WorkResult::Continue => {}
            other => panic!("the empty mode returned {other:?}"),
        })
    });

    // The body of the worker loop in host/src/worker.rs, with no limits set (execute_times 0, no deadline, no
    // pause): what the host adds around each call.
    let mut finished: u64 = 0;
    c.bench_function("worker loop iteration: stop check, scoreboard, plugin call, result", |b| {
        b.iter(|| {
            if STOP.load(Ordering::Relaxed) {
                return;
            }
            ctx.set_execution(finished + 1);
            cell.begin_work(finished);
            let result = job.work(&ctx);
            finished += 1;
            cell.end_work(finished);
            match result {
                WorkResult::Continue => {}
                other => panic!("the empty mode returned {other:?}"),
            }
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
