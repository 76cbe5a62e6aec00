//! Figures and their presentation: samples, median and spread, the target and whether it was met, the Markdown
//! table with one method line per figure, and the same data as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Config;

/// How a figure's values read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Ms,
    NsPerCall,
    MiB,
    Ticks,
    WakeUps,
    /// Finished calls out of calls in flight: each sample carries its denominator.
    CallsFinished,
    /// Jobs per second.
    JobsPerSec,
    /// A rate.
    PerSecond,
    Us,
}

/// What the figure is judged against (the text of the target column says it to the reader).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Median at most this.
    MedianAtMost(f64),
    /// Median at least this.
    MedianAtLeast(f64),
    /// Median and max at most these.
    MedianAndMaxAtMost(f64, f64),
    /// Every sample at most this.
    AllAtMost(f64),
    /// Every sample equals its denominator.
    AllOfThem,
    /// Informational only.
    None,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// The figure's family: rows of one family (one per worker count) share a method line.
    pub family: String,
    /// The row's name.
    pub name: String,
    pub unit: Unit,
    pub samples: Vec<f64>,
    /// Denominators, for [`Unit::CallsFinished`] (whose median, min and max are then ratios).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub of: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub target: String,
    pub check: Check,
    /// `None` when the figure has no pass/fail target.
    pub met: Option<bool>,
    /// How it was measured, in one line.
    pub method: String,
}

impl Figure {
    /// A figure from its samples (at least one).
    pub fn new(family: &str, name: &str, unit: Unit, samples: Vec<f64>) -> Figure {
        let (median, min, max) = spread(&samples);
        Figure {
            family: family.to_owned(),
            name: name.to_owned(),
            unit,
            samples,
            of: Vec::new(),
            median,
            min,
            max,
            target: "-".to_owned(),
            check: Check::None,
            met: None,
            method: String::new(),
        }
    }

    /// A finished-of-in-flight figure: `pairs` of (finished, in flight) per run, ordered by their ratio.
    pub fn ratio(family: &str, name: &str, mut pairs: Vec<(u64, u64)>) -> Figure {
        pairs.sort_by(|a, b| ratio(*a).total_cmp(&ratio(*b)));
        let mut figure = Figure::new(family, name, Unit::CallsFinished, pairs.iter().map(|p| p.0 as f64).collect());
        figure.of = pairs.iter().map(|p| p.1 as f64).collect();
        // Median and spread by ratio; the printed values are the matching pairs.
        let middle = (pairs.len().max(1) - 1) / 2;
        figure.median = ratio_or_zero(&pairs, middle);
        figure.min = ratio_or_zero(&pairs, 0);
        figure.max = ratio_or_zero(&pairs, pairs.len().saturating_sub(1));
        figure
    }

    /// Sets the target text and the check it stands for, and judges the samples.
    pub fn target(mut self, text: impl Into<String>, check: Check) -> Figure {
        self.target = text.into();
        self.check = check;
        self.met = match check {
            Check::MedianAtMost(limit) => Some(self.median <= limit),
            Check::MedianAtLeast(limit) => Some(self.median >= limit),
            Check::MedianAndMaxAtMost(median, max) => Some(self.median <= median && self.max <= max),
            Check::AllAtMost(limit) => Some(self.samples.iter().all(|&s| s <= limit)),
            Check::AllOfThem => Some(self.samples.iter().zip(&self.of).all(|(done, of)| done == of)),
            Check::None => None,
        };
        self
    }

    /// Sets the method line.
    pub fn method(mut self, text: impl Into<String>) -> Figure {
        self.method = text.into();
        self
    }

    fn show(&self, value: f64, index: Option<usize>) -> String {
        match self.unit {
            Unit::Ms => format!("{} ms", significant(value)),
            Unit::NsPerCall => format!("{} ns", significant(value)),
            Unit::MiB => format!("{:.2} MiB", value),
            Unit::Ticks => format!("{value:.0} ticks"),
            Unit::WakeUps => format!("{value:.0}"),
            Unit::JobsPerSec => format!("{value:.0} jobs/s"),
            Unit::PerSecond => format!("{value:.0} /s"),
            Unit::Us => format!("{} µs", significant(value)),
            Unit::CallsFinished => match index {
                Some(i) if i < self.samples.len() => format!("{:.0}/{:.0}", self.samples[i], self.of[i]),
                _ => "-".to_owned(),
            },
        }
    }

    fn median_text(&self) -> String {
        let middle = (self.samples.len().max(1) - 1) / 2;
        self.show(self.median, Some(middle))
    }

    fn spread_text(&self) -> String {
        let (low, high) =
            (self.show(self.min, Some(0)), self.show(self.max, Some(self.samples.len().saturating_sub(1))));
        // "10.1–12.3 ms" reads better than "10.1 ms–12.3 ms".
        match (low.rsplit_once(' '), high.rsplit_once(' ')) {
            (Some((low_value, unit)), Some((high_value, high_unit))) if unit == high_unit => {
                format!("{low_value}–{high_value} {unit}")
            }
            _ => format!("{low}–{high}"),
        }
    }

    fn target_text(&self) -> String {
        match self.met {
            Some(true) => format!("{} ✓", self.target),
            Some(false) => format!("{} ✗ missed", self.target),
            None => self.target.clone(),
        }
    }
}

fn ratio((done, of): (u64, u64)) -> f64 {
    if of == 0 { 1.0 } else { done as f64 / of as f64 }
}

fn ratio_or_zero(pairs: &[(u64, u64)], index: usize) -> f64 {
    pairs.get(index).map_or(0.0, |p| ratio(*p))
}

/// Gives every row the method line of its family (measurements state it once per family), so each figure in
/// the JSON says how it was measured.
pub fn share_methods(figures: &mut [Figure]) {
    for index in 0..figures.len() {
        if figures[index].method.is_empty()
            && let Some(method) = figures.iter().find(|f| f.family == figures[index].family && !f.method.is_empty())
        {
            figures[index].method = method.method.clone();
        }
    }
}

/// Median, min and max (NaN for no samples).
pub fn spread(samples: &[f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    (median, sorted[0], sorted[n - 1])
}

/// Three significant digits, at least one decimal below 100.
fn significant(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.3}"),
    }
}

/// A whole benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: Config,
    /// The cargo profile of the pmhost binary and plugin measured.
    pub profile: String,
    /// Size of the plugin file: every start and restart hashes and copies it (staging).
    pub plugin_bytes: u64,
    /// Online CPUs of the machine.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started and when it ended.
    pub load_before: String,
    pub load_after: String,
    pub figures: Vec<Figure>,
    /// Figures that could not be measured here, and why (printed under the table).
    pub notes: Vec<String>,
}

impl Report {
    /// The Markdown table, then one line per figure family saying how it was measured.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "pmhost benchmark: {} mode, {} profile (plugin {:.1} MiB), {} CPUs, Linux {}, load average {} before, {} \
             after\n",
            self.config.mode,
            self.profile,
            self.plugin_bytes as f64 / (1024.0 * 1024.0),
            self.cpus,
            self.kernel,
            self.load_before,
            self.load_after
        );
        let _ = writeln!(out, "| figure | median | min–max | runs | target |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                f.name,
                f.median_text(),
                f.spread_text(),
                f.samples.len(),
                f.target_text()
            );
        }
        out.push('\n');
        for note in &self.notes {
            let _ = writeln!(out, "Note: {note}\n");
        }
        let mut families: Vec<&str> = Vec::new();
        for f in &self.figures {
            if !families.contains(&f.family.as_str()) {
                families.push(&f.family);
                let _ = writeln!(out, "- **{}**: {}", f.family, f.method);
            }
        }
        out
    }

    /// The figures that missed their target.
    pub fn misses(&self) -> Vec<&Figure> {
        self.figures.iter().filter(|f| f.met == Some(false)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(spread(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn ratio_figure_prints_pairs_and_judges_every_run() {
        let f = Figure::ratio("stop", "in flight", vec![(8, 8), (7, 8), (8, 8)]).target("all", Check::AllOfThem);
        assert_eq!(f.median_text(), "8/8");
        assert_eq!(f.spread_text(), "7/8–8/8");
        assert_eq!(f.met, Some(false));
    }

    #[test]
    fn spread_shares_the_unit() {
        let f = Figure::new("start", "start", Unit::Ms, vec![10.0, 12.34]);
        assert_eq!(f.spread_text(), "10.0–12.3 ms");
    }
}
