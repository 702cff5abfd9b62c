//! The allocation report printed after criterion's output.
//!
//! Each bench measures its routine once more, apart from criterion, with the counting
//! allocator on: `iters` inputs are built first (not counted), then the routine runs on
//! each and its output is freed at once. The time of that pass is shown too; it is rough
//! (one pass, counters on, freeing included) and criterion's figures above it are the
//! ones to quote.
//!
//! Nothing is measured when criterion runs in test mode (`cargo test --all-targets` runs
//! every bench routine once, unoptimized, without `--bench`), so CI stays quick.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::alloc::{counting, Counts};

/// One measured routine.
#[derive(Debug)]
struct Row {
    id: String,
    unit: &'static str,
    elements: u64,
    iters: u64,
    counts: Counts,
    elapsed: Duration,
}

/// The rows of one bench target, printed as a table by [`Report::print`].
#[derive(Debug, Default)]
pub struct Report {
    title: String,
    rows: Vec<Row>,
    notes: Vec<String>,
    seen: HashSet<String>,
    /// Whether this run benchmarks (criterion got `--bench` and not `--test`).
    active: bool,
}

impl Report {
    /// An empty report for the bench target `title`.
    pub fn new(title: &str) -> Self {
        let args: Vec<String> = std::env::args().collect();
        let flag = |f: &str| args.iter().any(|a| a == f);
        Self {
            title: title.to_owned(),
            active: flag("--bench") && !flag("--test") && !flag("--list"),
            ..Self::default()
        }
    }

    /// Measures `routine` on `iters` inputs from `setup`, each worth `elements` of `unit`
    /// (what the bench's throughput counts). Only the first call per `id` measures, so it
    /// can sit inside a criterion closure, which runs only for benches the filter selects.
    pub fn measure<I, O>(
        &mut self,
        id: &str,
        unit: &'static str,
        elements: u64,
        iters: usize,
        mut setup: impl FnMut() -> I,
        mut routine: impl FnMut(I) -> O,
    ) {
        if !self.active || !self.seen.insert(id.to_owned()) {
            return;
        }
        let inputs: Vec<I> = (0..iters).map(|_| setup()).collect();
        let (elapsed, counts) = counting(|| {
            let start = Instant::now();
            for input in inputs {
                drop(routine(input));
            }
            start.elapsed()
        });
        self.rows.push(Row {
            id: id.to_owned(),
            unit,
            elements,
            iters: iters as u64,
            counts,
            elapsed,
        });
    }

    /// A line printed under the table (payload sizes, points per scrape, ...), once.
    pub fn note(&mut self, note: String) {
        if self.active && self.seen.insert(note.clone()) {
            self.notes.push(note);
        }
    }

    /// Prints the table to stdout.
    pub fn print(&self) {
        if self.rows.is_empty() && self.notes.is_empty() {
            return;
        }
        println!();
        println!(
            "== allocations: {} (counting allocator; time of the same pass, rough) ==",
            self.title
        );
        println!(
            "{:<60} {:>6} {:>9} {:>9} {:>9} {:>11} {:>11}",
            "bench", "unit", "per iter", "ns/unit", "units/s", "allocs/unit", "bytes/unit"
        );
        for row in &self.rows {
            let units = (row.elements * row.iters).max(1) as f64;
            let ns = row.elapsed.as_nanos() as f64 / units;
            println!(
                "{:<60} {:>6} {:>9} {:>9.1} {:>9} {:>11.3} {:>11.1}",
                row.id,
                row.unit,
                row.elements,
                ns,
                rate(1e9 / ns),
                row.counts.allocs as f64 / units,
                row.counts.bytes as f64 / units,
            );
        }
        for note in &self.notes {
            println!("  {note}");
        }
    }
}

/// `1234567.0` as `1.23M`.
fn rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2}M", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1}k", per_s / 1e3)
    } else {
        format!("{per_s:.0}")
    }
}
