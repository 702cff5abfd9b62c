//! What the operator's real-server tests share: one control plane per test binary with
//! the CRD installed as a user would, operators run in-process on runtimes of their own,
//! and helpers to read collectors, children and pods.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbcollector_crds::annotations::ShardAssignment;
use dbcollector_crds::shard::Ranges;
use dbcollector_crds::{DatabaseCollector, DatabaseCollectorStatus};
use dbcollector_operator::metrics::Metrics;
use dbcollector_operator::server::Health;
use dbcollector_operator::{leader, Operator, Options};
use dbcollector_tests::{eventually, ControlPlane};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Config, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, OnceCell};

/// How long a test waits for the operator or a controller to do its part.
pub const WAIT: Duration = Duration::from_secs(90);

/// The CRD manifest, as committed.
pub const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/dbcollector.dev_databasecollectors.yaml"
);

/// The operator's RBAC, as the deployment manifests copy it.
pub const RBAC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../operator/rbac.yaml");

static PLANE: OnceCell<ControlPlane> = OnceCell::const_new();

/// The control plane of this test binary, with the CRD installed, started by the first
/// test that asks. Its processes die with the test process.
pub async fn plane() -> &'static ControlPlane {
    dbcollector_tests::init_tracing();
    PLANE
        .get_or_init(|| async {
            let started = Instant::now();
            let plane = ControlPlane::start().await.unwrap();
            // --validate=false: kubectl validates client-side against the server's
            // OpenAPI document, and a v1.20 server's CRD schema knows nothing of the
            // x-kubernetes-validations (CEL) fields, which kubectl then rejects as
            // unknown. The server itself accepts the CRD (and ignores CEL).
            plane
                .kubectl_ok(["apply", "--validate=false", "-f", CRD])
                .await
                .unwrap();
            plane
                .kubectl_ok([
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/databasecollectors.dbcollector.dev",
                ])
                .await
                .unwrap();
            eprintln!(
                "control plane with the CRD ready in {:?}",
                started.elapsed()
            );
            plane
        })
        .await
}

/// An operator running in-process on a runtime of its own, so that a test can stop it
/// gracefully or kill it (its tasks dropped mid-flight, its Lease never released).
pub struct RunningOperator {
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its leadership and watch state.
    pub health: Arc<Health>,
}

/// Options for an operator watching `namespace` only, electing in it, with short Lease
/// timings so that a killed leader is replaced within seconds.
pub fn options(namespace: &str, identity: &str) -> Options {
    Options {
        default_image: "example.invalid/dbcollector-worker:test".to_owned(),
        namespace: Some(namespace.to_owned()),
        election: leader::Config {
            namespace: namespace.to_owned(),
            name: "dbcollector-operator".to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(4),
            grace: Duration::from_secs(1),
        },
        listen: None,
    }
}

/// Starts an operator acting with the client configuration `config`.
pub fn start_operator(config: Config, options: Options) -> RunningOperator {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (metrics_tx, metrics_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    runtime.spawn(async move {
        // The client's connection task must live on this runtime.
        let client = Client::try_from(config).unwrap();
        let operator = Operator::new(client, options);
        let _ = metrics_tx.send((operator.metrics(), operator.health()));
        let result = operator
            .run(async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = result {
            eprintln!("operator failed: {e}");
        }
        let _ = done_tx.send(());
    });
    let (metrics, health) = metrics_rx.recv().unwrap();
    RunningOperator {
        runtime: Some(runtime),
        stop: Some(stop_tx),
        done: Some(done_rx),
        metrics,
        health,
    }
}

impl RunningOperator {
    /// Stops it as SIGTERM would: running reconciles finish, the Lease is released.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), done).await;
        }
    }

    /// Kills it: every task is dropped where it stands, nothing is released.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Reconciles run so far.
    pub fn reconciles(&self) -> u64 {
        self.metrics.reconciles.get()
    }

    /// Waits until it leads.
    pub async fn wait_leading(&self) {
        let health = self.health.clone();
        eventually("the operator to lead", WAIT, || {
            let leads = health.is_leader();
            let ready = health.readiness();
            async move {
                match ready {
                    Ok(()) if leads => Ok(Some(())),
                    Ok(()) => Ok(None),
                    Err(pending) => Err(anyhow::anyhow!("watches not synced: {pending:?}")),
                }
            }
        })
        .await
        .unwrap();
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Creates namespace `ns` and starts an admin operator watching it.
pub async fn namespace_with_operator(ns: &str) -> (&'static ControlPlane, RunningOperator) {
    let plane = plane().await;
    plane.create_namespace(ns).await.unwrap();
    acknowledge_assignments(plane.config(), ns);
    let operator = start_operator(plane.config(), options(ns, &format!("{ns}-operator")));
    operator.wait_leading().await;
    (plane, operator)
}

/// Plays the workers' side of the assignment in namespace `ns` for as long as the test
/// binary runs: every pod's annotated epoch is acknowledged in its Lease (once the
/// operator created the Lease) with a heartbeat, as a worker does once it applied it.
/// These tests are about the operator; real workers acknowledge in the sharding tests.
pub fn acknowledge_assignments(config: Config, ns: &str) {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = Client::try_from(config).unwrap();
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let leases: Api<Lease> = Api::namespaced(client, &ns);
            let selector = format!(
                "{}={}",
                dbcollector_crds::annotations::COMPONENT_LABEL,
                dbcollector_crds::annotations::WORKER_COMPONENT
            );
            loop {
                if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                    for pod in list.items {
                        let Ok(Some(assigned)) =
                            ShardAssignment::from_annotations(pod.annotations())
                        else {
                            continue;
                        };
                        let Ok(mut lease) = leases.get(&pod.name_any()).await else {
                            continue;
                        };
                        let acked = lease
                            .annotations()
                            .get(dbcollector_crds::annotations::ACKED_EPOCH)
                            .and_then(|v| v.parse::<u64>().ok());
                        let fresh = lease
                            .spec
                            .as_ref()
                            .and_then(|s| s.renew_time.as_ref())
                            .is_some_and(|t| {
                                k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second()
                                    < 5
                            });
                        if acked == Some(assigned.epoch) && fresh {
                            continue;
                        }
                        lease.annotations_mut().insert(
                            dbcollector_crds::annotations::ACKED_EPOCH.to_owned(),
                            assigned.epoch.to_string(),
                        );
                        let spec = lease.spec.get_or_insert_with(Default::default);
                        spec.holder_identity = Some(pod.name_any());
                        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
                        let _ = leases
                            .replace(&pod.name_any(), &PostParams::default(), &lease)
                            .await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    });
}

/// A spec with `replicas` workers, `shards` slots and targets `db0`.. `db{targets-1}`.
pub fn spec(replicas: i32, shards: u32, targets: usize) -> Value {
    let databases: Vec<Value> = (0..targets)
        .map(|i| {
            json!({
                "name": format!("db{i}"), "engine": "postgresql",
                "host": format!("pg{}.example.invalid", i % 3), "user": "monitor",
                "databases": [format!("app{i}")]
            })
        })
        .collect();
    json!({
        "replicas": replicas,
        "shards": shards,
        "databases": databases,
        "interval": "10s",
        "exporter": { "endpoint": "http://otel-collector.example.invalid:4317" }
    })
}

/// The collectors API of `ns`.
pub fn collectors(client: &Client, ns: &str) -> Api<DatabaseCollector> {
    Api::namespaced(client.clone(), ns)
}

/// Creates collector `name` with `spec` in `ns`.
pub async fn create_collector(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> DatabaseCollector {
    let dc: DatabaseCollector = serde_json::from_value(json!({
        "apiVersion": "dbcollector.dev/v1alpha1",
        "kind": "DatabaseCollector",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    collectors(client, ns)
        .create(&PostParams::default(), &dc)
        .await
        .unwrap()
}

/// Waits until `check` holds for the collector's status, and returns the status.
pub async fn wait_status<F>(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: F,
) -> DatabaseCollectorStatus
where
    F: Fn(&DatabaseCollectorStatus) -> bool,
{
    let api = collectors(client, ns);
    let check = &check;
    eventually(what, WAIT, || {
        let api = api.clone();
        async move {
            let dc = api.get(name).await?;
            let status = dc.status.unwrap_or_default();
            Ok(check(&status).then_some(status))
        }
    })
    .await
    .unwrap()
}

/// The condition of type `type_`.
pub fn condition<'a>(status: &'a DatabaseCollectorStatus, type_: &str) -> Option<&'a Condition> {
    status.condition(type_)
}

/// Waits until the object `name` exists in `api` and returns it.
pub async fn wait_exists<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to exist"), WAIT, || async {
        Ok(api.get_opt(name).await?)
    })
    .await
    .unwrap()
}

/// The metadata of `name` once it exists in `ns`.
pub async fn meta_of<K>(client: &Client, ns: &str, name: &str) -> kube::api::ObjectMeta
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    wait_exists(&api, name).await.meta().clone()
}

/// Creates Secret `name` in `ns` holding `password` under the key `password`.
pub async fn create_password_secret(client: &Client, ns: &str, name: &str, password: &[u8]) {
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            "password".to_owned(),
            k8s_openapi::ByteString(password.to_vec()),
        )])),
        ..Default::default()
    };
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The worker pods of collector `name`, by ordinal.
pub async fn worker_pods(client: &Client, ns: &str, name: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = dbcollector_crds::annotations::worker_selector_string(name);
    let mut list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items;
    list.sort_by_key(|p| {
        p.name_any()
            .rsplit('-')
            .next()
            .and_then(|o| o.parse::<u32>().ok())
    });
    list
}

/// Waits until `n` worker pods exist and marks each running and ready.
pub async fn ready_pods(plane: &ControlPlane, ns: &str, name: &str, n: usize) {
    let client = plane.client();
    eventually(&format!("{n} worker pods"), WAIT, || async {
        Ok((worker_pods(&client, ns, name).await.len() == n).then_some(()))
    })
    .await
    .unwrap();
    for pod in worker_pods(&client, ns, name).await {
        plane.mark_pod_ready(ns, &pod.name_any()).await.unwrap();
    }
}

/// Checks that the assignment in `status` gives each of `shards` slots to exactly one
/// of the pods named `pods`, that nothing is being handed off, and that each pod's
/// annotations carry the same ranges and the epoch it acknowledged; false while not.
pub fn assignment_consistent(status: &DatabaseCollectorStatus, shards: u32, pods: &[Pod]) -> bool {
    let owners: BTreeSet<&str> = status.assignment.iter().map(|a| a.pod.as_str()).collect();
    let names: BTreeSet<String> = pods.iter().map(ResourceExt::name_any).collect();
    if owners.len() != status.assignment.len()
        || owners != names.iter().map(String::as_str).collect()
    {
        return false;
    }
    let mut union = Ranges::new();
    let mut total = 0;
    for a in &status.assignment {
        if !union.is_disjoint(&a.ranges) {
            return false;
        }
        union = union.union(&a.ranges);
        total += a.ranges.len();
    }
    if union != Ranges::full(shards) || total != u64::from(shards) {
        return false;
    }
    pods.iter().all(|pod| {
        let Ok(Some(annotated)) = ShardAssignment::from_annotations(pod.annotations()) else {
            return false;
        };
        let in_status = status
            .assignment
            .iter()
            .find(|a| a.pod == pod.name_any())
            .map(|a| &a.ranges);
        let entry = status.assignment.iter().find(|a| a.pod == pod.name_any());
        entry.is_some_and(|e| e.granted.is_empty() && e.acked_epoch == Some(e.epoch))
            && annotated.epoch == entry.map_or(0, |e| e.epoch)
            && annotated.space == shards
            && Some(&annotated.ranges) == in_status
    })
}

/// Runs `action`, then waits until the operator ran at least one more reconcile and its
/// debounce passed, so that what the reconcile would write is written.
pub async fn after_a_reconcile<F, Fut, T>(operator: &RunningOperator, action: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let before = operator.reconciles();
    let output = action().await;
    eventually("a reconcile", WAIT, || {
        let n = operator.reconciles();
        async move { Ok((n > before).then_some(())) }
    })
    .await
    .unwrap();
    // A reconcile writes within its own run; one more debounce period covers a second
    // reconcile triggered by the first one's writes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    output
}
