//! Database connections: one bounded sqlx pool per (server, database), inside a
//! connection budget per server endpoint.
//!
//! Each [`DbPool`] holds at most one connection, and only while it holds a permit from
//! its [`Endpoint`]'s semaphore, so the connections open to one server never exceed the
//! endpoint's budget. When an endpoint has more databases than permits, a database gives
//! its permit back (closing its connection) after each use, so connections rotate
//! through the databases; every open is counted. Passwords and TLS PEM sources are read
//! again before each (re)connect, so a rotated secret or certificate takes effect without
//! a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::{Connection, Database, MySql, Pool, Postgres};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::config::{self, ValueSource};
use crate::secret;
use crate::telemetry::{Metrics, ServerLabel};

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every connection of the server's budget stayed in use past the acquire timeout.
    #[error("no free connection to {server} within {timeout:?}")]
    Budget {
        /// `host:port`.
        server: Arc<str>,
        /// The acquire timeout.
        timeout: Duration,
    },
    /// The password or a TLS PEM source could not be read.
    #[error("reading the {what} for {server}")]
    Credentials {
        /// `host:port`.
        server: Arc<str>,
        /// Which source: `password`, `tls.ca`, `tls.cert` or `tls.key`.
        what: &'static str,
        /// What failed.
        #[source]
        source: secret::Error,
    },
    /// Connecting failed or timed out.
    #[error("connecting to {server}/{database}")]
    Connect {
        /// `host:port`.
        server: Arc<str>,
        /// The database.
        database: Arc<str>,
        /// The driver's error (sqlx never includes the password in it).
        #[source]
        source: sqlx::Error,
    },
}

/// Engine-specific session setup run on every new connection (e.g. MySQL's statement
/// time limit, whose name depends on the probed flavor).
pub type ConnectHook<DB> = Arc<
    dyn for<'c> Fn(
            &'c mut <DB as Database>::Connection,
        ) -> futures::future::BoxFuture<'c, Result<(), sqlx::Error>>
        + Send
        + Sync,
>;

/// Engines whose connect options can take a password and TLS PEM content read at connect
/// time.
pub trait Engine: Database {
    /// `options` with `password` set.
    fn with_password(
        options: &<Self::Connection as Connection>::Options,
        password: &str,
    ) -> <Self::Connection as Connection>::Options;

    /// `options` with the PEM contents that are given set: the CA that verifies the
    /// server, and the client certificate and key for mutual TLS.
    fn with_tls_pem(
        options: <Self::Connection as Connection>::Options,
        pem: &TlsPem,
    ) -> <Self::Connection as Connection>::Options;
}

impl Engine for Postgres {
    fn with_password(
        options: &sqlx::postgres::PgConnectOptions,
        password: &str,
    ) -> sqlx::postgres::PgConnectOptions {
        options.clone().password(password)
    }

    fn with_tls_pem(
        mut options: sqlx::postgres::PgConnectOptions,
        pem: &TlsPem,
    ) -> sqlx::postgres::PgConnectOptions {
        if let Some(ca) = &pem.ca {
            options = options.ssl_root_cert_from_pem(ca.as_bytes().to_vec());
        }
        if let Some(cert) = &pem.cert {
            options = options.ssl_client_cert_from_pem(cert);
        }
        if let Some(key) = &pem.key {
            options = options.ssl_client_key_from_pem(key);
        }
        options
    }
}

impl Engine for MySql {
    fn with_password(
        options: &sqlx::mysql::MySqlConnectOptions,
        password: &str,
    ) -> sqlx::mysql::MySqlConnectOptions {
        options.clone().password(password)
    }

    fn with_tls_pem(
        mut options: sqlx::mysql::MySqlConnectOptions,
        pem: &TlsPem,
    ) -> sqlx::mysql::MySqlConnectOptions {
        if let Some(ca) = &pem.ca {
            options = options.ssl_ca_from_pem(ca.as_bytes().to_vec());
        }
        if let Some(cert) = &pem.cert {
            options = options.ssl_client_cert_from_pem(cert);
        }
        if let Some(key) = &pem.key {
            options = options.ssl_client_key_from_pem(key);
        }
        options
    }
}

/// Where a pool's credentials come from; each source is read again before every connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// The password.
    pub password: Option<ValueSource>,
    /// PEM of the CA that verifies the server (`tls.ca`).
    pub ca: Option<ValueSource>,
    /// PEM client certificate (`tls.cert`).
    pub cert: Option<ValueSource>,
    /// PEM client private key (`tls.key`).
    pub key: Option<ValueSource>,
}

impl Sources {
    /// The password and the TLS PEM sources of a target's config.
    pub fn new(password: Option<ValueSource>, tls: &config::DbTls) -> Self {
        Self {
            password,
            ca: tls.ca.clone(),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        }
    }
}

/// TLS PEM contents read from [`Sources`]; `Debug` never shows them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsPem {
    /// The CA bundle.
    pub ca: Option<String>,
    /// The client certificate chain.
    pub cert: Option<String>,
    /// The client private key.
    pub key: Option<String>,
}

impl std::fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &self.ca.is_some())
            .field("cert", &self.cert.is_some())
            .field("key", &self.key.is_some())
            .finish()
    }
}

/// What the sources held at the last connect; `Debug` never shows it.
#[derive(Default, PartialEq, Eq)]
struct Read {
    password: Option<String>,
    tls: TlsPem,
}

impl std::fmt::Debug for Read {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Read")
            .field("password", &self.password.is_some())
            .field("tls", &self.tls)
            .finish()
    }
}

/// A server endpoint (`host:port`) and its connection budget.
#[derive(Debug)]
pub struct Endpoint {
    server: Arc<str>,
    /// Current budget: planned databases + 1, capped; grows as targets join.
    budget: AtomicU32,
    /// Databases the endpoint's targets named so far (`u32::MAX` once one discovers).
    planned: AtomicU32,
    permits: Arc<Semaphore>,
    members: AtomicU32,
    label: ServerLabel,
    settings: config::Connections,
    metrics: Arc<Metrics>,
}

impl Endpoint {
    /// `host:port`, safe for logs and labels.
    pub fn server(&self) -> &Arc<str> {
        &self.server
    }

    /// The most connections open at once.
    pub fn budget(&self) -> u32 {
        self.budget.load(Ordering::Acquire)
    }

    /// More databases share the endpoint than it has permits: connections rotate.
    fn oversubscribed(&self) -> bool {
        self.members.load(Ordering::Relaxed) > self.budget()
    }

    /// Publishes how many connections the endpoint's permits allow open right now.
    fn publish_open(&self) {
        let in_use = i64::from(self.budget()) - self.permits.available_permits() as i64;
        self.metrics
            .connections_open
            .get_or_create(&self.label)
            .set(in_use);
    }

    /// Adds a target's databases to the plan (`None`: it discovers them, which takes
    /// the cap) and grows the budget to match, never past `max_per_server`. The budget
    /// never shrinks while the endpoint lives, so a permit is never taken back.
    fn plan(&self, databases: Option<usize>) {
        let add = databases.map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX));
        let planned = self
            .planned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_add(add))
            })
            .unwrap_or(u32::MAX)
            .saturating_add(add);
        let cap = self.settings.max_per_server.max(1);
        let wanted = planned.saturating_add(1).min(cap);
        let previous = self.budget.fetch_max(wanted, Ordering::AcqRel);
        if wanted > previous {
            self.permits.add_permits((wanted - previous) as usize);
        }
    }

    /// A pool for one database of this endpoint, running `hook` on every new connection;
    /// its size and timeouts are set here.
    pub fn pool<DB: Engine>(
        self: &Arc<Self>,
        database: Arc<str>,
        connect: <DB::Connection as Connection>::Options,
        sources: Sources,
        hook: Option<ConnectHook<DB>>,
        connect_timeout: Duration,
    ) -> DbPool<DB> {
        self.members.fetch_add(1, Ordering::Relaxed);
        // Every connection sqlx opens passes here, including the ones it replaces on its
        // own after a broken ping, so each open is counted.
        let (metrics, label) = (self.metrics.clone(), self.label.clone());
        let options = PoolOptions::<DB>::new().after_connect(move |conn, _meta| {
            metrics.connections_opened.get_or_create(&label).inc();
            let hook = hook.clone();
            Box::pin(async move {
                match hook {
                    Some(hook) => hook(conn).await,
                    None => Ok(()),
                }
            })
        });
        let pool = options
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(connect_timeout)
            .max_lifetime(self.settings.max_lifetime)
            .idle_timeout(self.settings.idle_timeout)
            .test_before_acquire(true)
            .connect_lazy_with(connect.clone());
        DbPool {
            pool,
            endpoint: self.clone(),
            database,
            base: connect,
            sources,
            last: Mutex::new(None),
            permit: Arc::new(tokio::sync::Mutex::new(None)),
            acquire_timeout: self.settings.acquire_timeout,
        }
    }
}

/// The endpoints of a worker, shared by every target that names them.
#[derive(Debug)]
pub struct Endpoints {
    settings: config::Connections,
    map: Mutex<HashMap<(String, u16), Arc<Endpoint>>>,
    metrics: Arc<Metrics>,
}

impl Endpoints {
    /// An empty registry using `settings` for every endpoint.
    pub fn new(settings: config::Connections, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The endpoint for `host:port`, with `databases` more monitored databases planned
    /// on it (`None` when a target discovers them). The budget is the planned databases
    /// plus one, capped at `connections.max_per_server`; every target of the endpoint
    /// calls this once, so the budget covers them all.
    pub fn endpoint(&self, host: &str, port: u16, databases: Option<usize>) -> Arc<Endpoint> {
        let key = (host.to_ascii_lowercase(), port);
        let endpoint = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key)
                .or_insert_with(|| {
                    let server: Arc<str> = Arc::from(format!("{host}:{port}"));
                    Arc::new(Endpoint {
                        label: ServerLabel {
                            server: server.to_string(),
                        },
                        server,
                        budget: AtomicU32::new(0),
                        planned: AtomicU32::new(0),
                        permits: Arc::new(Semaphore::new(0)),
                        members: AtomicU32::new(0),
                        settings: self.settings.clone(),
                        metrics: self.metrics.clone(),
                    })
                })
                .clone()
        };
        endpoint.plan(databases);
        endpoint
    }
}

/// One database's pool: at most one connection, opened only under a budget permit.
#[derive(Debug)]
pub struct DbPool<DB: Engine> {
    pool: Pool<DB>,
    endpoint: Arc<Endpoint>,
    database: Arc<str>,
    base: <DB::Connection as Connection>::Options,
    sources: Sources,
    /// What the sources held when the connect options were last set (`None`: never).
    last: Mutex<Option<Read>>,
    permit: Arc<tokio::sync::Mutex<Option<OwnedSemaphorePermit>>>,
    acquire_timeout: Duration,
}

/// A connection in use. Give it back with [`Lease::release`]; a lease dropped without
/// it (a cancelled scrape) closes its connection, since it may be mid-query.
#[derive(Debug)]
pub struct Lease<DB: Engine> {
    conn: Option<PoolConnection<DB>>,
    slot: OwnedMutexGuard<Option<OwnedSemaphorePermit>>,
    endpoint: Arc<Endpoint>,
}

impl<DB: Engine> DbPool<DB> {
    /// The database's name.
    pub fn database(&self) -> &Arc<str> {
        &self.database
    }

    /// The endpoint this pool draws from.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Takes the database's connection, opening it (under a budget permit) if needed.
    ///
    /// # Errors
    /// [`Error::Budget`] when no permit frees up in time, [`Error::Credentials`] when
    /// the password or a TLS PEM source cannot be read, [`Error::Connect`] when connecting fails.
    pub async fn acquire(&self) -> Result<Lease<DB>, Error> {
        let mut slot = self.permit.clone().lock_owned().await;
        if slot.is_none() {
            let permit = tokio::time::timeout(
                self.acquire_timeout,
                self.endpoint.permits.clone().acquire_owned(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| Error::Budget {
                server: self.endpoint.server.clone(),
                timeout: self.acquire_timeout,
            })?;
            *slot = Some(permit);
            self.endpoint.publish_open();
        }

        let result = async {
            self.refresh_sources()?;
            self.pool.acquire().await.map_err(|source| Error::Connect {
                server: self.endpoint.server.clone(),
                database: self.database.clone(),
                source,
            })
        }
        .await;

        match result {
            Ok(conn) => Ok(Lease {
                conn: Some(conn),
                slot,
                endpoint: self.endpoint.clone(),
            }),
            Err(e) => {
                // Nothing is open: the permit goes back.
                *slot = None;
                self.endpoint.publish_open();
                Err(e)
            }
        }
    }

    /// Re-reads the password and TLS PEM sources and, when any changed, makes new
    /// connections use them.
    fn refresh_sources(&self) -> Result<(), Error> {
        let s = &self.sources;
        if s.password.is_none() && s.ca.is_none() && s.cert.is_none() && s.key.is_none() {
            return Ok(());
        }
        let read = Read {
            password: self.read(&s.password, "password")?,
            tls: TlsPem {
                ca: self.read(&s.ca, "tls.ca")?,
                cert: self.read(&s.cert, "tls.cert")?,
                key: self.read(&s.key, "tls.key")?,
            },
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(&read) {
            let options = match &read.password {
                Some(password) => DB::with_password(&self.base, password),
                None => self.base.clone(),
            };
            self.pool
                .set_connect_options(DB::with_tls_pem(options, &read.tls));
            *last = Some(read);
        }
        Ok(())
    }

    /// Reads one source; the error names it and the server, never the content.
    fn read(
        &self,
        source: &Option<ValueSource>,
        what: &'static str,
    ) -> Result<Option<String>, Error> {
        source
            .as_ref()
            .map(|source| {
                secret::read(source).map_err(|source| Error::Credentials {
                    server: self.endpoint.server.clone(),
                    what,
                    source,
                })
            })
            .transpose()
    }

    /// Closes the pool's connection, if any (on config reload or shutdown).
    pub async fn close(&self) {
        // Waiting for the slot first lets an in-flight lease hand its connection back.
        // sqlx 0.8's `Pool::close` can still return while a just-released connection is
        // on its way back into the idle queue (seen under load), leaving it open; a
        // second `close` closes it.
        let mut slot = self.permit.lock().await;
        self.pool.close().await;
        self.pool.close().await;
        *slot = None;
        self.endpoint.publish_open();
    }
}

impl<DB: Engine> Drop for DbPool<DB> {
    fn drop(&mut self) {
        self.endpoint.members.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<DB: Engine> Lease<DB> {
    /// The connection.
    pub fn conn(&mut self) -> &mut PoolConnection<DB> {
        // `conn` is only taken by `release` and `drop`, which consume the lease.
        self.conn
            .as_mut()
            .expect("lease holds a connection until released")
    }

    /// Gives the connection back. A healthy one stays open for the next scrape unless the
    /// endpoint's databases outnumber its budget; a broken one (a failed or timed-out
    /// query may leave it mid-protocol) is closed at once.
    pub async fn release(mut self, healthy: bool) {
        let Some(conn) = self.conn.take() else { return };
        if !healthy {
            let _ = conn.detach().close_hard().await;
            *self.slot = None;
        } else if self.endpoint.oversubscribed() {
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
            *self.slot = None;
        } else {
            drop(conn);
        }
        self.endpoint.publish_open();
    }
}

impl<DB: Engine> Drop for Lease<DB> {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // The pool closes it in the background and counts it until it is gone, so
            // the permit stays with this database: releasing it now could let another
            // database open a connection before this one is closed.
            conn.close_on_drop();
            drop(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(max_per_server: u32) -> Endpoints {
        let settings = config::Connections {
            max_per_server,
            ..Default::default()
        };
        Endpoints::new(settings, Arc::new(Metrics::unregistered()))
    }

    #[test]
    fn budget_covers_every_target_of_an_endpoint_plus_one() {
        let e = endpoints(10);
        let a = e.endpoint("DB.example", 5432, Some(1));
        assert_eq!(a.budget(), 2);
        let b = e.endpoint("db.example", 5432, Some(2));
        assert!(Arc::ptr_eq(&a, &b), "host names are case-insensitive");
        assert_eq!(a.budget(), 4);
        assert_eq!(a.permits.available_permits(), 4);
        assert_eq!(e.endpoint("db.example", 5433, Some(1)).budget(), 2);
    }

    #[test]
    fn budget_never_passes_the_cap() {
        let e = endpoints(3);
        assert_eq!(e.endpoint("h", 1, Some(5)).budget(), 3);
        assert_eq!(e.endpoint("h", 1, Some(5)).budget(), 3);
        assert_eq!(e.endpoint("h", 1, Some(5)).permits.available_permits(), 3);
        assert_eq!(
            e.endpoint("d", 1, None).budget(),
            3,
            "discovery takes the cap"
        );
    }
}
