//! Throwaway Kubernetes control planes: etcd, kube-apiserver and kube-controller-manager
//! v1.20 on 127.0.0.1, started from local binaries in the manner of controller-runtime's
//! envtest.

use std::ffi::OsStr;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ::kube::api::{Api, Patch, PatchParams, PostParams};
use ::kube::config::Kubeconfig;
use ::kube::{Client, Config};
use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStatus, Namespace, Pod, PodCondition, PodIP,
    PodStatus, Secret, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tracing::instrument::WithSubscriber as _;
use tracing::subscriber::NoSubscriber;

use crate::process::{self, ServerProcess};
use crate::{try_free_port, LOOPBACK};

/// The script that makes the binaries available and prints their directory.
const ASSETS_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/kube-test-assets.sh"
);

/// The binaries a control plane runs, all in one directory.
const BINARIES: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// Controllers of kube-controller-manager: all but those that manage nodes and volume
/// attachment, which have nothing to work on without kubelets and only log errors.
const CONTROLLERS: &str = "*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder";

/// How long each process of a start may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// How long [`ControlPlane`] helpers wait for a controller to do its part.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a start picks new ports when another process took one first.
const PORT_ATTEMPTS: u32 = 3;

/// A Kubernetes control plane of its own for one test: etcd, kube-apiserver and
/// kube-controller-manager, listening on 127.0.0.1 only.
///
/// The API server authorizes with RBAC; the harness talks to it as `admin`, a member of
/// `system:masters`, with a bearer token. Its serving certificate is self-signed; the
/// kubeconfigs of the harness name the file holding it as their certificate authority, so
/// clients verify it. There is no scheduler and no kubelet: pods that controllers create
/// stay `Pending` until a test plays the kubelet with [`Self::mark_pod_ready`].
///
/// Dropping the control plane kills its processes and removes its directory; the
/// processes also die with the test process.
///
/// # Caveats
///
/// The API server is v1.20: it serves neither autoscaling/v2 nor policy/v1
/// PodDisruptionBudgets, ignores CEL validation rules, and refuses streaming lists. In
/// v1.20 a ServiceAccount token lives in a Secret that the token controller fills, so a
/// pod can only be created in a namespace once its `default` ServiceAccount has one
/// ([`Self::create_namespace`] waits for it).
#[derive(Debug)]
pub struct ControlPlane {
    /// The API server's secure port on 127.0.0.1.
    port: u16,
    /// Client configuration for `admin`.
    config: Config,
    /// `kubectl`, from `$KUBECTL` or `PATH`.
    kubectl: PathBuf,
    controller_manager: ServerProcess,
    apiserver: ServerProcess,
    etcd: ServerProcess,
    /// Holds etcd's data, certificates, keys, kubeconfigs and every process's log.
    dir: TempDir,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager on free ports, and returns
    /// once the API server's `/readyz` answers 200 and the controllers have given the
    /// `default` namespace's ServiceAccount its token.
    ///
    /// The binaries come from `$DBCOLLECTOR_KUBE_ASSETS` when it names a directory, else
    /// from `scripts/kube-test-assets.sh`, which the first start of a test process runs.
    ///
    /// # Errors
    ///
    /// Fails when the binaries, `openssl` or `kubectl` are missing, or a process does not
    /// become ready in time; the message carries the tail of that process's log.
    pub async fn start() -> anyhow::Result<Self> {
        let started = Instant::now();
        let bin = assets_dir().await?;
        let kubectl = std::env::var_os("KUBECTL").map_or_else(|| "kubectl".into(), PathBuf::from);
        let dir = process::server_dir("kube", None)?;
        let token = random_token()?;

        // The admin's token, and the key pair that signs and verifies ServiceAccount
        // tokens (the API server verifies, the token controller signs).
        fs::write(
            dir.path().join("tokens.csv"),
            format!("{token},admin,admin,system:masters\n"),
        )
        .context("writing tokens.csv")?;
        generate_service_account_key(dir.path()).await?;

        let log = |name: &str| dir.path().join(format!("{name}.log"));
        let mut plane = Self {
            port: 0,
            // Replaced once the API server is up and its certificate written.
            config: Config::new("https://127.0.0.1".parse()?),
            kubectl,
            controller_manager: ServerProcess::new(
                "kube-controller-manager",
                log("kube-controller-manager"),
            ),
            apiserver: ServerProcess::new("kube-apiserver", log("kube-apiserver")),
            etcd: ServerProcess::new("etcd", log("etcd")),
            dir,
        };
        let etcd_port = plane.start_etcd(&bin).await?;
        tracing::debug!(port = etcd_port, elapsed = ?started.elapsed(), "etcd ready");
        plane.start_apiserver(&bin, etcd_port, &token).await?;
        plane.use_verified_tls(&token).await?;
        tracing::debug!(port = plane.port, elapsed = ?started.elapsed(), "kube-apiserver ready");
        plane.start_controller_manager(&bin).await?;

        tracing::debug!(
            port = plane.port,
            elapsed = ?started.elapsed(),
            "kubernetes control plane started"
        );
        Ok(plane)
    }

    /// Port of the API server (HTTPS on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the API server: `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> String {
        format!("https://{LOOPBACK}:{}", self.port)
    }

    /// The directory holding the control plane's files, among them `etcd.log`,
    /// `kube-apiserver.log` and `kube-controller-manager.log`; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of a kubeconfig for `admin` (group `system:masters`), default namespace
    /// `default`.
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// Client configuration for `admin`, to build clients with other settings.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// A client acting as `admin`, on the current tokio runtime.
    ///
    /// Each call builds a new client, so that a control plane shared by tests that run on
    /// different runtimes hands each test a client whose connection task lives on its own.
    ///
    /// # Panics
    ///
    /// Panics outside a tokio runtime, or if the TLS configuration cannot be built, which
    /// [`Self::start`] already did successfully.
    pub fn client(&self) -> Client {
        match Client::try_from(self.config.clone()) {
            Ok(client) => client,
            Err(e) => panic!("cannot build a client for the test API server: {e}"),
        }
    }

    /// Runs `kubectl` with `args` against this control plane as `admin`, and returns its
    /// output whatever its exit status.
    ///
    /// `kubectl` keeps its discovery cache in the control plane's directory, so that a
    /// later control plane on the same port never sees this one's resources.
    ///
    /// # Errors
    ///
    /// Fails when `kubectl` cannot be run.
    pub async fn kubectl<I, S>(&self, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_with_input(args, &[]).await
    }

    /// Like [`Self::kubectl`], with `input` on its standard input (e.g. for `-f -`).
    ///
    /// # Errors
    ///
    /// Fails when `kubectl` cannot be run.
    pub async fn kubectl_with_input<I, S>(&self, args: I, input: &[u8]) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = tokio::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "running {}; is it installed? (scripts/kube-test-assets.sh)",
                    self.kubectl.display()
                )
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input)
                .await
                .context("writing kubectl's input")?;
        }
        child
            .wait_with_output()
            .await
            .context("waiting for kubectl")
    }

    /// Runs `kubectl` like [`Self::kubectl`] and returns its standard output.
    ///
    /// # Errors
    ///
    /// Fails when `kubectl` cannot be run or exits unsuccessfully; the message carries
    /// its standard error.
    pub async fn kubectl_ok<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let output = self.kubectl(&args).await?;
        if !output.status.success() {
            let line: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
            bail!(
                "kubectl {} failed ({}): {}",
                line.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates namespace `name` and waits until its `default` ServiceAccount has a token,
    /// without which v1.20 refuses to create pods there.
    ///
    /// # Errors
    ///
    /// Fails when the namespace cannot be created (e.g. it exists) or the token does not
    /// appear within a minute.
    pub async fn create_namespace(&self, name: &str) -> anyhow::Result<()> {
        let client = self.client();
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;

        let accounts = Api::<ServiceAccount>::namespaced(client, name);
        crate::eventually(
            &format!("the token of ServiceAccount {name}/default"),
            CONTROLLER_TIMEOUT,
            || async { Ok(has_token(accounts.get_opt("default").await?).then_some(())) },
        )
        .await
    }

    /// Writes a kubeconfig that acts as ServiceAccount `namespace/name`, creating the
    /// account if needed, and returns its path.
    ///
    /// The token comes from a `kubernetes.io/service-account-token` Secret `<name>-token`
    /// that the token controller fills, as v1.20 does; the account has no permission
    /// beyond what RBAC objects of the test grant it.
    ///
    /// # Errors
    ///
    /// Fails when the objects cannot be created or the token does not appear within a
    /// minute.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let client = self.client();
        let account = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        create_if_absent(
            &Api::<ServiceAccount>::namespaced(client.clone(), namespace),
            &account,
        )
        .await
        .with_context(|| format!("creating ServiceAccount {namespace}/{name}"))?;

        let secret_name = format!("{name}-token");
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                annotations: Some(
                    [(
                        "kubernetes.io/service-account.name".to_owned(),
                        name.to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/service-account-token".to_owned()),
            ..Secret::default()
        };
        let secrets = Api::<Secret>::namespaced(client, namespace);
        create_if_absent(&secrets, &secret)
            .await
            .with_context(|| format!("creating Secret {namespace}/{secret_name}"))?;

        let token = crate::eventually(
            &format!("the token of ServiceAccount {namespace}/{name}"),
            CONTROLLER_TIMEOUT,
            || async {
                let secret = secrets.get(&secret_name).await?;
                let token = secret.data.and_then(|mut data| data.remove("token"));
                Ok(token.map(|token| String::from_utf8_lossy(&token.0).into_owned()))
            },
        )
        .await?;

        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        fs::write(
            &path,
            self.kubeconfig_yaml(&user, &token, namespace, Tls::Verify),
        )
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Marks pod `namespace/name` running and ready, as a kubelet would once its
    /// containers started and passed their readiness probes: phase `Running`, conditions
    /// `Ready` and `ContainersReady` true, every container running and ready, pod IP
    /// 127.0.0.1. The StatefulSet controller counts a pod ready only with both the phase
    /// and the condition.
    ///
    /// # Errors
    ///
    /// Fails when the pod does not exist or its status cannot be patched.
    pub async fn mark_pod_ready(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.set_pod_status(namespace, name, true).await
    }

    /// Marks pod `namespace/name` running but not ready, as a kubelet does when a
    /// readiness probe fails: conditions `Ready` and `ContainersReady` false.
    ///
    /// # Errors
    ///
    /// Fails when the pod does not exist or its status cannot be patched.
    pub async fn mark_pod_not_ready(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        self.set_pod_status(namespace, name, false).await
    }

    async fn set_pod_status(&self, namespace: &str, name: &str, ready: bool) -> anyhow::Result<()> {
        let pods = Api::<Pod>::namespaced(self.client(), namespace);
        let pod = pods
            .get(name)
            .await
            .with_context(|| format!("reading pod {namespace}/{name}"))?;
        let status = kubelet_status(&pod, ready, Time(Timestamp::now()));

        // Strategic merge: conditions merge by type, so conditions set by others stay.
        let patch = serde_json::json!({ "status": status });
        pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .with_context(|| format!("patching the status of pod {namespace}/{name}"))?;
        Ok(())
    }

    /// Starts etcd on free ports and returns its client port.
    async fn start_etcd(&mut self, bin: &Path) -> anyhow::Result<u16> {
        let data = self.dir.path().join("etcd");
        for attempt in 1..=PORT_ATTEMPTS {
            let (client, peer) = (try_free_port()?, try_free_port()?);
            let client_url = format!("http://{LOOPBACK}:{client}");
            let peer_url = format!("http://{LOOPBACK}:{peer}");
            let mut cmd = Command::new(bin.join("etcd"));
            cmd.arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                // Durability is pointless for a test's data and fsyncs are slow.
                .arg("--unsafe-no-fsync");

            let offset = self.etcd.log_len();
            self.etcd.spawn(cmd, None, libc::SIGKILL).await?;
            let ready = self
                .etcd
                .wait_ready(offset, START_TIMEOUT, || etcd_health(client))
                .await;
            match ready {
                Ok(()) => return Ok(client),
                Err(_) if attempt < PORT_ATTEMPTS && port_taken(&self.etcd, offset) => {
                    // etcd may have written its member directory before failing.
                    let _ = fs::remove_dir_all(&data);
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Starts the API server on a free port and waits for `/readyz`.
    async fn start_apiserver(&mut self, bin: &Path, etcd: u16, token: &str) -> anyhow::Result<()> {
        let dir = self.dir.path().to_path_buf();
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = try_free_port()?;
            // The certificate to verify does not exist before the server writes it.
            let yaml = self.kubeconfig_yaml("admin", token, "default", Tls::Skip);
            let config = Config::try_from(Kubeconfig::from_yaml(&yaml)?)
                .context("loading the startup kubeconfig")?;
            let client =
                Client::try_from(config).context("building a client for the test API server")?;

            let mut cmd = Command::new(bin.join("kube-apiserver"));
            cmd.args(["--etcd-servers", &format!("http://{LOOPBACK}:{etcd}")])
                .args(["--bind-address", &LOOPBACK.to_string()])
                .args(["--advertise-address", &LOOPBACK.to_string()])
                .args(["--secure-port", &self.port.to_string()])
                // A self-signed serving certificate is generated here.
                .arg("--cert-dir")
                .arg(dir.join("certs"))
                .arg("--token-auth-file")
                .arg(dir.join("tokens.csv"))
                .args(["--authorization-mode", "RBAC"])
                .arg("--service-account-key-file")
                .arg(dir.join("sa.pub"))
                .arg("--service-account-signing-key-file")
                .arg(dir.join("sa.key"))
                .args(["--service-account-issuer", "https://kubernetes.default.svc"])
                // Only allocated to Service objects: no traffic goes to this range.
                .args(["--service-cluster-ip-range", "10.0.0.0/24"]);

            let offset = self.apiserver.log_len();
            self.apiserver.spawn(cmd, None, libc::SIGKILL).await?;
            // The probe's expected 500s would each log an error from the client's tracing
            // layer; nothing of the probe is worth logging.
            let ready = self
                .apiserver
                .wait_ready(offset, START_TIMEOUT, || {
                    readyz(client.clone()).with_subscriber(NoSubscriber::default())
                })
                .await;
            match ready {
                Ok(()) => return Ok(()),
                Err(_) if attempt < PORT_ATTEMPTS && port_taken(&self.apiserver, offset) => {}
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Writes the admin kubeconfig, verifying the serving certificate that the API server
    /// generated, and checks that a client accepts it.
    async fn use_verified_tls(&mut self, token: &str) -> anyhow::Result<()> {
        let yaml = self.kubeconfig_yaml("admin", token, "default", Tls::Verify);
        fs::write(self.kubeconfig_path(), &yaml).context("writing the admin kubeconfig")?;
        self.config = Config::try_from(Kubeconfig::from_yaml(&yaml)?)
            .context("loading the admin kubeconfig")?;
        let client = Client::try_from(self.config.clone())
            .context("building a client for the test API server")?;
        client
            .apiserver_version()
            .await
            .context("verifying the API server's self-signed certificate")?;
        Ok(())
    }

    /// Starts the controller manager and waits until its ServiceAccount and token
    /// controllers have given `default/default` a token, which also shows that it reached
    /// the API server and started its controllers.
    async fn start_controller_manager(&mut self, bin: &Path) -> anyhow::Result<()> {
        let dir = self.dir.path();
        let mut cmd = Command::new(bin.join("kube-controller-manager"));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(["--bind-address", &LOOPBACK.to_string()])
            // No serving at all: nothing polls its health, and no port can be taken.
            .args(["--secure-port", "0", "--port", "0"])
            .arg("--service-account-private-key-file")
            .arg(dir.join("sa.key"))
            // Every controller acts as admin: the control plane is not what is tested.
            .arg("--use-service-account-credentials=false")
            .arg("--leader-elect=false")
            .args(["--controllers", CONTROLLERS]);

        let offset = self.controller_manager.log_len();
        self.controller_manager
            .spawn(cmd, None, libc::SIGKILL)
            .await?;
        let accounts = Api::<ServiceAccount>::namespaced(self.client(), "default");
        self.controller_manager
            .wait_ready(offset, START_TIMEOUT, || {
                let accounts = accounts.clone();
                async move {
                    if has_token(accounts.get_opt("default").await?) {
                        Ok(())
                    } else {
                        Err(anyhow!("ServiceAccount default/default has no token yet"))
                    }
                }
            })
            .await
    }

    /// A kubeconfig for the bearer `token` of `user`, with `namespace` as its default.
    ///
    /// Written as JSON, which is YAML too, so that every value is quoted correctly.
    fn kubeconfig_yaml(&self, user: &str, token: &str, namespace: &str, tls: Tls) -> String {
        let mut cluster = serde_json::json!({ "server": self.server_url() });
        match tls {
            Tls::Skip => cluster["insecure-skip-tls-verify"] = true.into(),
            // The API server writes its self-signed certificate and that of the CA that
            // signed it into one file, valid for 127.0.0.1.
            Tls::Verify => {
                let ca = self.dir.path().join("certs/apiserver.crt");
                cluster["certificate-authority"] = ca.to_string_lossy().into();
            }
        }
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "dbcollector-test", "cluster": cluster }],
            "users": [{ "name": user, "user": { "token": token } }],
            "contexts": [{
                "name": "test",
                "context": { "cluster": "dbcollector-test", "user": user, "namespace": namespace },
            }],
            "current-context": "test",
        });
        format!("{kubeconfig:#}\n")
    }
}

/// How a kubeconfig treats the API server's certificate.
#[derive(Clone, Copy, Debug)]
enum Tls {
    /// Accept any certificate: only while the server has not written its own yet.
    Skip,
    /// Verify it against the file the server wrote.
    Verify,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Clients first, the store last, so that nothing logs a lost dependency on the way
        // down; the directory goes after every process, as a field dropped after them.
        self.controller_manager.kill_group_blocking();
        self.apiserver.kill_group_blocking();
        self.etcd.kill_group_blocking();
    }
}

/// Builds a client from the kubeconfig at `path` (as written by
/// [`ControlPlane::service_account_kubeconfig`]), on the current tokio runtime.
///
/// # Errors
///
/// Fails when the file cannot be read or is not a usable kubeconfig.
pub fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config =
        Config::try_from(kubeconfig).with_context(|| format!("loading {}", path.display()))?;
    Client::try_from(config).context("building a client")
}

/// The status a kubelet reports for `pod` once its containers run, ready or not.
fn kubelet_status(pod: &Pod, ready: bool, now: Time) -> PodStatus {
    let flag = if ready { "True" } else { "False" };
    let condition = |type_: &str, status: &str| PodCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        last_transition_time: Some(now.clone()),
        ..PodCondition::default()
    };
    let containers = pod
        .spec
        .as_ref()
        .map_or(&[][..], |spec| &spec.containers[..]);
    let container_statuses = containers
        .iter()
        .map(|container| ContainerStatus {
            name: container.name.clone(),
            image: container.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready,
            restart_count: 0,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(now.clone()),
                }),
                ..ContainerState::default()
            }),
            ..ContainerStatus::default()
        })
        .collect();

    PodStatus {
        phase: Some("Running".to_owned()),
        conditions: Some(vec![
            condition("PodScheduled", "True"),
            condition("Initialized", "True"),
            condition("ContainersReady", flag),
            condition("Ready", flag),
        ]),
        container_statuses: Some(container_statuses),
        host_ip: Some(LOOPBACK.to_string()),
        pod_ip: Some(LOOPBACK.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: LOOPBACK.to_string(),
        }]),
        start_time: pod
            .status
            .as_ref()
            .and_then(|status| status.start_time.clone())
            .or(Some(now)),
        ..PodStatus::default()
    }
}

/// Whether a ServiceAccount exists and references a token Secret.
fn has_token(account: Option<ServiceAccount>) -> bool {
    account
        .and_then(|account| account.secrets)
        .is_some_and(|secrets| !secrets.is_empty())
}

/// Creates `object`, or does nothing when an object of that name exists.
async fn create_if_absent<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: ::kube::Resource
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::Serialize
        + k8s_openapi::serde::de::DeserializeOwned,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(::kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the log written since `offset` says a port was taken.
fn port_taken(process: &ServerProcess, offset: u64) -> bool {
    process.log_since(offset).contains("address already in use")
}

/// Checks etcd's `/health` endpoint with a bare HTTP/1.0 request.
async fn etcd_health(port: u16) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect((LOOPBACK, port)).await?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    if response.contains(r#""health":"true""#) {
        Ok(())
    } else {
        let status = response.lines().next().unwrap_or_default();
        bail!("etcd is not healthy yet: {status}")
    }
}

/// Succeeds when the API server's `/readyz` answers 200, i.e. it reaches etcd and has run
/// every post-start hook (RBAC bootstrap roles among them).
async fn readyz(client: Client) -> anyhow::Result<()> {
    let request = http::Request::get("/readyz").body(Vec::new())?;
    client.request_text(request).await.context("GET /readyz")?;
    Ok(())
}

/// A random bearer token: 32 hex digits from the kernel's generator.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `sa.key` (RSA private key) and `sa.pub` in `dir` with `openssl`.
async fn generate_service_account_key(dir: &Path) -> anyhow::Result<()> {
    let key = dir.join("sa.key");
    let mut genrsa = tokio::process::Command::new("openssl");
    genrsa.arg("genrsa").arg("-out").arg(&key).arg("2048");
    process::run_to_completion(genrsa, "openssl genrsa").await?;

    let mut public = tokio::process::Command::new("openssl");
    public
        .arg("rsa")
        .arg("-in")
        .arg(&key)
        .arg("-pubout")
        .arg("-out")
        .arg(dir.join("sa.pub"));
    process::run_to_completion(public, "openssl rsa -pubout").await
}

/// The directory holding the binaries, found once per test process.
async fn assets_dir() -> anyhow::Result<PathBuf> {
    static DIR: OnceCell<PathBuf> = OnceCell::const_new();
    DIR.get_or_try_init(|| async {
        let dir = match std::env::var_os("DBCOLLECTOR_KUBE_ASSETS") {
            Some(dir) => PathBuf::from(dir),
            None => run_assets_script().await?,
        };
        for name in BINARIES {
            if !dir.join(name).is_file() {
                bail!("{name} is missing from {}", dir.display());
            }
        }
        Ok(dir)
    })
    .await
    .cloned()
}

/// Runs `scripts/kube-test-assets.sh` and returns the directory it prints last.
async fn run_assets_script() -> anyhow::Result<PathBuf> {
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(ASSETS_SCRIPT)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = cmd
        .output()
        .await
        .with_context(|| format!("running {ASSETS_SCRIPT}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        bail!(
            "{ASSETS_SCRIPT} failed ({}):\n{}",
            output.status,
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .ok_or_else(|| anyhow!("{ASSETS_SCRIPT} printed no directory"))?;
    tracing::debug!(dir, elapsed = ?started.elapsed(), "kubernetes test binaries ready");
    Ok(PathBuf::from(dir.trim()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    use super::*;

    fn pod_with_containers(names: &[&str]) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: names
                    .iter()
                    .map(|name| Container {
                        name: (*name).to_owned(),
                        image: Some(format!("{name}:1")),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn condition(status: &PodStatus, type_: &str) -> String {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }

    #[test]
    fn kubelet_status_of_a_ready_pod_is_running_with_every_container_ready() {
        let pod = pod_with_containers(&["worker", "sidecar"]);
        let status = kubelet_status(&pod, true, Time(Timestamp::UNIX_EPOCH));

        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Ready"), "True");
        assert_eq!(condition(&status, "ContainersReady"), "True");
        let containers = status.container_statuses.unwrap();
        assert_eq!(containers.len(), 2);
        assert!(containers.iter().all(|c| c.ready));
        assert_eq!(containers[1].image, "sidecar:1");
    }

    #[test]
    fn kubelet_status_of_a_not_ready_pod_keeps_it_running_but_unready() {
        let pod = pod_with_containers(&["worker"]);
        let status = kubelet_status(&pod, false, Time(Timestamp::UNIX_EPOCH));

        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(&status, "Ready"), "False");
        assert_eq!(condition(&status, "ContainersReady"), "False");
        assert_eq!(condition(&status, "PodScheduled"), "True");
        assert!(!status.container_statuses.unwrap()[0].ready);
    }

    #[test]
    fn random_tokens_differ() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
