//! A warm worker's footprint: the pages of code it runs and the private pages it writes, learned once per
//! zygote from one worker's whole life and made part of every later clone, so that no worker takes a page fault
//! for them.
//!
//! # Why
//!
//! A worker that lives for one call (`execute_times = 1`) spent most of its CPU in page faults: ~78 per
//! worker, at ~2.7 µs each on this VM (a C loop measures 2.4–3.5 µs per fault, whatever its kind), ~200 of
//! the ~330 µs of the worker's whole life. About 45 were first touches of code (a fork copies no page table
//! entry of a file mapping that never had a private page, so the child faults each 64 KiB window of code it
//! runs) and about 35 copy-on-write faults on the zygote's heap, stack and data. Copying a page table entry
//! at fork costs ~50 ns, an eager copy of a whole page ~1.2 µs: both much less than a fault.
//!
//! # How
//!
//! 1. **Learn.** The zygote maps a shared page before its first clone. The first spare it clones claims it as
//!    it starts (a zygote without spares: the first worker it clones) and becomes the learner, so the
//!    footprint covers a spare's whole life, its wait for a request included, as most workers live it (one
//!    learned from a worker cloned directly left the spare's own pages to fault in every spare's worker: 1–3
//!    of its 7–9 faults): its code mappings get `MADV_RANDOM` and are split into mappings of one page each,
//!    then it drops every entry they had (see "Only what a worker runs"), so that it maps exactly the pages it
//!    runs from then on (see below). Near the very end of its `exit` (after the plugin's exit handlers and the
//!    executable's destructors; see `record_last`), it maps the first page of each destructor still to run,
//!    reads its own `/proc/self/pagemap` for the file pages present in its read-only file mappings (still split,
//!    so that the recording's own code maps a page at a time), joins its code mappings again, and reads it for
//!    the pages of its writable private mappings that it maps alone (it wrote them since the clone); it writes
//!    both into the shared page.
//! 2. **Apply.** The zygote, when idle (before its next spare), reads the footprint once:
//!    - it pins the written pages that lie in its own writable mappings as `io_uring` fixed buffers: the kernel
//!      gives each child of a process holding pinned pages its own copy of those pages at fork, instead of
//!      sharing them copy-on-write;
//!    - it rewrites one byte of each code mapping that holds footprint pages through `/proc/self/mem` with the
//!      same value: the mapping gets an anon_vma, and a fork copies the page table entries of a mapping that
//!      has one;
//!    - it splits its code mappings a page per mapping for a while (see "The zygote's own pages"), drops its
//!      own code page table entries (`MADV_DONTNEED`: they come back from the page cache; the rewritten page
//!      is the file's again, the anon_vma stays) and maps exactly the footprint's (`MADV_POPULATE_READ`, then
//!      `MADV_DONTNEED` on what lies between the footprint's pages, for the pages beyond the split's budget).
//!
//! # Only what a worker runs
//!
//! The zygote's code mappings have an anon_vma long before any footprint is applied: the master's have one
//! (a clone of it inherits it), so every clone copies the entries of the code its zygote and master had run:
//! argument parsing, `pmhost.toml`, the plugin's staging and checks, logging's set-up. The learner kept them
//! and recorded them as its own, and its recording ran before its code was split again: it read files and
//! parsed text on 64 KiB windows of code. A tracer that single-stepped workers of a release build (every
//! distinct instruction address, mapped to pages) found that a worker and its zygote run 52–58 pages of
//! pmhost's code, while the zygote mapped 363 (and 93 of libc's, of which they run 31): every clone copied
//! ~370 entries more than it needed and every worker tore them down at exit. The learner now drops what it
//! inherited once its code is split, and records its code pages before it joins them.
//!
//! # The zygote's own pages
//!
//! What the zygote runs after applying the footprint (its rounds: a spare's "taken", the next spare's clone;
//! more rarely a request cloned directly, a spare's end) is in its page tables too, and so in every clone. Its
//! code mappings are whole again by then, and each first run of a page mapped the 64 KiB around it: ~20 such
//! windows, ~200 pages. So the zygote splits its code mappings as the learner does before it maps the
//! footprint (`split_while_warming`), within a sixteenth of the room `vm.max_map_count` leaves it
//! (`warming_budget`: the clones made meanwhile inherit the split and need room of their own), and joins them
//! after `WARMING_CLONES` clones or `WARMING_TIME` (`warming`), whichever comes first, idle or not (its wait ends
//! then): what it ran meanwhile, it mapped a page at a time. A rarer path run later still maps its window. The
//! clones made while it is split copy ~2 000 mappings each (~1–2 ms more per clone) and keep them for their
//! life: at most 8 workers per zygote, in its first 200 ms after learning. They cannot join them: a clone gives
//! each piece of a mapping with an anon_vma one of its own, and pieces with different ones never merge (tried:
//! a worker's join left 4 089 of its 4 130 mappings). Giving the zygote's mappings their anon_vma only once it
//! has joined lets its clones join theirs, but then what it runs to join and to give them maps its windows
//! (+58 pages per clone), or, mapped exactly again afterwards, two heap pages per worker were written that the
//! learner had not (not explained): measured worse than 8 split workers once per zygote.
//!
//! Eight clones are enough: with 64, the zygote's pages were the same (pmhost's code 72–75, read-only data
//! 49–50, libc's 29).
//!
//! Measured (the zygote's present pages of a release build, 2 slots, `--execute-times 1 --execute-usleep 0`):
//! pmhost's code 363 → 72 pages, libc's 93 → 29, pmhost's read-only data 106 → 49, all of the zygote's
//! 684–725 → ~310. Side by side with the previous commit's binary (10 interleaved runs of 3 s, medians, a bare
//! `fork` at 140 µs): CPU per worker (master + zygote + worker) 345 → 327 µs (the worker's 169 → 157, the
//! zygote's 132 → 123), workers/s 5 226 → 5 485, page faults per worker 10 → 7.
//!
//! # Exactly the pages, not the folios around them
//!
//! The page cache keeps a file in folios of several pages (ext4 on Linux 6.18 reads the executable in folios of
//! up to 128 KiB), and a read fault maps the whole folio around the page it needs, `MADV_RANDOM` or not (a C
//! probe: 4 touches of the executable mapped 128 pages). A learner that only had `MADV_RANDOM` recorded 1 105
//! code pages in release, of which its worker ran about half; every clone copied the page table entries of
//! all of them and every worker tore them down at exit (fork + exit cost ~43 ns per mapped page here: 1 024
//! pages add ~44 µs to a fork-exit cycle of 137 µs; perf put ~35 % of all CPU in a churn in copying and
//! zapping page table entries). A fault never maps beyond its mapping, so the learner marks every other page of
//! its code mappings `MADV_DONTDUMP` (it changes only what a core dump holds): each page becomes a mapping of
//! its own, at most [`SPLIT_LIMIT`] of them and a quarter of the room `vm.max_map_count` leaves it (`split_budget`).
//! Its footprint is then 456–558 pages (~180–210 since "Only what a worker runs"). The learner joins them
//! again before it reads its smaps (`join_split_code`), having read its code pages from the cheaper
//! `/proc/self/maps`: listing and walking ~2 000 mappings in smaps took ~15 ms. The zygote's populating maps
//! whole folios again where its split ran out, so it drops what lies between the footprint's pages
//! afterwards.
//!
//! Each step is an optimisation and may fail on its own (an old kernel without `MADV_POPULATE_READ`,
//! `/proc/PID/mem` writes forbidden, `io_uring` disabled or `RLIMIT_MEMLOCK` too low): the worker is then
//! as before, never wrong. Cold workers and a zygote whose workers never exit never learn.
//!
//! # Costs
//!
//! - Each clone copies the footprint's page table entries (~130 of code, ~50 of read-only data in release
//!   since "Only what a worker runs"; 450–560 of code before) and ~37 pinned pages, so a zygote's `clone`
//!   costs more (~95 → ~140 µs per worker when first measured below, ~123 µs now) and a worker's whole life
//!   much less (~280 → ~175–185 µs then, ~157 µs now).
//! - The zygote keeps its code mappings `MADV_RANDOM` (no readahead) and its children inherit it.
//! - The pinned pages (~150 KiB) stay resident for the zygote's life and count against `RLIMIT_MEMLOCK` when
//!   it runs unprivileged; at most half of that limit is pinned, and never more than `PIN_LIMIT` pages.
//! - A worker's private pages that the footprint names are copied at its clone rather than at its first
//!   write: the same memory a worker of the same task would have used.
//! - The learner itself starts ~4 ms slower (it reads its smaps, splits its code mappings, then faults each code
//!   page it runs alone, ~550 in a release build) and ends ~5 ms later (it joins them, reads its smaps and
//!   pagemap), once per zygote; a learner that ends without recording (killed, told to stop) hands
//!   the claim to a later worker, at most `MAX_LEARNERS_LOST` times, so a task whose workers are all killed
//!   does not pay it forever.
//!
//! Measured (2 slots, `--execute-times 1 --execute-usleep 0`, bench plugin, 2 cores, the previous commit's
//! binary and this one interleaved, 3 runs of 3 s each, medians; the machine in its fast state, a bare `fork`
//! of a small C program at 139 µs): page faults per worker 69 → 9; CPU per worker (master + zygote + worker)
//! 432 → 420 µs; workers/s 3 677 → 3 952; pmhost's own request → first call median 0.308 → 0.260 ms. In
//! release, the footprint was then ~1 100 code pages in 7 mappings and ~37 written pages.
//!
//! Learning exactly the pages (split code mappings, the zygote dropping what populating mapped between them),
//! measured the same way (5 runs of 3 s each, a bare `fork` of a small C program at 147 µs): code pages
//! 1 105 → 456–558; CPU per worker 421 → 383 µs (the worker's 209 → 186, the zygote's 155 → 144); workers/s
//! 3 976 → 4 398; pmhost's request → first call 0.276 → 0.251 ms; page faults per worker 12 either way.
//!
//! Recording last (after the executable's destructors, from an exit handler registered there) and mapping
//! the first page of each library destructor still to run, measured the same way (6 runs of 3 s each, a bare
//! `fork` at 142–149 µs): page faults per worker 12 → 7–8 (libc's exit path, libgcc_s's destructors); the
//! worker's CPU 203 → 187 µs, the zygote's 151 → 154 µs (code pages learned: 447–542 → 556–600, most of
//! the difference being how the two builds happen to lay out the same code over pages); workers/s within
//! noise (4 259 → 4 281). What still faults: the scoreboard cell and the vDSO (neither is copied at a clone),
//! two copy-on-write writes of the heap and libc's data, libgcc_s's `.bss` flag and its call through the PLT
//! into libc's `__cxa_finalize`, and libc's stdio cleanup: pages only `exit` itself reaches, after the last
//! point a process can run code of its own.
//!
//! # What is left: the fork itself
//!
//! The zygote timed 2 000 bare `fork` + `_exit` + `waitpid` of itself, footprint applied: 253–260 µs of CPU
//! per cycle (the parent 141–146, the child 110–114), against 131 µs for a small C program on the same machine
//! at the same time. Of the zygote's `clone` in the churn, ~37 % is zeroing fresh pages (`clear_page_erms`):
//! the child's 15 page-table pages (its mappings span 4 page tables of the 5 MiB executable, 3 of the libraries,
//! the heap's, the stack's, and their upper levels) and its kernel stack, at ~3 µs per page on this VM. That
//! is the floor of a warm spawn here, before the master's share (~55 µs per worker) and anything the worker
//! does; the churn target of 5 000 workers/s on 2 cores leaves 400 µs for all of it.

mod maps;
mod warming;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use maps::{Destructors, Kind, Mapping, Scratch, code_runs, join_split_code, mappings, own_mappings, page_runs};
use warming::split_while_warming;
pub use warming::{warming_clone, warming_left, warming_tick};

/// The shared page's states.
const WANTED: u32 = 0;
const LEARNING: u32 = 1;
const READY: u32 = 2;
const APPLIED: u32 = 3;

/// The shared region: a header (state, learner's pid, count) and ranges of (start, length) words.
const REGION: usize = 16 * 1024;
const HEADER: usize = 16;
const CAPACITY: usize = (REGION - HEADER) / 16;
const PAGE: u64 = 4096;
/// Set in a range's length: a written page range (else code).
const WRITTEN: u64 = 1 << 63;

/// pagemap bits: the page is present; it is mapped by this process alone.
const PRESENT: u64 = 1 << 63;
const EXCLUSIVE: u64 = 1 << 56;
/// pagemap bit: a page of a file (or shared memory), not a private copy.
const FILE_PAGE: u64 = 1 << 61;

/// The most mappings a learner adds by splitting its code mappings page by page (`Mapping::split`): a release
/// build's ~1 950 code pages fit, well under the kernel's default `vm.max_map_count` (65 530); a larger
/// program's pages beyond it are learned a folio at a time, as before.
const SPLIT_LIMIT: u64 = 4096;

/// `MADV_POPULATE_READ` (Linux 5.14), not yet in every libc.
const MADV_POPULATE_READ: i32 = 22;

/// The shared region, mapped by the zygote before its first clone (null elsewhere).
static SHARED: std::sync::atomic::AtomicPtr<u8> = std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
/// In the zygote once the footprint is applied (or given up), and so in its later clones: nothing to learn.
static SETTLED: AtomicBool = AtomicBool::new(false);
/// In the learner: record the footprint at exit.
static LEARNER: AtomicBool = AtomicBool::new(false);

/// In the zygote, before its first clone: maps the shared page a learner writes the footprint into.
pub fn prepare() {
    // SAFETY: a fresh anonymous shared mapping, kept for the process's life.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base != libc::MAP_FAILED {
        SHARED.store(base.cast(), Ordering::Relaxed);
        // Here, not in the learner: finding them reads each object's program headers and dynamic section,
        // pages no worker needs, which the learner would record.
        let mut found = Destructors::new();
        found.find();
        let _ = DESTRUCTORS.set(found);
    }
}

/// The ELF destructors of the zygote's loaded objects, found by `prepare` and inherited by its clones.
static DESTRUCTORS: std::sync::OnceLock<Destructors> = std::sync::OnceLock::new();

/// The header word `index` (0 state, 1 learner's pid, 2 count) of the shared region, if it is mapped.
fn header(index: usize) -> Option<&'static AtomicU32> {
    let base = SHARED.load(Ordering::Relaxed);
    // SAFETY: the region is mapped for the process's life (and in its clones); header words are only used
    // atomically.
    (!base.is_null()).then(|| unsafe { &*(base.add(index * 4).cast::<AtomicU32>()) })
}

/// The shared region's ranges.
///
/// # Safety
/// Only the learner writes them (between winning `WANTED → LEARNING` and storing `READY`), and only the zygote
/// reads them (after seeing `READY`); the region must be mapped.
unsafe fn ranges() -> &'static mut [[u64; 2]] {
    let base = SHARED.load(Ordering::Relaxed);
    // SAFETY: the caller holds the region's single-writer protocol; the region is REGION bytes long.
    unsafe { std::slice::from_raw_parts_mut(base.add(HEADER).cast::<[u64; 2]>(), CAPACITY) }
}

/// In a spare as it starts (or a worker cloned for its request, when its zygote has no spares): the first one
/// since the zygote's start becomes the learner.
pub fn claim_learning() {
    if SETTLED.load(Ordering::Relaxed) {
        return;
    }
    let (Some(state), Some(learner)) = (header(0), header(1)) else { return };
    if state.compare_exchange(WANTED, LEARNING, Ordering::Acquire, Ordering::Relaxed).is_err() {
        return;
    }
    learner.store(std::process::id(), Ordering::Relaxed);
    LEARNER.store(true, Ordering::Relaxed);
    // Exactly the pages it runs: no fault-around, and one mapping per page so that a fault maps no more than
    // its own page (see `Mapping::split`).
    if let Some(mut scratch) = Scratch::new() {
        let mapped = scratch.read("/proc/self/maps").lines().count() as u64;
        let max = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse().ok());
        let smaps = scratch.smaps();
        map_page_by_page(|| mappings(Kind::Code, smaps), split_budget(max, mapped));
    }
}

/// Splits the `code` mappings into a mapping per page (within `budget`), then drops every entry they have: from
/// then on they map exactly the pages this process runs. A clone inherits the entries of whatever its zygote
/// (and the master before it) ran, and the splitting itself runs before its mappings are split (see "Only what
/// a worker runs" in the module's docs).
fn map_page_by_page<I: Iterator<Item = Mapping>>(code: impl Fn() -> I, mut budget: u64) {
    for mapping in code() {
        mapping.advise(libc::MADV_RANDOM);
        budget = mapping.split(budget);
    }
    for mapping in code() {
        mapping.advise(libc::MADV_DONTNEED);
    }
}

/// Splits `start..end`, pages of one of this process's own mappings, into a mapping per page (see
/// `Mapping::split`), spending at most `budget` of the mappings it adds; the budget left. The master splits its
/// own code with it too (`master::footprint`).
pub(crate) fn split_into_pages(start: u64, end: u64, budget: u64) -> u64 {
    Mapping { start, end }.split(budget)
}

/// How many mappings a learner may add by splitting its code (`Mapping::split`), given the kernel's
/// `vm.max_map_count` (`None`: unknown) and the mappings it has: at most [`SPLIT_LIMIT`] and a quarter of the
/// room left, so that the worker itself (its plugin's threads, allocations, `mprotect`s) never meets the
/// limit because it learns. Spending the room up to the limit made a plugin that starts threads in `init` fail
/// (`EAGAIN`) in the learner only, with `vm.max_map_count` at 200.
fn split_budget(max_map_count: Option<u64>, mapped: u64) -> u64 {
    max_map_count.map_or(0, |max| (max.saturating_sub(mapped) / 4).min(SPLIT_LIMIT))
}

/// In a spare that ends without becoming a worker (told to stop, its request given back, its zygote or master
/// gone): if it holds the claim, it gives it back uncounted. It ran nothing of a worker's life, so it is not one
/// of the learners a zygote stops handing the claim on after (see [`MAX_LEARNERS_LOST`]).
pub fn give_back_claim() {
    if !LEARNER.swap(false, Ordering::Relaxed) {
        return;
    }
    if let (Some(state), Some(learner)) = (header(0), header(1))
        && learner.load(Ordering::Relaxed) == std::process::id()
    {
        let _ = state.compare_exchange(LEARNING, WANTED, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// In a worker told to stop: if it is the learner, it records nothing. Its zygote is most likely going too (a
/// stop, a rollout), and reading its own smaps and pagemap at exit would only delay the stop; a zygote that
/// stays hands the claim to a later worker once this one is gone.
pub fn forgo_learning() {
    LEARNER.store(false, Ordering::Relaxed);
}

/// Runs among the executable's ELF destructors, near the end of `exit`, after the plugin's exit handlers ran
/// (their pages belong to a worker's life too): the learner records from here (`record_last`).
extern "C" fn record_at_exit() {
    // Not in a child the learner's plugin forked: it inherited the flag, but its footprint is not a worker's
    // life, and the learner itself records later (the zygote could apply a footprint being rewritten).
    // The flag first, and only read: every other worker then neither touches the shared region nor writes a
    // page of its own here (either was a page fault in each worker's exit).
    if !LEARNER.load(Ordering::Relaxed) {
        return;
    }
    LEARNER.store(false, Ordering::Relaxed);
    if header(1).map(|pid| pid.load(Ordering::Relaxed)) == Some(std::process::id()) {
        record_last();
    }
}

/// Records later than this executable's destructors: what runs after them (the rest of this executable's
/// exit path, libc's exit handler loop) touched pages that were faults in every worker's exit when the learner
/// recorded here (12 → 7–8 per worker with what `record` maps of the libraries' destructors). glibc runs an
/// exit handler registered while it runs them; measured with a small C program, one registered from the
/// executable's destructor runs after it and before `_dl_fini` calls the libraries' destructors, whose first
/// pages `record` therefore maps itself (`Destructors::touch`). Elsewhere than glibc the record is made at once.
fn record_last() {
    extern "C" fn record_at_last() {
        record();
    }
    // SAFETY: registering a plain function with no argument; glibc allows it while exit handlers run.
    if !cfg!(target_env = "gnu") || unsafe { libc::atexit(record_at_last) } != 0 {
        record();
    }
}

#[used]
#[unsafe(link_section = ".fini_array")]
static RECORD_AT_EXIT: extern "C" fn() = record_at_exit;

/// In the learner: writes its footprint into the shared region and marks it ready. Allocates nothing: what
/// it writes must be the worker's, not its own.
fn record() {
    let Some(state) = header(0) else { return };
    // SAFETY: this process is the learner (it won WANTED → LEARNING) and has not yet stored READY.
    let slots = unsafe { ranges() };
    let mut n = 0;
    let mut push = |start: u64, len: u64, flag: u64| {
        // A run that goes on where the last one ended (the next page of a split mapping) extends it.
        if n > 0 && slots[n - 1][0] + (slots[n - 1][1] & !WRITTEN) == start && slots[n - 1][1] & WRITTEN == flag {
            slots[n - 1][1] += len;
        } else if n < CAPACITY {
            slots[n] = [start, len | flag];
            n += 1;
        }
    };
    if let (Ok(pagemap), Some(mut scratch)) = (std::fs::File::open("/proc/self/pagemap"), Scratch::new()) {
        let own = scratch.base as u64;
        let maps = scratch.read("/proc/self/maps");
        if let Some(destructors) = DESTRUCTORS.get() {
            destructors.touch(maps);
        }
        // The code pages first, while its code is still split page by page: what this process runs from here
        // on, recording, then maps a page (not a 64 KiB window) and is not read. Only pages of the file: a
        // relocated RELRO's are private copies, which a clone copies anyway.
        for run in code_runs(maps) {
            page_runs(&pagemap, run, PRESENT | FILE_PAGE, |start, len| push(start, len, 0));
        }
        join_split_code(maps);
        // Not the scratch mapping itself: its pages are the learner's work, not the worker's.
        for mapping in mappings(Kind::Written, scratch.smaps()).filter(|m| m.start != own) {
            page_runs(&pagemap, mapping, PRESENT | EXCLUSIVE, |start, len| push(start, len, WRITTEN));
        }
    }
    if let Some(count) = header(2) {
        count.store(n as u32, Ordering::Relaxed);
    }
    state.store(READY, Ordering::Release);
}

/// What applying a footprint did, for the zygote's debug log.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    /// Code pages mapped for every clone to inherit.
    pub code_pages: u64,
    /// Code mappings given an anon_vma (their entries are copied at fork).
    pub code_mappings: usize,
    /// Written pages pinned (copied at fork).
    pub pinned_pages: u64,
    /// Code pages split into mappings of their own while the zygote warms (see "The zygote's own pages").
    pub split_pages: u64,
}

/// Learners that may end without recording (killed, or told to stop) before a zygote stops handing the claim
/// on: each costs its worker ~3 ms of start (reading its smaps, then a fault per code page it runs), so workers
/// that are all killed (a kill-heavy or crash-looping task) must not pay it forever.
const MAX_LEARNERS_LOST: u32 = 3;

/// In the zygote: learners that ended without recording.
static LEARNERS_LOST: AtomicU32 = AtomicU32::new(0);

/// In the zygote, between clones: applies a learned footprint (once). `None` when there is none (yet).
pub fn apply_if_learned() -> Option<Applied> {
    if SETTLED.load(Ordering::Relaxed) {
        return None;
    }
    let state = header(0)?;
    match state.load(Ordering::Acquire) {
        READY => {}
        LEARNING => {
            // A learner gone without recording (killed, or told to stop): let the next worker learn, a few times.
            let pid = header(1)?.load(Ordering::Relaxed) as i32;
            // SAFETY: signal 0 only checks that the process exists.
            if pid > 0 && unsafe { libc::kill(pid, 0) } != 0 && nix::errno::Errno::last() == nix::errno::Errno::ESRCH {
                if LEARNERS_LOST.fetch_add(1, Ordering::Relaxed) + 1 >= MAX_LEARNERS_LOST {
                    state.store(APPLIED, Ordering::Relaxed);
                    SETTLED.store(true, Ordering::Relaxed);
                    tracing::debug!(
                        "the zygote's learners ended before recording, {MAX_LEARNERS_LOST} times: no footprint"
                    );
                } else {
                    let _ = state.compare_exchange(LEARNING, WANTED, Ordering::AcqRel, Ordering::Relaxed);
                }
            }
            return None;
        }
        _ => return None,
    }
    state.store(APPLIED, Ordering::Relaxed);
    SETTLED.store(true, Ordering::Relaxed);
    let n = (header(2)?.load(Ordering::Relaxed) as usize).min(CAPACITY);
    // SAFETY: READY was seen (Acquire): the learner is done writing.
    let learned: Vec<[u64; 2]> = unsafe { ranges() }[..n].to_vec();
    if !learned.iter().any(|[_, len]| len & WRITTEN == 0) {
        // The learner could not read itself (no room left under its `rlimit_as` for the scratch mapping, say):
        // dropping this process's code entries and fault-around for no footprint gains nothing, and every later
        // clone would inherit `MADV_RANDOM` (the module's promise: a failed step leaves workers as before).
        tracing::debug!("the zygote's learner recorded no footprint: nothing applied");
        return None;
    }
    let mut code: Vec<(u64, u64)> =
        learned.iter().filter(|[_, len]| len & WRITTEN == 0).map(|[start, len]| (*start, *len)).collect();
    code.sort_unstable();
    let written: Vec<(u64, u64)> =
        learned.iter().filter(|[_, len]| len & WRITTEN != 0).map(|[start, len]| (*start, len & !WRITTEN)).collect();
    let mappings = own_mappings(Kind::Code);
    let pinned_pages = pin(&written);
    let code_mappings = give_anon_vmas(&mappings, &code);
    // Split before the footprint is mapped: from then on, what the zygote runs (the rest of this, then its
    // rounds) maps a page at a time (see "The zygote's own pages").
    let split_pages = split_while_warming(&mappings);
    Some(Applied { pinned_pages, split_pages, code_mappings, ..apply_code(&mappings, &code) })
}

/// Maps exactly the learned code pages (and nothing else of the code mappings).
fn apply_code(mappings: &[Mapping], code: &[(u64, u64)]) -> Applied {
    let mut applied = Applied::default();
    for mapping in mappings {
        // The zygote's own entries go (they come back page by page as it runs, see "The zygote's own pages"):
        // a clone then copies the footprint and what the zygote itself runs, not every 64 KiB window either
        // ever touched.
        mapping.advise(libc::MADV_DONTNEED);
        mapping.advise(libc::MADV_RANDOM);
    }
    for (start, len) in code {
        // SAFETY: populating the page tables of a readable mapping changes no memory contents.
        if unsafe { libc::madvise(*start as *mut libc::c_void, *len as usize, MADV_POPULATE_READ) } == 0 {
            applied.code_pages += len / PAGE;
        }
    }
    for mapping in mappings {
        // Populating maps whole page-cache folios around each learned page: what lies between goes again.
        let mut from = mapping.start;
        for learned in within(*mapping, code) {
            Mapping { start: from, end: learned.start }.advise(libc::MADV_DONTNEED);
            from = from.max(learned.end);
        }
        Mapping { start: from, end: mapping.end }.advise(libc::MADV_DONTNEED);
    }
    applied
}

/// Gives each code mapping that holds learned pages an anon_vma (a fork copies the page table entries of a
/// mapping that has one); how many. Before the split: its pieces share it, and the clones made while the
/// zygote warms copy the footprint too.
fn give_anon_vmas(mappings: &[Mapping], code: &[(u64, u64)]) -> usize {
    let Ok(memory) = std::fs::OpenOptions::new().read(true).write(true).open("/proc/self/mem") else { return 0 };
    let mut given = 0;
    for mapping in mappings {
        let Some(first) = within(*mapping, code).next() else { continue };
        // The same byte written back: the kernel copies that page privately, so the mapping gets an anon_vma,
        // which it keeps when `apply_code` drops the copy again (the page is the file's once more).
        let mut byte = [0u8; 1];
        if memory.read_exact_at(&mut byte, first.start).is_ok() && memory.write_all_at(&byte, first.start).is_ok() {
            given += 1;
        }
    }
    given
}

/// The learned runs (sorted) that overlap `mapping`, clipped to it: a run the learner recorded across two
/// adjacent code mappings (it joins a run that goes on where the last one ended) counts in each.
fn within(mapping: Mapping, code: &[(u64, u64)]) -> impl Iterator<Item = Mapping> + '_ {
    code.iter()
        .map(move |(start, len)| Mapping { start: (*start).max(mapping.start), end: (start + len).min(mapping.end) })
        .filter(|clipped| clipped.start < clipped.end)
}

/// Most pages pinned, whatever `RLIMIT_MEMLOCK` allows (a zygote running as root has no limit): a worker
/// writes ~40 pages of the zygote's in its life, and each pinned page is copied at every clone.
const PIN_LIMIT: u64 = 1024;

/// Pins the learned written pages that lie in this process's writable mappings, within half of
/// `RLIMIT_MEMLOCK` and [`PIN_LIMIT`]; the number of pages pinned.
fn pin(written: &[(u64, u64)]) -> u64 {
    let budget = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .map_or(0, |(soft, _)| soft / 2 / PAGE)
        .min(PIN_LIMIT);
    let mut pages = 0;
    let mut iovecs = Vec::new();
    for mapping in own_mappings(Kind::Written) {
        for (start, len) in written {
            let (from, to) = ((*start).max(mapping.start), (start + len).min(mapping.end));
            let len = to.saturating_sub(from).min((budget.saturating_sub(pages)) * PAGE);
            if len > 0 {
                iovecs.push(libc::iovec { iov_base: from as *mut libc::c_void, iov_len: len as usize });
                pages += len / PAGE;
            }
        }
    }
    if iovecs.is_empty() {
        return 0;
    }
    // struct io_uring_params: 120 bytes, zeroed (no flags: no kernel thread, nothing submitted, ever).
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup writes at most sizeof(struct io_uring_params) bytes into `params`.
    let ring = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if ring < 0 {
        return 0;
    }
    const IORING_REGISTER_BUFFERS: u32 = 0;
    // SAFETY: registering buffers reads `iovecs` and pins the pages they name, which are this process's own.
    let registered = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring as libc::c_int,
            IORING_REGISTER_BUFFERS,
            iovecs.as_ptr(),
            iovecs.len() as u32,
        )
    };
    if registered < 0 {
        // SAFETY: the ring was just created here and is not used elsewhere.
        unsafe { libc::close(ring as libc::c_int) };
        return 0;
    }
    // The ring stays open for the zygote's life (its pins with it); workers close it with every descriptor
    // they do not keep.
    pages
}

#[cfg(test)]
mod tests;
