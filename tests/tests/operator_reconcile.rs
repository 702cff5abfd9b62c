//! The operator against a real API server (v1.20): children, config changes that do not
//! roll pods, scaling and slot ownership, conditions, refusals, no-op reconciles, and
//! autoscaling through the scale subresource. One control plane for the file, one
//! namespace and one operator per test.

mod operator_support;

use dbcollector_crds::annotations::{ShardAssignment, SHARD_SPACE};
use dbcollector_crds::status::{AVAILABLE, DEGRADED, READY};
use dbcollector_tests::eventually;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use operator_support::*;
use serde_json::json;

fn is_true(status: &dbcollector_crds::DatabaseCollectorStatus, type_: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == "True")
}

async fn merge_spec(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
    collectors(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_collector_gets_its_children_owned_by_it_and_they_go_with_it() {
    let ns = "op-children";
    let (plane, _operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    let dc = create_collector(&client, ns, "orders", spec(2, 64, 3)).await;
    let uid = dc.uid().unwrap();

    let set = wait_exists(
        &Api::<StatefulSet>::namespaced(client.clone(), ns),
        "orders",
    )
    .await;
    let owned_by_collector =
        |owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
            owners.iter().any(|o| {
                o.uid == uid && o.controller == Some(true) && o.kind == "DatabaseCollector"
            })
        };
    assert!(owned_by_collector(set.owner_references()));
    let map = wait_exists(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        "orders-config",
    )
    .await;
    assert!(owned_by_collector(map.owner_references()));
    for object in [
        meta_of::<Service>(&client, ns, "orders").await,
        meta_of::<ServiceAccount>(&client, ns, "orders-worker").await,
        meta_of::<Role>(&client, ns, "orders-worker").await,
        meta_of::<RoleBinding>(&client, ns, "orders-worker").await,
        meta_of::<Lease>(&client, ns, "orders-1").await,
    ] {
        let owners = object.owner_references.unwrap_or_default();
        assert!(owned_by_collector(&owners), "{:?}", object.name);
    }
    let status = wait_status(&client, ns, "orders", "conditions set", |s| {
        s.conditions.len() == 4 && s.selector.is_some()
    })
    .await;
    assert_eq!(status.targets, 3);
    assert_eq!(status.observed_generation, Some(1));

    // `kubectl get dbc` shows the printer columns.
    let table = plane.kubectl_ok(["get", "dbc", "-n", ns]).await.unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    for column in ["READY", "REPLICAS", "TARGETS", "SHARDS", "AGE"] {
        assert!(table.contains(column), "{table}");
    }

    // Garbage collection (kube-controller-manager) deletes the children by owner.
    collectors(&client, ns)
        .delete("orders", &DeleteParams::background())
        .await
        .unwrap();
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    eventually("the children to be collected", WAIT, || async {
        let gone = sets.get_opt("orders").await?.is_none()
            && maps.get_opt("orders-config").await?.is_none();
        Ok(gone.then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_target_added_updates_the_config_without_rolling_the_pods_and_an_image_rolls_them() {
    let ns = "op-config";
    let (plane, _operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    create_collector(&client, ns, "orders", spec(2, 64, 2)).await;
    ready_pods(plane, ns, "orders", 2).await;
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let before = eventually("the StatefulSet's revision", WAIT, || async {
        let set = sets.get("orders").await?;
        let revision = set.status.as_ref().and_then(|s| s.update_revision.clone());
        Ok(revision.map(|r| (set, r)))
    })
    .await
    .unwrap();
    let pods_before: Vec<String> = worker_pods(&client, ns, "orders")
        .await
        .iter()
        .map(|p| p.uid().unwrap())
        .collect();

    merge_spec(&client, ns, "orders", spec(2, 64, 3)).await;
    let maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    eventually("the new target in the config", WAIT, || async {
        let map = maps.get("orders-config").await?;
        let yaml = map
            .data
            .unwrap_or_default()
            .remove("config.yaml")
            .unwrap_or_default();
        Ok(yaml.contains("name: db2").then_some(()))
    })
    .await
    .unwrap();
    wait_status(&client, ns, "orders", "three targets counted", |s| {
        s.targets == 3
    })
    .await;
    let after = sets.get("orders").await.unwrap();
    assert_eq!(after.metadata.generation, before.0.metadata.generation);
    assert_eq!(
        after.spec.as_ref().unwrap().template,
        before.0.spec.as_ref().unwrap().template
    );
    assert_eq!(
        after
            .status
            .as_ref()
            .and_then(|s| s.update_revision.clone()),
        Some(before.1.clone())
    );
    let pods_after: Vec<String> = worker_pods(&client, ns, "orders")
        .await
        .iter()
        .map(|p| p.uid().unwrap())
        .collect();
    assert_eq!(pods_after, pods_before);

    merge_spec(
        &client,
        ns,
        "orders",
        json!({ "image": "example.invalid/worker:2" }),
    )
    .await;
    eventually("a new revision for the new image", WAIT, || async {
        let set = sets.get("orders").await?;
        let revision = set.status.and_then(|s| s.update_revision);
        Ok(revision.filter(|r| *r != before.1).map(|_| ()))
    })
    .await
    .unwrap();
    let set = sets.get("orders").await.unwrap();
    let image = set.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("example.invalid/worker:2"));
}

#[tokio::test]
async fn kubectl_scale_to_five_gives_every_slot_to_exactly_one_pod_and_the_collector_gets_ready() {
    let ns = "op-scale";
    let (plane, _operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    create_collector(&client, ns, "orders", spec(1, 100, 20)).await;
    ready_pods(plane, ns, "orders", 1).await;
    let first = wait_status(&client, ns, "orders", "one pod owning every slot", |s| {
        s.assignment.len() == 1
    })
    .await;

    plane
        .kubectl_ok(["scale", "dbc/orders", "--replicas=5", "-n", ns])
        .await
        .unwrap();
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    eventually("the StatefulSet at 5", WAIT, || async {
        let set = sets.get("orders").await?;
        Ok((set.spec.and_then(|s| s.replicas) == Some(5)).then_some(()))
    })
    .await
    .unwrap();
    ready_pods(plane, ns, "orders", 5).await;

    let status = eventually(
        "every slot owned once, in status and on the pods",
        WAIT,
        || async {
            let status = collectors(&client, ns)
                .get("orders")
                .await?
                .status
                .unwrap_or_default();
            let pods = worker_pods(&client, ns, "orders").await;
            Ok((pods.len() == 5 && assignment_consistent(&status, 100, &pods)).then_some(status))
        },
    )
    .await
    .unwrap();
    assert!(status.assignment_epoch > first.assignment_epoch);
    assert_eq!(status.unowned_slots, 0);
    assert_eq!(status.assignment.iter().map(|a| a.targets).sum::<u32>(), 20);

    let waited = plane
        .kubectl([
            "wait",
            "--for=condition=Ready",
            "--timeout=90s",
            "dbc/orders",
            "-n",
            ns,
        ])
        .await
        .unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let status = collectors(&client, ns)
        .get("orders")
        .await
        .unwrap()
        .status
        .unwrap();
    assert!(is_true(&status, AVAILABLE));
    assert_eq!(status.ready_replicas, 5);

    // Scaling down: the surviving pods own every slot, the Leases and the workers' Role
    // follow.
    plane
        .kubectl_ok(["scale", "dbc/orders", "--replicas=2", "-n", ns])
        .await
        .unwrap();
    let leases = Api::<Lease>::namespaced(client.clone(), ns);
    let roles = Api::<Role>::namespaced(client.clone(), ns);
    eventually(
        "two owners, two Leases, a Role naming two pods",
        WAIT,
        || async {
            let status = collectors(&client, ns)
                .get("orders")
                .await?
                .status
                .unwrap_or_default();
            let pods = worker_pods(&client, ns, "orders").await;
            let mut lease_names: Vec<String> = leases
                .list(&ListParams::default().labels("app.kubernetes.io/instance=orders"))
                .await?
                .items
                .iter()
                .map(ResourceExt::name_any)
                .collect();
            lease_names.sort();
            let role = roles.get("orders-worker").await?;
            let pod_rule = role
                .rules
                .unwrap_or_default()
                .into_iter()
                .find(|r| r.resources.as_deref() == Some(&["pods".to_owned()][..]));
            let done = pods.len() == 2
                && assignment_consistent(&status, 100, &pods)
                && lease_names == ["orders-0", "orders-1"]
                && pod_rule.and_then(|r| r.resource_names)
                    == Some(vec!["orders-0".to_owned(), "orders-1".to_owned()]);
            Ok(done.then_some(()))
        },
    )
    .await
    .unwrap();

    // `kubectl describe` shows the conditions and the event trail.
    let described = plane
        .kubectl_ok(["describe", "dbc/orders", "-n", ns])
        .await
        .unwrap();
    assert!(described.contains("AllSlotsOwned"), "{described}");
    assert!(described.contains("Assigned"), "{described}");
}

#[tokio::test]
async fn a_deleted_pod_is_recreated_and_annotated_again() {
    let ns = "op-recreate";
    let (plane, _operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    create_collector(&client, ns, "orders", spec(2, 32, 4)).await;
    ready_pods(plane, ns, "orders", 2).await;
    let annotated = eventually("both pods annotated", WAIT, || async {
        let status = collectors(&client, ns)
            .get("orders")
            .await?
            .status
            .unwrap_or_default();
        let pods = worker_pods(&client, ns, "orders").await;
        Ok((pods.len() == 2 && assignment_consistent(&status, 32, &pods)).then_some(pods))
    })
    .await
    .unwrap();
    let old_uid = annotated[1].uid().unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.delete("orders-1", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = eventually("orders-1 recreated and annotated", WAIT, || async {
        let status = collectors(&client, ns)
            .get("orders")
            .await?
            .status
            .unwrap_or_default();
        let list = worker_pods(&client, ns, "orders").await;
        let renewed = list
            .iter()
            .any(|p| p.name_any() == "orders-1" && p.uid().unwrap() != old_uid);
        let consistent = list.len() == 2 && assignment_consistent(&status, 32, &list);
        Ok((renewed && consistent).then_some(pods.get("orders-1").await?))
    })
    .await
    .unwrap();
    let assignment = ShardAssignment::from_annotations(recreated.annotations())
        .unwrap()
        .unwrap();
    assert_eq!(assignment.space, 32);
    assert!(!assignment.ranges.is_empty());
}

#[tokio::test]
async fn a_missing_secret_is_degraded_naming_it_until_it_is_created() {
    let ns = "op-secret";
    let (plane, _operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    let mut with_secret = spec(1, 16, 2);
    with_secret["databases"][0]["passwordSecretRef"] =
        json!({ "name": "pg-monitor", "key": "password" });
    create_collector(&client, ns, "orders", with_secret).await;
    let status = wait_status(&client, ns, "orders", "Degraded naming the Secret", |s| {
        condition(s, DEGRADED)
            .is_some_and(|c| c.message.contains("Secret pg-monitor does not exist"))
    })
    .await;
    let degraded = condition(&status, DEGRADED).unwrap();
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "MissingSecret");
    assert!(degraded
        .message
        .contains("spec.databases[0].passwordSecretRef"));
    // The StatefulSet is there all the same: only that target stops.
    wait_exists(
        &Api::<StatefulSet>::namespaced(client.clone(), ns),
        "orders",
    )
    .await;

    create_password_secret(&client, ns, "pg-monitor", b"s3cret").await;
    // Nobody touches the collector: the Secret's own watch event brings the change.
    let status = wait_status(&client, ns, "orders", "the Secret no longer named", |s| {
        condition(s, DEGRADED).is_some_and(|c| !c.message.contains("pg-monitor"))
    })
    .await;
    let degraded = condition(&status, DEGRADED).unwrap();
    assert_ne!(degraded.reason, "MissingSecret");
    // The worker config references the Secret; it never holds the password.
    let map = Api::<ConfigMap>::namespaced(client, ns)
        .get("orders-config")
        .await
        .unwrap();
    let yaml = &map.data.unwrap()["config.yaml"];
    assert!(yaml.contains("name: pg-monitor"), "{yaml}");
    assert!(!yaml.contains("s3cret"), "{yaml}");
}

#[tokio::test]
async fn changing_shards_is_refused_naming_the_field_and_nothing_moves() {
    let ns = "op-shards";
    let (plane, operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    create_collector(&client, ns, "orders", spec(1, 64, 2)).await;
    ready_pods(plane, ns, "orders", 1).await;
    let applied = wait_status(&client, ns, "orders", "an acknowledged assignment", |s| {
        s.unowned_slots == 0
            && !s.assignment.is_empty()
            && s.assignment.iter().all(|a| a.acked_epoch == Some(a.epoch))
    })
    .await;
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let set_before = sets.get("orders").await.unwrap();

    // A v1.20 server does not enforce the CEL transition rule: the change is stored.
    merge_spec(
        &client,
        ns,
        "orders",
        json!({ "shards": 128, "replicas": 2 }),
    )
    .await;
    let status = wait_status(&client, ns, "orders", "the change refused", |s| {
        condition(s, DEGRADED).is_some_and(|c| c.reason == "ShardsChanged")
    })
    .await;
    let degraded = condition(&status, DEGRADED).unwrap();
    assert!(
        degraded.message.starts_with("spec.shards"),
        "{}",
        degraded.message
    );
    assert_eq!(condition(&status, READY).unwrap().reason, "SpecRefused");
    assert_eq!(status.assignment_epoch, applied.assignment_epoch);
    assert_eq!(status.assignment, applied.assignment);

    let set = sets.get("orders").await.unwrap();
    assert_eq!(set.annotations()[SHARD_SPACE], "64");
    assert_eq!(
        set.metadata.resource_version,
        set_before.metadata.resource_version
    );
    drop(operator);
}

#[tokio::test]
async fn a_paused_collector_is_not_written() {
    let ns = "op-paused";
    let (plane, operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    create_collector(&client, ns, "running", spec(1, 16, 1)).await;
    wait_status(&client, ns, "running", "an assignment", |s| {
        !s.assignment.is_empty()
    })
    .await;
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let set_before = sets.get("running").await.unwrap();

    after_a_reconcile(&operator, || async {
        merge_spec(
            &client,
            ns,
            "running",
            json!({ "paused": true, "replicas": 3 }),
        )
        .await;
    })
    .await;
    let set = sets.get("running").await.unwrap();
    assert_eq!(
        set.metadata.resource_version,
        set_before.metadata.resource_version
    );
    assert_eq!(set.spec.unwrap().replicas, Some(1));
    let dc = collectors(&client, ns).get("running").await.unwrap();
    assert_eq!(dc.status.unwrap().observed_generation, Some(1));

    let mut paused = spec(1, 16, 1);
    paused["paused"] = json!(true);
    after_a_reconcile(&operator, || async {
        create_collector(&client, ns, "born-paused", paused).await;
    })
    .await;
    assert!(sets.get_opt("born-paused").await.unwrap().is_none());
    let dc = collectors(&client, ns).get("born-paused").await.unwrap();
    assert!(dc.status.is_none());
}

#[tokio::test]
async fn reconciling_an_unchanged_collector_writes_nothing() {
    let ns = "op-noop";
    let (plane, operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    create_collector(&client, ns, "orders", spec(2, 32, 3)).await;
    ready_pods(plane, ns, "orders", 2).await;
    wait_status(&client, ns, "orders", "ready", |s| is_true(s, READY)).await;

    let versions = || async {
        let rv = |m: &kube::api::ObjectMeta| m.resource_version.clone().unwrap();
        let mut v: Vec<(String, String)> = Vec::new();
        let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
        v.push((
            "sts".into(),
            rv(&sets.get("orders").await.unwrap().metadata),
        ));
        let maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
        v.push((
            "cm".into(),
            rv(&maps.get("orders-config").await.unwrap().metadata),
        ));
        let roles = Api::<Role>::namespaced(client.clone(), ns);
        v.push((
            "role".into(),
            rv(&roles.get("orders-worker").await.unwrap().metadata),
        ));
        let services = Api::<Service>::namespaced(client.clone(), ns);
        v.push((
            "svc".into(),
            rv(&services.get("orders").await.unwrap().metadata),
        ));
        let leases = Api::<Lease>::namespaced(client.clone(), ns);
        v.push((
            "lease".into(),
            rv(&leases.get("orders-0").await.unwrap().metadata),
        ));
        for pod in worker_pods(&client, ns, "orders").await {
            v.push((pod.name_any(), rv(&pod.metadata)));
        }
        v
    };
    // Settled: what the StatefulSet controller's last status updates made the operator
    // write is written.
    let mut before = versions().await;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let now = versions().await;
        if now == before {
            break;
        }
        before = now;
    }
    let dc_before = collectors(&client, ns).get("orders").await.unwrap();
    // A label on the collector is a change the operator is told about, and not one that
    // changes anything it renders.
    let touched_rv = after_a_reconcile(&operator, || async {
        let patch = json!({ "metadata": { "labels": { "touched": "yes" } } });
        let dc = collectors(&client, ns)
            .patch("orders", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
        dc.resource_version().unwrap()
    })
    .await;
    assert_eq!(versions().await, before);
    let dc = collectors(&client, ns).get("orders").await.unwrap();
    assert_eq!(
        dc.resource_version(),
        Some(touched_rv),
        "the status was rewritten"
    );
    assert_eq!(dc.status, dc_before.status);
}

#[tokio::test]
async fn the_operators_own_autoscaler_and_budget_on_v1_20_are_degraded_and_nothing_else_is() {
    let ns = "op-optional";
    let (plane, _operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    let mut autoscaled = spec(2, 32, 2);
    autoscaled["autoscaling"] = json!({ "minReplicas": 2, "maxReplicas": 4 });
    create_collector(&client, ns, "orders", autoscaled).await;
    ready_pods(plane, ns, "orders", 2).await;
    let status = wait_status(&client, ns, "orders", "ready and degraded", |s| {
        is_true(s, READY) && is_true(s, DEGRADED)
    })
    .await;
    let degraded = condition(&status, DEGRADED).unwrap();
    assert_eq!(degraded.reason, "ChildNotServed");
    assert!(
        degraded
            .message
            .contains("HorizontalPodAutoscaler orders: autoscaling/v2 is not served"),
        "{}",
        degraded.message
    );
    assert!(
        degraded
            .message
            .contains("PodDisruptionBudget orders: policy/v1 is not served"),
        "{}",
        degraded.message
    );
    let pods = worker_pods(&client, ns, "orders").await;
    assert!(assignment_consistent(&status, 32, &pods));

    // Removing autoscaling removes the autoscaler from the report (nothing to delete).
    let mut fixed = spec(2, 32, 2);
    fixed["autoscaling"] = serde_json::Value::Null;
    merge_spec(&client, ns, "orders", fixed).await;
    wait_status(
        &client,
        ns,
        "orders",
        "the autoscaler no longer reported",
        |s| condition(s, DEGRADED).is_some_and(|c| !c.message.contains("HorizontalPodAutoscaler")),
    )
    .await;
}

#[tokio::test]
async fn an_autoscaler_of_v2beta2_scales_the_collector_through_its_scale_subresource() {
    let ns = "op-hpa";
    let (plane, _operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    create_collector(&client, ns, "orders", spec(1, 32, 4)).await;
    wait_status(&client, ns, "orders", "a selector", |s| {
        s.selector.is_some()
    })
    .await;

    // min = max: the autoscaler moves the count into its bounds without any metric.
    let hpa = r#"
apiVersion: autoscaling/v2beta2
kind: HorizontalPodAutoscaler
metadata:
  name: orders
spec:
  scaleTargetRef:
    apiVersion: dbcollector.dev/v1alpha1
    kind: DatabaseCollector
    name: orders
  minReplicas: 3
  maxReplicas: 3
"#;
    let out = plane
        .kubectl_with_input(["apply", "-n", ns, "-f", "-"], hpa.as_bytes())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    eventually(
        "the autoscaler to scale the collector to 3",
        WAIT,
        || async {
            let dc = collectors(&client, ns).get("orders").await?;
            let set = sets.get("orders").await?;
            let scaled = dc.spec.replicas == 3 && set.spec.and_then(|s| s.replicas) == Some(3);
            Ok(scaled.then_some(()))
        },
    )
    .await
    .unwrap();
    ready_pods(plane, ns, "orders", 3).await;
    let status = eventually("three owners", WAIT, || async {
        let status = collectors(&client, ns)
            .get("orders")
            .await?
            .status
            .unwrap_or_default();
        let pods = worker_pods(&client, ns, "orders").await;
        Ok((pods.len() == 3 && assignment_consistent(&status, 32, &pods)).then_some(status))
    })
    .await
    .unwrap();
    assert_eq!(status.assignment.len(), 3);
}

#[tokio::test]
async fn a_collector_that_does_not_deserialize_is_reported_and_others_still_reconcile() {
    let ns = "op-invalid";
    let (plane, _operator) = namespace_with_operator(ns).await;
    let client = plane.client();
    // The schema says int32; a v1.20 server does not check integer formats, so the value
    // is stored, and it does not fit the operator's type.
    let mut broken = spec(1, 16, 1);
    broken["affinity"] = json!({ "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 4_294_967_296_i64,
            "podAffinityTerm": { "topologyKey": "kubernetes.io/hostname" }
        }]
    }});
    create_collector_raw(&client, ns, "broken", broken).await;
    create_collector(&client, ns, "fine", spec(1, 16, 1)).await;

    // Read as raw JSON: the typed client cannot read this object either.
    let resource = kube::api::ApiResource::erase::<dbcollector_crds::DatabaseCollector>(&());
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let degraded = eventually("the object reported", WAIT, || async {
        let object = raw.get("broken").await?;
        let conditions = object.data["status"]["conditions"].clone();
        let conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> =
            serde_json::from_value(conditions).unwrap_or_default();
        Ok(conditions
            .into_iter()
            .find(|c| c.type_ == DEGRADED && c.reason == "InvalidObject"))
    })
    .await
    .unwrap();
    assert_eq!(degraded.status, "True");
    assert!(
        degraded.message.contains("spec.affinity.podAntiAffinity"),
        "{}",
        degraded.message
    );
    wait_exists(&Api::<StatefulSet>::namespaced(client.clone(), ns), "fine").await;
    assert!(Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt("broken")
        .await
        .unwrap()
        .is_none());

    // A Warning event says so on the object.
    let events = Api::<Event>::namespaced(client.clone(), ns);
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().any(|e| {
        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
            && e.type_.as_deref() == Some("Warning")
    }));
}

/// Creates a collector from raw JSON (a spec the typed client could not express).
async fn create_collector_raw(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) {
    let resource = kube::api::ApiResource::erase::<dbcollector_crds::DatabaseCollector>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "dbcollector.dev/v1alpha1",
        "kind": "DatabaseCollector",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}
