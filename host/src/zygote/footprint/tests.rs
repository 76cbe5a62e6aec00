//! Tests of the footprint's learning and applying that need no zygote.

use super::*;

#[test]
fn the_destructors_found_include_this_executables_own() {
    let mut found = Destructors::new();
    found.find();
    let own = record_at_exit as extern "C" fn() as usize;
    assert!(found.entries().contains(&own), "{own:#x} not among {:#x?}", found.entries());
    // Every one of them is code: reading a byte of each must not fault.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    found.touch(&maps);
}

#[test]
fn a_destructor_whose_object_was_unloaded_is_not_touched() {
    // The address of a page no longer mapped, as an object unloaded after the zygote listed it leaves.
    // SAFETY: maps a fresh anonymous page and unmaps it again; nothing else refers to it.
    let gone = unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        libc::munmap(page, 4096);
        page as usize
    };
    let mut found = Destructors::new();
    found.find();
    found.push_for_test(gone);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    found.touch(&maps);
}

#[test]
fn a_learned_run_across_two_mappings_counts_in_each() {
    let code = [(0x1000, 0x2000), (0x4000, 0x3000), (0x9000, 0x1000)];
    let clipped =
        |start, end| -> Vec<(u64, u64)> { within(Mapping { start, end }, &code).map(|m| (m.start, m.end)).collect() };
    assert_eq!(clipped(0x0, 0x5000), [(0x1000, 0x3000), (0x4000, 0x5000)]);
    assert_eq!(clipped(0x5000, 0x8000), [(0x5000, 0x7000)]);
    assert_eq!(clipped(0x7000, 0x9000), []);
}

/// A learner's clone inherits the entries of the code its zygote ran; it must record only what it runs
/// itself, a page at a time (a fault maps the 64 KiB around the page it needs in a mapping of many pages).
#[test]
fn a_learner_maps_only_the_code_pages_it_runs_once_it_starts() {
    use std::io::Write;
    const PAGES: usize = 64;
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&[7u8; PAGES * PAGE as usize]).unwrap();
    // SAFETY: a fresh read-only private mapping of a file this test owns, unmapped at the end.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGES * PAGE as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let page = |index: usize| base as u64 + index as u64 * PAGE;
    // SAFETY: inside the mapping above.
    let touch = |index: usize| unsafe { std::ptr::read_volatile(page(index) as *const u8) };
    let pagemap = std::fs::File::open("/proc/self/pagemap").unwrap();
    let present = || {
        let mut pages = Vec::new();
        let mapping = Mapping { start: page(0), end: page(PAGES) };
        page_runs(&pagemap, mapping, PRESENT, |start, len| {
            pages.extend((start..start + len).step_by(PAGE as usize).map(|at| ((at - page(0)) / PAGE) as usize));
        });
        pages
    };
    (0..PAGES).for_each(|index| assert_eq!(touch(index), 7));
    assert_eq!(present().len(), PAGES, "the mapping as a clone inherits it");

    map_page_by_page(|| std::iter::once(Mapping { start: page(0), end: page(PAGES) }), 2 * PAGES as u64);
    assert_eq!(present(), Vec::<usize>::new(), "what the clone inherited is forgotten");
    touch(10);
    touch(37);
    assert_eq!(present(), [10, 37], "each page run maps alone");
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base, PAGES * PAGE as usize) };
}

/// The clones made while the zygote warms inherit its split mappings: it splits only within a sixteenth of
/// the room they have left.

#[test]
fn a_learner_splits_its_code_within_a_quarter_of_the_mappings_left() {
    for (max, mapped, budget) in
        [(Some(65_530), 60, SPLIT_LIMIT), (Some(200), 60, 35), (Some(200), 199, 0), (Some(200), 400, 0), (None, 60, 0)]
    {
        assert_eq!(split_budget(max, mapped), budget, "max_map_count {max:?}, {mapped} mappings");
    }
}
