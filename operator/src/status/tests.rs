//! Conditions: each state a collector can be in, and the transition times.

use super::*;
use dbcollector_crds::shard::Ranges;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

fn pod(name: &str, ready: bool, problem: Option<&str>) -> PodHealth {
    PodHealth {
        name: name.to_owned(),
        ready,
        problem: problem.map(str::to_owned),
    }
}

fn owns(pod: &str, ranges: &str) -> PodAssignment {
    PodAssignment {
        targets: 1,
        ..PodAssignment::owning(pod, ranges.parse::<Ranges>().unwrap())
    }
}

fn applied(kind: &'static str, required: bool) -> ChildReport {
    ChildReport {
        kind,
        name: "orders".to_owned(),
        required,
        outcome: Outcome::Applied,
    }
}

/// Two ready pods owning every slot of 16, everything applied, the rollout done.
fn healthy() -> Observation {
    Observation {
        generation: Some(3),
        desired_replicas: 2,
        shards: 16,
        refused: None,
        children: vec![
            applied("ConfigMap", true),
            applied("StatefulSet", true),
            applied("PodDisruptionBudget", false),
        ],
        workload: Some(Workload {
            generation: 2,
            observed_generation: 2,
            replicas: 2,
            ready_replicas: 2,
            updated_replicas: 2,
            current_revision: Some("orders-abc".to_owned()),
            update_revision: Some("orders-abc".to_owned()),
        }),
        pods: vec![pod("orders-0", true, None), pod("orders-1", true, None)],
        assignment: vec![owns("orders-0", "0-7"), owns("orders-1", "8-15")],
        unowned_slots: 0,
        secrets: Vec::new(),
        handoff: Vec::new(),
        silent: Vec::new(),
        lost: Vec::new(),
        reports: BTreeMap::new(),
    }
}

fn get<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn a_healthy_collector_is_ready_available_settled_and_not_degraded() {
    let c = conditions(&healthy(), &[], &at(100));
    assert_eq!(c.len(), 4);
    assert_eq!(get(&c, READY).status, "True");
    assert_eq!(get(&c, AVAILABLE).status, "True");
    assert_eq!(get(&c, AVAILABLE).reason, "AllSlotsOwned");
    assert_eq!(get(&c, PROGRESSING).status, "False");
    assert_eq!(get(&c, DEGRADED).status, "False");
    for condition in &c {
        assert_eq!(condition.observed_generation, Some(3));
        assert!(!condition.message.is_empty());
        assert!(!condition.reason.is_empty());
        assert_eq!(condition.last_transition_time, at(100));
    }
}

#[test]
fn before_the_statefulset_exists_availability_and_progress_are_unknown() {
    let o = Observation {
        generation: Some(1),
        desired_replicas: 1,
        shards: 16,
        ..Observation::default()
    };
    let c = conditions(&o, &[], &at(1));
    assert_eq!(get(&c, AVAILABLE).status, "Unknown");
    assert_eq!(get(&c, PROGRESSING).status, "Unknown");
    assert_eq!(get(&c, READY).status, "False");
    assert!(c.iter().all(|c| !c.message.is_empty()));
}

#[test]
fn the_transition_time_changes_only_when_the_status_does() {
    let first = conditions(&healthy(), &[], &at(100));

    let mut same_status = healthy();
    same_status.pods[0].name = "orders-0".to_owned();
    same_status.desired_replicas = 2;
    let second = conditions(&same_status, &first, &at(200));
    assert!(second.iter().all(|c| c.last_transition_time == at(100)));
    assert!(same(&first, &second));

    let mut worse = healthy();
    worse.pods[1] = pod("orders-1", false, Some("CrashLoopBackOff"));
    let third = conditions(&worse, &second, &at(300));
    assert_eq!(get(&third, AVAILABLE).status, "False");
    assert_eq!(get(&third, AVAILABLE).last_transition_time, at(300));
    assert_eq!(get(&third, DEGRADED).last_transition_time, at(300));
    // Unchanged statuses keep their time even when their message changes.
    let mut message_only = worse.clone();
    message_only.pods[1].problem = Some("ImagePullBackOff".to_owned());
    let fourth = conditions(&message_only, &third, &at(400));
    assert_eq!(get(&fourth, DEGRADED).last_transition_time, at(300));
    assert!(get(&fourth, DEGRADED).message.contains("ImagePullBackOff"));
}

#[test]
fn pods_not_ready_are_named_with_their_reason() {
    let mut o = healthy();
    o.pods[1] = pod("orders-1", false, Some("CrashLoopBackOff, last OOMKilled"));
    o.workload.as_mut().unwrap().ready_replicas = 1;
    let c = conditions(&o, &[], &at(1));
    let available = get(&c, AVAILABLE);
    assert_eq!(available.status, "False");
    assert_eq!(available.reason, "WorkersNotReady");
    assert!(
        available
            .message
            .contains("orders-1 (CrashLoopBackOff, last OOMKilled)"),
        "{}",
        available.message
    );
    let degraded = get(&c, DEGRADED);
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "PodsFailing");
    let progressing = get(&c, PROGRESSING);
    assert_eq!(progressing.reason, "WaitingForPods");
    assert!(
        progressing.message.contains("orders-1"),
        "{}",
        progressing.message
    );
    assert_eq!(get(&c, READY).status, "False");
}

#[test]
fn a_pending_pod_is_progress_not_degradation() {
    let mut o = healthy();
    o.pods[1] = pod("orders-1", false, Some("Pending"));
    o.workload.as_mut().unwrap().ready_replicas = 1;
    let c = conditions(&o, &[], &at(1));
    assert_eq!(get(&c, DEGRADED).status, "False");
    assert_eq!(get(&c, PROGRESSING).status, "True");
    assert!(get(&c, PROGRESSING).message.contains("orders-1 (Pending)"));
}

#[test]
fn a_rollout_or_a_scale_is_progressing() {
    let mut rolling = healthy();
    let w = rolling.workload.as_mut().unwrap();
    w.update_revision = Some("orders-def".to_owned());
    w.updated_replicas = 1;
    let c = conditions(&rolling, &[], &at(1));
    assert_eq!(get(&c, PROGRESSING).reason, "RollingOut");
    assert!(get(&c, PROGRESSING).message.contains("orders-def"));
    assert_eq!(get(&c, READY).reason, "Progressing");

    let mut scaling = healthy();
    scaling.desired_replicas = 5;
    let c = conditions(&scaling, &[], &at(1));
    assert_eq!(get(&c, PROGRESSING).reason, "Scaling");
    assert!(get(&c, PROGRESSING).message.contains("from 2 to 5"));

    let mut unobserved = healthy();
    unobserved.workload.as_mut().unwrap().generation = 3;
    let c = conditions(&unobserved, &[], &at(1));
    assert_eq!(get(&c, PROGRESSING).reason, "RollingOut");
}

#[test]
fn a_missing_secret_is_degraded_naming_it_and_its_fields() {
    let mut o = healthy();
    o.secrets = vec![
        SecretProblem {
            secret: "pg-monitor".to_owned(),
            key: None,
            fields: vec!["spec.databases[0].passwordSecretRef".to_owned()],
        },
        SecretProblem {
            secret: "otlp".to_owned(),
            key: Some("api-key".to_owned()),
            fields: vec!["spec.exporter.headers[0].secretKeyRef".to_owned()],
        },
    ];
    let c = conditions(&o, &[], &at(1));
    let degraded = get(&c, DEGRADED);
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "MissingSecret");
    assert!(degraded.message.contains(
        "Secret pg-monitor does not exist (referenced by spec.databases[0].passwordSecretRef)"
    ));
    assert!(degraded.message.contains("Secret otlp has no key api-key"));
    // Collection of the other targets goes on: still ready.
    assert_eq!(get(&c, READY).status, "True");
}

#[test]
fn an_optional_child_not_served_degrades_but_does_not_unready() {
    let mut o = healthy();
    o.children[2].outcome = Outcome::NotServed {
        api: "policy/v1".to_owned(),
    };
    let c = conditions(&o, &[], &at(1));
    let degraded = get(&c, DEGRADED);
    assert_eq!(degraded.reason, "ChildNotServed");
    assert_eq!(
        degraded.message,
        "PodDisruptionBudget orders: policy/v1 is not served by this API server"
    );
    assert_eq!(get(&c, READY).status, "True");
}

#[test]
fn a_required_child_not_applied_unreadies() {
    let mut o = healthy();
    o.children[0].outcome = Outcome::Forbidden {
        message: "configmaps is forbidden".to_owned(),
    };
    let c = conditions(&o, &[], &at(1));
    assert_eq!(get(&c, DEGRADED).reason, "ChildForbidden");
    let ready = get(&c, READY);
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "ChildrenNotApplied");
    assert!(ready.message.contains("ConfigMap orders"));
}

#[test]
fn a_refused_spec_is_degraded_naming_the_field_and_not_ready() {
    let mut o = healthy();
    o.refused = Some(Refusal {
        reason: "ShardsChanged",
        message: "spec.shards: is immutable".to_owned(),
    });
    let c = conditions(&o, &[], &at(1));
    let degraded = get(&c, DEGRADED);
    assert_eq!(degraded.reason, "ShardsChanged");
    assert!(degraded.message.starts_with("spec.shards"));
    assert_eq!(get(&c, READY).reason, "SpecRefused");
    // The running workers still collect.
    assert_eq!(get(&c, AVAILABLE).status, "True");
}

#[test]
fn unowned_slots_make_the_collector_unavailable() {
    let mut o = healthy();
    o.assignment.clear();
    o.unowned_slots = 16;
    o.pods.clear();
    let c = conditions(&o, &[], &at(1));
    assert_eq!(get(&c, AVAILABLE).status, "False");
    assert_eq!(get(&c, AVAILABLE).reason, "NoWorkers");
}

#[test]
fn long_lists_of_pods_are_cut_and_counted() {
    let mut o = healthy();
    o.pods = (0..20)
        .map(|i| pod(&format!("orders-{i}"), false, Some("ErrImagePull")))
        .collect();
    let c = conditions(&o, &[], &at(1));
    let message = &get(&c, DEGRADED).message;
    assert!(
        message.contains("orders-7 (ErrImagePull) and 12 more"),
        "{message}"
    );
    assert!(!message.contains("orders-8 "), "{message}");
}

fn pod_from(status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": "orders-0" },
        "status": status,
    }))
    .unwrap()
}

#[test]
fn pod_health_reads_the_kubelets_reasons() {
    let crash = pod_from(json!({
        "phase": "Running",
        "conditions": [{ "type": "Ready", "status": "False" }],
        "containerStatuses": [{
            "name": "worker", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
            "state": { "waiting": { "reason": "CrashLoopBackOff" } },
            "lastState": { "terminated": { "exitCode": 137, "reason": "OOMKilled" } }
        }]
    }));
    let health = PodHealth::of(&crash);
    assert_eq!(
        health.problem.as_deref(),
        Some("CrashLoopBackOff, last OOMKilled")
    );
    assert!(health.failing());

    let pending = pod_from(json!({ "phase": "Pending" }));
    assert_eq!(PodHealth::of(&pending).problem.as_deref(), Some("Pending"));
    assert!(!PodHealth::of(&pending).failing());

    let unschedulable = pod_from(json!({
        "phase": "Pending",
        "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable" }]
    }));
    assert_eq!(
        PodHealth::of(&unschedulable).problem.as_deref(),
        Some("Unschedulable")
    );

    let ready = pod_from(json!({
        "phase": "Running",
        "conditions": [{ "type": "Ready", "status": "True" }]
    }));
    assert_eq!(PodHealth::of(&ready), pod("orders-0", true, None));
}

#[test]
fn a_handoff_in_flight_is_progressing_and_says_what_it_waits_for() {
    let mut o = healthy();
    o.handoff = vec!["orders-1 to acknowledge epoch 7 (4 granted slots)".to_owned()];
    let c = conditions(&o, &[], &at(1));
    let progressing = get(&c, PROGRESSING);
    assert_eq!(progressing.status, "True");
    assert_eq!(progressing.reason, "Rebalancing");
    assert!(progressing
        .message
        .contains("orders-1 to acknowledge epoch 7"));
    assert_eq!(
        get(&c, AVAILABLE).status,
        "True",
        "every slot still has its owner"
    );
    assert_eq!(get(&c, READY).status, "False");
}

#[test]
fn silent_workers_down_targets_and_missing_capabilities_degrade() {
    let mut o = healthy();
    o.silent = vec!["orders-1".to_owned()];
    o.lost = vec!["orders-2".to_owned()];
    o.children[2].outcome = Outcome::NotServed {
        api: "policy/v1".to_owned(),
    };
    o.reports.insert(
        "orders-0".to_owned(),
        Report {
            targets_down: 3,
            down_names: vec!["pg-b".to_owned(), "pg-a".to_owned()],
            capabilities_missing: 2,
            ..Report::default()
        },
    );
    let c = conditions(&o, &[], &at(1));
    let degraded = get(&c, DEGRADED);
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "WorkersSilent");
    assert!(
        degraded.message.contains("orders-1 have not acknowledged"),
        "{}",
        degraded.message
    );
    assert!(
        degraded
            .message
            .contains("3 targets down: pg-a, pg-b, 1 more"),
        "{}",
        degraded.message
    );
    assert!(
        degraded.message.contains("orders-0 (2)"),
        "{}",
        degraded.message
    );
}
