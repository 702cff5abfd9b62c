//! The conditions of a DatabaseCollector, computed from what one reconcile observed.
//!
//! Pure: [`conditions`] takes an [`Observation`] and the previous conditions and returns
//! the four conditions. Each is always present (Unknown when nothing is known yet),
//! carries the collector's generation, keeps its `lastTransitionTime` unless its status
//! changes, and has a message that names the pods, objects or fields concerned. Messages
//! are never empty: the v1.20 API server refuses an empty string inside a custom
//! resource.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use dbcollector_crds::status::{PodAssignment, AVAILABLE, DEGRADED, PROGRESSING, READY};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::assign::{Report, ACK_TIMEOUT, GRACE};

/// Most pods or objects named in one message; the rest are counted.
const MAX_NAMED: usize = 8;

/// Longest condition message (the API's limit is 32768 bytes).
const MAX_MESSAGE: usize = 4096;

/// Condition status values.
const TRUE: &str = "True";
const FALSE: &str = "False";
const UNKNOWN: &str = "Unknown";

/// Everything one reconcile learned that the conditions depend on.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// `metadata.generation` of the collector.
    pub generation: Option<i64>,
    /// `spec.replicas`.
    pub desired_replicas: i32,
    /// `spec.shards`.
    pub shards: u32,
    /// Set when the spec was refused and the previous one stays applied.
    pub refused: Option<Refusal>,
    /// What happened to each child this reconcile.
    pub children: Vec<ChildReport>,
    /// The StatefulSet, when it exists.
    pub workload: Option<Workload>,
    /// The worker pods that exist, by ordinal.
    pub pods: Vec<PodHealth>,
    /// The shard assignment in force.
    pub assignment: Vec<PodAssignment>,
    /// Slots no pod owns.
    pub unowned_slots: u32,
    /// Referenced Secrets, or keys of them, that do not exist.
    pub secrets: Vec<SecretProblem>,
    /// What the slot handoff waits for, one line each (empty when settled).
    pub handoff: Vec<String>,
    /// Ready pods that have not acknowledged their assignment in time.
    pub silent: Vec<String>,
    /// Slot owners neither ready nor heartbeating.
    pub lost: Vec<String>,
    /// The workers' Lease reports, by pod name.
    pub reports: BTreeMap<String, Report>,
}

/// Why a spec was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `InvalidSpec` (a rule CEL enforces from Kubernetes 1.25 on), `ShardsChanged` or
    /// `InvalidObject` (the object does not deserialize).
    pub reason: &'static str,
    /// Names the field and what is wrong.
    pub message: String,
}

/// The outcome of one child this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildReport {
    /// Its kind, e.g. `StatefulSet`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// Whether the collector works without it (the PodDisruptionBudget and the
    /// HorizontalPodAutoscaler are optional: they only ever set Degraded).
    pub required: bool,
    /// What happened.
    pub outcome: Outcome,
}

/// What happened to a child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It is as rendered (written, or already so).
    Applied,
    /// It was no longer wanted and is deleted.
    Deleted,
    /// The API server does not serve its API version (e.g. policy/v1 before 1.21).
    NotServed {
        /// The group/version, e.g. `autoscaling/v2`.
        api: String,
    },
    /// RBAC refused the write.
    Forbidden {
        /// The API server's message.
        message: String,
    },
    /// Another error.
    Failed {
        /// What failed.
        message: String,
    },
}

/// The StatefulSet's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.replicas`.
    pub replicas: i32,
    /// `status.readyReplicas`.
    pub ready_replicas: i32,
    /// `status.updatedReplicas`.
    pub updated_replicas: i32,
    /// `status.currentRevision`.
    pub current_revision: Option<String>,
    /// `status.updateRevision`.
    pub update_revision: Option<String>,
}

impl Workload {
    /// Reads the progress of a StatefulSet.
    pub fn of(set: &StatefulSet) -> Self {
        let status = set.status.clone().unwrap_or_default();
        Self {
            generation: set.metadata.generation.unwrap_or(0),
            observed_generation: status.observed_generation.unwrap_or(0),
            replicas: status.replicas,
            ready_replicas: status.ready_replicas.unwrap_or(0),
            updated_replicas: status.updated_replicas.unwrap_or(0),
            current_revision: status.current_revision,
            update_revision: status.update_revision,
        }
    }
}

/// A worker pod's health as its status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHealth {
    /// The pod's name.
    pub name: String,
    /// Its Ready condition is True.
    pub ready: bool,
    /// Why it is not ready, when the status says: `Pending`, `Unschedulable`,
    /// `CrashLoopBackOff`, `OOMKilled`, `ImagePullBackOff`, `Terminating`...
    pub problem: Option<String>,
}

/// Waiting reasons that mean a container cannot run until someone acts.
const FAILING: [&str; 8] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "OOMKilled",
    "Unschedulable",
];

impl PodHealth {
    /// Reads a pod's health.
    pub fn of(pod: &Pod) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.as_ref();
        let condition = |type_: &str| {
            status
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == type_))
        };
        let ready = condition("Ready").is_some_and(|c| c.status == TRUE);
        let problem = if pod.metadata.deletion_timestamp.is_some() {
            Some("Terminating".to_owned())
        } else {
            container_problem(pod).or_else(|| {
                let unschedulable = condition("PodScheduled")
                    .is_some_and(|c| c.reason.as_deref() == Some("Unschedulable"));
                match status.and_then(|s| s.phase.as_deref()) {
                    _ if unschedulable => Some("Unschedulable".to_owned()),
                    Some("Failed") => Some("Failed".to_owned()),
                    Some("Running") if !ready => Some("NotReady".to_owned()),
                    Some("Running") => None,
                    _ => Some("Pending".to_owned()),
                }
            })
        };
        Self {
            name,
            ready,
            problem: if ready { None } else { problem },
        }
    }

    /// Whether the pod cannot run until someone acts (Degraded), rather than being on
    /// its way (Progressing).
    fn failing(&self) -> bool {
        self.problem
            .as_deref()
            .is_some_and(|p| FAILING.iter().any(|f| p.starts_with(f)) || p == "Failed")
    }

    fn describe(&self) -> String {
        match &self.problem {
            Some(problem) => format!("{} ({problem})", self.name),
            None => self.name.clone(),
        }
    }
}

/// The first container's waiting reason, with the last termination when it was an OOM
/// kill (a crash-looping container shows `CrashLoopBackOff`, the cause is in lastState).
fn container_problem(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.iter().find_map(|c| {
        let waiting = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone());
        let oom = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
        match (waiting, oom) {
            (Some(reason), true) => Some(format!("{reason}, last OOMKilled")),
            (Some(reason), false) => Some(reason),
            (None, true) if !c.ready => Some("OOMKilled".to_owned()),
            (None, _) => None,
        }
    })
}

/// A referenced Secret, or one of its keys, that does not exist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretProblem {
    /// The Secret's name.
    pub secret: String,
    /// The missing key; `None` when the whole Secret is missing.
    pub key: Option<String>,
    /// The spec fields that reference it.
    pub fields: Vec<String>,
}

/// The four conditions for `observed`, keeping each previous `lastTransitionTime` whose
/// status did not change.
pub fn conditions(observed: &Observation, previous: &[Condition], now: &Time) -> Vec<Condition> {
    let available = available(observed);
    let progressing = progressing(observed);
    let degraded = degraded(observed);
    let ready = ready(observed, &available, &progressing);
    [
        (AVAILABLE, available),
        (PROGRESSING, progressing),
        (DEGRADED, degraded),
        (READY, ready),
    ]
    .into_iter()
    .map(|(type_, state)| {
        let since = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == state.status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: state.status.to_owned(),
            reason: state.reason.to_owned(),
            message: truncate(state.message),
            observed_generation: observed.generation,
            last_transition_time: since,
        }
    })
    .collect()
}

/// One condition before it gets its type and times.
#[derive(Clone, Debug)]
struct State {
    status: &'static str,
    reason: &'static str,
    message: String,
}

fn state(status: &'static str, reason: &'static str, message: impl Into<String>) -> State {
    State {
        status,
        reason,
        message: message.into(),
    }
}

/// Every slot is owned by a ready worker.
fn available(o: &Observation) -> State {
    if o.workload.is_none() && o.assignment.is_empty() {
        return state(
            UNKNOWN,
            "NoWorkers",
            "the worker StatefulSet does not exist yet",
        );
    }
    if o.assignment.is_empty() {
        return state(
            FALSE,
            "NoWorkers",
            format!(
                "no worker pod exists yet: none of the {} slots is collected",
                o.shards
            ),
        );
    }
    let unready: Vec<String> = o
        .assignment
        .iter()
        .filter(|a| !a.ranges.is_empty())
        .filter(|a| !o.pods.iter().any(|p| p.name == a.pod && p.ready))
        .map(|a| match o.pods.iter().find(|p| p.name == a.pod) {
            Some(pod) => pod.describe(),
            None => format!("{} (missing)", a.pod),
        })
        .collect();
    if o.unowned_slots > 0 {
        return state(
            FALSE,
            "SlotsUnowned",
            format!(
                "{} of the {} slots are owned by no worker pod",
                o.unowned_slots, o.shards
            ),
        );
    }
    if !unready.is_empty() {
        return state(
            FALSE,
            "WorkersNotReady",
            format!(
                "the slots of {} are not collected: {} not ready",
                list(&unready),
                if unready.len() == 1 {
                    "it is"
                } else {
                    "they are"
                }
            ),
        );
    }
    state(
        TRUE,
        "AllSlotsOwned",
        format!(
            "every one of the {} slots is owned by a ready worker ({} pods own slots)",
            o.shards,
            o.assignment.iter().filter(|a| !a.ranges.is_empty()).count()
        ),
    )
}

/// A rollout or a scale is in flight.
fn progressing(o: &Observation) -> State {
    let Some(w) = &o.workload else {
        return state(
            UNKNOWN,
            "NoWorkers",
            "the worker StatefulSet does not exist yet",
        );
    };
    if w.observed_generation < w.generation {
        return state(
            TRUE,
            "RollingOut",
            format!(
                "waiting for the StatefulSet controller to observe generation {}",
                w.generation
            ),
        );
    }
    if !o.handoff.is_empty() {
        return state(
            TRUE,
            "Rebalancing",
            format!("moving slots: waiting for {}", list(&o.handoff)),
        );
    }
    if w.replicas != o.desired_replicas {
        return state(
            TRUE,
            "Scaling",
            format!(
                "scaling from {} to {} worker pods",
                w.replicas, o.desired_replicas
            ),
        );
    }
    let rolling = w.update_revision.is_some() && w.current_revision != w.update_revision;
    if rolling || w.updated_replicas < o.desired_replicas {
        return state(
            TRUE,
            "RollingOut",
            format!(
                "rolling out revision {}: {} of {} pods updated",
                w.update_revision.as_deref().unwrap_or("unknown"),
                w.updated_replicas,
                o.desired_replicas
            ),
        );
    }
    let unready: Vec<String> = o
        .pods
        .iter()
        .filter(|p| !p.ready)
        .map(PodHealth::describe)
        .collect();
    if w.ready_replicas < o.desired_replicas || !unready.is_empty() {
        let waiting = if unready.is_empty() {
            "the StatefulSet to count them".to_owned()
        } else {
            list(&unready)
        };
        return state(
            TRUE,
            "WaitingForPods",
            format!(
                "{} of {} worker pods ready; waiting for {waiting}",
                w.ready_replicas, o.desired_replicas
            ),
        );
    }
    state(
        FALSE,
        "Stable",
        format!(
            "all {} worker pods are ready and up to date",
            o.desired_replicas
        ),
    )
}

/// Something is wrong, but what can be collected is.
fn degraded(o: &Observation) -> State {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if let Some(refusal) = &o.refused {
        problems.push((refusal.reason, refusal.message.clone()));
    }
    for secret in &o.secrets {
        let what = match &secret.key {
            None => format!("Secret {} does not exist", secret.secret),
            Some(key) => format!("Secret {} has no key {key}", secret.secret),
        };
        problems.push((
            "MissingSecret",
            format!("{what} (referenced by {})", secret.fields.join(", ")),
        ));
    }
    let failing: Vec<String> = o
        .pods
        .iter()
        .filter(|p| p.failing())
        .map(PodHealth::describe)
        .collect();
    if !failing.is_empty() {
        problems.push((
            "PodsFailing",
            format!("worker pods failing: {}", list(&failing)),
        ));
    }

    if !o.silent.is_empty() {
        problems.push((
            "WorkersSilent",
            format!(
                "worker pods {} have not acknowledged their assignment within {} s; \
                 their slots stay with or go to other workers",
                list(&o.silent),
                ACK_TIMEOUT.as_secs()
            ),
        ));
    }
    let down: u32 = o.reports.values().map(|r| r.targets_down).sum();
    if down > 0 {
        let mut names: Vec<String> = o
            .reports
            .values()
            .flat_map(|r| r.down_names.iter().cloned())
            .collect();
        names.sort();
        let named = u32::try_from(names.len()).unwrap_or(u32::MAX);
        if named < down {
            names.push(format!("{} more", down - named));
        }
        problems.push((
            "TargetsDown",
            format!("{down} targets down: {}", names.join(", ")),
        ));
    }
    if !o.lost.is_empty() {
        problems.push((
            "WorkersLost",
            format!(
                "worker pods {} are not ready and have not heartbeat in their Lease for {} s; \
                 their slots are moving to the other workers",
                list(&o.lost),
                GRACE.as_secs()
            ),
        ));
    }
    for child in &o.children {
        let (reason, why) = match &child.outcome {
            Outcome::Applied | Outcome::Deleted => continue,
            Outcome::NotServed { api } => (
                "ChildNotServed",
                format!("{api} is not served by this API server"),
            ),
            Outcome::Forbidden { message } => ("ChildForbidden", message.clone()),
            Outcome::Failed { message } => ("ChildFailed", message.clone()),
        };
        problems.push((reason, format!("{} {}: {why}", child.kind, child.name)));
    }
    let missing: u32 = o.reports.values().map(|r| r.capabilities_missing).sum();
    if missing > 0 {
        let pods: Vec<String> = o
            .reports
            .iter()
            .filter(|(_, r)| r.capabilities_missing > 0)
            .map(|(pod, r)| format!("{pod} ({})", r.capabilities_missing))
            .collect();
        problems.push((
            "CapabilitiesMissing",
            format!(
                "{missing} metric families cannot be collected (servers lack them; \
                 see the workers' dbcollector_capability_missing): {}",
                list(&pods)
            ),
        ));
    }

    match problems.first() {
        None => state(FALSE, "AsExpected", "no problem found"),
        Some(&(reason, _)) => {
            let messages: Vec<String> = problems.into_iter().map(|(_, m)| m).collect();
            state(TRUE, reason, messages.join("; "))
        }
    }
}

/// The summary: available, settled, and every required child applied.
fn ready(o: &Observation, available: &State, progressing: &State) -> State {
    if let Some(refusal) = &o.refused {
        return state(
            FALSE,
            "SpecRefused",
            format!("the spec is not applied: {}", refusal.message),
        );
    }
    let missing: Vec<String> = o
        .children
        .iter()
        .filter(|c| c.required && !matches!(c.outcome, Outcome::Applied | Outcome::Deleted))
        .map(|c| format!("{} {}", c.kind, c.name))
        .collect();
    if !missing.is_empty() {
        return state(
            FALSE,
            "ChildrenNotApplied",
            format!("not applied: {}", list(&missing)),
        );
    }
    if available.status != TRUE {
        return state(
            FALSE,
            "NotAvailable",
            format!("not available: {}", available.message),
        );
    }
    if progressing.status != FALSE {
        return state(
            FALSE,
            "Progressing",
            format!("progressing: {}", progressing.message),
        );
    }
    state(
        TRUE,
        "Ready",
        format!(
            "{} worker pods collect all {} slots",
            o.desired_replicas, o.shards
        ),
    )
}

/// `a, b, c and 3 more`.
fn list(items: &[String]) -> String {
    let mut out = items
        .iter()
        .take(MAX_NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > MAX_NAMED {
        let _ = write!(out, " and {} more", items.len() - MAX_NAMED);
    }
    out
}

/// Cuts a message to [`MAX_MESSAGE`] bytes at a character boundary.
fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 3;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    if message.is_empty() {
        // Never reached (every message above is written out), kept because the v1.20
        // API server refuses an empty string in a custom resource.
        message.push('-');
    }
    message
}

/// Whether two condition lists say the same (order aside).
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len() && a.iter().all(|c| b.contains(c))
}

#[cfg(test)]
mod tests;
