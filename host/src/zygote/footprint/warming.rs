//! The zygote's warming: its code split a page per mapping for its first clones after applying a footprint,
//! so that what it runs meanwhile maps exactly its pages (see "The zygote's own pages" in the parent module).

use std::sync::atomic::{AtomicU32, Ordering};

use super::SPLIT_LIMIT;
use super::maps::{Mapping, Scratch, join_split_code};

/// Clones the zygote makes with its code mappings split after applying a footprint (see "The zygote's own
/// pages"), within [`WARMING_TIME`]: enough for its steady rounds (a spare's "taken" read, the next spare
/// cloned) and the rarer ones (a request cloned directly, a spare's end), few enough that the clones made
/// meanwhile, each of which copies the ~2 000 mappings (and keeps them for its life), stay a bounded few once
/// per zygote (the zygote's present pages were the same with 64). Counted per clone, spares and requests cloned
/// directly alike: a burst of requests (the slots of workers that retired together) is cloned directly, and
/// counted per round it once left 26 of 32 workers split for their whole life.
const WARMING_CLONES: u32 = 8;

/// The longest the zygote stays split: a task whose workers live long clones a spare now and then, and each
/// such worker would keep the split mappings for its life. The zygote's wait ends by then (see
/// [`warming_left`]), so an idle zygote joins too.
const WARMING_TIME: std::time::Duration = std::time::Duration::from_millis(200);

/// The most of the room `vm.max_map_count` leaves that the zygote spends on splitting: each clone made while it
/// warms inherits the split mappings, then needs room of its own (its plugin's threads, allocations, `dlopen`s).
/// A quarter, as a learner spends, made a plugin that maps ~180 of its own fail in the clones made while the
/// zygote warmed (14–26 failed inits in 4 s against 2, `vm.max_map_count` at 300); a sixteenth is 4 093 at the
/// default limit (a release build's ~1 950 code pages all fit), 16 at that one.
const WARMING_ROOM_SHARE: u64 = 16;

/// In the zygote: clones left before it joins its split code mappings again (0: not split), and since when it
/// is split.
static WARMING: AtomicU32 = AtomicU32::new(0);
static WARMING_SINCE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// How many mappings the zygote may add by splitting its code while it warms, given the kernel's
/// `vm.max_map_count` (`None`: unknown) and the mappings it has: at most [`SPLIT_LIMIT`] and a
/// [`WARMING_ROOM_SHARE`] of the room left, so that the clones made meanwhile keep nearly all of theirs.
fn warming_budget(max_map_count: Option<u64>, mapped: u64) -> u64 {
    max_map_count.map_or(0, |max| (max.saturating_sub(mapped) / WARMING_ROOM_SHARE).min(SPLIT_LIMIT))
}

/// Splits the zygote's code mappings into pages, as a learner does, until [`warming_clone`] or
/// [`warming_tick`] joins them again; the pages split.
pub(super) fn split_while_warming(mappings: &[Mapping]) -> u64 {
    // Read into a scratch mapping: what the zygote's heap keeps, every clone copies.
    let Some(mut scratch) = Scratch::new() else { return 0 };
    let mapped = scratch.read("/proc/self/maps").lines().count() as u64;
    // Not through the scratch mapping: a sysctl read of megabytes fails (the kernel allocates what is asked).
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse().ok());
    let budget = warming_budget(max, mapped);
    let left = mappings.iter().fold(budget, |budget, mapping| mapping.split(budget));
    if left < budget {
        WARMING.store(WARMING_CLONES, Ordering::Relaxed);
        let _ = WARMING_SINCE.set(std::time::Instant::now());
    }
    budget - left
}

/// In the zygote, how long it may still wait before [`WARMING_TIME`] is over (`None`: not warming).
pub fn warming_left() -> Option<std::time::Duration> {
    if WARMING.load(Ordering::Relaxed) == 0 {
        return None;
    }
    Some(WARMING_SINCE.get().map_or(std::time::Duration::ZERO, |since| WARMING_TIME.saturating_sub(since.elapsed())))
}

/// In the zygote, after each wake-up: once [`WARMING_TIME`] has passed since it split its code mappings, it
/// joins them again (an idle zygote too: its wait ends then, see [`warming_left`]).
pub fn warming_tick() {
    if warming_left().is_some_and(|left| left.is_zero()) {
        end_warming();
    }
}

/// In the zygote, before each clone (a spare, or a request cloned directly): once [`WARMING_CLONES`] clones or
/// [`WARMING_TIME`] have passed since it split its code mappings, it joins them again (a clone then copies a
/// few dozen mappings, not thousands).
pub fn warming_clone() {
    let left = WARMING.load(Ordering::Relaxed);
    if left == 0 {
        return;
    }
    if left == 1 || warming_left().is_none_or(|left| left.is_zero()) {
        end_warming();
    } else {
        WARMING.store(left - 1, Ordering::Relaxed);
    }
}

/// Joins the zygote's split code mappings again.
fn end_warming() {
    WARMING.store(0, Ordering::Relaxed);
    if let Some(mut scratch) = Scratch::new() {
        join_split_code(scratch.read("/proc/self/maps"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zygote_splits_its_code_within_a_sixteenth_of_the_mappings_left() {
        for (max, mapped, budget) in [
            (Some(65_530), 40, 4_093),
            (Some(300), 44, 16),
            (Some(300), 400, 0),
            (Some(1_000_000), 40, SPLIT_LIMIT),
            (None, 40, 0),
        ] {
            assert_eq!(warming_budget(max, mapped), budget, "max_map_count {max:?}, {mapped} mappings");
        }
    }
}
