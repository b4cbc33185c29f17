//! Interleaved rounds and what is reported of them: medians and min–max spreads, never means.

use std::fmt;

use crate::cpu::Run;

/// Samples of one figure, one per round.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    /// The median (the upper one of an even count).
    pub fn median(&self) -> f64 {
        let mut xs = self.0.clone();
        xs.sort_by(f64::total_cmp);
        xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
    }
    /// The smallest sample.
    pub fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }
    /// The largest sample.
    pub fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
    /// Adds one sample.
    pub fn push(&mut self, x: f64) {
        self.0.push(x);
    }
}

/// One comparison of a candidate (the bus) with its baseline, measured in alternating rounds.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// What was compared.
    pub name: String,
    /// A short label for charts.
    pub label: String,
    /// Messages per run.
    pub messages: usize,
    /// Baseline msg/s per round.
    pub baseline: Samples,
    /// Candidate msg/s per round.
    pub candidate: Samples,
    /// candidate / baseline of each round (both runs of a round are back to back).
    pub ratios: Samples,
    /// Process CPU per message, µs, of the baseline in each round (empty where not measured).
    pub baseline_cpu_us: Samples,
    /// The same of the candidate.
    pub candidate_cpu_us: Samples,
    /// candidate CPU / baseline CPU of each round.
    pub cpu_ratios: Samples,
}

impl Comparison {
    /// An empty comparison.
    pub fn new(name: impl Into<String>, label: impl Into<String>, messages: usize) -> Self {
        Comparison {
            name: name.into(),
            label: label.into(),
            messages,
            baseline: Samples::default(),
            candidate: Samples::default(),
            ratios: Samples::default(),
            baseline_cpu_us: Samples::default(),
            candidate_cpu_us: Samples::default(),
            cpu_ratios: Samples::default(),
        }
    }
    /// Records one round.
    pub fn round(&mut self, baseline: f64, candidate: f64) {
        self.baseline.push(baseline);
        self.candidate.push(candidate);
        self.ratios.push(candidate / baseline);
    }

    /// Records one round whose runs also measured CPU per message.
    pub fn round_with_cpu(&mut self, baseline: Run, candidate: Run) {
        self.round(baseline.rate, candidate.rate);
        let micros = |r: Run| r.cpu_per_message.as_secs_f64() * 1e6;
        self.baseline_cpu_us.push(micros(baseline));
        self.candidate_cpu_us.push(micros(candidate));
        self.cpu_ratios
            .push(micros(candidate) / micros(baseline).max(f64::MIN_POSITIVE));
    }
}

/// A rate with its spread: `1.23 M (1.10–1.30)`.
#[derive(Debug)]
pub struct Rate<'a>(pub &'a Samples);

impl fmt::Display for Rate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}–{})",
            si(self.0.median()),
            si(self.0.min()),
            si(self.0.max())
        )
    }
}

/// A ratio with its spread: `0.62× (0.55–0.70)`.
#[derive(Debug)]
pub struct Ratio<'a>(pub &'a Samples);

impl fmt::Display for Ratio<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2}× ({:.2}–{:.2})",
            self.0.median(),
            self.0.min(),
            self.0.max()
        )
    }
}

/// `1234567.0` → `1.23 M`.
pub fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Samples(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median(), s.min(), s.max()), (2.0, 1.0, 3.0));
        let mut c = Comparison::new("x", "x", 10);
        c.round(2.0, 1.0);
        c.round(4.0, 4.0);
        assert_eq!(c.ratios.0, vec![0.5, 1.0]);
        assert_eq!(Ratio(&c.ratios).to_string(), "1.00× (0.50–1.00)");
        assert_eq!(si(1_234_567.0), "1.23 M");
        assert_eq!(si(12_345.0), "12.3 k");
    }
}
