//! Slot ownership: every slot owned once, balanced ranges, and epochs that only grow.

use super::*;

fn pod(ordinal: u32) -> WorkerPod {
    WorkerPod {
        name: format!("orders-{ordinal}"),
        ordinal,
        terminating: false,
        annotated: None,
    }
}

fn pods(n: u32) -> Vec<WorkerPod> {
    (0..n).map(pod).collect()
}

fn targets(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("db{i}")).collect()
}

/// Asserts every slot of `shards` is in exactly one pod's ranges.
fn assert_every_slot_owned_once(shards: u32, assignment: &[PodAssignment]) {
    let mut owners = vec![0u32; shards as usize];
    for a in assignment {
        for slot in a.ranges.slots() {
            owners[slot as usize] += 1;
        }
    }
    assert!(owners.iter().all(|&n| n == 1), "{assignment:?}");
}

#[test]
fn split_cuts_contiguous_ranges_differing_by_at_most_one_slot() {
    let ranges = split(10, 3);
    let text: Vec<String> = ranges.iter().map(ToString::to_string).collect();
    assert_eq!(text, ["0-3", "4-6", "7-9"]);
    for (shards, owners) in [(1024, 5), (7, 7), (16384, 100), (5, 1)] {
        let ranges = split(shards, owners);
        let sizes: Vec<u64> = ranges.iter().map(Ranges::len).collect();
        assert_eq!(sizes.iter().sum::<u64>(), u64::from(shards));
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(max - min <= 1, "{shards}/{owners}: {sizes:?}");
        assert!(ranges.iter().all(|r| r.range_count() == 1));
    }
    assert!(split(16, 0).is_empty());
    // More owners than slots (CEL forbids it, the split still owns every slot once).
    let sparse = split(2, 3);
    assert_eq!(sparse.iter().map(Ranges::len).sum::<u64>(), 2);
}

#[test]
fn the_first_assignment_owns_every_slot_once_and_gets_epoch_one() {
    let plan = plan(1024, 3, &pods(3), &[], 0, &targets(50));
    assert!(plan.changed);
    assert_eq!(plan.epoch, 1);
    assert_eq!(plan.unowned_slots, 0);
    assert_eq!(plan.assignment.len(), 3);
    assert_every_slot_owned_once(1024, &plan.assignment);
    let counted: u32 = plan.assignment.iter().map(|a| a.targets).sum();
    assert_eq!(counted, 50);
    // Every pod is annotated with its own ranges.
    assert_eq!(plan.annotate.len(), 3);
    for (name, a) in &plan.annotate {
        let in_status = plan.assignment.iter().find(|p| &p.pod == name).unwrap();
        assert_eq!(a.ranges, in_status.ranges);
        assert_eq!((a.space, a.epoch), (1024, 1));
    }
}

#[test]
fn an_unchanged_assignment_keeps_its_epoch_and_writes_nothing() {
    let first = plan(64, 2, &pods(2), &[], 0, &targets(5));
    let annotated: Vec<WorkerPod> = pods(2)
        .into_iter()
        .map(|mut p| {
            p.annotated = first
                .annotate
                .iter()
                .find(|(n, _)| *n == p.name)
                .map(|(_, a)| a.clone());
            p
        })
        .collect();
    let again = plan(
        64,
        2,
        &annotated,
        &first.assignment,
        first.epoch,
        &targets(5),
    );
    assert!(!again.changed);
    assert_eq!(again.epoch, first.epoch);
    assert_eq!(again.assignment, first.assignment);
    assert!(again.annotate.is_empty());
}

#[test]
fn a_recreated_pod_without_annotations_is_annotated_again_at_the_same_epoch() {
    let first = plan(64, 2, &pods(2), &[], 0, &targets(5));
    let mut current = pods(2);
    current[0].annotated = Some(first.annotate[0].1.clone());
    // orders-1 came back from a delete without annotations.
    let again = plan(64, 2, &current, &first.assignment, first.epoch, &targets(5));
    assert!(!again.changed);
    assert_eq!(again.epoch, first.epoch);
    assert_eq!(again.annotate.len(), 1);
    assert_eq!(again.annotate[0].0, "orders-1");
    assert_eq!(again.annotate[0].1.ranges.to_string(), "32-63");
}

#[test]
fn scaling_up_reassigns_with_the_next_epoch_over_every_pod() {
    let three = plan(1024, 3, &pods(3), &[], 4, &targets(10));
    assert_eq!(three.epoch, 5);
    let five = plan(
        1024,
        5,
        &pods(5),
        &three.assignment,
        three.epoch,
        &targets(10),
    );
    assert!(five.changed);
    assert_eq!(five.epoch, 6);
    assert_eq!(five.assignment.len(), 5);
    assert_every_slot_owned_once(1024, &five.assignment);
}

#[test]
fn pods_beyond_replicas_or_terminating_own_nothing_and_are_told_so() {
    let mut current = pods(4);
    current[1].terminating = true;
    let p = plan(12, 3, &current, &[], 0, &targets(3));
    let owners: Vec<&str> = p.assignment.iter().map(|a| a.pod.as_str()).collect();
    assert_eq!(owners, ["orders-0", "orders-2"]);
    assert_every_slot_owned_once(12, &p.assignment);
    // orders-3 (beyond replicas) is annotated with no slot; the terminating pod is left.
    let extra = p.annotate.iter().find(|(n, _)| n == "orders-3").unwrap();
    assert!(extra.1.ranges.is_empty());
    assert!(p.annotate.iter().all(|(n, _)| n != "orders-1"));
}

#[test]
fn without_pods_every_slot_is_unowned() {
    let p = plan(32, 2, &[], &[], 0, &targets(3));
    assert!(p.assignment.is_empty());
    assert_eq!(p.unowned_slots, 32);
    assert!(!p.changed);
    assert_eq!(p.epoch, 0);
}

#[test]
fn the_epoch_never_goes_back_below_what_a_pod_carries() {
    // A new leader finds status at epoch 3 (e.g. restored) but a pod annotated at 9.
    let first = plan(16, 1, &pods(1), &[], 0, &[]);
    let mut current = pods(1);
    let mut seen = first.annotate[0].1.clone();
    seen.epoch = 9;
    current[0].annotated = Some(seen);
    let p = plan(16, 1, &current, &first.assignment, 3, &[]);
    assert!(p.changed);
    assert_eq!(p.epoch, 10);
    assert_eq!(p.annotate[0].1.epoch, 10);
}

#[test]
fn an_acknowledgement_survives_only_while_the_pod_keeps_its_ranges() {
    let mut first = plan(16, 2, &pods(2), &[], 0, &[]);
    for a in &mut first.assignment {
        a.acked_epoch = Some(1);
    }
    let same = plan(16, 2, &pods(2), &first.assignment, 1, &[]);
    assert!(same.assignment.iter().all(|a| a.acked_epoch == Some(1)));
    let more = plan(16, 3, &pods(3), &first.assignment, 1, &[]);
    assert!(more.assignment.iter().all(|a| a.acked_epoch.is_none()));
}
