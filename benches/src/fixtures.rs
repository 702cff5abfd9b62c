//! Realistic inputs: catalog rows as the receivers decode them, statement feeds of low and
//! high cardinality, and export batches with the receivers' attributes.
//!
//! Everything is deterministic (no random source), so two runs measure the same work.
//! Names that repeat across rows (databases, schemas, users) are shared `Arc<str>`s, as
//! the query layer shares them.

use std::sync::Arc;

use dbcollector_worker::attrs;
use dbcollector_worker::config;
use dbcollector_worker::metrics::{Batch, Point, PointSink, Points, Resource};
use dbcollector_worker::processors::statements::Statements;
use dbcollector_worker::receivers::mysql::mapping as my;
use dbcollector_worker::receivers::postgres::mapping as pg;
use dbcollector_worker::receivers::{Scrape, StatementSet};
use dbcollector_worker::scheduler::Job;
use dbcollector_worker::telemetry::Metrics;

/// Read time of the first scrape, Unix nanoseconds (2025-01-01).
pub const T0: u64 = 1_735_689_600_000_000_000;

/// Scrape interval of the feeds, nanoseconds.
pub const INTERVAL: u64 = 10_000_000_000;

/// Start of the servers' cumulative counters: a day before [`T0`].
pub const START: u64 = T0 - 86_400_000_000_000;

/// Database names of the fictional estate.
const DATABASE_NAMES: [&str; 8] = [
    "orders",
    "billing",
    "catalog",
    "identity",
    "shipping",
    "reporting",
    "search",
    "audit",
];

/// Schema names inside each database.
const SCHEMA_NAMES: [&str; 4] = ["public", "app", "archive", "staging"];

/// Roles running statements.
const USER_NAMES: [&str; 4] = ["app_rw", "app_ro", "etl", "reporting"];

/// A spread-out, bijective mix of a counter, so query ids and digests look random while
/// staying unique per key.
fn mix(k: u64) -> u64 {
    let mut x = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn shared(names: &[&str]) -> Vec<Arc<str>> {
    names.iter().map(|n| Arc::from(*n)).collect()
}

/// The database names, shared.
pub fn databases() -> Vec<Arc<str>> {
    shared(&DATABASE_NAMES)
}

// ---- Resources ---------------------------------------------------------------------------

/// A target's resource with the attributes `receivers::resource` gives it.
pub fn resource(system: &'static str, target: &str, host: &str, port: u16) -> Arc<Resource> {
    Arc::new(Resource {
        attrs: attrs![
            "db.system.name" => system,
            "service.name" => system,
            "service.instance.id" => format!("{host}:{port}"),
            "server.address" => host,
            "server.port" => i64::from(port),
            "dbcollector.target" => target,
        ],
    })
}

/// A PostgreSQL target's resource.
pub fn pg_resource(target: &str) -> Arc<Resource> {
    resource("postgresql", target, "pg-primary-01.db.internal", 5432)
}

/// A MariaDB target's resource.
pub fn mysql_resource(target: &str) -> Arc<Resource> {
    resource("mariadb", target, "mariadb-01.db.internal", 3306)
}

// ---- PostgreSQL rows ---------------------------------------------------------------------

/// `pg_stat_database` rows for `n` databases at scrape `scrape`.
pub fn pg_databases(n: usize, scrape: u64) -> Vec<pg::DatabaseRow> {
    let names = databases();
    (0..n)
        .map(|i| {
            let c = |f: u64| Some(((scrape + 1) * f * (i as u64 + 1)) as i64);
            pg::DatabaseRow {
                name: names[i % names.len()].clone(),
                backends: Some(12),
                commits: c(1_000),
                rollbacks: c(3),
                blks_read: c(400),
                blks_hit: c(90_000),
                tup_returned: c(500_000),
                tup_fetched: c(80_000),
                tup_inserted: c(900),
                tup_updated: c(700),
                tup_deleted: c(50),
                conflicts: Some(0),
                temp_files: c(1),
                temp_bytes: c(8_192),
                deadlocks: Some(0),
                size_bytes: Some(3_221_225_472),
                stats_reset: None,
            }
        })
        .collect()
}

/// `pg_stat_user_tables` rows (with sizes and I/O) for `n` tables spread over the schemas.
/// Every tenth table has no index and no TOAST (NULL index and TOAST counters).
pub fn pg_tables(n: usize) -> Vec<pg::TableRow> {
    let schemas = shared(&SCHEMA_NAMES);
    (0..n)
        .map(|i| {
            let v = |f: i64| Some(f * (i as i64 % 97 + 1));
            let plain = i % 10 == 0;
            let indexed = |f: i64| if plain { None } else { v(f) };
            pg::TableRow {
                schema: schemas[i % schemas.len()].clone(),
                name: Arc::from(format!("customer_orders_{i:05}")),
                seq_scan: v(40),
                idx_scan: indexed(9_000),
                live: v(120_000),
                dead: v(300),
                inserted: v(150_000),
                updated: v(20_000),
                deleted: v(1_000),
                hot_updated: v(15_000),
                vacuum_count: v(2),
                autovacuum_count: v(40),
                analyze_count: v(1),
                autoanalyze_count: v(30),
                size_bytes: v(81_920),
                heap_read: v(500),
                heap_hit: v(700_000),
                idx_read: indexed(200),
                idx_hit: indexed(400_000),
                toast_read: indexed(3),
                toast_hit: indexed(90),
                tidx_read: indexed(1),
                tidx_hit: indexed(40),
            }
        })
        .collect()
}

/// `pg_stat_user_indexes` rows: two indexes per table for `n / 2` tables.
pub fn pg_indexes(n: usize) -> Vec<pg::IndexRow> {
    let schemas = shared(&SCHEMA_NAMES);
    let mut tables: Vec<Arc<str>> = Vec::new();
    (0..n)
        .map(|i| {
            let t = i / 2;
            if tables.len() <= t {
                tables.push(Arc::from(format!("customer_orders_{t:05}")));
            }
            let suffix = if i % 2 == 0 { "pkey" } else { "created_at_idx" };
            pg::IndexRow {
                schema: schemas[t % schemas.len()].clone(),
                table: tables[t].clone(),
                name: Arc::from(format!("customer_orders_{t:05}_{suffix}")),
                scans: Some(1_000 * (i as i64 % 50)),
                size_bytes: Some(16_384 * (i as i64 % 200 + 1)),
            }
        })
        .collect()
}

/// Client backends grouped by database, state and wait event type.
pub fn pg_activity() -> Vec<pg::ActivityRow> {
    let states = shared(&["active", "idle", "idle in transaction", "unknown"]);
    let waits = shared(&["none", "Client", "Lock", "IO"]);
    let mut rows = Vec::new();
    for db in databases() {
        for (s, state) in states.iter().enumerate() {
            for (w, wait) in waits.iter().enumerate().take(2 + s % 3) {
                rows.push(pg::ActivityRow {
                    database: Some(db.clone()),
                    state: state.clone(),
                    wait_event_type: wait.clone(),
                    count: (s * 3 + w + 1) as i64,
                });
            }
        }
    }
    rows
}

/// Locks grouped by database, mode and lock type.
pub fn pg_locks() -> Vec<pg::LockRow> {
    let modes = shared(&[
        "AccessShareLock",
        "RowShareLock",
        "RowExclusiveLock",
        "ShareUpdateExclusiveLock",
    ]);
    let types = shared(&["relation", "virtualxid", "transactionid"]);
    let mut rows = Vec::new();
    for db in databases() {
        for mode in &modes {
            for lock_type in &types {
                rows.push(pg::LockRow {
                    database: Some(db.clone()),
                    mode: mode.clone(),
                    lock_type: lock_type.clone(),
                    count: 3,
                });
            }
        }
    }
    rows
}

/// Server-wide rows of a primary with two standbys and two slots.
pub struct PgServerWide {
    /// Settings and archiver.
    pub server: pg::ServerRow,
    /// Background writer and checkpointer.
    pub bgwriter: pg::BgwriterRow,
    /// WAL counters.
    pub wal: pg::WalRow,
    /// Standbys.
    pub replication: Vec<pg::ReplicationRow>,
    /// Replication slots.
    pub slots: Vec<pg::SlotRow>,
}

/// The server-wide rows of a busy primary.
pub fn pg_server_wide() -> PgServerWide {
    PgServerWide {
        server: pg::ServerRow {
            max_connections: Some(500),
            wal_age_s: Some(12),
        },
        bgwriter: pg::BgwriterRow {
            checkpoints_timed: Some(1_000),
            checkpoints_req: Some(20),
            checkpoint_write_ms: Some(900_000.0),
            checkpoint_sync_ms: Some(5_000.0),
            buffers_checkpoint: Some(4_000_000),
            buffers_clean: Some(200_000),
            maxwritten_clean: Some(40),
            buffers_backend: Some(100_000),
            buffers_backend_fsync: Some(0),
            buffers_alloc: Some(9_000_000),
            bgwriter_reset: Some(START),
            checkpointer_reset: Some(START),
        },
        wal: pg::WalRow {
            records: Some(90_000_000),
            fpi: Some(2_000_000),
            bytes: Some(40_000_000_000),
            buffers_full: Some(100),
            stats_reset: Some(START),
        },
        replication: (0..2)
            .map(|i| pg::ReplicationRow {
                client: Arc::from(format!("10.0.0.{}", 11 + i)),
                application: Arc::from(format!("standby_{i}")),
                data_delay_bytes: Some(8_192),
                write_lag_s: Some(0.001),
                flush_lag_s: Some(0.002),
                replay_lag_s: if i == 0 { Some(0.004) } else { None },
            })
            .collect(),
        slots: (0..2)
            .map(|i| pg::SlotRow {
                name: Arc::from(format!("standby_{i}_slot")),
                slot_type: Arc::from("physical"),
                active: Some(true),
                retained_bytes: Some(16_777_216),
            })
            .collect(),
    }
}

/// pg_stat_statements records for statement keys `keys` at scrape `scrape`: counters grow
/// with the scrape, so each key's changes are positive.
pub fn pg_statement_records(
    keys: impl Iterator<Item = u64>,
    scrape: u64,
    text: bool,
) -> Vec<pg::StatementRecord> {
    let (dbs, users) = (databases(), shared(&USER_NAMES));
    keys.map(|k| {
        let calls = (scrape + 1) * (1 + k % 13) + k % 5;
        let c = |f: u64| Some((calls * f) as i64);
        pg::StatementRecord {
            database: dbs[(k % 8) as usize].clone(),
            user: users[(k % 4) as usize].clone(),
            query_id: mix(k) as i64,
            text: text.then(|| pg_text(k)),
            calls: Some(calls as i64),
            total_time_ms: Some(calls as f64 * (0.05 + (k % 97) as f64 * 0.3)),
            rows: c(k % 10),
            shared_blks_hit: c(40),
            shared_blks_read: c(2),
            shared_blks_dirtied: c(1),
            shared_blks_written: Some(0),
            temp_blks_read: Some(0),
            temp_blks_written: Some(0),
        }
    })
    .collect()
}

/// Normalized statement text as pg_stat_statements keeps it (parameters as `$n`, some
/// literals left in place where the server keeps them, e.g. in `LIMIT`).
fn pg_text(k: u64) -> String {
    format!(
        "SELECT o.id, o.total, o.status, c.email FROM customer_orders_{:05} o \
         JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = $1 \
         AND o.created_at > $2 AND o.status IN ('open', 'paid') \
         ORDER BY o.created_at DESC LIMIT 50",
        k % 2000
    )
}

// ---- MySQL rows --------------------------------------------------------------------------

/// Status variables the mapping reports (a MariaDB 10.11 server has all but
/// `Locked_connects` and `Innodb_rows_*`).
const MAPPED_STATUS: [&str; 60] = [
    "Aborted_clients",
    "Aborted_connects",
    "Bytes_received",
    "Bytes_sent",
    "Com_begin",
    "Com_commit",
    "Com_delete",
    "Com_insert",
    "Com_rollback",
    "Com_select",
    "Com_update",
    "Com_stmt_execute",
    "Com_stmt_prepare",
    "Com_stmt_close",
    "Connection_errors_accept",
    "Connection_errors_internal",
    "Connection_errors_max_connections",
    "Connections",
    "Created_tmp_disk_tables",
    "Created_tmp_files",
    "Created_tmp_tables",
    "Handler_commit",
    "Handler_delete",
    "Handler_read_first",
    "Handler_read_key",
    "Handler_read_next",
    "Handler_read_rnd_next",
    "Handler_rollback",
    "Handler_update",
    "Handler_write",
    "Innodb_buffer_pool_pages_data",
    "Innodb_buffer_pool_pages_dirty",
    "Innodb_buffer_pool_pages_free",
    "Innodb_buffer_pool_pages_misc",
    "Innodb_buffer_pool_pages_flushed",
    "Innodb_buffer_pool_bytes_data",
    "Innodb_buffer_pool_bytes_dirty",
    "Innodb_buffer_pool_read_requests",
    "Innodb_buffer_pool_reads",
    "Innodb_buffer_pool_write_requests",
    "Innodb_data_fsyncs",
    "Innodb_data_reads",
    "Innodb_data_writes",
    "Innodb_log_waits",
    "Innodb_log_writes",
    "Innodb_pages_created",
    "Innodb_pages_read",
    "Innodb_pages_written",
    "Innodb_row_lock_time",
    "Innodb_row_lock_waits",
    "Opened_files",
    "Opened_tables",
    "Queries",
    "Questions",
    "Slow_queries",
    "Sort_rows",
    "Table_locks_immediate",
    "Threads_connected",
    "Threads_running",
    "Uptime",
];

/// Prefixes of the status variables the mapping skips; a real server has about 500
/// such rows, some not even numbers.
const OTHER_STATUS: [&str; 10] = [
    "Aria_pagecache_",
    "Binlog_",
    "Com_show_",
    "Feature_",
    "Handler_icp_",
    "Innodb_ibuf_",
    "Performance_schema_",
    "Ssl_",
    "Wsrep_",
    "Rpl_semi_sync_",
];

/// `SHOW GLOBAL STATUS` of a MariaDB server: the mapped variables among about 520 rows.
pub fn mysql_status(scrape: u64) -> Vec<my::NameValue> {
    let mut rows: Vec<my::NameValue> = MAPPED_STATUS
        .iter()
        .enumerate()
        .map(|(i, name)| my::NameValue {
            name: (*name).to_owned(),
            value: ((scrape + 1) * (i as u64 + 1) * 1_000).to_string(),
        })
        .collect();
    for i in 0..460 {
        let prefix = OTHER_STATUS[i % OTHER_STATUS.len()];
        let value = match i % 7 {
            0 => "ON".to_owned(),
            1 => String::new(),
            2 => "0.000000".to_owned(),
            _ => (i * 17).to_string(),
        };
        rows.push(my::NameValue {
            name: format!("{prefix}variable_{i}"),
            value,
        });
    }
    rows
}

/// `SHOW GLOBAL VARIABLES`: about 600 rows, two of them mapped.
pub fn mysql_variables() -> Vec<my::NameValue> {
    let mut rows: Vec<my::NameValue> = (0..600)
        .map(|i| my::NameValue {
            name: format!("setting_number_{i}"),
            value: if i % 3 == 0 {
                "OFF".into()
            } else {
                i.to_string()
            },
        })
        .collect();
    rows[100].name = "max_connections".into();
    rows[100].value = "500".into();
    rows[400].name = "innodb_buffer_pool_size".into();
    rows[400].value = "8589934592".into();
    rows
}

/// Table I/O wait rows for `tables` tables; with `indexes`, two index rows per table plus
/// the no-index row the index family skips.
pub fn mysql_io_waits(tables: usize, indexes: bool) -> Vec<my::IoWaitRow> {
    let schemas = databases();
    let primary: Arc<str> = Arc::from("PRIMARY");
    let mut rows = Vec::new();
    for t in 0..tables {
        let schema = schemas[t % schemas.len()].clone();
        let table: Arc<str> = Arc::from(format!("customer_orders_{t:05}"));
        let row = |index: Option<Arc<str>>, f: u64| my::IoWaitRow {
            schema: schema.clone(),
            table: table.clone(),
            index,
            count: [9_000 * f, 300 * f, 200 * f, 10 * f],
            time_ps: [
                9_000_000_000 * f,
                400_000_000 * f,
                300_000_000 * f,
                9_000_000 * f,
            ],
            total_wait_ps: 10_000_000_000 * f,
        };
        if indexes {
            rows.push(row(Some(primary.clone()), 3));
            rows.push(row(Some(Arc::from(format!("idx_{t:05}_created_at"))), 2));
            rows.push(row(None, 1));
        } else {
            rows.push(row(None, (t % 50) as u64 + 1));
        }
    }
    rows
}

/// `events_statements_summary_by_digest` rows for keys `keys` at scrape `scrape`.
pub fn mysql_digests(
    keys: impl Iterator<Item = u64>,
    scrape: u64,
    text: bool,
) -> Vec<my::DigestRow> {
    let schemas = databases();
    keys.map(|k| {
        let calls = (scrape + 1) * (1 + k % 13) + k % 5;
        my::DigestRow {
            // Some clients never select a schema.
            schema: (k % 16 != 0).then(|| schemas[(k % 8) as usize].clone()),
            digest: Some(format!("{:016x}{:016x}", mix(k), mix(k ^ 0xFFFF))),
            text: text.then(|| {
                format!(
                    "SELECT `o` . `id` , `o` . `total` FROM `customer_orders_{:05}` AS `o` \
                     WHERE `o` . `customer_id` = ? AND `o` . `status` IN (...) LIMIT ?",
                    k % 2000
                )
            }),
            count_star: calls,
            sum_timer_wait: calls * 300_000_000 * (k % 97 + 1),
            sum_lock_time: calls * 1_000_000,
            sum_errors: u64::from(k % 500 == 0),
            sum_rows_affected: calls * (k % 3),
            sum_rows_sent: calls * (k % 10),
            sum_rows_examined: calls * 40,
            sum_created_tmp_disk_tables: 0,
            sum_created_tmp_tables: calls / 10,
            sum_sort_rows: calls * 5,
            sum_no_index_used: calls / 50,
            sum_cpu_time: None,
        }
    })
    .collect()
}

// ---- Statement feeds ---------------------------------------------------------------------

/// Which engine's rows a feed produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// pg_stat_statements.
    Postgres,
    /// performance_schema digests.
    MySql,
}

/// Successive statement sets of one target: every scrape reads `per_scrape` statements
/// out of `keyspace` distinct keys, the window moving on by `per_scrape` each scrape (so
/// with a keyspace larger than the window every key is new for a long while), with read
/// times [`INTERVAL`] apart.
#[derive(Clone, Debug)]
pub struct StatementFeed {
    engine: Engine,
    keyspace: u64,
    per_scrape: u64,
    next: u64,
    scrape: u64,
    text: bool,
}

impl StatementFeed {
    /// The same `n` statements every scrape, their counters growing.
    pub fn stable(engine: Engine, n: u64) -> Self {
        Self::churning(engine, n, n)
    }

    /// `per_scrape` statements per scrape churning through `keyspace` distinct keys.
    pub fn churning(engine: Engine, keyspace: u64, per_scrape: u64) -> Self {
        Self {
            engine,
            keyspace,
            per_scrape,
            next: 0,
            scrape: 0,
            text: false,
        }
    }

    /// Also reads each statement's text (for targets that export it obfuscated).
    pub fn with_text(mut self) -> Self {
        self.text = true;
        self
    }

    /// Statements per set.
    pub fn per_scrape(&self) -> u64 {
        self.per_scrape
    }

    /// The next scrape's set, as the receiver hands it to the processor.
    pub fn next_set(&mut self) -> StatementSet {
        let (first, keyspace) = (self.next, self.keyspace);
        let keys = (0..self.per_scrape).map(move |i| (first + i) % keyspace);
        let time = T0 + self.scrape * INTERVAL;
        let set = match self.engine {
            Engine::Postgres => StatementSet {
                descriptors: &pg::STATEMENTS,
                rows: pg_statement_records(keys, self.scrape, self.text)
                    .into_iter()
                    .map(|r| pg::statement(r, self.text))
                    .collect(),
                time_unix_nanos: time,
                start_unix_nanos: START,
            },
            Engine::MySql => StatementSet {
                descriptors: &my::STATEMENT_DESCRIPTORS,
                rows: mysql_digests(keys, self.scrape, self.text)
                    .into_iter()
                    .map(my::statement)
                    .collect(),
                time_unix_nanos: time,
                start_unix_nanos: START,
            },
        };
        self.next = (self.next + self.per_scrape) % self.keyspace;
        self.scrape += 1;
        set
    }
}

// ---- Points and batches ------------------------------------------------------------------

/// A PostgreSQL scrape's plain points (everything but statements), cut to `n`: databases,
/// server-wide families, activity, locks, then tables and indexes as far as needed.
pub fn pg_points(n: usize) -> Vec<Point> {
    let mut out = Vec::with_capacity(n + 64);
    let mut sink = PointSink::new(&mut out, T0, START);
    pg::databases(&pg_databases(4, 1), &mut sink);
    let wide = pg_server_wide();
    pg::server(&wide.server, &mut sink);
    pg::bgwriter(&wide.bgwriter, &mut sink);
    pg::wal(&wide.wal, &mut sink);
    pg::replication(&wide.replication, &mut sink);
    pg::slots(&wide.slots, &mut sink);
    pg::activity(&pg_activity()[..16], &mut sink);
    pg::locks(&pg_locks()[..16], &mut sink);
    let db = databases()[0].clone();
    // About 24 points per table and 2 per index: enough rows for any `n` up to ~50k.
    let tables = n / 30 + 1;
    pg::tables(&db, Some(tables as i64), &pg_tables(tables), &mut sink);
    pg::indexes(&db, &pg_indexes(n), &mut sink);
    out.truncate(n);
    out
}

/// A MariaDB scrape's plain points, cut to `n`: status, variables, then table and index
/// I/O waits as far as needed.
pub fn mysql_points(n: usize) -> Vec<Point> {
    let mut out = Vec::with_capacity(n + 64);
    let mut sink = PointSink::new(&mut out, T0, START);
    my::global_status(&mysql_status(1), &mut sink);
    my::global_variables(&mysql_variables(), &mut sink);
    let tables = n / 16 + 1;
    my::table_io_waits(&mysql_io_waits(tables / 2 + 1, false), &mut sink);
    my::index_io_waits(&mysql_io_waits(tables, true), &mut sink);
    out.truncate(n);
    out
}

/// The points the statements processor emits for `statements` kept statements of
/// `engine` (a steady scrape: individual series, the aggregate and the rate).
pub fn statement_points(engine: Engine, statements: u32) -> Vec<Point> {
    let processor = Statements::new(
        &config::Sampler::default(),
        Arc::new(Metrics::unregistered()),
    );
    let settings = config::Statements {
        top_n: statements,
        ..Default::default()
    };
    let mut feed = StatementFeed::stable(engine, u64::from(statements) * 5);
    let target: Arc<str> = Arc::from("fixture");
    let mut out = Points::new();
    for _ in 0..2 {
        out = Points::new();
        processor.process(&target, &settings, feed.next_set(), &mut out);
    }
    out.into_iter().collect()
}

/// An export batch of exactly `n` points of one target: about 20 % statement points,
/// the rest the engine's plain families.
pub fn batch(engine: Engine, n: usize) -> Batch {
    let statements = statement_points(engine, (n / 50).max(1) as u32);
    let take = statements.len().min(n);
    let (mut points, resource) = match engine {
        Engine::Postgres => (pg_points(n - take), pg_resource("pg-orders")),
        Engine::MySql => (mysql_points(n - take), mysql_resource("mariadb-orders")),
    };
    points.extend(statements.into_iter().take(take));
    let mut batch = Batch::new(Arc::from("orders"), resource);
    batch.points = points;
    batch
}

/// A processing job as the scheduler sends it: `points` plain points and, optionally, a
/// statement set, with the target's statement settings.
pub fn job(
    target: &Arc<str>,
    resource: &Arc<Resource>,
    points: Vec<Point>,
    statements: Option<StatementSet>,
    settings: &Arc<config::Statements>,
) -> Job {
    Job {
        scrape: Scrape {
            target: target.clone(),
            resource: resource.clone(),
            points: points.into_iter().collect(),
            statements,
            read_at: std::time::Instant::now(),
        },
        statements: settings.clone(),
    }
}
