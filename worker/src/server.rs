//! The self-telemetry HTTP server: `/metrics` (Prometheus text), `/healthz` and
//! `/readyz`.
//!
//! Ready means the config is loaded and the pipeline is running. An unreachable
//! database or OTLP endpoint does not make the worker unready: it shows in `up`, the
//! breaker state and the drop counters instead, so a database outage never restarts or
//! unschedules the monitor.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// What the endpoints read.
#[derive(Debug)]
pub struct Health {
    /// The metric registry.
    pub registry: Registry,
    /// Config loaded and pipeline running.
    pub ready: AtomicBool,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.listen: cannot listen on {addr}")]
pub struct Error {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `addr` and serves until `cancel` fires. Returns the bound address (useful when
/// the port is 0).
///
/// # Errors
/// When the address cannot be bound.
pub async fn start(
    addr: SocketAddr,
    health: Arc<Health>,
    cancel: CancellationToken,
) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "telemetry server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &health.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    if health.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
