//! The dbcollector operator: reconciles `DatabaseCollector` resources into worker
//! StatefulSets, their config, RBAC and shard assignment.
//!
//! - [`render`]: the children of a collector, as pure functions of its spec.
//! - [`status`]: the conditions, as a pure function of what a reconcile observed.
//! - [`assign`]: which worker pod owns which shard slots, and the assignment epoch.
//! - [`controller`]: the watches and the reconcile that ties them together.
//! - [`leader`], [`server`], [`metrics`]: the process around it.
//!
//! [`Operator::run`] is what the binary runs; tests run it in-process.

pub mod assign;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod server;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use kube::Client;

use crate::metrics::Metrics;
use crate::server::Health;

/// The worker image of this operator's version, used for collectors that name none.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/dbcollector/dbcollector-worker:",
    env!("CARGO_PKG_VERSION")
);

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Worker image for collectors that name none.
    pub default_image: String,
    /// Watch collectors (and their children) in this namespace only; `None`: all.
    pub namespace: Option<String>,
    /// Leader election.
    pub election: leader::Config,
    /// Address of `/metrics`, `/healthz` and `/readyz`; `None`: not served.
    pub listen: Option<SocketAddr>,
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP server could not start.
    #[error("starting the HTTP server")]
    Server(#[from] server::Error),
    /// The election could not start.
    #[error("starting the leader election")]
    Election(#[from] leader::Error),
}

/// One operator instance.
pub struct Operator {
    client: Client,
    options: Options,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Operator {
    /// An instance that will act through `client`.
    pub fn new(client: Client, options: Options) -> Self {
        Self {
            client,
            options,
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::default()),
        }
    }

    /// Its metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Its leadership and watch state.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Serves the HTTP endpoints, competes for the Lease and, while leading, runs the
    /// controller; returns once `shutdown` completes, after running reconciles finished
    /// and the Lease was released.
    ///
    /// # Errors
    /// [`Error::Server`] when the listen address cannot be bound, [`Error::Election`]
    /// when the Lease cannot be prepared.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let shutdown = shutdown.boxed().shared();
        let server = match self.options.listen {
            Some(addr) => {
                let stop = shutdown.clone();
                let (bound, serve) =
                    server::bind(addr, self.metrics.clone(), self.health.clone(), stop).await?;
                tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
                Some(tokio::spawn(serve))
            }
            None => None,
        };

        let election = leader::Election::start(self.client.clone(), &self.options.election).await?;
        let mut leading = election.leading.clone();
        loop {
            tokio::select! {
                () = shutdown.clone() => break,
                changed = leading.wait_for(|leads| *leads) => {
                    if changed.is_err() {
                        tracing::error!("the leader election stopped");
                        break;
                    }
                }
            }
            tracing::info!(identity = %self.options.election.identity, "became the leader");
            self.lead(&leading, shutdown.clone()).await;
            if shutdown.clone().now_or_never().is_some() {
                break;
            }
            tracing::warn!("lost the leader Lease; standing by");
        }
        drop(leading);
        election.release().await;
        if let Some(server) = server {
            let _ = server.await;
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Runs the controller until leadership is lost or `shutdown` completes.
    async fn lead(
        &self,
        leading: &tokio::sync::watch::Receiver<bool>,
        shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ) {
        self.metrics.leader.set(1);
        self.health.set_leader(true);
        let mut lost = leading.clone();
        let stop = async move {
            let lost = async move {
                let _ = lost.wait_for(|leads| !*leads).await;
            };
            tokio::select! {
                () = shutdown => {}
                () = lost => {}
            }
        };
        let ctx = Arc::new(controller::Context::new(
            self.client.clone(),
            self.options.default_image.clone(),
            self.metrics.clone(),
            &self.options.election.identity,
        ));
        controller::run(ctx, self.options.namespace.as_deref(), &self.health, stop).await;
        self.metrics.leader.set(0);
        self.health.set_leader(false);
    }
}

/// Runs an operator instance until `shutdown` completes; see [`Operator::run`].
///
/// # Errors
/// As [`Operator::run`].
pub async fn run(
    client: Client,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Operator::new(client, options).run(shutdown).await
}

/// Default Lease timings: a killed leader is replaced within 15 s.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// Default renewal margin before the Lease expires.
pub const LEASE_GRACE: Duration = Duration::from_secs(5);

/// An error and its causes, `: `-separated, each shown once. An API error is shown as
/// the server's message and reason (kube's own text repeats its whole status).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = describe(error);
    let mut source = next_cause(error);
    while let Some(cause) = source {
        let message = describe(cause);
        // Some errors repeat their source in their own message.
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = next_cause(cause);
    }
    text
}

/// The cause to show after `error`: none after an API error, whose source is its own
/// status, already described.
fn next_cause<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a (dyn std::error::Error + 'static)> {
    match error.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(_)) => None,
        _ => error.source(),
    }
}

fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    match error.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) if status.message.is_empty() => {
            format!("{} ({})", status.reason, status.code)
        }
        Some(kube::Error::Api(status)) => {
            format!(
                "{} ({} {})",
                status.message.trim(),
                status.code,
                status.reason
            )
        }
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_error_in_a_chain_is_shown_once_as_the_servers_message() {
        let status =
            kube::core::Status::failure("pods is forbidden: no", "Forbidden").with_code(403);
        let error = controller::Error::Read {
            what: "worker pods".to_owned(),
            source: kube::Error::Api(status.boxed()),
        };
        assert_eq!(
            error_chain(&error),
            "reading worker pods: pods is forbidden: no (403 Forbidden)"
        );
    }
}
