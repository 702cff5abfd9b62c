//! The `dbcollector-worker` binary: parses arguments, sets up logging, runs the worker.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Parser, ValueEnum};
use dbcollector_worker::app::{Options, Worker};
use dbcollector_worker::assignment::Mode;
use dbcollector_worker::config::{Config, LogFormat};
use dbcollector_worker::source::{Reader, Source};

/// Collects PostgreSQL and MySQL/MariaDB metrics and exports them over OTLP.
#[derive(Debug, Parser)]
#[command(version)]
#[command(group(ArgGroup::new("source").required(true).args(["config", "config_map"])))]
struct Args {
    /// The YAML config file (see docs/configuration.md). Reloaded when it changes or on
    /// SIGHUP.
    #[arg(short, long, env = "DBCOLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// Read the config from this ConfigMap of the pod's namespace (needs POD_NAMESPACE),
    /// watched through the API so an edit applies within one poll.
    #[arg(long, env = "DBCOLLECTOR_CONFIG_MAP")]
    config_map: Option<String>,
    /// The ConfigMap key holding the YAML config.
    #[arg(long, env = "DBCOLLECTOR_CONFIG_KEY", default_value = "config.yaml")]
    config_key: String,
    /// Check the config file and exit: 0 when valid, 1 with the error otherwise.
    #[arg(long, conflicts_with = "config_map")]
    check: bool,
    /// Names this worker in the `x-dbcollector-worker` export header. Default: the pod
    /// name (POD_NAME), else the host name.
    #[arg(long, env = "POD_NAME")]
    worker_id: Option<String>,
    /// How often the config (file or ConfigMap) is checked for changes.
    #[arg(long, default_value = "2s", value_parser = parse_poll)]
    reload_poll: Duration,
    /// The pod's namespace (downward API): Secrets named by the config, and the config's
    /// ConfigMap, are read there through the Kubernetes API.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Which targets to collect: `all` of the config's, or (`pod`) those granted by the
    /// shard assignment annotations of this worker's pod, which it watches through the API
    /// (needs POD_NAME and POD_NAMESPACE) and acknowledges in the pod's Lease.
    #[arg(long, env = "DBCOLLECTOR_ASSIGNMENT", value_enum, default_value_t = Assignment::All)]
    assignment: Assignment,
    /// Address of /metrics, /healthz and /readyz, overriding the config's
    /// `telemetry.listen` (e.g. for several workers sharing one config on one host).
    #[arg(long, env = "DBCOLLECTOR_LISTEN")]
    listen: Option<std::net::SocketAddr>,
}

/// Values of `--assignment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Assignment {
    /// Every target of the config.
    All,
    /// The targets of the pod's shard assignment.
    Pod,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = match (args.config, args.config_map) {
        (Some(path), _) => {
            check_file(&path, args.check);
            if args.check {
                return Ok(());
            }
            Source::File(path)
        }
        (None, Some(name)) => Source::ConfigMap {
            name,
            key: args.config_key,
        },
        // The `source` group requires one of the two.
        (None, None) => anyhow::bail!("either --config or --config-map is required"),
    };
    let assignment = match args.assignment {
        Assignment::All => Mode::All,
        // The pod's own name: `--worker-id` may name the worker otherwise.
        Assignment::Pod => Mode::pod(std::env::var("POD_NAME").ok(), args.namespace.as_deref())?,
    };
    // rustls needs one process-wide crypto provider; both TLS clients use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let worker_id = args.worker_id.unwrap_or_else(host_name);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let options = Options {
            source,
            worker_id,
            reload_poll: args.reload_poll,
            namespace: args.namespace,
            assignment,
        };
        // Logging follows the config's `telemetry` section, known once the config is read.
        let listen = args.listen;
        let worker = Worker::start_with(options, |config| {
            if let Some(listen) = listen {
                config.telemetry.listen = listen;
            }
            init_logging(config);
        })
        .await?;
        worker.run(shutdown_signal()).await;
        anyhow::Ok(())
    })
}

/// Validates the config file before anything starts, so a bad file fails with its
/// error on stderr and exit code 1; with `check`, also reports a valid one. The file is
/// read as the worker reads it (size cap, byte order mark).
fn check_file(path: &std::path::Path, check: bool) {
    let text = Reader::file(path.to_owned()).read();
    let loaded = match &text {
        Ok(text) => Config::from_yaml(text).map_err(|e| chain(&e)),
        Err(error) => Err(chain(error)),
    };
    match loaded {
        Ok(config) if check => {
            let n = config.targets.len();
            let plural = if n == 1 { "" } else { "s" };
            println!("config {} is valid ({n} target{plural})", path.display());
        }
        Ok(_) => {}
        Err(error) => {
            let at = path.display();
            eprintln!("dbcollector-worker: invalid config {at}: {error}");
            std::process::exit(1);
        }
    }
}

/// An error and its causes, one after the other.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn parse_poll(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be above 0".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn init_logging(config: &Config) {
    use std::io::IsTerminal;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.telemetry.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.telemetry.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.init(),
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "dbcollector-worker".to_owned())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
