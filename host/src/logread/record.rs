//! One log line read back: its header (time, level, title, pid) and its `key=value` fields, parsed from the text
//! shape `[Info][title pid YYYY-MM-DD HH:MM:SS]: message key=value ...` or from a JSON line; and its conversion to
//! a JSON object.

use serde_json::{Map, Value};

/// A record's level, most severe first (so `a <= b` means "a is at least as severe as b").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// Reads `Error`, `ERROR`, `error`, `warning`...
    pub fn parse(text: &str) -> Option<LogLevel> {
        match text.to_ascii_lowercase().as_str() {
            "error" => Some(LogLevel::Error),
            "warn" | "warning" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            "trace" => Some(LogLevel::Trace),
            _ => None,
        }
    }

    /// The word the JSON format uses (`INFO`).
    pub fn json_word(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
            LogLevel::Trace => "TRACE",
        }
    }
}

/// One line of a log file, as stored, with what could be read from it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The line as stored, without its newline.
    pub line: String,
    /// The line is a JSON object.
    pub json: bool,
    /// `YYYY-MM-DD HH:MM:SS`, local time (empty when the line has no header).
    pub time: String,
    pub level: Option<LogLevel>,
    pub title: String,
    /// The pid of the process that wrote the line.
    pub pid: Option<i32>,
    pub message: String,
    /// Event and span fields, values unquoted. A key may appear more than once (an event field and a span field).
    pub fields: Vec<(String, String)>,
}

impl Record {
    /// Parses a line. A line without a header (a continuation of a multi-line message) keeps only `line` and
    /// `message`; the reader gives it the header of the line before.
    pub fn parse(line: &str) -> Record {
        let parsed = if line.starts_with('{') { parse_json(line) } else { parse_text(line) };
        parsed.unwrap_or_else(|| Record { line: line.to_owned(), message: line.to_owned(), ..Record::default() })
    }

    /// Whether the header was read (a line of pmhost's own shape).
    pub fn has_header(&self) -> bool {
        !self.time.is_empty()
    }

    /// Takes the header and fields of `previous` (for a continuation line).
    pub fn inherit(&mut self, previous: &Record) {
        self.time.clone_from(&previous.time);
        self.level = previous.level;
        self.title.clone_from(&previous.title);
        self.pid = previous.pid;
        self.fields.clone_from(&previous.fields);
    }

    /// The values of field `key`.
    pub fn field<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The record as one JSON object: a JSON line as it is, a text line converted to the JSON format's keys
    /// (time, level, title, pid, message, then the fields; integer values as numbers).
    pub fn to_json(&self) -> String {
        if self.json {
            return self.line.clone();
        }
        let mut object = Map::new();
        if self.has_header() {
            object.insert("time".into(), self.time.clone().into());
            if let Some(level) = self.level {
                object.insert("level".into(), level.json_word().into());
            }
            object.insert("title".into(), self.title.clone().into());
            if let Some(pid) = self.pid {
                object.insert("pid".into(), pid.into());
            }
        }
        object.insert("message".into(), self.message.clone().into());
        for (key, value) in &self.fields {
            let value = value.parse::<i64>().map_or_else(|_| Value::String(value.clone()), Value::from);
            object.entry(key.clone()).or_insert(value);
        }
        Value::Object(object).to_string()
    }

    /// Byte range of the level word in `line` (text lines), for colouring.
    pub fn level_span(&self) -> Option<std::ops::Range<usize>> {
        if self.json || self.level.is_none() || !self.line.starts_with('[') {
            return None;
        }
        self.line.find(']').map(|end| 0..end + 1)
    }
}

fn parse_text(line: &str) -> Option<Record> {
    let rest = line.strip_prefix('[')?;
    let (level, rest) = rest.split_once("][")?;
    let level = LogLevel::parse(level)?;
    let (header, body) = rest.split_once("]: ").or_else(|| rest.strip_suffix("]:").map(|h| (h, "")))?;
    let mut parts = header.rsplitn(4, ' ');
    let (clock, date, pid, title) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if date.len() != 10 || clock.len() != 8 {
        return None;
    }
    let (message, fields) = split_fields(body);
    Some(Record {
        line: line.to_owned(),
        json: false,
        time: format!("{date} {clock}"),
        level: Some(level),
        title: title.to_owned(),
        pid: pid.parse().ok(),
        message: message.to_owned(),
        fields,
    })
}

fn parse_json(line: &str) -> Option<Record> {
    let Ok(Value::Object(object)) = serde_json::from_str::<Value>(line) else { return None };
    let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut fields = Vec::new();
    for (key, value) in &object {
        match key.as_str() {
            "time" | "level" | "title" | "pid" | "message" | "target" => {}
            "spans" => {
                for span in value.as_array().into_iter().flatten().filter_map(Value::as_str) {
                    let inner = span.split_once('{').map_or("", |(_, rest)| rest.trim_end_matches('}'));
                    fields.extend(tokens(inner).into_iter().filter_map(|t| t.pair));
                }
            }
            _ => fields.push((key.clone(), value.as_str().map_or_else(|| value.to_string(), str::to_owned))),
        }
    }
    Some(Record {
        line: line.to_owned(),
        json: true,
        time: text("time"),
        level: object.get("level").and_then(Value::as_str).and_then(LogLevel::parse),
        title: text("title"),
        pid: object.get("pid").and_then(Value::as_i64).and_then(|p| i32::try_from(p).ok()),
        message: text("message"),
        fields,
    })
}

/// A token of a text body: a word, or `key=value` (value unquoted).
struct Token {
    start: usize,
    pair: Option<(String, String)>,
}

fn is_key(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Splits on spaces, keeping a double-quoted value (with `\"` escapes) in one token.
fn tokens(body: &str) -> Vec<Token> {
    let bytes = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b' ' {
            i += 1;
            continue;
        }
        let start = i;
        let mut quoted = false;
        while i < bytes.len() && (quoted || bytes[i] != b' ') {
            match bytes[i] {
                b'\\' if quoted => i += 1,
                b'"' => quoted = !quoted,
                _ => {}
            }
            i += 1;
        }
        let word = &body[start..i.min(body.len())];
        let pair = word.split_once('=').filter(|(k, _)| is_key(k)).map(|(k, v)| (k.to_owned(), unquote(v)));
        out.push(Token { start, pair });
    }
    out
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => serde_json::from_str::<String>(value).unwrap_or_else(|_| inner.to_owned()),
        None => value.to_owned(),
    }
}

/// Splits a text body into its message and its trailing fields: the longest run of `key=value` tokens at the
/// end in which no key repeats (span fields repeat keys a plugin may have written into its message).
fn split_fields(body: &str) -> (&str, Vec<(String, String)>) {
    let tokens = tokens(body);
    let mut seen = std::collections::HashSet::new();
    let mut first = tokens.len();
    for (index, token) in tokens.iter().enumerate().rev() {
        match &token.pair {
            Some((key, _)) if seen.insert(key.as_str()) => first = index,
            _ => break,
        }
    }
    let fields = tokens[first..].iter().filter_map(|t| t.pair.clone()).collect();
    let message_end = tokens.get(first).map_or(body.len(), |t| t.start);
    (body[..message_end].trim_end(), fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKER: &str = "[Info][process_m:Worker:demo 13430 2026-11-30 13:35:48]: worker ready task=demo slot=1 \
                          plugin=\"hello\" task=demo slot=1 pid=13430 generation=1";

    #[test]
    fn text_lines_give_header_message_and_trailing_fields() {
        let r = Record::parse(WORKER);
        assert_eq!(r.time, "2026-11-30 13:35:48");
        assert_eq!(r.level, Some(LogLevel::Info));
        assert_eq!(r.title, "process_m:Worker:demo");
        assert_eq!(r.pid, Some(13430));
        assert_eq!(r.message, "worker ready task=demo slot=1");
        assert_eq!(r.field("plugin").collect::<Vec<_>>(), ["hello"]);
        assert_eq!(r.field("slot").collect::<Vec<_>>(), ["1"]);
        assert_eq!(r.level_span(), Some(0..6));
    }

    #[test]
    fn quoted_values_with_spaces_stay_one_field() {
        let r = Record::parse("[Warn][m 1 2026-01-01 00:00:00]: oops error=\"a \\\"b\\\" c\" stream=stderr");
        assert_eq!(r.message, "oops");
        assert_eq!(r.fields, [("error".into(), "a \"b\" c".into()), ("stream".into(), "stderr".into())]);
    }

    #[test]
    fn json_lines_give_top_level_and_span_fields() {
        let r = Record::parse(
            r#"{"level":"WARN","message":"hi","pid":7,"stream":"stdout","spans":["worker{task=dj slot=0 pid=8 generation=1}"],"time":"2026-11-30 13:35:49","title":"t"}"#,
        );
        assert!(r.json);
        assert_eq!((r.level, r.pid, r.message.as_str()), (Some(LogLevel::Warn), Some(7), "hi"));
        assert_eq!(r.field("stream").collect::<Vec<_>>(), ["stdout"]);
        assert_eq!(r.field("pid").collect::<Vec<_>>(), ["8"]);
        assert_eq!(r.field("task").collect::<Vec<_>>(), ["dj"]);
    }

    #[test]
    fn lines_without_a_header_are_kept_as_messages() {
        let r = Record::parse("  at some continuation");
        assert!(!r.has_header());
        assert_eq!(r.message, "  at some continuation");
    }

    #[test]
    fn text_converts_to_the_json_shape() {
        let json: Value = serde_json::from_str(&Record::parse(WORKER).to_json()).unwrap();
        assert_eq!(json["level"], "INFO");
        assert_eq!(json["pid"], 13430);
        assert_eq!(json["slot"], 1);
        assert_eq!(json["plugin"], "hello");
        assert_eq!(json["message"], "worker ready task=demo slot=1");
    }
}
