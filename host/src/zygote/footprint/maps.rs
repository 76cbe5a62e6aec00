//! Reading this process's own mappings for the footprint: which are code and which are written
//! (`/proc/self/smaps`), the pages of one that are present (`/proc/self/pagemap`), and the learner's split of
//! its code mappings into one page each and back.

use std::io::Read;
use std::os::unix::fs::FileExt;

use super::PAGE;

/// The kinds of mapping a footprint covers.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    /// File-backed, private, not writable, without a private page, in memory or swapped out (not a relocated
    /// `RELRO`).
    Code,
    /// Writable and private: heap, stack, data, anonymous.
    Written,
}

#[derive(Clone, Copy)]
pub(super) struct Mapping {
    pub(super) start: u64,
    pub(super) end: u64,
}

impl Mapping {
    /// Advice on the whole mapping; a failure leaves it as it was (each step is an optimisation).
    pub(super) fn advise(self, advice: i32) {
        if self.end <= self.start {
            return;
        }
        // SAFETY: advice on this process's own mapping; none that is used here changes memory contents.
        unsafe { libc::madvise(self.start as *mut libc::c_void, (self.end - self.start) as usize, advice) };
    }

    /// Splits the mapping into mappings of one page each (every other page marked `MADV_DONTDUMP`, which
    /// changes nothing but what a core dump holds), spending at most `budget` of the mappings it adds; returns
    /// the budget left. A read fault maps the whole page-cache folio around the page it needs (up to 32 pages
    /// of a large folio on Linux 6.18's ext4, `MADV_RANDOM` or not), but never beyond the faulting mapping.
    pub(super) fn split(self, mut budget: u64) -> u64 {
        let mut page = self.start + PAGE;
        while page < self.end && budget >= 2 {
            // SAFETY: advice on one page of this process's own mapping; it changes no memory contents.
            if unsafe { libc::madvise(page as *mut libc::c_void, PAGE as usize, libc::MADV_DONTDUMP) } != 0 {
                // Out of mappings (`vm.max_map_count`): the rest stays as it is.
                return 0;
            }
            budget -= 2;
            page += 2 * PAGE;
        }
        budget
    }
}

/// Memory the learner reads `/proc/self/smaps` into: a mapping of its own, so that learning writes no page of
/// its heap (which it would then record as a page every worker writes).
pub(super) struct Scratch {
    pub(super) base: *mut u8,
    len: usize,
}

impl Scratch {
    /// Room for the smaps of a few thousand mappings (~1 KiB each; the learner's split code mappings are joined
    /// again before it reads them, see `join_split_code`).
    const LEN: usize = 4 << 20;

    pub(super) fn new() -> Option<Scratch> {
        // SAFETY: a fresh private anonymous mapping, unmapped on drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (base != libc::MAP_FAILED).then_some(Scratch { base: base.cast(), len: Self::LEN })
    }

    /// This process's `/proc/self/smaps`, read into the scratch memory (cut at its end).
    pub(super) fn smaps(&mut self) -> &str {
        self.read("/proc/self/smaps")
    }

    /// A text file of `/proc`, read into the scratch memory (cut at its end).
    pub(super) fn read(&mut self, path: &str) -> &str {
        // SAFETY: the mapping is `len` bytes, readable and writable, and only this borrow uses it.
        let buffer = unsafe { std::slice::from_raw_parts_mut(self.base, self.len) };
        let mut filled = 0;
        if let Ok(mut file) = std::fs::File::open(path) {
            while filled < buffer.len() {
                match file.read(&mut buffer[filled..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => filled += n,
                }
            }
        }
        // A line cut by the end of the buffer is dropped with the rest of what did not fit.
        let text = &buffer[..filled];
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        std::str::from_utf8(&text[..whole]).unwrap_or("")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and nothing borrows it any more.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// The mappings of `kind` in `smaps` (the text of `/proc/self/smaps`).
pub(super) fn mappings(kind: Kind, smaps: &str) -> impl Iterator<Item = Mapping> + '_ {
    let mut current: Option<Mapping> = None;
    smaps.lines().filter_map(move |line| {
        // A private page swapped out counts under `Swap`, not `Anonymous`: a relocated RELRO page the zygote
        // wrote and the kernel swapped out is as much its own as one in memory, and `MADV_DONTNEED` would drop it
        // (the next read would see the file's unrelocated bytes).
        if let Some(amount) = line.strip_prefix("Anonymous:").or_else(|| line.strip_prefix("Swap:")) {
            if kind == Kind::Code && amount.trim().trim_end_matches("kB").trim() != "0" {
                current = None;
            }
            return None;
        }
        if line.starts_with("VmFlags:") {
            return current.take();
        }
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else { return None };
        let (start, end) = range.split_once('-')?;
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else {
            return None;
        };
        let path = fields.nth(3).unwrap_or("");
        let perms = perms.as_bytes();
        let fits = match kind {
            Kind::Code => path.starts_with('/') && perms.get(1) == Some(&b'-') && perms.get(3) == Some(&b'p'),
            Kind::Written => perms.get(1) == Some(&b'w') && perms.get(3) == Some(&b'p'),
        };
        current = fits.then_some(Mapping { start, end });
        None
    })
}

/// This process's mappings of `kind` (in the zygote, which may use its heap; not through a [`Scratch`], whose
/// own mapping would be listed, then unmapped, under the pages to pin).
pub(super) fn own_mappings(kind: Kind) -> Vec<Mapping> {
    let mut smaps = String::new();
    if std::fs::File::open("/proc/self/smaps").and_then(|mut f| f.read_to_string(&mut smaps)).is_err() {
        return Vec::new();
    }
    mappings(kind, &smaps).collect()
}

/// The runs of adjacent read-only private file mappings in `maps` (the text of `/proc/self/maps`, which unlike
/// smaps costs no page table walk): the code mappings, each joined again with the pieces `Mapping::split` cut
/// it into.
pub(super) fn code_runs(maps: &str) -> impl Iterator<Item = Mapping> + '_ {
    let pieces = maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next()?, fields.next()?.as_bytes());
        let (start, end) = range.split_once('-')?;
        let code = fields.nth(3).is_some_and(|path| path.starts_with('/'))
            && perms.get(1) == Some(&b'-')
            && perms.get(3) == Some(&b'p');
        Some((code, Mapping { start: u64::from_str_radix(start, 16).ok()?, end: u64::from_str_radix(end, 16).ok()? }))
    });
    let mut run: Option<Mapping> = None;
    pieces.chain([(false, Mapping { start: 0, end: 0 })]).filter_map(move |(code, piece)| match &mut run {
        Some(joined) if code && joined.end == piece.start => {
            joined.end = piece.end;
            None
        }
        _ => std::mem::replace(&mut run, code.then_some(piece)),
    })
}

/// Undoes `Mapping::split` once the learner has read its code pages: thousands of one-page mappings took
/// ~15 ms to list and walk in its smaps. Clearing `MADV_DONTDUMP` over each run of [`code_runs`] lets the
/// kernel merge its pieces back.
pub(super) fn join_split_code(maps: &str) {
    for run in code_runs(maps) {
        run.advise(libc::MADV_DODUMP);
    }
}

/// The entry points of the ELF destructors of the loaded objects (`DT_FINI` and the `DT_FINI_ARRAY` entries),
/// at most [`Destructors::CAPACITY`]. A learner records before `exit` runs the libraries' destructors, so it
/// maps their first pages itself (`touch`): libgcc_s's were two faults in every worker's exit.
pub(super) struct Destructors {
    entries: [usize; Self::CAPACITY],
    len: usize,
}

impl Destructors {
    const CAPACITY: usize = 64;

    pub(super) const fn new() -> Self {
        Destructors { entries: [0; Self::CAPACITY], len: 0 }
    }

    /// Lists them, from the loader's list of loaded objects.
    pub(super) fn find(&mut self) {
        unsafe extern "C" fn each(
            info: *mut libc::dl_phdr_info,
            _: libc::size_t,
            found: *mut libc::c_void,
        ) -> libc::c_int {
            // SAFETY: the loader passes a valid `dl_phdr_info` whose program headers and dynamic section are
            // mapped while the callback runs; DT_FINI and DT_FINI_ARRAY are offsets from the load address (the
            // loader relocates neither tag in place) and the array holds relocated function addresses. `found`
            // is the `Destructors` that `find` passed.
            unsafe {
                let (info, found) = (&*info, &mut *found.cast::<Destructors>());
                let base = info.dlpi_addr as usize;
                let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
                let Some(dynamic) = headers.iter().find(|h| h.p_type == libc::PT_DYNAMIC) else { return 0 };
                let mut entry = (base + dynamic.p_vaddr as usize) as *const Dyn;
                let (mut array, mut array_len) = (0usize, 0usize);
                while (*entry).tag != 0 {
                    let value = (*entry).value as usize;
                    match (*entry).tag {
                        DT_FINI => found.push(base + value),
                        DT_FINI_ARRAY => array = base + value,
                        DT_FINI_ARRAYSZ => array_len = value / std::mem::size_of::<usize>(),
                        _ => {}
                    }
                    entry = entry.add(1);
                }
                if array != 0 {
                    for function in std::slice::from_raw_parts(array as *const usize, array_len) {
                        found.push(*function);
                    }
                }
            }
            0
        }
        /// An entry of an ELF64 dynamic section.
        #[repr(C)]
        struct Dyn {
            tag: i64,
            value: u64,
        }
        const DT_FINI: i64 = 13;
        const DT_FINI_ARRAY: i64 = 26;
        const DT_FINI_ARRAYSZ: i64 = 28;
        // SAFETY: `each` only reads what the loader hands it and writes to `self`, which outlives the call.
        unsafe { libc::dl_iterate_phdr(Some(each), (self as *mut Self).cast()) };
    }

    fn push(&mut self, address: usize) {
        // glibc's `_dl_fini` skips the entries 0 and -1 (unused slots); anything else is code it will call.
        if address != 0 && address != usize::MAX && self.len < Self::CAPACITY {
            self.entries[self.len] = address;
            self.len += 1;
        }
    }

    /// Reads one byte at each entry point still in executable code, as `maps` (the text of `/proc/self/maps`)
    /// lists it: maps that page (alone, while the learner's code mappings are split). The list was made in
    /// the zygote: an object the worker unloaded since (`dlclose`) left addresses that are no longer mapped,
    /// or mapped as something else.
    pub(super) fn touch(&self, maps: &str) {
        let code = maps.lines().filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?.as_bytes());
            let (start, end) = range.split_once('-')?;
            let readable_code = perms.first() == Some(&b'r') && perms.get(2) == Some(&b'x');
            readable_code.then_some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        });
        for (start, end) in code {
            for address in self.entries[..self.len].iter().filter(|a| (start..end).contains(*a)) {
                // SAFETY: inside a readable mapping of this process (the learner is single-threaded here: it
                // is exiting, and nothing unmaps code meanwhile).
                unsafe { std::ptr::read_volatile(*address as *const u8) };
            }
        }
    }

    #[cfg(test)]
    pub(super) fn push_for_test(&mut self, address: usize) {
        self.push(address);
    }

    #[cfg(test)]
    pub(super) fn entries(&self) -> &[usize] {
        &self.entries[..self.len]
    }
}

/// Calls `run(start, length)` for each run of pages of `mapping` whose pagemap entries have all the bits of
/// `wanted`.
pub(super) fn page_runs(pagemap: &std::fs::File, mapping: Mapping, wanted: u64, mut run: impl FnMut(u64, u64)) {
    let mut entries = [0u8; 4096];
    let mut open: Option<u64> = None;
    let mut address = mapping.start;
    while address < mapping.end {
        let chunk = (((mapping.end - address) / PAGE) as usize * 8).min(entries.len());
        if pagemap.read_exact_at(&mut entries[..chunk], address / PAGE * 8).is_err() {
            break;
        }
        for entry in entries[..chunk].chunks_exact(8) {
            let entry = u64::from_le_bytes(entry.try_into().unwrap_or_default());
            match (entry & wanted == wanted, open) {
                (true, None) => open = Some(address),
                (false, Some(from)) => {
                    run(from, address - from);
                    open = None;
                }
                _ => {}
            }
            address += PAGE;
        }
    }
    if let Some(from) = open {
        run(from, address - from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One smaps entry: a private read-only mapping of a file with `anonymous` and `swap` kB of private pages.
    fn entry(start: &str, anonymous: u32, swap: u32) -> String {
        format!(
            "{start}-7f0000010000 r--p 00000000 08:01 42 /usr/lib/libx.so\nSize: 64 kB\nRss: 8 kB\n\
             Anonymous: {anonymous} kB\nAnonHugePages: 0 kB\nSwap: {swap} kB\nSwapPss: {swap} kB\n\
             Locked: 0 kB\nVmFlags: rd mr mw me\n"
        )
    }

    #[test]
    fn code_is_a_read_only_file_mapping_without_private_pages_in_memory_or_swapped_out() {
        for (anonymous, swap, code) in [(0, 0, true), (4, 0, false), (0, 8, false), (4, 8, false)] {
            let smaps = entry("7f0000000000", anonymous, swap);
            let found: Vec<(u64, u64)> = mappings(Kind::Code, &smaps).map(|m| (m.start, m.end)).collect();
            let expected = if code { vec![(0x7f00_0000_0000, 0x7f00_0001_0000)] } else { Vec::new() };
            assert_eq!(found, expected, "Anonymous {anonymous} kB, Swap {swap} kB");
        }
    }
}
