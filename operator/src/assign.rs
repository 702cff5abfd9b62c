//! Shard slot ownership: which worker pod owns which slots, and the epoch of it.
//!
//! The rule here is the minimal one: the `spec.shards` slots are cut into contiguous
//! ranges of sizes differing by at most one, one per existing worker pod in ordinal
//! order (pods being deleted and pods beyond `spec.replicas` own nothing). Every slot is
//! owned by exactly one pod as soon as one pod exists.
//!
//! An assignment that differs from the one in status gets epoch E+1, where E is the
//! highest epoch seen in status or on any pod: status is written first (with a
//! resourceVersion precondition) and the pods are annotated only then, so a new leader,
//! which starts from the same maximum, never repeats or lowers an epoch.

use dbcollector_crds::annotations::ShardAssignment;
use dbcollector_crds::shard::{slot_of, Ranges};
use dbcollector_crds::status::PodAssignment;

/// A worker pod as the assignment sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPod {
    /// The pod's name.
    pub name: String,
    /// Its StatefulSet ordinal.
    pub ordinal: u32,
    /// It is being deleted.
    pub terminating: bool,
    /// The assignment its annotations carry, if they carry a valid one.
    pub annotated: Option<ShardAssignment>,
}

/// What the operator should write: the assignment for status, and the pods whose
/// annotations differ from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The epoch of [`Self::assignment`].
    pub epoch: u64,
    /// Pod → slots, in ordinal order; for status.
    pub assignment: Vec<PodAssignment>,
    /// Slots owned by no pod (all of them when no pod exists, else none).
    pub unowned_slots: u32,
    /// Whether the assignment differs from status (a new epoch).
    pub changed: bool,
    /// Pods to annotate, with what; a pod that owns nothing gets the empty set.
    pub annotate: Vec<(String, ShardAssignment)>,
}

/// The ranges of `owners` pods over `shards` slots: contiguous, in order, sizes
/// differing by at most one (the first `shards % owners` ranges are one larger).
pub fn split(shards: u32, owners: usize) -> Vec<Ranges> {
    let Ok(n) = u32::try_from(owners) else {
        return Vec::new();
    };
    if n == 0 {
        return Vec::new();
    }
    let (base, extra) = (shards / n, shards % n);
    let mut start = 0u32;
    (0..n)
        .map(|i| {
            let len = base + u32::from(i < extra);
            let ranges = match len {
                0 => Ranges::new(),
                _ => Ranges::from(start..=start + len - 1),
            };
            start += len;
            ranges
        })
        .collect()
}

/// Plans the assignment of `shards` slots over `pods` for a collector of
/// `replicas` desired pods, given the `current` assignment and epoch from status and
/// the target names (to count each pod's targets).
pub fn plan(
    shards: u32,
    replicas: i32,
    pods: &[WorkerPod],
    current: &[PodAssignment],
    current_epoch: u64,
    targets: &[String],
) -> Plan {
    let desired = u32::try_from(replicas).unwrap_or(0);
    let mut owners: Vec<&WorkerPod> = pods
        .iter()
        .filter(|p| !p.terminating && p.ordinal < desired)
        .collect();
    owners.sort_by_key(|p| p.ordinal);

    let slots: Vec<u32> = targets.iter().map(|t| slot_of(t, shards)).collect();
    let assignment: Vec<PodAssignment> = owners
        .iter()
        .zip(split(shards, owners.len()))
        .map(|(pod, ranges)| {
            let count = slots.iter().filter(|&&s| ranges.contains(s)).count();
            let known = current.iter().find(|a| a.pod == pod.name);
            PodAssignment {
                pod: pod.name.clone(),
                targets: u32::try_from(count).unwrap_or(u32::MAX),
                // The acknowledgement survives only while the pod keeps its ranges.
                acked_epoch: known
                    .filter(|a| a.ranges == ranges)
                    .and_then(|a| a.acked_epoch),
                ranges,
            }
        })
        .collect();

    let same = assignment.len() == current.len()
        && assignment
            .iter()
            .zip(current)
            .all(|(a, b)| a.pod == b.pod && a.ranges == b.ranges);
    let highest = pods
        .iter()
        .filter_map(|p| p.annotated.as_ref().map(|a| a.epoch))
        .fold(current_epoch, u64::max);
    // Unchanged and not overtaken by a pod's epoch: keep it. Otherwise a fresh epoch
    // above everything seen, so no worker mistakes the new assignment for a stale one.
    let changed = !same || highest > current_epoch;
    let epoch = if changed {
        highest.saturating_add(1)
    } else {
        current_epoch
    };

    let annotate = pods
        .iter()
        .filter(|p| !p.terminating)
        .filter_map(|pod| {
            let ranges = assignment
                .iter()
                .find(|a| a.pod == pod.name)
                .map(|a| a.ranges.clone())
                .unwrap_or_default();
            let wanted = ShardAssignment {
                ranges,
                space: shards,
                epoch,
            };
            (pod.annotated.as_ref() != Some(&wanted)).then(|| (pod.name.clone(), wanted))
        })
        .collect();

    Plan {
        epoch,
        unowned_slots: if assignment.is_empty() { shards } else { 0 },
        assignment,
        changed,
        annotate,
    }
}

#[cfg(test)]
mod tests;
