//! The PostgreSQL receiver: one [`Collector`] per target reads its databases' statistics.
//!
//! A scrape reads the target's first database (its *home*) and then every other monitored
//! database, each on its own connection from the endpoint's budget:
//!
//! - Server-wide families (activity, `pg_stat_database` for every database of the
//!   server, background writer and checkpointer, WAL, replication, locks, and
//!   pg_stat_statements) are read only by the endpoint's carrier target, once, on the
//!   home connection. A non-carrier target reports only its own databases' tables and
//!   indexes.
//! - Per-database families (tables, indexes, block I/O) are read on each monitored
//!   database's own connection.
//!
//! With `Databases::Discover` the home is `postgres`: discovery runs there, and it is
//! monitored only if the patterns keep it.
//!
//! Capabilities (pg_stat_statements, pg_monitor, version-dependent views) are probed per
//! database on first connect, after the server restarted or a connection broke, and every
//! [`PROBE_EVERY`] scrapes. What is missing costs only its family: it is logged once and
//! shown as `capability_missing{target,capability} = 1`. A family whose query fails is
//! logged when it starts and stops failing, and the rest of the scrape goes on.

pub mod mapping;
mod probe;
mod queries;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgSslMode, Postgres};
use sqlx::ConnectOptions as _;

use self::probe::{Checkpoints, Probe, Statements};
use self::queries::{Context, Session};
use crate::config::{QueryText, TlsMode};
use crate::metrics::{unix_nanos_now, PointSink, Points, Resource};
use crate::pool::{self, DbPool, Endpoint, Endpoints, Sources};
use crate::receivers::{
    discover_keeps, resource, Databases, ErrorKind, Scrape, ScrapeError, StatementSet, TargetSpec,
};
use crate::telemetry::{CapabilityLabels, Metrics};

pub use self::queries::SessionError as QueryError;

/// `application_name` of every monitoring session, so they can be told apart (and
/// counted) in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "dbcollector";

/// Added to the query timeout for the client-side deadline, so the server's
/// `statement_timeout` normally fires first and the connection survives.
const QUERY_MARGIN: Duration = Duration::from_millis(500);

/// Scrapes between two capability probes of a database.
pub const PROBE_EVERY: u64 = 10;

/// Scrapes between two discoveries, and how long a database that refused the role is
/// left alone before it is tried again.
pub const DISCOVER_EVERY: u64 = 10;

/// The database discovery connects to.
const DISCOVERY_HOME: &str = "postgres";

/// `capability` label values.
mod capability {
    /// pg_stat_statements is not readable in any monitored database.
    pub const STATEMENTS: &str = "pg_stat_statements";
    /// The role is neither superuser nor a member of `pg_monitor`.
    pub const MONITOR: &str = "pg_monitor";
    /// `pg_stat_wal` does not exist (before PostgreSQL 14).
    pub const STAT_WAL: &str = "pg_stat_wal";
    /// Neither known shape of the checkpoint counters was found.
    pub const CHECKPOINTS: &str = "checkpoints";
    /// A database refused the role's connection.
    pub const CONNECT: &str = "database_connect";
}

/// Why a database could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be had from the pool.
    #[error("opening a session on database {database}")]
    Session {
        /// The database.
        database: Arc<str>,
        /// What the pool reported.
        #[source]
        source: pool::Error,
    },
    /// The first query on the connection failed.
    #[error("reading database {database}")]
    Read {
        /// The database.
        database: Arc<str>,
        /// What failed.
        #[source]
        source: QueryError,
    },
}

impl Error {
    /// The bounded classification for labels and backoff.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Session {
                source: pool::Error::Budget { .. },
                ..
            } => ErrorKind::Budget,
            Error::Session {
                source: pool::Error::Credentials { .. },
                ..
            } => ErrorKind::Credentials,
            Error::Session {
                source:
                    pool::Error::Connect {
                        source: sqlx::Error::PoolTimedOut,
                        ..
                    },
                ..
            } => ErrorKind::Timeout,
            Error::Session { .. } => ErrorKind::Connect,
            Error::Read {
                source: QueryError::Timeout { .. },
                ..
            } => ErrorKind::Timeout,
            Error::Read { source, .. } if source.broke_connection() => ErrorKind::Connect,
            Error::Read { .. } => ErrorKind::Query,
        }
    }

    /// Whether the server refused this role the database itself (it does not exist,
    /// does not allow connections, or the role lacks `CONNECT` or an hba entry): trying
    /// again at every interval would only repeat the refusal.
    fn refused(&self) -> bool {
        let Error::Session {
            source: pool::Error::Connect { source, .. },
            ..
        } = self
        else {
            return false;
        };
        let code = source.as_database_error().and_then(|e| e.code());
        // invalid_catalog_name, insufficient_privilege, object_not_in_prerequisite_state
        // (datallowconn = false), invalid_authorization_specification (pg_hba).
        matches!(code.as_deref(), Some("3D000" | "42501" | "55000" | "28000"))
    }
}

/// One database of the target and its connection.
#[derive(Debug)]
struct Database {
    name: Arc<str>,
    /// Per-database families are read (false only for a discovery home the patterns
    /// exclude).
    monitored: bool,
    pool: DbPool<Postgres>,
    probe: Option<Probe>,
    probed_at: u64,
    /// Postmaster start seen by the last probe: a restart may mean an upgrade.
    server_started: u64,
    /// The last session broke or could not be opened: probe again on the next one.
    stale: bool,
    /// Not tried before this scrape (it refused the role).
    skip_until: u64,
    /// The last attempt failed (for logging on state change).
    down: bool,
}

/// Collects one PostgreSQL target.
#[derive(Debug)]
pub struct Collector {
    spec: TargetSpec,
    resource: Arc<Resource>,
    metrics: Arc<Metrics>,
    endpoint: Arc<Endpoint>,
    connect: PgConnectOptions,
    /// The home database first.
    databases: Vec<Database>,
    scrapes: u64,
    discovered_at: Option<u64>,
    /// Databases discovery found that the role may not connect to.
    refused: BTreeSet<Arc<str>>,
    /// Capabilities reported missing.
    missing: BTreeMap<&'static str, String>,
    /// (database, family) pairs whose last read failed.
    failing: HashSet<(Arc<str>, &'static str)>,
}

impl Collector {
    /// One collector per target. Creates (lazily connecting) one pool per monitored
    /// database, drawing on the endpoint's connection budget; discovered databases get
    /// theirs when discovery finds them. Must run inside a Tokio runtime (the pools start
    /// their maintenance tasks).
    pub fn new(spec: TargetSpec, endpoints: &Endpoints, metrics: Arc<Metrics>) -> Self {
        let mut names: Vec<Arc<str>> = match &spec.databases {
            Databases::Listed(list) => {
                let mut seen = HashSet::new();
                list.iter()
                    .filter(|n| seen.insert(Arc::clone(n)))
                    .cloned()
                    .collect()
            }
            Databases::Discover { .. } => Vec::new(),
        };
        let budget_hint = match &spec.databases {
            Databases::Listed(_) => Some(names.len().max(1)),
            Databases::Discover { .. } => None,
        };
        if names.is_empty() {
            names.push(Arc::from(DISCOVERY_HOME));
        }

        let endpoint = endpoints.endpoint(&spec.host, spec.port, budget_hint);
        let connect = connect_options(&spec);
        let mut collector = Self {
            resource: Arc::new(resource(&spec, "postgresql")),
            metrics,
            endpoint,
            connect,
            databases: Vec::new(),
            scrapes: 0,
            discovered_at: None,
            refused: BTreeSet::new(),
            missing: BTreeMap::new(),
            failing: HashSet::new(),
            spec,
        };
        for name in names {
            let monitored = match &collector.spec.databases {
                Databases::Discover { include, exclude } => discover_keeps(include, exclude, &name),
                Databases::Listed(_) => true,
            };
            let db = collector.database(name, monitored);
            collector.databases.push(db);
        }
        collector
    }

    /// One scrape: `Ok` when at least the home database could be read; `Err` with a
    /// bounded [`ErrorKind`] when it could not (connect failure, timeout, ...).
    ///
    /// # Errors
    /// A [`ScrapeError`] wrapping this module's [`Error`].
    pub async fn scrape(&mut self) -> Result<Scrape, ScrapeError> {
        let now = unix_nanos_now();
        self.scrapes += 1;
        let mut points = Points::new();
        let mut statements = None;

        if let Err(e) = self
            .read_database(0, now, &mut points, &mut statements)
            .await
        {
            tracing::debug!(target = %self.spec.name, error = &e as &dyn std::error::Error,
                "home database unreadable");
            return Err(ScrapeError {
                target: self.spec.name.clone(),
                kind: e.kind(),
                source: Box::new(e),
            });
        }

        for i in 1..self.databases.len() {
            if self.databases[i].skip_until > self.scrapes {
                continue;
            }
            let result = self
                .read_database(i, now, &mut points, &mut statements)
                .await;
            self.note_database(i, result);
        }

        self.report_capabilities(statements.is_some());
        tracing::debug!(target = %self.spec.name, points = points.len(),
            statements = statements.as_ref().map_or(0, |s: &StatementSet| s.rows.len()),
            "scraped");
        Ok(Scrape {
            target: self.spec.name.clone(),
            resource: self.resource.clone(),
            points,
            statements,
            read_at: Instant::now(),
        })
    }

    /// Closes every pool (config reload / shutdown) and withdraws the target's
    /// capability reports.
    pub async fn close(&mut self) {
        for db in &self.databases {
            db.pool.close().await;
        }
        for capability in std::mem::take(&mut self.missing).into_keys() {
            self.metrics
                .capability_missing
                .remove(&self.capability_labels(capability));
        }
    }

    /// A database entry with its (lazily connecting) pool.
    fn database(&self, name: Arc<str>, monitored: bool) -> Database {
        let pool = self.endpoint.pool::<Postgres>(
            name.clone(),
            self.connect.clone().database(&name),
            Sources::new(self.spec.password.clone(), &self.spec.tls),
            None,
            self.spec.connect_timeout,
        );
        Database {
            name,
            monitored,
            pool,
            probe: None,
            probed_at: 0,
            server_started: 0,
            stale: false,
            skip_until: 0,
            down: false,
        }
    }

    /// Reads database `i` on a connection of its own, given back afterwards.
    async fn read_database(
        &mut self,
        i: usize,
        now: u64,
        points: &mut Points,
        statements: &mut Option<StatementSet>,
    ) -> Result<(), Error> {
        let database = self.databases[i].name.clone();
        let lease = match self.databases[i].pool.acquire().await {
            Ok(lease) => lease,
            Err(source) => {
                self.databases[i].stale = true;
                return Err(Error::Session { database, source });
            }
        };
        let mut session = Session::new(lease, self.spec.query_timeout + QUERY_MARGIN);
        let result = self
            .read_session(i, &mut session, now, points, statements)
            .await;
        if session.broken() {
            self.databases[i].stale = true;
        }
        session.release().await;
        result.map_err(|source| Error::Read { database, source })
    }

    /// Everything read on one database's session.
    async fn read_session(
        &mut self,
        i: usize,
        s: &mut Session,
        now: u64,
        points: &mut Points,
        statements: &mut Option<StatementSet>,
    ) -> Result<(), QueryError> {
        let database = self.databases[i].name.clone();
        let context = queries::context(s).await?;
        let probe = self.ensure_probe(i, s, &context).await?;

        if i == 0 {
            if self.discovery_due() {
                self.rediscover(s).await;
            }
            if self.spec.carrier {
                self.server_families(s, &database, &probe, context.server_started, now, points)
                    .await;
            }
        }

        if self.databases[i].monitored && self.spec.relation_limit > 0 {
            let start = context.database_reset.unwrap_or(context.server_started);
            self.database_families(s, &database, start, now, points)
                .await;
        }

        if self.spec.carrier && self.spec.statements.enabled && statements.is_none() {
            if let Statements::Ready { schema, time, info } = &probe.statements {
                *statements = self
                    .statement_family(s, &database, schema, *time, *info, &context, now)
                    .await;
            }
        }
        Ok(())
    }

    /// Probes database `i` when it was never probed, its server restarted, its last
    /// session broke, or the slow timer ran out; returns the current probe.
    async fn ensure_probe(
        &mut self,
        i: usize,
        s: &mut Session,
        context: &Context,
    ) -> Result<Probe, QueryError> {
        let scrapes = self.scrapes;
        let db = &self.databases[i];
        let due = db.probe.is_none()
            || db.stale
            || db.server_started != context.server_started
            || scrapes >= db.probed_at + PROBE_EVERY;
        if due {
            let database = db.name.clone();
            match probe::probe(s).await {
                Ok(found) => {
                    tracing::debug!(target = %self.spec.name, database = %database,
                        version = found.version_num, probe = ?found, "probed");
                    let db = &mut self.databases[i];
                    db.probe = Some(found);
                    db.probed_at = scrapes;
                    db.server_started = context.server_started;
                    db.stale = false;
                }
                Err(e) if e.broke_connection() => return Err(e),
                Err(e) => {
                    // Keep the previous probe; with none, collect what needs no probe.
                    self.family_result::<()>(&database, "probe", Err(e));
                }
            }
        }
        Ok(self.databases[i]
            .probe
            .clone()
            .unwrap_or_else(fallback_probe))
    }

    fn discovery_due(&self) -> bool {
        matches!(self.spec.databases, Databases::Discover { .. })
            && self
                .discovered_at
                .is_none_or(|at| self.scrapes >= at + DISCOVER_EVERY)
    }

    /// Lists the server's databases and adds, keeps or drops pools to match.
    async fn rediscover(&mut self, s: &mut Session) {
        let Databases::Discover { include, exclude } = self.spec.databases.clone() else {
            return;
        };
        let home = self.databases[0].name.clone();
        let result = probe::discover(s).await;
        let Some(found) = self.family_result(&home, "discover", result) else {
            return;
        };
        self.discovered_at = Some(self.scrapes);

        let mut keep: Vec<Arc<str>> = Vec::new();
        let mut refused = BTreeSet::new();
        for d in found
            .into_iter()
            .filter(|d| discover_keeps(&include, &exclude, &d.name))
        {
            if d.can_connect {
                keep.push(Arc::from(d.name));
            } else {
                refused.insert(Arc::<str>::from(d.name));
            }
        }
        for name in refused.difference(&self.refused) {
            tracing::warn!(target = %self.spec.name, database = %name,
                "no CONNECT privilege on a discovered database; it is skipped");
        }
        self.refused = refused;

        self.databases[0].monitored = keep.contains(&home);
        let (kept, dropped): (Vec<_>, Vec<_>) = self
            .databases
            .drain(1..)
            .partition(|d| keep.contains(&d.name));
        self.databases.extend(kept);
        for db in dropped {
            tracing::info!(target = %self.spec.name, database = %db.name, "database dropped");
            db.pool.close().await;
        }
        for name in keep {
            if !self.databases.iter().any(|d| d.name == name) {
                tracing::info!(target = %self.spec.name, database = %name, "database discovered");
                let db = self.database(name, true);
                self.databases.push(db);
            }
        }
    }

    /// The families of the whole server, read once per endpoint by its carrier.
    async fn server_families(
        &mut self,
        s: &mut Session,
        db: &Arc<str>,
        probe: &Probe,
        server_started: u64,
        now: u64,
        points: &mut Points,
    ) {
        let mut sink = PointSink::new(points, now, server_started);
        macro_rules! family {
            ($name:literal, $query:expr, |$rows:ident| $map:expr) => {
                if !s.broken() {
                    let result = $query.await;
                    if let Some($rows) = self.family_result(db, $name, result) {
                        $map;
                    }
                }
            };
        }
        family!("databases", queries::databases(s), |rows| {
            mapping::databases(&rows, &mut sink)
        });
        family!("activity", queries::activity(s), |rows| mapping::activity(
            &rows, &mut sink
        ));
        family!("server", queries::server(s), |row| mapping::server(
            &row, &mut sink
        ));
        family!("bgwriter", queries::bgwriter(s, probe.checkpoints), |row| {
            mapping::bgwriter(&row, &mut sink)
        });
        if probe.stat_wal {
            family!("wal", queries::wal(s), |row| mapping::wal(&row, &mut sink));
        }
        family!("replication", queries::replication(s), |rows| {
            mapping::replication(&rows, &mut sink)
        });
        family!("slots", queries::slots(s), |rows| mapping::slots(
            &rows, &mut sink
        ));
        family!("locks", queries::locks(s), |rows| mapping::locks(
            &rows, &mut sink
        ));
    }

    /// Tables and indexes of the database `s` is connected to.
    async fn database_families(
        &mut self,
        s: &mut Session,
        db: &Arc<str>,
        start: u64,
        now: u64,
        points: &mut Points,
    ) {
        let limit = self.spec.relation_limit;
        let mut sink = PointSink::new(points, now, start);
        if !s.broken() {
            let result = queries::tables(s, limit).await;
            if let Some((rows, total)) = self.family_result(db, "tables", result) {
                mapping::tables(db, Some(total), &rows, &mut sink);
            }
        }
        if !s.broken() {
            let result = queries::indexes(s, limit).await;
            if let Some(rows) = self.family_result(db, "indexes", result) {
                mapping::indexes(db, &rows, &mut sink);
            }
        }
    }

    /// pg_stat_statements, read from the first database where it is readable.
    #[allow(clippy::too_many_arguments)]
    async fn statement_family(
        &mut self,
        s: &mut Session,
        db: &Arc<str>,
        schema: &str,
        time: probe::TimeColumn,
        info: bool,
        context: &Context,
        now: u64,
    ) -> Option<StatementSet> {
        let with_text = self.spec.statements.query_text == QueryText::Obfuscated;
        let result = queries::statements(s, schema, time, with_text).await;
        let records = self.family_result(db, "statements", result)?;
        let reset = if info && !s.broken() {
            let result = queries::statements_reset(s, schema).await;
            self.family_result(db, "statements_info", result).flatten()
        } else {
            None
        };
        Some(StatementSet {
            descriptors: &mapping::STATEMENTS,
            rows: records
                .into_iter()
                .map(|r| mapping::statement(r, with_text))
                .collect(),
            time_unix_nanos: now,
            start_unix_nanos: reset.unwrap_or(context.server_started),
        })
    }

    /// Records a family's outcome, logging only when it starts or stops failing.
    fn family_result<T>(
        &mut self,
        database: &Arc<str>,
        family: &'static str,
        result: Result<T, QueryError>,
    ) -> Option<T> {
        match result {
            Ok(value) => {
                if self.failing.remove(&(database.clone(), family)) {
                    tracing::debug!(target = %self.spec.name, database = %database, family,
                        "family readable again");
                }
                Some(value)
            }
            Err(e) => {
                if self.failing.insert((database.clone(), family)) {
                    tracing::warn!(target = %self.spec.name, database = %database, family,
                        error = &e as &dyn std::error::Error,
                        "family skipped; logged again only once it recovers");
                } else {
                    tracing::debug!(target = %self.spec.name, database = %database, family,
                        error = &e as &dyn std::error::Error, "family still failing");
                }
                None
            }
        }
    }

    /// Records the outcome of reading a database other than the home one.
    fn note_database(&mut self, i: usize, result: Result<(), Error>) {
        let scrapes = self.scrapes;
        let target = self.spec.name.clone();
        let db = &mut self.databases[i];
        match result {
            Ok(()) => {
                if db.down {
                    tracing::debug!(target = %target, database = %db.name, "database readable again");
                }
                db.down = false;
            }
            Err(e) => {
                if !db.down {
                    tracing::warn!(target = %target, database = %db.name,
                        error = &e as &dyn std::error::Error,
                        "database skipped this scrape; logged again only once it recovers");
                }
                db.down = true;
                if e.refused() {
                    db.skip_until = scrapes + DISCOVER_EVERY;
                }
            }
        }
    }

    /// Updates `capability_missing` from the probes, logging each change once.
    fn report_capabilities(&mut self, statements_read: bool) {
        let home = self.databases[0].probe.clone();
        let mut now_missing: BTreeMap<&'static str, String> = BTreeMap::new();

        if let Some(p) = &home {
            if !p.privileged() {
                let user = queries::quote_ident(&self.spec.user);
                let grant =
                    format!("GRANT pg_monitor TO {user} to read every session's statistics");
                now_missing.insert(capability::MONITOR, grant);
            }
            if self.spec.carrier && !p.stat_wal {
                now_missing.insert(capability::STAT_WAL, "pg_stat_wal does not exist".into());
            }
            if self.spec.carrier && p.checkpoints == Checkpoints::Absent {
                now_missing.insert(
                    capability::CHECKPOINTS,
                    "checkpoint counters found in neither pg_stat_bgwriter nor \
                     pg_stat_checkpointer"
                        .into(),
                );
            }
        }

        let probed: Vec<&Database> = self
            .databases
            .iter()
            .filter(|d| d.probe.is_some())
            .collect();
        let ready = probed.iter().any(|d| {
            matches!(
                d.probe.as_ref().map(|p| &p.statements),
                Some(Statements::Ready { .. })
            )
        });
        if self.spec.carrier && self.spec.statements.enabled && !statements_read && !ready {
            let reasons: Vec<String> = probed
                .iter()
                .filter_map(|d| match d.probe.as_ref().map(|p| &p.statements) {
                    Some(Statements::Absent) => Some(format!("{}: not installed", d.name)),
                    Some(Statements::Unusable { reason }) => Some(format!("{}: {reason}", d.name)),
                    _ => None,
                })
                .collect();
            now_missing.insert(capability::STATEMENTS, reasons.join("; "));
        }

        let refused: Vec<&str> = self
            .refused
            .iter()
            .map(|n| &**n)
            .chain(
                self.databases
                    .iter()
                    .filter(|d| d.skip_until > self.scrapes)
                    .map(|d| &*d.name),
            )
            .collect();
        if !refused.is_empty() {
            now_missing.insert(
                capability::CONNECT,
                format!("refused: {}", refused.join(", ")),
            );
        }

        for (capability, detail) in &now_missing {
            if self.missing.get(capability) != Some(detail) {
                tracing::warn!(target = %self.spec.name, capability, detail = %detail,
                    "capability missing; its family is skipped");
            }
            self.metrics
                .capability_missing
                .get_or_create(&self.capability_labels(capability))
                .set(1);
        }
        for capability in self.missing.keys() {
            if !now_missing.contains_key(capability) {
                tracing::info!(target = %self.spec.name, capability, "capability available");
                self.metrics
                    .capability_missing
                    .remove(&self.capability_labels(capability));
            }
        }
        self.missing = now_missing;
    }

    fn capability_labels(&self, capability: &str) -> CapabilityLabels {
        CapabilityLabels {
            target: self.spec.name.to_string(),
            capability: capability.to_owned(),
        }
    }
}

/// The background writer query chosen when the checkpoint counters live in
/// `pg_stat_checkpointer` (PostgreSQL 17+). Only PostgreSQL 15 runs in the tests, so they
/// run this against a view of the 17 shape.
#[doc(hidden)]
pub fn checkpointer_query() -> &'static str {
    queries::bgwriter_sql(Checkpoints::Checkpointer)
}

/// What is assumed of a database whose probe failed: nothing optional.
fn fallback_probe() -> Probe {
    Probe {
        version_num: 0,
        superuser: false,
        monitor: false,
        checkpoints: Checkpoints::Absent,
        stat_wal: false,
        statements: Statements::Absent,
    }
}

/// Connect options from structured fields (never a URL, so no password or name needs
/// escaping: pg-05), with the session settings every monitoring connection carries
/// (pg-06). The password is set by the pool at each connect.
fn connect_options(spec: &TargetSpec) -> PgConnectOptions {
    let millis = |d: Duration| d.as_millis().max(1).to_string();
    let mut options = PgConnectOptions::new()
        .host(&spec.host)
        .port(spec.port)
        .username(&spec.user)
        .application_name(APPLICATION_NAME)
        .options([
            ("statement_timeout", millis(spec.query_timeout)),
            ("lock_timeout", millis(spec.lock_timeout)),
        ])
        // TODO: `verify-ca` also checks the host name for now: sqlx 0.8's name-ignoring
        // verifier does not recognise the name-mismatch error of rustls 0.23.24 and later.
        // Stricter than documented, never weaker; fixed in sqlx after 0.8.6.
        .ssl_mode(match spec.tls.mode {
            TlsMode::Disable => PgSslMode::Disable,
            TlsMode::Require => PgSslMode::Require,
            TlsMode::VerifyCa => PgSslMode::VerifyCa,
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
        })
        .disable_statement_logging();
    if let Some(ca) = &spec.tls.ca_file {
        options = options.ssl_root_cert(ca);
    }
    if let Some(cert) = &spec.tls.cert_file {
        options = options.ssl_client_cert(cert);
    }
    if let Some(key) = &spec.tls.key_file {
        options = options.ssl_client_key(key);
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DbTls, Engine, Statements as StatementsConfig};

    fn spec(databases: Databases) -> TargetSpec {
        TargetSpec {
            name: Arc::from("pg-main"),
            engine: Engine::Postgresql,
            host: Arc::from("127.0.0.1"),
            port: 1,
            databases,
            user: "monitor".into(),
            password: None,
            tls: DbTls::default(),
            interval: Duration::from_secs(30),
            query_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(1),
            relation_limit: 1000,
            statements: StatementsConfig::default(),
            carrier: true,
        }
    }

    #[test]
    fn session_settings_travel_as_startup_options() {
        let options = connect_options(&spec(Databases::Listed(vec![])));
        let shown = format!("{options:?}");
        assert!(
            shown.contains("-c statement_timeout=5000 -c lock_timeout=1000"),
            "{shown}"
        );
        assert_eq!(options.get_application_name(), Some(APPLICATION_NAME));
        assert_eq!(options.get_username(), "monitor");
    }

    #[test]
    fn refusals_of_the_database_itself_are_told_apart_from_outages() {
        let timeout = Error::Session {
            database: Arc::from("app"),
            source: pool::Error::Connect {
                server: Arc::from("h:1"),
                database: Arc::from("app"),
                source: sqlx::Error::PoolTimedOut,
            },
        };
        assert_eq!(timeout.kind(), ErrorKind::Timeout);
        assert!(!timeout.refused());
        let budget = Error::Session {
            database: Arc::from("app"),
            source: pool::Error::Budget {
                server: Arc::from("h:1"),
                timeout: Duration::ZERO,
            },
        };
        assert_eq!(budget.kind(), ErrorKind::Budget);
    }

    #[tokio::test]
    async fn discovery_targets_start_from_the_postgres_database() {
        let metrics = Arc::new(Metrics::unregistered());
        let endpoints = Endpoints::new(Default::default(), metrics.clone());
        let discover = Databases::Discover {
            include: vec!["app*".into()],
            exclude: vec![],
        };
        let collector = Collector::new(spec(discover), &endpoints, metrics);
        assert_eq!(collector.databases.len(), 1);
        assert_eq!(&*collector.databases[0].name, "postgres");
        assert!(
            !collector.databases[0].monitored,
            "the patterns do not keep it"
        );
        assert_eq!(
            collector.endpoint.budget(),
            10,
            "discovery gets the per-server cap"
        );
    }

    #[tokio::test]
    async fn a_scrape_can_be_spawned_on_a_multi_threaded_runtime() {
        fn is_send<T: Send>(_: &T) {}
        let metrics = Arc::new(Metrics::unregistered());
        let endpoints = Endpoints::new(Default::default(), metrics.clone());
        let mut collector = Collector::new(spec(Databases::Listed(vec![])), &endpoints, metrics);
        is_send(&collector.scrape());
    }

    #[tokio::test]
    async fn listed_databases_get_one_pool_each_and_a_budget_to_match() {
        let metrics = Arc::new(Metrics::unregistered());
        let endpoints = Endpoints::new(Default::default(), metrics.clone());
        let listed = Databases::Listed(vec![Arc::from("a"), Arc::from("b"), Arc::from("a")]);
        let collector = Collector::new(spec(listed), &endpoints, metrics);
        let names: Vec<&str> = collector.databases.iter().map(|d| &*d.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(collector.endpoint.budget(), 3);
    }
}
