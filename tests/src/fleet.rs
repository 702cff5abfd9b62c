//! A fleet on a test [`ControlPlane`]: the operator binary as a process, and one
//! `dbcollector-worker` process per worker pod, run the way a kubelet would run the pod.
//!
//! The control plane has no scheduler and no kubelet: the StatefulSet controller creates
//! the pods and nothing runs them. The fleet's supervisor plays the kubelet for the worker
//! pods of one namespace (or of one DatabaseCollector):
//!
//! - a pod that appears gets a process started with what its container declares: the
//!   container's arguments and environment (values, and the downward-API fields
//!   `metadata.name`, `metadata.namespace`, `metadata.uid`, `spec.serviceAccountName`,
//!   `status.podIP`), a kubeconfig acting as the pod's ServiceAccount in place of the
//!   mounted token, and `--listen` on a port of its own (the workers share one config,
//!   whose listen address would collide on one host);
//! - the pod's status follows the process, as a kubelet's readiness probe would: phase
//!   `Running` and `Ready` true while the worker's `/readyz` answers 200, `Ready` false
//!   when it does not or the process is gone;
//! - a process that exits by itself is started again after a backoff (1 s, doubling to
//!   8 s), like a container with `restartPolicy: Always`; one killed through
//!   [`Fleet::kill_worker`] stays down until [`Fleet::restart_worker`];
//! - a pod that is deleted (scale-down) or replaced has its process stopped: SIGTERM, then
//!   SIGKILL after [`FleetOptions::stop_timeout`]. Pods that were never scheduled are
//!   deleted at once by the API server, without a grace period.
//!
//! Every process logs to a file of the fleet's directory ([`Fleet::log_tail`]) and dies
//! with the test process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::api::{Api, ListParams};
use anyhow::{anyhow, bail, Context as _};
use dbcollector_crds::annotations::{
    worker_selector_string, APP_NAME, COMPONENT_LABEL, NAME_LABEL, WORKER_COMPONENT,
};
use dbcollector_crds::DatabaseCollectorStatus;
use k8s_openapi::api::core::v1::{Container, Pod};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{watch, Mutex, OnceCell};
use tokio::task::JoinHandle;

use crate::process::{self, ServerProcess};
use crate::{try_free_port, ControlPlane, LOOPBACK};

/// Environment variable naming the operator binary to run; unset: built with cargo.
pub const OPERATOR_BIN_ENV: &str = "DBCOLLECTOR_OPERATOR_BIN";

/// Environment variable naming the worker binary to run; unset: built with cargo.
pub const WORKER_BIN_ENV: &str = "DBCOLLECTOR_WORKER_BIN";

/// The operator's identity in its leader Lease.
pub const OPERATOR_IDENTITY: &str = "fleet-operator";

/// The workspace root, where `cargo build` runs.
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// How long the operator may take to answer `/readyz` and lead.
const OPERATOR_START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a probe or a `/metrics` request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// The first restart delay of a worker that exited by itself; it doubles per exit.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// A worker that ran this long before exiting restarts after the first delay again.
const BACKOFF_RESET: Duration = Duration::from_secs(30);

/// The operator and worker binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `dbcollector-operator`.
    pub operator: PathBuf,
    /// `dbcollector-worker`.
    pub worker: PathBuf,
}

impl Binaries {
    /// `$DBCOLLECTOR_OPERATOR_BIN` and `$DBCOLLECTOR_WORKER_BIN` when both are set; else
    /// both are built with `cargo build`, in the profile and target directory of the
    /// running executable, once per process (an up-to-date build takes a second).
    ///
    /// # Errors
    ///
    /// Fails when the build fails or a binary is missing afterwards.
    pub async fn locate() -> anyhow::Result<Self> {
        static FOUND: OnceCell<Binaries> = OnceCell::const_new();
        FOUND.get_or_try_init(find_binaries).await.cloned()
    }
}

async fn find_binaries() -> anyhow::Result<Binaries> {
    let operator = std::env::var_os(OPERATOR_BIN_ENV).map(PathBuf::from);
    let worker = std::env::var_os(WORKER_BIN_ENV).map(PathBuf::from);
    if let (Some(operator), Some(worker)) = (operator.clone(), worker.clone()) {
        return Ok(Binaries { operator, worker });
    }

    let (target, profile) = target_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = tokio::process::Command::new(cargo);
    cmd.current_dir(WORKSPACE)
        .args(["build", "--quiet"])
        .args([
            "-p",
            "dbcollector-operator",
            "--bin",
            "dbcollector-operator",
        ])
        .args(["-p", "dbcollector-worker", "--bin", "dbcollector-worker"])
        .env("CARGO_TARGET_DIR", &target);
    // The `debug` directory holds the `dev` profile.
    if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    let started = Instant::now();
    process::run_to_completion(cmd, "cargo build of the operator and worker binaries").await?;
    tracing::debug!(elapsed = ?started.elapsed(), "operator and worker binaries built");

    let dir = target.join(&profile);
    let binaries = Binaries {
        operator: operator.unwrap_or_else(|| dir.join("dbcollector-operator")),
        worker: worker.unwrap_or_else(|| dir.join("dbcollector-worker")),
    };
    for path in [&binaries.operator, &binaries.worker] {
        if !path.is_file() {
            bail!("{} is missing after the build", path.display());
        }
    }
    Ok(binaries)
}

/// The target directory and profile directory name of the running executable: test
/// binaries live in `TARGET/PROFILE/deps`, other binaries in `TARGET/PROFILE`.
fn target_dir() -> anyhow::Result<(PathBuf, String)> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", exe.display()))?;
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let profile = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .ok_or_else(|| anyhow!("{} names no profile directory", dir.display()))?;
    let target = dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no target directory", dir.display()))?;
    Ok((target.to_path_buf(), profile))
}

/// How a [`Fleet`] runs.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Namespace of the worker pods, i.e. of the DatabaseCollectors.
    pub namespace: String,
    /// Run only the pods of this DatabaseCollector. Default `None`: every worker pod of
    /// the namespace.
    pub collector: Option<String>,
    /// The operator's `--watch-namespace`. Default: `namespace`; `None` watches every
    /// namespace.
    pub watch_namespace: Option<String>,
    /// Namespace of the operator's leader Lease (its `POD_NAMESPACE`). Default:
    /// `namespace`.
    pub operator_namespace: String,
    /// Kubeconfig the operator acts with. Default `None`: the control plane's admin.
    pub operator_kubeconfig: Option<PathBuf>,
    /// The operator's `--lease-duration`. Default 6 s, so that a fleet started after a
    /// killed operator takes over its Lease quickly.
    pub lease_duration: Duration,
    /// How often the supervisor lists the pods and probes the workers. Default 250 ms.
    pub probe_period: Duration,
    /// How long a worker has after SIGTERM before it is killed. Default 15 s.
    pub stop_timeout: Duration,
    /// `RUST_LOG` of every process. Default: `$RUST_LOG`, else `info`.
    pub log_filter: String,
    /// The binaries. Default `None`: [`Binaries::locate`].
    pub binaries: Option<Binaries>,
}

impl FleetOptions {
    /// The defaults for pods in `namespace`, with an operator watching it.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            collector: None,
            watch_namespace: Some(namespace.to_owned()),
            operator_namespace: namespace.to_owned(),
            operator_kubeconfig: None,
            lease_duration: Duration::from_secs(6),
            probe_period: Duration::from_millis(250),
            stop_timeout: Duration::from_secs(15),
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            binaries: None,
        }
    }

    /// The label selector of the pods the supervisor runs.
    fn selector(&self) -> String {
        match &self.collector {
            Some(collector) => worker_selector_string(collector),
            None => format!("{COMPONENT_LABEL}={WORKER_COMPONENT},{NAME_LABEL}={APP_NAME}"),
        }
    }
}

/// What the supervisor knows of one worker process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerState {
    /// The pod it runs for.
    pub pod: String,
    /// The port of its `/metrics`, `/healthz` and `/readyz` on 127.0.0.1.
    pub port: u16,
    /// Whether the process is running.
    pub running: bool,
    /// Whether its last readiness probe answered 200.
    pub ready: bool,
    /// Whether it was killed through [`Fleet::kill_worker`] and waits for
    /// [`Fleet::restart_worker`].
    pub held: bool,
    /// How many times it was started for this pod, the first included.
    pub starts: u32,
}

/// The operator and the worker processes of one namespace's worker pods; see the module
/// docs.
///
/// Dropping it kills every process; [`Self::stop`] stops them gracefully.
pub struct Fleet {
    namespace: String,
    client: ::kube::Client,
    shared: Arc<Shared>,
    operator: Mutex<ServerProcess>,
    operator_port: u16,
    stop: watch::Sender<bool>,
    supervisor: Option<JoinHandle<()>>,
    /// Holds the logs; removed on drop, after the processes (a field dropped last).
    dir: TempDir,
}

/// What the fleet and its supervisor share.
struct Shared {
    workers: Mutex<BTreeMap<String, PodWorker>>,
    /// Stops of the workers of deleted pods, in flight.
    retiring: std::sync::Mutex<Vec<JoinHandle<()>>>,
    worker_bin: PathBuf,
    log_dir: PathBuf,
    log_filter: String,
    stop_timeout: Duration,
}

/// How to start the process of one pod.
#[derive(Clone, Debug)]
struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The process of one pod.
struct PodWorker {
    /// The pod's uid: a pod of the same name with another uid is another pod.
    uid: String,
    launch: Launch,
    port: u16,
    process: ServerProcess,
    held: bool,
    ready: bool,
    starts: u32,
    /// Exits in a row that came soon after a start.
    failures: u32,
    started_at: Instant,
    restart_at: Option<Instant>,
    /// The length of the log before the last start.
    log_offset: u64,
}

impl Fleet {
    /// Starts the operator binary (and waits until it leads), then the supervisor of the
    /// worker pods of `options.namespace`.
    ///
    /// `plane` is shared with the supervisor task: a `&'static ControlPlane` or an
    /// `Arc<ControlPlane>`.
    ///
    /// # Errors
    ///
    /// Fails when the binaries cannot be built or the operator does not become ready and
    /// lead within 90 s; the message carries the tail of its log.
    pub async fn start<P>(plane: P, options: FleetOptions) -> anyhow::Result<Self>
    where
        P: Deref<Target = ControlPlane> + Send + Sync + 'static,
    {
        let binaries = match options.binaries.clone() {
            Some(binaries) => binaries,
            None => Binaries::locate().await?,
        };
        let dir = process::server_dir("fleet", None)?;
        let (operator, operator_port) =
            start_operator(&plane, &options, &binaries.operator, dir.path()).await?;

        let shared = Arc::new(Shared {
            workers: Mutex::default(),
            retiring: std::sync::Mutex::default(),
            worker_bin: binaries.worker.clone(),
            log_dir: dir.path().to_path_buf(),
            log_filter: options.log_filter.clone(),
            stop_timeout: options.stop_timeout,
        });
        let client = plane.client();
        let supervisor = Supervisor {
            pods: Api::namespaced(client.clone(), &options.namespace),
            plane,
            namespace: options.namespace.clone(),
            selector: options.selector(),
            shared: Arc::clone(&shared),
            kubeconfigs: HashMap::new(),
            last_error: None,
        };
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(supervisor.run(options.probe_period, stopped));
        tracing::info!(
            namespace = %options.namespace,
            dir = %dir.path().display(),
            "fleet started"
        );
        Ok(Self {
            namespace: options.namespace,
            client,
            shared,
            operator: Mutex::new(operator),
            operator_port,
            stop,
            supervisor: Some(supervisor),
            dir,
        })
    }

    /// The namespace of the pods it runs.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The directory holding the logs: `operator.log` and `POD.log` per worker pod.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The port of the operator's `/metrics`, `/healthz` and `/readyz` on 127.0.0.1.
    pub fn operator_port(&self) -> u16 {
        self.operator_port
    }

    /// The operator's `/metrics`.
    ///
    /// # Errors
    ///
    /// Fails when the operator does not answer 200.
    pub async fn operator_metrics(&self) -> anyhow::Result<String> {
        get_ok(self.operator_port, "/metrics").await
    }

    /// Every worker process, by pod name.
    pub async fn workers(&self) -> BTreeMap<String, WorkerState> {
        let mut workers = self.shared.workers.lock().await;
        workers
            .iter_mut()
            .map(|(pod, w)| {
                let running = w.reap(pod).is_none() && w.process.is_running();
                let state = WorkerState {
                    pod: pod.clone(),
                    port: w.port,
                    running,
                    ready: running && w.ready,
                    held: w.held,
                    starts: w.starts,
                };
                (pod.clone(), state)
            })
            .collect()
    }

    /// The pods whose worker process is running.
    pub async fn live_pods(&self) -> BTreeSet<String> {
        let workers = self.workers().await;
        workers
            .into_values()
            .filter(|w| w.running)
            .map(|w| w.pod)
            .collect()
    }

    /// The pods whose worker process is running and answered its last probe with 200.
    pub async fn ready_pods(&self) -> BTreeSet<String> {
        let workers = self.workers().await;
        workers
            .into_values()
            .filter(|w| w.ready)
            .map(|w| w.pod)
            .collect()
    }

    /// Waits until exactly `count` worker processes run, all ready, and returns their
    /// pods.
    ///
    /// # Errors
    ///
    /// Fails after `timeout`, with the workers' states.
    pub async fn wait_ready(
        &self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<BTreeSet<String>> {
        let what = format!("{count} ready worker processes");
        let result = crate::eventually(&what, timeout, || async {
            let workers = self.workers().await;
            let ready = workers.values().all(|w| w.ready);
            let pods: BTreeSet<String> = workers.into_keys().collect();
            Ok((ready && pods.len() == count).then_some(pods))
        })
        .await;
        match result {
            Ok(pods) => Ok(pods),
            Err(e) => Err(e.context(format!("workers: {:?}", self.workers().await))),
        }
    }

    /// The `/metrics` of the worker of `pod`.
    ///
    /// # Errors
    ///
    /// Fails when the fleet runs no worker for `pod` or it does not answer 200.
    pub async fn worker_metrics(&self, pod: &str) -> anyhow::Result<String> {
        let port = {
            let workers = self.shared.workers.lock().await;
            workers
                .get(pod)
                .map(|w| w.port)
                .ok_or_else(|| anyhow!("the fleet runs no worker for pod {pod}"))?
        };
        get_ok(port, "/metrics").await
    }

    /// The `/metrics` of every worker that answers, by pod.
    pub async fn all_worker_metrics(&self) -> BTreeMap<String, String> {
        let ports: Vec<(String, u16)> = {
            let workers = self.shared.workers.lock().await;
            workers
                .iter()
                .map(|(pod, w)| (pod.clone(), w.port))
                .collect()
        };
        let mut out = BTreeMap::new();
        for (pod, port) in ports {
            if let Ok(metrics) = get_ok(port, "/metrics").await {
                out.insert(pod, metrics);
            }
        }
        out
    }

    /// Kills the worker of `pod` with SIGKILL, and returns once the pod shows `Ready`
    /// false. The process stays down until [`Self::restart_worker`].
    ///
    /// # Errors
    ///
    /// Fails when the fleet runs no worker for `pod`, or the pod does not turn unready
    /// within 30 s.
    pub async fn kill_worker(&self, pod: &str) -> anyhow::Result<()> {
        {
            let mut workers = self.shared.workers.lock().await;
            let worker = workers
                .get_mut(pod)
                .ok_or_else(|| anyhow!("the fleet runs no worker for pod {pod}"))?;
            worker.held = true;
            worker.ready = false;
            worker
                .process
                .signal_group(libc::SIGKILL)
                .with_context(|| format!("killing the worker of {pod}"))?;
            if !worker.process.wait_exit(Duration::from_secs(10)).await {
                bail!("the worker of {pod} did not die of SIGKILL");
            }
        }
        tracing::info!(pod, "worker killed");
        self.wait_pod_ready(pod, false).await
    }

    /// Starts the worker of `pod` again, at once (killing it first if it runs), with
    /// what its pod declared when it appeared. Returns once the process is spawned.
    ///
    /// # Errors
    ///
    /// Fails when the fleet runs no worker for `pod` or the process cannot be spawned.
    pub async fn restart_worker(&self, pod: &str) -> anyhow::Result<()> {
        let mut workers = self.shared.workers.lock().await;
        let worker = workers
            .get_mut(pod)
            .ok_or_else(|| anyhow!("the fleet runs no worker for pod {pod}"))?;
        if worker.process.is_running() {
            worker.process.kill_group_blocking();
        }
        worker.held = false;
        worker.failures = 0;
        worker.start(pod, &self.shared).await
    }

    /// The last `lines` lines of the log of the worker of `pod` (all its starts).
    pub fn log_tail(&self, pod: &str, lines: usize) -> String {
        tail(&self.dir.path().join(format!("{pod}.log")), lines)
    }

    /// The last `lines` lines of the operator's log.
    pub fn operator_log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("operator.log"), lines)
    }

    /// Stops the supervisor, then every worker (SIGTERM, then SIGKILL after the stop
    /// timeout), then the operator (SIGTERM: it releases its Lease).
    ///
    /// # Errors
    ///
    /// Fails when a process had to be killed; everything is stopped anyway.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.await;
        }
        let workers = std::mem::take(&mut *self.shared.workers.lock().await);
        let mut stops = Vec::new();
        for (pod, mut worker) in workers {
            let timeout = self.shared.stop_timeout;
            stops.push(tokio::spawn(async move {
                worker
                    .process
                    .shut_down(libc::SIGTERM, timeout)
                    .await
                    .with_context(|| format!("stopping the worker of {pod}"))
            }));
        }
        let retiring = std::mem::take(&mut *lock(&self.shared.retiring));
        let mut errors = Vec::new();
        for stop in stops {
            match stop.await {
                Ok(Err(e)) => errors.push(format!("{e:#}")),
                Err(e) => errors.push(e.to_string()),
                Ok(Ok(())) => {}
            }
        }
        for retire in retiring {
            let _ = retire.await;
        }
        let operator = self
            .operator
            .get_mut()
            .shut_down(libc::SIGTERM, Duration::from_secs(30))
            .await;
        if let Err(e) = operator {
            errors.push(format!("{e:#}"));
        }
        tracing::info!(namespace = %self.namespace, "fleet stopped");
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }

    /// Waits until pod `pod` shows `Ready` as `ready`.
    async fn wait_pod_ready(&self, pod: &str, ready: bool) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let what = format!("pod {}/{pod} to show Ready {ready}", self.namespace);
        crate::eventually(&what, Duration::from_secs(30), || async {
            let shown = pods.get_opt(pod).await?.as_ref().and_then(shown_ready);
            Ok((shown == Some(ready)).then_some(()))
        })
        .await
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.abort();
        }
        for retire in lock(&self.shared.retiring).drain(..) {
            retire.abort();
        }
        // The supervisor may hold the lock at an await point; its task is aborted, and
        // the processes die with the last reference to them.
        if let Ok(mut workers) = self.shared.workers.try_lock() {
            for worker in workers.values_mut() {
                worker.process.kill_group_blocking();
            }
        }
        self.operator.get_mut().kill_group_blocking();
    }
}

/// Starts the operator binary and waits until it answers `/readyz` and leads.
async fn start_operator(
    plane: &ControlPlane,
    options: &FleetOptions,
    bin: &Path,
    dir: &Path,
) -> anyhow::Result<(ServerProcess, u16)> {
    let kubeconfig = options
        .operator_kubeconfig
        .clone()
        .unwrap_or_else(|| plane.kubeconfig_path());
    let mut operator = ServerProcess::new("dbcollector-operator", dir.join("operator.log"));
    for attempt in 1..=3 {
        let port = try_free_port()?;
        let mut cmd = Command::new(bin);
        if let Some(namespace) = &options.watch_namespace {
            cmd.args(["--watch-namespace", namespace]);
        }
        cmd.args(["--lease-namespace", &options.operator_namespace])
            .args(["--identity", OPERATOR_IDENTITY])
            .arg(format!(
                "--lease-duration={}ms",
                options.lease_duration.as_millis()
            ))
            .arg(format!("--listen={LOOPBACK}:{port}"))
            // What a pod would have: no variable of the test process leaks in.
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", &options.log_filter);

        let offset = operator.log_len();
        operator.spawn(cmd, None, libc::SIGKILL).await?;
        let ready = operator
            .wait_ready(offset, OPERATOR_START_TIMEOUT, || leads(port))
            .await;
        match ready {
            Ok(()) => return Ok((operator, port)),
            Err(_) if attempt < 3 && operator.port_was_taken(offset) => {}
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Succeeds once the operator on `port` is ready and holds the leader Lease.
async fn leads(port: u16) -> anyhow::Result<()> {
    get_ok(port, "/readyz").await?;
    let metrics = get_ok(port, "/metrics").await?;
    if metrics
        .lines()
        .any(|l| l == "dbcollector_operator_leader 1")
    {
        Ok(())
    } else {
        bail!("the operator is ready but does not lead yet")
    }
}

/// The kubelet of the fleet: runs a process per pod and mirrors its readiness.
struct Supervisor<P> {
    plane: P,
    namespace: String,
    selector: String,
    pods: Api<Pod>,
    shared: Arc<Shared>,
    /// Kubeconfig per ServiceAccount name.
    kubeconfigs: HashMap<String, PathBuf>,
    /// The last failure, logged once until it changes.
    last_error: Option<String>,
}

impl<P> Supervisor<P>
where
    P: Deref<Target = ControlPlane> + Send + Sync + 'static,
{
    async fn run(mut self, period: Duration, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                _ = tick.tick() => {}
            }
            let result = self.sync().await;
            let error = result.err().map(|e| format!("{e:#}"));
            if error != self.last_error {
                if let Some(error) = &error {
                    tracing::warn!(namespace = %self.namespace, error, "fleet supervisor");
                }
                self.last_error = error;
            }
        }
    }

    /// One round: start processes for new pods, stop those of deleted pods, keep the
    /// others running and their pods' readiness current.
    async fn sync(&mut self) -> anyhow::Result<()> {
        let listed = self
            .pods
            .list(&ListParams::default().labels(&self.selector))
            .await
            .context("listing the worker pods")?;
        let pods: BTreeMap<String, Pod> = listed
            .items
            .into_iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .filter_map(|pod| Some((pod.metadata.name.clone()?, pod)))
            .collect();

        let shared = Arc::clone(&self.shared);
        let mut workers = shared.workers.lock().await;
        let gone: Vec<String> = workers
            .iter()
            .filter(|(name, w)| uid(pods.get(*name)) != Some(w.uid.as_str()))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(worker) = workers.remove(&name) {
                shared.retire(name, worker);
            }
        }

        let mut failures = Vec::new();
        for (name, pod) in &pods {
            if !workers.contains_key(name) {
                match self.launch(name, pod).await {
                    Ok(worker) => {
                        workers.insert(name.clone(), worker);
                    }
                    Err(e) => {
                        failures.push(format!("pod {name}: {e:#}"));
                        continue;
                    }
                }
            }
            let Some(worker) = workers.get_mut(name) else {
                continue;
            };
            if let Err(e) = worker.keep_running(name, &shared).await {
                failures.push(format!("pod {name}: {e:#}"));
            }
            worker.ready = worker.probe().await;
            if shown_ready(pod) != Some(worker.ready) {
                self.show_ready(name, worker.ready).await;
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            bail!("{}", failures.join("; "))
        }
    }

    /// Writes the pod's status as a kubelet would. A pod deleted meanwhile is skipped.
    async fn show_ready(&self, pod: &str, ready: bool) {
        let result = if ready {
            self.plane.mark_pod_ready(&self.namespace, pod).await
        } else {
            self.plane.mark_pod_not_ready(&self.namespace, pod).await
        };
        match result {
            Ok(()) => tracing::debug!(pod, ready, "pod readiness mirrored"),
            Err(e) => tracing::debug!(pod, error = format!("{e:#}"), "pod status not written"),
        }
    }

    /// Starts the process of a new pod.
    async fn launch(&mut self, name: &str, pod: &Pod) -> anyhow::Result<PodWorker> {
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| anyhow!("the pod has no spec"))?;
        let container = spec
            .containers
            .first()
            .ok_or_else(|| anyhow!("the pod has no container"))?;
        let account = spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let mut env = container_env(name, pod, container, &account);
        if spec.automount_service_account_token != Some(false) {
            let kubeconfig = self.kubeconfig(&account).await?;
            env.push(("KUBECONFIG".to_owned(), kubeconfig.display().to_string()));
        }
        let launch = Launch {
            args: container.args.clone().unwrap_or_default(),
            env,
        };
        let log = self.shared.log_dir.join(format!("{name}.log"));
        let mut worker = PodWorker {
            uid: uid(Some(pod)).unwrap_or_default().to_owned(),
            launch,
            port: try_free_port()?,
            process: ServerProcess::new("dbcollector-worker", log),
            held: false,
            ready: false,
            starts: 0,
            failures: 0,
            started_at: Instant::now(),
            restart_at: None,
            log_offset: 0,
        };
        worker.start(name, &self.shared).await?;
        Ok(worker)
    }

    /// A kubeconfig acting as ServiceAccount `account`, as its mounted token would.
    async fn kubeconfig(&mut self, account: &str) -> anyhow::Result<PathBuf> {
        if let Some(path) = self.kubeconfigs.get(account) {
            return Ok(path.clone());
        }
        let path = self
            .plane
            .service_account_kubeconfig(&self.namespace, account)
            .await?;
        self.kubeconfigs.insert(account.to_owned(), path.clone());
        Ok(path)
    }
}

impl Shared {
    /// Stops the process of a deleted pod in the background.
    fn retire(&self, pod: String, mut worker: PodWorker) {
        let timeout = self.stop_timeout;
        let stop = tokio::spawn(async move {
            let stopped = worker.process.shut_down(libc::SIGTERM, timeout).await;
            match stopped {
                Ok(()) => tracing::info!(pod, "worker of a deleted pod stopped"),
                Err(e) => tracing::warn!(pod, error = format!("{e:#}"), "worker stop"),
            }
        });
        let mut retiring = lock(&self.retiring);
        retiring.retain(|stop| !stop.is_finished());
        retiring.push(stop);
    }
}

impl PodWorker {
    /// Spawns the process.
    async fn start(&mut self, pod: &str, shared: &Shared) -> anyhow::Result<()> {
        let mut cmd = Command::new(&shared.worker_bin);
        cmd.args(&self.launch.args)
            .arg(format!("--listen={LOOPBACK}:{}", self.port))
            .env_clear()
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", &shared.log_filter);
        self.log_offset = self.process.log_len();
        self.process.spawn(cmd, None, libc::SIGKILL).await?;
        self.starts += 1;
        self.started_at = Instant::now();
        self.restart_at = None;
        tracing::info!(
            pod,
            port = self.port,
            starts = self.starts,
            "worker started"
        );
        Ok(())
    }

    /// Reaps the process if it exited, scheduling its restart unless it is held; returns
    /// its exit status then.
    fn reap(&mut self, pod: &str) -> Option<std::process::ExitStatus> {
        let status = self.process.try_exited().ok().flatten()?;
        self.ready = false;
        if self.held {
            return Some(status);
        }
        if self.started_at.elapsed() >= BACKOFF_RESET {
            self.failures = 0;
        }
        self.failures += 1;
        let delay = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.saturating_sub(1).min(8))
            .min(MAX_BACKOFF);
        self.restart_at = Some(Instant::now() + delay);
        // The port was taken by another process meanwhile: the next start takes another.
        if self.process.port_was_taken(self.log_offset) {
            if let Ok(port) = try_free_port() {
                self.port = port;
            }
        }
        tracing::info!(
            pod,
            ?status,
            ?delay,
            "worker exited; restarting after a delay"
        );
        Some(status)
    }

    /// Restarts the process once its backoff has passed, unless it is held.
    async fn keep_running(&mut self, pod: &str, shared: &Shared) -> anyhow::Result<()> {
        self.reap(pod);
        let due = self.restart_at.is_some_and(|at| Instant::now() >= at);
        if !self.held && !self.process.is_running() && due {
            self.start(pod, shared).await?;
        }
        Ok(())
    }

    /// Whether the process runs and its `/readyz` answers 200.
    async fn probe(&self) -> bool {
        self.process.is_running() && matches!(http_get(self.port, "/readyz").await, Ok((200, _)))
    }
}

/// The container's environment as the kubelet would set it, downward-API fields
/// resolved for a pod on 127.0.0.1. Secret and ConfigMap references are not resolved:
/// the operator renders none for the worker.
fn container_env(
    name: &str,
    pod: &Pod,
    container: &Container,
    account: &str,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        if let Some(value) = &var.value {
            env.push((var.name.clone(), value.clone()));
            continue;
        }
        let field = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref());
        let value = match field.map(|f| f.field_path.as_str()) {
            Some("metadata.name") => Some(name.to_owned()),
            Some("metadata.namespace") => pod.metadata.namespace.clone(),
            Some("metadata.uid") => pod.metadata.uid.clone(),
            Some("spec.serviceAccountName") => Some(account.to_owned()),
            Some("status.podIP" | "status.hostIP") => Some(LOOPBACK.to_string()),
            _ => None,
        };
        match value {
            Some(value) => env.push((var.name.clone(), value)),
            None => tracing::warn!(
                pod = name,
                variable = %var.name,
                "environment variable source not resolved by the fleet; left unset"
            ),
        }
    }
    env
}

/// Whether the pod shows itself running and ready (`Some(true)`), running and not ready
/// (`Some(false)`), or anything else (`None`: pending, no condition).
fn shown_ready(pod: &Pod) -> Option<bool> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")?;
    Some(ready.status == "True")
}

fn uid(pod: Option<&Pod>) -> Option<&str> {
    pod?.metadata.uid.as_deref()
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0 (the server closes the connection after
/// the answer): the status code and the body.
async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect((LOOPBACK, port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {LOOPBACK}:{port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("GET {path} on port {port}: no answer within {HTTP_TIMEOUT:?}"))?
        .with_context(|| format!("GET {path} on port {port}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("GET {path} on port {port}: no HTTP status in the answer"))?;
    Ok((status, body.to_owned()))
}

/// The body of `GET path`, which must answer 200.
async fn get_ok(port: u16, path: &str) -> anyhow::Result<String> {
    match http_get(port, path).await? {
        (200, body) => Ok(body),
        (status, body) => bail!("GET {path} on port {port}: {status} {}", body.trim()),
    }
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shard assignment of a DatabaseCollector's status as a table: per pod its owned
/// ranges, the ranges granted and not yet acknowledged, its targets, its annotated and
/// acknowledged epochs; then the unowned slots.
pub fn assignment_table(status: &DatabaseCollectorStatus) -> String {
    use std::fmt::Write as _;

    let mut out = format!(
        "epoch {}, {} targets, {} unowned slots\n{:<16} {:<24} {:<16} {:>7} {:>6} {:>6}\n",
        status.assignment_epoch,
        status.targets,
        status.unowned_slots,
        "pod",
        "ranges",
        "granted",
        "targets",
        "epoch",
        "acked",
    );
    for a in &status.assignment {
        let acked = a
            .acked_epoch
            .map_or_else(|| "-".to_owned(), |e| e.to_string());
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:<16} {:>7} {:>6} {:>6}",
            a.pod,
            a.ranges.to_string(),
            a.granted.to_string(),
            a.targets,
            a.epoch,
            acked
        );
    }
    for c in &status.conditions {
        let _ = writeln!(
            out,
            "{}={} ({}): {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        EnvVar, EnvVarSource, ObjectFieldSelector, PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn field(name: &str, path: &str) -> EnvVar {
        EnvVar {
            name: name.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }
    }

    fn pod(phase: &str, ready: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("orders-1".to_owned()),
                namespace: Some("monitoring".to_owned()),
                uid: Some("u-1".to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                conditions: ready.map(|status| {
                    vec![PodCondition {
                        type_: "Ready".to_owned(),
                        status: status.to_owned(),
                        ..PodCondition::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn the_container_environment_resolves_the_downward_api_for_a_local_pod() {
        let container = Container {
            name: "worker".to_owned(),
            env: Some(vec![
                EnvVar {
                    name: "DBCOLLECTOR_CONFIG_MAP".to_owned(),
                    value: Some("orders-config".to_owned()),
                    ..EnvVar::default()
                },
                field("POD_NAME", "metadata.name"),
                field("POD_NAMESPACE", "metadata.namespace"),
                field("POD_IP", "status.podIP"),
                field("NODE", "spec.nodeName"),
            ]),
            ..Container::default()
        };
        let env = container_env("orders-1", &pod("Pending", None), &container, "sa");
        let env: BTreeMap<_, _> = env.into_iter().collect();
        assert_eq!(env["DBCOLLECTOR_CONFIG_MAP"], "orders-config");
        assert_eq!(env["POD_NAME"], "orders-1");
        assert_eq!(env["POD_NAMESPACE"], "monitoring");
        assert_eq!(env["POD_IP"], "127.0.0.1");
        assert!(!env.contains_key("NODE"), "unresolvable fields stay unset");
    }

    #[test]
    fn a_pod_shows_ready_only_when_running_with_its_condition() {
        assert_eq!(shown_ready(&pod("Pending", None)), None);
        assert_eq!(shown_ready(&pod("Pending", Some("True"))), None);
        assert_eq!(shown_ready(&pod("Running", None)), None);
        assert_eq!(shown_ready(&pod("Running", Some("False"))), Some(false));
        assert_eq!(shown_ready(&pod("Running", Some("True"))), Some(true));
    }

    #[test]
    fn the_selector_names_one_collector_or_every_worker() {
        let mut options = FleetOptions::new("monitoring");
        assert_eq!(
            options.selector(),
            "app.kubernetes.io/component=worker,app.kubernetes.io/name=dbcollector"
        );
        options.collector = Some("orders".to_owned());
        assert!(options
            .selector()
            .contains("app.kubernetes.io/instance=orders"));
    }

    #[tokio::test]
    async fn http_get_reads_status_and_body_of_a_local_server() {
        let listener = tokio::net::TcpListener::bind((LOOPBACK, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/readyz",
            axum::routing::get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no") }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (status, body) = http_get(port, "/readyz").await.unwrap();
        assert_eq!((status, body.as_str()), (503, "no"));
        assert_eq!(http_get(port, "/other").await.unwrap().0, 404);
        assert!(get_ok(port, "/readyz").await.is_err());
    }
}
