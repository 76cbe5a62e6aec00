//! Which files in a log directory belong to a log (`{base}.log`, `{base}.YYYY-MM-DD.log`,
//! `{base}.YYYY-MM-DD-HH.log`), in the order they were written, and which of them can hold lines since a moment.

use crate::rundir::{Dir, FileKind};

/// One file of a log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogFile {
    /// `""` for an unrotated file, else `YYYY-MM-DD` or `YYYY-MM-DD-HH`.
    pub period: String,
    /// The file's name in the log directory.
    pub name: String,
}

fn is_period(text: &str) -> bool {
    let digits = |range: std::ops::Range<usize>| text.get(range).is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
    let day = digits(0..4) && &text[4..5] == "-" && digits(5..7) && &text[7..8] == "-" && digits(8..10);
    match text.len() {
        10 => day,
        13 => day && &text[10..11] == "-" && digits(11..13),
        _ => false,
    }
}

/// The period of `name` if it is a file of the log `base`.
pub fn period_of(base: &str, name: &str) -> Option<String> {
    let middle = name.strip_prefix(base)?.strip_suffix(".log")?;
    if middle.is_empty() {
        return Some(String::new());
    }
    let period = middle.strip_prefix('.')?;
    is_period(period).then(|| period.to_owned())
}

/// The files of the log `base` in `dir`, oldest period first (an unrotated file first). Only regular files
/// are listed; anything else with such a name (a FIFO, a directory) is left out.
pub fn list(dir: &Dir, base: &str) -> std::io::Result<Vec<LogFile>> {
    let mut files: Vec<LogFile> = dir
        .entries()?
        .into_iter()
        .filter(|(_, kind)| *kind == FileKind::File)
        .filter_map(|(name, _)| period_of(base, &name).map(|period| LogFile { period, name }))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether a file of `period` can hold lines written at or after `since` (`YYYY-MM-DD HH:MM:SS`).
pub fn may_hold_since(period: &str, since: &str) -> bool {
    match period.len() {
        10 => period >= &since[..10],
        13 => period >= format!("{}-{}", &since[..10], &since[11..13]).as_str(),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_log_are_recognised_and_others_not() {
        assert_eq!(period_of("run", "run.2026-11-30.log").as_deref(), Some("2026-11-30"));
        assert_eq!(period_of("run", "run.2026-11-30-07.log").as_deref(), Some("2026-11-30-07"));
        assert_eq!(period_of("run", "run.log").as_deref(), Some(""));
        for other in ["error_run.2026-11-30.log", "runner.2026-11-30.log", "run.x.log", "run.2026-11-30.log.1"] {
            assert_eq!(period_of("run", other), None, "{other}");
        }
    }

    #[test]
    fn periods_before_the_day_or_hour_of_since_are_skipped() {
        assert!(!may_hold_since("2026-11-29", "2026-11-30 00:10:00"));
        assert!(may_hold_since("2026-11-30", "2026-11-30 00:10:00"));
        assert!(!may_hold_since("2026-11-30-09", "2026-11-30 10:10:00"));
        assert!(may_hold_since("2026-11-30-10", "2026-11-30 10:10:00"));
        assert!(may_hold_since("", "2026-11-30 10:10:00"));
    }
}
