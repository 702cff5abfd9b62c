//! Leader election on a coordination.k8s.io/v1 Lease, with `kube-lease-manager`.
//!
//! Only the holder of the Lease runs the controller, so two operator instances never
//! write at once (beyond the Lease's grace period, should the holder lose the API server
//! for longer than it: the renewal then fails and leadership ends).

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the election could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be read or created.
    #[error("preparing the leader Lease {namespace}/{name}")]
    Lease {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: LeaseManagerError,
    },
}

/// Where and how to elect.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This instance's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays held without renewal; a killed leader is replaced after
    /// at most this.
    pub duration: Duration,
    /// How long before expiry the holder renews.
    pub grace: Duration,
}

/// A running election: `leading` follows whether this instance holds the Lease.
pub struct Election {
    /// True while this instance holds the Lease.
    pub leading: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

impl Election {
    /// Creates the Lease if needed and starts competing for it.
    ///
    /// # Errors
    /// [`Error::Lease`] when the Lease cannot be read or created.
    pub async fn start(client: Client, config: &Config) -> Result<Self, Error> {
        let seconds = |d: Duration| d.as_secs().max(1);
        let duration = seconds(config.duration).max(2);
        let grace = seconds(config.grace).min(duration - 1);
        let manager = LeaseManagerBuilder::new(client, &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(duration)
            .with_grace(grace)
            .build()
            .await
            .map_err(|source| Error::Lease {
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                source,
            })?;
        let (leading, task) = manager.watch().await;
        Ok(Self { leading, task })
    }

    /// Stops competing and releases the Lease if held, so that a standby takes over at
    /// once rather than after the Lease expires.
    pub async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::debug!("leader Lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the leader Lease failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
        }
    }
}
