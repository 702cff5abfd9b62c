//! The SQL of the MySQL receiver and the decoding of its rows into plain structs.
//!
//! Queries without parameters go over the text protocol (no prepare round trip, and
//! `SHOW` needs no prepared-statement support); the few with parameters are prepared and
//! cached per connection. Decoding is lenient about integer types: performance_schema
//! counters are `BIGINT UNSIGNED`, `SHOW` output is text, and the two flavors disagree on
//! some column types.

use std::sync::Arc;

use sqlx::mysql::MySqlRow;
use sqlx::{Column, Executor, MySqlConnection, Row, ValueRef};

use super::mapping::{DigestRow, IoWaitRow, NameValue, ReplicaRow, SYSTEM_SCHEMAS};
use super::probe::ReplicaSyntax;
use crate::receivers::Databases;

/// The statement digest table.
pub const DIGEST_TABLE: &str = "events_statements_summary_by_digest";
/// Per-table I/O waits.
pub const TABLE_IO_TABLE: &str = "table_io_waits_summary_by_table";
/// Per-index I/O waits.
pub const INDEX_IO_TABLE: &str = "table_io_waits_summary_by_index_usage";

/// Most digest rows read per scrape, slowest first.
pub const MAX_DIGESTS: u32 = 10_000;
/// Most I/O wait rows read per family and scrape, whatever the relation limit.
const MAX_IO_ROWS: u64 = 100_000;

// ---- Decoding -------------------------------------------------------------------------

/// An integer column of any width, signedness or text form; NULL is `None`.
fn num(row: &MySqlRow, idx: usize) -> Result<Option<i128>, sqlx::Error> {
    if row.try_get_raw(idx)?.is_null() {
        return Ok(None);
    }
    if let Ok(v) = row.try_get::<u64, _>(idx) {
        return Ok(Some(i128::from(v)));
    }
    if let Ok(v) = row.try_get::<i64, _>(idx) {
        return Ok(Some(i128::from(v)));
    }
    let text = text(row, idx)?.unwrap_or_default();
    text.trim()
        .parse::<i128>()
        .map(Some)
        .map_err(|e| sqlx::Error::ColumnDecode {
            index: idx.to_string(),
            source: Box::new(e),
        })
}

/// A non-negative counter; NULL reads as 0 (performance_schema never has NULL counters).
fn counter(row: &MySqlRow, idx: usize) -> Result<u64, sqlx::Error> {
    Ok(num(row, idx)?.map_or(0, |v| u64::try_from(v.max(0)).unwrap_or(u64::MAX)))
}

/// A text column. Some information_schema and `SHOW` columns carry a binary collation
/// that sqlx's type check refuses, though their bytes are UTF-8 text.
fn text(row: &MySqlRow, idx: usize) -> Result<Option<String>, sqlx::Error> {
    row.try_get_unchecked::<Option<String>, _>(idx)
}

/// The index of the first of `names` the row has (case-insensitive).
fn column(row: &MySqlRow, names: &[&str]) -> Option<usize> {
    names.iter().find_map(|n| {
        row.columns()
            .iter()
            .position(|c| c.name().eq_ignore_ascii_case(n))
    })
}

/// `(?, ?, ...)` with `n` placeholders; `(NULL)` (matches nothing) when `n` is 0.
fn placeholders(n: usize) -> String {
    if n == 0 {
        return "(NULL)".to_owned();
    }
    let mut s = String::with_capacity(n * 3 + 1);
    s.push('(');
    for i in 0..n {
        s.push_str(if i == 0 { "?" } else { ", ?" });
    }
    s.push(')');
    s
}

// ---- Probe ------------------------------------------------------------------------------

/// `VERSION()` and `CURRENT_USER()`.
pub async fn version(conn: &mut MySqlConnection) -> Result<(String, String), sqlx::Error> {
    let row = conn.fetch_one("SELECT VERSION(), CURRENT_USER()").await?;
    Ok((
        text(&row, 0)?.unwrap_or_default(),
        text(&row, 1)?.unwrap_or_default(),
    ))
}

/// `@@performance_schema`; fails on servers built without it.
pub async fn performance_schema(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
    let row = conn.fetch_one("SELECT @@performance_schema").await?;
    Ok(num(&row, 0)?.unwrap_or(0) != 0)
}

/// `(table, column)` of the performance_schema tables the receiver reads, as far as the
/// user may see them.
pub async fn ps_columns(conn: &mut MySqlConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    let sql = format!(
        "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = 'performance_schema' AND TABLE_NAME IN ('{DIGEST_TABLE}', \
         '{TABLE_IO_TABLE}', '{INDEX_IO_TABLE}')"
    );
    let rows = conn.fetch_all(sql.as_str()).await?;
    rows.iter()
        .map(|r| {
            Ok((
                text(r, 0)?.unwrap_or_default(),
                text(r, 1)?.unwrap_or_default(),
            ))
        })
        .collect()
}

/// Whether the `statements_digest` consumer is enabled; `None` when it is not listed.
pub async fn digest_consumer(conn: &mut MySqlConnection) -> Result<Option<bool>, sqlx::Error> {
    let row = conn
        .fetch_optional(
            "SELECT ENABLED FROM performance_schema.setup_consumers \
             WHERE NAME = 'statements_digest'",
        )
        .await?;
    match row {
        Some(r) => Ok(text(&r, 0)?.map(|v| v.eq_ignore_ascii_case("YES"))),
        None => Ok(None),
    }
}

/// The global privileges of `grantee` (`'user'@'host'`).
pub async fn privileges(
    conn: &mut MySqlConnection,
    grantee: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = ?",
    )
    .bind(grantee)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok(text(r, 0)?.unwrap_or_default()))
        .collect()
}

// ---- Server-wide ------------------------------------------------------------------------

async fn name_values(conn: &mut MySqlConnection, sql: &str) -> Result<Vec<NameValue>, sqlx::Error> {
    let rows = conn.fetch_all(sql).await?;
    rows.iter()
        .map(|r| {
            Ok(NameValue {
                name: text(r, 0)?.unwrap_or_default(),
                value: text(r, 1)?.unwrap_or_default(),
            })
        })
        .collect()
}

/// `SHOW GLOBAL STATUS`.
pub async fn global_status(conn: &mut MySqlConnection) -> Result<Vec<NameValue>, sqlx::Error> {
    name_values(conn, "SHOW GLOBAL STATUS").await
}

/// `Uptime` alone, for targets that do not read the whole status.
pub async fn uptime(conn: &mut MySqlConnection) -> Result<Vec<NameValue>, sqlx::Error> {
    name_values(conn, "SHOW GLOBAL STATUS WHERE Variable_name = 'Uptime'").await
}

/// The global variables the receiver reports.
pub async fn global_variables(conn: &mut MySqlConnection) -> Result<Vec<NameValue>, sqlx::Error> {
    name_values(
        conn,
        "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('max_connections', \
         'innodb_buffer_pool_size')",
    )
    .await
}

/// Replica status, one row per channel; none when the server is not a replica. Both
/// column spellings are read: MySQL 8.0.22+ says `Seconds_Behind_Source`, MariaDB and
/// older MySQL `Seconds_Behind_Master` (case my-02).
pub async fn replica_status(
    conn: &mut MySqlConnection,
    syntax: ReplicaSyntax,
) -> Result<Vec<ReplicaRow>, sqlx::Error> {
    let sql = match syntax {
        ReplicaSyntax::Replica => "SHOW REPLICA STATUS",
        ReplicaSyntax::Slave => "SHOW SLAVE STATUS",
    };
    let rows = conn.fetch_all(sql).await?;
    rows.iter()
        .map(|r| {
            let get_text = |names: &[&str]| match column(r, names) {
                Some(i) => text(r, i),
                None => Ok(None),
            };
            let get_num = |names: &[&str]| match column(r, names) {
                Some(i) => Ok(num(r, i)?.and_then(|v| i64::try_from(v).ok())),
                None => Ok::<_, sqlx::Error>(None),
            };
            Ok(ReplicaRow {
                channel: get_text(&["Channel_Name", "Connection_name"])?,
                io_running: get_text(&["Replica_IO_Running", "Slave_IO_Running"])?,
                sql_running: get_text(&["Replica_SQL_Running", "Slave_SQL_Running"])?,
                seconds_behind: get_num(&["Seconds_Behind_Source", "Seconds_Behind_Master"])?,
                sql_delay: get_num(&["SQL_Delay"])?,
            })
        })
        .collect()
}

// ---- Per schema -------------------------------------------------------------------------

/// Table (`by_index` false) or index I/O waits of the schemas `databases` selects,
/// largest total wait first. System schemas are excluded in SQL; discovery patterns are
/// applied by the caller. `per_schema_limit` bounds the rows read.
pub async fn io_waits(
    conn: &mut MySqlConnection,
    by_index: bool,
    databases: &Databases,
    per_schema_limit: u32,
) -> Result<Vec<IoWaitRow>, sqlx::Error> {
    let (table, index_col, index_filter) = if by_index {
        (INDEX_IO_TABLE, "INDEX_NAME", " AND INDEX_NAME IS NOT NULL")
    } else {
        (TABLE_IO_TABLE, "NULL", "")
    };
    let system = SYSTEM_SCHEMAS.map(|s| format!("'{s}'")).join(", ");
    let (listed, limit): (&[Arc<str>], u64) = match databases {
        Databases::Listed(list) => (list, u64::from(per_schema_limit) * list.len() as u64),
        Databases::Discover { .. } => (&[], MAX_IO_ROWS),
    };
    let schema_filter = match databases {
        Databases::Listed(list) => format!(" AND OBJECT_SCHEMA IN {}", placeholders(list.len())),
        Databases::Discover { .. } => String::new(),
    };
    let sql = format!(
        "SELECT OBJECT_SCHEMA, OBJECT_NAME, {index_col}, COUNT_FETCH, COUNT_INSERT, \
         COUNT_UPDATE, COUNT_DELETE, SUM_TIMER_FETCH, SUM_TIMER_INSERT, SUM_TIMER_UPDATE, \
         SUM_TIMER_DELETE, SUM_TIMER_WAIT FROM performance_schema.{table} \
         WHERE OBJECT_TYPE = 'TABLE' AND OBJECT_SCHEMA NOT IN ({system}){schema_filter}\
         {index_filter} ORDER BY SUM_TIMER_WAIT DESC LIMIT {}",
        limit.min(MAX_IO_ROWS)
    );

    let rows = if listed.is_empty() {
        conn.fetch_all(sql.as_str()).await?
    } else {
        let mut q = sqlx::query(&sql);
        for schema in listed {
            q = q.bind(&**schema);
        }
        q.fetch_all(&mut *conn).await?
    };

    rows.iter()
        .map(|r| {
            Ok(IoWaitRow {
                schema: Arc::from(text(r, 0)?.unwrap_or_default()),
                table: Arc::from(text(r, 1)?.unwrap_or_default()),
                index: text(r, 2)?.map(Arc::from),
                count: [
                    counter(r, 3)?,
                    counter(r, 4)?,
                    counter(r, 5)?,
                    counter(r, 6)?,
                ],
                time_ps: [
                    counter(r, 7)?,
                    counter(r, 8)?,
                    counter(r, 9)?,
                    counter(r, 10)?,
                ],
                total_wait_ps: counter(r, 11)?,
            })
        })
        .collect()
}

// ---- Statements -------------------------------------------------------------------------

/// Statement digests, slowest first, at most [`MAX_DIGESTS`]. With `Listed` databases only
/// those schemas and statements without a default schema are read; discovery patterns are
/// applied by the caller. `with_text` reads `DIGEST_TEXT` (normalized, literals already
/// replaced by the server), `with_cpu` reads `SUM_CPU_TIME` (MySQL 8.0.28+).
pub async fn digests(
    conn: &mut MySqlConnection,
    databases: &Databases,
    with_text: bool,
    with_cpu: bool,
) -> Result<Vec<DigestRow>, sqlx::Error> {
    let text_col = if with_text { "DIGEST_TEXT" } else { "NULL" };
    let cpu_col = if with_cpu { "SUM_CPU_TIME" } else { "NULL" };
    let (listed, filter): (&[Arc<str>], String) = match databases {
        Databases::Listed(list) => (
            list,
            format!(
                " WHERE SCHEMA_NAME IS NULL OR SCHEMA_NAME IN {}",
                placeholders(list.len())
            ),
        ),
        Databases::Discover { .. } => (&[], String::new()),
    };
    let sql = format!(
        "SELECT SCHEMA_NAME, DIGEST, {text_col}, COUNT_STAR, SUM_TIMER_WAIT, SUM_LOCK_TIME, \
         SUM_ERRORS, SUM_ROWS_AFFECTED, SUM_ROWS_SENT, SUM_ROWS_EXAMINED, \
         SUM_CREATED_TMP_DISK_TABLES, SUM_CREATED_TMP_TABLES, SUM_SORT_ROWS, \
         SUM_NO_INDEX_USED, {cpu_col} FROM performance_schema.{DIGEST_TABLE}{filter} \
         ORDER BY SUM_TIMER_WAIT DESC LIMIT {MAX_DIGESTS}"
    );

    let rows = if listed.is_empty() {
        conn.fetch_all(sql.as_str()).await?
    } else {
        let mut q = sqlx::query(&sql);
        for schema in listed {
            q = q.bind(&**schema);
        }
        q.fetch_all(&mut *conn).await?
    };

    rows.iter()
        .map(|r| {
            Ok(DigestRow {
                schema: text(r, 0)?.map(Arc::from),
                digest: text(r, 1)?,
                text: text(r, 2)?,
                count_star: counter(r, 3)?,
                sum_timer_wait: counter(r, 4)?,
                sum_lock_time: counter(r, 5)?,
                sum_errors: counter(r, 6)?,
                sum_rows_affected: counter(r, 7)?,
                sum_rows_sent: counter(r, 8)?,
                sum_rows_examined: counter(r, 9)?,
                sum_created_tmp_disk_tables: counter(r, 10)?,
                sum_created_tmp_tables: counter(r, 11)?,
                sum_sort_rows: counter(r, 12)?,
                sum_no_index_used: counter(r, 13)?,
                sum_cpu_time: num(r, 14)?.map(|v| u64::try_from(v.max(0)).unwrap_or(u64::MAX)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_match_the_bind_count_and_never_produce_empty_in_lists() {
        assert_eq!(placeholders(3), "(?, ?, ?)");
        assert_eq!(placeholders(1), "(?)");
        assert_eq!(placeholders(0), "(NULL)");
    }
}
