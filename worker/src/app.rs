//! Wires the worker together and keeps it running: builds the pipeline from a config,
//! applies reloads, and shuts down cleanly.
//!
//! A reload that changes only targets (or their defaults) starts and stops just the
//! targets that changed; any other change rebuilds the pipeline (the exporter flushes
//! first). A reload that fails to parse, or brings a newer format, keeps the last good
//! config running and is reported in the log and in `dbcollector_config_*` metrics.
//!
//! The config text comes from a file or from a watched ConfigMap ([`crate::source`]); the
//! poll loop compares the text itself, so both sources reload the same way.
//!
//! In pod mode ([`Mode::Pod`]) only the targets of the pod's shard assignment run: a new
//! assignment starts and stops just the targets that changed hands, as a target reload
//! does, and is acknowledged in the Lease ([`crate::lease`]) once the stopped targets
//! have finished their last scrape.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::assignment::{Mode, PodWatch, Scope};
use crate::config::{self, Config, Engine};
use crate::exporter::{Exporter, ExporterHandle};
use crate::lease::{self, Reporter};
use crate::pipeline;
use crate::pool::Endpoints;
use crate::processors::breaker::Breakers;
use crate::processors::statements::Statements;
use crate::receivers::{mysql, postgres, Scrape, ScrapeError, TargetSpec};
use crate::scheduler::{self, BoxFuture, Collect, Job, Shared};
use crate::server::{self, Health};
use crate::source::{self, Reader, Source};
use crate::telemetry::{Metrics, ResultLabel};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config text could not be read.
    #[error("reading the config from {origin}")]
    Source {
        /// Where the config is read from.
        origin: Source,
        /// What failed.
        #[source]
        source: source::Error,
    },
    /// The config is unusable.
    #[error("config from {origin}")]
    Config {
        /// Where the config is read from.
        origin: Source,
        /// What is wrong.
        #[source]
        source: config::Error,
    },
    /// The exporter could not be built from the config.
    #[error("starting the exporter")]
    Exporter(#[source] crate::exporter::Error),
    /// The telemetry server could not listen.
    #[error(transparent)]
    Server(#[from] server::Error),
    /// The Kubernetes API client could not be built (in a pod).
    #[error("connecting to the Kubernetes API")]
    Kube(#[source] kube::Error),
    /// Pod mode without the pod's namespace.
    #[error("assignment from pod {pod} needs the pod's namespace (POD_NAMESPACE unset)")]
    PodWithoutNamespace {
        /// The pod's name.
        pod: String,
    },
}

/// How the worker runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the config is read from; polled for changes.
    pub source: Source,
    /// Names this worker in the `x-dbcollector-worker` export header and logs.
    pub worker_id: String,
    /// How often the config (file or ConfigMap) is checked for changes.
    pub reload_poll: Duration,
    /// The pod's namespace when the worker runs in a pod: Secrets named by the config,
    /// and a [`Source::ConfigMap`], are read there through the in-cluster API (or
    /// `KUBECONFIG`).
    pub namespace: Option<String>,
    /// Which targets this worker collects: all of the config's, or those of its pod's
    /// shard assignment (which needs `namespace`).
    pub assignment: Mode,
}

/// A running worker.
pub struct Worker {
    options: Options,
    reader: Reader,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    config: Config,
    generation: Generation,
    /// The targets collected now; kept across reloads.
    scope: Scope,
    /// The pod's assignment and the Lease reports, in pod mode.
    pod: Option<PodLink>,
    cancel: CancellationToken,
    /// `telemetry.listen` as the config text has it, before a command-line override.
    configured_listen: std::net::SocketAddr,
    /// The bound telemetry address.
    pub telemetry_addr: std::net::SocketAddr,
}

/// What ties a pod-mode worker to its pod and Lease.
struct PodLink {
    watch: PodWatch,
    /// Read by the Lease reporter.
    report: watch::Sender<lease::Report>,
}

/// Everything built from one config, except the targets' own settings.
struct Generation {
    endpoints: Arc<Endpoints>,
    exporter: ExporterHandle,
    pool: pipeline::Pool,
    shared: Shared,
    targets: HashMap<Arc<str>, Running>,
}

struct Running {
    spec: Arc<TargetSpec>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Worker {
    /// Loads the config, starts the telemetry server and the pipeline.
    ///
    /// # Errors
    /// When the config is invalid, the exporter cannot be built or the telemetry address
    /// cannot be bound.
    pub async fn start(options: Options) -> Result<Self, Error> {
        Self::start_with(options, |_| ()).await
    }

    /// Like [`Worker::start`]; `first` sees the first config before anything else starts
    /// and may adjust it (the binary sets up logging from it and applies its command-line
    /// overrides, such as the telemetry listen address).
    ///
    /// # Errors
    /// As [`Worker::start`]; also when a ConfigMap source cannot be listed within
    /// [`source::SYNC_TIMEOUT`] or lacks the ConfigMap or key.
    pub async fn start_with(
        options: Options,
        first: impl FnOnce(&mut Config),
    ) -> Result<Self, Error> {
        let mut cluster = None;
        if let Some(namespace) = &options.namespace {
            let client = kube::Client::try_default().await.map_err(Error::Kube)?;
            crate::secret::install(client.clone(), namespace.clone());
            cluster = Some((client, namespace.clone()));
        }
        if let (Mode::Pod { name }, None) = (&options.assignment, &cluster) {
            return Err(Error::PodWithoutNamespace { pod: name.clone() });
        }
        let reader = Reader::open(&options.source, cluster.clone(), source::SYNC_TIMEOUT)
            .await
            .map_err(|source| Error::Source {
                origin: options.source.clone(),
                source,
            })?;
        let mut config = load(&reader, &options.source).await?;
        let configured_listen = config.telemetry.listen;
        first(&mut config);
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let health = Arc::new(Health {
            registry,
            ready: std::sync::atomic::AtomicBool::new(false),
        });
        let cancel = CancellationToken::new();
        let telemetry_addr =
            server::start(config.telemetry.listen, health.clone(), cancel.clone()).await?;
        let scope = Scope::initial(&options.assignment);
        let generation = Generation::start(&config, &options, &scope, metrics.clone())?;
        let pod = match (&options.assignment, cluster) {
            (Mode::Pod { name }, Some((client, namespace))) => {
                Some(PodLink::start(client, &namespace, name, &metrics, &cancel))
            }
            _ => None,
        };
        metrics.config_last_reload_ok.set(1);
        metrics.config_version.set(i64::from(config.version));
        // Ready does not wait for an assignment: the operator assigns only live workers.
        health.ready.store(true, Ordering::Release);
        info!(
            worker = %options.worker_id,
            assignment = ?options.assignment,
            targets = generation.targets.len(),
            telemetry = %telemetry_addr,
            "worker started"
        );
        let worker = Self {
            options,
            reader,
            health,
            metrics,
            config,
            generation,
            scope,
            pod,
            cancel,
            configured_listen,
            telemetry_addr,
        };
        worker.publish();
        Ok(worker)
    }

    /// Runs until `shutdown` resolves, reloading the config when its text changes or on
    /// SIGHUP; then stops the targets and flushes the exporter.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last = self.reader.read().ok();
        let mut poll = tokio::time::interval(self.options.reload_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = hangup_signal();
        let pod_changed = self.pod.as_ref().map(|p| p.watch.changed());
        loop {
            let forced = tokio::select! {
                () = &mut shutdown => break,
                _ = poll.tick() => false,
                Some(()) = hangup.recv() => true,
                () = notified(pod_changed.as_deref()) => {
                    self.reassign();
                    continue;
                }
            };
            // A ConfigMap is read from the watch's store: cheap, and current within moments.
            let current = self.reader.read().ok();
            if forced || (current.is_some() && current != last) {
                last = current;
                self.reload().await;
            }
        }
        info!("shutting down");
        self.health.ready.store(false, Ordering::Release);
        self.generation.stop().await;
        self.cancel.cancel();
        info!("worker stopped");
    }

    /// Applies the config's current content, or keeps the running one.
    pub async fn reload(&mut self) {
        let mut new = match load(&self.reader, &self.options.source).await {
            Ok(new) => new,
            Err(error) => return self.refuse(&error),
        };
        // The listen address is bound once, at start, where the command line may have
        // overridden it: the running address stays in the config the worker keeps.
        let listen = std::mem::replace(&mut new.telemetry.listen, self.config.telemetry.listen);
        let listen_changed = listen != self.configured_listen;
        if new == self.config && !listen_changed {
            return;
        }
        self.configured_listen = listen;
        if listen_changed || new.telemetry != self.config.telemetry {
            warn!("telemetry settings (listen, log format and level) apply at the next restart");
        }
        if without_targets(&new) == without_targets(&self.config) {
            // Stopped targets finish their last scrape on their own.
            drop(self.generation.apply_targets(&new, &self.scope));
        } else {
            match Generation::start(&new, &self.options, &self.scope, self.metrics.clone()) {
                Ok(next) => {
                    let old = std::mem::replace(&mut self.generation, next);
                    old.stop().await;
                }
                Err(error) => return self.refuse(&error),
            }
        }
        info!(
            targets = new.targets.len(),
            collected = self.generation.targets.len(),
            "config reloaded"
        );
        self.metrics.config_version.set(i64::from(new.version));
        self.config = new;
        self.publish();
        self.reloaded(true);
    }

    /// Applies a newer assignment from the pod, if there is one: starts the targets it
    /// grants, stops those it no longer does, leaves the others running, and acknowledges
    /// the epoch once the stopped targets have finished their last scrape.
    fn reassign(&mut self) {
        let Some(pod) = &mut self.pod else {
            return;
        };
        let Some(assignment) = pod.watch.take_newer() else {
            return;
        };
        let epoch = assignment.epoch;
        info!(
            epoch,
            ranges = %assignment.ranges,
            space = assignment.space,
            "assignment applied"
        );
        self.scope = Scope::Shard(Some(assignment));
        let stopped = self.generation.apply_targets(&self.config, &self.scope);
        self.metrics
            .assignment_epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
        let report = pod.report.clone();
        self.publish();

        tokio::spawn(async move {
            for task in stopped {
                let _ = task.await;
            }
            // The acknowledgements of two quick assignments may complete out of order.
            report.send_if_modified(|r| {
                let newer = r.acked < Some(epoch);
                if newer {
                    r.acked = Some(epoch);
                }
                newer
            });
        });
    }

    /// Shows the collected targets in the self-metrics and the Lease report.
    fn publish(&self) {
        let mut names: Vec<Arc<str>> = self.generation.targets.keys().cloned().collect();
        names.sort_unstable();
        self.metrics
            .targets
            .set(i64::try_from(names.len()).unwrap_or(i64::MAX));
        if let Some(pod) = &self.pod {
            pod.report.send_modify(|r| r.targets = names.into());
        }
    }

    fn refuse(&self, error: &Error) {
        let error: &dyn std::error::Error = error;
        error!(
            error,
            "config reload refused; the last good config keeps running"
        );
        self.reloaded(false);
    }

    fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
        self.metrics.config_last_reload_ok.set(i64::from(ok));
    }

    /// The worker's self-metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// Loads the config and makes the Secrets it names readable before anything connects.
async fn load(reader: &Reader, origin: &Source) -> Result<Config, Error> {
    let text = reader.read().map_err(|source| Error::Source {
        origin: origin.clone(),
        source,
    })?;
    let config = Config::from_yaml(&text).map_err(|source| Error::Config {
        origin: origin.clone(),
        source,
    })?;
    let names = config.secret_names();
    if let Some(name) = names.iter().next() {
        let Some(cluster) = crate::secret::cluster() else {
            let source = config::Error::Invalid {
                field: "secret".into(),
                message: format!(
                    "Secret {name} is named but the worker is not in a pod (POD_NAMESPACE unset)"
                ),
            };
            return Err(Error::Config {
                origin: origin.clone(),
                source,
            });
        };
        cluster.watch(names, Duration::from_secs(5)).await;
    }
    Ok(config)
}

/// The parts of a config that need a pipeline rebuild when they change.
fn without_targets(config: &Config) -> Config {
    Config {
        targets: Vec::new(),
        defaults: config::Defaults::default(),
        ..config.clone()
    }
}

impl PodLink {
    /// Starts watching the pod and reporting to its Lease until `cancel` fires.
    fn start(
        client: kube::Client,
        namespace: &str,
        name: &str,
        metrics: &Arc<Metrics>,
        cancel: &CancellationToken,
    ) -> Self {
        let watch = PodWatch::start(client.clone(), namespace, name);
        let (report, rx) = watch::channel(lease::Report::default());
        Reporter::new(client, namespace, name, metrics.clone()).spawn(rx, cancel.child_token());
        Self { watch, report }
    }
}

/// Resolves when `changed` is notified; never without it.
async fn notified(changed: Option<&Notify>) {
    match changed {
        Some(changed) => changed.notified().await,
        None => std::future::pending().await,
    }
}

impl Generation {
    fn start(
        config: &Config,
        options: &Options,
        scope: &Scope,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let exporter = Exporter::start(&config.exporter, &options.worker_id, metrics.clone())
            .map_err(Error::Exporter)?;
        let capacity = config
            .pipeline
            .channel_capacity
            .map_or(pipeline::DEFAULT_CHANNEL_CAPACITY, |c| c as usize);
        let (jobs, rx) = mpsc::channel::<Job>(capacity);
        let statements = Arc::new(Statements::new(&config.pipeline.sampler, metrics.clone()));
        let pool = pipeline::Pool::start(
            config.pipeline.workers as usize,
            rx,
            statements,
            exporter.clone(),
            config.pipeline.batch.max_points as usize,
            metrics.clone(),
        );
        let shared = Shared {
            breakers: Arc::new(Breakers::new(&config.pipeline.breaker, metrics.clone())),
            metrics: metrics.clone(),
            jobs,
        };
        let endpoints = Arc::new(Endpoints::new(config.connections.clone(), metrics));
        let mut generation = Self {
            endpoints,
            exporter,
            pool,
            shared,
            targets: HashMap::new(),
        };
        drop(generation.apply_targets(config, scope));
        Ok(generation)
    }

    /// Starts the targets of `scope` that are new or changed, stops those that left the
    /// config or the scope, or changed; the others keep running untouched. Returns the
    /// tasks of the stopped targets, which end after their in-flight scrape.
    fn apply_targets(&mut self, config: &Config, scope: &Scope) -> Vec<JoinHandle<()>> {
        // Targets resolve against the whole config, so an endpoint's server-wide carrier
        // does not depend on which of its targets this worker owns.
        let wanted: HashMap<Arc<str>, Arc<TargetSpec>> = TargetSpec::resolve(config)
            .into_iter()
            .filter(|s| scope.owns(&s.name))
            .map(|s| (s.name.clone(), Arc::new(s)))
            .collect();
        let leaving: Vec<Arc<str>> = self
            .targets
            .iter()
            .filter(|(name, running)| wanted.get(*name).is_none_or(|w| *w != running.spec))
            .map(|(name, _)| name.clone())
            .collect();
        let mut stopped = Vec::with_capacity(leaving.len());
        for name in leaving {
            if let Some(running) = self.targets.remove(&name) {
                running.cancel.cancel();
                stopped.push(running.task);
            }
        }
        for (name, spec) in wanted {
            if self.targets.contains_key(&name) {
                continue;
            }
            let cancel = CancellationToken::new();
            let collector = collector(&spec, &self.endpoints, self.shared.metrics.clone());
            let task = tokio::spawn(scheduler::run_target(
                spec.clone(),
                collector,
                self.shared.clone(),
                cancel.clone(),
            ));
            self.targets.insert(name, Running { spec, cancel, task });
        }
        stopped
    }

    /// Stops every target (in-flight scrapes finish), drains processing and flushes the
    /// exporter within its shutdown deadline.
    async fn stop(self) {
        let Generation {
            exporter,
            pool,
            shared,
            targets,
            ..
        } = self;
        for running in targets.values() {
            running.cancel.cancel();
        }
        for (_, running) in targets {
            let _ = running.task.await;
        }
        drop(shared);
        pool.join().await;
        exporter.shutdown().await;
    }
}

/// The engine's collector behind the scheduler's interface.
fn collector(spec: &TargetSpec, endpoints: &Endpoints, metrics: Arc<Metrics>) -> Box<dyn Collect> {
    match spec.engine {
        Engine::Postgresql => Box::new(postgres::Collector::new(spec.clone(), endpoints, metrics)),
        Engine::Mysql => Box::new(mysql::Collector::new(spec.clone(), endpoints, metrics)),
    }
}

impl Collect for postgres::Collector {
    fn scrape(&mut self) -> BoxFuture<'_, Result<Scrape, ScrapeError>> {
        Box::pin(postgres::Collector::scrape(self))
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(postgres::Collector::close(self))
    }
}

impl Collect for mysql::Collector {
    fn scrape(&mut self) -> BoxFuture<'_, Result<Scrape, ScrapeError>> {
        Box::pin(mysql::Collector::scrape(self))
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(mysql::Collector::close(self))
    }
}

#[cfg(unix)]
fn hangup_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut sig) => {
            tokio::spawn(async move {
                while sig.recv().await.is_some() {
                    let _ = tx.try_send(());
                }
            });
        }
        Err(error) => warn!(%error, "SIGHUP reload unavailable; the file is still polled"),
    }
    rx
}
