//! The `dbcollector-operator` binary: arguments, logging, signals; the rest is the library.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use dbcollector_operator::{leader, Operator, Options};

/// Reconciles DatabaseCollector resources into worker StatefulSets.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Watch DatabaseCollectors in this namespace only. Default: every namespace.
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Worker image for collectors that name none. Default: the worker image of this
    /// operator's version.
    #[arg(long, env = "DBCOLLECTOR_WORKER_IMAGE", default_value = dbcollector_operator::DEFAULT_IMAGE)]
    worker_image: String,
    /// Namespace of the leader Lease: the operator's own (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "dbcollector-operator")]
    lease_name: String,
    /// This instance's identity in the Lease. Default: the pod name (downward API),
    /// else the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease stays held without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Log lines as JSON.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }

    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let identity = args.identity.unwrap_or_else(host_name);
        let options = Options {
            default_image: args.worker_image,
            namespace: args.watch_namespace,
            election: leader::Config {
                namespace: args.lease_namespace,
                name: args.lease_name,
                identity,
                duration: args.lease_duration,
                grace: (args.lease_duration / 3).max(Duration::from_secs(1)),
            },
            listen: Some(args.listen),
        };
        Operator::new(client, options)
            .run(shutdown_signal())
            .await?;
        anyhow::Ok(())
    })
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("dbcollector-operator-{}", std::process::id()))
}
