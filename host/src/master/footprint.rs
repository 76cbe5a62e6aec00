//! The master's memory once its start is decided: what the start left behind is given back.
//!
//! # What the master's PSS was made of (measured, issue 14)
//!
//! `/proc/PID/smaps` of a master with 8 workers (bench plugin, release build, 2 cores), PSS 1.15 MiB:
//!
//! | mapping | RSS | PSS |
//! |---|---|---|
//! | pmhost code (`r-xp`) | 2.7 MiB | 0.81 MiB |
//! | heap | 280 KiB | 141 KiB |
//! | pmhost read-only data (`r--p`) | 512 KiB | 54 KiB |
//! | stack | 52 KiB | 37 KiB |
//! | the rest (libc, ld.so, relocated data) | | ~80 KiB |
//!
//! Most of it was code: the master runs the CLI before it becomes the master (argument parsing, pmhost.toml,
//! run-root checks, staging and hashing the plugin, the daemon's fork), and the kernel maps code around every
//! page a fault touches (64 KiB windows), so the start leaves some 2.7 MiB of pmhost's 3.7 MiB of code mapped,
//! most of which the loop never runs again. Those pages are shared with nobody but other pmhost processes, so
//! they weigh on the master's PSS almost in full.
//!
//! # What is given back, once
//!
//! When the start is decided (all workers ready), or at once in the new image of an upgrade (which has no start
//! of its own, `handover::resume`), [`release_startup_memory`]:
//!
//! - unmaps the pages of pmhost's own code and read-only data from the master's page tables
//!   (`madvise(MADV_DONTNEED)` on those mappings; they are clean file pages, so nothing is lost: the page cache
//!   keeps them and whatever code the master runs later faults back in, a page at a time, see below). A
//!   mapping that holds any private (anonymous) page, such as relocated data or a debugger's breakpoint, is
//!   left alone;
//! - returns the heap's free pages to the kernel (`malloc_trim`).
//!
//! It runs once, when a start is decided, never on a per-worker path: the code the master's loop runs (reaping,
//! spawning, writing status) faults back in on its first use and stays. What is measured is therefore the
//! master's working set once it has served: the bench reads PSS after the idle window and, at 1024 workers,
//! after three `pmhost status` calls; right after the start, before any status write, it is lower still
//! (0.37 MiB at 8 workers), which no figure below uses.
//!
//! # Its code, a page at a time
//!
//! A fault on a code page maps the 64 KiB around it (fault-around, whatever `MADV_RANDOM` says), and what the
//! master ran after the release was spread thin over pmhost's code: one `pmhost status` took a quiet master of 8
//! workers from 0.38–0.43 to 0.80–0.86 MiB of PSS, most of it code it never ran. So, before it drops its code
//! pages, the master splits its code mappings into a mapping per page (every other page `MADV_DONTDUMP`, as a
//! zygote's learner does, `split_own_code`), within a sixteenth of the room `vm.max_map_count` leaves it: a
//! fault never maps beyond its mapping, so from then on it maps exactly the pages it runs. Measured (release, 2
//! cores, `pmhost status --json` twice, PSS read after): 8 workers 0.80–0.86 → 0.37–0.38 MiB, 1024 workers
//! 1.77 → 1.48 MiB; churn (2 slots, one call per worker, 6 interleaved runs) unchanged, 348 against 350 µs of
//! CPU per worker, the master's 49 against 50. Its ~1 300 mappings cost no wake-up and no per-event work; a
//! fork would copy them all, and a zygote forked from a split master could never join the pieces (a child
//! gives each its own anon_vma), so the master joins them again before its first fork after the release
//! (`join_own_code`: a new build's zygote, a cold worker), once: what it runs after that maps its
//! windows again, as before.
//!
//! # Per-worker state, and status transients (1024 workers)
//!
//! At 1024 workers the rest was per-slot and per-worker state and what a status write leaves behind:
//!
//! - a `Slot` carried its rollout build inline (344 bytes a slot, 350 KiB at 1024): it is boxed now (rare);
//! - each captured stream had its own copy of its worker's origin (task, title: 2 strings) in a table of
//!   4096 buckets (424 KiB): a worker's two streams share one (`master::capture`);
//! - each status write of 1024 workers frees a few hundred KiB that glibc kept in the heap:
//!   [`trim_heap_after_snapshot`] returns it when more than 256 KiB are free.
//!
//! # Measured (A/B against the previous release, interleaved, 2 cores)
//!
//! | figure | before | after | load |
//! |---|---|---|---|
//! | master PSS, 8 workers (`--only quiet`, median of 3) | 1.02, 1.11, 1.12 MiB | 0.81, 0.90 MiB | 0.7–5.4 |
//! | master PSS, 1024 workers, after 3 `status --json` (by hand) | 2.92 MiB | 1.64 MiB | 1.6 |
//! | master PSS, 1024 workers (`--only spawn`, one host a run) | 2.62–3.45 MiB (6 runs) | 1.61–2.00 MiB (10 runs) | 0.7–2.7 |
//!
//! One more run of the same build, at load 2.3–3.9, read 2.35 MiB, over the target; not explained yet (how many
//! of a start's workers were forked cold, and so share the master's pages, varies from run to run).
//!
//! Worker PSS did not grow (0.40–0.44 MiB median against 0.44–0.74): workers never shared the master's startup
//! pages, and the pages they do share with it are the loop's, which the master keeps.

use std::io::BufRead;

/// Gives back the code, read-only data and free heap pages the start left in the master (see the module docs).
/// Returns the bytes of mappings released (for the debug log).
pub(super) fn release_startup_memory() -> u64 {
    let released = release_own_code();
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; the master is single-threaded.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    released
}

/// Free heap above which [`trim_heap_after_snapshot`] gives pages back: more than one snapshot of a few hundred
/// workers leaves, far more than a small host's churn does.
const HEAP_SLACK: usize = 256 * 1024;

/// Below this many workers a snapshot is too small to leave [`HEAP_SLACK`] behind.
const SMALL_HOST: usize = 128;

/// After a status write: a snapshot of many workers is a transient of a few hundred KiB (one entry per worker,
/// the metrics text) that glibc keeps in the heap once freed (other allocations sit above it, and freeing a
/// large mmapped buffer raises its trim threshold). When more than [`HEAP_SLACK`] of the heap is free, it is
/// given back (`malloc_trim`). A host of fewer than [`SMALL_HOST`] workers skips even the look, so a small
/// host's churn pays nothing. Measured at 1024
/// workers: the heap stayed ~400 KiB larger after each `pmhost status` without this.
pub(super) fn trim_heap_after_snapshot(workers: usize) {
    if workers < SMALL_HOST {
        // Not even a look at the allocator (`mallinfo2` walks its bins): a churning small host writes its status
        // hundreds of times a second.
        return;
    }
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics; the master is single-threaded.
        let free = unsafe { libc::mallinfo2() }.fordblks;
        if free > HEAP_SLACK {
            // SAFETY: as in `release_startup_memory`.
            unsafe { libc::malloc_trim(0) };
        }
    }
}

/// One mapping of `/proc/self/smaps`: its range, whether it is readable and never writable, its file, and its
/// private anonymous (copied-on-write) bytes.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    read_only: bool,
    path: String,
    anonymous_kb: u64,
}

/// `madvise(MADV_DONTNEED)` on every read-only mapping of the file that holds this function (pmhost's own
/// code and read-only data) without private pages.
fn release_own_code() -> u64 {
    let Ok(file) = std::fs::File::open("/proc/self/smaps") else { return 0 };
    let mappings = parse_smaps(std::io::BufReader::new(file));
    let here = release_own_code as *const () as usize;
    let Some(own) = mappings.iter().find(|m| (m.start..m.end).contains(&here)) else { return 0 };
    let own_path = own.path.clone();
    // Split first (see "Its code, a page at a time"): the splitting's own code then goes with the rest.
    split_own_code(mappings.iter().filter(|m| releasable(m, &own_path)), mappings.len());
    let mut released = 0;
    for mapping in mappings.iter().filter(|m| releasable(m, &own_path)) {
        let len = mapping.end - mapping.start;
        // SAFETY: a read-only, private file mapping with no private page: dropping its page table entries loses
        // nothing (the next access reads the same bytes from the page cache). The range is a whole mapping of
        // this process, read from its own smaps while single-threaded, so it is mapped and page-aligned.
        let done = unsafe { libc::madvise(mapping.start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        if done == 0 {
            released += len as u64;
        }
    }
    released
}

/// Most of the room `vm.max_map_count` leaves that the master spends splitting its code (a sixteenth, at most
/// [`SPLIT_LIMIT`] mappings): what it maps itself later (status buffers, a plugin's staged copy) keeps nearly
/// all of it.
const SPLIT_ROOM_SHARE: usize = 16;

/// The most mappings the master's split adds: pmhost's ~1 250 pages of code and read-only data in release.
const SPLIT_LIMIT: usize = 4096;

/// The ranges the master split (see [`split_own_code`]), joined again before it forks.
static SPLIT: std::sync::Mutex<Vec<(usize, usize)>> = std::sync::Mutex::new(Vec::new());

/// Splits `mappings` (pmhost's own code and read-only data) into a mapping per page, within a share of the
/// room `vm.max_map_count` leaves (`mapped`: the mappings the master has): every other page marked
/// `MADV_DONTDUMP` (which changes nothing but what a core dump holds, and code is not dumped by default). A
/// fault then maps its own page alone, never the 64 KiB around it (see the module docs).
fn split_own_code<'a>(mappings: impl Iterator<Item = &'a Mapping>, mapped: usize) {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse::<usize>().ok());
    let mut budget = max.map_or(0, |max| (max.saturating_sub(mapped) / SPLIT_ROOM_SHARE).min(SPLIT_LIMIT));
    let mut split = SPLIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for mapping in mappings {
        let left = crate::zygote::footprint::split_into_pages(mapping.start as u64, mapping.end as u64, budget as u64);
        if (left as usize) < budget {
            split.push((mapping.start, mapping.end));
        }
        budget = left as usize;
    }
}

/// Joins what [`split_own_code`] split, before the master forks: a child would copy every piece (~2 000
/// mappings, ~1–2 ms more per fork), and a zygote could never join the pieces it inherited. Once: what the
/// master runs after that maps its 64 KiB windows again, as before.
pub(crate) fn join_own_code() {
    let split = std::mem::take(&mut *SPLIT.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for (start, end) in split {
        // SAFETY: advice on a range this process split itself, still mapped (its own code); it changes no memory
        // contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DODUMP) };
    }
}

/// Joins what [`split_own_code`] split when an allocation failed (the pmhost binary's allocator calls it, then
/// tries again): the split holds ~1 300 more mappings, and once `vm.max_map_count` is lowered below what the
/// master has, the kernel grows no heap and makes no mapping, so the next allocation aborted the master and
/// took its workers with it. Joining needs no new mapping (the pieces merge back into the ranges split). Never
/// allocates or blocks (it may run inside an allocation, or while the split holds the lock): whether it joined
/// anything.
pub fn join_on_allocation_failure() -> bool {
    let mut split = match SPLIT.try_lock() {
        Ok(split) => split,
        Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    if split.is_empty() {
        return false;
    }
    for &(start, end) in split.iter() {
        // SAFETY: as in `join_own_code`.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DODUMP) };
    }
    // Emptied in place: freeing its buffer here could re-enter the allocator.
    split.clear();
    true
}

/// Whether `mapping` may be released: pmhost's own file, never writable, and not a page of it copied.
fn releasable(mapping: &Mapping, own_path: &str) -> bool {
    mapping.read_only && mapping.anonymous_kb == 0 && !own_path.is_empty() && mapping.path == own_path
}

fn parse_smaps(reader: impl BufRead) -> Vec<Mapping> {
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in reader.lines().map_while(Result::ok) {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            if let Some(last) = mappings.last_mut() {
                last.anonymous_kb = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(u64::MAX);
            }
            continue;
        }
        // A private page swapped out counts under `Swap`, not `Anonymous`: it is a copied page all the same.
        if let Some(kb) = line.strip_prefix("Swap:") {
            if let Some(last) = mappings.last_mut() {
                let swapped = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(u64::MAX);
                last.anonymous_kb = last.anonymous_kb.saturating_add(swapped);
            }
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let Some((start, end)) = range.split_once('-') else { continue };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
            continue;
        };
        // offset, device, inode, then the path (may be absent; may contain spaces)
        let path = fields.nth(3).map(|first| {
            let rest: Vec<&str> = fields.collect();
            if rest.is_empty() { first.to_owned() } else { format!("{first} {}", rest.join(" ")) }
        });
        let perms = perms.as_bytes();
        mappings.push(Mapping {
            start,
            end,
            read_only: perms.first() == Some(&b'r') && perms.get(1) == Some(&b'-') && perms.get(3) == Some(&b'p'),
            path: path.unwrap_or_default(),
            // Unknown until its Anonymous line: not releasable.
            anonymous_kb: u64::MAX,
        });
    }
    mappings
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5630ee571000-5630ee697000 r--p 00000000 00:2a 123 /opt/pm host/pmhost
Size:               1176 kB
Anonymous:             0 kB
5630ee697000-5630eea42000 r-xp 00126000 00:2a 123 /opt/pm host/pmhost
Anonymous:             0 kB
Swap:                  0 kB
SwapPss:               0 kB
5630eea42000-5630eea6a000 r--p 004d1000 00:2a 123 /opt/pm host/pmhost
Anonymous:           160 kB
5630eea6a000-5630eea6c000 rw-p 004f9000 00:2a 123 /opt/pm host/pmhost
Anonymous:             8 kB
7fb72ee29000-7fb72ef7f000 r-xp 00028000 08:01 99 /usr/lib/libc.so.6
Anonymous:             0 kB
563120e50000-563120ea8000 rw-p 00000000 00:00 0 [heap]
Anonymous:           280 kB
7fb72efd2000-7fb72efd6000 r--p 00000000 00:00 0
5630eea6c000-5630eea70000 r--p 004fb000 00:2a 123 /opt/pm host/pmhost
Anonymous:             0 kB
Swap:                  8 kB
";

    #[test]
    fn only_clean_read_only_mappings_of_pmhost_are_released() {
        let mappings = parse_smaps(SMAPS.as_bytes());
        assert_eq!(mappings.len(), 8);
        assert_eq!(mappings[1].path, "/opt/pm host/pmhost");
        assert_eq!((mappings[1].start, mappings[1].end), (0x5630ee697000, 0x5630eea42000));
        let own = "/opt/pm host/pmhost";
        let released: Vec<usize> =
            mappings.iter().enumerate().filter(|(_, m)| releasable(m, own)).map(|(i, _)| i).collect();
        // code and the first read-only segment; not the relocated (copied) data, the writable data, libc,
        // the heap, an anonymous mapping whose Anonymous line is missing, nor one whose copied pages are swapped out
        assert_eq!(released, [0, 1]);
        assert!(!releasable(&mappings[6], ""));
    }
}
