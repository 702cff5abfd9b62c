//! Each receiver's row-to-point mapping, apart from the database round trip, on realistic
//! row counts (thousands of tables and indexes, 5000 statements).

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput};
use dbcollector_benches::alloc::CountingAlloc;
use dbcollector_benches::fixtures::{self, START, T0};
use dbcollector_benches::harness;
use dbcollector_benches::report::Report;
use dbcollector_worker::metrics::{Point, PointSink};
use dbcollector_worker::receivers::mysql::mapping as my;
use dbcollector_worker::receivers::postgres::mapping as pg;
use dbcollector_worker::receivers::StatementRow;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn main() {
    let mut c = harness::criterion();
    let mut report = Report::new("mapping");
    postgres(&mut c, &mut report);
    mysql(&mut c, &mut report);
    c.final_summary();
    report.print();
}

/// A criterion group with its name and the allocation report.
struct Group<'c, 'r> {
    inner: BenchmarkGroup<'c, WallTime>,
    name: &'static str,
    report: &'r mut Report,
}

impl Group<'_, '_> {
    /// Benches a mapping that appends points to a fresh vector, as a scrape does; the
    /// throughput counts the points it produces.
    fn points(&mut self, name: &str, map: impl Fn(&mut PointSink<'_>)) {
        let run = |mut out: Vec<Point>| {
            map(&mut PointSink::new(&mut out, T0, START));
            out
        };
        let produced = run(Vec::new()).len() as u64;
        let id = format!("{}/{name}", self.name);
        let report = &mut *self.report;
        self.inner.throughput(Throughput::Elements(produced));
        self.inner.bench_function(name, |b| {
            report.measure(&id, "point", produced, 20, Vec::new, run);
            b.iter_batched(Vec::new, run, BatchSize::LargeInput);
        });
    }

    /// Benches `run` on a copy of `input` made before each iteration, counted per row.
    fn consuming<I: Clone, O>(&mut self, name: &str, input: &[I], run: impl Fn(Vec<I>) -> O) {
        let n = input.len() as u64;
        let id = format!("{}/{name}", self.name);
        let report = &mut *self.report;
        self.inner.throughput(Throughput::Elements(n));
        self.inner.bench_function(name, |b| {
            report.measure(&id, "row", n, 10, || input.to_vec(), &run);
            b.iter_batched(|| input.to_vec(), &run, BatchSize::LargeInput);
        });
    }

    /// Benches a statement mapping: records in, [`StatementRow`]s out, counted per row.
    fn statements<R: Clone>(&mut self, name: &str, records: &[R], map: impl Fn(R) -> StatementRow) {
        self.consuming(name, records, |records: Vec<R>| {
            records.into_iter().map(&map).collect::<Vec<_>>()
        });
    }
}

fn postgres(c: &mut Criterion, report: &mut Report) {
    let databases = fixtures::pg_databases(50, 1);
    let tables = fixtures::pg_tables(2_000);
    let indexes = fixtures::pg_indexes(4_000);
    let activity = fixtures::pg_activity();
    let locks = fixtures::pg_locks();
    let wide = fixtures::pg_server_wide();
    let records = fixtures::pg_statement_records(0..5_000, 1, false);
    let records_text = fixtures::pg_statement_records(0..5_000, 1, true);
    let db = fixtures::databases()[0].clone();

    let mut g = Group {
        inner: c.benchmark_group("mapping_pg"),
        name: "mapping_pg",
        report,
    };
    g.points("databases/50_rows", |s| pg::databases(&databases, s));
    g.points("tables/2000_rows", |s| {
        pg::tables(&db, Some(2_000), &tables, s)
    });
    g.points("indexes/4000_rows", |s| pg::indexes(&db, &indexes, s));
    g.points("activity_and_locks/8_databases", |s| {
        pg::activity(&activity, s);
        pg::locks(&locks, s);
    });
    g.points("server_wide/2_standbys", |s| {
        pg::server(&wide.server, s);
        pg::bgwriter(&wide.bgwriter, s);
        pg::wal(&wide.wal, s);
        pg::replication(&wide.replication, s);
        pg::slots(&wide.slots, s);
    });
    g.statements("statements/5000_records", &records, |r| {
        pg::statement(r, false)
    });
    g.statements("statements/5000_records_with_text", &records_text, |r| {
        pg::statement(r, true)
    });
    g.inner.finish();
}

fn mysql(c: &mut Criterion, report: &mut Report) {
    let status = fixtures::mysql_status(1);
    let variables = fixtures::mysql_variables();
    let table_waits = fixtures::mysql_io_waits(2_000, false);
    let index_waits = fixtures::mysql_io_waits(2_000, true);
    let digests = fixtures::mysql_digests(0..5_000, 1, false);

    let mut g = Group {
        inner: c.benchmark_group("mapping_mysql"),
        name: "mapping_mysql",
        report,
    };
    g.points(&format!("global_status/{}_rows", status.len()), |s| {
        my::global_status(&status, s)
    });
    g.points(&format!("global_variables/{}_rows", variables.len()), |s| {
        my::global_variables(&variables, s)
    });
    g.points("table_io_waits/2000_tables", |s| {
        my::table_io_waits(&table_waits, s)
    });
    g.points(&format!("index_io_waits/{}_rows", index_waits.len()), |s| {
        my::index_io_waits(&index_waits, s)
    });
    g.statements("statements/5000_digests", &digests, my::statement);
    // The relation cap applied before the I/O families: 1000 rows kept per schema.
    g.consuming(
        &format!("cap_per_schema/{}_rows_limit_1000", index_waits.len()),
        &index_waits,
        |mut rows: Vec<my::IoWaitRow>| {
            my::cap_per_schema(&mut rows, 1_000);
            rows
        },
    );
    g.inner.finish();
}
