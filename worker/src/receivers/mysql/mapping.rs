//! MySQL/MariaDB rows to points: descriptors and pure mapping functions, no SQL.
//!
//! Names, units and attributes follow the OpenTelemetry Collector contrib `mysql`
//! receiver, so its dashboards work unchanged; contrib gives most families the unit `1`
//! and reports some gauges (threads, buffer pool pages, replica lag) as non-monotonic
//! cumulative sums, and that is kept. Statement families (`mysql.query.*`) are this
//! project's own. Every function here takes plain row structs, so benches run them
//! without a database.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::attrs;
use crate::metrics::{Descriptor, PointSink, Value};
use crate::receivers::{discover_keeps, Databases, StatementDescriptors, StatementRow};

// ---- Server-wide: SHOW GLOBAL STATUS / VARIABLES -------------------------------------

/// InnoDB buffer pool pages by kind (`data`, `free`, `misc`).
pub static BUFFER_POOL_PAGES: Descriptor = Descriptor::updown(
    "mysql.buffer_pool.pages",
    "1",
    "The number of pages in the InnoDB buffer pool.",
);
/// InnoDB buffer pool data pages by status (`dirty`, `clean`).
pub static BUFFER_POOL_DATA_PAGES: Descriptor = Descriptor::updown(
    "mysql.buffer_pool.data_pages",
    "1",
    "The number of data pages in the InnoDB buffer pool.",
);
/// Requests to flush pages from the buffer pool.
pub static BUFFER_POOL_PAGE_FLUSHES: Descriptor = Descriptor::counter(
    "mysql.buffer_pool.page_flushes",
    "1",
    "The number of requests to flush pages from the InnoDB buffer pool.",
);
/// Buffer pool operations by operation (`read_requests`, `reads`, `write_requests`, ...).
pub static BUFFER_POOL_OPERATIONS: Descriptor = Descriptor::counter(
    "mysql.buffer_pool.operations",
    "1",
    "The number of operations on the InnoDB buffer pool.",
);
/// The configured buffer pool size (`innodb_buffer_pool_size`).
pub static BUFFER_POOL_LIMIT: Descriptor = Descriptor::updown(
    "mysql.buffer_pool.limit",
    "By",
    "The configured size of the InnoDB buffer pool.",
);
/// Bytes in the buffer pool by status (`dirty`, `clean`).
pub static BUFFER_POOL_USAGE: Descriptor = Descriptor::updown(
    "mysql.buffer_pool.usage",
    "By",
    "The number of bytes in the InnoDB buffer pool.",
);
/// Prepared statement commands by command (`execute`, `prepare`, ...).
pub static PREPARED_STATEMENTS: Descriptor = Descriptor::counter(
    "mysql.prepared_statements",
    "1",
    "The number of times each type of prepared statement command has been issued.",
);
/// Statements executed by command (`select`, `insert`, `commit`, ...).
pub static COMMANDS: Descriptor = Descriptor::counter(
    "mysql.commands",
    "1",
    "The number of times each type of command has been executed.",
);
/// Handler requests by kind.
pub static HANDLERS: Descriptor = Descriptor::counter(
    "mysql.handlers",
    "1",
    "The number of requests to various MySQL handlers.",
);
/// Doublewrite buffer writes by kind (`pages_written`, `writes`).
pub static DOUBLE_WRITES: Descriptor = Descriptor::counter(
    "mysql.double_writes",
    "1",
    "The number of writes to the InnoDB doublewrite buffer.",
);
/// InnoDB log operations by operation (`waits`, `write_requests`, `writes`).
pub static LOG_OPERATIONS: Descriptor = Descriptor::counter(
    "mysql.log_operations",
    "1",
    "The number of InnoDB log operations.",
);
/// InnoDB data file operations by operation (`fsyncs`, `reads`, `writes`).
pub static OPERATIONS: Descriptor =
    Descriptor::counter("mysql.operations", "1", "The number of InnoDB operations.");
/// InnoDB page operations by operation (`created`, `read`, `written`).
pub static PAGE_OPERATIONS: Descriptor = Descriptor::counter(
    "mysql.page_operations",
    "1",
    "The number of InnoDB page operations.",
);
/// InnoDB row locks by kind: `waits` (a count) and `time` (milliseconds, as the server
/// counts it; contrib keeps both under one metric).
pub static ROW_LOCKS: Descriptor =
    Descriptor::counter("mysql.row_locks", "1", "The number of InnoDB row locks.");
/// InnoDB row operations by operation (`read`, `inserted`, `updated`, `deleted`).
pub static ROW_OPERATIONS: Descriptor = Descriptor::counter(
    "mysql.row_operations",
    "1",
    "The number of InnoDB row operations.",
);
/// Table locks by kind (`immediate`, `waited`).
pub static LOCKS: Descriptor =
    Descriptor::counter("mysql.locks", "1", "The number of MySQL locks.");
/// Sorts by kind (`merge_passes`, `range`, `rows`, `scan`).
pub static SORTS: Descriptor =
    Descriptor::counter("mysql.sorts", "1", "The number of MySQL sorts.");
/// Threads by kind (`cached`, `connected`, `created`, `running`).
pub static THREADS: Descriptor =
    Descriptor::updown("mysql.threads", "1", "The state of MySQL threads.");
/// Bytes between server and clients by kind (`received`, `sent`).
pub static CLIENT_NETWORK_IO: Descriptor = Descriptor::counter(
    "mysql.client.network.io",
    "By",
    "The number of transmitted bytes between server and clients.",
);
/// Opened resources by kind (`file`, `table_definition`, `table`).
pub static OPENED_RESOURCES: Descriptor = Descriptor::counter(
    "mysql.opened_resources",
    "1",
    "The number of opened resources.",
);
/// Seconds since the server started.
pub static UPTIME: Descriptor = Descriptor::counter(
    "mysql.uptime",
    "s",
    "The number of seconds that the server has been up.",
);
/// Temporary resources created by resource (`disk_tables`, `files`, `tables`).
pub static TMP_RESOURCES: Descriptor = Descriptor::counter(
    "mysql.tmp_resources",
    "1",
    "The number of created temporary resources.",
);
/// Connection attempts, successful or not.
pub static CONNECTION_COUNT: Descriptor = Descriptor::counter(
    "mysql.connection.count",
    "1",
    "The number of connection attempts (successful or not) to the MySQL server.",
);
/// Connection errors by error.
pub static CONNECTION_ERRORS: Descriptor = Descriptor::counter(
    "mysql.connection.errors",
    "1",
    "Errors that occur during the client connection process.",
);
/// The connection limit (`max_connections`); not a contrib metric.
pub static CONNECTION_MAX: Descriptor = Descriptor::gauge(
    "mysql.connection.max",
    "1",
    "The most client connections the server accepts at once (max_connections).",
);
/// Statements executed, including those inside stored programs (`Queries`).
pub static QUERY_COUNT: Descriptor = Descriptor::counter(
    "mysql.query.count",
    "1",
    "The number of statements executed by the server.",
);
/// Statements sent by clients (`Questions`).
pub static QUERY_CLIENT_COUNT: Descriptor = Descriptor::counter(
    "mysql.query.client.count",
    "1",
    "The number of statements executed by the server. This includes only statements sent \
     to the server by clients.",
);
/// Statements slower than `long_query_time` (`Slow_queries`).
pub static QUERY_SLOW_COUNT: Descriptor =
    Descriptor::counter("mysql.query.slow.count", "1", "The number of slow queries.");

// ---- Per schema: performance_schema table and index I/O waits ------------------------

/// Table I/O wait events by operation, table and schema.
pub static TABLE_IO_WAIT_COUNT: Descriptor = Descriptor::counter(
    "mysql.table.io.wait.count",
    "1",
    "The total count of I/O wait events for a table.",
);
/// Table I/O wait time by operation, table and schema.
pub static TABLE_IO_WAIT_TIME: Descriptor = Descriptor::counter(
    "mysql.table.io.wait.time",
    "ns",
    "The total time of I/O wait events for a table.",
);
/// Index I/O wait events by operation, table, schema and index.
pub static INDEX_IO_WAIT_COUNT: Descriptor = Descriptor::counter(
    "mysql.index.io.wait.count",
    "1",
    "The total count of I/O wait events for an index.",
);
/// Index I/O wait time by operation, table, schema and index.
pub static INDEX_IO_WAIT_TIME: Descriptor = Descriptor::counter(
    "mysql.index.io.wait.time",
    "ns",
    "The total time of I/O wait events for an index.",
);

// ---- Server-wide: replica status ------------------------------------------------------

/// Replication lag (`Seconds_Behind_Source` / `_Master`); absent when not running.
pub static REPLICA_TIME_BEHIND_SOURCE: Descriptor = Descriptor::updown(
    "mysql.replica.time_behind_source",
    "s",
    "This field is an indication of how late the replica is.",
);
/// Configured replication delay (`SQL_Delay`).
pub static REPLICA_SQL_DELAY: Descriptor = Descriptor::updown(
    "mysql.replica.sql_delay",
    "s",
    "The number of seconds that the replica must lag the source.",
);
/// 1 when both replication threads run and the lag is known; not a contrib metric.
pub static REPLICA_RUNNING: Descriptor = Descriptor::gauge(
    "mysql.replica.running",
    "1",
    "1 when the replica's I/O and SQL threads run and its lag is known, else 0.",
);

// ---- Statements: performance_schema.events_statements_summary_by_digest ---------------

/// Executions per digest.
pub static QUERY_CALLS: Descriptor = Descriptor::counter(
    "mysql.query.calls",
    "{call}",
    "Executions of the statement.",
);
/// Execution time per digest.
pub static QUERY_DURATION: Descriptor = Descriptor::counter(
    "mysql.query.duration",
    "s",
    "Time spent executing the statement.",
);
/// Rows sent plus rows affected per digest.
pub static QUERY_ROWS: Descriptor = Descriptor::counter(
    "mysql.query.rows",
    "{row}",
    "Rows sent to clients plus rows affected by the statement.",
);
/// Failed executions per digest.
pub static QUERY_ERRORS: Descriptor = Descriptor::counter(
    "mysql.query.errors",
    "{error}",
    "Executions that raised an error.",
);
/// Rows read by the storage engines per digest.
pub static QUERY_ROWS_EXAMINED: Descriptor = Descriptor::counter(
    "mysql.query.rows_examined",
    "{row}",
    "Rows read from storage engines for the statement.",
);
/// Lock wait time per digest.
pub static QUERY_LOCK_TIME: Descriptor = Descriptor::counter(
    "mysql.query.lock_time",
    "s",
    "Time the statement spent waiting for table locks.",
);
/// Internal on-disk temporary tables per digest.
pub static QUERY_TMP_DISK_TABLES: Descriptor = Descriptor::counter(
    "mysql.query.tmp_disk_tables",
    "{table}",
    "Internal on-disk temporary tables the statement created.",
);
/// Internal temporary tables per digest.
pub static QUERY_TMP_TABLES: Descriptor = Descriptor::counter(
    "mysql.query.tmp_tables",
    "{table}",
    "Internal temporary tables the statement created.",
);
/// Rows sorted per digest.
pub static QUERY_SORT_ROWS: Descriptor = Descriptor::counter(
    "mysql.query.sort_rows",
    "{row}",
    "Rows the statement sorted.",
);
/// Executions that scanned a table without an index, per digest.
pub static QUERY_NO_INDEX_USED: Descriptor = Descriptor::counter(
    "mysql.query.no_index_used",
    "{call}",
    "Executions that performed a table scan without using an index.",
);
/// CPU time per digest (MySQL 8.0.28 and later only).
pub static QUERY_CPU_TIME: Descriptor = Descriptor::counter(
    "mysql.query.cpu_time",
    "s",
    "CPU time spent on the statement.",
);
/// Executions of the statements not exported one by one.
pub static QUERY_OTHERS_CALLS: Descriptor = Descriptor::delta(
    "mysql.query.others.calls",
    "{call}",
    "Executions of the statements not exported individually.",
);
/// Execution time of those statements.
pub static QUERY_OTHERS_DURATION: Descriptor = Descriptor::delta(
    "mysql.query.others.duration",
    "s",
    "Time spent executing the statements not exported individually.",
);
/// Rows of those statements.
pub static QUERY_OTHERS_ROWS: Descriptor = Descriptor::delta(
    "mysql.query.others.rows",
    "{row}",
    "Rows sent or affected by the statements not exported individually.",
);
/// How many statements the aggregate holds.
pub static QUERY_OTHERS_COUNT: Descriptor = Descriptor::gauge(
    "mysql.query.others.count",
    "{statement}",
    "Statements folded into the mysql.query.others aggregate.",
);
/// The sampler's keep rate for the target.
pub static QUERY_SAMPLE_RATE: Descriptor = Descriptor::gauge(
    "mysql.query.sample_rate",
    "1",
    "Fraction of statements exported individually by the adaptive sampler.",
);

/// The statement families of MySQL and MariaDB.
pub static STATEMENT_DESCRIPTORS: StatementDescriptors = StatementDescriptors {
    calls: &QUERY_CALLS,
    time: &QUERY_DURATION,
    rows: &QUERY_ROWS,
    errors: Some(&QUERY_ERRORS),
    others_calls: &QUERY_OTHERS_CALLS,
    others_time: &QUERY_OTHERS_DURATION,
    others_rows: &QUERY_OTHERS_ROWS,
    others_count: &QUERY_OTHERS_COUNT,
    sample_rate: &QUERY_SAMPLE_RATE,
};

// ---- Rows -------------------------------------------------------------------------------

/// One row of `SHOW GLOBAL STATUS` or `SHOW GLOBAL VARIABLES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameValue {
    /// `Variable_name`, e.g. `Innodb_rows_read`.
    pub name: String,
    /// `Value`, as text (the server reports every value as a string).
    pub value: String,
}

/// One row of `SHOW REPLICA STATUS` / `SHOW SLAVE STATUS`, either spelling.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaRow {
    /// Replication channel (MySQL `Channel_Name`, MariaDB `Connection_name`); empty or
    /// `None` for the default one.
    pub channel: Option<String>,
    /// `Replica_IO_Running` / `Slave_IO_Running`: `Yes`, `No` or `Connecting`.
    pub io_running: Option<String>,
    /// `Replica_SQL_Running` / `Slave_SQL_Running`.
    pub sql_running: Option<String>,
    /// `Seconds_Behind_Source` / `Seconds_Behind_Master`; NULL when replication is not
    /// running (a state, not a lag of zero).
    pub seconds_behind: Option<i64>,
    /// `SQL_Delay`, seconds.
    pub sql_delay: Option<i64>,
}

/// One row of `table_io_waits_summary_by_table` (then `index` is `None`) or
/// `table_io_waits_summary_by_index_usage`. Times are picoseconds, as the server keeps
/// them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoWaitRow {
    /// `OBJECT_SCHEMA`.
    pub schema: Arc<str>,
    /// `OBJECT_NAME`.
    pub table: Arc<str>,
    /// `INDEX_NAME` (index family only).
    pub index: Option<Arc<str>>,
    /// `COUNT_FETCH`, `COUNT_INSERT`, `COUNT_UPDATE`, `COUNT_DELETE`.
    pub count: [u64; 4],
    /// `SUM_TIMER_FETCH`, `SUM_TIMER_INSERT`, `SUM_TIMER_UPDATE`, `SUM_TIMER_DELETE`.
    pub time_ps: [u64; 4],
    /// `SUM_TIMER_WAIT`: the ranking key.
    pub total_wait_ps: u64,
}

/// The operations of [`IoWaitRow::count`] and [`IoWaitRow::time_ps`], in order. Contrib
/// reports these four only: `read` and `write` are sums of them.
pub const IO_OPERATIONS: [&str; 4] = ["fetch", "insert", "update", "delete"];

/// One row of `events_statements_summary_by_digest`. Times are picoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DigestRow {
    /// `SCHEMA_NAME`: the default schema of the statements; NULL when none was selected.
    pub schema: Option<Arc<str>>,
    /// `DIGEST`; NULL for the row that aggregates statements once the table is full.
    pub digest: Option<String>,
    /// `DIGEST_TEXT`, read only when query text is exported.
    pub text: Option<String>,
    /// `COUNT_STAR`.
    pub count_star: u64,
    /// `SUM_TIMER_WAIT`.
    pub sum_timer_wait: u64,
    /// `SUM_LOCK_TIME`.
    pub sum_lock_time: u64,
    /// `SUM_ERRORS`.
    pub sum_errors: u64,
    /// `SUM_ROWS_AFFECTED`.
    pub sum_rows_affected: u64,
    /// `SUM_ROWS_SENT`.
    pub sum_rows_sent: u64,
    /// `SUM_ROWS_EXAMINED`.
    pub sum_rows_examined: u64,
    /// `SUM_CREATED_TMP_DISK_TABLES`.
    pub sum_created_tmp_disk_tables: u64,
    /// `SUM_CREATED_TMP_TABLES`.
    pub sum_created_tmp_tables: u64,
    /// `SUM_SORT_ROWS`.
    pub sum_sort_rows: u64,
    /// `SUM_NO_INDEX_USED`.
    pub sum_no_index_used: u64,
    /// `SUM_CPU_TIME` (MySQL 8.0.28+; `None` where the column does not exist).
    pub sum_cpu_time: Option<u64>,
}

// ---- Schema filtering ---------------------------------------------------------------------

/// Schemas that never hold user tables; always skipped by the table families.
pub const SYSTEM_SCHEMAS: [&str; 4] = ["mysql", "performance_schema", "information_schema", "sys"];

/// Whether the table families keep `schema` for a target monitoring `databases`.
pub fn keeps_schema(databases: &Databases, schema: &str) -> bool {
    if SYSTEM_SCHEMAS.contains(&schema) {
        return false;
    }
    match databases {
        Databases::Listed(list) => list.iter().any(|d| &**d == schema),
        Databases::Discover { include, exclude } => discover_keeps(include, exclude, schema),
    }
}

/// Whether the statement families keep statements run with default schema `schema`.
/// Statements without one (`None`) are always kept: a client that never ran `USE` is
/// still part of the workload. System schemas are not skipped here: a statement run from
/// `mysql` may touch any table.
pub fn keeps_statement(databases: &Databases, schema: Option<&str>) -> bool {
    let Some(schema) = schema else { return true };
    match databases {
        Databases::Listed(list) => list.iter().any(|d| &**d == schema),
        Databases::Discover { include, exclude } => discover_keeps(include, exclude, schema),
    }
}

// ---- Time -------------------------------------------------------------------------------

/// The server's start time in Unix nanoseconds, the start of every cumulative counter.
///
/// `Uptime` counts whole seconds, so `now - Uptime` moves by up to a second between
/// scrapes; a backend would read a moved start time as a counter reset. The previous
/// estimate is kept unless the new one differs by more than two seconds (a restart).
pub fn server_start(now_unix_nanos: u64, uptime_s: u64, previous: Option<u64>) -> u64 {
    const SLACK: u64 = 2_000_000_000;
    let estimate = now_unix_nanos.saturating_sub(uptime_s.saturating_mul(1_000_000_000));
    match previous {
        Some(p) if p.abs_diff(estimate) <= SLACK => p,
        _ => estimate,
    }
}

/// `Uptime` from status rows.
pub fn uptime_seconds(status: &[NameValue]) -> Option<u64> {
    status
        .iter()
        .find(|r| r.name.eq_ignore_ascii_case("Uptime"))?
        .value
        .trim()
        .parse()
        .ok()
}

// ---- Mapping ----------------------------------------------------------------------------

/// Where a status variable goes: its descriptor and, when the metric has one, its
/// attribute `key = value`.
type Target = (&'static Descriptor, Option<(&'static str, &'static str)>);

/// The metric of a `SHOW GLOBAL STATUS` variable, `None` for the ones not reported.
fn status_target(name: &str) -> Option<Target> {
    let t: Target = match name {
        "Aborted_clients" => (&CONNECTION_ERRORS, Some(("error", "aborted_clients"))),
        "Aborted_connects" => (&CONNECTION_ERRORS, Some(("error", "aborted"))),
        "Bytes_received" => (&CLIENT_NETWORK_IO, Some(("kind", "received"))),
        "Bytes_sent" => (&CLIENT_NETWORK_IO, Some(("kind", "sent"))),
        "Com_begin" => (&COMMANDS, Some(("command", "begin"))),
        "Com_commit" => (&COMMANDS, Some(("command", "commit"))),
        "Com_delete" => (&COMMANDS, Some(("command", "delete"))),
        "Com_delete_multi" => (&COMMANDS, Some(("command", "delete_multi"))),
        "Com_insert" => (&COMMANDS, Some(("command", "insert"))),
        "Com_insert_select" => (&COMMANDS, Some(("command", "insert_select"))),
        "Com_load" => (&COMMANDS, Some(("command", "load"))),
        "Com_replace" => (&COMMANDS, Some(("command", "replace"))),
        "Com_replace_select" => (&COMMANDS, Some(("command", "replace_select"))),
        "Com_rollback" => (&COMMANDS, Some(("command", "rollback"))),
        "Com_select" => (&COMMANDS, Some(("command", "select"))),
        "Com_update" => (&COMMANDS, Some(("command", "update"))),
        "Com_update_multi" => (&COMMANDS, Some(("command", "update_multi"))),
        "Com_stmt_close" => (&PREPARED_STATEMENTS, Some(("command", "close"))),
        "Com_stmt_execute" => (&PREPARED_STATEMENTS, Some(("command", "execute"))),
        "Com_stmt_fetch" => (&PREPARED_STATEMENTS, Some(("command", "fetch"))),
        "Com_stmt_prepare" => (&PREPARED_STATEMENTS, Some(("command", "prepare"))),
        "Com_stmt_reset" => (&PREPARED_STATEMENTS, Some(("command", "reset"))),
        "Com_stmt_send_long_data" => (&PREPARED_STATEMENTS, Some(("command", "send_long_data"))),
        "Connection_errors_accept" => (&CONNECTION_ERRORS, Some(("error", "accept"))),
        "Connection_errors_internal" => (&CONNECTION_ERRORS, Some(("error", "internal"))),
        "Connection_errors_max_connections" => {
            (&CONNECTION_ERRORS, Some(("error", "max_connections")))
        }
        "Connection_errors_peer_address" => (&CONNECTION_ERRORS, Some(("error", "peer_address"))),
        "Connection_errors_select" => (&CONNECTION_ERRORS, Some(("error", "select"))),
        "Connection_errors_tcpwrap" => (&CONNECTION_ERRORS, Some(("error", "tcpwrap"))),
        "Connections" => (&CONNECTION_COUNT, None),
        "Created_tmp_disk_tables" => (&TMP_RESOURCES, Some(("resource", "disk_tables"))),
        "Created_tmp_files" => (&TMP_RESOURCES, Some(("resource", "files"))),
        "Created_tmp_tables" => (&TMP_RESOURCES, Some(("resource", "tables"))),
        "Handler_commit" => (&HANDLERS, Some(("kind", "commit"))),
        "Handler_delete" => (&HANDLERS, Some(("kind", "delete"))),
        "Handler_discover" => (&HANDLERS, Some(("kind", "discover"))),
        "Handler_external_lock" => (&HANDLERS, Some(("kind", "external_lock"))),
        "Handler_mrr_init" => (&HANDLERS, Some(("kind", "mrr_init"))),
        "Handler_prepare" => (&HANDLERS, Some(("kind", "prepare"))),
        "Handler_read_first" => (&HANDLERS, Some(("kind", "read_first"))),
        "Handler_read_key" => (&HANDLERS, Some(("kind", "read_key"))),
        "Handler_read_last" => (&HANDLERS, Some(("kind", "read_last"))),
        "Handler_read_next" => (&HANDLERS, Some(("kind", "read_next"))),
        "Handler_read_prev" => (&HANDLERS, Some(("kind", "read_prev"))),
        "Handler_read_rnd" => (&HANDLERS, Some(("kind", "read_rnd"))),
        "Handler_read_rnd_next" => (&HANDLERS, Some(("kind", "read_rnd_next"))),
        "Handler_rollback" => (&HANDLERS, Some(("kind", "rollback"))),
        "Handler_savepoint" => (&HANDLERS, Some(("kind", "savepoint"))),
        "Handler_savepoint_rollback" => (&HANDLERS, Some(("kind", "savepoint_rollback"))),
        "Handler_update" => (&HANDLERS, Some(("kind", "update"))),
        "Handler_write" => (&HANDLERS, Some(("kind", "write"))),
        "Innodb_buffer_pool_pages_data" => (&BUFFER_POOL_PAGES, Some(("kind", "data"))),
        "Innodb_buffer_pool_pages_free" => (&BUFFER_POOL_PAGES, Some(("kind", "free"))),
        "Innodb_buffer_pool_pages_misc" => (&BUFFER_POOL_PAGES, Some(("kind", "misc"))),
        "Innodb_buffer_pool_pages_flushed" => (&BUFFER_POOL_PAGE_FLUSHES, None),
        "Innodb_buffer_pool_read_ahead" => {
            (&BUFFER_POOL_OPERATIONS, Some(("operation", "read_ahead")))
        }
        "Innodb_buffer_pool_read_ahead_evicted" => (
            &BUFFER_POOL_OPERATIONS,
            Some(("operation", "read_ahead_evicted")),
        ),
        "Innodb_buffer_pool_read_ahead_rnd" => (
            &BUFFER_POOL_OPERATIONS,
            Some(("operation", "read_ahead_rnd")),
        ),
        "Innodb_buffer_pool_read_requests" => (
            &BUFFER_POOL_OPERATIONS,
            Some(("operation", "read_requests")),
        ),
        "Innodb_buffer_pool_reads" => (&BUFFER_POOL_OPERATIONS, Some(("operation", "reads"))),
        "Innodb_buffer_pool_wait_free" => {
            (&BUFFER_POOL_OPERATIONS, Some(("operation", "wait_free")))
        }
        "Innodb_buffer_pool_write_requests" => (
            &BUFFER_POOL_OPERATIONS,
            Some(("operation", "write_requests")),
        ),
        "Innodb_data_fsyncs" => (&OPERATIONS, Some(("operation", "fsyncs"))),
        "Innodb_data_reads" => (&OPERATIONS, Some(("operation", "reads"))),
        "Innodb_data_writes" => (&OPERATIONS, Some(("operation", "writes"))),
        "Innodb_dblwr_pages_written" => (&DOUBLE_WRITES, Some(("kind", "pages_written"))),
        "Innodb_dblwr_writes" => (&DOUBLE_WRITES, Some(("kind", "writes"))),
        "Innodb_log_waits" => (&LOG_OPERATIONS, Some(("operation", "waits"))),
        "Innodb_log_write_requests" => (&LOG_OPERATIONS, Some(("operation", "write_requests"))),
        "Innodb_log_writes" => (&LOG_OPERATIONS, Some(("operation", "writes"))),
        "Innodb_pages_created" => (&PAGE_OPERATIONS, Some(("operation", "created"))),
        "Innodb_pages_read" => (&PAGE_OPERATIONS, Some(("operation", "read"))),
        "Innodb_pages_written" => (&PAGE_OPERATIONS, Some(("operation", "written"))),
        "Innodb_row_lock_time" => (&ROW_LOCKS, Some(("kind", "time"))),
        "Innodb_row_lock_waits" => (&ROW_LOCKS, Some(("kind", "waits"))),
        // MySQL only: MariaDB 10.11 no longer has Innodb_rows_*, so mysql.row_operations
        // is absent there (Handler_* counts something else and is not substituted).
        "Innodb_rows_deleted" => (&ROW_OPERATIONS, Some(("operation", "deleted"))),
        "Innodb_rows_inserted" => (&ROW_OPERATIONS, Some(("operation", "inserted"))),
        "Innodb_rows_read" => (&ROW_OPERATIONS, Some(("operation", "read"))),
        "Innodb_rows_updated" => (&ROW_OPERATIONS, Some(("operation", "updated"))),
        // MySQL 8 only; MariaDB has no such variable.
        "Locked_connects" => (&CONNECTION_ERRORS, Some(("error", "locked"))),
        "Opened_files" => (&OPENED_RESOURCES, Some(("kind", "file"))),
        "Opened_table_definitions" => (&OPENED_RESOURCES, Some(("kind", "table_definition"))),
        "Opened_tables" => (&OPENED_RESOURCES, Some(("kind", "table"))),
        "Queries" => (&QUERY_COUNT, None),
        "Questions" => (&QUERY_CLIENT_COUNT, None),
        "Slow_queries" => (&QUERY_SLOW_COUNT, None),
        "Sort_merge_passes" => (&SORTS, Some(("kind", "merge_passes"))),
        "Sort_range" => (&SORTS, Some(("kind", "range"))),
        "Sort_rows" => (&SORTS, Some(("kind", "rows"))),
        "Sort_scan" => (&SORTS, Some(("kind", "scan"))),
        "Table_locks_immediate" => (&LOCKS, Some(("kind", "immediate"))),
        "Table_locks_waited" => (&LOCKS, Some(("kind", "waited"))),
        "Threads_cached" => (&THREADS, Some(("kind", "cached"))),
        "Threads_connected" => (&THREADS, Some(("kind", "connected"))),
        "Threads_created" => (&THREADS, Some(("kind", "created"))),
        "Threads_running" => (&THREADS, Some(("kind", "running"))),
        "Uptime" => (&UPTIME, None),
        _ => return None,
    };
    Some(t)
}

fn parse_int(value: &str) -> Option<i64> {
    value.trim().parse().ok()
}

/// Maps `SHOW GLOBAL STATUS` rows. Variables the server does not have (MariaDB lacks
/// `Locked_connects`) or that do not parse as integers are skipped one by one.
pub fn global_status(rows: &[NameValue], sink: &mut PointSink<'_>) {
    let (mut data_pages, mut dirty_pages) = (None, None);
    let (mut data_bytes, mut dirty_bytes) = (None, None);

    for row in rows {
        let Some(value) = parse_int(&row.value) else {
            continue;
        };
        match row.name.as_str() {
            "Innodb_buffer_pool_pages_data" => data_pages = Some(value),
            "Innodb_buffer_pool_pages_dirty" => dirty_pages = Some(value),
            "Innodb_buffer_pool_bytes_data" => data_bytes = Some(value),
            "Innodb_buffer_pool_bytes_dirty" => dirty_bytes = Some(value),
            _ => {}
        }
        let Some((desc, attr)) = status_target(&row.name) else {
            continue;
        };
        let attrs = match attr {
            Some((k, v)) => attrs![k => v],
            None => attrs![],
        };
        sink.push(desc, Value::Int(value), attrs);
    }

    // Clean is what is not dirty; computed only when both halves are known.
    if let (Some(data), Some(dirty)) = (data_pages, dirty_pages) {
        sink.push(
            &BUFFER_POOL_DATA_PAGES,
            Value::Int(dirty),
            attrs!["status" => "dirty"],
        );
        let clean = (data - dirty).max(0);
        sink.push(
            &BUFFER_POOL_DATA_PAGES,
            Value::Int(clean),
            attrs!["status" => "clean"],
        );
    }
    if let (Some(data), Some(dirty)) = (data_bytes, dirty_bytes) {
        sink.push(
            &BUFFER_POOL_USAGE,
            Value::Int(dirty),
            attrs!["status" => "dirty"],
        );
        let clean = (data - dirty).max(0);
        sink.push(
            &BUFFER_POOL_USAGE,
            Value::Int(clean),
            attrs!["status" => "clean"],
        );
    }
}

/// Maps `SHOW GLOBAL VARIABLES` rows (`max_connections`, `innodb_buffer_pool_size`).
pub fn global_variables(rows: &[NameValue], sink: &mut PointSink<'_>) {
    for row in rows {
        let value = parse_int(&row.value);
        if row.name.eq_ignore_ascii_case("max_connections") {
            sink.int(&CONNECTION_MAX, value, attrs![]);
        } else if row.name.eq_ignore_ascii_case("innodb_buffer_pool_size") {
            sink.int(&BUFFER_POOL_LIMIT, value, attrs![]);
        }
    }
}

/// Maps replica status rows: none when no replication is configured. A NULL lag means
/// replication is not running: it is reported as `mysql.replica.running` 0 and no lag
/// point, never as a lag of 0.
pub fn replica_status(rows: &[ReplicaRow], sink: &mut PointSink<'_>) {
    for row in rows {
        let attrs = match row.channel.as_deref().filter(|c| !c.is_empty()) {
            Some(c) => attrs!["channel" => c],
            None => attrs![],
        };
        let yes = |v: &Option<String>| v.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("yes"));
        let running = yes(&row.io_running) && yes(&row.sql_running) && row.seconds_behind.is_some();

        sink.push(
            &REPLICA_RUNNING,
            Value::Int(i64::from(running)),
            attrs.clone(),
        );
        sink.int(
            &REPLICA_TIME_BEHIND_SOURCE,
            row.seconds_behind,
            attrs.clone(),
        );
        sink.int(&REPLICA_SQL_DELAY, row.sql_delay, attrs);
    }
}

/// Keeps, of rows ranked largest first, at most `limit` per schema; `0` keeps none.
pub fn cap_per_schema(rows: &mut Vec<IoWaitRow>, limit: u32) {
    let mut seen: std::collections::HashMap<Arc<str>, u32> = std::collections::HashMap::new();
    rows.retain(|r| {
        let n = seen.entry(r.schema.clone()).or_insert(0);
        *n += 1;
        *n <= limit
    });
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Maps table I/O wait rows: a count and a time (nanoseconds) per operation.
pub fn table_io_waits(rows: &[IoWaitRow], sink: &mut PointSink<'_>) {
    for row in rows {
        for (i, op) in IO_OPERATIONS.iter().enumerate() {
            let attrs = attrs!["operation" => *op, "table" => &row.table, "schema" => &row.schema];
            sink.push(
                &TABLE_IO_WAIT_COUNT,
                Value::Int(saturating_i64(row.count[i])),
                attrs.clone(),
            );
            let ns = saturating_i64(row.time_ps[i] / 1000);
            sink.push(&TABLE_IO_WAIT_TIME, Value::Int(ns), attrs);
        }
    }
}

/// Maps index I/O wait rows; rows without an index (the accesses that used none, which
/// the table family already counts) are skipped.
pub fn index_io_waits(rows: &[IoWaitRow], sink: &mut PointSink<'_>) {
    for row in rows {
        let Some(index) = &row.index else { continue };
        for (i, op) in IO_OPERATIONS.iter().enumerate() {
            let attrs = attrs![
                "operation" => *op,
                "table" => &row.table,
                "schema" => &row.schema,
                "index" => index,
            ];
            sink.push(
                &INDEX_IO_WAIT_COUNT,
                Value::Int(saturating_i64(row.count[i])),
                attrs.clone(),
            );
            let ns = saturating_i64(row.time_ps[i] / 1000);
            sink.push(&INDEX_IO_WAIT_TIME, Value::Int(ns), attrs);
        }
    }
}

/// Picoseconds to seconds.
fn ps_to_s(ps: u64) -> f64 {
    ps as f64 / 1e12
}

/// One digest row as a statement. The key is `<schema or ''>/<digest>`, unique per
/// server; the attributes are `schema` (absent when the statements had no default
/// schema) and `digest` (absent on the overflow row of a full digest table).
pub fn statement(row: DigestRow) -> StatementRow {
    let schema = row.schema.as_deref().unwrap_or("");
    let digest = row.digest.as_deref().unwrap_or("");
    let key: Arc<str> = Arc::from(format!("{schema}/{digest}"));

    let mut attrs = attrs![];
    if let Some(s) = &row.schema {
        attrs.push(("schema", s.into()));
    }
    if let Some(d) = &row.digest {
        attrs.push(("digest", d.as_str().into()));
    }

    let int = |v: u64| Value::Int(saturating_i64(v));
    let mut extra: SmallVec<[(&'static Descriptor, Value); 6]> = SmallVec::new();
    extra.push((&QUERY_ROWS_EXAMINED, int(row.sum_rows_examined)));
    extra.push((&QUERY_LOCK_TIME, Value::Double(ps_to_s(row.sum_lock_time))));
    extra.push((&QUERY_TMP_DISK_TABLES, int(row.sum_created_tmp_disk_tables)));
    extra.push((&QUERY_TMP_TABLES, int(row.sum_created_tmp_tables)));
    extra.push((&QUERY_SORT_ROWS, int(row.sum_sort_rows)));
    extra.push((&QUERY_NO_INDEX_USED, int(row.sum_no_index_used)));
    if let Some(cpu) = row.sum_cpu_time {
        extra.push((&QUERY_CPU_TIME, Value::Double(ps_to_s(cpu))));
    }

    StatementRow {
        key,
        attrs,
        text: row.text,
        calls: saturating_i64(row.count_star),
        total_time_s: ps_to_s(row.sum_timer_wait),
        rows: saturating_i64(row.sum_rows_sent.saturating_add(row.sum_rows_affected)),
        errors: saturating_i64(row.sum_errors),
        extra,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{AttrValue, Kind, Point};

    fn nv(name: &str, value: &str) -> NameValue {
        NameValue {
            name: name.into(),
            value: value.into(),
        }
    }

    fn attr<'a>(p: &'a Point, key: &str) -> Option<&'a AttrValue> {
        p.attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn find<'a>(points: &'a [Point], name: &str, key: &str, value: &str) -> Option<&'a Point> {
        points
            .iter()
            .find(|p| p.desc.name == name && attr(p, key).is_some_and(|v| v.to_string() == value))
    }

    #[test]
    fn status_variables_map_to_contrib_names_with_server_start_as_start_time() {
        let rows = [
            nv("Innodb_rows_read", "42"),
            nv("Com_select", "7"),
            nv("Queries", "1000"),
            nv("Threads_running", "3"),
            nv("Uptime", "60"),
            nv(
                "Innodb_buffer_pool_load_status",
                "Buffer pool(s) load completed",
            ),
            nv("Some_unknown_variable", "5"),
        ];
        let mut out = Vec::new();
        global_status(&rows, &mut PointSink::new(&mut out, 100, 40));

        let read = find(&out, "mysql.row_operations", "operation", "read").unwrap();
        assert_eq!(read.value, Value::Int(42));
        assert_eq!((read.start_unix_nanos, read.time_unix_nanos), (40, 100));
        assert_eq!(
            find(&out, "mysql.commands", "command", "select")
                .unwrap()
                .value,
            Value::Int(7)
        );
        assert_eq!(
            find(&out, "mysql.threads", "kind", "running")
                .unwrap()
                .value,
            Value::Int(3)
        );
        let queries = out
            .iter()
            .find(|p| p.desc.name == "mysql.query.count")
            .unwrap();
        assert_eq!(queries.value, Value::Int(1000));
        assert!(queries.attrs.is_empty());
        // Text values and unknown names produce nothing.
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn buffer_pool_clean_pages_are_data_minus_dirty() {
        let rows = [
            nv("Innodb_buffer_pool_pages_data", "301"),
            nv("Innodb_buffer_pool_pages_dirty", "12"),
            nv("Innodb_buffer_pool_bytes_data", "4931584"),
            nv("Innodb_buffer_pool_bytes_dirty", "196608"),
        ];
        let mut out = Vec::new();
        global_status(&rows, &mut PointSink::new(&mut out, 1, 0));
        let clean = find(&out, "mysql.buffer_pool.data_pages", "status", "clean").unwrap();
        assert_eq!(clean.value, Value::Int(289));
        let usage = find(&out, "mysql.buffer_pool.usage", "status", "clean").unwrap();
        assert_eq!(usage.value, Value::Int(4931584 - 196608));
    }

    #[test]
    fn variables_give_connection_limit_and_buffer_pool_size() {
        let rows = [
            nv("max_connections", "151"),
            nv("innodb_buffer_pool_size", "134217728"),
        ];
        let mut out = Vec::new();
        global_variables(&rows, &mut PointSink::new(&mut out, 1, 0));
        assert_eq!(out[0].desc.name, "mysql.connection.max");
        assert_eq!(out[0].value, Value::Int(151));
        assert_eq!(out[0].start_unix_nanos, 0, "a gauge has no start time");
        assert_eq!(out[1].desc.name, "mysql.buffer_pool.limit");
        assert_eq!(out[1].value, Value::Int(134217728));
    }

    #[test]
    fn replica_with_null_lag_is_not_running_and_has_no_lag_point() {
        // case my-02: NULL Seconds_Behind_* is broken replication, not zero lag.
        let rows = [ReplicaRow {
            io_running: Some("No".into()),
            sql_running: Some("Yes".into()),
            seconds_behind: None,
            sql_delay: Some(0),
            ..ReplicaRow::default()
        }];
        let mut out = Vec::new();
        replica_status(&rows, &mut PointSink::new(&mut out, 1, 0));
        let running = out
            .iter()
            .find(|p| p.desc.name == "mysql.replica.running")
            .unwrap();
        assert_eq!(running.value, Value::Int(0));
        assert!(out
            .iter()
            .all(|p| p.desc.name != "mysql.replica.time_behind_source"));
        assert!(out.iter().any(|p| p.desc.name == "mysql.replica.sql_delay"));
    }

    #[test]
    fn running_replica_reports_its_lag_per_channel() {
        let rows = [ReplicaRow {
            channel: Some("eu".into()),
            io_running: Some("Yes".into()),
            sql_running: Some("Yes".into()),
            seconds_behind: Some(7),
            sql_delay: Some(0),
        }];
        let mut out = Vec::new();
        replica_status(&rows, &mut PointSink::new(&mut out, 1, 0));
        let lag = find(&out, "mysql.replica.time_behind_source", "channel", "eu").unwrap();
        assert_eq!(lag.value, Value::Int(7));
        let running = find(&out, "mysql.replica.running", "channel", "eu").unwrap();
        assert_eq!(running.value, Value::Int(1));
    }

    #[test]
    fn no_replica_rows_give_no_points() {
        let mut out = Vec::new();
        replica_status(&[], &mut PointSink::new(&mut out, 1, 0));
        assert!(out.is_empty());
    }

    fn io_row(schema: &str, table: &str, wait: u64) -> IoWaitRow {
        IoWaitRow {
            schema: schema.into(),
            table: table.into(),
            index: None,
            count: [1, 2, 3, 4],
            time_ps: [1_000, 2_000, 3_000, 4_000_000],
            total_wait_ps: wait,
        }
    }

    #[test]
    fn table_io_waits_report_count_and_nanoseconds_per_operation() {
        let rows = [io_row("my-app", "Order Items", 10)];
        let mut out = Vec::new();
        table_io_waits(&rows, &mut PointSink::new(&mut out, 1, 0));
        assert_eq!(out.len(), 8);
        let insert = find(&out, "mysql.table.io.wait.count", "operation", "insert").unwrap();
        assert_eq!(insert.value, Value::Int(2));
        assert_eq!(attr(insert, "schema").unwrap().to_string(), "my-app");
        assert_eq!(attr(insert, "table").unwrap().to_string(), "Order Items");
        let delete = find(&out, "mysql.table.io.wait.time", "operation", "delete").unwrap();
        assert_eq!(delete.value, Value::Int(4_000));
        assert_eq!(delete.desc.unit, "ns");
    }

    #[test]
    fn index_io_waits_skip_accesses_without_an_index() {
        let mut with_index = io_row("a", "t", 10);
        with_index.index = Some("PRIMARY".into());
        let rows = [with_index, io_row("a", "t", 5)];
        let mut out = Vec::new();
        index_io_waits(&rows, &mut PointSink::new(&mut out, 1, 0));
        assert_eq!(out.len(), 8);
        assert!(out
            .iter()
            .all(|p| attr(p, "index").unwrap().to_string() == "PRIMARY"));
    }

    #[test]
    fn relation_cap_applies_per_schema_keeping_the_largest() {
        let mut rows = vec![
            io_row("a", "t1", 30),
            io_row("b", "t1", 20),
            io_row("a", "t2", 10),
            io_row("a", "t3", 5),
        ];
        cap_per_schema(&mut rows, 2);
        let kept: Vec<_> = rows
            .iter()
            .map(|r| format!("{}.{}", r.schema, r.table))
            .collect();
        assert_eq!(kept, ["a.t1", "b.t1", "a.t2"]);
        cap_per_schema(&mut rows, 0);
        assert!(rows.is_empty());
    }

    #[test]
    fn schema_filters_skip_system_schemas_for_tables_but_keep_schemaless_statements() {
        let listed = Databases::Listed(vec!["my-app".into()]);
        assert!(keeps_schema(&listed, "my-app"));
        assert!(!keeps_schema(&listed, "other"));
        let all = Databases::Discover {
            include: vec!["*".into()],
            exclude: vec!["tmp_*".into()],
        };
        assert!(keeps_schema(&all, "shop"));
        assert!(!keeps_schema(&all, "tmp_1"));
        assert!(!keeps_schema(&all, "mysql"));
        assert!(!keeps_schema(&all, "sys"));

        assert!(keeps_statement(&listed, None));
        assert!(keeps_statement(&listed, Some("my-app")));
        assert!(!keeps_statement(&listed, Some("other")));
        assert!(keeps_statement(&all, Some("mysql")));
    }

    #[test]
    fn server_start_stays_put_across_uptime_rounding_and_moves_on_restart() {
        let s = 1_000_000_000_000u64;
        let first = server_start(s + 60_400_000_000, 60, None);
        assert_eq!(first, s + 400_000_000);
        // A scrape 30.9 s later reads Uptime 91: the estimate moves by 0.3 s.
        assert_eq!(server_start(s + 91_300_000_000, 91, Some(first)), first);
        // After a restart the uptime is small again.
        let restarted = server_start(s + 200_000_000_000, 5, Some(first));
        assert_eq!(restarted, s + 195_000_000_000);
        assert_eq!(uptime_seconds(&[nv("Uptime", "91")]), Some(91));
    }

    #[test]
    fn digest_rows_become_statements_with_seconds_and_summed_rows() {
        let row = DigestRow {
            schema: Some("my-app".into()),
            digest: Some("abc".into()),
            text: Some("SELECT ?".into()),
            count_star: 50,
            sum_timer_wait: 2_500_000_000_000,
            sum_rows_sent: 50,
            sum_rows_affected: 3,
            sum_errors: 1,
            sum_rows_examined: 500,
            sum_cpu_time: None,
            ..DigestRow::default()
        };
        let s = statement(row);
        assert_eq!(&*s.key, "my-app/abc");
        assert_eq!((s.calls, s.rows, s.errors), (50, 53, 1));
        assert!((s.total_time_s - 2.5).abs() < 1e-9);
        assert_eq!(s.text.as_deref(), Some("SELECT ?"));
        let examined = s
            .extra
            .iter()
            .find(|(d, _)| d.name == "mysql.query.rows_examined");
        assert_eq!(examined.unwrap().1, Value::Int(500));
        assert!(s
            .extra
            .iter()
            .all(|(d, _)| d.name != "mysql.query.cpu_time"));
        assert_eq!(s.attrs.len(), 2);
    }

    #[test]
    fn statements_without_a_default_schema_are_kept_with_an_empty_schema_key() {
        let row = DigestRow {
            schema: None,
            digest: Some("abc".into()),
            ..DigestRow::default()
        };
        let s = statement(row);
        assert_eq!(&*s.key, "/abc");
        assert!(s.attrs.iter().all(|(k, _)| *k != "schema"));
        let overflow = statement(DigestRow::default());
        assert_eq!(&*overflow.key, "/");
    }

    #[test]
    fn statement_descriptors_are_cumulative_and_aggregates_are_deltas() {
        let d = &STATEMENT_DESCRIPTORS;
        for c in [d.calls, d.time, d.rows] {
            assert_eq!(c.kind, Kind::CumulativeSum { monotonic: true });
        }
        assert_eq!(d.others_calls.kind, Kind::DeltaSum { monotonic: true });
        assert_eq!(d.others_count.kind, Kind::Gauge);
        assert_eq!(d.sample_rate.kind, Kind::Gauge);
        assert_eq!(d.time.unit, "s");
    }
}
