//! The whole processing chain: `pipeline::process` from a scrape to the exporter's queue,
//! and the single-core CPU path of a scrape from decoded rows to compressed request bodies.

use std::sync::Arc;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput};
use dbcollector_benches::alloc::CountingAlloc;
use dbcollector_benches::fixtures::{self, Engine, StatementFeed, INTERVAL, START, T0};
use dbcollector_benches::harness;
use dbcollector_benches::report::Report;
use dbcollector_worker::config;
use dbcollector_worker::exporter::{encode_bytes, ExporterHandle};
use dbcollector_worker::metrics::{Batch, Point, PointSink, Points, Resource};
use dbcollector_worker::pipeline;
use dbcollector_worker::processors::statements::Statements;
use dbcollector_worker::receivers::postgres::mapping as pg;
use dbcollector_worker::receivers::StatementSet;
use dbcollector_worker::scheduler::Job;
use dbcollector_worker::telemetry::Metrics;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The export batch size (`pipeline.batch.max_points` default).
const MAX_POINTS: usize = 1_000;

/// Points per export request (what the exporter coalesces).
const REQUEST_BATCHES: usize = 4;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = runtime.enter();
    let metrics = Arc::new(Metrics::unregistered());
    // 200k points queued at most (the default), full from the start: each send evicts
    // (and frees) as many old points as it queues.
    let (exporter, _listener) = harness::idle_exporter(200_000, metrics.clone());

    let mut c = harness::criterion();
    let mut report = Report::new("pipeline");
    process(&mut c, &mut report, &exporter, &metrics);
    chain(&mut c, &mut report);
    c.final_summary();
    report.print();
}

/// One scrape shape for `pipeline::process`.
struct Case {
    name: &'static str,
    engine: Engine,
    plain: usize,
    feed: Option<StatementFeed>,
}

fn process(c: &mut Criterion, report: &mut Report, exporter: &ExporterHandle, metrics: &Metrics) {
    let cases = [
        Case {
            name: "plain/pg_1k_points",
            engine: Engine::Postgres,
            plain: 1_000,
            feed: None,
        },
        Case {
            name: "plain/mysql_1k_points",
            engine: Engine::MySql,
            plain: 1_000,
            feed: None,
        },
        Case {
            name: "plain/pg_5k_points_split",
            engine: Engine::Postgres,
            plain: 5_000,
            feed: None,
        },
        // About 1k points out: 100 plain, the top 100 of 200 stable statements.
        Case {
            name: "statements_low/pg_100_points_200_stable",
            engine: Engine::Postgres,
            plain: 100,
            feed: Some(StatementFeed::stable(Engine::Postgres, 200)),
        },
        // The same output from 5000 statements churning through 1M keys.
        Case {
            name: "statements_high/pg_100_points_5k_of_1M_keys",
            engine: Engine::Postgres,
            plain: 100,
            feed: Some(StatementFeed::churning(Engine::Postgres, 1_000_000, 5_000)),
        },
    ];
    let settings = Arc::new(config::Statements::default());

    let mut group = c.benchmark_group("pipeline_process");
    for case in cases {
        let Case {
            name,
            engine,
            plain,
            mut feed,
        } = case;
        let statements = Statements::new(
            &config::Sampler::default(),
            Arc::new(Metrics::unregistered()),
        );
        let (points, resource): (Vec<Point>, Arc<Resource>) = match engine {
            Engine::Postgres => (fixtures::pg_points(plain), fixtures::pg_resource("pg")),
            Engine::MySql => (
                fixtures::mysql_points(plain),
                fixtures::mysql_resource("my"),
            ),
        };
        let target: Arc<str> = Arc::from(name);
        let mut next_job = || {
            let set = feed.as_mut().map(StatementFeed::next_set);
            fixtures::job(&target, &resource, points.clone(), set, &settings)
        };
        let run = |job: Job| pipeline::process(job, &statements, exporter, MAX_POINTS, metrics);

        // A baseline scrape, then one to count the points handed to the exporter.
        run(next_job());
        let before = metrics.points_received.get();
        run(next_job());
        let out = metrics.points_received.get() - before;
        let id = format!("pipeline_process/{name}");
        report.note(format!(
            "{id}: {out} points handed to the exporter per scrape"
        ));

        group.throughput(Throughput::Elements(out));
        group.bench_function(name, |b| {
            report.measure(&id, "point", out, 20, &mut next_job, run);
            b.iter_batched(&mut next_job, run, BatchSize::LargeInput);
        });
    }
    group.finish();
}

/// How far the single-core chain goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Export batches, as handed to the exporter.
    Batches,
    /// Protobuf request bodies (the gRPC and uncompressed HTTP payload).
    Protobuf,
    /// Gzip-compressed request bodies (the default HTTP and gRPC payload).
    Gzip,
}

/// The decoded rows of one PostgreSQL scrape: 8 databases, 200 tables, 400 indexes and
/// 1000 statements (top 100 exported).
struct PgRows {
    databases: Vec<pg::DatabaseRow>,
    wide: fixtures::PgServerWide,
    activity: Vec<pg::ActivityRow>,
    locks: Vec<pg::LockRow>,
    tables: Vec<pg::TableRow>,
    indexes: Vec<pg::IndexRow>,
}

fn chain(c: &mut Criterion, report: &mut Report) {
    let rows = PgRows {
        databases: fixtures::pg_databases(8, 1),
        wide: fixtures::pg_server_wide(),
        activity: fixtures::pg_activity(),
        locks: fixtures::pg_locks(),
        tables: fixtures::pg_tables(200),
        indexes: fixtures::pg_indexes(400),
    };
    let db = fixtures::databases()[0].clone();
    let target: Arc<str> = Arc::from("pg-orders");
    let resource = fixtures::pg_resource("pg-orders");
    let settings = config::Statements::default();
    let statements = Statements::new(
        &config::Sampler::default(),
        Arc::new(Metrics::unregistered()),
    );

    // Input per scrape: the statement records (consumed by the mapping) and the read time.
    let mut scrape = 0u64;
    let mut next = || {
        scrape += 1;
        let records = fixtures::pg_statement_records(0..1_000, scrape, false);
        (records, T0 + scrape * INTERVAL)
    };
    // Rows to points, statements processor, batches, then as far as `stage` says: OTLP
    // requests of up to four batches as protobuf bytes, and gzip. Everything but the
    // database and the network. Returns (points, protobuf bytes, bytes sent).
    let run = |(records, now): (Vec<pg::StatementRecord>, u64), stage: Stage| {
        let mut points = Points::new();
        let mut sink = PointSink::new(&mut points, now, START);
        pg::databases(&rows.databases, &mut sink);
        pg::server(&rows.wide.server, &mut sink);
        pg::bgwriter(&rows.wide.bgwriter, &mut sink);
        pg::wal(&rows.wide.wal, &mut sink);
        pg::replication(&rows.wide.replication, &mut sink);
        pg::slots(&rows.wide.slots, &mut sink);
        pg::activity(&rows.activity, &mut sink);
        pg::locks(&rows.locks, &mut sink);
        pg::tables(&db, Some(200), &rows.tables, &mut sink);
        pg::indexes(&db, &rows.indexes, &mut sink);
        let set = StatementSet {
            descriptors: &pg::STATEMENTS,
            rows: records
                .into_iter()
                .map(|r| pg::statement(r, false))
                .collect(),
            time_unix_nanos: now,
            start_unix_nanos: START,
        };
        statements.process(&target, &settings, set, &mut points);

        // As the pipeline hands them over: each buffer of points is one batch.
        let parts: Vec<Batch> =
            pipeline::batches(points, &target, &resource, Instant::now(), MAX_POINTS).collect();
        let mut sizes = (0, 0, 0);
        for request in parts.chunks(REQUEST_BATCHES) {
            sizes.0 += request.iter().map(|b| b.points.len()).sum::<usize>();
            if stage == Stage::Batches {
                continue;
            }
            let body = encode_bytes(request);
            sizes.1 += body.len();
            sizes.2 += match stage {
                Stage::Gzip => harness::gzip(&body).len(),
                Stage::Batches | Stage::Protobuf => body.len(),
            };
        }
        sizes
    };

    run(next(), Stage::Batches);
    let (points, plain, gzipped) = run(next(), Stage::Gzip);
    report.note(format!(
        "pipeline_chain: {points} points per scrape, {plain} B protobuf ({:.1} B/point), \
         {gzipped} B gzip ({:.1} B/point)",
        plain as f64 / points as f64,
        gzipped as f64 / points as f64
    ));

    let mut group = c.benchmark_group("pipeline_chain");
    group.throughput(Throughput::Elements(points as u64));
    for (name, stage) in [
        ("pg_scrape_rows_to_batches", Stage::Batches),
        ("pg_scrape_rows_to_protobuf_bodies", Stage::Protobuf),
        ("pg_scrape_rows_to_gzip_bodies", Stage::Gzip),
    ] {
        let id = format!("pipeline_chain/{name}");
        let run = |input| run(input, stage);
        group.bench_function(name, |b| {
            report.measure(&id, "point", points as u64, 20, &mut next, run);
            b.iter_batched(&mut next, run, BatchSize::LargeInput);
        });
    }
    group.finish();
}
