//! The bench plugin's marker lines, read back: which worker did what, and when (`CLOCK_MONOTONIC` ns).

use std::collections::BTreeMap;
use std::path::Path;

/// What a marker line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `init` finished; it had started at `start_ns`.
    Init { start_ns: u64 },
    /// A `work` call started.
    Work { call: u64 },
    /// A slow `work` call started.
    Begin { call: u64 },
    /// A slow `work` call is about to return.
    End { call: u64 },
}

/// One marker line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub kind: Kind,
    pub pid: i32,
    pub slot: u32,
    pub generation: u32,
    /// When it was written (for `Init`: when `init` ended).
    pub ns: u64,
}

impl Mark {
    fn parse(line: &str) -> Option<Mark> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [kind, pid, slot, generation, value, ns] = f[..] else { return None };
        let value: u64 = value.parse().ok()?;
        let kind = match kind {
            "init" => Kind::Init { start_ns: value },
            "work" => Kind::Work { call: value },
            "begin" => Kind::Begin { call: value },
            "end" => Kind::End { call: value },
            _ => return None,
        };
        Some(Mark {
            kind,
            pid: pid.parse().ok()?,
            slot: slot.parse().ok()?,
            generation: generation.parse().ok()?,
            ns: ns.parse().ok()?,
        })
    }

    /// Whether this is the start of a `work` call (plain or slow).
    pub fn is_call(&self) -> bool {
        matches!(self.kind, Kind::Work { .. } | Kind::Begin { .. })
    }
}

/// Every complete line of the marker file (a line still being written has no newline yet and is skipped).
pub fn read(path: &Path) -> Vec<Mark> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().filter_map(Mark::parse).collect()
}

/// The first call of each slot's worker (`Work` marks of `generation` only), by slot.
pub fn first_calls(marks: &[Mark], generation: u32) -> BTreeMap<u32, Mark> {
    let mut first: BTreeMap<u32, Mark> = BTreeMap::new();
    for mark in marks.iter().filter(|m| m.is_call() && m.generation == generation) {
        first
            .entry(mark.slot)
            .and_modify(|m| {
                if mark.ns < m.ns {
                    *m = *mark
                }
            })
            .or_insert(*mark);
    }
    first
}

/// The longest time between two consecutive call starts among `times` (sorted or not); 0 with fewer than two.
pub fn longest_gap(times: &mut [u64]) -> u64 {
    times.sort_unstable();
    times.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or(0)
}
