//! Which records `pmhost logs` shows: by task, slot, pid, level, time and output stream.

use super::record::{LogLevel, Record};

/// What a record must match (every condition given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// One host's lines only (hosts share a log directory by default).
    pub host: Option<HostScope>,
    /// The task: a `task` field, or without one a worker title `...:Worker:{task}`.
    pub task: Option<String>,
    /// A `slot` field.
    pub slot: Option<u32>,
    /// The writing process, or a `pid` field (master lines about a worker).
    pub pid: Option<i32>,
    /// This level and more severe.
    pub level: Option<LogLevel>,
    /// Written at or after this local time (`YYYY-MM-DD HH:MM:SS`).
    pub since: Option<String>,
    /// A `stream` field (`stdout`, `stderr`: captured worker output).
    pub stream: Option<String>,
}

/// A host's lines: its master's (titled `...:Master:{name}`) and those of its tasks' workers. Worker lines carry
/// their task, not their host: two hosts that both run a task of the same name are not told apart by it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostScope {
    pub name: String,
    pub tasks: Vec<String>,
}

impl Filter {
    /// Whether `record` is shown.
    pub fn matches(&self, record: &Record) -> bool {
        let field_is = |key: &str, want: &str| record.field(key).any(|v| v == want);
        // The task field when the line has one, else the worker title.
        let of_task = |task: &str| match record.field("task").next() {
            Some(_) => field_is("task", task),
            None => record.title.rsplit_once(":Worker:").is_some_and(|(_, t)| t == task),
        };
        if let Some(host) = &self.host {
            // A master's line belongs to its host, whichever task it is about; any other line to its task's.
            let ours = match record.title.rsplit_once(":Master:") {
                Some((_, name)) => name == host.name,
                None => host.tasks.iter().any(|task| of_task(task)),
            };
            if !ours {
                return false;
            }
        }
        if let Some(task) = &self.task
            && !of_task(task)
        {
            return false;
        }
        if let Some(slot) = self.slot
            && !field_is("slot", &slot.to_string())
        {
            return false;
        }
        if let Some(pid) = self.pid
            && !(record.pid == Some(pid) || field_is("pid", &pid.to_string()))
        {
            return false;
        }
        if let Some(level) = self.level
            && record.level.is_none_or(|l| l > level)
        {
            return false;
        }
        if let Some(since) = &self.since
            && record.time.as_str() < since.as_str()
        {
            return false;
        }
        if let Some(stream) = &self.stream
            && !field_is("stream", stream)
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: &str, pid: i32, time: &str, rest: &str) -> Record {
        Record::parse(&format!("[{level}][process_m:Worker:mail {pid} 2026-11-30 {time}]: {rest}"))
    }

    #[test]
    fn each_condition_filters_and_all_must_hold() {
        let worker = line("Info", 10, "10:00:00", "hi task=mail slot=1 pid=10 generation=1");
        let master = Record::parse(
            "[Warn][process_m:Master:h 9 2026-11-30 10:05:00]: worker exited task=mail slot=1 pid=10 code=1",
        );
        let output = line("Warn", 11, "10:06:00", "oops stream=stderr task=mail slot=2 pid=11");
        let untagged = line("Info", 12, "10:07:00", "no fields");
        let tagged_other = line("Info", 12, "10:07:00", "hi task=other");
        let mail = Filter { task: Some("mail".into()), ..Filter::default() };
        assert!(mail.matches(&untagged) && !mail.matches(&tagged_other), "the task field wins over the title");
        let cases: &[(Filter, [bool; 3])] = &[
            (Filter::default(), [true, true, true]),
            (Filter { task: Some("mail".into()), ..Filter::default() }, [true, true, true]),
            (Filter { task: Some("other".into()), ..Filter::default() }, [false, false, false]),
            (Filter { slot: Some(1), ..Filter::default() }, [true, true, false]),
            (Filter { pid: Some(10), ..Filter::default() }, [true, true, false]),
            (Filter { pid: Some(9), ..Filter::default() }, [false, true, false]),
            (Filter { level: Some(LogLevel::Warn), ..Filter::default() }, [false, true, true]),
            (Filter { level: Some(LogLevel::Error), ..Filter::default() }, [false, false, false]),
            (Filter { since: Some("2026-11-30 10:05:00".into()), ..Filter::default() }, [false, true, true]),
            (Filter { stream: Some("stderr".into()), ..Filter::default() }, [false, false, true]),
            (Filter { slot: Some(1), level: Some(LogLevel::Warn), ..Filter::default() }, [false, true, false]),
        ];
        for (filter, expected) in cases {
            let got = [filter.matches(&worker), filter.matches(&master), filter.matches(&output)];
            assert_eq!(&got, expected, "{filter:?}");
        }
    }

    #[test]
    fn a_host_scope_keeps_its_masters_lines_and_its_tasks_lines() {
        let scope = |name: &str, tasks: &[&str]| Filter {
            host: Some(HostScope { name: name.into(), tasks: tasks.iter().map(|t| t.to_string()).collect() }),
            ..Filter::default()
        };
        let lines = [
            Record::parse("[Info][process_m:Master:h 9 2026-11-30 10:00:00]: master started pid=9"),
            Record::parse("[Info][process_m:Master:other 8 2026-11-30 10:00:00]: worker exited task=mail pid=3"),
            line("Info", 10, "10:00:01", "hi task=mail slot=0 pid=10"),
            line("Info", 11, "10:00:01", "printed this stream=stdout task=send slot=0 pid=11"),
            line("Info", 12, "10:00:02", "no fields"),
        ];
        let cases: &[(Filter, [bool; 5])] = &[
            (scope("h", &["mail"]), [true, false, true, false, true]),
            (scope("h", &["send"]), [true, false, false, true, false]),
            (scope("other", &["other"]), [false, true, false, false, false]),
        ];
        for (filter, expected) in cases {
            let got = [0, 1, 2, 3, 4].map(|i| filter.matches(&lines[i]));
            assert_eq!(&got, expected, "{filter:?}");
        }
    }
}
