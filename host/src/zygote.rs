//! A zygote: one process per build (a generation and a staged plugin file) that loads and checks the plugin
//! once, then forks the workers of every task running that build on the master's request, already loaded.
//!
//! # Why
//!
//! Measured on main (2 cores, release, `--execute-times 1 --execute-usleep 0`, perf): a worker spent most of its
//! short life in the dynamic loader (relocations, symbol lookup) and in abi_stable's layout check, and the
//! master spent ~250 µs per spawn, much of it copying its own page tables in `fork`. A zygote pays the load once
//! per build, and its children share its already relocated plugin pages.
//!
//! # How
//!
//! - The master forks the zygote (lazily, the first time a task's build is spawned) with one end of each of two
//!   `SOCK_SEQPACKET` socket pairs: the *control* socket (the ready byte, templates) and the *request queue*
//!   (spawn requests, read by the zygote's spare or by the zygote itself, see "Spares" below). The master's
//!   ends are non-blocking. The zygote closes everything else the master holds, dies with the master
//!   (`PR_SET_PDEATHSIG` = SIGKILL), loads the plugin through the descriptor the master opened and hash-checked
//!   (`StagedPlugin::load_path`, `/proc/self/fd/N`: the trust property of a cold spawn is kept), and says it is
//!   ready with one byte. Until then, and whenever it is gone, the master spawns cold (forks the worker itself):
//!   a zygote is a cache.
//! - A request is one message on the queue: the task, slot and scoreboard cell, with the worker's two capture
//!   pipe ends attached (`SCM_RIGHTS`) when its output is captured. A full queue means "spawn cold".
//! - **One zygote per build, shared by tasks.** Tasks that run the same plugin file share one staged copy, and
//!   a restart gives them all the same generation: they share one zygote too. What differs between them (name,
//!   title, limits, `[task.config]`, process settings) is a [`TaskTemplate`], which the master sends once per
//!   task and zygote, on the control socket before that task's first request on the queue (the zygote's own
//!   task comes with its fork). Measured
//!   (64 tasks × 16 workers of one plugin, 2 cores): a restart started 64 zygotes, each loading the 6.7 MiB
//!   plugin while that task's first slots were forked cold (69 cold spawns of 1024), and took 1.87–1.89 s
//!   against 0.94–1.02 s for one task of 1024 workers. With one zygote for all 64 tasks: 1.34–1.65 s in the
//!   bench (load 2–2.6; `pmhost restart` itself reported 1.59 s before, 0.87–1.13 s after). What the master
//!   still spends in such a restart (`perf record -g`, cpu-clock): 17 % in the kernel's `wait_consider_task`,
//!   the scan of all its children that each `waitid(P_ALL)` makes (the stop check and the reap loop make about
//!   two full scans per wake-up), 4 % in `copy_page_range` (the zygote's fork of the master and its clones).
//!   Stops and exits now come from one scan (`master::children::reap_workers`): 17 → 11 % of the master's
//!   samples in the same restart. The zygote `clone`s with `CLONE_PARENT`, so the worker is the
//!   master's own child: the master reaps, signals and supervises it exactly like a cold one, and the worker's
//!   `PR_SET_PDEATHSIG` follows the master. The zygote does not answer: the new worker's first act is a
//!   `Spawned { pid, cell }` record on the report pipe, and a failed `clone` is a `SpawnFailed { cell }` record
//!   from the zygote. The master never waits for a zygote (see `master::warm` for why and how).
//! - The worker then runs the same path as a cold one ([`crate::worker::run`]: process setup, title, rlimits,
//!   process group, pdeathsig, `init`, the loop), minus the load.
//! - The zygote itself keeps the master's blocked signal mask, so nothing but SIGKILL ends it: the master kills it
//!   when a rollout leaves its build unused and when it stops; the zygote ends on its own when the master closes
//!   its sockets (which it does whenever it kills or forgets a zygote: they close with the master's record of it).
//!
//! The master never loads plugin code: the zygote is a separate process, forked before any load.
//!
//! # Where a warm spawn's time goes (measured, issue 14)
//!
//! `perf record -a` (cpu-clock; this VM has no hardware counters) and a page-fault trace over a churn of 2 slots
//! (`--execute-times 1 --execute-usleep 0`, bench plugin), 2 cores: the CPU of one worker's whole life, summed
//! over the master (its utime+stime+cutime+cstime: warm workers are its children) and the zygote, was about
//! 560 µs: master ~75 µs, the zygote's `clone` ~105 µs (copying its page tables), the worker ~380 µs. Of the
//! worker's time, 46 % were page faults and 23 % the teardown of its address space at exit; in numbers, 94
//! page faults per worker: 43 on code (pmhost 23, libc 9, the plugin 6, ...: a fork maps no file page of its
//! parent, each 64 KiB window of code it runs faults once), 23 copy-on-write faults on the zygote's heap (glibc
//! malloc walking free lists spread over the inherited heap), 12 % of its time setting its title (a read of
//! `/proc/self/stat` and a copy of the whole environment by `setenv`) and 5 % the `PMHOST_WORKER` mark
//! (`setenv` again). Now the title reuses the argv area and relocated environment the worker inherits
//! (`title`), the mark is written into a placeholder the zygote set (`worker::mark_environment`): 76 faults per
//! worker, 14 of them on the heap.
//!
//! What that means for the targets: two slots turning over on two cores are bound by the CPU of a worker's
//! life, not by latency (the cores were 80–85 % busy). 5 000 workers/s needs at most ~400 µs of CPU per worker
//! for all processes together; the remaining cost is mostly the kernel's (clone, faults, exit): on this machine
//! a bare `fork` + `_exit` + `waitpid` of a small C program (libc only) costs 147–200 µs of CPU per cycle,
//! depending on the hour (the VM's host).
//!
//! Since: the zygote trims its heap (`malloc_trim`) once its plugin is loaded, before its first clone: its
//! private memory went from 668 to 564 KiB (heap 276 → 164 KiB), which every clone copies the page table of
//! and every worker tears down. Measured A/B over 2 s of churn (2 slots, `--execute-times 1
//! --execute-usleep 0`, load ~4, interleaved), from the master's `cminflt` and `cutime+cstime` (the workers
//! are its children): per worker 67–75 → 66–68 page faults and 263–278 → 246–248 µs of CPU; the master's
//! own CPU unchanged (53–55 µs per worker).
//!
//! Where a warm worker's page faults and syscalls are now (per worker, same churn; `perf record -e page-faults
//! -d` over the worker pids, addresses mapped through the zygote's `/proc/PID/maps`; `strace -f`): 25 syscalls
//! (4 `close_range`, 4 `getpid`, 2 `rt_sigaction`, 2 `dup2`, 2 `write`, 2 `prctl`, the rest one each, down to
//! `sigaltstack` + `munmap` + `exit_group` at exit) and 78–84 faults: ~40 on code (pmhost 19, libc 9, the
//! plugin 4, ld.so 3, libgcc_s 2), ~19 copy-on-write on the heap (malloc, `malloc_consolidate` and
//! `unlink_chunk` writing chunk headers spread over the inherited heap; the worker's tracing span), ~10 in
//! `exit` (`_dl_fini`, exit handlers, libgcc_s frame deregistration, stdout's cleanup), the rest stack, data
//! and the scoreboard. Syscalls are not the lever: installing the stop handlers in the zygote and reading the
//! pid once (25 → 20 syscalls) and moving each task's prepared spec into the clone instead of cloning the
//! template's strings left faults (80 → 80) and churn (3 157–3 287 → 3 022–3 165 /s, load 1.2–23, interleaved)
//! unchanged within noise, so they were not kept. Ending a worker with `_exit` after flushing stdout and C
//! stdio measured 78–81 → 70–74 faults and 2 964–3 255 → 3 311–3 621 workers/s (3 interleaved runs, load
//! 5–6), but skips what `exit` runs for the plugin: its `atexit` handlers, ELF destructors and the main
//! thread's thread-local destructors (a plugin's buffered writer in a `thread_local!` would lose its tail); it
//! is not taken without an opt-in.
//!
//! # Spares: the next worker, cloned ahead, reading the request queue itself
//!
//! Measured with a timestamp at each step of one slot turning over (`--execute-times 1`, 2 cores): of the
//! ~0.37 ms from the master's request to the new worker's first call, ~115 µs passed between the request and
//! the clone's return in the zygote, ~230 µs between the clone and `init`, almost all of it first touches of
//! code and heap pages (page faults), wherever they fell. So after serving a request, a zygote clones the next
//! worker at once, a **spare**, while nothing waits for it:
//!
//! - The spare is a `CLONE_PARENT` child like any worker. While it waits it does what does not depend on its
//!   request: its process group, the stop event and handlers, the signal mask
//!   (`worker::prepare_signals_and_group`), the spec of the task it expects (that of the zygote's last request)
//!   and a title, `…:Spare:TASK` (comm `S:TASK`): `ps` never shows it as a worker, and the worker's title later
//!   costs a cheap second write.
//! - **It reads the request queue itself**: it polls the queue (beside its stop event and its end of the
//!   zygote's *spare channel*, below) and takes the next request with one `recvmsg` (`SOCK_SEQPACKET`: each
//!   message, its descriptors with it, goes to exactly one reader). It then tells the zygote it was taken (one
//!   "taken" message on the spare channel: its pid and the task it serves, the task the next spare is prepared
//!   for) and becomes the worker exactly as a directly cloned one (its first act is the `Spawned` report, see
//!   `master::warm`). The zygote is off the request's path: it clones the next spare once it reads "taken".
//! - **The spare channel** is a `SOCK_SEQPACKET` pair the zygote makes once: it reads one end, spares keep the
//!   other and close the zygote's end right after their clone, so the zygote's death hangs their end up
//!   (`POLLHUP`) and ends them. A spare also ends when the master closes the queue (it kills or forgets the
//!   zygote), without reading: a spare never runs plugin code before it has a request, and ends with `_exit`,
//!   running none of the plugin's exit handlers, as it ran none of its code.
//! - **A template newer than the spare.** The master sends a task's template (control socket) before that
//!   task's first request (queue), but the spare was cloned with the templates of its time: a request for a
//!   task it has no template of it gives back (the same message, descriptors attached, on the spare channel,
//!   after a "taken" of its own so the zygote stops counting it as waiting) and ends. The zygote reads its control socket first (the template is there by then) and clones that
//!   request directly, or reports `SpawnFailed` if the task is still unknown. So a new template no longer
//!   discards the waiting spare: killing it could lose a request it had just taken (a `SIGKILL` ends a process
//!   between its `recvmsg` and its next step), which would cost that slot the answer deadline; giving back
//!   costs one hop, once per task and zygote. (A template replacing one the spares hold, which the master never
//!   sends, ends the zygote and so its spares, unread.)
//! - **A spare that ends unasked** (killed by hand, told to stop) is noticed at once: a
//!   spare is the master's child, so the master reaps it, as a child it does not know of, and tells every
//!   zygote so on its control socket (a *gone* notice with the pid); the zygote whose spare it was drops it
//!   and clones the next. Requests queued meanwhile wait in the queue for the replacement, or for the zygote
//!   itself (below); none is lost. A spare told to stop (SIGTERM, SIGINT) ends without reading (its stop event
//!   wakes its poll), rather than becoming a worker that begins stopped. A spare stopped with SIGSTOP takes
//!   nothing and the zygote, which leaves the queue to it, reads nothing: the zygote is given up on after
//!   `master::warm`'s answer deadline, as one stopped itself would be.
//!   Until this release each spare was cloned with a pidfd (`clone3` with `CLONE_PIDFD`) that the zygote
//!   polled. A C probe on this machine timed that pidfd at 4–7 µs more per `clone3` and 3.2 µs per `close`,
//!   for every worker a spare became; a spare ending unasked is rare, and the master sees it anyway.
//! - **Not while requests are queued** (a start or a rollout asking for many workers): with no spare waiting,
//!   the zygote reads the queue itself and clones each request directly, and clones the next spare only once
//!   the queue is empty (a spare would be one more hop each). It applies its workers' footprint
//!   ([`footprint`]) just before cloning spares, and keeps [`SPARES`] (two) waiting: with one, two slots that
//!   ended together had the second request cloned directly (below). (In the first version, where each request
//!   went through the zygote, a second spare was measured slower: its clone held up the next hand-over.) If a
//!   spare cannot be cloned, the zygote reads the queue itself until the next request is served (then tries
//!   again), so no request waits for nobody.
//! - The master never learns of a spare before it reports: a spare is only ever a child it reaps without
//!   knowing (debug log "reaped an adopted orphan"). The orphan scan leaves it alone (its environment area holds
//!   its title, no worker mark); a stop ends it with every other adopted process.
//!
//! Measured, first version (the zygote received each request and handed it to its spare over a socket pair of
//! the spare's own; `pmhost-bench`, pmhost's own request → first call measure, one slot turning over): 0.37 →
//! 0.21–0.23 ms median; the pre-request setup accounts for ~40 µs of that, the title for ~15 µs.
//! Tried and not kept then: handing every request to a spare even with requests queued (one more hop per worker
//! on a saturated machine: 0.31 → 0.34 ms), yielding the CPU to the woken spare before cloning the next (it
//! delayed the next spare past the next request: 0.21 → 0.25 ms with one slot), moving the task's template
//! into the worker's spec instead of cloning it (the page faults moved to the next allocation).
//!
//! That hand-over cost the zygote, per worker, a `recvmsg` and a `sendmsg` with descriptors, a `socketpair`
//! and its closes, and put one more wake-up (master → zygote → spare) on every spawn's path. With the queue
//! (counted with `perf stat -i -e 'syscalls:sys_enter_*'` on the zygote over 2 s of churn, 2 slots,
//! `--execute-times 1 --execute-usleep 0`, bench plugin): before, 7 650 requests took 7 650 `clone`, 7 651
//! `recvmsg`, 7 650 `recvfrom` (the peek for queued requests), 5 557 `sendmsg` + `socketpair` (hand-overs),
//! 26 415 `close`: ~7.9 syscalls per worker; after, 8 158 workers, 5 237 of them taken by a spare and 2 921
//! cloned directly (two slots ending together: the second request finds the spare taken), took 5 237 `clone3`
//! and as many `poll`, 2 921 `clone`, 14 126 `recvmsg`, 11 079 `close` (the capture ends of direct clones, the
//! pidfds): ~4.7 per worker. The zygote's CPU per worker stays ~150 µs: its `clone`, copying its page tables, is ~88 %
//! of it either way. Churn, interleaved A/B (`ab.sh`: 5 rounds of 3 s, medians; 2 cores shared with other
//! work, load 1–3; six series over 15 minutes, before → after):
//!
//! | series | workers/s     | spawn latency (median, ms) | CPU per worker, all (µs) |
//! |--------|---------------|----------------------------|--------------------------|
//! | 1      | 4 146 → 4 288 | 0.261 → 0.239              | 407 → 380                |
//! | 2      | 4 177 → 3 992 | 0.268 → 0.214              | 413 → 399                |
//! | 3      | 3 935 → 4 203 | 0.281 → 0.215              | 418 → 379                |
//! | 4      | 4 094 → 4 347 | 0.272 → 0.204              | 411 → 377                |
//! | 5      | 4 043 → 4 126 | 0.274 → 0.220              | 413 → 388                |
//! | 6      | 3 901 → 4 104 | 0.276 → 0.255              | 420 → 394                |
//!
//! The spawn latency (pmhost's own, request → first call) and the CPU per worker went down in every series
//! (workers 200–207 → 176–189 µs: a spare's wait is one `poll` and one `recvmsg` on a shared socket, no
//! socket pair of its own; the master 55–59 → 48–54 µs); workers/s rose in five of six, by ~4 % in the
//! median, within the ±3 % two identical binaries showed against each other. 5 000 workers/s is not reached:
//! two slots on two cores stay bound by the CPU of a worker's life (~385 µs for all processes), of which the
//! zygote's clone is ~150. A start of 1 024 workers (`pmhost start -d`, 9 interleaved runs): 186–260 →
//! 177–207 ms; `pmhost restart` of 1 024: 687–895 → 649–734 ms: no slower.
//! Tried and not kept: the taken spare telling the zygote after its `Spawned` report rather than before (the
//! master first, the next spare's clone later): 4 126 → 4 210 workers/s, 0.220 → 0.224 ms, within noise.
//! Without spares (as without `clone3`), one run: 2 874 workers/s, 0.454 ms.
//!
//! Also measured and not kept, against the CPU of a worker's life (churn of 2 slots, interleaved A/B): giving the
//! zygote's code mappings an anon_vma (one byte rewritten through `/proc/self/mem`) so that each clone copies
//! their page table entries instead of each worker faulting them in: the worker's CPU 310 → 275 µs, the
//! zygote's clone 93 → 129 µs, a wash (and worse with the whole text populated first); `MADV_RANDOM` on the
//! zygote's file mappings (no fault-around, so fewer pages to map and tear down): more faults, 483 → 533 µs
//! per worker in all.
//!
//! What did pay is doing both with the exact set of pages a worker uses ([`footprint`]): a zygote learns
//! it from one worker's whole life, then maps exactly those code pages (not every 64 KiB window it or a worker
//! ever touched) with an anon_vma, and pins the pages workers write so that the kernel copies them at fork
//! rather than on a fault: 69 → 9 page faults per worker, 3 677 → 3 952 workers/s; the floor that remains is
//! the fork itself (its page tables), measured in that module's docs.

pub mod footprint;
mod protocol;
mod spare;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::exit::worker as code;
use crate::scoreboard::{CellIndex, Scoreboard};
use crate::worker::WorkerSpec;
use pmhost_plugin_api::ffi::PluginModuleRef;
pub use protocol::{MAX_MESSAGE, READY, Request, TaskTemplate, send, send_gone, send_template};
use protocol::{Message, Received, TAKEN, capture_ends, receive, send_with};

/// Runs a zygote for the build of `template` (its slot and output are per request, and its task settings are
/// those of the task a request names, see [`TaskTemplate`]); never returns. `index` is `template`'s task;
/// `control` carries the ready byte and templates, `queue` the master's requests (read by the zygote's spare,
/// or by the zygote itself when it has none).
pub fn run(index: u32, template: WorkerSpec, board: &'static Scoreboard, control: OwnedFd, queue: OwnedFd) -> ! {
    let mut keep = vec![template.report_fd, template.plugin.raw_fd(), control.as_raw_fd(), queue.as_raw_fd()];
    keep.extend(crate::logging::open_fds());
    crate::worker::close_all_but(&keep);
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || nix::unistd::getppid() != template.master
    {
        std::process::exit(code::ORPHANED);
    }
    let title = template.title.replace(":Worker:", ":Zygote:");
    crate::title::set(&title);
    crate::logging::set_title(&title);
    let module = match crate::plugin::load(&template.plugin.load_path(), &template.plugin.original) {
        Ok(module) => module,
        Err(e) => {
            // The master falls back to cold spawns, whose workers report the error as theirs.
            tracing::debug!("zygote cannot load its plugin: {e}");
            std::process::exit(code::LOAD_FAILED);
        }
    };
    // Every clone copies the page table entries of this process's private pages and every worker tears them
    // down at exit: the heap's free pages (what the master's start and the plugin's load freed) go first.
    // SAFETY: malloc_trim only trims the allocator's free lists; the zygote is single-threaded.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    // Room for each worker's pid in its environment mark, written in place (see `worker::mark_environment`).
    // SAFETY: the zygote is single-threaded; nothing reads the environment concurrently.
    unsafe { std::env::set_var(crate::master::WORKER_MARK, crate::worker::MARK_PLACEHOLDER) };
    footprint::prepare();
    let channel = spare::Channel::new();
    if nix::unistd::write(&control, &[READY]).is_err() {
        std::process::exit(code::OK);
    }
    let build = Loaded { template: &template, module, board };
    let mut zygote = Zygote {
        build: &build,
        tasks: vec![TaskTemplate::of(index, &template)],
        control,
        queue,
        channel,
        spares: Vec::with_capacity(SPARES),
        expected: index,
        want_spare: false,
        buffer: vec![0u8; MAX_MESSAGE],
    };
    loop {
        zygote.serve();
    }
}

/// How many spares a zygote keeps waiting. With one, two slots that ended together had their second request
/// cloned directly by the zygote (36 % of a 2-slot churn's workers): measured (2 slots, `--execute-times 1
/// --execute-usleep 0`, interleaved A/B, 6 runs of 3 s), one spare 4 404 workers/s, two 4 570, three 4 560. A
/// spare costs a process in the master's table (its kernel stack, page tables and the pages it wrote waiting,
/// ~100 KiB) while it waits.
const SPARES: usize = 2;

/// A zygote's state between wake-ups.
struct Zygote<'a> {
    build: &'a Loaded<'a>,
    /// The templates of the tasks it serves (its own first).
    tasks: Vec<TaskTemplate>,
    control: OwnedFd,
    queue: OwnedFd,
    /// What spares tell it on; `None` (it could not be made): no spares, every request is cloned directly.
    channel: Option<spare::Channel>,
    /// The spares waiting on the queue (at most [`SPARES`]): while there is one, the zygote leaves the queue to
    /// them.
    spares: Vec<spare::Spare>,
    /// The task whose request the next spare most likely gets (the last one's).
    expected: u32,
    /// A request was served since the last spare was cloned (or the spare ended): clone the next one once
    /// the queue is empty. Cleared by each attempt, so a clone that fails is retried after the next request,
    /// not in a loop.
    want_spare: bool,
    buffer: Vec<u8>,
}

impl Zygote<'_> {
    /// One wake-up: the master's messages first (a request's template was sent before it; a spare's end),
    /// then what spares said (taken, bounced); with no spare, the queue, and the next spare once it is empty.
    fn serve(&mut self) {
        let [control, channel, queue] = self.wait();
        footprint::warming_tick();
        if control {
            self.read_control();
        }
        if channel {
            // One message per wake-up (the poll wakes again while more wait): the usual one, "taken", costs no
            // second read that would find the channel empty.
            self.read_channel(false);
        }
        if self.spares.is_empty() && (queue || self.want_spare) {
            self.read_queue();
        }
        if self.want_spare {
            self.want_spare = false;
            // The next workers' clones, made now rather than on their requests; not while requests are queued
            // (a start or a rollout asking for many): those are cloned directly, and a spare would only be one
            // more hop.
            if let Some(applied) = footprint::apply_if_learned() {
                tracing::debug!(?applied, "zygote applied its workers' footprint");
            }
            if let Some(channel) = &self.channel {
                let (build, tasks, expected) = (self.build, &self.tasks, self.expected);
                while self.spares.len() < SPARES {
                    footprint::warming_clone();
                    match spare::Spare::clone(build, tasks, expected, &self.queue, channel, &mut self.buffer) {
                        Some(spare) => self.spares.push(spare),
                        None => break,
                    }
                }
            }
        }
    }

    /// Waits for the control socket, the spares' channel or the queue (with no spare); which of them woke it.
    fn wait(&self) -> [bool; 3] {
        let poll_fd = |fd: RawFd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let mut fds = [
            poll_fd(self.control.as_raw_fd()),
            poll_fd(self.channel.as_ref().map_or(-1, |c| c.zygote.as_raw_fd())),
            poll_fd(if self.spares.is_empty() { self.queue.as_raw_fd() } else { -1 }),
        ];
        // While it warms, no longer than that lasts: an idle zygote joins its split code mappings then.
        let timeout = footprint::warming_left().map_or(-1, |left| left.as_millis().min(1_000) as i32 + 1);
        // SAFETY: poll on an array of pollfds this frame owns; negative descriptors are ignored.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) } < 0 {
            if nix::errno::Errno::last() != nix::errno::Errno::EINTR {
                // Nothing to wait on (never seen): the master spawns cold once it has reaped this zygote.
                std::process::exit(code::OK);
            }
            return [false; 3];
        }
        fds.map(|fd| fd.revents != 0)
    }

    /// Reads every message the master sent on the control socket (templates, notices of ends); ends the zygote
    /// when the master closed the socket.
    fn read_control(&mut self) {
        loop {
            match receive(&self.control, &mut self.buffer) {
                Received::Message(Message::Template(task)) => {
                    if self.tasks.iter().any(|t| t.index == task.index) {
                        // The spares' copy of that template would be stale (a new task's they lack, and give its
                        // request back, see `spare`). The master sends each task's template once, so this is
                        // not reached today; should it be, this zygote ends (and its spares with it, unread):
                        // the master spawns cold and starts another.
                        tracing::debug!(task = task.index, "zygote given a task's template twice: ending");
                        std::process::exit(code::OK);
                    }
                    self.tasks.push(*task);
                }
                Received::Message(Message::Gone { pid }) => {
                    if self.spares.iter().any(|spare| spare.pid == pid) {
                        // What it said before it ended is in the channel already: all of it is read first.
                        self.read_channel(true);
                        self.spares.retain(|spare| spare.pid != pid);
                        self.want_spare = true;
                    }
                }
                Received::Message(_) => {}
                Received::Nothing => return,
                Received::Closed => std::process::exit(code::OK),
            }
        }
    }

    /// Reads what spares said (all of it if `drain`, else one message): taken (the next spare is then due), or
    /// a request given back (served here).
    fn read_channel(&mut self, drain: bool) {
        let Some(channel) = &self.channel else { return };
        let channel = channel.zygote.as_raw_fd();
        loop {
            // SAFETY: the channel stays open for the zygote's life; borrowed for this read only.
            let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(channel) };
            match receive(&socket, &mut self.buffer) {
                Received::Message(Message::Taken { pid, task }) => {
                    self.spares.retain(|spare| spare.pid != pid);
                    self.expected = task;
                    self.want_spare = true;
                }
                Received::Message(Message::Spawn(request, fds)) => {
                    // The spare lacked the request's task (its template came after the clone) and ends.
                    // (The master's notice tells of its end.)
                    tracing::debug!(task = request.task, "a spare gave back a request of a task it had no template of");
                    self.clone_worker(request, &fds);
                }
                Received::Message(_) => {}
                Received::Nothing | Received::Closed => return,
            }
            if !drain {
                return;
            }
        }
    }

    /// Clones a worker for every request queued (the zygote has no spare); ends the zygote when the master
    /// closed the queue.
    fn read_queue(&mut self) {
        loop {
            match receive(&self.queue, &mut self.buffer) {
                Received::Message(Message::Spawn(request, fds)) => self.clone_worker(request, &fds),
                Received::Message(_) => {}
                Received::Nothing => return,
                Received::Closed => std::process::exit(code::OK),
            }
        }
    }

    /// Clones the worker of `request` directly (or reports that it cannot).
    fn clone_worker(&mut self, request: Request, fds: &[OwnedFd]) {
        if !self.tasks.iter().any(|t| t.index == request.task) {
            // The master sends a task's template (on the control socket) before its first request.
            self.read_control();
        }
        let report = self.build.template.report_fd;
        if !self.tasks.iter().any(|t| t.index == request.task) {
            // Without a template, no worker.
            crate::report::send(report, &crate::report::Report::SpawnFailed { cell: request.cell });
            return;
        }
        footprint::warming_clone();
        match clone_for_master() {
            // With spares, a spare learns the footprint (see `spare::run_spare`): most workers are spares.
            0 => become_worker(self.build, &self.tasks, request, fds, None, self.channel.is_none()),
            pid if pid < 0 => crate::report::send(report, &crate::report::Report::SpawnFailed { cell: request.cell }),
            _ => {}
        }
        self.expected = request.task;
        self.want_spare = true;
    }
}

/// Clones this single-threaded process as a child of the master (`CLONE_PARENT`, so the master reaps, signals
/// and supervises it like a worker it forked); 0 in the child, else the child's pid, or -1 if the clone failed.
fn clone_for_master() -> libc::c_long {
    // SAFETY: a raw clone without CLONE_VM or a new stack behaves like fork (the child gets a copy of this
    // single-threaded process and returns 0 here).
    unsafe { libc::syscall(libc::SYS_clone, (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0) }
}

/// What a zygote's children start from: its build, loaded, and the scoreboard.
struct Loaded<'a> {
    /// The spec of the zygote's own task: the build, report pipe and host-wide settings of every worker.
    template: &'a WorkerSpec,
    module: PluginModuleRef,
    board: &'static Scoreboard,
}

/// In a child just cloned for `request`: becomes its worker (never returns).
/// `prepared`: a spare's spec made ahead for the task it expected (used if the request is for that task).
/// `learn`: it may become the learner of its zygote's footprint (see [`footprint`]; a spare claims that at its
/// own start).
fn become_worker(
    build: &Loaded<'_>,
    tasks: &[TaskTemplate],
    request: Request,
    fds: &[OwnedFd],
    prepared: Option<(u32, WorkerSpec)>,
    learn: bool,
) -> ! {
    let template = build.template;
    // Its own process group before the master learns of it, so that the master may signal the group at once
    // and need not set it too (a spare set it while it waited).
    if crate::worker::stop_event().is_none() {
        let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    }
    // First of all: the master learns this worker's pid from the worker itself, so the report is in the pipe
    // before any other report of this worker and before its exit (see `master::warm`).
    let me = std::process::id() as i32;
    crate::report::send(template.report_fd, &crate::report::Report::Spawned { pid: me, cell: request.cell });
    if learn {
        footprint::claim_learning();
    }
    let Some(task) = tasks.iter().find(|t| t.index == request.task) else {
        // Checked by the zygote before the clone, or by the spare before it took the request.
        std::process::exit(code::LOAD_FAILED)
    };
    let output = capture_ends(request, fds).map(|[stdout, stderr]| (stdout, stderr));
    let base = match prepared {
        Some((index, spec)) if index == request.task => spec,
        _ => task.apply(template),
    };
    let spec = WorkerSpec { slot: request.slot, output, ..base };
    let cell = build.board.cell(CellIndex(request.cell as usize));
    crate::worker::run(spec, cell, Some(build.module))
}
