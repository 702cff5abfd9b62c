//! One reconcile of one DatabaseCollector: parse, refuse or apply, assign, report.
//!
//! Writes happen only where something differs: children are compared with the live
//! objects before being applied, the status is replaced only when it changed, and pods
//! are annotated only when their assignment annotations differ. So a reconcile of an
//! unchanged collector writes nothing, and the operator's own writes, which come back as
//! watch events, do not start a loop.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dbcollector_crds::annotations::{self, worker_selector_string, ShardAssignment, MANAGER};
use dbcollector_crds::cel;
use dbcollector_crds::status::{DatabaseCollectorStatus, DEGRADED, PROGRESSING};
use dbcollector_crds::{DatabaseCollector, DatabaseCollectorSpec};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::{Context, Error};
use crate::assign::{self, WorkerPod};
use crate::render::{self, names};
use crate::status::{
    self, ChildReport, Observation, Outcome, PodHealth, Refusal, SecretProblem, Workload,
};

/// How often an unchanged collector is reconciled anyway (drift from outside, pods whose
/// state changed without an event reaching the operator).
const RESYNC: Duration = Duration::from_secs(300);

/// How often a collector whose slot handoff is in flight is reconciled anyway, so that
/// the acknowledgement and heartbeat timeouts are noticed without an event.
const HANDOFF_POLL: Duration = Duration::from_secs(5);

/// A collector read from the API: the typed object and its previous status.
pub struct Parsed {
    /// The collector, with the previous status in it.
    pub dc: DatabaseCollector,
    /// The previous status (the default when there was none or it did not parse).
    pub status: DatabaseCollectorStatus,
    /// Whether the stored status parsed; when it did not, it is rewritten whole.
    pub status_valid: bool,
}

/// A collector whose spec does not deserialize.
pub struct Invalid {
    /// The field path and what is wrong.
    pub message: String,
    /// The previous conditions, as far as they parse.
    pub conditions: Vec<Condition>,
}

/// Reads a collector from the dynamic object the watch delivered. The spec must parse;
/// a status that does not (written by another version, or by hand) is replaced, keeping
/// its epoch when it can be read so that the epoch never goes back.
pub fn parse(obj: &DynamicObject) -> Result<Parsed, Invalid> {
    let raw_status = obj.data.get("status").cloned().unwrap_or(Value::Null);
    let lenient_conditions = || {
        raw_status
            .get("conditions")
            .and_then(|c| serde_json::from_value::<Vec<Condition>>(c.clone()).ok())
            .unwrap_or_default()
    };
    let raw_spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    let spec: DatabaseCollectorSpec = match serde_path_to_error::deserialize(raw_spec) {
        Ok(spec) => spec,
        Err(e) => {
            let path = e.path().to_string();
            let message = format!("spec.{path}: {}", e.into_inner());
            return Err(Invalid {
                message: message.replace("spec..", "spec"),
                conditions: lenient_conditions(),
            });
        }
    };
    let (status, status_valid) = match &raw_status {
        Value::Null => (DatabaseCollectorStatus::default(), true),
        raw => match serde_json::from_value::<DatabaseCollectorStatus>(raw.clone()) {
            Ok(status) => (status, true),
            Err(e) => {
                tracing::warn!(error = %e, "the stored status does not parse; rewriting it");
                let status = DatabaseCollectorStatus {
                    assignment_epoch: raw
                        .get("assignmentEpoch")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    conditions: lenient_conditions(),
                    ..DatabaseCollectorStatus::default()
                };
                (status, false)
            }
        },
    };
    let dc = DatabaseCollector {
        metadata: obj.metadata.clone(),
        spec,
        status: Some(status.clone()),
    };
    Ok(Parsed {
        dc,
        status,
        status_valid,
    })
}

/// Why the spec must not be applied: a changed `shards` (compared with the value the
/// running StatefulSet was rendered from) or a rule CEL enforces from Kubernetes 1.25.
pub fn refusal(spec: &DatabaseCollectorSpec, applied_shards: Option<u32>) -> Option<Refusal> {
    if let Some(applied) = applied_shards.filter(|&s| s != spec.shards) {
        return Some(Refusal {
            reason: "ShardsChanged",
            message: format!(
                "spec.shards: {} (it was {applied} and is now {}; set it back to {applied})",
                cel::SHARDS_IMMUTABLE.message,
                spec.shards
            ),
        });
    }
    cel::validate(spec, None).err().map(|e| Refusal {
        reason: "InvalidSpec",
        message: e.to_string(),
    })
}

/// The typed APIs of one namespace.
struct Apis {
    accounts: Api<ServiceAccount>,
    roles: Api<Role>,
    bindings: Api<RoleBinding>,
    maps: Api<ConfigMap>,
    services: Api<Service>,
    leases: Api<Lease>,
    sets: Api<StatefulSet>,
    budgets: Api<PodDisruptionBudget>,
    autoscalers: Api<HorizontalPodAutoscaler>,
    pods: Api<Pod>,
    secrets: Api<Secret>,
}

impl Apis {
    fn new(client: &Client, ns: &str) -> Self {
        Self {
            accounts: Api::namespaced(client.clone(), ns),
            roles: Api::namespaced(client.clone(), ns),
            bindings: Api::namespaced(client.clone(), ns),
            maps: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client.clone(), ns),
            leases: Api::namespaced(client.clone(), ns),
            sets: Api::namespaced(client.clone(), ns),
            budgets: Api::namespaced(client.clone(), ns),
            autoscalers: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client.clone(), ns),
        }
    }
}

/// Reconciles one collector.
pub async fn reconcile(obj: &DynamicObject, ctx: &Context) -> Result<Action, Error> {
    let parsed = match parse(obj) {
        Ok(parsed) => parsed,
        Err(invalid) => return report_invalid(obj, ctx, invalid).await,
    };
    if obj.metadata.deletion_timestamp.is_some() {
        // Being deleted (foreground deletion keeps it while the garbage collector removes
        // the children): applying children now would recreate them.
        tracing::debug!("being deleted: nothing is written");
        return Ok(Action::await_change());
    }
    if parsed.dc.spec.paused {
        tracing::debug!("paused: nothing is written");
        return Ok(Action::await_change());
    }
    let dc = &parsed.dc;
    let ns = dc.namespace().unwrap_or_default();
    let name = dc.name_any();
    let uid = dc.uid().unwrap_or_default();
    let apis = Apis::new(&ctx.client, &ns);

    let set_name = names::stateful_set(&name);
    let live_set = get_opt(&apis.sets, &set_name).await?;
    let applied_shards = live_set
        .as_ref()
        .filter(|s| super::children::controlled_by(*s, &uid))
        .and_then(|s| s.annotations().get(annotations::SHARD_SPACE))
        .and_then(|v| v.parse().ok());
    if let Some(refused) = refusal(&dc.spec, applied_shards) {
        tracing::debug!(reason = refused.reason, "spec refused");
        return report_refused(obj, ctx, &apis, &parsed, live_set, refused).await;
    }

    let secrets = check_secrets(&apis, &dc.spec).await?;
    let pods = list_pods(&apis, &name).await?;
    let workers: Vec<WorkerPod> = pods.iter().filter_map(|p| worker_pod(&name, p)).collect();
    let worker_reports = lease_reports(&apis, &name).await?;
    let targets: Vec<String> = dc.spec.databases.iter().map(|t| t.name.clone()).collect();
    let plan = assign::plan(&assign::Input {
        shards: dc.spec.shards,
        replicas: dc.spec.replicas,
        targets: &targets,
        pods: &workers,
        reports: &worker_reports,
        current: &parsed.status.assignment,
        current_epoch: parsed.status.assignment_epoch,
        now: Timestamp::now(),
    });

    let rendered = render::children_sized(dc, &ctx.default_image, plan.stateful_set_replicas)?;
    let (reports, live_set) = apply_children(ctx, &apis, &rendered, &uid, &name)
        .await
        .map(|(reports, set)| (reports, set.or(live_set)))?;

    let workload = live_set.as_ref().map(Workload::of);
    let observation = Observation {
        generation: dc.metadata.generation,
        desired_replicas: dc.spec.replicas,
        shards: dc.spec.shards,
        refused: None,
        children: reports,
        workload: workload.clone(),
        pods: pods.iter().map(PodHealth::of).collect(),
        assignment: plan.assignment.clone(),
        unowned_slots: plan.unowned_slots,
        secrets,
        handoff: plan.waiting.clone(),
        silent: plan.silent.clone(),
        lost: plan.lost.clone(),
        reports: worker_reports,
    };
    let new_status = DatabaseCollectorStatus {
        observed_generation: dc.metadata.generation,
        replicas: workload.as_ref().map_or(0, |w| w.replicas),
        ready_replicas: workload.as_ref().map_or(0, |w| w.ready_replicas),
        selector: Some(worker_selector_string(&name)),
        targets: u32::try_from(targets.len()).unwrap_or(u32::MAX),
        assignment_epoch: plan.epoch,
        assignment: plan.assignment.clone(),
        unowned_slots: plan.unowned_slots,
        conditions: status::conditions(&observation, &parsed.status.conditions, &now()),
    };

    commit(ctx, obj, &apis, &parsed, &new_status, &plan).await?;
    match unapplied(&observation.children) {
        Some(names) => Err(Error::Children { names }),
        // Acknowledgements arrive as Lease events; the timeouts need a clock.
        // A not-ready owner keeps its slots only for a while: look again before then.
        None if !plan.settled()
            || !plan.silent.is_empty()
            || !plan.lost.is_empty()
            || workers.iter().any(|p| !p.ready) =>
        {
            Ok(Action::requeue(HANDOFF_POLL))
        }
        None => Ok(Action::requeue(RESYNC)),
    }
}

/// Writes the status if it changed, then the pods' assignment annotations: in that order,
/// so that a new epoch is recorded (or the write loses a race and nothing else happens)
/// before any pod sees it.
async fn commit(
    ctx: &Context,
    obj: &DynamicObject,
    apis: &Apis,
    parsed: &Parsed,
    new_status: &DatabaseCollectorStatus,
    plan: &assign::Plan,
) -> Result<(), Error> {
    if !parsed.status_valid || *new_status != parsed.status {
        let value = serde_json::to_value(new_status).map_err(Error::Serialize)?;
        write_status(ctx, obj, value).await?;
        publish_transitions(ctx, obj, &parsed.status.conditions, &new_status.conditions).await;
    }
    let shards = parsed.dc.spec.shards;
    if plan.changed {
        ctx.metrics.assignments.inc();
        let pods: Vec<&str> = plan.annotate.iter().map(|(p, _)| p.as_str()).collect();
        let granting: u64 = plan.assignment.iter().map(|a| a.granted.len()).sum();
        tracing::info!(epoch = plan.epoch, ?pods, granting, "new shard assignment");
        let note = format!(
            "assignment epoch {}: annotated {} ({granting} of the {shards} slots being granted, {} unowned)",
            plan.epoch,
            pods.join(", "),
            plan.unowned_slots
        );
        ctx.publish(obj, EventType::Normal, "Assigned", note).await;
    }
    let owned = u64::from(shards) - u64::from(plan.unowned_slots);
    let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    ctx.metrics.set_assigned(&ns, &name, owned);
    for (pod, assignment) in &plan.annotate {
        annotate(&apis.pods, pod, assignment).await?;
    }
    Ok(())
}

/// `Kind name` of each required child not applied, if any.
fn unapplied(children: &[ChildReport]) -> Option<String> {
    let names: Vec<String> = children
        .iter()
        .filter(|c| c.required && !matches!(c.outcome, Outcome::Applied | Outcome::Deleted))
        .map(|c| format!("{} {}", c.kind, c.name))
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// Applies every child in dependency order (the workers' identity and rights first, so
/// pods never start without them) and deletes those no longer wanted; returns the reports
/// and the StatefulSet as applied.
async fn apply_children(
    ctx: &Context,
    apis: &Apis,
    rendered: &render::Children,
    uid: &str,
    name: &str,
) -> Result<(Vec<ChildReport>, Option<StatefulSet>), Error> {
    let a = &ctx.applier;
    let mut reports = vec![
        a.apply(&apis.accounts, &rendered.service_account, uid, true)
            .await
            .report,
        a.apply(&apis.roles, &rendered.role, uid, true).await.report,
        a.apply(&apis.bindings, &rendered.role_binding, uid, true)
            .await
            .report,
        a.apply(&apis.maps, &rendered.config_map, uid, true)
            .await
            .report,
        a.apply(&apis.services, &rendered.service, uid, true)
            .await
            .report,
    ];
    for lease in &rendered.leases {
        reports.push(a.apply(&apis.leases, lease, uid, false).await.report);
    }
    let set = a.apply(&apis.sets, &rendered.stateful_set, uid, true).await;
    reports.push(set.report);
    let budget = &rendered.pod_disruption_budget;
    reports.push(a.apply(&apis.budgets, budget, uid, false).await.report);
    match &rendered.autoscaler {
        Some(hpa) => reports.push(a.apply(&apis.autoscalers, hpa, uid, false).await.report),
        None => {
            let hpa_name = names::stateful_set(name);
            reports.extend(a.delete(&apis.autoscalers, &hpa_name, uid).await);
        }
    }
    reports.extend(stale_leases(ctx, apis, name, uid, &rendered.leases).await?);
    Ok((reports, set.live))
}

/// Reports a collector whose spec does not deserialize, without touching anything else.
async fn report_invalid(
    obj: &DynamicObject,
    ctx: &Context,
    invalid: Invalid,
) -> Result<Action, Error> {
    tracing::warn!(error = %invalid.message, "the DatabaseCollector does not deserialize");
    ctx.metrics
        .count_error(crate::metrics::ErrorKind::InvalidObject);
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let apis = Apis::new(&ctx.client, &ns);
    let set = get_opt(&apis.sets, &names::stateful_set(&name)).await?;
    let pods = list_pods(&apis, &name).await?;
    let observation = Observation {
        generation: obj.metadata.generation,
        refused: Some(Refusal {
            reason: "InvalidObject",
            message: format!("the object does not deserialize: {}", invalid.message),
        }),
        workload: set.as_ref().map(Workload::of),
        pods: pods.iter().map(PodHealth::of).collect(),
        ..Observation::default()
    };
    let conditions = status::conditions(&observation, &invalid.conditions, &now());
    if !status::same(&conditions, &invalid.conditions) {
        let mut value = obj.data.get("status").cloned().unwrap_or(Value::Null);
        if !value.is_object() {
            value = Value::Object(serde_json::Map::new());
        }
        value["conditions"] = serde_json::to_value(&conditions).map_err(Error::Serialize)?;
        if let Some(generation) = obj.metadata.generation {
            value["observedGeneration"] = Value::from(generation);
        }
        write_status(ctx, obj, value).await?;
        publish_transitions(ctx, obj, &invalid.conditions, &conditions).await;
    }
    Ok(Action::await_change())
}

/// Reports a refused spec; the children and the assignment stay as they are.
async fn report_refused(
    obj: &DynamicObject,
    ctx: &Context,
    apis: &Apis,
    parsed: &Parsed,
    live_set: Option<StatefulSet>,
    refused: Refusal,
) -> Result<Action, Error> {
    let dc = &parsed.dc;
    let pods = list_pods(apis, &dc.name_any()).await?;
    let workload = live_set.as_ref().map(Workload::of);
    let observation = Observation {
        generation: dc.metadata.generation,
        desired_replicas: dc.spec.replicas,
        shards: dc.spec.shards,
        refused: Some(refused),
        workload: workload.clone(),
        pods: pods.iter().map(PodHealth::of).collect(),
        assignment: parsed.status.assignment.clone(),
        unowned_slots: parsed.status.unowned_slots,
        ..Observation::default()
    };
    let mut new_status = parsed.status.clone();
    new_status.observed_generation = dc.metadata.generation;
    new_status.replicas = workload.as_ref().map_or(0, |w| w.replicas);
    new_status.ready_replicas = workload.as_ref().map_or(0, |w| w.ready_replicas);
    new_status.conditions = status::conditions(&observation, &parsed.status.conditions, &now());
    if !parsed.status_valid || new_status != parsed.status {
        let value = serde_json::to_value(&new_status).map_err(Error::Serialize)?;
        write_status(ctx, obj, value).await?;
        publish_transitions(ctx, obj, &parsed.status.conditions, &new_status.conditions).await;
    }
    Ok(Action::await_change())
}

/// Replaces the status, with the resourceVersion the object was read at as the
/// precondition: a concurrent change makes the write fail with a conflict and the
/// reconcile run again on the newer object.
async fn write_status(ctx: &Context, obj: &DynamicObject, status: Value) -> Result<(), Error> {
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ctx.resource);
    let mut updated = obj.clone();
    if let Some(data) = updated.data.as_object_mut() {
        data.insert("status".to_owned(), status);
    }
    api.replace_status(&obj.name_any(), &PostParams::default(), &updated)
        .await
        .map_err(Error::WriteStatus)?;
    tracing::debug!("status written");
    Ok(())
}

/// Publishes an Event for each condition whose status or reason changed.
async fn publish_transitions(
    ctx: &Context,
    obj: &DynamicObject,
    before: &[Condition],
    after: &[Condition],
) {
    for c in after {
        let previous = before.iter().find(|b| b.type_ == c.type_);
        let changed = previous.is_none_or(|p| p.status != c.status || p.reason != c.reason);
        if !changed || (previous.is_none() && c.status == "Unknown") {
            continue;
        }
        let bad = match c.type_.as_str() {
            DEGRADED => c.status == "True",
            PROGRESSING => false,
            _ => c.status == "False" && previous.is_some_and(|p| p.status == "True"),
        };
        let type_ = if bad {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let note = format!("{} is {}: {}", c.type_, c.status, c.message);
        ctx.publish(obj, type_, &c.reason, note).await;
    }
}

/// The Secrets and keys the spec references that do not exist.
async fn check_secrets(
    apis: &Apis,
    spec: &DatabaseCollectorSpec,
) -> Result<Vec<SecretProblem>, Error> {
    let mut problems = Vec::new();
    for (name, uses) in render::secret_refs(spec) {
        let fields = |key: Option<&str>| -> Vec<String> {
            let set: BTreeSet<String> = uses
                .iter()
                .filter(|u| key.is_none_or(|k| u.key == k))
                .map(|u| u.field.clone())
                .collect();
            set.into_iter().collect()
        };
        let secret = apis
            .secrets
            .get_opt(&name)
            .await
            .map_err(|source| Error::Read {
                what: format!("Secret {name}"),
                source,
            })?;
        let Some(secret) = secret else {
            problems.push(SecretProblem {
                secret: name.clone(),
                key: None,
                fields: fields(None),
            });
            continue;
        };
        let keys: BTreeSet<&str> = uses.iter().map(|u| u.key.as_str()).collect();
        for key in keys {
            let present = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
                || secret
                    .string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(key));
            if !present {
                problems.push(SecretProblem {
                    secret: name.clone(),
                    key: Some(key.to_owned()),
                    fields: fields(Some(key)),
                });
            }
        }
    }
    Ok(problems)
}

/// Deletes the Leases of pods beyond `spec.replicas`.
async fn stale_leases(
    ctx: &Context,
    apis: &Apis,
    name: &str,
    uid: &str,
    wanted: &[Lease],
) -> Result<Vec<ChildReport>, Error> {
    let wanted: BTreeSet<String> = wanted.iter().map(ResourceExt::name_any).collect();
    let selector = render::labels(name)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let leases = match apis
        .leases
        .list(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => list.items,
        // Reported by the apply of the wanted Leases already.
        Err(e)
            if !matches!(
                super::children::classify(&e),
                super::children::Failure::Other(_)
            ) =>
        {
            return Ok(Vec::new())
        }
        Err(source) => {
            return Err(Error::Read {
                what: "Leases".to_owned(),
                source,
            })
        }
    };
    let mut reports = Vec::new();
    for lease in leases {
        let lease_name = lease.name_any();
        if !wanted.contains(&lease_name) {
            reports.extend(ctx.applier.delete(&apis.leases, &lease_name, uid).await);
        }
    }
    Ok(reports)
}

async fn list_pods(apis: &Apis, name: &str) -> Result<Vec<Pod>, Error> {
    let params = ListParams::default().labels(&worker_selector_string(name));
    let mut pods = apis
        .pods
        .list(&params)
        .await
        .map_err(|source| Error::Read {
            what: "worker pods".to_owned(),
            source,
        })?
        .items;
    pods.sort_by_key(|p| names::ordinal(name, &p.name_any()).unwrap_or(u32::MAX));
    Ok(pods)
}

/// A pod of the collector's StatefulSet, as the assignment sees it.
fn worker_pod(collector: &str, pod: &Pod) -> Option<WorkerPod> {
    let name = pod.name_any();
    let ordinal = names::ordinal(collector, &name)?;
    let annotated = match ShardAssignment::from_annotations(pod.annotations()) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(pod = %name, error = %e, "unreadable assignment annotations");
            None
        }
    };
    Some(WorkerPod {
        name,
        ordinal,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        ready: PodHealth::of(pod).ready,
        annotated,
    })
}

/// What the collector's workers report in their Leases, by pod name.
async fn lease_reports(
    apis: &Apis,
    collector: &str,
) -> Result<BTreeMap<String, assign::Report>, Error> {
    let selector = render::labels(collector)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let leases = apis
        .leases
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::Read {
            what: "Leases".to_owned(),
            source,
        })?;
    Ok(leases
        .items
        .iter()
        .map(|lease| (lease.name_any(), lease_report(lease)))
        .collect())
}

/// A worker's report in its Lease; unreadable fields count as absent.
pub fn lease_report(lease: &Lease) -> assign::Report {
    let get = |key: &str| lease.annotations().get(key).map(String::as_str);
    let number = |key: &str| get(key).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
    assign::Report {
        acked_epoch: get(annotations::ACKED_EPOCH).and_then(|v| v.parse().ok()),
        renewed: lease
            .spec
            .as_ref()
            .and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0),
        targets_down: number(annotations::TARGETS_DOWN),
        down_names: get(annotations::TARGETS_DOWN_NAMES)
            .map(|v| {
                v.split(',')
                    .filter(|n| !n.is_empty())
                    .take(annotations::MAX_REPORTED_NAMES)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        capabilities_missing: number(annotations::CAPABILITIES_MISSING),
    }
}

/// Writes a pod's assignment annotations (server-side apply, so only these three fields
/// are the operator's on the pod).
async fn annotate(pods: &Api<Pod>, pod: &str, assignment: &ShardAssignment) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": pod, "annotations": assignment.to_annotations() },
    });
    let params = PatchParams::apply(MANAGER).force();
    match pods.patch(pod, &params, &Patch::Apply(&patch)).await {
        Ok(_) => {
            tracing::debug!(pod, epoch = assignment.epoch, ranges = %assignment.ranges, "annotated");
            Ok(())
        }
        // The pod went away since it was listed; its replacement is annotated next time.
        Err(e) if super::children::is_missing_object(&e) => Ok(()),
        Err(source) => Err(Error::Annotate {
            pod: pod.to_owned(),
            source,
        }),
    }
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    api.get_opt(name).await.map_err(|source| Error::Read {
        what: format!("{} {name}", K::kind(&K::DynamicType::default())),
        source,
    })
}

fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests;
