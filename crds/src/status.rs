//! `DatabaseCollector.status`: what the operator observed and decided, including the
//! shard assignment (which pod owns which slots) and the conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::shard::{Ranges, MAX_SHARDS};

/// Condition type: every shard slot is owned by a ready worker that acknowledged it.
pub const AVAILABLE: &str = "Available";

/// Condition type: a rollout or a rebalance is in flight; the message says what it waits
/// for.
pub const PROGRESSING: &str = "Progressing";

/// Condition type: something is wrong but collection goes on (an optional child failing,
/// a missing Secret, targets down, a spec rule broken); the message names it.
pub const DEGRADED: &str = "Degraded";

/// Condition type: the summary. Available, not Progressing, and every required child
/// applied.
pub const READY: &str = "Ready";

/// Most conditions in the status (there are four types).
const MAX_CONDITIONS: u32 = 16;

/// The observed state of a DatabaseCollector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCollectorStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Worker pods that exist (the StatefulSet's observed replicas).
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_SHARDS))]
    pub replicas: i32,

    /// Worker pods that are ready.
    #[serde(default)]
    #[schemars(range(min = 0, max = MAX_SHARDS))]
    pub ready_replicas: i32,

    /// Label selector of the worker pods, in `kubectl get -l` syntax (for the scale
    /// subresource and the HorizontalPodAutoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub selector: Option<String>,

    /// Number of targets in the spec.
    #[serde(default)]
    #[schemars(range(max = crate::spec::MAX_TARGETS))]
    pub targets: u32,

    /// Epoch of the current shard assignment. Grows with every new assignment and never
    /// goes back.
    #[serde(default)]
    pub assignment_epoch: u64,

    /// The current shard assignment: the slots each worker pod owns (has acknowledged)
    /// and those granted to it. Every slot of the space is owned by exactly one pod
    /// unless counted in `unownedSlots`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SHARDS))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["pod".into()]))]
    pub assignment: Vec<PodAssignment>,

    /// Slots owned by no worker pod (their targets are not collected, or only by a pod
    /// that has not acknowledged them yet).
    #[serde(default)]
    #[schemars(range(max = MAX_SHARDS))]
    pub unowned_slots: u32,

    /// Available, Progressing, Degraded and Ready, each with its reason and a message
    /// naming the pods or objects concerned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_CONDITIONS))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The slots one worker pod owns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodAssignment {
    /// Name of the worker pod.
    #[schemars(length(min = 1, max = 253))]
    pub pod: String,

    /// The slots the pod owns, as comma-separated inclusive ranges (`0-99,200-255`), or
    /// `none`.
    pub ranges: Ranges,

    /// Number of targets whose slot is in `ranges`.
    #[serde(default)]
    #[schemars(range(max = crate::spec::MAX_TARGETS))]
    pub targets: u32,

    /// Slots granted to the pod and not yet acknowledged by it: their previous owner
    /// keeps them (in its `ranges`) until the pod acknowledges `epoch`, so a moving slot
    /// is collected twice for a moment and never by nobody.
    #[serde(default, skip_serializing_if = "Ranges::is_empty")]
    pub granted: Ranges,

    /// The epoch of the assignment annotated on the pod (its `ranges` plus `granted`).
    #[serde(default)]
    pub epoch: u64,

    /// When the pod was annotated with `epoch`; a pod that has not acknowledged it some
    /// time after is reported and gets no new slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_at: Option<Time>,

    /// The assignment epoch the pod has acknowledged applying (read from its Lease).
    /// Unset until it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_epoch: Option<u64>,
}

impl PodAssignment {
    /// An entry for `pod` that owns `ranges` and nothing else.
    pub fn owning(pod: impl Into<String>, ranges: Ranges) -> Self {
        Self {
            pod: pod.into(),
            ranges,
            targets: 0,
            granted: Ranges::new(),
            epoch: 0,
            annotated_at: None,
            acked_epoch: None,
        }
    }
}

impl DatabaseCollectorStatus {
    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}
