//! The DatabaseCollector controller: what it watches, the reconcile entry point, and the
//! per-object error backoff.
//!
//! Collectors are watched as dynamic objects and deserialized in the reconcile, so that
//! one object that does not deserialize is reported on itself instead of failing every
//! list of the watch. The controller also watches its children (by owner reference), the
//! worker pods (by label, mapped to their collector) and Secrets (mapped to the
//! collectors that reference them, so a Secret created later clears `Degraded`).

pub mod children;
pub mod reconcile;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbcollector_crds::annotations::INSTANCE_LABEL;
use dbcollector_crds::DatabaseCollector;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::metrics::{ErrorKind, Metrics};
use crate::render;
use crate::server::{Health, Watches};
use children::Applier;

/// First delay after a failed reconcile; doubles with each consecutive failure.
const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// Longest delay between retries of a failing collector.
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How long reconcile requests for one object are gathered into one: a pod deleted and
/// recreated, or a burst of child events after an apply, cost one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading an object failed.
    #[error("reading {what}")]
    Read {
        /// What was read, e.g. `StatefulSet orders`.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Replacing the status failed (a conflict means the object changed meanwhile).
    #[error("writing the status")]
    WriteStatus(#[source] kube::Error),
    /// Writing a pod's assignment annotations failed.
    #[error("annotating pod {pod}")]
    Annotate {
        /// The pod.
        pod: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Rendering the children failed.
    #[error("rendering the children")]
    Render(#[from] render::Error),
    /// Serializing the status failed.
    #[error("serializing the status")]
    Serialize(#[source] serde_json::Error),
    /// Required children could not be applied (the status names why).
    #[error("required children not applied: {names}")]
    Children {
        /// `Kind name` of each.
        names: String,
    },
}

impl Error {
    /// The bounded kind, for the error counter and the choice of retry delay.
    pub fn kind(&self) -> ErrorKind {
        let api = |e: &kube::Error| match e {
            kube::Error::Api(s) if s.code == 409 => ErrorKind::Conflict,
            kube::Error::Api(s) if s.code == 403 => ErrorKind::Forbidden,
            _ => ErrorKind::Api,
        };
        match self {
            Error::Read { source, .. } | Error::Annotate { source, .. } => api(source),
            Error::WriteStatus(source) => api(source),
            Error::Render(_) | Error::Serialize(_) => ErrorKind::Render,
            Error::Children { .. } => ErrorKind::Api,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The worker image for collectors that name none.
    pub default_image: String,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// The DatabaseCollector resource.
    pub resource: ApiResource,
    /// Publishes Events.
    recorder: Recorder,
    /// Applies children only when they differ.
    applier: Applier,
    /// Consecutive failures per collector (`namespace/name`), for the backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// The watched collectors, once the controller runs.
    store: Mutex<Option<Store<DynamicObject>>>,
}

impl Context {
    /// A context for a controller run by the instance named `identity`.
    pub fn new(
        client: Client,
        default_image: String,
        metrics: Arc<Metrics>,
        identity: &str,
    ) -> Self {
        let reporter = Reporter {
            controller: dbcollector_crds::annotations::MANAGER.to_owned(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            default_image,
            metrics,
            resource: ApiResource::erase::<DatabaseCollector>(&()),
            applier: Applier::default(),
            failures: Mutex::new(HashMap::new()),
            store: Mutex::new(None),
        }
    }

    /// Publishes an Event on the collector; a failure is logged, never fatal.
    async fn publish(&self, obj: &DynamicObject, type_: EventType, reason: &str, note: String) {
        let mut note = note;
        if note.len() > 1000 {
            let mut end = 997;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
            note.push_str("...");
        }
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        let reference = obj.object_ref(&self.resource);
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, reason, "publishing an event failed");
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn exists(&self, namespace: &str, name: &str) -> bool {
        let guard = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.as_ref().is_none_or(|store| {
            let key = ObjectRef::new_with(name, self.resource.clone()).within(namespace);
            store.get(&key).is_some()
        })
    }
}

/// The delay before retrying after the `failures`-th consecutive failure.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX)
}

fn key(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The reconcile entry point: one span, metrics, the failure count and an Event on error.
async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let span = tracing::info_span!(
        "reconcile",
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any()
    );
    let result = reconcile::reconcile(&obj, &ctx)
        .instrument(span.clone())
        .await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {
            ctx.failures().remove(&key(&obj));
        }
        Err(e) => {
            let kind = e.kind();
            ctx.metrics.count_error(kind);
            let _enter = span.enter();
            // A lost race is routine: the newer object is reconciled right after.
            if kind == ErrorKind::Conflict {
                tracing::debug!(error = %crate::error_chain(e), "reconcile lost a race");
            } else {
                tracing::warn!(error = %crate::error_chain(e), "reconcile failed");
                drop(_enter);
                let note = crate::error_chain(e);
                ctx.publish(&obj, EventType::Warning, "ReconcileFailed", note)
                    .await;
            }
        }
    }
    ctx.metrics.prune(|ns, name| ctx.exists(ns, name));
    result
}

/// Retries a failed collector after an exponential delay that resets on success.
fn error_policy(obj: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures();
        let count = map.entry(key(&obj)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = match error.kind() {
        ErrorKind::Conflict => Duration::from_millis(200),
        _ => backoff(failures),
    };
    tracing::debug!(failures, ?delay, "retrying later");
    Action::requeue(delay)
}

/// Which optional APIs the server serves (watching one it does not would fail forever).
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    /// policy/v1 PodDisruptionBudgets (Kubernetes 1.21+).
    pub pdb_v1: bool,
    /// autoscaling/v2 HorizontalPodAutoscalers (Kubernetes 1.23+).
    pub hpa_v2: bool,
}

impl Served {
    /// Asks the API server's discovery.
    pub async fn discover(client: &Client) -> Self {
        let serves = |group_version: &'static str, resource: &'static str| {
            let client = client.clone();
            async move {
                match client.list_api_group_resources(group_version).await {
                    Ok(list) => list.resources.iter().any(|r| r.name == resource),
                    Err(e) => {
                        tracing::debug!(group_version, error = %e, "not served");
                        false
                    }
                }
            }
        };
        Self {
            pdb_v1: serves("policy/v1", "poddisruptionbudgets").await,
            hpa_v2: serves("autoscaling/v2", "horizontalpodautoscalers").await,
        }
    }
}

/// Runs the controller until `stop` completes, then lets running reconciles finish.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    health: &Health,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let served = Served::discover(&client).await;
    tracing::debug!(?served, "optional APIs");
    let api = |c: &Client| -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(c.clone(), ns, &ctx.resource),
            None => Api::all_with(c.clone(), &ctx.resource),
        }
    };
    let synced = health.begin_watches();

    // The collectors' watch, built by hand so that its sync can be seen: the store's
    // `wait_until_ready` wakes a single waiter, and the controller is that waiter.
    let main = synced.track("databasecollectors");
    let writer = Writer::new(ctx.resource.clone());
    let store = writer.as_reader();
    *ctx.store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store.clone());
    let collectors = watcher(api(&client), watcher::Config::default())
        .inspect(move |event| mark_sync(&main, event))
        .reflect(writer)
        .applied_objects();
    let mut controller =
        Controller::for_stream_with(collectors, store.clone(), ctx.resource.clone());

    let scope = (&client, namespace, &synced);
    controller = owning::<ServiceAccount>(controller, scope, "serviceaccounts");
    controller = owning::<Role>(controller, scope, "roles");
    controller = owning::<RoleBinding>(controller, scope, "rolebindings");
    controller = owning::<ConfigMap>(controller, scope, "configmaps");
    controller = owning::<Service>(controller, scope, "services");
    controller = owning::<Lease>(controller, scope, "leases");
    controller = owning::<StatefulSet>(controller, scope, "statefulsets");
    if served.pdb_v1 {
        controller = owning::<PodDisruptionBudget>(controller, scope, "poddisruptionbudgets");
    }
    if served.hpa_v2 {
        controller =
            owning::<HorizontalPodAutoscaler>(controller, scope, "horizontalpodautoscalers");
    }

    let pods_config = watcher::Config::default().labels(&render::worker_pods_selector());
    let resource = ctx.resource.clone();
    controller = controller.watches_stream(
        tracked(
            scoped::<Pod>(&client, namespace),
            &pods_config,
            synced.track("pods"),
        ),
        move |pod: PartialObjectMeta<Pod>| {
            let ns = pod.namespace()?;
            let collector = pod.labels().get(INSTANCE_LABEL)?;
            Some(ObjectRef::new_with(collector, resource.clone()).within(&ns))
        },
    );
    let resource = ctx.resource.clone();
    let secrets_store = store.clone();
    controller = controller.watches_stream(
        tracked(
            scoped::<Secret>(&client, namespace),
            &watcher::Config::default(),
            synced.track("secrets"),
        ),
        move |secret: PartialObjectMeta<Secret>| referencing(&secrets_store, &resource, &secret),
    );

    controller
        .with_config(controller::Config::default().debounce(DEBOUNCE))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::trace!(%object, "reconciled"),
                Err(controller::Error::ReconcilerFailed(..)) => {} // logged in reconcile
                Err(e) => tracing::debug!(error = %crate::error_chain(&e), "controller"),
            }
        })
        .await;
    health.end_watches();
}

/// Where the watches go: the client, the namespace (`None`: all) and the sync flags.
type Scope<'a> = (&'a Client, Option<&'a str>, &'a Watches<'a>);

/// Adds a watch of the children of kind `K` (the operator's, by label; metadata only),
/// tracked as `name`.
fn owning<K>(
    controller: Controller<DynamicObject>,
    (client, namespace, watches): Scope<'_>,
    name: &'static str,
) -> Controller<DynamicObject>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let config = watcher::Config::default().labels(&render::managed_selector());
    let stream = tracked(scoped::<K>(client, namespace), &config, watches.track(name));
    controller.owns_stream_with(stream, ())
}

/// The collectors in the Secret's namespace whose spec references it.
fn referencing(
    store: &Store<DynamicObject>,
    resource: &ApiResource,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<DynamicObject>> {
    let (Some(ns), name) = (secret.namespace(), secret.name_any()) else {
        return Vec::new();
    };
    store
        .state()
        .iter()
        .filter(|dc| dc.namespace().as_deref() == Some(ns.as_str()))
        .filter(|dc| {
            let spec = dc.data.get("spec").cloned().unwrap_or_default();
            serde_json::from_value(spec)
                .is_ok_and(|spec| render::secret_refs(&spec).contains_key(&name))
        })
        .map(|dc| ObjectRef::new_with(&dc.name_any(), resource.clone()).within(&ns))
        .collect()
}

/// A metadata-only API of kind `K` in `namespace`, or in all namespaces.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch of `api` (metadata only) whose initial list, once complete, sets `synced` (and a
/// relist clears it until complete again), as a stream of touched objects.
fn tracked<K>(
    api: Api<PartialObjectMeta<K>>,
    config: &watcher::Config,
    synced: Arc<AtomicBool>,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher(api, config.clone())
        .inspect(move |event| mark_sync(&synced, event))
        .touched_objects()
}

/// Clears `synced` when a watch (re)lists and sets it once the list is complete.
fn mark_sync<K>(synced: &AtomicBool, event: &Result<watcher::Event<K>, watcher::Error>) {
    match event {
        Ok(watcher::Event::Init) => synced.store(false, Ordering::Release),
        Ok(watcher::Event::InitDone) => synced.store(true, Ordering::Release),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_delay_doubles_per_consecutive_failure_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn errors_are_classified_into_bounded_kinds() {
        let api = |code: u16| {
            kube::Error::Api(
                kube::core::Status::failure("m", "r")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert_eq!(Error::WriteStatus(api(409)).kind(), ErrorKind::Conflict);
        let read = Error::Read {
            what: "x".to_owned(),
            source: api(403),
        };
        assert_eq!(read.kind(), ErrorKind::Forbidden);
        assert_eq!(Error::WriteStatus(api(500)).kind(), ErrorKind::Api);
        let render = Error::Render(render::Error::MissingMetadata("uid"));
        assert_eq!(render.kind(), ErrorKind::Render);
    }
}
