//! Database connections as the servers count them: sessions opened (PostgreSQL
//! `pg_stat_database.sessions`, MariaDB's `Connections` status) and sessions held per
//! user (`pg_stat_activity`, the process list).
//!
//! The watcher's own sessions, the write load's and the generators' are opened before a
//! measurement starts and held through it, so the sessions opened during a measurement
//! are the measured tool's.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row as _;

use super::estate::Estate;

/// Sessions per user at one moment.
pub type Held = BTreeMap<String, i64>;

/// One persistent session per server, polling the counts.
#[derive(Debug)]
pub struct Watcher {
    pg: PgPool,
    my: MySqlPool,
}

/// Sessions opened so far, per server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opened {
    /// Sum of `pg_stat_database.sessions` over every database.
    pub pg: i64,
    /// MariaDB `Connections`.
    pub my: i64,
}

impl Watcher {
    /// Opens the watching sessions.
    ///
    /// # Errors
    /// When a server cannot be reached.
    pub async fn connect(estate: &Estate) -> anyhow::Result<Self> {
        let pg = PgPoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                estate
                    .pg
                    .admin_options()
                    .application_name("load-bench-watch"),
            )
            .await?;
        let my = MySqlPoolOptions::new()
            .min_connections(1)
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(estate.my.admin_options())
            .await?;
        Ok(Self { pg, my })
    }

    /// Sessions opened on both servers since they started.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn opened(&self) -> anyhow::Result<Opened> {
        let pg: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(sessions), 0)::int8 FROM pg_stat_database")
                .fetch_one(&self.pg)
                .await?;
        // SHOW over the text protocol: not every SHOW can be prepared.
        let row = sqlx::raw_sql("SHOW GLOBAL STATUS LIKE 'Connections'")
            .fetch_one(&self.my)
            .await?;
        let my: String = row.try_get(1)?;
        Ok(Opened {
            pg,
            my: my.trim().parse()?,
        })
    }

    /// The servers' versions: PostgreSQL's `server_version`, MariaDB's `VERSION()`.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn versions(&self) -> anyhow::Result<(String, String)> {
        let pg: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.pg)
            .await?;
        let my: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&self.my)
            .await?;
        Ok((pg, my))
    }

    /// PostgreSQL client sessions per user now.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn pg_held(&self) -> anyhow::Result<Held> {
        let rows = sqlx::query(
            "SELECT usename::text, count(*)::int8 FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND usename IS NOT NULL GROUP BY 1",
        )
        .fetch_all(&self.pg)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// MariaDB sessions per user now.
    ///
    /// # Errors
    /// When the query fails.
    pub async fn my_held(&self) -> anyhow::Result<Held> {
        let rows = sqlx::query(
            "SELECT USER, CAST(COUNT(*) AS SIGNED) FROM information_schema.PROCESSLIST \
             GROUP BY USER",
        )
        .fetch_all(&self.my)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

/// The most sessions seen per user over a measurement.
#[derive(Clone, Debug, Default)]
pub struct MaxHeld {
    /// PostgreSQL, per user.
    pub pg: Held,
    /// MariaDB, per user.
    pub my: Held,
}

impl MaxHeld {
    /// Folds one poll in.
    pub fn add(&mut self, pg: &Held, my: &Held) {
        for (max, now) in [(&mut self.pg, pg), (&mut self.my, my)] {
            for (user, n) in now {
                let e = max.entry(user.clone()).or_insert(0);
                *e = (*e).max(*n);
            }
        }
    }

    /// Polls `watcher` once and folds the result in; a failed poll is logged and skipped.
    pub async fn poll(&mut self, watcher: &Watcher) {
        match tokio::try_join!(watcher.pg_held(), watcher.my_held()) {
            Ok((pg, my)) => self.add(&pg, &my),
            Err(e) => tracing::warn!(error = %e, "connection poll failed"),
        }
    }
}

/// How often the held sessions are polled during a measurement.
pub const POLL: Duration = Duration::from_millis(500);
