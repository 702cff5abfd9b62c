//! The handoff: every slot owned once in status, grants before revocations, nothing left
//! uncollected, epochs that only grow, and a StatefulSet that shrinks last.

use super::*;

const SHARDS: u32 = 256;

fn targets(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("db{i}")).collect()
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

/// A fleet as the API server and the workers would hold it: the pods with their
/// annotations, the Leases, and the status the operator wrote.
struct Fleet {
    replicas: i32,
    targets: Vec<String>,
    pods: Vec<WorkerPod>,
    reports: BTreeMap<String, Report>,
    /// What each worker collects: the ranges of the last assignment it applied.
    applied: BTreeMap<String, Ranges>,
    status: Vec<PodAssignment>,
    epoch: u64,
    clock: i64,
}

impl Fleet {
    fn new(replicas: i32, targets: usize) -> Self {
        let mut fleet = Self {
            replicas,
            targets: self::targets(targets),
            pods: Vec::new(),
            reports: BTreeMap::new(),
            applied: BTreeMap::new(),
            status: Vec::new(),
            epoch: 0,
            clock: 0,
        };
        fleet.scale(replicas);
        fleet
    }

    fn name(ordinal: u32) -> String {
        format!("orders-{ordinal}")
    }

    /// What the StatefulSet controller and the kubelet do: pods up to the size the
    /// operator asked for exist and are ready; the others are gone.
    fn scale(&mut self, size: i32) {
        let size = u32::try_from(size).unwrap();
        self.pods.retain(|p| p.ordinal < size);
        for ordinal in 0..size {
            if !self.pods.iter().any(|p| p.ordinal == ordinal) {
                self.pods.push(WorkerPod {
                    name: Self::name(ordinal),
                    ordinal,
                    terminating: false,
                    ready: true,
                    annotated: None,
                });
            }
        }
        let names: Vec<String> = self.pods.iter().map(|p| p.name.clone()).collect();
        self.applied.retain(|n, _| names.contains(n));
    }

    fn input(&self) -> Input<'_> {
        Input {
            shards: SHARDS,
            replicas: self.replicas,
            targets: &self.targets,
            pods: &self.pods,
            reports: &self.reports,
            current: &self.status,
            current_epoch: self.epoch,
            now: at(self.clock),
        }
    }

    /// One reconcile: status written, then the pods annotated, then the StatefulSet sized.
    fn reconcile(&mut self) -> Plan {
        let plan = plan(&self.input());
        self.status = plan.assignment.clone();
        self.epoch = plan.epoch;
        for (name, assignment) in &plan.annotate {
            if let Some(pod) = self.pods.iter_mut().find(|p| &p.name == name) {
                pod.annotated = Some(assignment.clone());
            }
        }
        self.scale(plan.stateful_set_replicas);
        plan
    }

    /// The workers of `which` apply their annotations and acknowledge them.
    fn ack(&mut self, which: impl Fn(&str) -> bool) {
        for pod in &self.pods {
            let (Some(a), true) = (&pod.annotated, which(&pod.name)) else {
                continue;
            };
            self.applied.insert(pod.name.clone(), a.ranges.clone());
            let report = self.reports.entry(pod.name.clone()).or_default();
            report.acked_epoch = Some(a.epoch);
            report.renewed = Some(at(self.clock));
        }
    }

    fn heartbeat(&mut self) {
        for report in self.reports.values_mut() {
            report.renewed = Some(at(self.clock));
        }
    }

    /// Reconciles and acknowledges until nothing changes; returns the reconciles taken.
    fn settle(&mut self) -> usize {
        for round in 1..=20 {
            let plan = self.reconcile();
            self.assert_invariants();
            if plan.annotate.is_empty() && plan.settled() {
                return round;
            }
            self.ack(|_| true);
            self.assert_invariants();
        }
        panic!(
            "no settled assignment after 20 reconciles: {:?}",
            self.status
        );
    }

    fn owners(&self) -> Vec<u32> {
        let mut owners = vec![0u32; SHARDS as usize];
        for a in &self.status {
            for slot in a.ranges.slots() {
                owners[slot as usize] += 1;
            }
        }
        owners
    }

    /// No slot has two owners in status; every owned slot is collected by its owner.
    fn assert_invariants(&self) {
        assert!(self.owners().iter().all(|&n| n <= 1), "{:?}", self.status);
        for a in &self.status {
            if let Some(applied) = self.applied.get(&a.pod) {
                assert!(
                    a.ranges.difference(applied).is_empty(),
                    "{} owns {} but collects {applied}",
                    a.pod,
                    a.ranges
                );
            }
        }
    }

    /// Every slot is collected by at least one worker.
    fn assert_covered(&self) {
        let collected = self
            .applied
            .values()
            .fold(Ranges::new(), |all, r| all.union(r));
        assert_eq!(collected, Ranges::full(SHARDS), "{:?}", self.applied);
    }

    fn entry(&self, pod: &str) -> &PodAssignment {
        self.status.iter().find(|a| a.pod == pod).unwrap()
    }
}

#[test]
fn the_first_assignment_is_granted_then_owned_once_acknowledged() {
    let mut fleet = Fleet::new(3, 60);
    let plan = fleet.reconcile();
    assert_eq!(plan.epoch, 1);
    assert!(plan.changed);
    assert_eq!(plan.annotate.len(), 3);
    assert_eq!(plan.unowned_slots, SHARDS, "nothing is owned before an ack");
    let granted: u64 = plan.assignment.iter().map(|a| a.granted.len()).sum();
    assert_eq!(granted, u64::from(SHARDS));
    assert!(!plan.settled());
    assert!(plan
        .waiting
        .iter()
        .any(|w| w.contains("acknowledge epoch 1")));

    fleet.ack(|_| true);
    let plan = fleet.reconcile();
    assert!(
        plan.annotate.is_empty(),
        "owning what it carries changes no annotation"
    );
    assert!(plan.settled(), "{:?}", plan.waiting);
    assert_eq!(plan.unowned_slots, 0);
    assert!(fleet.owners().iter().all(|&n| n == 1));
    let counted: u32 = plan.assignment.iter().map(|a| a.targets).sum();
    assert_eq!(counted, 60);
    assert!(plan
        .assignment
        .iter()
        .all(|a| a.acked_epoch == Some(1) && a.granted.is_empty()));
    fleet.assert_covered();
}

#[test]
fn a_new_pod_gets_slots_only_after_it_is_ready_and_old_owners_keep_them_until_it_acks() {
    let mut fleet = Fleet::new(3, 90);
    fleet.settle();
    let before: BTreeMap<String, Ranges> = fleet
        .status
        .iter()
        .map(|a| (a.pod.clone(), a.ranges.clone()))
        .collect();

    fleet.replicas = 4;
    fleet.scale(4);
    fleet.pods[3].ready = false;
    let plan = fleet.reconcile();
    assert!(
        fleet.entry("orders-3").granted.is_empty(),
        "not ready: no grant"
    );
    assert_eq!(plan.stateful_set_replicas, 4);

    fleet.pods[3].ready = true;
    fleet.reconcile();
    let grant = fleet.entry("orders-3").granted.clone();
    assert!(!grant.is_empty());
    // Make before break: the old owners still own and carry what is granted away.
    for pod in ["orders-0", "orders-1", "orders-2"] {
        assert_eq!(fleet.entry(pod).ranges, before[pod]);
    }
    fleet.ack(|p| p != "orders-3");
    fleet.assert_covered();
    fleet.reconcile();
    assert_eq!(fleet.entry("orders-3").granted, grant, "still waiting");
    fleet.assert_covered();

    fleet.ack(|p| p == "orders-3");
    let plan = fleet.reconcile();
    assert_eq!(fleet.entry("orders-3").ranges, grant);
    let revoked: Vec<&str> = plan.annotate.iter().map(|(p, _)| p.as_str()).collect();
    assert!(!revoked.contains(&"orders-3"));
    assert!(!revoked.is_empty(), "the old owners lose the slots");
    fleet.ack(|_| true);
    fleet.assert_covered();
    fleet.settle();
    assert!(fleet.owners().iter().all(|&n| n == 1));
}

#[test]
fn scale_down_moves_the_slots_before_the_stateful_set_shrinks() {
    let mut fleet = Fleet::new(4, 100);
    fleet.settle();
    fleet.replicas = 2;
    let plan = fleet.reconcile();
    assert_eq!(
        plan.stateful_set_replicas, 4,
        "pods 2 and 3 still own slots"
    );
    assert!(plan.waiting.iter().any(|w| w.contains("shrinks")));
    assert_eq!(fleet.pods.len(), 4);
    fleet.ack(|p| p == "orders-2" || p == "orders-3");
    let plan = fleet.reconcile();
    assert_eq!(
        plan.stateful_set_replicas, 4,
        "the survivors have not acked yet"
    );
    fleet.assert_covered();

    fleet.ack(|_| true);
    let plan = fleet.reconcile();
    assert_eq!(plan.stateful_set_replicas, 2);
    assert_eq!(fleet.pods.len(), 2);
    fleet.assert_covered();
    fleet.settle();
    assert_eq!(fleet.status.len(), 2);
    assert!(fleet.owners().iter().all(|&n| n == 1));
}

#[test]
fn a_pod_that_never_acknowledges_leaves_its_grant_with_the_old_owner_and_is_reported() {
    let mut fleet = Fleet::new(2, 50);
    fleet.settle();
    fleet.replicas = 3;
    fleet.scale(3);
    fleet.reconcile();
    let grant = fleet.entry("orders-2").granted.clone();
    assert!(!grant.is_empty());
    fleet.ack(|p| p != "orders-2");

    fleet.clock += i64::try_from(ACK_TIMEOUT.as_secs()).unwrap() + 1;
    fleet.heartbeat();
    let plan = fleet.reconcile();
    assert_eq!(plan.silent, ["orders-2"]);
    assert!(
        fleet.entry("orders-2").granted.is_empty(),
        "grant withdrawn"
    );
    assert!(fleet.entry("orders-2").ranges.is_empty());
    fleet.ack(|p| p != "orders-2");
    fleet.assert_covered();
    assert!(fleet.owners().iter().all(|&n| n == 1));
}

#[test]
fn a_restarting_owner_keeps_its_slots_while_it_heartbeats_and_loses_them_after() {
    let mut fleet = Fleet::new(3, 60);
    fleet.settle();
    let owned = fleet.entry("orders-1").ranges.clone();

    fleet.pods[1].ready = false;
    fleet.clock += 10;
    fleet.heartbeat();
    let plan = fleet.reconcile();
    assert!(plan.annotate.is_empty(), "nothing moves within the grace");
    assert_eq!(fleet.entry("orders-1").ranges, owned);

    // It comes back: the same slots, no other worker's targets moved.
    fleet.pods[1].ready = true;
    let plan = fleet.reconcile();
    assert!(plan.annotate.is_empty());

    // Down for good: no heartbeat. Its slots are granted elsewhere, and it owns them
    // until the successors acknowledge.
    fleet.pods[1].ready = false;
    fleet.clock += i64::try_from(GRACE.as_secs()).unwrap() + 5;
    for (name, report) in &mut fleet.reports {
        if name != "orders-1" {
            report.renewed = Some(at(fleet.clock));
        }
    }
    let plan = fleet.reconcile();
    assert_eq!(plan.lost, ["orders-1"]);
    assert_eq!(fleet.entry("orders-1").ranges, owned);
    let granted = fleet
        .status
        .iter()
        .fold(Ranges::new(), |all, a| all.union(&a.granted));
    assert!(
        owned.difference(&granted).is_empty(),
        "{owned} not all in {granted}"
    );
    fleet.ack(|p| p != "orders-1");
    fleet.reconcile();
    assert!(fleet.entry("orders-1").ranges.is_empty());
    assert_eq!(
        fleet.owners().iter().filter(|&&n| n == 1).count(),
        SHARDS as usize
    );
}

#[test]
fn a_recreated_pod_is_annotated_again_with_a_fresh_epoch() {
    let mut fleet = Fleet::new(2, 20);
    fleet.settle();
    let epoch = fleet.epoch;
    fleet.pods[0].annotated = None;
    let plan = fleet.reconcile();
    assert_eq!(plan.annotate.len(), 1);
    assert_eq!(plan.annotate[0].0, "orders-0");
    assert!(plan.annotate[0].1.epoch > epoch);
    assert_eq!(plan.annotate[0].1.ranges, fleet.entry("orders-0").ranges);
    assert!(!plan.settled(), "waits for the new acknowledgement");
}

#[test]
fn the_epoch_goes_above_every_epoch_seen_and_ignores_hand_edits() {
    let mut fleet = Fleet::new(2, 20);
    fleet.settle();
    fleet.pods[1].annotated.as_mut().unwrap().epoch = 41;
    let plan = fleet.reconcile();
    assert_eq!(plan.epoch, 42);
    fleet.ack(|_| true);
    fleet.settle();

    // Values no operator wrote: far above anything written, in a Lease or on a pod.
    fleet.reports.get_mut("orders-0").unwrap().acked_epoch = Some(i64::MAX as u64);
    let plan = fleet.reconcile();
    assert_eq!(plan.epoch, 42, "an acknowledgement never raises the epoch");
    let entry = plan
        .assignment
        .iter()
        .find(|a| a.pod == "orders-0")
        .unwrap();
    assert_eq!(entry.acked_epoch, None, "not written to status");
    fleet.pods[0].annotated.as_mut().unwrap().epoch = u64::MAX;
    let plan = fleet.reconcile();
    assert_eq!(plan.epoch, 43, "re-annotated above the real epochs");
    assert!(plan.epoch <= MAX_EPOCH);
}

#[test]
fn only_the_exact_epoch_acknowledges_a_grant() {
    let mut fleet = Fleet::new(1, 30);
    fleet.settle();
    fleet.replicas = 2;
    fleet.scale(2);
    fleet.reconcile();
    let epoch = fleet.entry("orders-1").epoch;
    fleet
        .reports
        .entry("orders-1".to_owned())
        .or_default()
        .acked_epoch = Some(epoch + 7);
    fleet.reconcile();
    assert!(
        fleet.entry("orders-1").ranges.is_empty(),
        "a larger number is no ack"
    );
    assert!(!fleet.entry("orders-1").granted.is_empty());
}

#[test]
fn without_any_ready_pod_nothing_is_granted_and_nothing_is_revoked() {
    let mut fleet = Fleet::new(2, 20);
    fleet.settle();
    for pod in &mut fleet.pods {
        pod.ready = false;
    }
    fleet.clock += 3600;
    let plan = fleet.reconcile();
    assert!(plan.assignment.iter().all(|a| a.granted.is_empty()));
    assert_eq!(plan.unowned_slots, 0, "the owners keep what they own");
}

#[test]
fn any_sequence_of_scales_keeps_every_slot_collected() {
    let mut fleet = Fleet::new(1, 200);
    fleet.settle();
    for replicas in [3, 7, 2, 10, 1, 5, 5, 4, 12, 3] {
        fleet.replicas = replicas;
        fleet.scale(replicas.max(fleet.pods.len() as i32));
        // Workers acknowledge at different times; coverage holds throughout.
        for round in 0..30 {
            let plan = fleet.reconcile();
            fleet.assert_invariants();
            fleet.assert_covered();
            if plan.annotate.is_empty() && plan.settled() {
                break;
            }
            let turn = round % 3;
            fleet.ack(|p| Fleet::name_hash(p) % 3 == turn || round > 5);
            fleet.assert_invariants();
            fleet.assert_covered();
        }
        assert!(fleet.owners().iter().all(|&n| n == 1), "{replicas}");
        assert_eq!(fleet.pods.len(), replicas as usize);
        let loads: Vec<u32> = fleet.status.iter().map(|a| a.targets).collect();
        assert_eq!(loads.iter().sum::<u32>(), 200);
    }
}

impl Fleet {
    fn name_hash(name: &str) -> usize {
        name.bytes().map(usize::from).sum()
    }
}
