//! `pmhost top`'s screen: a header (host, state, generation, uptime, last restart), per task a line (workers
//! up/wanted, calls/s, total calls, crashes in the last minute) and a calls/s sparkline over the last minute, per
//! worker a row, a footer with the last action's outcome; and the same frame as plain text for `--once`.

use std::fmt::Write as _;

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Clear, Paragraph, Sparkline, Widget};

use super::model::{HISTORY, Model};
use crate::status::{RestartStatus, Snapshot};

/// Whether `top` reaches the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// The newest snapshot is fresh.
    Live,
    /// No master runs under the name (never started, stopped, or between a stop and a start).
    NotRunning,
    /// The master runs but did not answer the last request in time; the last snapshot is shown.
    NoAnswer,
    /// Something else went wrong (unreadable run directories...), in one sentence.
    Failed(String),
}

/// Everything one frame shows.
pub struct Screen<'a> {
    pub host: &'a str,
    pub model: &'a Model,
    pub connection: &'a Connection,
    /// Index of the selected task.
    pub selected: usize,
    /// The outcome of the last key pressed (a scale or restart request), if any.
    pub message: &'a str,
    pub help: bool,
}

const KEYS: &str = "q quit  r restart  +/- workers  up/down select  ? help";
const WORKER_HEADER: &str = "  slot      pid state         calls/s      calls      RSS restarts last exit";

enum Row {
    Text(Line<'static>),
    /// The sparkline of a task.
    Spark(String),
}

fn duration_text(seconds: u64) -> String {
    let (days, rest) = (seconds / 86400, seconds % 86400);
    let clock = format!("{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    if days > 0 { format!("{days}d {clock}") } else { clock }
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
}

fn rss_text(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".to_owned(), |b| format!("{:.1}M", b as f64 / (1024.0 * 1024.0)))
}

/// The outcome of a rollout in a few words.
pub fn restart_text(restart: &RestartStatus) -> String {
    match (restart.in_progress, restart.ok, &restart.error) {
        (true, _, _) => {
            format!("generation {} rolling ({}/{} slots)", restart.generation, restart.slots_done, restart.slots_total)
        }
        (false, true, _) => format!("generation {} ok", restart.generation),
        (false, false, Some(error)) => format!("generation {} rolled back: {error}", restart.generation),
        (false, false, None) => format!("generation {} rolled back", restart.generation),
    }
}

impl Screen<'_> {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let snapshot = self.model.current();
        let title = format!("pmhost top · {}", self.host);
        match (self.connection, snapshot) {
            (Connection::NotRunning, _) => {
                rows.push(Row::Text(Line::from(vec![
                    title.bold(),
                    "   master not running — waiting for it (checked every second)".yellow(),
                ])));
            }
            (Connection::Failed(reason), _) => {
                rows.push(Row::Text(Line::from(vec![title.bold(), format!("   {reason}").red()])));
            }
            (_, None) => rows.push(Row::Text(Line::from(vec![title.bold(), "   waiting for a snapshot".into()]))),
            (connection, Some(s)) => self.header(&mut rows, title, s, connection == &Connection::NoAnswer),
        }
        rows.push(Row::Text(Line::default()));
        if let (Some(s), false) = (snapshot, self.connection == &Connection::NotRunning) {
            for (index, task) in s.tasks.iter().enumerate() {
                let selected = index == self.selected;
                let text = format!(
                    "{} {:<16} workers {}/{}  calls/s {:>8}  calls {:>10}  crashes/min {}",
                    if selected { "▶" } else { " " },
                    task.name,
                    task.served_slots(),
                    task.workers_wanted,
                    rate_text(self.model.task_rate(&task.name)),
                    task.executions_total,
                    self.model.crashes_last_minute(&task.name),
                );
                let style = Style::new().add_modifier(Modifier::BOLD);
                let style = if selected { style.add_modifier(Modifier::REVERSED) } else { style };
                rows.push(Row::Text(Line::styled(text, style)));
                rows.push(Row::Spark(task.name.clone()));
                rows.push(Row::Text(Line::from(WORKER_HEADER).dim()));
                let mut workers: Vec<_> = task.workers.iter().collect();
                workers.sort_by_key(|w| (w.slot, w.generation));
                for w in workers {
                    let last_exit = w.last_exit.as_ref().map_or("-", |e| e.reason.as_str());
                    let uid = w.uid.map_or_else(String::new, |uid| format!("  (uid {uid})"));
                    rows.push(Row::Text(Line::from(format!(
                        "  {:>4} {:>8} {:<12} {:>8} {:>10} {:>8} {:>8} {}{uid}",
                        w.slot,
                        w.pid,
                        w.state,
                        rate_text(self.model.worker_rate(&task.name, w.pid)),
                        w.executions,
                        rss_text(w.rss_bytes),
                        w.restarts,
                        last_exit
                    ))));
                }
                for b in &task.backoff {
                    let last_exit = b.last_exit.as_ref().map_or("-", |e| e.reason.as_str());
                    rows.push(Row::Text(
                        Line::from(format!(
                            "  {:>4}        - backoff after {} crashes, next try in {} ms; last exit {last_exit}",
                            b.slot, b.crashes, b.next_attempt_in_ms
                        ))
                        .yellow(),
                    ));
                }
                rows.push(Row::Text(Line::default()));
            }
        }
        let footer = if self.message.is_empty() { KEYS.to_owned() } else { format!("{}   ({KEYS})", self.message) };
        rows.push(Row::Text(Line::from(footer).dim()));
        rows
    }

    fn header(&self, rows: &mut Vec<Row>, title: String, s: &Snapshot, stale: bool) {
        let restart = s.last_restart.as_ref().map_or_else(|| "none".to_owned(), restart_text);
        rows.push(Row::Text(Line::from(vec![
            title.bold(),
            format!(
                "   state {}   generation {}   uptime {}   last restart: {restart}",
                s.state,
                s.generation,
                duration_text(s.master.uptime_s)
            )
            .into(),
        ])));
        let total: Option<f64> = s.tasks.iter().map(|t| self.model.task_rate(&t.name)).sum();
        let mut second = format!(
            "master pid {}   RSS {}   tasks {}   calls/s {}",
            s.master.pid,
            rss_text(s.master.rss_bytes),
            s.tasks.len(),
            rate_text(total)
        );
        if stale {
            let _ = write!(second, "   (the master did not answer: last snapshot shown)");
        }
        rows.push(Row::Text(Line::from(second)));
    }

    /// Rows the frame needs (for `--once`, which prints the whole frame).
    pub fn height(&self) -> u16 {
        self.rows().len().min(u16::MAX as usize) as u16
    }

    /// The frame as plain text, `width` columns wide, trailing blanks trimmed.
    pub fn to_text(&self, width: u16) -> String {
        let area = Rect::new(0, 0, width, self.height());
        let mut buffer = Buffer::empty(area);
        self.render(area, &mut buffer);
        let mut out = String::new();
        for y in 0..area.height {
            let line: String = (0..area.width).map(|x| buffer[(x, y)].symbol()).collect();
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

impl Widget for &Screen<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let rows = self.rows();
        let footer_at = area.bottom().saturating_sub(1);
        for (index, row) in rows.iter().enumerate() {
            let y = area.y + index as u16;
            // The footer stays on the last line; rows that do not fit above it are left out.
            let y = if index + 1 == rows.len() { y.max(footer_at) } else { y };
            if y >= area.bottom() || (index + 1 < rows.len() && y >= footer_at) {
                continue;
            }
            let line_area = Rect::new(area.x, y, area.width, 1);
            match row {
                Row::Text(line) => line.render(line_area, buf),
                Row::Spark(task) => {
                    let label = "  calls/s, last minute ";
                    Line::from(label).dim().render(line_area, buf);
                    let x = area.x + label.len() as u16;
                    let width = (HISTORY as u16).min(area.right().saturating_sub(x));
                    let data = self.model.history(task);
                    let shown = &data[data.len().saturating_sub(width as usize)..];
                    Sparkline::default().data(shown).render(Rect::new(x, y, width, 1), buf);
                }
            }
        }
        if self.help {
            let text = vec![
                Line::from("q, Esc    quit"),
                Line::from("r         rolling restart of every task (hot swap, rollback on failure)"),
                Line::from("+, -      one worker more / less for the selected task"),
                Line::from("up, down  select a task"),
                Line::from("?         this help"),
                Line::from(""),
                Line::from("calls/s: work calls per second between the last two refreshes;"),
                Line::from("crashes/min: workers seen crashing in the last minute."),
            ];
            let width = 76.min(area.width);
            let height = (text.len() as u16 + 2).min(area.height);
            let popup =
                Rect::new(area.x + (area.width - width) / 2, area.y + (area.height - height) / 2, width, height);
            Clear.render(popup, buf);
            Paragraph::new(text).block(Block::bordered().title(" pmhost top: keys ")).render(popup, buf);
        }
    }
}
