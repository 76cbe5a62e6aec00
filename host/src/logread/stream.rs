//! Reading logs as record streams: one stream per log (its files in period order, moving on to a newer file
//! when one appears), lines cut at a bounded length, and several streams merged in time order.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use super::files::{self, LogFile};
use super::record::Record;
use crate::rundir::Dir;

/// Longest line kept; the rest of a longer line is dropped and the line marked as cut.
pub const MAX_LINE: usize = 64 << 10;

/// Splits bytes into lines, cutting each at [`MAX_LINE`]; a partial last line waits for more bytes.
#[derive(Debug, Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    cut: bool,
    /// Reading started inside a line: its rest is dropped.
    skip_partial: bool,
}

impl LineSplitter {
    /// Adds bytes; complete lines go to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.push(&bytes[..end]);
            let line = self.take();
            if !std::mem::take(&mut self.skip_partial) {
                out.push(line);
            }
            bytes = &bytes[end + 1..];
        }
        self.push(bytes);
    }

    /// The partial line, if any (its file ended without a newline).
    pub fn finish(&mut self) -> Option<String> {
        let line = (!self.pending.is_empty() || self.cut).then(|| self.take());
        if std::mem::take(&mut self.skip_partial) { None } else { line }
    }

    fn push(&mut self, part: &[u8]) {
        let room = MAX_LINE - self.pending.len();
        if part.len() > room {
            self.pending.extend_from_slice(&part[..room]);
            self.cut = true;
        } else {
            self.pending.extend_from_slice(part);
        }
    }

    fn take(&mut self) -> String {
        let mut line = String::from_utf8_lossy(&self.pending).into_owned();
        if std::mem::take(&mut self.cut) {
            line.push_str(" [line cut at 64 KiB]");
        }
        self.pending.clear();
        line
    }
}

struct OpenFile {
    handle: File,
    splitter: LineSplitter,
}

/// The records of one log (`process` or `run`), file after file.
pub struct LogStream {
    base: String,
    /// Files not read yet, oldest first.
    queue: VecDeque<LogFile>,
    current: Option<OpenFile>,
    /// The newest file queued or opened so far.
    newest: Option<LogFile>,
    /// The last line with a header (a continuation line takes its header).
    previous: Option<Record>,
    ready: VecDeque<Record>,
    buffer: Vec<u8>,
    /// Where reading starts when only the end of the log is read: a file and an offset in it.
    start: Option<(String, u64)>,
    /// Older bytes of the log were left out.
    truncated: bool,
    /// The time of the first record read with a header.
    first_time: Option<String>,
    /// Reading started inside the log: lines before the first header (the end of a message whose start was
    /// left out) are dropped.
    skip_headless: bool,
}

/// How much of the logs a read covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Everything (after `--since` pruning).
    Complete,
    /// Records at or before this time may have been left out.
    After(String),
    /// A log was read from inside, but no record of it was seen: anything may be missing.
    Unknown,
}

impl LogStream {
    /// The log `base` in `dir`, leaving out files too old to hold lines since `since`, and with `last_bytes`
    /// everything but the log's last bytes (reading then starts at the first whole line in them).
    pub fn new(dir: &Dir, base: &str, since: Option<&str>, last_bytes: Option<u64>) -> std::io::Result<LogStream> {
        let mut queue: VecDeque<LogFile> = files::list(dir, base)?
            .into_iter()
            .filter(|f| since.is_none_or(|since| files::may_hold_since(&f.period, since)))
            .collect();
        let newest = queue.back().cloned();
        let (mut start, mut truncated) = (None, false);
        if let Some(window) = last_bytes {
            let mut kept = VecDeque::new();
            let mut total = 0u64;
            while let Some(file) = queue.pop_back() {
                let size = match dir.open_file(&file.name) {
                    Ok(Some(handle)) => handle.metadata().map_or(0, |m| m.len()),
                    _ => 0,
                };
                if total + size >= window {
                    let offset = total + size - window;
                    truncated = offset > 0 || !queue.is_empty();
                    start = Some((file.name.clone(), offset));
                    kept.push_front(file);
                    break;
                }
                total += size;
                kept.push_front(file);
            }
            queue = kept;
        }
        Ok(LogStream {
            base: base.to_owned(),
            queue,
            current: None,
            newest,
            previous: None,
            ready: VecDeque::new(),
            buffer: vec![0; 64 << 10],
            start,
            truncated,
            first_time: None,
            skip_headless: truncated,
        })
    }

    /// Opens a file of the log, at the start offset if reading starts inside it.
    fn open(&self, dir: &Dir, file: &LogFile) -> Option<OpenFile> {
        let mut handle = match dir.open_file(&file.name) {
            Ok(handle) => handle?,
            Err(e) => {
                tracing::warn!("skipping a log file: {e}");
                return None;
            }
        };
        let mut splitter = LineSplitter::default();
        if let Some((name, offset)) = &self.start
            && *name == file.name
            && *offset > 0
        {
            // Unless the byte before the offset ends a line, reading starts inside one: its rest is dropped.
            let mut before = [0u8; 1];
            let at_line_start = std::os::unix::fs::FileExt::read_exact_at(&handle, &mut before, offset - 1)
                .is_ok_and(|()| before[0] == b'\n');
            splitter.skip_partial = !at_line_start;
            handle.seek(SeekFrom::Start(*offset)).ok()?;
        }
        Some(OpenFile { handle, splitter })
    }

    /// Looks for files newer than any seen so far (a rotation); they are read once the current one is done.
    pub fn rescan(&mut self, dir: &Dir) {
        let Ok(found) = files::list(dir, &self.base) else { return };
        for file in found {
            if self.newest.as_ref().is_none_or(|newest| file > *newest) {
                self.newest = Some(file.clone());
                self.queue.push_back(file);
            }
        }
    }

    /// The next record available now. At the end of the newest file a line without its newline is returned
    /// only if `take_partial` (reading to the end); when following, it waits for the rest of the line.
    pub fn next_record(&mut self, dir: &Dir, take_partial: bool) -> Option<Record> {
        loop {
            if let Some(record) = self.ready.pop_front() {
                return Some(record);
            }
            let Some(open) = self.current.as_mut() else {
                let file = self.queue.pop_front()?;
                self.current = self.open(dir, &file);
                continue;
            };
            let mut lines = Vec::new();
            match open.handle.read(&mut self.buffer) {
                Ok(0) | Err(_) => {
                    let newest = self.queue.is_empty();
                    if newest && !take_partial {
                        // A file cut shorter (truncated by a person) is read again from its start.
                        let position = open.handle.stream_position().unwrap_or(0);
                        if open.handle.metadata().is_ok_and(|m| m.len() < position) {
                            let _ = open.handle.seek(SeekFrom::Start(0));
                            continue;
                        }
                        return None;
                    }
                    lines.extend(open.splitter.finish());
                    if !newest {
                        self.current = None;
                    }
                    if lines.is_empty() {
                        if newest {
                            return None;
                        }
                        continue;
                    }
                }
                Ok(n) => open.splitter.feed(&self.buffer[..n], &mut lines),
            }
            for line in lines {
                let mut record = Record::parse(&line);
                if !record.has_header() && self.skip_headless {
                    continue;
                }
                if record.has_header() {
                    self.skip_headless = false;
                    if self.first_time.is_none() {
                        self.first_time = Some(record.time.clone());
                    }
                    self.previous = Some(record.clone());
                } else if let Some(previous) = &self.previous {
                    record.inherit(previous);
                }
                self.ready.push_back(record);
            }
        }
    }
}

/// Several logs merged in time order (at equal times, the earlier stream first).
pub struct Merged {
    streams: Vec<(LogStream, Option<Record>)>,
}

impl Merged {
    pub fn new(streams: Vec<LogStream>) -> Merged {
        Merged { streams: streams.into_iter().map(|s| (s, None)).collect() }
    }

    /// The next record available now (see [`LogStream::next_record`]).
    pub fn next_record(&mut self, dir: &Dir, take_partial: bool) -> Option<Record> {
        for (stream, head) in &mut self.streams {
            if head.is_none() {
                *head = stream.next_record(dir, take_partial);
            }
        }
        let earliest = self
            .streams
            .iter()
            .enumerate()
            .filter_map(|(index, (_, head))| head.as_ref().map(|record| (record.time.as_str(), index)))
            .min()?
            .1;
        self.streams[earliest].1.take()
    }

    /// How much of the logs the records read so far cover (see [`LogStream::new`]'s `last_bytes`).
    pub fn coverage(&self) -> Coverage {
        let mut coverage = Coverage::Complete;
        for (stream, _) in self.streams.iter().filter(|(s, _)| s.truncated) {
            match &stream.first_time {
                None => return Coverage::Unknown,
                Some(time) => {
                    if !matches!(&coverage, Coverage::After(later) if later >= time) {
                        coverage = Coverage::After(time.clone());
                    }
                }
            }
        }
        coverage
    }

    /// Looks for rotated files of every log.
    pub fn rescan(&mut self, dir: &Dir) {
        for (stream, _) in &mut self.streams {
            stream.rescan(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_partial_lines_wait_and_long_lines_are_cut() {
        let mut splitter = LineSplitter::default();
        let mut out = Vec::new();
        splitter.feed(b"one\ntw", &mut out);
        assert_eq!(out, ["one"]);
        splitter.feed(b"o\n", &mut out);
        assert_eq!(out, ["one", "two"]);
        out.clear();
        splitter.feed(&vec![b'x'; MAX_LINE + 10], &mut out);
        splitter.feed(b"yy\nz", &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("xxx") && out[0].ends_with("[line cut at 64 KiB]"));
        assert_eq!(out[0].len(), MAX_LINE + " [line cut at 64 KiB]".len());
        assert_eq!(splitter.finish().as_deref(), Some("z"));
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn a_read_that_starts_inside_a_line_drops_its_rest() {
        let mut splitter = LineSplitter { skip_partial: true, ..LineSplitter::default() };
        let mut out = Vec::new();
        splitter.feed(b"of a line\nwhole\n", &mut out);
        assert_eq!(out, ["whole"]);
        let mut splitter = LineSplitter { skip_partial: true, ..LineSplitter::default() };
        splitter.feed(b"no newline yet", &mut out);
        assert_eq!(splitter.finish(), None);
    }
}
