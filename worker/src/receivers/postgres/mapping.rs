//! PostgreSQL rows to points: the metric descriptors and one mapping function per family.
//!
//! Nothing here touches a database: the query layer decodes rows into the plain structs
//! below and these functions turn them into points, so benches and unit tests can run
//! the mapping alone. Names, units and attribute keys follow the OpenTelemetry Collector
//! contrib `postgresql` receiver where it has the metric; families it lacks are named in
//! the same style. Attributes that contrib puts on per-database/table resources are
//! point attributes here (`postgresql.database.name`, `postgresql.schema.name`,
//! `postgresql.table.name`, `postgresql.index.name`), since one resource is one target.
//!
//! NULL handling: a NULL value skips that one point, never the row (pg-07). Counters
//! start at the counter's reset time where the server keeps one, else at the postmaster
//! start time (the sink's `start`).

use std::sync::Arc;

use smallvec::SmallVec;

use crate::attrs;
use crate::metrics::{Attributes, Descriptor, PointSink, Value};
use crate::receivers::{StatementDescriptors, StatementRow};

// ---------------------------------------------------------------------------------------
// Attribute keys.

/// Database a point belongs to.
pub const DATABASE: &str = "postgresql.database.name";
/// Schema of a table or index.
pub const SCHEMA: &str = "postgresql.schema.name";
/// Table name, exactly as stored.
pub const TABLE: &str = "postgresql.table.name";
/// Index name, exactly as stored.
pub const INDEX: &str = "postgresql.index.name";
/// Role that ran a statement.
pub const USER: &str = "user.name";
/// pg_stat_statements' query id.
pub const QUERY_ID: &str = "postgresql.query.id";

// ---------------------------------------------------------------------------------------
// Server-wide families (collected by the endpoint's carrier target).

/// Backends per database (`pg_stat_database.numbackends`).
pub static BACKENDS: Descriptor = Descriptor::updown(
    "postgresql.backends",
    "1",
    "The number of backends connected to the database.",
);
/// Committed transactions.
pub static COMMITS: Descriptor =
    Descriptor::counter("postgresql.commits", "1", "The number of commits.");
/// Rolled back transactions.
pub static ROLLBACKS: Descriptor =
    Descriptor::counter("postgresql.rollbacks", "1", "The number of rollbacks.");
/// Blocks found in the buffer cache.
pub static BLKS_HIT: Descriptor = Descriptor::counter(
    "postgresql.blks_hit",
    "{blks_hit}",
    "Number of times disk blocks were found already in the buffer cache.",
);
/// Blocks read from disk.
pub static BLKS_READ: Descriptor = Descriptor::counter(
    "postgresql.blks_read",
    "{blks_read}",
    "Number of disk blocks read in this database.",
);
/// Rows returned by sequential scans and index entries returned by index scans.
pub static TUP_RETURNED: Descriptor = Descriptor::counter(
    "postgresql.tup_returned",
    "{tup_returned}",
    "Number of rows returned by queries in the database.",
);
/// Rows fetched by index scans.
pub static TUP_FETCHED: Descriptor = Descriptor::counter(
    "postgresql.tup_fetched",
    "{tup_fetched}",
    "Number of rows fetched by queries in the database.",
);
/// Rows inserted.
pub static TUP_INSERTED: Descriptor = Descriptor::counter(
    "postgresql.tup_inserted",
    "{tup_inserted}",
    "Number of rows inserted by queries in the database.",
);
/// Rows updated.
pub static TUP_UPDATED: Descriptor = Descriptor::counter(
    "postgresql.tup_updated",
    "{tup_updated}",
    "Number of rows updated by queries in the database.",
);
/// Rows deleted.
pub static TUP_DELETED: Descriptor = Descriptor::counter(
    "postgresql.tup_deleted",
    "{tup_deleted}",
    "Number of rows deleted by queries in the database.",
);
/// Deadlocks detected.
pub static DEADLOCKS: Descriptor = Descriptor::counter(
    "postgresql.deadlocks",
    "{deadlock}",
    "The number of deadlocks.",
);
/// Temporary files created.
pub static TEMP_FILES: Descriptor = Descriptor::counter(
    "postgresql.temp_files",
    "{temp_file}",
    "The number of temp files.",
);
/// Bytes written to temporary files.
pub static TEMP_IO: Descriptor = Descriptor::counter(
    "postgresql.temp.io",
    "By",
    "Total amount of data written to temporary files by queries.",
);
/// Queries cancelled by recovery conflicts (standbys only).
pub static CONFLICTS: Descriptor = Descriptor::counter(
    "postgresql.conflicts",
    "{query}",
    "Number of queries canceled due to conflicts with recovery in the database.",
);
/// Database size on disk.
pub static DB_SIZE: Descriptor =
    Descriptor::updown("postgresql.db_size", "By", "The database disk usage.");
/// Client connections by database, state and wait event type.
pub static CONNECTION_COUNT: Descriptor = Descriptor::gauge(
    "postgresql.connection.count",
    "{connection}",
    "Client backends by database, state and wait event type.",
);
/// `max_connections`.
pub static CONNECTION_MAX: Descriptor = Descriptor::gauge(
    "postgresql.connection.max",
    "{connections}",
    "Configured maximum number of client connections allowed.",
);
/// Locks by database, mode and lock type.
pub static LOCKS: Descriptor = Descriptor::gauge(
    "postgresql.database.locks",
    "{lock}",
    "The number of database locks.",
);
/// Buffers allocated.
pub static BGWRITER_ALLOCATED: Descriptor = Descriptor::counter(
    "postgresql.bgwriter.buffers.allocated",
    "{buffers}",
    "Number of buffers allocated.",
);
/// Buffers written, by who wrote them.
pub static BGWRITER_WRITES: Descriptor = Descriptor::counter(
    "postgresql.bgwriter.buffers.writes",
    "{buffers}",
    "Number of buffers written.",
);
/// Checkpoints, by type.
pub static CHECKPOINTS: Descriptor = Descriptor::counter(
    "postgresql.bgwriter.checkpoint.count",
    "{checkpoints}",
    "The number of checkpoints performed.",
);
/// Checkpoint write and sync time.
pub static CHECKPOINT_DURATION: Descriptor = Descriptor::counter(
    "postgresql.bgwriter.duration",
    "ms",
    "Total time spent writing and syncing files to disk by checkpoints.",
);
/// Cleaning scans stopped for writing too many buffers.
pub static BGWRITER_MAXWRITTEN: Descriptor = Descriptor::counter(
    "postgresql.bgwriter.maxwritten",
    "1",
    "Number of times the background writer stopped a cleaning scan because it had written \
     too many buffers.",
);
/// WAL records generated (`pg_stat_wal`, PostgreSQL 14+).
pub static WAL_RECORDS: Descriptor = Descriptor::counter(
    "postgresql.wal.records",
    "{record}",
    "WAL records generated.",
);
/// WAL full page images generated.
pub static WAL_FPI: Descriptor = Descriptor::counter(
    "postgresql.wal.full_page_images",
    "{image}",
    "WAL full page images generated.",
);
/// WAL bytes generated.
pub static WAL_BYTES: Descriptor =
    Descriptor::counter("postgresql.wal.bytes", "By", "WAL generated, in bytes.");
/// Times WAL was written because the WAL buffers were full.
pub static WAL_BUFFERS_FULL: Descriptor = Descriptor::counter(
    "postgresql.wal.buffers_full",
    "{event}",
    "Times WAL data was written to disk because the WAL buffers became full.",
);
/// Seconds since the last WAL segment was archived.
pub static WAL_AGE: Descriptor = Descriptor::gauge(
    "postgresql.wal.age",
    "s",
    "Age of the oldest WAL file: time since the last WAL segment was archived.",
);
/// Replication lag per standby and operation.
pub static WAL_DELAY: Descriptor = Descriptor::gauge(
    "postgresql.wal.delay",
    "s",
    "Time between flushing recent WAL locally and receiving notification that the standby \
     server has completed an operation with it.",
);
/// WAL bytes a standby has not replayed yet.
pub static REPLICATION_DATA_DELAY: Descriptor = Descriptor::gauge(
    "postgresql.replication.data_delay",
    "By",
    "The amount of data delayed in replication.",
);
/// WAL a replication slot keeps from being removed.
pub static SLOT_RETAINED: Descriptor = Descriptor::gauge(
    "postgresql.replication.slot.retained",
    "By",
    "WAL retained for the replication slot, from its restart position to the current one.",
);
/// Whether a replication slot is in use.
pub static SLOT_ACTIVE: Descriptor = Descriptor::gauge(
    "postgresql.replication.slot.active",
    "1",
    "1 when a client is streaming from the replication slot, else 0.",
);

// ---------------------------------------------------------------------------------------
// Per-database families (read on each monitored database's own connection).

/// User tables in the database.
pub static TABLE_COUNT: Descriptor = Descriptor::updown(
    "postgresql.table.count",
    "{table}",
    "Number of user tables in a database.",
);
/// Table size including indexes and TOAST.
pub static TABLE_SIZE: Descriptor =
    Descriptor::updown("postgresql.table.size", "By", "Disk space used by a table.");
/// Live and dead rows.
pub static ROWS: Descriptor = Descriptor::updown(
    "postgresql.rows",
    "1",
    "The number of rows in the database.",
);
/// Row operations by kind.
pub static OPERATIONS: Descriptor = Descriptor::counter(
    "postgresql.operations",
    "1",
    "The number of db row operations.",
);
/// Sequential scans of a table.
pub static SEQUENTIAL_SCANS: Descriptor = Descriptor::counter(
    "postgresql.sequential_scans",
    "{sequential_scan}",
    "The number of sequential scans.",
);
/// Index scans on any index of a table.
pub static TABLE_INDEX_SCANS: Descriptor = Descriptor::counter(
    "postgresql.table.index_scans",
    "{scan}",
    "The number of index scans initiated on a table, over all its indexes.",
);
/// Manual vacuums.
pub static VACUUMS: Descriptor = Descriptor::counter(
    "postgresql.table.vacuum.count",
    "{vacuum}",
    "Number of times a table has manually been vacuumed.",
);
/// Autovacuums.
pub static AUTOVACUUMS: Descriptor = Descriptor::counter(
    "postgresql.table.autovacuum.count",
    "{vacuum}",
    "Number of times a table has been vacuumed by the autovacuum daemon.",
);
/// Manual analyzes.
pub static ANALYZES: Descriptor = Descriptor::counter(
    "postgresql.table.analyze.count",
    "{analyze}",
    "Number of times a table has manually been analyzed.",
);
/// Autoanalyzes.
pub static AUTOANALYZES: Descriptor = Descriptor::counter(
    "postgresql.table.autoanalyze.count",
    "{analyze}",
    "Number of times a table has been analyzed by the autovacuum daemon.",
);
/// Table block reads and cache hits by source (`pg_statio_user_tables`).
pub static BLOCKS_READ: Descriptor =
    Descriptor::counter("postgresql.blocks_read", "1", "The number of blocks read.");
/// Scans of an index.
pub static INDEX_SCANS: Descriptor = Descriptor::counter(
    "postgresql.index.scans",
    "{scans}",
    "The number of index scans on a table.",
);
/// Index size.
pub static INDEX_SIZE: Descriptor = Descriptor::gauge(
    "postgresql.index.size",
    "By",
    "The size of the index on disk.",
);

// ---------------------------------------------------------------------------------------
// Statement families (pg_stat_statements), mapped to points by the statements processor.

static QUERY_CALLS: Descriptor = Descriptor::counter(
    "postgresql.query.calls",
    "{call}",
    "Executions of the statement.",
);
static QUERY_DURATION: Descriptor = Descriptor::counter(
    "postgresql.query.duration",
    "s",
    "Total time spent executing the statement.",
);
static QUERY_ROWS: Descriptor = Descriptor::counter(
    "postgresql.query.rows",
    "{row}",
    "Rows retrieved or affected by the statement.",
);
static OTHERS_CALLS: Descriptor = Descriptor::delta(
    "postgresql.query.others.calls",
    "{call}",
    "Executions of the statements not reported one by one.",
);
static OTHERS_DURATION: Descriptor = Descriptor::delta(
    "postgresql.query.others.duration",
    "s",
    "Execution time of the statements not reported one by one.",
);
static OTHERS_ROWS: Descriptor = Descriptor::delta(
    "postgresql.query.others.rows",
    "{row}",
    "Rows of the statements not reported one by one.",
);
static OTHERS_COUNT: Descriptor = Descriptor::gauge(
    "postgresql.query.others.count",
    "{statement}",
    "Statements folded into the aggregate.",
);
static SAMPLE_RATE: Descriptor = Descriptor::gauge(
    "postgresql.query.sample_rate",
    "1",
    "Share of the statements outside the top N that are reported one by one.",
);
/// Shared buffer hits of a statement.
pub static QUERY_SHARED_BLKS_HIT: Descriptor = Descriptor::counter(
    "postgresql.query.shared_blks_hit",
    "{block}",
    "Shared block cache hits by the statement.",
);
/// Shared blocks read by a statement.
pub static QUERY_SHARED_BLKS_READ: Descriptor = Descriptor::counter(
    "postgresql.query.shared_blks_read",
    "{block}",
    "Shared blocks read by the statement.",
);
/// Shared blocks dirtied by a statement.
pub static QUERY_SHARED_BLKS_DIRTIED: Descriptor = Descriptor::counter(
    "postgresql.query.shared_blks_dirtied",
    "{block}",
    "Shared blocks dirtied by the statement.",
);
/// Shared blocks written by a statement.
pub static QUERY_SHARED_BLKS_WRITTEN: Descriptor = Descriptor::counter(
    "postgresql.query.shared_blks_written",
    "{block}",
    "Shared blocks written by the statement.",
);
/// Temporary blocks read by a statement.
pub static QUERY_TEMP_BLKS_READ: Descriptor = Descriptor::counter(
    "postgresql.query.temp_blks_read",
    "{block}",
    "Temp blocks read by the statement.",
);
/// Temporary blocks written by a statement.
pub static QUERY_TEMP_BLKS_WRITTEN: Descriptor = Descriptor::counter(
    "postgresql.query.temp_blks_written",
    "{block}",
    "Temp blocks written by the statement.",
);

/// The statement families of PostgreSQL.
pub static STATEMENTS: StatementDescriptors = StatementDescriptors {
    calls: &QUERY_CALLS,
    time: &QUERY_DURATION,
    rows: &QUERY_ROWS,
    errors: None,
    others_calls: &OTHERS_CALLS,
    others_time: &OTHERS_DURATION,
    others_rows: &OTHERS_ROWS,
    others_count: &OTHERS_COUNT,
    sample_rate: &SAMPLE_RATE,
};

// ---------------------------------------------------------------------------------------
// Rows.

/// One `pg_stat_database` row (plus its size), for one database of the server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatabaseRow {
    /// `datname`, exactly as stored.
    pub name: Arc<str>,
    /// `numbackends`.
    pub backends: Option<i64>,
    /// `xact_commit`.
    pub commits: Option<i64>,
    /// `xact_rollback`.
    pub rollbacks: Option<i64>,
    /// `blks_read`.
    pub blks_read: Option<i64>,
    /// `blks_hit`.
    pub blks_hit: Option<i64>,
    /// `tup_returned`.
    pub tup_returned: Option<i64>,
    /// `tup_fetched`.
    pub tup_fetched: Option<i64>,
    /// `tup_inserted`.
    pub tup_inserted: Option<i64>,
    /// `tup_updated`.
    pub tup_updated: Option<i64>,
    /// `tup_deleted`.
    pub tup_deleted: Option<i64>,
    /// `conflicts`.
    pub conflicts: Option<i64>,
    /// `temp_files`.
    pub temp_files: Option<i64>,
    /// `temp_bytes`.
    pub temp_bytes: Option<i64>,
    /// `deadlocks`.
    pub deadlocks: Option<i64>,
    /// `pg_database_size`; `None` where the role may not connect to the database.
    pub size_bytes: Option<i64>,
    /// `stats_reset`, Unix nanoseconds; `None` when the counters were never reset.
    pub stats_reset: Option<u64>,
}

/// Client backends of one (database, state, wait event type) group.
#[derive(Clone, Debug, PartialEq)]
pub struct ActivityRow {
    /// The database; `None` for backends not bound to one.
    pub database: Option<Arc<str>>,
    /// `state`, or `unknown` where the role may not see it.
    pub state: Arc<str>,
    /// `wait_event_type`, or `none` when not waiting.
    pub wait_event_type: Arc<str>,
    /// Backends in the group.
    pub count: i64,
}

/// Server settings and archiver state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerRow {
    /// `max_connections`.
    pub max_connections: Option<i64>,
    /// Seconds since the last WAL segment was archived; `None` when none ever was.
    pub wal_age_s: Option<i64>,
}

/// Background writer and checkpointer counters. Before PostgreSQL 17 they all come from
/// `pg_stat_bgwriter`; from 17 the checkpoint columns come from `pg_stat_checkpointer`
/// and the backend write counters no longer exist (`None`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BgwriterRow {
    /// Scheduled checkpoints.
    pub checkpoints_timed: Option<i64>,
    /// Requested checkpoints.
    pub checkpoints_req: Option<i64>,
    /// Checkpoint write time, milliseconds.
    pub checkpoint_write_ms: Option<f64>,
    /// Checkpoint sync time, milliseconds.
    pub checkpoint_sync_ms: Option<f64>,
    /// Buffers written by checkpoints.
    pub buffers_checkpoint: Option<i64>,
    /// Buffers written by the background writer.
    pub buffers_clean: Option<i64>,
    /// Cleaning scans stopped for writing too many buffers.
    pub maxwritten_clean: Option<i64>,
    /// Buffers written by backends (before 17).
    pub buffers_backend: Option<i64>,
    /// Backend fsync calls (before 17).
    pub buffers_backend_fsync: Option<i64>,
    /// Buffers allocated.
    pub buffers_alloc: Option<i64>,
    /// Reset time of the background writer counters, Unix nanoseconds.
    pub bgwriter_reset: Option<u64>,
    /// Reset time of the checkpoint counters, Unix nanoseconds.
    pub checkpointer_reset: Option<u64>,
}

/// `pg_stat_wal` (PostgreSQL 14+).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WalRow {
    /// `wal_records`.
    pub records: Option<i64>,
    /// `wal_fpi`.
    pub fpi: Option<i64>,
    /// `wal_bytes`.
    pub bytes: Option<i64>,
    /// `wal_buffers_full`.
    pub buffers_full: Option<i64>,
    /// `stats_reset`, Unix nanoseconds.
    pub stats_reset: Option<u64>,
}

/// One standby of `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicationRow {
    /// `client_addr`, or `unix` for a socket connection.
    pub client: Arc<str>,
    /// The standby's `application_name`.
    pub application: Arc<str>,
    /// WAL bytes not yet replayed; `None` when unknown.
    pub data_delay_bytes: Option<i64>,
    /// `write_lag`, seconds; NULL on an idle or caught-up standby.
    pub write_lag_s: Option<f64>,
    /// `flush_lag`, seconds.
    pub flush_lag_s: Option<f64>,
    /// `replay_lag`, seconds.
    pub replay_lag_s: Option<f64>,
}

/// One replication slot.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotRow {
    /// `slot_name`.
    pub name: Arc<str>,
    /// `slot_type`: `physical` or `logical`.
    pub slot_type: Arc<str>,
    /// Whether a client is using it.
    pub active: Option<bool>,
    /// WAL bytes from `restart_lsn` to the current position; `None` for a slot that
    /// never reserved WAL.
    pub retained_bytes: Option<i64>,
}

/// Locks of one (database, mode, lock type) group.
#[derive(Clone, Debug, PartialEq)]
pub struct LockRow {
    /// The database; `None` for locks on shared objects and transaction ids.
    pub database: Option<Arc<str>>,
    /// Lock mode, e.g. `AccessExclusiveLock`.
    pub mode: Arc<str>,
    /// Lockable object type, e.g. `relation`.
    pub lock_type: Arc<str>,
    /// Locks held or awaited.
    pub count: i64,
}

/// One user table: `pg_stat_user_tables`, its size and `pg_statio_user_tables`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableRow {
    /// Schema, exactly as stored.
    pub schema: Arc<str>,
    /// Table name, exactly as stored.
    pub name: Arc<str>,
    /// `seq_scan`.
    pub seq_scan: Option<i64>,
    /// `idx_scan`; NULL for a table without indexes.
    pub idx_scan: Option<i64>,
    /// `n_live_tup`.
    pub live: Option<i64>,
    /// `n_dead_tup`.
    pub dead: Option<i64>,
    /// `n_tup_ins`.
    pub inserted: Option<i64>,
    /// `n_tup_upd`.
    pub updated: Option<i64>,
    /// `n_tup_del`.
    pub deleted: Option<i64>,
    /// `n_tup_hot_upd`.
    pub hot_updated: Option<i64>,
    /// `vacuum_count`.
    pub vacuum_count: Option<i64>,
    /// `autovacuum_count`.
    pub autovacuum_count: Option<i64>,
    /// `analyze_count`.
    pub analyze_count: Option<i64>,
    /// `autoanalyze_count`.
    pub autoanalyze_count: Option<i64>,
    /// `pg_total_relation_size`; `None` while the table is locked exclusively.
    pub size_bytes: Option<i64>,
    /// `heap_blks_read`.
    pub heap_read: Option<i64>,
    /// `heap_blks_hit`.
    pub heap_hit: Option<i64>,
    /// `idx_blks_read`; NULL for a table without indexes.
    pub idx_read: Option<i64>,
    /// `idx_blks_hit`.
    pub idx_hit: Option<i64>,
    /// `toast_blks_read`; NULL for a table without TOAST.
    pub toast_read: Option<i64>,
    /// `toast_blks_hit`.
    pub toast_hit: Option<i64>,
    /// `tidx_blks_read`.
    pub tidx_read: Option<i64>,
    /// `tidx_blks_hit`.
    pub tidx_hit: Option<i64>,
}

/// One user index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexRow {
    /// Schema, exactly as stored.
    pub schema: Arc<str>,
    /// Table name.
    pub table: Arc<str>,
    /// Index name.
    pub name: Arc<str>,
    /// `idx_scan`.
    pub scans: Option<i64>,
    /// `pg_relation_size`; `None` while the index or its table is locked exclusively.
    pub size_bytes: Option<i64>,
}

/// One statement of pg_stat_statements, summed over its `toplevel` variants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatementRecord {
    /// Database name.
    pub database: Arc<str>,
    /// Role name.
    pub user: Arc<str>,
    /// `queryid`.
    pub query_id: i64,
    /// Normalized text, when it was read.
    pub text: Option<String>,
    /// `calls`.
    pub calls: Option<i64>,
    /// `total_exec_time` (`total_time` before 13), milliseconds.
    pub total_time_ms: Option<f64>,
    /// `rows`.
    pub rows: Option<i64>,
    /// `shared_blks_hit`.
    pub shared_blks_hit: Option<i64>,
    /// `shared_blks_read`.
    pub shared_blks_read: Option<i64>,
    /// `shared_blks_dirtied`.
    pub shared_blks_dirtied: Option<i64>,
    /// `shared_blks_written`.
    pub shared_blks_written: Option<i64>,
    /// `temp_blks_read`.
    pub temp_blks_read: Option<i64>,
    /// `temp_blks_written`.
    pub temp_blks_written: Option<i64>,
}

// ---------------------------------------------------------------------------------------
// Mapping.

/// Runs `f` with the sink's start time set to `reset` when the row has one.
fn with_start(sink: &mut PointSink<'_>, reset: Option<u64>, f: impl FnOnce(&mut PointSink<'_>)) {
    let base = sink.start;
    sink.start = reset.unwrap_or(base);
    f(sink);
    sink.start = base;
}

/// `pg_stat_database` rows, one set of points per database.
pub fn databases(rows: &[DatabaseRow], sink: &mut PointSink<'_>) {
    for row in rows {
        let db = attrs![DATABASE => &row.name];
        with_start(sink, row.stats_reset, |sink| {
            sink.int(&BACKENDS, row.backends, db.clone());
            sink.int(&COMMITS, row.commits, db.clone());
            sink.int(&ROLLBACKS, row.rollbacks, db.clone());
            sink.int(&BLKS_READ, row.blks_read, db.clone());
            sink.int(&BLKS_HIT, row.blks_hit, db.clone());
            sink.int(&TUP_RETURNED, row.tup_returned, db.clone());
            sink.int(&TUP_FETCHED, row.tup_fetched, db.clone());
            sink.int(&TUP_INSERTED, row.tup_inserted, db.clone());
            sink.int(&TUP_UPDATED, row.tup_updated, db.clone());
            sink.int(&TUP_DELETED, row.tup_deleted, db.clone());
            sink.int(&CONFLICTS, row.conflicts, db.clone());
            sink.int(&TEMP_FILES, row.temp_files, db.clone());
            sink.int(&TEMP_IO, row.temp_bytes, db.clone());
            sink.int(&DEADLOCKS, row.deadlocks, db.clone());
            sink.int(&DB_SIZE, row.size_bytes, db);
        });
    }
}

/// Client backends by database, state and wait event type.
pub fn activity(rows: &[ActivityRow], sink: &mut PointSink<'_>) {
    for row in rows {
        let mut attrs = attrs![
            "postgresql.state" => &row.state,
            "postgresql.wait_event_type" => &row.wait_event_type,
        ];
        if let Some(db) = &row.database {
            attrs.insert(0, (DATABASE, db.into()));
        }
        sink.int(&CONNECTION_COUNT, Some(row.count), attrs);
    }
}

/// Server settings and the WAL archive age.
pub fn server(row: &ServerRow, sink: &mut PointSink<'_>) {
    sink.int(&CONNECTION_MAX, row.max_connections, attrs![]);
    sink.int(&WAL_AGE, row.wal_age_s, attrs![]);
}

/// Background writer and checkpoint counters.
pub fn bgwriter(row: &BgwriterRow, sink: &mut PointSink<'_>) {
    with_start(sink, row.checkpointer_reset, |sink| {
        sink.int(
            &CHECKPOINTS,
            row.checkpoints_req,
            attrs!["type" => "requested"],
        );
        sink.int(
            &CHECKPOINTS,
            row.checkpoints_timed,
            attrs!["type" => "scheduled"],
        );
        sink.double(
            &CHECKPOINT_DURATION,
            row.checkpoint_sync_ms,
            attrs!["type" => "sync"],
        );
        sink.double(
            &CHECKPOINT_DURATION,
            row.checkpoint_write_ms,
            attrs!["type" => "write"],
        );
        sink.int(
            &BGWRITER_WRITES,
            row.buffers_checkpoint,
            attrs!["source" => "checkpoints"],
        );
    });
    with_start(sink, row.bgwriter_reset, |sink| {
        sink.int(
            &BGWRITER_WRITES,
            row.buffers_clean,
            attrs!["source" => "bgwriter"],
        );
        sink.int(
            &BGWRITER_WRITES,
            row.buffers_backend,
            attrs!["source" => "backend"],
        );
        sink.int(
            &BGWRITER_WRITES,
            row.buffers_backend_fsync,
            attrs!["source" => "backend_fsync"],
        );
        sink.int(&BGWRITER_ALLOCATED, row.buffers_alloc, attrs![]);
        sink.int(&BGWRITER_MAXWRITTEN, row.maxwritten_clean, attrs![]);
    });
}

/// WAL generation counters.
pub fn wal(row: &WalRow, sink: &mut PointSink<'_>) {
    with_start(sink, row.stats_reset, |sink| {
        sink.int(&WAL_RECORDS, row.records, attrs![]);
        sink.int(&WAL_FPI, row.fpi, attrs![]);
        sink.int(&WAL_BYTES, row.bytes, attrs![]);
        sink.int(&WAL_BUFFERS_FULL, row.buffers_full, attrs![]);
    });
}

/// Standby lag. A NULL lag (idle or caught-up standby) skips that point: it is neither 0
/// nor a huge number (pg-07).
pub fn replication(rows: &[ReplicationRow], sink: &mut PointSink<'_>) {
    for row in rows {
        let client = attrs![
            "replication_client" => &row.client,
            "postgresql.application_name" => &row.application,
        ];
        sink.int(
            &REPLICATION_DATA_DELAY,
            row.data_delay_bytes,
            client.clone(),
        );
        for (operation, lag) in [
            ("write", row.write_lag_s),
            ("flush", row.flush_lag_s),
            ("replay", row.replay_lag_s),
        ] {
            let mut attrs = client.clone();
            attrs.push(("operation", operation.into()));
            sink.double(&WAL_DELAY, lag, attrs);
        }
    }
}

/// Replication slots.
pub fn slots(rows: &[SlotRow], sink: &mut PointSink<'_>) {
    for row in rows {
        let attrs = attrs![
            "postgresql.replication.slot.name" => &row.name,
            "postgresql.replication.slot.type" => &row.slot_type,
        ];
        sink.int(&SLOT_ACTIVE, row.active.map(i64::from), attrs.clone());
        sink.int(&SLOT_RETAINED, row.retained_bytes, attrs);
    }
}

/// Locks by database, mode and lock type.
pub fn locks(rows: &[LockRow], sink: &mut PointSink<'_>) {
    for row in rows {
        let mut attrs = attrs!["mode" => &row.mode, "lock_type" => &row.lock_type];
        if let Some(db) = &row.database {
            attrs.insert(0, (DATABASE, db.into()));
        }
        sink.int(&LOCKS, Some(row.count), attrs);
    }
}

/// Tables of `database`: `total` is how many user tables it has (the rows may be capped).
pub fn tables(
    database: &Arc<str>,
    total: Option<i64>,
    rows: &[TableRow],
    sink: &mut PointSink<'_>,
) {
    sink.int(&TABLE_COUNT, total, attrs![DATABASE => database]);
    for row in rows {
        let t = attrs![DATABASE => database, SCHEMA => &row.schema, TABLE => &row.name];
        let with = |key: &'static str, value: &'static str| {
            let mut a = t.clone();
            a.push((key, value.into()));
            a
        };
        sink.int(&TABLE_SIZE, row.size_bytes, t.clone());
        sink.int(&ROWS, row.live, with("state", "live"));
        sink.int(&ROWS, row.dead, with("state", "dead"));
        sink.int(&OPERATIONS, row.inserted, with("operation", "ins"));
        sink.int(&OPERATIONS, row.updated, with("operation", "upd"));
        sink.int(&OPERATIONS, row.deleted, with("operation", "del"));
        sink.int(&OPERATIONS, row.hot_updated, with("operation", "hot_upd"));
        sink.int(&SEQUENTIAL_SCANS, row.seq_scan, t.clone());
        sink.int(&TABLE_INDEX_SCANS, row.idx_scan, t.clone());
        sink.int(&VACUUMS, row.vacuum_count, t.clone());
        sink.int(&AUTOVACUUMS, row.autovacuum_count, t.clone());
        sink.int(&ANALYZES, row.analyze_count, t.clone());
        sink.int(&AUTOANALYZES, row.autoanalyze_count, t.clone());
        for (source, value) in [
            ("heap_read", row.heap_read),
            ("heap_hit", row.heap_hit),
            ("idx_read", row.idx_read),
            ("idx_hit", row.idx_hit),
            ("toast_read", row.toast_read),
            ("toast_hit", row.toast_hit),
            ("tidx_read", row.tidx_read),
            ("tidx_hit", row.tidx_hit),
        ] {
            sink.int(&BLOCKS_READ, value, with("source", source));
        }
    }
}

/// Indexes of `database`.
pub fn indexes(database: &Arc<str>, rows: &[IndexRow], sink: &mut PointSink<'_>) {
    for row in rows {
        let attrs = attrs![
            DATABASE => database,
            SCHEMA => &row.schema,
            TABLE => &row.table,
            INDEX => &row.name,
        ];
        sink.int(&INDEX_SCANS, row.scans, attrs.clone());
        sink.int(&INDEX_SIZE, row.size_bytes, attrs);
    }
}

/// One statement for the statements processor. `keep_text` passes the normalized text
/// on (the processor obfuscates it); otherwise it is dropped here.
pub fn statement(record: StatementRecord, keep_text: bool) -> StatementRow {
    let query_id = record.query_id.to_string();
    let key: Arc<str> = Arc::from(format!("{}/{}/{query_id}", record.database, record.user));
    let attrs: Attributes = attrs![
        DATABASE => record.database,
        USER => record.user,
        QUERY_ID => query_id,
    ];
    let mut extra = SmallVec::new();
    for (desc, value) in [
        (&QUERY_SHARED_BLKS_HIT, record.shared_blks_hit),
        (&QUERY_SHARED_BLKS_READ, record.shared_blks_read),
        (&QUERY_SHARED_BLKS_DIRTIED, record.shared_blks_dirtied),
        (&QUERY_SHARED_BLKS_WRITTEN, record.shared_blks_written),
        (&QUERY_TEMP_BLKS_READ, record.temp_blks_read),
        (&QUERY_TEMP_BLKS_WRITTEN, record.temp_blks_written),
    ] {
        if let Some(v) = value {
            extra.push((desc, Value::Int(v)));
        }
    }
    StatementRow {
        key,
        attrs,
        text: if keep_text { record.text } else { None },
        calls: record.calls.unwrap_or(0),
        total_time_s: record
            .total_time_ms
            .filter(|t| t.is_finite())
            .unwrap_or(0.0)
            / 1000.0,
        rows: record.rows.unwrap_or(0),
        errors: 0,
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{AttrValue, Kind, Point};

    fn attr<'a>(p: &'a Point, key: &str) -> Option<&'a AttrValue> {
        p.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn named<'a>(points: &'a [Point], name: &str) -> Vec<&'a Point> {
        points.iter().filter(|p| p.desc.name == name).collect()
    }

    #[test]
    fn a_null_counter_skips_its_point_but_not_the_rest_of_the_row() {
        let rows = [TableRow {
            schema: "public".into(),
            name: "t".into(),
            live: Some(100),
            inserted: Some(100),
            heap_read: Some(3),
            idx_read: None,
            idx_scan: None,
            ..TableRow::default()
        }];
        let mut out = Vec::new();
        tables(
            &Arc::from("app"),
            Some(1),
            &rows,
            &mut PointSink::new(&mut out, 10, 5),
        );

        let live: Vec<_> = named(&out, "postgresql.rows")
            .into_iter()
            .filter(|p| attr(p, "state") == Some(&"live".into()))
            .collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].value, Value::Int(100));
        let blocks = named(&out, "postgresql.blocks_read");
        assert_eq!(blocks.len(), 1, "only heap_read is not NULL");
        assert_eq!(attr(blocks[0], "source"), Some(&"heap_read".into()));
        assert!(named(&out, "postgresql.table.index_scans").is_empty());
        assert!(named(&out, "postgresql.table.size").is_empty());
    }

    #[test]
    fn table_names_are_reported_exactly_as_stored() {
        let rows = [TableRow {
            schema: "Sales".into(),
            name: "Order Items".into(),
            seq_scan: Some(1),
            ..TableRow::default()
        }];
        let mut out = Vec::new();
        tables(
            &Arc::from("Reporting\"DB"),
            None,
            &rows,
            &mut PointSink::new(&mut out, 10, 5),
        );

        let scan = named(&out, "postgresql.sequential_scans")[0];
        assert_eq!(attr(scan, DATABASE), Some(&"Reporting\"DB".into()));
        assert_eq!(attr(scan, SCHEMA), Some(&"Sales".into()));
        assert_eq!(attr(scan, TABLE), Some(&"Order Items".into()));
        assert!(
            named(&out, "postgresql.table.count").is_empty(),
            "no total, no point"
        );
    }

    #[test]
    fn database_counters_start_at_their_reset_time_else_the_server_start() {
        let rows = [
            DatabaseRow {
                name: "a".into(),
                commits: Some(7),
                ..DatabaseRow::default()
            },
            DatabaseRow {
                name: "b".into(),
                commits: Some(9),
                stats_reset: Some(42),
                ..DatabaseRow::default()
            },
        ];
        let mut out = Vec::new();
        databases(&rows, &mut PointSink::new(&mut out, 100, 5));

        let commits = named(&out, "postgresql.commits");
        assert_eq!(commits.len(), 2);
        assert_eq!(commits[0].start_unix_nanos, 5);
        assert_eq!(commits[1].start_unix_nanos, 42);
        assert_eq!(commits[1].value, Value::Int(9));
        assert_eq!(
            commits[0].desc.kind,
            Kind::CumulativeSum { monotonic: true }
        );
        assert!(
            named(&out, "postgresql.db_size").is_empty(),
            "size unknown, no point"
        );
    }

    #[test]
    fn a_caught_up_standby_reports_no_lag_rather_than_zero() {
        let rows = [ReplicationRow {
            client: "10.0.0.2".into(),
            application: "standby1".into(),
            data_delay_bytes: Some(0),
            write_lag_s: None,
            flush_lag_s: None,
            replay_lag_s: Some(0.25),
        }];
        let mut out = Vec::new();
        replication(&rows, &mut PointSink::new(&mut out, 100, 5));

        let lag = named(&out, "postgresql.wal.delay");
        assert_eq!(lag.len(), 1);
        assert_eq!(attr(lag[0], "operation"), Some(&"replay".into()));
        assert_eq!(lag[0].value, Value::Double(0.25));
        assert_eq!(named(&out, "postgresql.replication.data_delay").len(), 1);
    }

    #[test]
    fn postgres_17_rows_have_no_backend_writes_and_split_reset_times() {
        let row = BgwriterRow {
            checkpoints_timed: Some(3),
            checkpoints_req: Some(1),
            buffers_clean: Some(8),
            buffers_alloc: Some(50),
            checkpointer_reset: Some(11),
            bgwriter_reset: Some(22),
            ..BgwriterRow::default()
        };
        let mut out = Vec::new();
        bgwriter(&row, &mut PointSink::new(&mut out, 100, 5));

        let checkpoints = named(&out, "postgresql.bgwriter.checkpoint.count");
        assert_eq!(checkpoints.len(), 2);
        assert!(checkpoints.iter().all(|p| p.start_unix_nanos == 11));
        let writes = named(&out, "postgresql.bgwriter.buffers.writes");
        assert_eq!(writes.len(), 1);
        assert_eq!(attr(writes[0], "source"), Some(&"bgwriter".into()));
        assert_eq!(writes[0].start_unix_nanos, 22);
    }

    #[test]
    fn statements_are_keyed_by_database_user_and_query_id_in_seconds() {
        let record = StatementRecord {
            database: "app".into(),
            user: "web".into(),
            query_id: -42,
            text: Some("SELECT $1".into()),
            calls: Some(3),
            total_time_ms: Some(1500.0),
            rows: Some(3),
            shared_blks_hit: Some(10),
            temp_blks_read: None,
            ..StatementRecord::default()
        };
        let row = statement(record.clone(), false);
        assert_eq!(&*row.key, "app/web/-42");
        assert_eq!(row.total_time_s, 1.5);
        assert_eq!(row.calls, 3);
        assert!(row.text.is_none(), "text only when configured");
        assert_eq!(row.extra.len(), 1);
        assert_eq!(row.extra[0].0.name, "postgresql.query.shared_blks_hit");
        assert!(row.attrs.contains(&(QUERY_ID, "-42".into())));
        assert_eq!(statement(record, true).text.as_deref(), Some("SELECT $1"));
    }

    #[test]
    fn statement_aggregates_are_deltas_and_counters_cumulative() {
        assert_eq!(
            STATEMENTS.others_calls.kind,
            Kind::DeltaSum { monotonic: true }
        );
        assert_eq!(
            STATEMENTS.calls.kind,
            Kind::CumulativeSum { monotonic: true }
        );
        assert_eq!(STATEMENTS.time.unit, "s");
        assert_eq!(STATEMENTS.sample_rate.kind, Kind::Gauge);
    }
}
