//! The operator's HTTP endpoints: `/metrics`, `/healthz` and `/readyz`.
//!
//! `/healthz` answers as long as the process serves requests. `/readyz` reflects the
//! watches: the leader is ready once every watch has completed its initial list; a
//! standby, which watches nothing, is ready (it is healthy and waiting for the Lease).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Leadership and the sync state of each watch, as `/readyz` reports them.
#[derive(Debug, Default)]
pub struct Health {
    leader: AtomicBool,
    watches: Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
}

/// The watches of one controller run, registered as they start.
#[derive(Debug)]
pub struct Watches<'a> {
    health: &'a Health,
}

impl Watches<'_> {
    /// Registers the watch `name` and returns its flag, to be set once its initial list
    /// is complete.
    pub fn track(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.health.lock().push((name, flag.clone()));
        flag
    }
}

impl Health {
    /// Records whether this instance leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Release);
    }

    /// Whether this instance leads.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Starts registering the watches of a new controller run.
    pub fn begin_watches(&self) -> Watches<'_> {
        self.lock().clear();
        Watches { health: self }
    }

    /// Forgets the watches of a finished controller run.
    pub fn end_watches(&self) {
        self.lock().clear();
    }

    /// `Ok` when ready, else the names of the watches not synced yet.
    pub fn readiness(&self) -> Result<(), Vec<&'static str>> {
        if !self.is_leader() {
            return Ok(());
        }
        let watches = self.lock();
        let pending: Vec<&'static str> = watches
            .iter()
            .filter(|(_, synced)| !synced.load(Ordering::Acquire))
            .map(|(name, _)| *name)
            .collect();
        if watches.is_empty() {
            return Err(vec!["controller"]);
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Arc<AtomicBool>)>> {
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Binds `addr` and returns the address bound (port 0 picks one) and the server future,
/// which runs until `shutdown` completes.
///
/// # Errors
/// [`Error::Bind`] when the address cannot be bound.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    let serve = async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    };
    Ok((bound, serve))
}

async fn metrics_handler(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    match shared.health.readiness() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(pending) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("watches not synced: {}\n", pending.join(", ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_is_ready_and_a_leader_only_once_every_watch_synced() {
        let health = Health::default();
        assert_eq!(health.readiness(), Ok(()));

        health.set_leader(true);
        assert_eq!(health.readiness(), Err(vec!["controller"]));
        let watches = health.begin_watches();
        let pods = watches.track("pods");
        let secrets = watches.track("secrets");
        assert_eq!(health.readiness(), Err(vec!["pods", "secrets"]));
        pods.store(true, Ordering::Release);
        secrets.store(true, Ordering::Release);
        assert_eq!(health.readiness(), Ok(()));

        health.end_watches();
        assert_eq!(health.readiness(), Err(vec!["controller"]));
    }
}
