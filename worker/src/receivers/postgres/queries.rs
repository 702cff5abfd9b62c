//! The SQL of every PostgreSQL family, its selection by probed capability, and the round
//! trip: a [`Session`] runs each query under a client-side deadline and decodes the rows
//! into the plain structs of [`super::mapping`].
//!
//! Rules every query here keeps:
//! - Relations are addressed by OID (`relid`, `indexrelid`), never by a name cast to
//!   `regclass`, and names are returned as stored (pg-04).
//! - Size functions take an `ACCESS SHARE` lock, so they are skipped (NULL) for relations
//!   an `ACCESS EXCLUSIVE` lock is held or awaited on, and evaluated only for the rows
//!   that survive the limit; `lock_timeout` covers the remaining race (pg-06).
//! - Every column is cast to the type decoded (`int8`, `float8`, `text`), so a type
//!   change between versions is absorbed by the server.
//! - Timestamps travel as integer microseconds since the epoch.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgRow, Postgres};
use sqlx::query::Query;
use sqlx::Row;

use super::mapping::{
    ActivityRow, BgwriterRow, DatabaseRow, IndexRow, LockRow, ReplicationRow, ServerRow, SlotRow,
    StatementRecord, TableRow, WalRow,
};
use super::probe::{Checkpoints, TimeColumn};
use crate::pool::Lease;

/// Most pg_stat_statements rows read per scrape, the slowest first: bounds memory on a
/// server whose `pg_stat_statements.max` is large.
pub(crate) const STATEMENT_ROWS: i64 = 10_000;

/// Why a query of a session produced nothing.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client-side deadline passed; the connection is closed, as it may be mid-reply.
    #[error("query {query} timed out after {timeout:?}")]
    Timeout {
        /// The query's name.
        query: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// The server or the connection reported an error.
    #[error("query {query} failed")]
    Query {
        /// The query's name.
        query: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A column did not decode as expected.
    #[error("decoding column {column} of query {query}")]
    Decode {
        /// The query's name.
        query: &'static str,
        /// The column.
        column: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// An earlier failure broke the connection; nothing more is sent on it.
    #[error("query {query} not sent: the connection broke earlier in this scrape")]
    Broken {
        /// The query's name.
        query: &'static str,
    },
}

impl SessionError {
    /// Whether the error left the connection unusable (a client timeout, an I/O or
    /// protocol error), as opposed to a statement the server refused.
    pub fn broke_connection(&self) -> bool {
        match self {
            SessionError::Timeout { .. } | SessionError::Broken { .. } => true,
            SessionError::Query { source, .. } => !matches!(
                source,
                sqlx::Error::Database(_)
                    | sqlx::Error::RowNotFound
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::TypeNotFound { .. }
            ),
            SessionError::Decode { .. } => false,
        }
    }
}

/// One database connection for the length of a scrape: each query under a client-side
/// deadline, and the connection given back healthy or not.
///
/// Queries run in autocommit mode (no transaction is ever opened), so a failed
/// statement never leaves the session idle in a transaction.
#[derive(Debug)]
pub(crate) struct Session {
    lease: Option<Lease<Postgres>>,
    deadline: Duration,
    broken: bool,
    last: &'static str,
}

impl Session {
    /// Wraps a lease; `deadline` bounds every query.
    pub fn new(lease: Lease<Postgres>, deadline: Duration) -> Self {
        Self {
            lease: Some(lease),
            deadline,
            broken: false,
            last: "",
        }
    }

    /// Whether an error broke the connection.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Runs `query` and returns all its rows.
    pub async fn fetch_all(
        &mut self,
        name: &'static str,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<Vec<PgRow>, SessionError> {
        self.last = name;
        let Some(lease) = self.lease.as_mut().filter(|_| !self.broken) else {
            return Err(SessionError::Broken { query: name });
        };
        let result = tokio::time::timeout(self.deadline, query.fetch_all(&mut **lease.conn()))
            .await
            .map_err(|_| SessionError::Timeout {
                query: name,
                timeout: self.deadline,
            })
            .and_then(|r| {
                r.map_err(|source| SessionError::Query {
                    query: name,
                    source,
                })
            });
        if let Err(e) = &result {
            self.broken |= e.broke_connection();
        }
        result
    }

    /// Runs `query`, which returns exactly one row.
    pub async fn fetch_one(
        &mut self,
        name: &'static str,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<PgRow, SessionError> {
        self.fetch_all(name, query)
            .await?
            .into_iter()
            .next()
            .ok_or(SessionError::Query {
                query: name,
                source: sqlx::Error::RowNotFound,
            })
    }

    /// Decodes `column` of a row of the last query.
    pub fn get<T>(&self, row: &PgRow, column: &'static str) -> Result<T, SessionError>
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        row.try_get(column).map_err(|source| SessionError::Decode {
            query: self.last,
            column,
            source,
        })
    }

    /// Gives the connection back: kept for the next scrape when healthy, closed when an
    /// error may have left it mid-protocol.
    pub async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release(!self.broken).await;
        }
    }
}

/// Quotes an SQL identifier (doubling embedded quotes), for the one name that must be
/// spliced into SQL: the schema of pg_stat_statements.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Unix microseconds to nanoseconds; `None` for NULL or a time before the epoch.
fn us_to_ns(us: Option<i64>) -> Option<u64> {
    us.and_then(|v| u64::try_from(v).ok())
        .map(|v| v.saturating_mul(1000))
}

/// Reads a string column as a shared string ("" for NULL).
fn arc(s: &Session, row: &PgRow, column: &'static str) -> Result<Arc<str>, SessionError> {
    Ok(Arc::from(
        s.get::<Option<String>>(row, column)?.unwrap_or_default(),
    ))
}

// ---------------------------------------------------------------------------------------
// Session context: read first on every connection, every scrape.

const CONTEXT_SQL: &str = "\
SELECT pg_backend_pid() AS pid,
       (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8 AS started_us,
       (SELECT (extract(epoch FROM stats_reset) * 1000000)::int8
          FROM pg_stat_database WHERE datname = current_database()) AS reset_us";

/// What a session needs to know before reading families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Context {
    /// The server process of this session.
    pub backend_pid: i32,
    /// Postmaster start, Unix nanoseconds: changes when the server restarts.
    pub server_started: u64,
    /// Last reset of this database's counters (tables, indexes), Unix nanoseconds.
    pub database_reset: Option<u64>,
}

/// Reads the session context.
pub(crate) async fn context(s: &mut Session) -> Result<Context, SessionError> {
    let row = s.fetch_one("context", sqlx::query(CONTEXT_SQL)).await?;
    Ok(Context {
        backend_pid: s.get(&row, "pid")?,
        server_started: us_to_ns(s.get(&row, "started_us")?).unwrap_or(0),
        database_reset: us_to_ns(s.get(&row, "reset_us")?),
    })
}

// ---------------------------------------------------------------------------------------
// Server-wide families.

/// Every database of the server except templates; the shared-objects row
/// (`datname IS NULL`) is skipped (pg-07). Sizes only where the role may connect, as
/// `pg_database_size` refuses the others.
const DATABASES_SQL: &str = "\
SELECT s.datname::text AS name,
       s.numbackends::int8 AS backends,
       s.xact_commit::int8 AS commits,
       s.xact_rollback::int8 AS rollbacks,
       s.blks_read::int8 AS blks_read,
       s.blks_hit::int8 AS blks_hit,
       s.tup_returned::int8 AS tup_returned,
       s.tup_fetched::int8 AS tup_fetched,
       s.tup_inserted::int8 AS tup_inserted,
       s.tup_updated::int8 AS tup_updated,
       s.tup_deleted::int8 AS tup_deleted,
       s.conflicts::int8 AS conflicts,
       s.temp_files::int8 AS temp_files,
       s.temp_bytes::int8 AS temp_bytes,
       s.deadlocks::int8 AS deadlocks,
       CASE WHEN has_database_privilege(s.datid, 'CONNECT')
            THEN pg_database_size(s.datid) END AS size_bytes,
       (extract(epoch FROM s.stats_reset) * 1000000)::int8 AS reset_us
  FROM pg_stat_database s JOIN pg_database d ON d.oid = s.datid
 WHERE s.datname IS NOT NULL AND NOT d.datistemplate
 ORDER BY s.datname";

/// Reads `pg_stat_database`.
pub(crate) async fn databases(s: &mut Session) -> Result<Vec<DatabaseRow>, SessionError> {
    let rows = s.fetch_all("databases", sqlx::query(DATABASES_SQL)).await?;
    rows.iter()
        .map(|r| {
            Ok(DatabaseRow {
                name: arc(s, r, "name")?,
                backends: s.get(r, "backends")?,
                commits: s.get(r, "commits")?,
                rollbacks: s.get(r, "rollbacks")?,
                blks_read: s.get(r, "blks_read")?,
                blks_hit: s.get(r, "blks_hit")?,
                tup_returned: s.get(r, "tup_returned")?,
                tup_fetched: s.get(r, "tup_fetched")?,
                tup_inserted: s.get(r, "tup_inserted")?,
                tup_updated: s.get(r, "tup_updated")?,
                tup_deleted: s.get(r, "tup_deleted")?,
                conflicts: s.get(r, "conflicts")?,
                temp_files: s.get(r, "temp_files")?,
                temp_bytes: s.get(r, "temp_bytes")?,
                deadlocks: s.get(r, "deadlocks")?,
                size_bytes: s.get(r, "size_bytes")?,
                stats_reset: us_to_ns(s.get(r, "reset_us")?),
            })
        })
        .collect()
}

/// Client backends only: background workers have no state worth a series.
const ACTIVITY_SQL: &str = "\
SELECT datname::text AS database,
       coalesce(state, 'unknown') AS state,
       coalesce(wait_event_type, 'none') AS wait_event_type,
       count(*)::int8 AS count
  FROM pg_stat_activity
 WHERE backend_type = 'client backend'
 GROUP BY 1, 2, 3";

/// Reads client connections by database, state and wait event type.
pub(crate) async fn activity(s: &mut Session) -> Result<Vec<ActivityRow>, SessionError> {
    let rows = s.fetch_all("activity", sqlx::query(ACTIVITY_SQL)).await?;
    rows.iter()
        .map(|r| {
            Ok(ActivityRow {
                database: s.get::<Option<String>>(r, "database")?.map(Arc::from),
                state: arc(s, r, "state")?,
                wait_event_type: arc(s, r, "wait_event_type")?,
                count: s.get(r, "count")?,
            })
        })
        .collect()
}

/// `wal_age_s` is NULL when nothing was ever archived: no point rather than 0.
const SERVER_SQL: &str = "\
SELECT current_setting('max_connections')::int8 AS max_connections,
       (SELECT extract(epoch FROM now() - last_archived_time)::int8
          FROM pg_stat_archiver) AS wal_age_s";

/// Reads server settings and the archiver's age.
pub(crate) async fn server(s: &mut Session) -> Result<ServerRow, SessionError> {
    let r = s.fetch_one("server", sqlx::query(SERVER_SQL)).await?;
    Ok(ServerRow {
        max_connections: s.get(&r, "max_connections")?,
        wal_age_s: s.get(&r, "wal_age_s")?,
    })
}

/// Before PostgreSQL 17: everything in `pg_stat_bgwriter`.
const BGWRITER_SQL: &str = "\
SELECT checkpoints_timed::int8 AS checkpoints_timed,
       checkpoints_req::int8 AS checkpoints_req,
       checkpoint_write_time::float8 AS write_ms,
       checkpoint_sync_time::float8 AS sync_ms,
       buffers_checkpoint::int8 AS buffers_checkpoint,
       buffers_clean::int8 AS buffers_clean,
       maxwritten_clean::int8 AS maxwritten_clean,
       buffers_backend::int8 AS buffers_backend,
       buffers_backend_fsync::int8 AS buffers_backend_fsync,
       buffers_alloc::int8 AS buffers_alloc,
       (extract(epoch FROM stats_reset) * 1000000)::int8 AS bgwriter_reset_us,
       (extract(epoch FROM stats_reset) * 1000000)::int8 AS checkpointer_reset_us
  FROM pg_stat_bgwriter";

/// PostgreSQL 17+: checkpoints moved to `pg_stat_checkpointer` (with their own reset
/// time) and the backend write counters are gone.
const CHECKPOINTER_SQL: &str = "\
SELECT c.num_timed::int8 AS checkpoints_timed,
       c.num_requested::int8 AS checkpoints_req,
       c.write_time::float8 AS write_ms,
       c.sync_time::float8 AS sync_ms,
       c.buffers_written::int8 AS buffers_checkpoint,
       b.buffers_clean::int8 AS buffers_clean,
       b.maxwritten_clean::int8 AS maxwritten_clean,
       NULL::int8 AS buffers_backend,
       NULL::int8 AS buffers_backend_fsync,
       b.buffers_alloc::int8 AS buffers_alloc,
       (extract(epoch FROM b.stats_reset) * 1000000)::int8 AS bgwriter_reset_us,
       (extract(epoch FROM c.stats_reset) * 1000000)::int8 AS checkpointer_reset_us
  FROM pg_stat_bgwriter b CROSS JOIN pg_stat_checkpointer c";

/// Neither known shape of the checkpoint counters: the background writer's own only.
const BGWRITER_ONLY_SQL: &str = "\
SELECT NULL::int8 AS checkpoints_timed,
       NULL::int8 AS checkpoints_req,
       NULL::float8 AS write_ms,
       NULL::float8 AS sync_ms,
       NULL::int8 AS buffers_checkpoint,
       buffers_clean::int8 AS buffers_clean,
       maxwritten_clean::int8 AS maxwritten_clean,
       NULL::int8 AS buffers_backend,
       NULL::int8 AS buffers_backend_fsync,
       buffers_alloc::int8 AS buffers_alloc,
       (extract(epoch FROM stats_reset) * 1000000)::int8 AS bgwriter_reset_us,
       NULL::int8 AS checkpointer_reset_us
  FROM pg_stat_bgwriter";

/// The background writer query for where the probe found the checkpoint counters.
pub(crate) fn bgwriter_sql(checkpoints: Checkpoints) -> &'static str {
    match checkpoints {
        Checkpoints::Bgwriter => BGWRITER_SQL,
        Checkpoints::Checkpointer => CHECKPOINTER_SQL,
        Checkpoints::Absent => BGWRITER_ONLY_SQL,
    }
}

/// Reads the background writer and checkpoint counters.
pub(crate) async fn bgwriter(
    s: &mut Session,
    checkpoints: Checkpoints,
) -> Result<BgwriterRow, SessionError> {
    let r = s
        .fetch_one("bgwriter", sqlx::query(bgwriter_sql(checkpoints)))
        .await?;
    Ok(BgwriterRow {
        checkpoints_timed: s.get(&r, "checkpoints_timed")?,
        checkpoints_req: s.get(&r, "checkpoints_req")?,
        checkpoint_write_ms: s.get(&r, "write_ms")?,
        checkpoint_sync_ms: s.get(&r, "sync_ms")?,
        buffers_checkpoint: s.get(&r, "buffers_checkpoint")?,
        buffers_clean: s.get(&r, "buffers_clean")?,
        maxwritten_clean: s.get(&r, "maxwritten_clean")?,
        buffers_backend: s.get(&r, "buffers_backend")?,
        buffers_backend_fsync: s.get(&r, "buffers_backend_fsync")?,
        buffers_alloc: s.get(&r, "buffers_alloc")?,
        bgwriter_reset: us_to_ns(s.get(&r, "bgwriter_reset_us")?),
        checkpointer_reset: us_to_ns(s.get(&r, "checkpointer_reset_us")?),
    })
}

/// `pg_stat_wal` (14+); `wal_bytes` is numeric.
const WAL_SQL: &str = "\
SELECT wal_records::int8 AS records,
       wal_fpi::int8 AS fpi,
       wal_bytes::int8 AS bytes,
       wal_buffers_full::int8 AS buffers_full,
       (extract(epoch FROM stats_reset) * 1000000)::int8 AS reset_us
  FROM pg_stat_wal";

/// Reads WAL generation counters.
pub(crate) async fn wal(s: &mut Session) -> Result<WalRow, SessionError> {
    let r = s.fetch_one("wal", sqlx::query(WAL_SQL)).await?;
    Ok(WalRow {
        records: s.get(&r, "records")?,
        fpi: s.get(&r, "fpi")?,
        bytes: s.get(&r, "bytes")?,
        buffers_full: s.get(&r, "buffers_full")?,
        stats_reset: us_to_ns(s.get(&r, "reset_us")?),
    })
}

/// Lags stay NULL when the standby is idle or caught up (pg-07). A cascading standby has
/// no current WAL position (`pg_current_wal_lsn` fails during recovery), so it measures
/// from what it received.
const REPLICATION_SQL: &str = "\
SELECT coalesce(host(client_addr), 'unix') AS client,
       coalesce(application_name, '') AS application,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                            ELSE pg_current_wal_lsn() END, replay_lsn)::int8 AS data_delay_bytes,
       extract(epoch FROM write_lag)::float8 AS write_lag_s,
       extract(epoch FROM flush_lag)::float8 AS flush_lag_s,
       extract(epoch FROM replay_lag)::float8 AS replay_lag_s
  FROM pg_stat_replication";

/// Reads the standbys' lag.
pub(crate) async fn replication(s: &mut Session) -> Result<Vec<ReplicationRow>, SessionError> {
    let rows = s
        .fetch_all("replication", sqlx::query(REPLICATION_SQL))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ReplicationRow {
                client: arc(s, r, "client")?,
                application: arc(s, r, "application")?,
                data_delay_bytes: s.get(r, "data_delay_bytes")?,
                write_lag_s: s.get(r, "write_lag_s")?,
                flush_lag_s: s.get(r, "flush_lag_s")?,
                replay_lag_s: s.get(r, "replay_lag_s")?,
            })
        })
        .collect()
}

const SLOTS_SQL: &str = "\
SELECT slot_name::text AS name,
       slot_type::text AS slot_type,
       active,
       pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                            ELSE pg_current_wal_lsn() END, restart_lsn)::int8 AS retained_bytes
  FROM pg_replication_slots";

/// Reads the replication slots.
pub(crate) async fn slots(s: &mut Session) -> Result<Vec<SlotRow>, SessionError> {
    let rows = s.fetch_all("slots", sqlx::query(SLOTS_SQL)).await?;
    rows.iter()
        .map(|r| {
            Ok(SlotRow {
                name: arc(s, r, "name")?,
                slot_type: arc(s, r, "slot_type")?,
                active: s.get(r, "active")?,
                retained_bytes: s.get(r, "retained_bytes")?,
            })
        })
        .collect()
}

/// Grouped without the relation: one series per mode and type, not per table.
const LOCKS_SQL: &str = "\
SELECT d.datname::text AS database,
       l.mode::text AS mode,
       l.locktype::text AS lock_type,
       count(*)::int8 AS count
  FROM pg_locks l LEFT JOIN pg_database d ON d.oid = l.database
 GROUP BY 1, 2, 3";

/// Reads the lock counts.
pub(crate) async fn locks(s: &mut Session) -> Result<Vec<LockRow>, SessionError> {
    let rows = s.fetch_all("locks", sqlx::query(LOCKS_SQL)).await?;
    rows.iter()
        .map(|r| {
            Ok(LockRow {
                database: s.get::<Option<String>>(r, "database")?.map(Arc::from),
                mode: arc(s, r, "mode")?,
                lock_type: arc(s, r, "lock_type")?,
                count: s.get(r, "count")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Per-database families.

/// The largest tables first, by `relpages` (from the catalog, so ranking takes no lock;
/// it lags until the next VACUUM or ANALYZE), capped at `$1`. Sizes are computed outside
/// the limited subquery so only the kept rows pay for them.
const TABLES_SQL: &str = "\
WITH locked AS (
    SELECT l.relation FROM pg_locks l
     WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
), top AS (
    SELECT s.*, count(*) OVER () AS total
      FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
     ORDER BY c.relpages DESC, s.relid
     LIMIT $1
)
SELECT t.schemaname::text AS schema,
       t.relname::text AS name,
       t.total::int8 AS total,
       t.seq_scan::int8 AS seq_scan,
       t.idx_scan::int8 AS idx_scan,
       t.n_live_tup::int8 AS live,
       t.n_dead_tup::int8 AS dead,
       t.n_tup_ins::int8 AS inserted,
       t.n_tup_upd::int8 AS updated,
       t.n_tup_del::int8 AS deleted,
       t.n_tup_hot_upd::int8 AS hot_updated,
       t.vacuum_count::int8 AS vacuum_count,
       t.autovacuum_count::int8 AS autovacuum_count,
       t.analyze_count::int8 AS analyze_count,
       t.autoanalyze_count::int8 AS autoanalyze_count,
       CASE WHEN EXISTS (SELECT 1 FROM locked k
                          WHERE k.relation = t.relid
                             OR k.relation IN (SELECT i.indexrelid FROM pg_index i
                                                WHERE i.indrelid = t.relid))
            THEN NULL ELSE pg_total_relation_size(t.relid) END AS size_bytes,
       io.heap_blks_read::int8 AS heap_read,
       io.heap_blks_hit::int8 AS heap_hit,
       io.idx_blks_read::int8 AS idx_read,
       io.idx_blks_hit::int8 AS idx_hit,
       io.toast_blks_read::int8 AS toast_read,
       io.toast_blks_hit::int8 AS toast_hit,
       io.tidx_blks_read::int8 AS tidx_read,
       io.tidx_blks_hit::int8 AS tidx_hit
  FROM top t LEFT JOIN pg_statio_user_tables io ON io.relid = t.relid";

/// Reads at most `limit` tables and how many there are in all.
pub(crate) async fn tables(
    s: &mut Session,
    limit: u32,
) -> Result<(Vec<TableRow>, i64), SessionError> {
    let rows = s
        .fetch_all("tables", sqlx::query(TABLES_SQL).bind(i64::from(limit)))
        .await?;
    let mut total = 0;
    let tables = rows
        .iter()
        .map(|r| {
            total = s.get(r, "total")?;
            Ok(TableRow {
                schema: arc(s, r, "schema")?,
                name: arc(s, r, "name")?,
                seq_scan: s.get(r, "seq_scan")?,
                idx_scan: s.get(r, "idx_scan")?,
                live: s.get(r, "live")?,
                dead: s.get(r, "dead")?,
                inserted: s.get(r, "inserted")?,
                updated: s.get(r, "updated")?,
                deleted: s.get(r, "deleted")?,
                hot_updated: s.get(r, "hot_updated")?,
                vacuum_count: s.get(r, "vacuum_count")?,
                autovacuum_count: s.get(r, "autovacuum_count")?,
                analyze_count: s.get(r, "analyze_count")?,
                autoanalyze_count: s.get(r, "autoanalyze_count")?,
                size_bytes: s.get(r, "size_bytes")?,
                heap_read: s.get(r, "heap_read")?,
                heap_hit: s.get(r, "heap_hit")?,
                idx_read: s.get(r, "idx_read")?,
                idx_hit: s.get(r, "idx_hit")?,
                toast_read: s.get(r, "toast_read")?,
                toast_hit: s.get(r, "toast_hit")?,
                tidx_read: s.get(r, "tidx_read")?,
                tidx_hit: s.get(r, "tidx_hit")?,
            })
        })
        .collect::<Result<Vec<_>, SessionError>>()?;
    Ok((tables, total))
}

/// As [`TABLES_SQL`], for indexes.
const INDEXES_SQL: &str = "\
WITH locked AS (
    SELECT l.relation FROM pg_locks l
     WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
), top AS (
    SELECT s.relid, s.indexrelid, s.schemaname, s.relname, s.indexrelname, s.idx_scan
      FROM pg_stat_user_indexes s JOIN pg_class c ON c.oid = s.indexrelid
     ORDER BY c.relpages DESC, s.indexrelid
     LIMIT $1
)
SELECT t.schemaname::text AS schema,
       t.relname::text AS table_name,
       t.indexrelname::text AS name,
       t.idx_scan::int8 AS scans,
       CASE WHEN EXISTS (SELECT 1 FROM locked k WHERE k.relation IN (t.indexrelid, t.relid))
            THEN NULL ELSE pg_relation_size(t.indexrelid) END AS size_bytes
  FROM top t";

/// Reads at most `limit` indexes.
pub(crate) async fn indexes(s: &mut Session, limit: u32) -> Result<Vec<IndexRow>, SessionError> {
    let rows = s
        .fetch_all("indexes", sqlx::query(INDEXES_SQL).bind(i64::from(limit)))
        .await?;
    rows.iter()
        .map(|r| {
            Ok(IndexRow {
                schema: arc(s, r, "schema")?,
                table: arc(s, r, "table_name")?,
                name: arc(s, r, "name")?,
                scans: s.get(r, "scans")?,
                size_bytes: s.get(r, "size_bytes")?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// pg_stat_statements.

/// The statements query for the extension found in `schema` (already quoted).
///
/// Rows are summed per (database, role, queryid): with `pg_stat_statements.track = all`
/// one statement has a top-level and a nested entry. Rows without a queryid (other
/// roles' statements, seen without `pg_read_all_stats`) are skipped. The text is read
/// only when it is exported, which spares the server reading its query text file.
pub(crate) fn statements_sql(schema: &str, time: TimeColumn, with_text: bool) -> String {
    let (text, showtext) = if with_text {
        ("min(s.query)", "true")
    } else {
        ("NULL::text", "false")
    };
    let time = time.as_str();
    format!(
        "SELECT d.datname::text AS database,
       r.rolname::text AS username,
       s.queryid::int8 AS query_id,
       {text} AS query,
       sum(s.calls)::int8 AS calls,
       sum(s.{time})::float8 AS total_time_ms,
       sum(s.rows)::int8 AS row_count,
       sum(s.shared_blks_hit)::int8 AS shared_blks_hit,
       sum(s.shared_blks_read)::int8 AS shared_blks_read,
       sum(s.shared_blks_dirtied)::int8 AS shared_blks_dirtied,
       sum(s.shared_blks_written)::int8 AS shared_blks_written,
       sum(s.temp_blks_read)::int8 AS temp_blks_read,
       sum(s.temp_blks_written)::int8 AS temp_blks_written
  FROM {schema}.pg_stat_statements({showtext}) s
  JOIN pg_database d ON d.oid = s.dbid
  JOIN pg_roles r ON r.oid = s.userid
 WHERE s.queryid IS NOT NULL
 GROUP BY d.datname, r.rolname, s.queryid
 ORDER BY total_time_ms DESC NULLS LAST
 LIMIT {STATEMENT_ROWS}"
    )
}

/// Reads pg_stat_statements from the extension in `schema`.
pub(crate) async fn statements(
    s: &mut Session,
    schema: &str,
    time: TimeColumn,
    with_text: bool,
) -> Result<Vec<StatementRecord>, SessionError> {
    let sql = statements_sql(schema, time, with_text);
    let rows = s.fetch_all("statements", sqlx::query(&sql)).await?;
    rows.iter()
        .map(|r| {
            Ok(StatementRecord {
                database: arc(s, r, "database")?,
                user: arc(s, r, "username")?,
                query_id: s.get(r, "query_id")?,
                text: s.get(r, "query")?,
                calls: s.get(r, "calls")?,
                total_time_ms: s.get(r, "total_time_ms")?,
                rows: s.get(r, "row_count")?,
                shared_blks_hit: s.get(r, "shared_blks_hit")?,
                shared_blks_read: s.get(r, "shared_blks_read")?,
                shared_blks_dirtied: s.get(r, "shared_blks_dirtied")?,
                shared_blks_written: s.get(r, "shared_blks_written")?,
                temp_blks_read: s.get(r, "temp_blks_read")?,
                temp_blks_written: s.get(r, "temp_blks_written")?,
            })
        })
        .collect()
}

/// Reads when pg_stat_statements was last reset (extension 1.9+, PostgreSQL 14+).
pub(crate) async fn statements_reset(
    s: &mut Session,
    schema: &str,
) -> Result<Option<u64>, SessionError> {
    let sql = format!(
        "SELECT (extract(epoch FROM stats_reset) * 1000000)::int8 AS reset_us \
           FROM {schema}.pg_stat_statements_info"
    );
    let row = s.fetch_one("statements_info", sqlx::query(&sql)).await?;
    Ok(us_to_ns(s.get(&row, "reset_us")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_17_probe_reads_checkpoints_from_pg_stat_checkpointer() {
        let sql = bgwriter_sql(Checkpoints::Checkpointer);
        assert!(sql.contains("pg_stat_checkpointer c"));
        assert!(sql.contains("c.num_timed") && sql.contains("c.buffers_written"));
        assert!(
            !sql.contains("checkpoints_timed::"),
            "no pre-17 column is read"
        );
        assert!(sql.contains("NULL::int8 AS buffers_backend,"));
    }

    #[test]
    fn a_pre_17_probe_reads_everything_from_pg_stat_bgwriter() {
        let sql = bgwriter_sql(Checkpoints::Bgwriter);
        assert!(!sql.contains("pg_stat_checkpointer"));
        assert!(sql.contains("buffers_backend::int8"));
        assert!(!bgwriter_sql(Checkpoints::Absent).contains("checkpoints_timed::"));
    }

    #[test]
    fn statements_sql_follows_the_probed_time_column_and_schema() {
        let sql = statements_sql("\"Mon itor\"", TimeColumn::TotalTime, false);
        assert!(sql.contains("FROM \"Mon itor\".pg_stat_statements(false) s"));
        assert!(sql.contains("sum(s.total_time)::float8"));
        assert!(
            sql.contains("NULL::text AS query"),
            "no text unless exported"
        );
        let sql = statements_sql("\"public\"", TimeColumn::TotalExecTime, true);
        assert!(sql.contains("sum(s.total_exec_time)::float8"));
        assert!(sql.contains("pg_stat_statements(true)") && sql.contains("min(s.query)"));
        assert!(sql.contains("LIMIT 10000"));
    }

    #[test]
    fn identifiers_are_quoted_with_embedded_quotes_doubled() {
        assert_eq!(quote_ident("Reporting\"DB"), "\"Reporting\"\"DB\"");
        assert_eq!(quote_ident("public"), "\"public\"");
    }

    #[test]
    fn only_server_refusals_keep_the_connection() {
        let refused = SessionError::Query {
            query: "q",
            source: sqlx::Error::RowNotFound,
        };
        assert!(!refused.broke_connection());
        let io = SessionError::Query {
            query: "q",
            source: sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
        };
        assert!(io.broke_connection());
        assert!(SessionError::Timeout {
            query: "q",
            timeout: Duration::ZERO
        }
        .broke_connection());
    }

    #[test]
    fn timestamps_before_the_epoch_or_null_have_no_start() {
        assert_eq!(us_to_ns(Some(1_500)), Some(1_500_000));
        assert_eq!(us_to_ns(Some(-1)), None);
        assert_eq!(us_to_ns(None), None);
    }
}
