//! Concurrent operations: the processing pool and the channel in front of it at 1, 2 and
//! N runtime threads, and the statement-key and breaker caches under contention.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use dbcollector_benches::alloc::CountingAlloc;
use dbcollector_benches::fixtures::{self, Engine, StatementFeed};
use dbcollector_benches::harness;
use dbcollector_benches::report::Report;
use dbcollector_worker::config;
use dbcollector_worker::exporter::ExporterHandle;
use dbcollector_worker::metrics::{Point, Points, Resource};
use dbcollector_worker::pipeline::{self, Pool};
use dbcollector_worker::processors::breaker::Breakers;
use dbcollector_worker::processors::statements::Statements;
use dbcollector_worker::scheduler::Job;
use dbcollector_worker::telemetry::Metrics;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Targets scraped per pool iteration, one job each.
const TARGETS: usize = 32;

/// Scrape tasks sending jobs at once.
const PRODUCERS: usize = 4;

fn main() {
    let mut c = harness::criterion();
    let mut report = Report::new("concurrency");
    for threads in harness::thread_counts() {
        pool(&mut c, &mut report, threads);
    }
    for threads in harness::thread_counts() {
        channel(&mut c, &mut report, threads);
    }
    for threads in harness::thread_counts() {
        statement_keys(&mut c, &mut report, threads);
    }
    for threads in harness::thread_counts() {
        breakers(&mut c, &mut report, threads);
    }
    c.final_summary();
    report.print();
}

fn runtime(threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The jobs of one round: one scrape per target (100 plain points and 200 statements,
/// about 1k points out each), so no two jobs of a target race each other.
struct Round {
    targets: Vec<Arc<str>>,
    feeds: Vec<StatementFeed>,
    points: Vec<Point>,
    resource: Arc<Resource>,
    settings: Arc<config::Statements>,
}

impl Round {
    fn new() -> Self {
        Self {
            targets: (0..TARGETS)
                .map(|i| Arc::from(format!("pg-tenant-{i:02}")))
                .collect(),
            feeds: (0..TARGETS)
                .map(|_| StatementFeed::stable(Engine::Postgres, 200))
                .collect(),
            points: fixtures::pg_points(100),
            resource: fixtures::pg_resource("pg-tenant"),
            settings: Arc::new(config::Statements::default()),
        }
    }

    fn jobs(&mut self) -> Vec<Job> {
        self.targets
            .iter()
            .zip(&mut self.feeds)
            .map(|(target, feed)| {
                let set = Some(feed.next_set());
                fixtures::job(
                    target,
                    &self.resource,
                    self.points.clone(),
                    set,
                    &self.settings,
                )
            })
            .collect()
    }
}

/// Sends `jobs` from [`PRODUCERS`] tasks through a fresh channel to a fresh pool of
/// `workers` tasks, and waits until the pool has processed them all.
async fn through_pool(
    workers: usize,
    jobs: Vec<Job>,
    statements: Arc<Statements>,
    exporter: ExporterHandle,
    metrics: Arc<Metrics>,
) {
    let (tx, rx) = mpsc::channel(pipeline::DEFAULT_CHANNEL_CAPACITY);
    let pool = Pool::start(workers, rx, statements, exporter, 1_000, metrics);
    let mut producers = JoinSet::new();
    let mut jobs = jobs.into_iter();
    let per_producer = jobs.len().div_ceil(PRODUCERS);
    for _ in 0..PRODUCERS {
        let (tx, chunk): (_, Vec<Job>) = (tx.clone(), jobs.by_ref().take(per_producer).collect());
        producers.spawn(async move {
            for job in chunk {
                if tx.send(job).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    while producers.join_next().await.is_some() {}
    pool.join().await;
}

fn pool(c: &mut Criterion, report: &mut Report, threads: usize) {
    let rt = runtime(threads);
    let metrics = Arc::new(Metrics::unregistered());
    let (exporter, _listener) = {
        let _entered = rt.enter();
        harness::idle_exporter(200_000, metrics.clone())
    };
    let statements = Arc::new(Statements::new(
        &config::Sampler::default(),
        metrics.clone(),
    ));
    let mut round = Round::new();
    let run = |jobs: Vec<Job>| {
        rt.block_on(through_pool(
            threads,
            jobs,
            statements.clone(),
            exporter.clone(),
            metrics.clone(),
        ))
    };

    // A baseline round, then one to count the points per round.
    run(round.jobs());
    let before = metrics.points_received.get();
    run(round.jobs());
    let points = metrics.points_received.get() - before;

    let name = format!("{threads}_threads/{TARGETS}_scrapes_of_1k_points");
    let id = format!("pool/{name}");
    let mut group = c.benchmark_group("pool");
    group.throughput(Throughput::Elements(points));
    group.bench_function(&name, |b| {
        report.measure(&id, "point", points, 5, || round.jobs(), run);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let jobs = round.jobs();
                let start = Instant::now();
                run(jobs);
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

/// Jobs through the pool's channel alone: [`PRODUCERS`] senders, `threads` receivers
/// sharing the receiver behind a lock as the pool's tasks do, nothing done per job.
fn channel(c: &mut Criterion, report: &mut Report, threads: usize) {
    const MESSAGES: usize = 20_000;
    let rt = runtime(threads);
    let target: Arc<str> = Arc::from("pg-orders");
    let resource = fixtures::pg_resource("pg-orders");
    let settings = Arc::new(config::Statements::default());
    let jobs = || -> Vec<Job> {
        (0..MESSAGES)
            .map(|_| fixtures::job(&target, &resource, Vec::new(), None, &settings))
            .collect()
    };
    let run = |jobs: Vec<Job>| rt.block_on(through_channel(threads, jobs));

    let name = format!("{threads}_threads/{MESSAGES}_jobs");
    let id = format!("channel/{name}");
    let mut group = c.benchmark_group("channel");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function(&name, |b| {
        report.measure(&id, "job", MESSAGES as u64, 5, jobs, run);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let input = jobs();
                let start = Instant::now();
                run(input);
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

async fn through_channel(consumers: usize, jobs: Vec<Job>) -> usize {
    let (tx, rx) = mpsc::channel::<Job>(pipeline::DEFAULT_CHANNEL_CAPACITY);
    let rx = Arc::new(Mutex::new(rx));
    let mut tasks = JoinSet::new();
    for _ in 0..consumers {
        let rx = rx.clone();
        tasks.spawn(async move {
            let mut n = 0;
            while let Some(job) = rx.lock().await.recv().await {
                drop(job);
                n += 1;
            }
            n
        });
    }
    let mut jobs = jobs.into_iter();
    let per_producer = jobs.len().div_ceil(PRODUCERS);
    let mut producers = JoinSet::new();
    for _ in 0..PRODUCERS {
        let (tx, chunk): (_, Vec<Job>) = (tx.clone(), jobs.by_ref().take(per_producer).collect());
        producers.spawn(async move {
            for job in chunk {
                if tx.send(job).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    while producers.join_next().await.is_some() {}
    let mut received = 0;
    while let Some(n) = tasks.join_next().await {
        received += n.unwrap_or(0);
    }
    received
}

/// `threads` OS threads processing statement sets of their own targets at once through
/// one shared processor: the key cache (and the target cache) under contention.
fn statement_keys(c: &mut Criterion, report: &mut Report, threads: usize) {
    const SETS: usize = 4;
    const ROWS: u64 = 1_000;
    let processor = Statements::new(
        &config::Sampler::default(),
        Arc::new(Metrics::unregistered()),
    );
    let settings = config::Statements::default();
    let targets: Vec<Arc<str>> = (0..threads)
        .map(|i| Arc::from(format!("pg-tenant-{i:02}")))
        .collect();
    let mut feeds: Vec<StatementFeed> = (0..threads)
        .map(|_| StatementFeed::churning(Engine::Postgres, 1_000_000, ROWS))
        .collect();
    let mut sets = || -> Vec<Vec<_>> {
        feeds
            .iter_mut()
            .map(|f| (0..SETS).map(|_| f.next_set()).collect())
            .collect()
    };
    let run = |sets: Vec<Vec<_>>| {
        std::thread::scope(|s| {
            for (target, sets) in targets.iter().zip(sets) {
                let (processor, settings) = (&processor, &settings);
                s.spawn(move || {
                    for set in sets {
                        let mut out = Points::new();
                        processor.process(target, settings, set, &mut out);
                    }
                });
            }
        });
    };
    run(sets());

    let rows = threads as u64 * SETS as u64 * ROWS;
    let name = format!("{threads}_threads/{SETS}x{ROWS}_rows_each_of_1M_keys");
    let id = format!("statement_keys/{name}");
    let mut group = c.benchmark_group("statement_keys");
    group.throughput(Throughput::Elements(rows));
    group.bench_function(&name, |b| {
        report.measure(&id, "row", rows, 5, &mut sets, run);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let input = sets();
                let start = Instant::now();
                run(input);
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

/// `threads` OS threads ticking the same 1000 targets at once (decide, then record a
/// success): the breaker cache and the per-target locks under contention.
fn breakers(c: &mut Criterion, report: &mut Report, threads: usize) {
    const TARGETS: usize = 1_000;
    const TICKS: usize = 10_000;
    const INTERVAL: Duration = Duration::from_secs(30);
    let breakers = Breakers::new(
        &config::Breaker::default(),
        Arc::new(Metrics::unregistered()),
    );
    let targets: Vec<Arc<str>> = (0..TARGETS)
        .map(|i| Arc::from(format!("pg-tenant-{i:04}")))
        .collect();
    let run = || {
        std::thread::scope(|s| {
            for t in 0..threads {
                let (breakers, targets) = (&breakers, &targets);
                s.spawn(move || {
                    for i in 0..TICKS {
                        let target = &targets[(i + t * 7) % TARGETS];
                        let now = tokio::time::Instant::now();
                        breakers.decide(target, INTERVAL, now);
                        breakers.record(target, INTERVAL, true, now);
                    }
                });
            }
        });
    };
    run();

    let ticks = (threads * TICKS) as u64;
    let name = format!("{threads}_threads/{TICKS}_ticks_each_on_{TARGETS}_targets");
    let id = format!("breaker_contention/{name}");
    let mut group = c.benchmark_group("breaker_contention");
    group.throughput(Throughput::Elements(ticks));
    group.bench_function(&name, |b| {
        report.measure(&id, "tick", ticks, 5, || (), |()| run());
        b.iter(run);
    });
    group.finish();
}
