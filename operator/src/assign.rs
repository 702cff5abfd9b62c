//! Shard slot ownership and its make-before-break handoff.
//!
//! Status is the record. Each worker pod's entry there has the slots it **owns**
//! (`ranges`: it acknowledged an assignment holding them) and the slots **granted** to
//! it and not yet acknowledged (`granted`). The pod's annotations carry both (`ranges ∪
//! granted`) with the epoch of the write, and the worker acknowledges that epoch in its
//! Lease once it collects them.
//!
//! One reconcile:
//! 1. Takes the acknowledgements: a pod whose acknowledged epoch reached its annotated
//!    epoch now owns its granted slots, and their previous owners no longer do.
//! 2. Chooses the workers that may own slots: pods below `spec.replicas`, not being
//!    deleted, ready, and not silent on a grant for longer than [`ACK_TIMEOUT`]; plus the
//!    current owners among those pods that are not ready but still heartbeat in their
//!    Lease within [`GRACE`] (a restarting worker keeps its slots and re-applies them).
//!    A ready pod silent on its epoch for longer than [`ACK_TIMEOUT`] is reported, and so
//!    is an owner that is neither ready nor heartbeating (its slots move).
//! 3. Balances the slots over those workers with [`balance::rebalance`] from the current
//!    owners (the rule is written there), and grants each worker the slots it should own
//!    and does not. A slot leaving a pod stays owned by it, and in its annotations, until
//!    the pod it goes to acknowledges; only then is it revoked. So a moving slot is
//!    collected twice for at most the time the old owner takes to see the revocation, and
//!    never by nobody; a worker that never acknowledges leaves its grants with their old
//!    owners and, after [`ACK_TIMEOUT`], gets no slots until it does.
//! 4. Keeps the StatefulSet at `spec.replicas`, or larger while a pod beyond it still
//!    owns slots: a scale-down moves the slots of the leaving pods to the survivors, and
//!    the StatefulSet shrinks once they acknowledged.
//!
//! Any annotation write gets a fresh epoch, E+1, where E is the highest epoch seen in
//! status or on any pod (values above [`MAX_EPOCH`] are hand edits and ignored): status
//! is written first (with a resourceVersion precondition) and the pods are annotated only
//! then, so a new leader, which starts from the same maximum, never repeats or lowers an
//! epoch, and a stale acknowledgement (a recreated pod's Lease still holding its
//! predecessor's) never matches a new write. Only an acknowledgement equal to the pod's
//! annotated epoch counts.

use std::collections::BTreeMap;
use std::time::Duration;

use dbcollector_crds::annotations::{self, ShardAssignment};
use dbcollector_crds::balance;
use dbcollector_crds::shard::{slot_of, Ranges};
use dbcollector_crds::status::PodAssignment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// How long a pod may leave its annotated epoch unacknowledged before it is reported and
/// gets no new slots.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a current owner that is not ready keeps its slots while it still heartbeats
/// (a worker restarting in place re-applies them instead of having them moved): the
/// Lease duration the workers write, three heartbeats.
pub const GRACE: Duration = Duration::from_secs(3 * annotations::HEARTBEAT_SECONDS as u64);

/// The highest epoch the operator accepts from a pod's annotations: above it, a value is
/// a hand edit, not an epoch the operator wrote, and is ignored (status stores epochs as
/// JSON integers, which the API server bounds at 2^63 − 1; this leaves room to count).
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

/// A worker pod as the assignment sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPod {
    /// The pod's name.
    pub name: String,
    /// Its StatefulSet ordinal.
    pub ordinal: u32,
    /// It is being deleted.
    pub terminating: bool,
    /// Its Ready condition is True.
    pub ready: bool,
    /// The assignment its annotations carry, if they carry a valid one.
    pub annotated: Option<ShardAssignment>,
}

/// What a worker reports in its Lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The assignment epoch it has applied.
    pub acked_epoch: Option<u64>,
    /// Its last heartbeat.
    pub renewed: Option<Timestamp>,
    /// Targets whose latest scrape failed.
    pub targets_down: u32,
    /// Some of their names.
    pub down_names: Vec<String>,
    /// (target, capability) pairs the server cannot serve.
    pub capabilities_missing: u32,
}

/// What the plan starts from.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// `spec.shards`.
    pub shards: u32,
    /// `spec.replicas`.
    pub replicas: i32,
    /// The target names of the spec.
    pub targets: &'a [String],
    /// The collector's worker pods.
    pub pods: &'a [WorkerPod],
    /// The Lease reports, by pod name.
    pub reports: &'a BTreeMap<String, Report>,
    /// The assignment in status.
    pub current: &'a [PodAssignment],
    /// The epoch in status.
    pub current_epoch: u64,
    /// The time of the reconcile.
    pub now: Timestamp,
}

/// What the operator should write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The highest epoch after this plan.
    pub epoch: u64,
    /// Pod → owned and granted slots, in ordinal order; for status.
    pub assignment: Vec<PodAssignment>,
    /// Slots owned by no pod.
    pub unowned_slots: u32,
    /// Whether some pod gets a new epoch.
    pub changed: bool,
    /// Pods to annotate, with what.
    pub annotate: Vec<(String, ShardAssignment)>,
    /// The StatefulSet's replica count: `spec.replicas`, or more while a pod beyond it
    /// still owns slots.
    pub stateful_set_replicas: i32,
    /// What the handoff waits for, one line each (empty when settled).
    pub waiting: Vec<String>,
    /// Ready pods that have not acknowledged their epoch within [`ACK_TIMEOUT`].
    pub silent: Vec<String>,
    /// Owners that are not ready and have not heartbeat within [`GRACE`]: their slots
    /// are being moved.
    pub lost: Vec<String>,
}

impl Plan {
    /// Whether nothing is in flight: no grant waits for an acknowledgement and the
    /// StatefulSet has its desired size.
    pub fn settled(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// Plans the next step of the assignment.
pub fn plan(input: &Input<'_>) -> Plan {
    let shards = input.shards;
    let desired = u32::try_from(input.replicas).unwrap_or(0);
    let weights = balance::slot_weights(input.targets.iter().map(String::as_str), shards);
    let pod = |name: &str| input.pods.iter().find(|p| p.name == name);
    let acked = |name: &str| {
        input
            .reports
            .get(name)
            .and_then(|r| r.acked_epoch)
            .filter(|&e| e <= MAX_EPOCH)
    };

    // 1. Acknowledged grants become owned; their previous owners lose them.
    let mut owned: BTreeMap<String, Ranges> = BTreeMap::new();
    let mut previous: BTreeMap<&str, &PodAssignment> = BTreeMap::new();
    for entry in input.current {
        previous.insert(&entry.pod, entry);
        owned.insert(entry.pod.clone(), entry.ranges.clone());
    }
    for entry in input.current {
        // A worker acknowledges exactly the epoch it applied: anything else in its Lease
        // (an older epoch, a hand edit) is no acknowledgement of this grant.
        let took = !entry.granted.is_empty()
            && entry.epoch > 0
            && acked(&entry.pod) == Some(entry.epoch)
            && pod(&entry.pod).is_some_and(|p| !p.terminating);
        if !took {
            continue;
        }
        for (name, ranges) in &mut owned {
            if *name != entry.pod {
                *ranges = ranges.difference(&entry.granted);
            }
        }
        let mine = owned.entry(entry.pod.clone()).or_default();
        *mine = mine.union(&entry.granted);
    }
    owned.retain(|name, ranges| !ranges.is_empty() || pod(name).is_some());

    // 2. The workers that may own slots.
    let since = |name: &str| {
        previous
            .get(name)
            .and_then(|e| e.annotated_at.as_ref())
            .map(|t| t.0)
    };
    let silent: Vec<String> = input
        .pods
        .iter()
        .filter(|p| !p.terminating && p.ready)
        .filter(|p| {
            let epoch = previous.get(p.name.as_str()).map_or(0, |e| e.epoch);
            epoch > 0
                && acked(&p.name) != Some(epoch)
                && since(&p.name).is_some_and(|t| elapsed(t, input.now) > ACK_TIMEOUT)
        })
        .map(|p| p.name.clone())
        .collect();
    let heartbeat = |name: &str| {
        input
            .reports
            .get(name)
            .and_then(|r| r.renewed)
            .is_some_and(|t| elapsed(t, input.now) <= GRACE)
    };
    // Owners that are not ready and stopped heartbeating: their slots move.
    let lost: Vec<String> = input
        .pods
        .iter()
        .filter(|p| !p.ready && !heartbeat(&p.name))
        .filter(|p| owned.get(&p.name).is_some_and(|r| !r.is_empty()))
        .map(|p| p.name.clone())
        .collect();
    let mut workers: Vec<&WorkerPod> = input
        .pods
        .iter()
        .filter(|p| !p.terminating && p.ordinal < desired && !silent.contains(&p.name))
        .filter(|p| {
            let owner = owned.get(&p.name).is_some_and(|r| !r.is_empty());
            p.ready || (owner && heartbeat(&p.name))
        })
        .collect();
    workers.sort_by_key(|p| p.ordinal);
    let names: Vec<String> = workers.iter().map(|p| p.name.clone()).collect();

    // 3. Balance, and grant what each worker should own and does not.
    let target = balance::rebalance(&weights, &owned, &names);
    let mut granted: BTreeMap<String, Ranges> = BTreeMap::new();
    for (name, ranges) in &target {
        let mine = owned.get(name).cloned().unwrap_or_default();
        let new = ranges.difference(&mine);
        if !new.is_empty() {
            granted.insert(name.clone(), new);
        }
    }

    // Everyone to list: owners, grantees, and the live pods below the StatefulSet's size.
    let highest_owner = owned
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .filter_map(|(name, _)| pod(name).map(|p| p.ordinal + 1))
        .max()
        .unwrap_or(0);
    let set_size = desired.max(highest_owner);
    let mut listed: Vec<String> = owned
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(n, _)| n.clone())
        .chain(granted.keys().cloned())
        .chain(
            input
                .pods
                .iter()
                .filter(|p| !p.terminating && p.ordinal < set_size)
                .map(|p| p.name.clone()),
        )
        .collect();
    listed.sort_by_key(|n| (pod(n).map_or(u32::MAX, |p| p.ordinal), n.clone()));
    listed.dedup();

    // 4. Epochs: every pod whose annotations must change gets a fresh one.
    let highest = input
        .pods
        .iter()
        .filter_map(|p| p.annotated.as_ref().map(|a| a.epoch))
        .filter(|&e| e <= MAX_EPOCH)
        .chain(input.current.iter().map(|e| e.epoch))
        .fold(input.current_epoch, u64::max);
    let fresh = highest.saturating_add(1);
    let mut changed = false;
    let mut annotate = Vec::new();
    let mut assignment = Vec::new();
    let slots: Vec<u32> = input.targets.iter().map(|t| slot_of(t, shards)).collect();
    for name in &listed {
        let ranges = owned.get(name).cloned().unwrap_or_default();
        let grant = granted.get(name).cloned().unwrap_or_default();
        let carried = ranges.union(&grant);
        let before = previous.get(name.as_str());
        let mut epoch = before.map_or(0, |e| e.epoch);
        let mut annotated_at = before.and_then(|e| e.annotated_at.clone());
        if let Some(p) = pod(name).filter(|p| !p.terminating) {
            let wanted = |epoch| ShardAssignment {
                ranges: carried.clone(),
                space: shards,
                epoch,
            };
            if epoch == 0 || p.annotated.as_ref() != Some(&wanted(epoch)) {
                epoch = fresh;
                annotated_at = Some(Time(input.now));
                changed = true;
                annotate.push((name.clone(), wanted(epoch)));
            }
        }
        let count = slots.iter().filter(|&&s| ranges.contains(s)).count();
        assignment.push(PodAssignment {
            pod: name.clone(),
            targets: u32::try_from(count).unwrap_or(u32::MAX),
            ranges,
            granted: grant,
            epoch,
            annotated_at,
            acked_epoch: acked(name),
        });
    }

    let owned_slots: u64 = assignment.iter().map(|a| a.ranges.len()).sum();
    let unowned_slots = u32::try_from(u64::from(shards).saturating_sub(owned_slots)).unwrap_or(0);
    let waiting = waiting(&assignment, desired, set_size, unowned_slots, &names);
    Plan {
        epoch: if changed { fresh } else { highest },
        assignment,
        unowned_slots,
        changed,
        annotate,
        stateful_set_replicas: i32::try_from(set_size).unwrap_or(i32::MAX),
        waiting,
        silent,
        lost,
    }
}

/// What a handoff in flight waits for, one line each.
fn waiting(
    assignment: &[PodAssignment],
    desired: u32,
    set_size: u32,
    unowned_slots: u32,
    workers: &[String],
) -> Vec<String> {
    let mut lines = Vec::new();
    for a in assignment {
        if a.acked_epoch.is_none_or(|e| e < a.epoch)
            && !(a.ranges.is_empty() && a.granted.is_empty())
        {
            let what = if a.granted.is_empty() {
                "its revoked slots".to_owned()
            } else {
                format!("{} granted slots", a.granted.len())
            };
            lines.push(format!(
                "{} to acknowledge epoch {} ({what})",
                a.pod, a.epoch
            ));
        }
    }
    if set_size > desired {
        lines.push(format!(
            "the slots of the pods beyond {desired} to move before the StatefulSet shrinks from {set_size}"
        ));
    }
    if unowned_slots > 0 && workers.is_empty() {
        lines.push(format!(
            "a ready worker pod to take the {unowned_slots} unowned slots"
        ));
    }
    lines
}

/// The time from `then` to `now`, zero when `then` is in the future.
fn elapsed(then: Timestamp, now: Timestamp) -> Duration {
    let nanos = now.as_nanosecond() - then.as_nanosecond();
    u64::try_from(nanos).map_or(Duration::ZERO, Duration::from_nanos)
}

#[cfg(test)]
mod tests;
