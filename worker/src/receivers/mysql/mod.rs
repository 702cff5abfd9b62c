//! The MySQL and MariaDB receiver: one connection per server, a capability probe, and
//! the server-wide, per-schema and statement families read through it.
//!
//! performance_schema covers every schema, so one connection (to `information_schema`)
//! serves the whole target. Each session gets a server-side statement limit (MariaDB
//! `max_statement_time` in seconds, MySQL `max_execution_time` in milliseconds) and
//! `lock_wait_timeout`; every query also has a client-side deadline. A query that times
//! out or breaks the connection ends the scrape and discards the connection; a query the
//! server refuses costs only its family.

pub mod mapping;
mod probe;
mod queries;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlSslMode};
use sqlx::{Executor, MySql};

use self::probe::{Capabilities, Flavor, Reporter};
use super::{ErrorKind, Scrape, ScrapeError, StatementSet, TargetSpec};
use crate::config::{QueryText, TlsMode};
use crate::metrics::{unix_nanos_now, PointSink, Points, Resource};
use crate::pool::{self, ConnectHook, DbPool, Endpoints, Lease, Sources};
use crate::telemetry::Metrics;

/// Capabilities are probed again after this many scrapes (a grant may have been added),
/// besides after every reconnect.
const PROBE_EVERY: u32 = 10;

/// Added to the query timeout for the client-side deadline, so the server's own limit
/// (which leaves the connection usable) normally fires first.
const DEADLINE_MARGIN: Duration = Duration::from_secs(1);

/// MariaDB `ER_STATEMENT_TIMEOUT` (max_statement_time exceeded).
const ER_STATEMENT_TIMEOUT: u16 = 1969;
/// MySQL `ER_QUERY_TIMEOUT` (max_execution_time exceeded).
const ER_QUERY_TIMEOUT: u16 = 3024;
/// `ER_UNKNOWN_SYSTEM_VARIABLE`.
const ER_UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;
/// `ER_SPECIFIC_ACCESS_DENIED_ERROR` (a global privilege is missing).
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
/// `ER_TABLEACCESS_DENIED_ERROR`.
const ER_TABLEACCESS_DENIED: u16 = 1142;
/// `ER_DBACCESS_DENIED_ERROR`.
const ER_DBACCESS_DENIED: u16 = 1044;

/// Why a MySQL scrape, or one of its families, failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection could be had from the target's pool.
    #[error("acquiring a connection")]
    Connect {
        /// What failed.
        #[source]
        source: pool::Error,
    },
    /// A query failed.
    #[error("query {query} failed")]
    Query {
        /// The query's name.
        query: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A query passed its client-side deadline.
    #[error("query {query} passed its {timeout:?} deadline")]
    Deadline {
        /// The query's name.
        query: &'static str,
        /// The deadline.
        timeout: Duration,
    },
}

impl Error {
    fn server_code(&self) -> Option<u16> {
        match self {
            Error::Query {
                source: sqlx::Error::Database(db),
                ..
            } => db
                .try_downcast_ref::<MySqlDatabaseError>()
                .map(MySqlDatabaseError::number),
            _ => None,
        }
    }

    /// The server refused the query; the connection is fine.
    fn is_server_error(&self) -> bool {
        matches!(
            self,
            Error::Query {
                source: sqlx::Error::Database(_),
                ..
            }
        )
    }

    /// The server refused the query for lack of a privilege.
    fn is_access_denied(&self) -> bool {
        matches!(
            self.server_code(),
            Some(ER_SPECIFIC_ACCESS_DENIED | ER_TABLEACCESS_DENIED | ER_DBACCESS_DENIED)
        )
    }

    /// The connection may be mid-protocol or gone: it must not be reused, and the
    /// scrape stops.
    fn breaks_connection(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Deadline { .. } => true,
            Error::Query { source, .. } => !matches!(
                source,
                sqlx::Error::Database(_)
                    | sqlx::Error::ColumnDecode { .. }
                    | sqlx::Error::ColumnNotFound(_)
                    | sqlx::Error::ColumnIndexOutOfBounds { .. }
                    | sqlx::Error::Decode(_)
                    | sqlx::Error::TypeNotFound { .. }
                    | sqlx::Error::RowNotFound
            ),
        }
    }

    /// The bounded classification used for labels.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Connect {
                source: pool::Error::Budget { .. },
            } => ErrorKind::Budget,
            Error::Connect {
                source: pool::Error::Credentials { .. },
            } => ErrorKind::Credentials,
            Error::Connect {
                source: pool::Error::Connect { source, .. },
            } => match source {
                sqlx::Error::PoolTimedOut => ErrorKind::Timeout,
                sqlx::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    ErrorKind::Timeout
                }
                _ => ErrorKind::Connect,
            },
            Error::Deadline { .. } => ErrorKind::Timeout,
            Error::Query {
                source: sqlx::Error::Io(_),
                ..
            } => ErrorKind::Connect,
            Error::Query { .. } => match self.server_code() {
                Some(ER_STATEMENT_TIMEOUT | ER_QUERY_TIMEOUT) => ErrorKind::Timeout,
                _ => ErrorKind::Query,
            },
        }
    }
}

/// Runs one query future under the client-side deadline.
async fn timed<T>(
    query: &'static str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Query { query, source }),
        Err(_) => Err(Error::Deadline { query, timeout }),
    }
}

/// Session settings applied to every new connection, and a count of connections made,
/// so the collector knows when to probe again.
#[derive(Debug)]
struct Session {
    query_timeout: Duration,
    lock_timeout: Duration,
    connects: AtomicU64,
}

impl Session {
    /// Sets the statement and lock limits of a new session. The flavor decides the
    /// variable: MariaDB `max_statement_time` (seconds, every statement), MySQL
    /// `max_execution_time` (milliseconds, SELECT only). A server too old to know it
    /// (MySQL < 5.7.8) keeps only the client-side deadline.
    async fn setup(&self, conn: &mut MySqlConnection) -> Result<(), sqlx::Error> {
        let row = conn.fetch_one("SELECT VERSION()").await?;
        let version: String = sqlx::Row::try_get_unchecked(&row, 0)?;
        let statement_limit = match probe::parse_version(&version).0 {
            Flavor::MariaDb => format!(
                "SET SESSION max_statement_time = {:.3}",
                self.query_timeout.as_secs_f64()
            ),
            Flavor::MySql => format!(
                "SET SESSION max_execution_time = {}",
                self.query_timeout.as_millis().max(1)
            ),
        };
        if let Err(e) = conn.execute(statement_limit.as_str()).await {
            let unknown = e
                .as_database_error()
                .and_then(|d| d.try_downcast_ref::<MySqlDatabaseError>())
                .is_some_and(|d| d.number() == ER_UNKNOWN_SYSTEM_VARIABLE);
            if !unknown {
                return Err(e);
            }
            tracing::debug!(version = %version, "server has no statement time limit variable");
        }

        // Whole seconds, at least one: 0 would mean "fail at once" on MySQL.
        let lock = self.lock_timeout.as_secs_f64().ceil().max(1.0) as u64;
        conn.execute(format!("SET SESSION lock_wait_timeout = {lock}").as_str())
            .await?;

        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The connect options of a target, built field by field so no credential or name is
/// ever parsed out of a URL (case my-03). The password is added by the pool at connect.
fn connect_options(spec: &TargetSpec) -> MySqlConnectOptions {
    // TODO: `verify-ca` also checks the host name for now: sqlx 0.8's name-ignoring
    // verifier does not recognise the name-mismatch error of rustls 0.23.24 and later.
    // Stricter than documented, never weaker; fixed in sqlx after 0.8.6.
    let mode = match spec.tls.mode {
        TlsMode::Disable => MySqlSslMode::Disabled,
        TlsMode::Require => MySqlSslMode::Required,
        TlsMode::VerifyCa => MySqlSslMode::VerifyCa,
        TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
    };
    let mut options = MySqlConnectOptions::new()
        .host(&spec.host)
        .port(spec.port)
        .username(&spec.user)
        .database("information_schema")
        .ssl_mode(mode);
    if let Some(ca) = &spec.tls.ca_file {
        options = options.ssl_ca(ca);
    }
    if let Some(cert) = &spec.tls.cert_file {
        options = options.ssl_client_cert(cert);
    }
    if let Some(key) = &spec.tls.key_file {
        options = options.ssl_client_key(key);
    }
    options
}

/// What one pass over the families produced.
#[derive(Debug, Default)]
struct Collected {
    points: Points,
    statements: Option<StatementSet>,
    attempted: u32,
    succeeded: u32,
    first_error: Option<Error>,
    /// A query broke the connection: it is discarded and the scrape stops.
    broken: bool,
}

/// Collects one MySQL or MariaDB target.
#[derive(Debug)]
pub struct Collector {
    spec: TargetSpec,
    pool: DbPool<MySql>,
    session: Arc<Session>,
    reporter: Reporter,
    caps: Option<Capabilities>,
    probed_at_connect: u64,
    scrapes_since_probe: u32,
    server_start: Option<u64>,
    resource: Arc<Resource>,
    log: FamilyLog,
}

/// Families whose last attempt failed: their errors are logged on change only.
#[derive(Debug)]
struct FamilyLog {
    target: Arc<str>,
    failing: BTreeSet<&'static str>,
}

impl FamilyLog {
    fn succeeded(&mut self, family: &'static str) {
        if self.failing.remove(family) {
            tracing::info!(target = %self.target, family, "mysql family recovered");
        }
    }

    fn failed(&mut self, family: &'static str, e: &Error) {
        if self.failing.insert(family) {
            tracing::warn!(
                target = %self.target,
                family,
                kind = e.kind().as_str(),
                error = e as &dyn std::error::Error,
                "mysql family failed",
            );
        } else {
            tracing::debug!(target = %self.target, family, "mysql family still failing");
        }
    }
}

/// Runs one family's query under the deadline, recording the outcome in `out`. A refusal
/// costs only this family; a broken connection stops the scrape.
async fn family<T>(
    log: &mut FamilyLog,
    out: &mut Collected,
    deadline: Duration,
    family: &'static str,
    fut: impl Future<Output = Result<T, sqlx::Error>>,
) -> Option<T> {
    if out.broken {
        return None;
    }
    out.attempted += 1;
    match timed(family, deadline, fut).await {
        Ok(v) => {
            out.succeeded += 1;
            log.succeeded(family);
            Some(v)
        }
        Err(e) => {
            log.failed(family, &e);
            out.broken |= e.breaks_connection();
            out.first_error.get_or_insert(e);
            None
        }
    }
}

impl Collector {
    /// A collector for `spec`, drawing one connection from its server's budget. Nothing
    /// is connected until the first scrape.
    pub fn new(spec: TargetSpec, endpoints: &Endpoints, metrics: Arc<Metrics>) -> Self {
        let endpoint = endpoints.endpoint(&spec.host, spec.port, Some(1));
        let session = Arc::new(Session {
            query_timeout: spec.query_timeout,
            lock_timeout: spec.lock_timeout,
            connects: AtomicU64::new(0),
        });
        let hook = session.clone();
        let setup: ConnectHook<MySql> = Arc::new(move |conn| {
            let hook = hook.clone();
            Box::pin(async move { hook.setup(conn).await })
        });
        let pool = endpoint.pool::<MySql>(
            Arc::from("information_schema"),
            connect_options(&spec),
            Sources::new(spec.password.clone(), &spec.tls),
            Some(setup),
            spec.connect_timeout,
        );
        Self {
            reporter: Reporter::new(spec.name.clone(), metrics.clone()),
            log: FamilyLog {
                target: spec.name.clone(),
                failing: BTreeSet::new(),
            },
            // Until the first probe says otherwise.
            resource: Arc::new(super::resource(&spec, Flavor::MySql.system())),
            spec,
            pool,
            session,
            caps: None,
            probed_at_connect: 0,
            scrapes_since_probe: 0,
            server_start: None,
        }
    }

    /// Reads the target once.
    ///
    /// # Errors
    /// A [`ScrapeError`] when nothing could be read: no connection, the probe failed, or
    /// every family attempted failed.
    pub async fn scrape(&mut self) -> Result<Scrape, ScrapeError> {
        let mut lease = match self.acquire().await {
            Ok(lease) => lease,
            Err(e) => return Err(self.scrape_error(e)),
        };

        let collected = self.collect(&mut lease).await;
        lease.release(!collected.broken).await;

        if collected.attempted > 0 && collected.succeeded == 0 {
            if let Some(e) = collected.first_error {
                return Err(self.scrape_error(e));
            }
        }
        tracing::debug!(
            target = %self.spec.name,
            points = collected.points.len(),
            statements = collected.statements.as_ref().map_or(0, |s| s.rows.len()),
            "mysql scrape done",
        );
        Ok(Scrape {
            target: self.spec.name.clone(),
            resource: self.resource.clone(),
            points: collected.points,
            statements: collected.statements,
            read_at: Instant::now(),
        })
    }

    /// Closes the connection and withdraws the capability gauges.
    pub async fn close(&mut self) {
        self.pool.close().await;
        self.reporter.clear();
    }

    /// Takes the target's connection. The pool bounds both the wait for a budget permit
    /// and the connect (handshake and session setup included).
    async fn acquire(&self) -> Result<Lease<MySql>, Error> {
        self.pool
            .acquire()
            .await
            .map_err(|source| Error::Connect { source })
    }

    fn scrape_error(&self, e: Error) -> ScrapeError {
        ScrapeError {
            target: self.spec.name.clone(),
            kind: e.kind(),
            source: Box::new(e),
        }
    }

    fn deadline(&self) -> Duration {
        self.spec.query_timeout + DEADLINE_MARGIN
    }

    /// Runs the probe when due: first scrape, after a reconnect, every [`PROBE_EVERY`].
    async fn ensure_probed(&mut self, conn: &mut MySqlConnection) -> Result<(), Error> {
        let connects = self.session.connects.load(Ordering::Relaxed);
        let due = self.caps.is_none()
            || connects != self.probed_at_connect
            || self.scrapes_since_probe >= PROBE_EVERY;
        if !due {
            self.scrapes_since_probe += 1;
            return Ok(());
        }

        let caps = probe::probe(conn, self.spec.carrier, self.deadline()).await?;
        self.reporter.update(&caps.missing);
        if self.caps.as_ref().map(|c| c.flavor) != Some(caps.flavor) {
            self.resource = Arc::new(super::resource(&self.spec, caps.flavor.system()));
            tracing::debug!(
                target = %self.spec.name,
                system = caps.flavor.system(),
                version = ?caps.version,
                "mysql flavor detected",
            );
        }
        self.caps = Some(caps);
        self.probed_at_connect = connects;
        self.scrapes_since_probe = 1;
        Ok(())
    }

    async fn collect(&mut self, lease: &mut Lease<MySql>) -> Collected {
        let mut out = Collected::default();
        let conn: &mut MySqlConnection = lease.conn();
        if let Err(e) = self.ensure_probed(conn).await {
            out.attempted = 1;
            out.broken = e.breaks_connection();
            out.first_error = Some(e);
            return out;
        }
        let Some(caps) = self.caps.clone() else {
            return out;
        };
        let spec = &self.spec;
        let log = &mut self.log;
        let deadline = spec.query_timeout + DEADLINE_MARGIN;
        let now = unix_nanos_now();
        let io_waits = spec.relation_limit > 0 && caps.io_waits;

        // Server start (the start of every counter) comes from Uptime: with the whole
        // status for the carrier, alone for a target that needs it.
        let status = if spec.carrier {
            family(
                log,
                &mut out,
                deadline,
                "global_status",
                queries::global_status(conn),
            )
            .await
        } else if io_waits {
            family(log, &mut out, deadline, "uptime", queries::uptime(conn)).await
        } else {
            None
        };
        if let Some(uptime) = status.as_deref().and_then(mapping::uptime_seconds) {
            self.server_start = Some(mapping::server_start(now, uptime, self.server_start));
        }
        let start = self.server_start.unwrap_or(now);
        let mut points = Points::new();
        let mut sink = PointSink::new(&mut points, now, start);

        if spec.carrier {
            if let Some(rows) = &status {
                mapping::global_status(rows, &mut sink);
            }
            let vars = queries::global_variables(conn);
            if let Some(rows) = family(log, &mut out, deadline, "global_variables", vars).await {
                mapping::global_variables(&rows, &mut sink);
            }
        }
        if spec.carrier && caps.replica {
            let q = queries::replica_status(conn, caps.replica_syntax);
            if let Some(rows) = family(log, &mut out, deadline, "replica_status", q).await {
                mapping::replica_status(&rows, &mut sink);
            }
        }

        if io_waits {
            for (name, by_index) in [("table_io_waits", false), ("index_io_waits", true)] {
                let q = queries::io_waits(conn, by_index, &spec.databases, spec.relation_limit);
                if let Some(mut rows) = family(log, &mut out, deadline, name, q).await {
                    rows.retain(|r| mapping::keeps_schema(&spec.databases, &r.schema));
                    mapping::cap_per_schema(&mut rows, spec.relation_limit);
                    if by_index {
                        mapping::index_io_waits(&rows, &mut sink);
                    } else {
                        mapping::table_io_waits(&rows, &mut sink);
                    }
                }
            }
        }

        if spec.carrier && spec.statements.enabled && caps.digests {
            let with_text = spec.statements.query_text == QueryText::Obfuscated;
            let with_cpu = caps.digest_columns.cpu_time;
            let q = queries::digests(conn, &spec.databases, with_text, with_cpu);
            if let Some(rows) = family(log, &mut out, deadline, "statement_digests", q).await {
                out.statements = Some(StatementSet {
                    descriptors: &mapping::STATEMENT_DESCRIPTORS,
                    rows: rows
                        .into_iter()
                        .filter(|r| mapping::keeps_statement(&spec.databases, r.schema.as_deref()))
                        .map(mapping::statement)
                        .collect(),
                    time_unix_nanos: now,
                    // TODO: TRUNCATE of the digest table resets its counters without a
                    // trace the server exposes; such a reset reads as a drop until the
                    // next server restart moves the start time.
                    start_unix_nanos: start,
                });
            }
        }

        out.points = points;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_timeouts_that_break_the_connection() {
        let e = Error::Deadline {
            query: "q",
            timeout: Duration::from_secs(1),
        };
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.breaks_connection());
        assert_eq!(e.to_string(), "query q passed its 1s deadline");
    }

    #[test]
    fn decode_failures_keep_the_connection() {
        let e = Error::Query {
            query: "q",
            source: sqlx::Error::ColumnNotFound("x".into()),
        };
        assert_eq!(e.kind(), ErrorKind::Query);
        assert!(!e.breaks_connection());
        let io = Error::Query {
            query: "q",
            source: sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        };
        assert_eq!(io.kind(), ErrorKind::Connect);
        assert!(io.breaks_connection());
    }

    #[test]
    fn connect_timeouts_and_budget_exhaustion_are_classified_apart() {
        let timed_out = Error::Connect {
            source: pool::Error::Connect {
                server: "h:1".into(),
                database: "information_schema".into(),
                source: sqlx::Error::PoolTimedOut,
            },
        };
        assert_eq!(timed_out.kind(), ErrorKind::Timeout);
        let refused = Error::Connect {
            source: pool::Error::Connect {
                server: "h:1".into(),
                database: "information_schema".into(),
                source: sqlx::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                )),
            },
        };
        assert_eq!(refused.kind(), ErrorKind::Connect);
        let budget = Error::Connect {
            source: pool::Error::Budget {
                server: "h:1".into(),
                timeout: Duration::from_secs(1),
            },
        };
        assert_eq!(budget.kind(), ErrorKind::Budget);
    }

    #[test]
    fn connect_options_carry_special_characters_verbatim() {
        // case my-03: nothing is URL-parsed, so `@`, `%` and `-` reach the server as is.
        let spec = TargetSpec {
            name: "t".into(),
            engine: crate::config::Engine::Mysql,
            host: "127.0.0.1".into(),
            port: 3307,
            databases: super::super::Databases::Listed(vec!["my-app".into()]),
            user: "mon@it%".into(),
            password: None,
            tls: crate::config::DbTls::default(),
            interval: Duration::from_secs(30),
            query_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(1),
            relation_limit: 10,
            statements: crate::config::Statements::default(),
            carrier: true,
        };
        let o = connect_options(&spec);
        assert_eq!(o.get_username(), "mon@it%");
        assert_eq!((o.get_host(), o.get_port()), ("127.0.0.1", 3307));
        assert!(matches!(o.get_ssl_mode(), MySqlSslMode::Disabled));
    }
}
