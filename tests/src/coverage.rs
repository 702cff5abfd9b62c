//! Who collected what, and when, from the exports an [`OtlpReceiver`] recorded: per key
//! (a target, or a server endpoint), the workers that reported it, the ticks nobody
//! collected (gaps) and the ticks collected twice (overlaps).
//!
//! Everything is counted from data-point timestamps, never from arrival times, in units of
//! the collection interval `T`, with a stated tolerance `tol` (a fraction of `T`):
//!
//! - Gaps: between two consecutive samples of a key from any worker, `Δ` apart,
//!   `max(0, ⌈Δ/T − 1 − tol⌉)` ticks were missed: a tick may come up to `tol·T` late
//!   without counting. The window's edges count the same way (from its start to the first
//!   sample, from the last sample to its end), so a key nobody reported misses the whole
//!   window.
//! - Runs: one worker's consecutive samples of a key at most `(1 + tol)·T` apart. A
//!   worker that stops and later collects the key again starts a new run.
//! - Overlaps: two runs of different workers that overlap in time; the ticks collected
//!   twice are the more samples either run has within the other's span. A clean handoff
//!   (the new owner's first sample after the old owner's last) collects nothing twice,
//!   whatever the workers' scrape phases.
//!
//! A worker's first sample comes up to one interval after it starts collecting: its
//! scrape phase is its own.
//!
//! [`OtlpReceiver`]: crate::OtlpReceiver

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;

use crate::otlp::Received;

/// The header that names the worker of an export.
pub const WORKER_HEADER: &str = "x-dbcollector-worker";

/// The resource attribute that names the target of a data point.
pub const TARGET_ATTRIBUTE: &str = "dbcollector.target";

/// The metric every target exports once per tick, collected or not.
pub const TICK_METRIC: &str = "dbcollector.up";

/// One family per engine that only the carrier target of an endpoint exports, once per
/// tick: PostgreSQL's `max_connections`, MariaDB's `Uptime`.
pub const SERVER_WIDE_METRICS: [&str; 2] = ["postgresql.connection.max", "mysql.uptime"];

/// One data point of a key: which worker exported it and its timestamp.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sample {
    /// What was reported: a target name, or a server endpoint `host:port`.
    pub key: String,
    /// The worker, from the export's [`WORKER_HEADER`] (empty when absent).
    pub worker: String,
    /// The data point's time, in Unix nanoseconds.
    pub at: u64,
}

/// The [`TICK_METRIC`] points of accepted exports, keyed by target name.
pub fn target_samples(received: &[Received]) -> Vec<Sample> {
    samples(received, &[TICK_METRIC], |resource| {
        string_attribute(resource, TARGET_ATTRIBUTE).map(str::to_owned)
    })
}

/// The [`SERVER_WIDE_METRICS`] points of accepted exports, keyed by server endpoint
/// (`server.address:server.port`).
pub fn endpoint_samples(received: &[Received]) -> Vec<Sample> {
    samples(received, &SERVER_WIDE_METRICS, |resource| {
        let address = string_attribute(resource, "server.address")?;
        let port = resource.iter().find(|kv| kv.key == "server.port")?;
        match port.value.as_ref()?.value.as_ref()? {
            any_value::Value::IntValue(port) => Some(format!("{address}:{port}")),
            any_value::Value::StringValue(port) => Some(format!("{address}:{port}")),
            _ => None,
        }
    })
}

/// The points of `metrics` in accepted exports, each keyed by `key` of its resource
/// attributes (points whose resource has no key are left out). Duplicates (one worker,
/// one key, one timestamp: a retried export, or several points of one family) count once.
pub fn samples<F>(received: &[Received], metrics: &[&str], key: F) -> Vec<Sample>
where
    F: Fn(&[KeyValue]) -> Option<String>,
{
    let mut out = BTreeSet::new();
    for export in received.iter().filter(|r| r.outcome.is_accepted()) {
        let worker = export.header(WORKER_HEADER).unwrap_or_default();
        for resource_metrics in &export.request.resource_metrics {
            let attributes = resource_metrics
                .resource
                .as_ref()
                .map_or(&[][..], |r| &r.attributes[..]);
            let mut resource_key = None;
            let all = resource_metrics
                .scope_metrics
                .iter()
                .flat_map(|s| &s.metrics);
            for metric in all.filter(|m| metrics.contains(&m.name.as_str())) {
                if resource_key.is_none() {
                    resource_key = Some(key(attributes));
                }
                let Some(Some(key)) = &resource_key else {
                    break;
                };
                for at in point_times(metric.data.as_ref()) {
                    out.insert(Sample {
                        key: key.clone(),
                        worker: worker.to_owned(),
                        at,
                    });
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The timestamps of a metric's data points.
fn point_times(data: Option<&metric::Data>) -> Vec<u64> {
    match data {
        Some(metric::Data::Gauge(g)) => g.data_points.iter().map(|p| p.time_unix_nano).collect(),
        Some(metric::Data::Sum(s)) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
        Some(metric::Data::Histogram(h)) => {
            h.data_points.iter().map(|p| p.time_unix_nano).collect()
        }
        Some(metric::Data::ExponentialHistogram(h)) => {
            h.data_points.iter().map(|p| p.time_unix_nano).collect()
        }
        Some(metric::Data::Summary(s)) => s.data_points.iter().map(|p| p.time_unix_nano).collect(),
        None => Vec::new(),
    }
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A time as Unix nanoseconds (0 before the epoch).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// How samples are counted: the collection interval and the tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Counting {
    /// The collection interval `T` of the keys.
    pub interval: Duration,
    /// The tolerance `tol`, a fraction of `T` between 0 and 1 (see the module docs).
    pub tolerance: f64,
}

impl Counting {
    /// Interval `interval`, tolerance one half: a tick up to `T/2` late is on time, and
    /// samples of two workers less than `T/2` apart are one tick collected twice.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            tolerance: 0.5,
        }
    }

    /// Ticks missed between two ticks (or a window edge and a tick) `gap` apart.
    pub fn missed(&self, gap: u64) -> u32 {
        let intervals = gap as f64 / self.interval.as_nanos().max(1) as f64;
        let missed = (intervals - 1.0 - self.tolerance).ceil();
        if missed <= 0.0 {
            0
        } else {
            // Saturates at u32::MAX, far beyond any window.
            missed as u32
        }
    }
}

/// A time window `[from, to)`, in Unix nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Its start.
    pub from: u64,
    /// Its end (excluded).
    pub to: u64,
}

impl Window {
    /// The window between two instants.
    pub fn between(from: SystemTime, to: SystemTime) -> Self {
        Self {
            from: unix_nanos(from),
            to: unix_nanos(to),
        }
    }

    /// Whether `at` lies in the window.
    pub fn contains(&self, at: u64) -> bool {
        (self.from..self.to).contains(&at)
    }
}

/// A stretch of one worker's collection of a key: consecutive samples of that worker at
/// most `(1 + tol)·T` apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The worker.
    pub worker: String,
    /// Its samples' times, in Unix nanoseconds, in order.
    pub times: Vec<u64>,
}

impl Run {
    /// Its first sample's time.
    pub fn first(&self) -> u64 {
        self.times.first().copied().unwrap_or_default()
    }

    /// Its last sample's time.
    pub fn last(&self) -> u64 {
        self.times.last().copied().unwrap_or_default()
    }

    /// How many of its samples lie within `[from, to]`.
    fn samples_within(&self, from: u64, to: u64) -> usize {
        self.times
            .iter()
            .filter(|t| (from..=to).contains(*t))
            .count()
    }
}

/// Ticks that nobody collected, between two samples or a window edge and a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The sample before, or the window's start (Unix nanoseconds).
    pub after: u64,
    /// The sample after, or the window's end (Unix nanoseconds).
    pub before: u64,
    /// How many ticks were missed.
    pub missed: u32,
}

/// Ticks that two workers both collected: two runs of different workers that overlap
/// in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// The worker whose run started first.
    pub earlier: String,
    /// The other worker.
    pub later: String,
    /// Where the runs overlap (Unix nanoseconds, both included).
    pub from: u64,
    /// See `from`.
    pub to: u64,
    /// How many ticks were collected twice: the more samples either run has within the
    /// other's span.
    pub ticks: usize,
}

/// The collection of one key over a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyCoverage {
    /// Each worker's runs, ordered by their first sample.
    pub runs: Vec<Run>,
    /// The ticks nobody collected, in time order.
    pub gaps: Vec<Gap>,
    /// The ticks collected twice, by pair of overlapping runs.
    pub overlaps: Vec<Overlap>,
}

impl KeyCoverage {
    /// The most ticks missed in a row (0 when none).
    pub fn longest_gap(&self) -> u32 {
        self.gaps.iter().map(|g| g.missed).max().unwrap_or(0)
    }

    /// The ticks missed in all.
    pub fn missed(&self) -> u32 {
        self.gaps.iter().map(|g| g.missed).sum()
    }

    /// The most ticks collected twice by one pair of overlapping runs (0 when none).
    pub fn longest_overlap(&self) -> usize {
        self.overlaps.iter().map(|o| o.ticks).max().unwrap_or(0)
    }

    /// The ticks collected twice in all.
    pub fn doubled(&self) -> usize {
        self.overlaps.iter().map(|o| o.ticks).sum()
    }

    /// Every worker that collected the key in the window.
    pub fn workers(&self) -> BTreeSet<&str> {
        self.runs.iter().map(|r| r.worker.as_str()).collect()
    }

    /// The worker of the latest sample.
    pub fn last_worker(&self) -> Option<&str> {
        self.runs
            .iter()
            .max_by_key(|r| r.last())
            .map(|r| r.worker.as_str())
    }

    /// How often collection went from one worker to another (runs in order of their
    /// start whose workers differ).
    pub fn handoffs(&self) -> usize {
        self.runs
            .windows(2)
            .filter(|pair| pair[0].worker != pair[1].worker)
            .count()
    }

    /// The workers of each whole interval `[from + k·T, from + (k+1)·T)` of `window`:
    /// those with a sample in it or a run across it.
    pub fn intervals(&self, counting: Counting, window: Window) -> Vec<BTreeSet<&str>> {
        let step = u64::try_from(counting.interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let count = window.to.saturating_sub(window.from) / step;
        (0..count)
            .map(|k| {
                let start = window.from + k * step;
                let end = start + step;
                self.runs
                    .iter()
                    .filter(|r| r.first() < end && r.last() >= start)
                    .map(|r| r.worker.as_str())
                    .collect()
            })
            .collect()
    }
}

/// The collection of many keys over one window.
#[derive(Clone, Debug, PartialEq)]
pub struct Coverage {
    /// How samples were counted.
    pub counting: Counting,
    /// The window.
    pub window: Window,
    /// Each key's collection: the keys sampled in the window and the expected ones.
    pub keys: BTreeMap<String, KeyCoverage>,
}

impl Coverage {
    /// Counts the `samples` that fall in `window`. Every key of `expected` is counted,
    /// sampled or not (a key nobody reported misses the whole window).
    pub fn count<I, S>(samples: &[Sample], counting: Counting, window: Window, expected: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut by_key: BTreeMap<String, Vec<&Sample>> = expected
            .into_iter()
            .map(|key| (key.into(), Vec::new()))
            .collect();
        for sample in samples.iter().filter(|s| window.contains(s.at)) {
            by_key.entry(sample.key.clone()).or_default().push(sample);
        }
        let keys = by_key
            .into_iter()
            .map(|(key, mut samples)| {
                samples.sort_by_key(|s| s.at);
                (key, count_key(&samples, counting, window))
            })
            .collect();
        Self {
            counting,
            window,
            keys,
        }
    }

    /// The key with the most ticks missed in a row, and that count.
    pub fn longest_gap(&self) -> Option<(&str, u32)> {
        self.keys
            .iter()
            .map(|(key, c)| (key.as_str(), c.longest_gap()))
            .max_by_key(|(_, missed)| *missed)
    }

    /// The key with the most ticks collected twice by one pair of runs, and that count.
    pub fn longest_overlap(&self) -> Option<(&str, usize)> {
        self.keys
            .iter()
            .map(|(key, c)| (key.as_str(), c.longest_overlap()))
            .max_by_key(|(_, ticks)| *ticks)
    }

    /// The workers of each key over the window.
    pub fn workers(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        self.keys
            .iter()
            .map(|(key, c)| (key.as_str(), c.workers()))
            .collect()
    }

    /// The worker of each key's latest sample.
    pub fn last_workers(&self) -> BTreeMap<&str, &str> {
        self.keys
            .iter()
            .filter_map(|(key, c)| Some((key.as_str(), c.last_worker()?)))
            .collect()
    }

    /// Keys collected by other than exactly one worker over the window, with their
    /// workers: empty when every key had one collector throughout.
    pub fn not_exactly_once(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        self.workers()
            .into_iter()
            .filter(|(_, workers)| workers.len() != 1)
            .collect()
    }

    /// Keys whose gaps or overlaps exceed the bounds, one line each with its timeline:
    /// empty when none does.
    pub fn violations(&self, max_gap: u32, max_overlap: usize) -> Vec<String> {
        let letters = self.letters();
        let mut out = Vec::new();
        for (key, c) in &self.keys {
            let (gap, overlap) = (c.longest_gap(), c.longest_overlap());
            if gap > max_gap || overlap > max_overlap {
                out.push(format!(
                    "{key}: {gap} ticks missed in a row (at most {max_gap}), {overlap} ticks \
                     collected twice in one handoff (at most {max_overlap}); {}",
                    self.timeline(c, &letters)
                ));
            }
        }
        out
    }

    /// A letter per worker (`A`, `B`, ...), in name order, for [`Self::render`].
    pub fn letters(&self) -> BTreeMap<String, char> {
        let workers: BTreeSet<&str> = self.keys.values().flat_map(|c| c.workers()).collect();
        workers
            .into_iter()
            .zip(('A'..='Z').chain('a'..='z').cycle())
            .map(|(worker, letter)| (worker.to_owned(), letter))
            .collect()
    }

    /// A table, one key per line: its workers, samples, missed ticks, ticks collected
    /// twice, and a timeline of its whole intervals (the worker's letter; `*` for several
    /// workers; `.` for none), after a legend of the letters.
    pub fn render(&self) -> String {
        let letters = self.letters();
        let mut out = String::new();
        let legend: Vec<String> = letters.iter().map(|(w, l)| format!("{l}={w}")).collect();
        let _ = writeln!(
            out,
            "interval {:?}, tolerance {}: {} (letters are per table)",
            self.counting.interval,
            self.counting.tolerance,
            legend.join(" ")
        );
        let _ = writeln!(
            out,
            "timeline: one character per whole interval of the window: the letter of the \
             worker that reported, `*` two workers, `.` none; `missed` and `doubled` are \
             counted from the samples' times with the tolerance, so a `.` or `*` where a \
             sample sits on an interval's edge may count as nothing"
        );
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:>7} {:>6} {:>7}  timeline",
            "key", "workers", "samples", "missed", "doubled"
        );
        for (key, c) in &self.keys {
            let workers: String = c.workers().iter().filter_map(|w| letters.get(*w)).collect();
            let samples: usize = c.runs.iter().map(|r| r.times.len()).sum();
            let _ = writeln!(
                out,
                "{key:<28} {workers:<10} {samples:>7} {:>6} {:>7}  {}",
                c.missed(),
                c.doubled(),
                self.timeline(c, &letters)
            );
        }
        out
    }

    /// One character per interval of the window (see [`Self::render`]).
    fn timeline(&self, c: &KeyCoverage, letters: &BTreeMap<String, char>) -> String {
        c.intervals(self.counting, self.window)
            .iter()
            .map(|workers| match workers.len() {
                0 => '.',
                1 => workers
                    .iter()
                    .next()
                    .and_then(|w| letters.get(*w))
                    .copied()
                    .unwrap_or('?'),
                _ => '*',
            })
            .collect()
    }
}

/// Splits one key's samples (sorted by time) into runs per worker, and finds its gaps
/// and overlaps.
fn count_key(samples: &[&Sample], counting: Counting, window: Window) -> KeyCoverage {
    // Runs: a worker's samples at most (1 + tol)·T apart.
    let longest_step = counting.interval.as_nanos() as f64 * (1.0 + counting.tolerance);
    let mut open: BTreeMap<&str, usize> = BTreeMap::new();
    let mut runs: Vec<Run> = Vec::new();
    for sample in samples {
        let current = open
            .get(sample.worker.as_str())
            .copied()
            .filter(|&i| (sample.at - runs[i].last()) as f64 <= longest_step);
        match current {
            Some(i) => runs[i].times.push(sample.at),
            None => {
                open.insert(&sample.worker, runs.len());
                runs.push(Run {
                    worker: sample.worker.clone(),
                    times: vec![sample.at],
                });
            }
        }
    }

    // Gaps: between consecutive samples of any worker, and at the window's edges.
    let mut edges = vec![window.from];
    edges.extend(samples.iter().map(|s| s.at));
    edges.push(window.to);
    let gaps = edges
        .windows(2)
        .filter_map(|pair| {
            let missed = counting.missed(pair[1].saturating_sub(pair[0]));
            (missed > 0).then_some(Gap {
                after: pair[0],
                before: pair[1],
                missed,
            })
        })
        .collect();

    // Overlaps: runs of two workers that overlap in time.
    let mut overlaps = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        for b in runs[i + 1..].iter().filter(|b| b.worker != a.worker) {
            let (from, to) = (a.first().max(b.first()), a.last().min(b.last()));
            if from > to {
                continue;
            }
            let ticks = a
                .samples_within(b.first(), b.last())
                .max(b.samples_within(a.first(), a.last()));
            overlaps.push(Overlap {
                earlier: a.worker.clone(),
                later: b.worker.clone(),
                from,
                to,
                ticks,
            });
        }
    }
    KeyCoverage {
        runs,
        gaps,
        overlaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn sample(key: &str, worker: &str, at_ms: u64) -> Sample {
        Sample {
            key: key.to_owned(),
            worker: worker.to_owned(),
            at: at_ms * 1_000_000,
        }
    }

    fn counting() -> Counting {
        Counting::new(Duration::from_secs(2))
    }

    fn window(to_s: u64) -> Window {
        Window {
            from: 0,
            to: to_s * SECOND,
        }
    }

    /// Samples of `worker` for `key` every 2 s from `from_ms`, `count` of them.
    fn every_2s(key: &str, worker: &str, from_ms: u64, count: u64) -> Vec<Sample> {
        (0..count)
            .map(|i| sample(key, worker, from_ms + i * 2000))
            .collect()
    }

    #[test]
    fn a_steady_worker_misses_nothing_despite_jitter() {
        let mut samples = every_2s("db1", "w-0", 500, 10);
        // Late by up to 0.9 s, which the tolerance of one half allows.
        samples[3].at += 400_000_000;
        samples[7].at += 900_000_000;
        let c = Coverage::count(&samples, counting(), window(20), ["db1"]);
        let key = &c.keys["db1"];
        assert_eq!(key.runs.len(), 1);
        assert_eq!(key.longest_gap(), 0, "{:?}", key.gaps);
        assert_eq!(key.doubled(), 0);
        assert!(c.not_exactly_once().is_empty());
        assert!(c.render().contains("AAAAAAAAAA"), "{}", c.render());
    }

    #[test]
    fn one_skipped_tick_is_one_missed_tick_and_three_are_three() {
        let mut samples = every_2s("db1", "w-0", 500, 10);
        samples.remove(4);
        samples.retain(|s| !(14_000_000_000..19_000_000_000).contains(&s.at));
        let c = Coverage::count(&samples, counting(), window(20), ["db1"]);
        let missed: Vec<u32> = c.keys["db1"].gaps.iter().map(|g| g.missed).collect();
        // 16.5 and 18.5 are gone too, so the trailing edge misses three.
        assert_eq!(missed, vec![1, 3], "{:?}", c.keys["db1"].gaps);
        assert_eq!(c.longest_gap(), Some(("db1", 3)));
        assert_eq!(c.keys["db1"].handoffs(), 0);
        assert!(c.render().contains("AAAA.AA..."), "{}", c.render());
    }

    #[test]
    fn a_key_nobody_reported_misses_the_whole_window() {
        let c = Coverage::count(&[], counting(), window(20), ["db1"]);
        assert_eq!(c.keys["db1"].longest_gap(), 9);
        assert_eq!(c.not_exactly_once().len(), 1);
    }

    #[test]
    fn a_make_before_break_handoff_counts_its_ticks_collected_twice() {
        // w-0 until 8.5 s; w-1 from 5.3 s: 5.3, 6.5, 7.3 and 8.5 are two ticks twice.
        let mut samples = every_2s("db1", "w-0", 500, 5);
        samples.extend(every_2s("db1", "w-1", 5300, 8));
        let c = Coverage::count(&samples, counting(), window(20), ["db1"]);
        let key = &c.keys["db1"];
        assert_eq!(key.longest_gap(), 0);
        assert_eq!(key.longest_overlap(), 2, "{:?}", key.overlaps);
        assert_eq!(key.last_worker(), Some("w-1"));
        assert_eq!(key.handoffs(), 1);
        assert_eq!(c.violations(1, 1).len(), 1);
        assert!(c.violations(1, 2).is_empty());
        assert!(c.render().contains("AA***BBBBB"), "{}", c.render());
    }

    #[test]
    fn a_clean_handoff_between_close_phases_collects_nothing_twice() {
        let mut samples = every_2s("db1", "w-0", 500, 3);
        samples.extend(every_2s("db1", "w-1", 4600, 8));
        let c = Coverage::count(&samples, counting(), window(20), ["db1"]);
        assert_eq!(c.keys["db1"].doubled(), 0);
        assert_eq!(c.keys["db1"].longest_gap(), 0);
        assert_eq!(c.keys["db1"].workers(), BTreeSet::from(["w-0", "w-1"]));
    }

    #[test]
    fn a_break_before_make_handoff_counts_its_missed_ticks() {
        // w-0 until 4.5 s; w-1 from 9.9 s: 6.5 and 8.5 missed.
        let mut samples = every_2s("db1", "w-0", 500, 3);
        samples.extend(every_2s("db1", "w-1", 9900, 5));
        let c = Coverage::count(&samples, counting(), window(20), ["db1"]);
        assert_eq!(c.keys["db1"].longest_gap(), 2);
        assert_eq!(c.keys["db1"].doubled(), 0);
        assert_eq!(c.violations(1, 1).len(), 1);
    }

    #[test]
    fn a_worker_that_comes_back_starts_a_new_run() {
        let mut samples = every_2s("db1", "w-0", 500, 3);
        samples.extend(every_2s("db1", "w-1", 6500, 3));
        samples.extend(every_2s("db1", "w-0", 12500, 3));
        let c = Coverage::count(&samples, counting(), window(18), ["db1"]);
        let key = &c.keys["db1"];
        assert_eq!(key.runs.len(), 3);
        assert_eq!(key.handoffs(), 2);
        assert_eq!(key.doubled(), 0);
        assert_eq!(key.longest_gap(), 0);
    }

    #[test]
    fn samples_outside_the_window_are_not_counted() {
        let samples = every_2s("db1", "w-0", 500, 20);
        let window = Window {
            from: 10 * SECOND,
            to: 20 * SECOND,
        };
        let c = Coverage::count(&samples, counting(), window, Vec::<String>::new());
        assert_eq!(c.keys["db1"].runs[0].times.len(), 5);
        assert_eq!(c.keys["db1"].runs[0].first(), 10_500_000_000);
    }

    #[test]
    fn missed_ticks_follow_the_tolerance() {
        let c = counting();
        let ms = |ms: u64| ms * 1_000_000;
        assert_eq!(c.missed(ms(2000)), 0);
        assert_eq!(c.missed(ms(3000)), 0);
        assert_eq!(c.missed(ms(3100)), 1);
        assert_eq!(c.missed(ms(5000)), 1);
        assert_eq!(c.missed(ms(5100)), 2);
        let strict = Counting {
            tolerance: 0.1,
            ..c
        };
        assert_eq!(strict.missed(ms(2300)), 1);
    }

    fn export(worker: &str, resource: Vec<KeyValue>, metric: &str, times: &[u64]) -> Received {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{
            Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
        };
        use opentelemetry_proto::tonic::resource::v1::Resource;

        let points = times
            .iter()
            .map(|&time_unix_nano| NumberDataPoint {
                time_unix_nano,
                ..NumberDataPoint::default()
            })
            .collect();
        Received {
            protocol: crate::Protocol::Grpc,
            received_at: SystemTime::now(),
            headers: vec![(WORKER_HEADER.to_owned(), worker.to_owned())],
            request: ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: Some(Resource {
                        attributes: resource,
                        ..Resource::default()
                    }),
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![Metric {
                            name: metric.to_owned(),
                            data: Some(metric::Data::Gauge(Gauge {
                                data_points: points,
                            })),
                            ..Metric::default()
                        }],
                        ..ScopeMetrics::default()
                    }],
                    ..ResourceMetrics::default()
                }],
            },
            outcome: crate::Outcome::Accepted,
        }
    }

    fn attribute(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(opentelemetry_proto::tonic::common::v1::AnyValue { value: Some(value) }),
        }
    }

    #[test]
    fn samples_are_read_per_target_and_per_endpoint_once_each() {
        let resource = vec![
            attribute(
                TARGET_ATTRIBUTE,
                any_value::Value::StringValue("db1".into()),
            ),
            attribute(
                "server.address",
                any_value::Value::StringValue("127.0.0.1".into()),
            ),
            attribute("server.port", any_value::Value::IntValue(5432)),
        ];
        let received = vec![
            export("w-0", resource.clone(), TICK_METRIC, &[10, 20]),
            // A retried export: the same points again.
            export("w-0", resource.clone(), TICK_METRIC, &[20]),
            export("w-1", resource.clone(), "postgresql.connection.max", &[30]),
            export("w-1", resource, "postgresql.commits", &[40]),
        ];
        assert_eq!(
            target_samples(&received),
            vec![sample("db1", "w-0", 0), sample("db1", "w-0", 0)]
                .into_iter()
                .zip([10, 20])
                .map(|(s, at)| Sample { at, ..s })
                .collect::<Vec<_>>()
        );
        assert_eq!(
            endpoint_samples(&received),
            vec![Sample {
                key: "127.0.0.1:5432".into(),
                worker: "w-1".into(),
                at: 30
            }]
        );
    }
}
