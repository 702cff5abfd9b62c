//! The monitored estate: throwaway PostgreSQL and MariaDB servers sized like a large
//! production server (many databases, thousands of tables with a primary key and an
//! index, thousands of distinct statements), a monitoring user per tool, a light write
//! load, and the statement churn generator of the memory run.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dbcollector_tests::{MariaDbOptions, MariaDbServer, PgOptions, PgServer};
use sqlx::{Connection as _, Executor as _, MySqlConnection, PgConnection};

/// The database of PostgreSQL that holds the tables.
pub const PG_TABLE_DATABASE: &str = "app01";

/// The monitoring users (PostgreSQL roles and MariaDB users), one per tool, so the
/// servers can tell their sessions apart.
pub const WORKER_USER: &str = "dbc_worker";
/// The postgres_exporter's role.
pub const PG_EXPORTER_USER: &str = "dbc_pgexp";
/// The mysqld_exporter's user.
pub const MY_EXPORTER_USER: &str = "dbc_myexp";
/// The user of the write load and the statement generators.
pub const APP_USER: &str = "postgres";

/// The password of every monitoring user (throwaway servers on loopback).
pub const PASSWORD: &str = "load-bench-pw";

/// The size of the estate.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    /// PostgreSQL databases besides `postgres`.
    pub pg_databases: usize,
    /// MariaDB schemas.
    pub my_schemas: usize,
    /// Tables per server (all in [`PG_TABLE_DATABASE`] on PostgreSQL, spread over the
    /// schemas on MariaDB), each with a primary key and one secondary index.
    pub tables: usize,
    /// Distinct statements run once per server, so pg_stat_statements and the digest
    /// summary hold about this many (plus the monitors' own).
    pub statements: usize,
}

/// The running servers.
#[derive(Debug)]
pub struct Estate {
    /// PostgreSQL.
    pub pg: PgServer,
    /// MariaDB.
    pub my: MariaDbServer,
    /// What was created.
    pub size: Size,
}

/// Tables are named `t0000`...: the name of table `i`.
fn table(i: usize) -> String {
    format!("t{i:04}")
}

/// PostgreSQL database `i` (1-based).
pub fn pg_database(i: usize) -> String {
    format!("app{i:02}")
}

/// MariaDB schema `i` (1-based).
fn my_schema(i: usize) -> String {
    format!("app{i:02}")
}

/// The MariaDB schema holding table `i`.
fn my_schema_of(size: &Size, i: usize) -> String {
    my_schema(i % size.my_schemas + 1)
}

impl Estate {
    /// Starts both servers and creates the estate, the users and the statements.
    ///
    /// # Errors
    /// When a server does not start or a statement fails.
    pub async fn create(size: Size) -> anyhow::Result<Self> {
        let (pg, my) = tokio::try_join!(start_pg(), start_my())?;
        let estate = Self { pg, my, size };
        tokio::try_join!(estate.create_pg(), estate.create_my())?;
        Ok(estate)
    }

    async fn create_pg(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let admin = self.pg.admin_pool().await?;
        for user in [WORKER_USER, PG_EXPORTER_USER] {
            let sql = format!(
                "CREATE ROLE {user} LOGIN PASSWORD '{PASSWORD}'; GRANT pg_monitor TO {user}"
            );
            sqlx::raw_sql(&sql)
                .execute(&admin)
                .await
                .with_context(|| format!("creating role {user}"))?;
        }
        for i in 1..=self.size.pg_databases {
            admin
                .execute(format!("CREATE DATABASE {}", pg_database(i)).as_str())
                .await?;
        }
        admin.close().await;

        let mut conn = self.pg_app().await?;
        for chunk in (0..self.size.tables).collect::<Vec<_>>().chunks(100) {
            let mut ddl = String::new();
            for &i in chunk {
                let t = table(i);
                let _ = write!(
                    ddl,
                    "CREATE TABLE {t} (id int PRIMARY KEY, k int NOT NULL, v int NOT NULL, \
                     c0 int, c1 int, c2 int, c3 int, c4 int, note text); \
                     CREATE INDEX {t}_k ON {t} (k); \
                     INSERT INTO {t} (id, k, v, c0, c1, c2, c3, c4, note) \
                     SELECT g, g % 10, 0, g, g, g, g, g, 'row ' || g FROM generate_series(1, 20) g;"
                );
            }
            sqlx::raw_sql(&ddl)
                .execute(&mut conn)
                .await
                .context("creating tables")?;
        }
        // Only the statements below (and the monitors') are to be in the view.
        conn.execute("SELECT pg_stat_statements_reset()").await?;
        for chunk in pg_statements(&self.size).chunks(200) {
            sqlx::raw_sql(&chunk.join(";")).execute(&mut conn).await?;
        }
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_statements")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        tracing::info!(statements = n, elapsed = ?started.elapsed(), "postgresql estate ready");
        Ok(())
    }

    async fn create_my(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let admin = self.my.admin_pool().await?;
        for user in [WORKER_USER, MY_EXPORTER_USER] {
            self.my.create_user(user, PASSWORD).await?;
            admin
                .execute(
                    format!(
                        "GRANT PROCESS, REPLICATION CLIENT, SLAVE MONITOR, BINLOG MONITOR, \
                         REPLICATION MASTER ADMIN, SELECT ON *.* TO '{user}'@'%'"
                    )
                    .as_str(),
                )
                .await
                .with_context(|| format!("granting {user}"))?;
        }
        for i in 1..=self.size.my_schemas {
            admin
                .execute(format!("CREATE DATABASE {}", my_schema(i)).as_str())
                .await?;
        }
        admin.close().await;

        // Two sessions create the tables (each CREATE TABLE waits for its file).
        let halves = [0, 1].map(|half| {
            let size = self.size;
            let options = self.my.connect_options("root", None, Some("app01"));
            async move {
                let mut conn = MySqlConnection::connect_with(&options).await?;
                for i in (half..size.tables).step_by(2) {
                    let (s, t) = (my_schema_of(&size, i), table(i));
                    let values: Vec<String> = (1..=20)
                        .map(|g| {
                            format!("({g}, {}, 0, {g}, {g}, {g}, {g}, {g}, 'row {g}')", g % 10)
                        })
                        .collect();
                    conn.execute(
                        format!(
                            "CREATE TABLE {s}.{t} (id INT PRIMARY KEY, k INT NOT NULL, \
                             v INT NOT NULL, c0 INT, c1 INT, c2 INT, c3 INT, c4 INT, \
                             note VARCHAR(32), KEY {t}_k (k)) ENGINE=InnoDB"
                        )
                        .as_str(),
                    )
                    .await?;
                    conn.execute(
                        format!("INSERT INTO {s}.{t} VALUES {}", values.join(",")).as_str(),
                    )
                    .await?;
                }
                conn.close().await?;
                anyhow::Ok(())
            }
        });
        let [a, b] = halves;
        tokio::try_join!(a, b).context("creating mariadb tables")?;

        // Digests are kept only for statements sent over the text protocol, one per call,
        // from a session with a default schema (mysqld_exporter drops the others).
        let mut conn = self.my_app().await?;
        conn.execute("TRUNCATE performance_schema.events_statements_summary_by_digest")
            .await?;
        for statement in my_statements(&self.size) {
            conn.execute(statement.as_str()).await?;
        }
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM performance_schema.events_statements_summary_by_digest",
        )
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        tracing::info!(digests = n, elapsed = ?started.elapsed(), "mariadb estate ready");
        Ok(())
    }

    /// A session of the application user in the tables' database.
    async fn pg_app(&self) -> anyhow::Result<PgConnection> {
        let options = self
            .pg
            .admin_options()
            .database(PG_TABLE_DATABASE)
            .application_name("load-bench-app");
        Ok(PgConnection::connect_with(&options).await?)
    }

    /// One persistent session of [`Self::pg_app`], as a pool (a pool executes from a
    /// spawned task without lifetime trouble).
    async fn pg_app_pool(&self) -> anyhow::Result<sqlx::PgPool> {
        let options = self
            .pg
            .admin_options()
            .database(PG_TABLE_DATABASE)
            .application_name("load-bench-app");
        Ok(persistent(sqlx::pool::PoolOptions::new())
            .connect_with(options)
            .await?)
    }

    /// One persistent session of [`Self::my_app`], as a pool.
    async fn my_app_pool(&self) -> anyhow::Result<sqlx::MySqlPool> {
        let options = self.my.connect_options("root", None, Some("app01"));
        Ok(persistent(sqlx::pool::PoolOptions::new())
            .connect_with(options)
            .await?)
    }

    /// A session of the application user with a default schema.
    async fn my_app(&self) -> anyhow::Result<MySqlConnection> {
        let options = self.my.connect_options("root", None, Some("app01"));
        Ok(MySqlConnection::connect_with(&options).await?)
    }

    /// Starts the light write load: on each server, one session updating a row of one
    /// table every `period`, cycling through the tables, with the statements already in
    /// the estate (so it adds no statement). Stops when `stop` is set.
    ///
    /// # Errors
    /// When a session cannot be opened.
    pub async fn write_load(
        &self,
        period: Duration,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let pg = self.pg_app_pool().await?;
        let my = self.my_app_pool().await?;
        let size = self.size;
        Ok(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = i % size.tables;
                let (s, name) = (my_schema_of(&size, t), table(t));
                let pg_update = format!("UPDATE {name} SET v = v + 1 WHERE id = 2");
                let my_update = format!("UPDATE {s}.{name} SET v = v + 1 WHERE id = 2");
                if let Err(e) = sqlx::raw_sql(&pg_update).execute(&pg).await {
                    tracing::warn!(error = &e as &dyn std::error::Error, "pg write load");
                }
                if let Err(e) = my.execute(my_update.as_str()).await {
                    tracing::warn!(error = &e as &dyn std::error::Error, "mariadb write load");
                }
                i += 1;
            }
        }))
    }

    /// Starts the churn generator on PostgreSQL: `sessions` sessions issuing statements
    /// whose normalized forms all differ (table × selected columns × filter column), in
    /// multi-statement batches, at about `rate` statements per second in all, until
    /// `stop` is set. The returned counter holds the statements issued so far.
    ///
    /// # Errors
    /// When a session cannot be opened.
    pub async fn churn(
        &self,
        rate: u64,
        sessions: usize,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<(Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>)> {
        const BATCH: u64 = 100;
        let issued = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let tables = self.size.tables as u64;
        let sessions = sessions.max(1) as u64;
        for s in 0..sessions {
            let conn = self.pg_app_pool().await?;
            let (issued, stop) = (issued.clone(), stop.clone());
            let period =
                Duration::from_secs_f64(BATCH as f64 * sessions as f64 / rate.max(1) as f64);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Session s takes every sessions-th key.
                let mut key = s;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let mut sql = String::new();
                    for _ in 0..BATCH {
                        let _ = write!(sql, "{};", churn_statement(key, tables));
                        key += sessions;
                    }
                    match sqlx::raw_sql(&sql).execute(&conn).await {
                        Ok(_) => {
                            issued.fetch_add(BATCH, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(error = &e as &dyn std::error::Error, "churn batch");
                        }
                    }
                }
            }));
        }
        Ok((issued, tasks))
    }
}

/// A pool of exactly one session, opened at once and kept.
fn persistent<DB: sqlx::Database>(
    options: sqlx::pool::PoolOptions<DB>,
) -> sqlx::pool::PoolOptions<DB> {
    options
        .min_connections(1)
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
}

async fn start_pg() -> anyhow::Result<PgServer> {
    PgServer::start(PgOptions {
        extra_conf: vec![
            // ~5000 estate statements plus the monitors' own stay far from eviction.
            "pg_stat_statements.max = 10000".into(),
            "max_connections = 200".into(),
            "shared_buffers = 128MB".into(),
        ],
        ..PgOptions::default()
    })
    .await
    .context("starting postgresql")
}

async fn start_my() -> anyhow::Result<MariaDbServer> {
    let args = [
        // Every digest kept (the default sizes keep a few thousand).
        "--performance-schema-digests-size=20000",
        // 2000 tables open at once, each with its I/O and lock summaries.
        "--table-open-cache=4000",
        "--table-definition-cache=4000",
        "--open-files-limit=20000",
        "--performance-schema-max-table-instances=4000",
        "--performance-schema-max-table-handles=8000",
        "--performance-schema-max-index-stat=10000",
        "--performance-schema-max-table-lock-stat=4000",
        "--max-connections=200",
        "--innodb-buffer-pool-size=128M",
    ];
    MariaDbServer::start(MariaDbOptions {
        extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..MariaDbOptions::default()
    })
    .await
    .context("starting mariadb")
}

/// The estate's distinct PostgreSQL statements: a lookup and an update per table, then
/// counts by the indexed column until there are `size.statements` (at most three per
/// table).
fn pg_statements(size: &Size) -> Vec<String> {
    let n = size.tables;
    (0..size.statements)
        .map(|i| match i / n {
            0 => format!("SELECT v FROM {} WHERE id = 1", table(i % n)),
            1 => format!("UPDATE {} SET v = v + 1 WHERE id = 2", table(i % n)),
            _ => format!("SELECT count(*) FROM {} WHERE k = 3", table(i % n)),
        })
        .collect()
}

/// The same statements on MariaDB, on schema-qualified tables.
fn my_statements(size: &Size) -> Vec<String> {
    let n = size.tables;
    (0..size.statements)
        .map(|i| {
            let t = format!("{}.{}", my_schema_of(size, i % n), table(i % n));
            match i / n {
                0 => format!("SELECT v FROM {t} WHERE id = 1"),
                1 => format!("UPDATE {t} SET v = v + 1 WHERE id = 2"),
                _ => format!("SELECT count(*) FROM {t} WHERE k = 3"),
            }
        })
        .collect()
}

/// Columns a churn statement may select or filter on.
const CHURN_COLUMNS: [&str; 5] = ["c0", "c1", "c2", "c3", "c4"];

/// Churn statement `key`: distinct normalized forms for keys below
/// `tables` × 155 select lists × 6 filters (1.86M with 2000 tables). Constants are
/// normalized away by the server, so the difference is in the table, the list of
/// selected columns (one to three, repetition and order counting) and the filter column.
pub fn churn_statement(key: u64, tables: u64) -> String {
    let t = key % tables.max(1);
    let rest = key / tables.max(1);
    // 5 + 25 + 125 select lists.
    let list = rest % 155;
    let filter = (rest / 155) % 6;
    let (len, mut digits) = match list {
        0..5 => (1, list),
        5..30 => (2, list - 5),
        _ => (3, list - 30),
    };
    let mut columns = Vec::with_capacity(3);
    for _ in 0..len {
        columns.push(CHURN_COLUMNS[(digits % 5) as usize]);
        digits /= 5;
    }
    let filter = match filter {
        0 => String::new(),
        f => format!(" WHERE {} = 1", CHURN_COLUMNS[(f - 1) as usize]),
    };
    format!(
        "SELECT {} FROM {}{filter}",
        columns.join(", "),
        table(t as usize)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn churn_statements_differ_across_the_whole_key_space() {
        let tables = 7;
        let space = tables * 155 * 6;
        let distinct: HashSet<String> = (0..space).map(|k| churn_statement(k, tables)).collect();
        assert_eq!(distinct.len() as u64, space);
        assert_eq!(churn_statement(0, tables), "SELECT c0 FROM t0000");
        assert_eq!(
            churn_statement(space - 1, tables),
            "SELECT c4, c4, c4 FROM t0006 WHERE c4 = 1"
        );
    }

    #[test]
    fn the_estate_statements_are_distinct_and_as_many_as_asked() {
        let size = Size {
            pg_databases: 2,
            my_schemas: 3,
            tables: 10,
            statements: 25,
        };
        for statements in [pg_statements(&size), my_statements(&size)] {
            let distinct: HashSet<&String> = statements.iter().collect();
            assert_eq!(distinct.len(), 25);
        }
    }
}
