//! The operator's shard assignment (`dbcollector_crds::balance`): 10k targets in 1024
//! slots over 100 workers, assigned from scratch, rebalanced after a scale up and a scale
//! down, and after one target is added; plus the slot weights the operator computes first.

use std::collections::BTreeMap;

use criterion::{BenchmarkGroup, Criterion};
use dbcollector_benches::alloc::CountingAlloc;
use dbcollector_benches::harness;
use dbcollector_benches::report::Report;
use dbcollector_crds::balance::{rebalance, slot_weights};
use dbcollector_crds::shard::{Ranges, DEFAULT_SHARDS};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const TARGETS: usize = 10_000;

fn main() {
    let mut c = harness::criterion();
    let mut report = Report::new("assignment");
    assignment(&mut c, &mut report);
    c.final_summary();
    report.print();
}

/// Worker pod names in ordinal order.
fn workers(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("collector-{i}")).collect()
}

/// Benches one rebalance of `current` onto `workers`, counted per call.
fn bench(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    report: &mut Report,
    name: &str,
    weights: &[u32],
    current: &BTreeMap<String, Ranges>,
    workers: &[String],
) {
    let id = format!("assignment/{name}");
    let run = || rebalance(weights, current, workers);
    group.bench_function(name, |b| {
        report.measure(&id, "call", 1, 20, || (), |()| run());
        b.iter(run);
    });
}

fn assignment(c: &mut Criterion, report: &mut Report) {
    let names: Vec<String> = (0..TARGETS).map(|i| format!("db-{i}")).collect();
    let weights = slot_weights(names.iter().map(String::as_str), DEFAULT_SHARDS);
    let mut added = weights.clone();
    let slot = dbcollector_crds::shard::slot_of("db-new", DEFAULT_SHARDS) as usize;
    added[slot] += 1;

    let hundred = workers(100);
    let none = BTreeMap::new();
    let initial = rebalance(&weights, &none, &hundred);

    // How much each change moves, for the note under the table.
    for (name, weights, to) in [
        ("100 -> 101 workers", &weights, workers(101)),
        ("100 -> 60 workers", &weights, workers(60)),
        ("one target added", &added, workers(100)),
    ] {
        let after = rebalance(weights, &initial, &to);
        let moved: u32 = (0..DEFAULT_SHARDS)
            .filter(|&s| owner(&initial, s) != owner(&after, s))
            .map(|s| weights[s as usize])
            .sum();
        let most = after.values().map(Ranges::range_count).max().unwrap_or(0);
        report.note(format!(
            "{name}: {moved} of {TARGETS} targets move; at most {most} ranges per worker"
        ));
    }

    let mut group = c.benchmark_group("assignment");
    group.bench_function("slot_weights/10k_targets", |b| {
        let run = || slot_weights(names.iter().map(String::as_str), DEFAULT_SHARDS);
        report.measure(
            "assignment/slot_weights/10k_targets",
            "call",
            1,
            20,
            || (),
            |()| run(),
        );
        b.iter(run);
    });
    bench(
        &mut group,
        report,
        "initial/10k_targets_100_workers",
        &weights,
        &none,
        &hundred,
    );
    bench(
        &mut group,
        report,
        "scale_up/100_to_101",
        &weights,
        &initial,
        &workers(101),
    );
    bench(
        &mut group,
        report,
        "scale_down/100_to_60",
        &weights,
        &initial,
        &workers(60),
    );
    bench(
        &mut group,
        report,
        "target_added/100_workers",
        &added,
        &initial,
        &hundred,
    );
    bench(
        &mut group,
        report,
        "unchanged/100_workers",
        &weights,
        &initial,
        &hundred,
    );
    group.finish();
}

/// The worker owning `slot`.
fn owner(assignment: &BTreeMap<String, Ranges>, slot: u32) -> Option<&String> {
    assignment
        .iter()
        .find(|(_, ranges)| ranges.contains(slot))
        .map(|(name, _)| name)
}
