//! What one database of a server can report: version, privileges, which catalog views and
//! columns exist, and where (and whether) pg_stat_statements works.
//!
//! Query choice follows what the probe found (views and columns), not the version number:
//! a server may lack a view its version should have (a fork, a restricted role) or a
//! database may run an older extension version than the server's library.

use std::collections::BTreeSet;

use super::queries::{quote_ident, Session, SessionError};

/// Reads the server facts and the role's privileges.
const FACTS_SQL: &str = "\
SELECT current_setting('server_version_num')::int4 AS version_num,
       coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) AS superuser,
       pg_has_role(current_user, 'pg_monitor', 'member') AS monitor,
       (SELECT n.nspname::text
          FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = 'pg_stat_statements') AS statements_schema";

/// Lists the columns of the views whose shape changes between versions: the statistics
/// views in `pg_catalog` and pg_stat_statements in its extension's schema (`$1`).
const COLUMNS_SQL: &str = "\
SELECT c.relname::text AS relation, a.attname::text AS col
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
 WHERE a.attnum > 0 AND NOT a.attisdropped
   AND ((c.relnamespace = 'pg_catalog'::regnamespace
         AND c.relname IN ('pg_stat_bgwriter', 'pg_stat_checkpointer', 'pg_stat_wal'))
     OR (c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1)
         AND c.relname IN ('pg_stat_statements', 'pg_stat_statements_info')))";

/// Where the checkpoint counters live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checkpoints {
    /// In `pg_stat_bgwriter`, with the backend write counters (before PostgreSQL 17).
    Bgwriter,
    /// In `pg_stat_checkpointer`; `buffers_backend*` are gone (PostgreSQL 17+).
    Checkpointer,
    /// Neither shape was found: only the background writer's own counters are read.
    Absent,
}

/// Which pg_stat_statements column holds the execution time, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeColumn {
    /// `total_exec_time` (PostgreSQL 13+, extension 1.8+).
    TotalExecTime,
    /// `total_time` (before 13).
    TotalTime,
}

impl TimeColumn {
    /// The column name.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeColumn::TotalExecTime => "total_exec_time",
            TimeColumn::TotalTime => "total_time",
        }
    }
}

/// pg_stat_statements as found in one database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Statements {
    /// The extension is not installed in this database.
    Absent,
    /// Installed, but reading it fails (e.g. the library is not preloaded) or its shape
    /// is unknown; the reason is for the capability report.
    Unusable {
        /// Why.
        reason: String,
    },
    /// Readable.
    Ready {
        /// The extension's schema, quoted for SQL.
        schema: String,
        /// Where the execution time is.
        time: TimeColumn,
        /// Whether `pg_stat_statements_info.stats_reset` exists (extension 1.9+).
        info: bool,
    },
}

/// The capabilities of one database (and its server) as seen by the monitoring role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Probe {
    /// `server_version_num`, e.g. 150004.
    pub version_num: i32,
    /// The role is a superuser.
    pub superuser: bool,
    /// The role is a member of `pg_monitor`.
    pub monitor: bool,
    /// Where the checkpoint counters are.
    pub checkpoints: Checkpoints,
    /// `pg_stat_wal` exists (PostgreSQL 14+).
    pub stat_wal: bool,
    /// pg_stat_statements in this database.
    pub statements: Statements,
}

impl Probe {
    /// Builds a probe from the facts and the `(relation, column)` pairs found.
    pub fn from_catalog(
        version_num: i32,
        superuser: bool,
        monitor: bool,
        statements_schema: Option<&str>,
        columns: &BTreeSet<(String, String)>,
    ) -> Self {
        let has = |rel: &str, col: &str| columns.contains(&(rel.to_owned(), col.to_owned()));

        let checkpoints = if has("pg_stat_bgwriter", "checkpoints_timed")
            && has("pg_stat_bgwriter", "buffers_backend")
        {
            Checkpoints::Bgwriter
        } else if has("pg_stat_checkpointer", "num_timed")
            && has("pg_stat_checkpointer", "buffers_written")
        {
            Checkpoints::Checkpointer
        } else {
            Checkpoints::Absent
        };

        let statements = match statements_schema {
            None => Statements::Absent,
            Some(schema) => {
                let time = if has("pg_stat_statements", "total_exec_time") {
                    Some(TimeColumn::TotalExecTime)
                } else if has("pg_stat_statements", "total_time") {
                    Some(TimeColumn::TotalTime)
                } else {
                    None
                };
                match time {
                    Some(time) if has("pg_stat_statements", "queryid") => Statements::Ready {
                        schema: quote_ident(schema),
                        time,
                        info: has("pg_stat_statements_info", "stats_reset"),
                    },
                    _ => Statements::Unusable {
                        reason: "the pg_stat_statements view has an unknown shape".into(),
                    },
                }
            }
        };

        Self {
            version_num,
            superuser,
            monitor,
            checkpoints,
            stat_wal: has("pg_stat_wal", "wal_bytes"),
            statements,
        }
    }

    /// The role can read every session's and statement's statistics.
    pub fn privileged(&self) -> bool {
        self.superuser || self.monitor
    }
}

/// Probes the database `session` is connected to.
///
/// A pg_stat_statements that exists but cannot be read (not preloaded: pg-02) is recorded
/// as [`Statements::Unusable`], not returned as an error.
///
/// # Errors
/// A failed or timed-out probe query.
pub(crate) async fn probe(session: &mut Session) -> Result<Probe, SessionError> {
    let facts = session.fetch_one("probe", sqlx::query(FACTS_SQL)).await?;
    let version_num: i32 = session.get(&facts, "version_num")?;
    let superuser: bool = session.get(&facts, "superuser")?;
    let monitor: Option<bool> = session.get(&facts, "monitor")?;
    let schema: Option<String> = session.get(&facts, "statements_schema")?;

    let rows = session
        .fetch_all(
            "probe_columns",
            sqlx::query(COLUMNS_SQL).bind(schema.as_deref()),
        )
        .await?;
    let mut columns = BTreeSet::new();
    for row in &rows {
        columns.insert((session.get(row, "relation")?, session.get(row, "col")?));
    }

    let mut probe = Probe::from_catalog(
        version_num,
        superuser,
        monitor.unwrap_or(false),
        schema.as_deref(),
        &columns,
    );

    // The view exists whether or not the library is loaded; only reading it tells.
    // `showtext => false` keeps the check from reading the query text file.
    if let Statements::Ready { schema, .. } = &probe.statements {
        let sql = format!("SELECT 1 FROM {schema}.pg_stat_statements(false) LIMIT 1");
        match session
            .fetch_all("probe_statements", sqlx::query(&sql))
            .await
        {
            Ok(_) => {}
            Err(SessionError::Query { source, .. }) if is_server_error(&source) => {
                let reason = source
                    .as_database_error()
                    .map(|e| e.message().to_owned())
                    .unwrap_or_default();
                probe.statements = Statements::Unusable { reason };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(probe)
}

fn is_server_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(_))
}

/// One database of the server as discovery sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Discovered {
    /// Its name.
    pub name: String,
    /// Whether the role has `CONNECT` on it.
    pub can_connect: bool,
}

/// Lists the databases discovery may consider: never templates nor databases that refuse
/// connections (pg-03).
const DISCOVER_SQL: &str = "\
SELECT datname::text AS name, has_database_privilege(oid, 'CONNECT') AS can_connect
  FROM pg_database
 WHERE datallowconn AND NOT datistemplate
 ORDER BY datname";

/// Lists the server's databases that accept connections.
///
/// # Errors
/// A failed or timed-out query.
pub(crate) async fn discover(session: &mut Session) -> Result<Vec<Discovered>, SessionError> {
    let rows = session
        .fetch_all("discover", sqlx::query(DISCOVER_SQL))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Discovered {
                name: session.get(row, "name")?,
                can_connect: session
                    .get::<Option<bool>>(row, "can_connect")?
                    .unwrap_or(false),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(pairs: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(r, c)| ((*r).to_owned(), (*c).to_owned()))
            .collect()
    }

    #[test]
    fn postgres_17_catalog_selects_the_checkpointer_view() {
        let cols = columns(&[
            ("pg_stat_bgwriter", "buffers_clean"),
            ("pg_stat_bgwriter", "buffers_alloc"),
            ("pg_stat_checkpointer", "num_timed"),
            ("pg_stat_checkpointer", "num_requested"),
            ("pg_stat_checkpointer", "buffers_written"),
            ("pg_stat_wal", "wal_bytes"),
        ]);
        let probe = Probe::from_catalog(170002, false, true, None, &cols);
        assert_eq!(probe.checkpoints, Checkpoints::Checkpointer);
        assert!(probe.stat_wal);
        assert_eq!(probe.statements, Statements::Absent);
    }

    #[test]
    fn postgres_13_catalog_reads_checkpoints_from_bgwriter_and_has_no_wal_view() {
        let cols = columns(&[
            ("pg_stat_bgwriter", "checkpoints_timed"),
            ("pg_stat_bgwriter", "buffers_backend"),
            ("pg_stat_statements", "queryid"),
            ("pg_stat_statements", "total_exec_time"),
        ]);
        let probe = Probe::from_catalog(130010, true, false, Some("public"), &cols);
        assert_eq!(probe.checkpoints, Checkpoints::Bgwriter);
        assert!(!probe.stat_wal);
        assert_eq!(
            probe.statements,
            Statements::Ready {
                schema: "\"public\"".into(),
                time: TimeColumn::TotalExecTime,
                info: false
            }
        );
        assert!(probe.privileged());
    }

    #[test]
    fn statements_before_13_use_total_time_and_odd_schemas_are_quoted() {
        let cols = columns(&[
            ("pg_stat_statements", "queryid"),
            ("pg_stat_statements", "total_time"),
        ]);
        let probe = Probe::from_catalog(120000, false, false, Some("Mon\"itor"), &cols);
        assert_eq!(
            probe.statements,
            Statements::Ready {
                schema: "\"Mon\"\"itor\"".into(),
                time: TimeColumn::TotalTime,
                info: false
            }
        );
        assert!(!probe.privileged());
    }

    #[test]
    fn an_extension_without_a_known_time_column_is_unusable_not_an_error() {
        let cols = columns(&[("pg_stat_statements", "queryid")]);
        let probe = Probe::from_catalog(150000, false, true, Some("public"), &cols);
        assert!(matches!(probe.statements, Statements::Unusable { .. }));
        assert_eq!(probe.checkpoints, Checkpoints::Absent);
    }
}
