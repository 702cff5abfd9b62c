//! The operator as a process on a real API server (v1.20): leader election between two
//! instances, a graceful stop that releases the Lease, and an operator acting with a
//! ServiceAccount token bound to exactly the RBAC of `operator/rbac.yaml`, whose workers'
//! Role grants them exactly what they need.

mod operator_support;

use dbcollector_crds::status::DEGRADED;
use dbcollector_tests::eventually;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::Config;
use operator_support::*;
use serde_json::json;

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get("dbcollector-operator")
        .await
        .ok()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn only_the_leader_writes_and_killing_it_hands_over_to_the_standby() {
    let ns = "op-leader";
    let plane = plane().await;
    plane.create_namespace(ns).await.unwrap();
    let client = plane.client();
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    acknowledge_assignments(plane.config(), ns);

    let port = dbcollector_tests::free_port();
    let mut with_http = options(ns, "first");
    with_http.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let first = start_operator(plane.config(), with_http);
    first.wait_leading().await;
    let second = start_operator(plane.config(), options(ns, "second"));
    assert_eq!(holder(&leases).await.as_deref(), Some("first"));

    after_a_reconcile(&first, || async {
        create_collector(&client, ns, "orders", spec(1, 16, 2)).await;
    })
    .await;
    ready_pods(plane, ns, "orders", 1).await;
    wait_status(&client, ns, "orders", "every slot owned", |s| {
        !s.assignment.is_empty() && s.unowned_slots == 0
    })
    .await;
    assert_eq!(second.reconciles(), 0, "the standby reconciled");

    // The leader's endpoints: ready (its watches synced), and its metrics.
    let http = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let get = |path: &'static str| {
        let request = http.get(url(path)).send();
        async move {
            let response = request.await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("dbcollector_operator_leader 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "dbcollector_operator_assigned_slots{namespace=\"op-leader\",name=\"orders\"} 16"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("dbcollector_operator_reconcile_duration_seconds_count"),
        "{metrics}"
    );
    assert!(!second.health.is_leader());
    assert_eq!(second.health.readiness(), Ok(()), "a standby is ready");

    // Killed: no release, the standby waits for the Lease to expire.
    first.kill();
    second.wait_leading().await;
    assert_eq!(holder(&leases).await.as_deref(), Some("second"));
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    collectors(&client, ns)
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec(1, 16, 3) })),
        )
        .await
        .unwrap();
    eventually("the new leader to render the new target", WAIT, || async {
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
    assert!(second.reconciles() > 0);

    // Stopped gracefully (SIGTERM): the Lease is released at once, not left to expire.
    second.stop().await;
    assert_eq!(holder(&leases).await, None);
}

/// A client configuration acting as the ServiceAccount of `kubeconfig`.
fn config_of(kubeconfig: &std::path::Path) -> Config {
    Config::try_from(Kubeconfig::read_from(kubeconfig).unwrap()).unwrap()
}

/// The status code of a failed request, 0 when it succeeded.
fn code<T>(result: kube::Result<T>) -> u16 {
    match result {
        Ok(_) => 0,
        Err(kube::Error::Api(status)) => status.code,
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn the_operator_works_with_exactly_the_rbac_of_the_manifests_and_so_do_its_workers() {
    let ns = "op-rbac";
    let plane = plane().await;
    plane.create_namespace(ns).await.unwrap();
    let admin = plane.client();

    // What a user installs: the ClusterRole and the leader-election Role, bound to the
    // operator's ServiceAccount.
    plane
        .kubectl_ok(["apply", "-n", ns, "-f", RBAC])
        .await
        .unwrap();
    let kubeconfig = plane
        .service_account_kubeconfig(ns, "dbcollector-operator")
        .await
        .unwrap();
    let bindings = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: dbcollector-operator-{ns}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: dbcollector-operator }}
subjects: [{{ kind: ServiceAccount, name: dbcollector-operator, namespace: {ns} }}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: dbcollector-operator-leader-election
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: dbcollector-operator-leader-election }}
subjects: [{{ kind: ServiceAccount, name: dbcollector-operator, namespace: {ns} }}]
"#
    );
    let out = plane
        .kubectl_with_input(["apply", "-n", ns, "-f", "-"], bindings.as_bytes())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let as_operator = kube::Client::try_from(config_of(&kubeconfig)).unwrap();
    // RBAC's authorizer reads through an informer: wait for the grant to take effect.
    eventually("the operator's grant", WAIT, || async {
        Ok(collectors(&as_operator, ns)
            .list(&ListParams::default())
            .await
            .ok()
            .map(|_| ()))
    })
    .await
    .unwrap();

    create_password_secret(&admin, ns, "pg-monitor", b"pw").await;
    let operator = start_operator(config_of(&kubeconfig), options(ns, "restricted"));
    operator.wait_leading().await;
    let mut with_secret = spec(2, 32, 3);
    with_secret["databases"][0]["passwordSecretRef"] =
        json!({ "name": "pg-monitor", "key": "password" });
    create_collector(&admin, ns, "orders", with_secret).await;
    acknowledge_assignments(plane.config(), ns);
    ready_pods(plane, ns, "orders", 2).await;

    // Everything a reconcile does: children (the workers' Role among them, which passes
    // the escalation check), status, pod annotations, Events.
    let status = eventually(
        "every slot owned, in status and on the pods",
        WAIT,
        || async {
            let status = collectors(&admin, ns)
                .get("orders")
                .await?
                .status
                .unwrap_or_default();
            let pods = worker_pods(&admin, ns, "orders").await;
            Ok((pods.len() == 2 && assignment_consistent(&status, 32, &pods)).then_some(status))
        },
    )
    .await
    .unwrap();
    let degraded = status.condition(DEGRADED).unwrap();
    assert!(
        !degraded.message.contains("forbidden"),
        "{}",
        degraded.message
    );
    let metrics = operator.metrics.encode();
    assert!(!metrics.contains("kind=\"Forbidden\""), "{metrics}");
    let events = Api::<Event>::namespaced(admin.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reporting_controller.as_deref() == Some("dbcollector-operator")),
        "no event from the operator"
    );

    // The workers' Role, checked with a worker's own token.
    let worker_config = plane
        .service_account_kubeconfig(ns, "orders-worker")
        .await
        .unwrap();
    let worker = kube::Client::try_from(config_of(&worker_config)).unwrap();
    let pods: Api<Pod> = Api::namespaced(worker.clone(), ns);
    eventually("the worker's grant", WAIT, || async {
        Ok(pods.get("orders-0").await.ok().map(|_| ()))
    })
    .await
    .unwrap();
    let own = ListParams::default().fields("metadata.name=orders-1");
    assert_eq!(
        code(pods.list(&own).await),
        0,
        "list of its own pod by name"
    );
    assert_eq!(
        code(pods.list(&ListParams::default()).await),
        403,
        "list of every pod"
    );
    let annotate = Patch::Merge(json!({ "metadata": { "annotations": { "x": "y" } } }));
    assert_eq!(
        code(
            pods.patch("orders-0", &PatchParams::default(), &annotate)
                .await
        ),
        403,
        "pod patch"
    );
    let maps: Api<ConfigMap> = Api::namespaced(worker.clone(), ns);
    assert_eq!(code(maps.get("orders-config").await), 0);
    assert_eq!(code(maps.get("another-config").await), 403);
    let secrets: Api<Secret> = Api::namespaced(worker.clone(), ns);
    assert_eq!(code(secrets.get("pg-monitor").await), 0);
    assert_eq!(code(secrets.get("orders-worker-token").await), 403);
    let leases: Api<Lease> = Api::namespaced(worker.clone(), ns);
    // The acknowledging task writes this Lease too: a conflict is retried.
    let mut updated = 409;
    for _ in 0..5 {
        let mut lease = leases.get("orders-1").await.unwrap();
        lease
            .spec
            .get_or_insert_with(Default::default)
            .holder_identity = Some("orders-1".to_owned());
        updated = code(
            leases
                .replace("orders-1", &PostParams::default(), &lease)
                .await,
        );
        if updated != 409 {
            break;
        }
    }
    assert_eq!(updated, 0, "update of its Lease");
    assert_eq!(code(leases.get("dbcollector-operator").await), 403);
    operator.stop().await;
}
