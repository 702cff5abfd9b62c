//! Each processor alone: the statements processor (top N, sampling, aggregate) at low and
//! high cardinality, the sampler's selection, the circuit breakers and the batcher.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use dbcollector_benches::alloc::CountingAlloc;
use dbcollector_benches::fixtures::{self, Engine, StatementFeed};
use dbcollector_benches::harness;
use dbcollector_benches::report::Report;
use dbcollector_worker::config::{self, QueryText};
use dbcollector_worker::metrics::Points;
use dbcollector_worker::processors::batcher;
use dbcollector_worker::processors::breaker::{Breakers, Decision};
use dbcollector_worker::processors::sampler::{key_hash, Candidate, Sampler};
use dbcollector_worker::processors::statements::Statements;
use dbcollector_worker::telemetry::Metrics;
use tokio::time::Instant;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() {
    let mut c = harness::criterion();
    let mut report = Report::new("processors");
    statements(&mut c, &mut report);
    sampler(&mut c, &mut report);
    breaker(&mut c, &mut report);
    batcher(&mut c, &mut report);
    c.final_summary();
    report.print();
}

/// One statements-processor scenario.
struct Case {
    name: &'static str,
    feed: StatementFeed,
    settings: config::Statements,
    sampler: config::Sampler,
}

fn statements(c: &mut Criterion, report: &mut Report) {
    let text = config::Statements {
        query_text: QueryText::Obfuscated,
        ..Default::default()
    };
    let all_sampled = config::Statements {
        top_n: 0,
        ..Default::default()
    };
    let cases = [
        // Default settings: the top 100 of 200 statements that never change.
        Case {
            name: "low_cardinality/pg_200_stable",
            feed: StatementFeed::stable(Engine::Postgres, 200),
            settings: config::Statements::default(),
            sampler: config::Sampler::default(),
        },
        // The same, exporting obfuscated text for the kept ones.
        Case {
            name: "low_cardinality/pg_200_stable_obfuscated_text",
            feed: StatementFeed::stable(Engine::Postgres, 200).with_text(),
            settings: text,
            sampler: config::Sampler::default(),
        },
        // 5000 statements per scrape out of 1M distinct keys: every key is new for 200
        // scrapes, and the key cache (100k) evicts all the time.
        Case {
            name: "high_cardinality/pg_5k_of_1M_keys",
            feed: StatementFeed::churning(Engine::Postgres, 1_000_000, 5_000),
            settings: config::Statements::default(),
            sampler: config::Sampler::default(),
        },
        Case {
            name: "high_cardinality/mysql_5k_of_1M_keys",
            feed: StatementFeed::churning(Engine::MySql, 1_000_000, 5_000),
            settings: config::Statements::default(),
            sampler: config::Sampler::default(),
        },
        // No top N: the sampler chooses among all 5000 (about 500 kept).
        Case {
            name: "sampled/mysql_5k_stable_top_n_0",
            feed: StatementFeed::stable(Engine::MySql, 5_000),
            settings: all_sampled.clone(),
            sampler: config::Sampler::default(),
        },
        // The load bench's parity: no top N, no sampling, every statement kept.
        Case {
            name: "parity/pg_5k_stable_all_kept",
            feed: StatementFeed::stable(Engine::Postgres, 5_000),
            settings: all_sampled,
            sampler: config::Sampler {
                enabled: false,
                ..Default::default()
            },
        },
    ];

    let mut group = c.benchmark_group("statements");
    for case in cases {
        let processor = Statements::new(&case.sampler, Arc::new(Metrics::unregistered()));
        let target: Arc<str> = Arc::from("pg-orders");
        let Case {
            name,
            mut feed,
            settings,
            ..
        } = case;
        let rows = feed.per_scrape();
        let run = |set| {
            let mut out = Points::new();
            processor.process(&target, &settings, set, &mut out);
            out
        };
        // A baseline, so every measured scrape has a previous one (and an aggregate).
        run(feed.next_set());
        let points = run(feed.next_set()).len();
        let id = format!("statements/{name}");
        report.note(format!(
            "{id}: {rows} rows in, {points} points out per scrape"
        ));

        group.throughput(Throughput::Elements(rows));
        group.bench_function(name, |b| {
            report.measure(&id, "row", rows, 20, || feed.next_set(), run);
            b.iter_batched(|| feed.next_set(), run, BatchSize::LargeInput);
        });
    }
    group.finish();
}

/// `n` candidates, slowest first, as the processor hands them to the sampler.
fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            index: i,
            hash: key_hash(&format!("orders/app_rw/{i}")),
            calls: (i % 13 + 1) as i64,
            time: (n - i) as f64 * 0.01,
            rows: (i % 10) as i64,
            errors: i64::from(i % 500 == 0),
        })
        .collect()
}

fn sampler(c: &mut Criterion, report: &mut Report) {
    let sampler = Sampler::new(&config::Sampler::default());
    let mut group = c.benchmark_group("sampler");
    for n in [100, 5_000] {
        let candidates = candidates(n);
        let name = format!("select/{n}_candidates");
        let id = format!("sampler/{name}");
        let mut keep = Vec::new();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(&name, |b| {
            report.measure(
                &id,
                "cand",
                n as u64,
                200,
                || (),
                |()| sampler.select(&candidates, Some(0.2), &mut keep),
            );
            b.iter(|| sampler.select(&candidates, Some(0.2), &mut keep));
        });
    }
    group.finish();
}

fn breaker(c: &mut Criterion, report: &mut Report) {
    const TARGETS: usize = 10_000;
    const INTERVAL: Duration = Duration::from_secs(30);
    let targets: Vec<Arc<str>> = (0..TARGETS)
        .map(|i| Arc::from(format!("pg-tenant-{i:05}")))
        .collect();
    let mut group = c.benchmark_group("breaker");
    group.throughput(Throughput::Elements(TARGETS as u64));

    // Healthy targets: each tick is a decision and a successful record.
    let breakers = Breakers::new(
        &config::Breaker::default(),
        Arc::new(Metrics::unregistered()),
    );
    let tick_all = || {
        let now = Instant::now();
        let mut allowed = 0usize;
        for t in &targets {
            allowed += usize::from(breakers.decide(t, INTERVAL, now) == Decision::Allow);
            breakers.record(t, INTERVAL, true, now);
        }
        allowed
    };
    let name = "closed_decide_and_record/10k_targets";
    group.bench_function(name, |b| {
        report.measure(
            &format!("breaker/{name}"),
            "tick",
            TARGETS as u64,
            5,
            || (),
            |()| tick_all(),
        );
        b.iter(tick_all);
    });

    // Failing targets, open: each tick is rejected without a scrape.
    let open = Breakers::new(
        &config::Breaker {
            failure_threshold: 1,
            max_open: Some(Duration::from_secs(86_400)),
            base_open: Some(Duration::from_secs(86_400)),
            ..Default::default()
        },
        Arc::new(Metrics::unregistered()),
    );
    for t in &targets {
        open.record(t, INTERVAL, false, Instant::now());
    }
    let reject_all = || {
        let now = Instant::now();
        targets
            .iter()
            .filter(|t| open.decide(t, INTERVAL, now) == Decision::Reject)
            .count()
    };
    let name = "open_reject/10k_targets";
    group.bench_function(name, |b| {
        report.measure(
            &format!("breaker/{name}"),
            "tick",
            TARGETS as u64,
            5,
            || (),
            |()| reject_all(),
        );
        b.iter(reject_all);
    });
    group.finish();
}

fn batcher(c: &mut Criterion, report: &mut Report) {
    let mut group = c.benchmark_group("batcher");
    for (n, max) in [(1_000, 1_000), (5_000, 1_000)] {
        let batch = fixtures::batch(Engine::Postgres, n);
        let name = format!("split/{n}_points_max_{max}");
        let id = format!("batcher/{name}");
        let split = |b| batcher::split(b, max).collect::<Vec<_>>();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(&name, |b| {
            report.measure(&id, "point", n as u64, 20, || batch.clone(), split);
            b.iter_batched(|| batch.clone(), split, BatchSize::LargeInput);
        });
    }
    group.finish();
}
