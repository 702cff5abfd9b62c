//! The fleet harness itself, with the operator and worker binaries on a real API server:
//! worker pods get a process each, named after its pod in its exports, their readiness
//! reaches the pods' status, a killed worker turns its pod unready until restarted, and a
//! scale-down stops the process of the deleted pod.

mod operator_support;

use std::collections::BTreeSet;
use std::time::Duration;

use dbcollector_tests::coverage::WORKER_HEADER;
use dbcollector_tests::{Fleet, FleetOptions, OtlpOptions, OtlpReceiver, PgOptions, PgServer};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use operator_support::*;
use serde_json::json;

/// Whether pod `name` shows phase Running and condition Ready `ready`.
async fn shows_ready(pods: &Api<Pod>, name: &str, ready: bool) -> bool {
    let Ok(pod) = pods.get(name).await else {
        return false;
    };
    let status = pod.status.unwrap_or_default();
    let condition = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready");
    status.phase.as_deref() == Some("Running")
        && condition.is_some_and(|c| c.status == if ready { "True" } else { "False" })
}

async fn wait_shows_ready(pods: &Api<Pod>, name: &str, ready: bool) {
    dbcollector_tests::eventually(&format!("{name} to show Ready {ready}"), WAIT, || async {
        Ok(shows_ready(pods, name, ready).await.then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_runs_each_worker_pod_and_mirrors_its_readiness() {
    let ns = "fleet";
    let plane = plane().await;
    plane.create_namespace(ns).await.unwrap();
    let pg = PgServer::start(PgOptions::default()).await.unwrap();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await.unwrap();
    let mut options = FleetOptions::new(ns);
    options.collector = Some("orders".to_owned());
    let fleet = Fleet::start(plane, options).await.unwrap();
    assert!(
        fleet
            .operator_metrics()
            .await
            .unwrap()
            .contains("dbcollector_operator_leader 1"),
        "the operator leads once the fleet started"
    );

    let client = plane.client();
    let databases: Vec<_> = (0..4)
        .map(|i| {
            json!({
                "name": format!("db{i}"), "engine": "postgresql", "host": "127.0.0.1",
                "port": pg.port(), "user": "postgres", "databases": ["postgres"],
            })
        })
        .collect();
    let spec = json!({
        "replicas": 2,
        "interval": "1s",
        "databases": databases,
        "exporter": { "endpoint": receiver.grpc_endpoint(), "protocol": "grpc" },
    });
    create_collector(&client, ns, "orders", spec).await;

    // A process per pod, each ready, each pod showing it.
    let pods = fleet.wait_ready(2, WAIT).await.unwrap();
    assert_eq!(pods, BTreeSet::from(["orders-0".into(), "orders-1".into()]));
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    for pod in &pods {
        wait_shows_ready(&api, pod, true).await;
    }
    wait_status(&client, ns, "orders", "two ready replicas", |s| {
        s.ready_replicas == 2
    })
    .await;
    let workers = fleet.workers().await;
    assert_ne!(workers["orders-0"].port, workers["orders-1"].port);
    let metrics = fleet.worker_metrics("orders-0").await.unwrap();
    assert!(
        metrics.contains("dbcollector_config_last_reload_successful 1"),
        "{metrics}"
    );

    // The workers export, each under its pod's name.
    receiver
        .wait_for(
            |r| r.iter().any(|r| r.header(WORKER_HEADER).is_some()),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let names: BTreeSet<String> = receiver
        .requests()
        .iter()
        .filter_map(|r| r.header(WORKER_HEADER).map(str::to_owned))
        .collect();
    assert!(names.is_subset(&pods), "{names:?}");

    // Killed: the pod turns unready and the process stays down; restarted: ready again.
    fleet.kill_worker("orders-1").await.unwrap();
    assert!(shows_ready(&api, "orders-1", false).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fleet.live_pods().await,
        BTreeSet::from(["orders-0".to_owned()])
    );
    assert!(fleet.workers().await["orders-1"].held);
    fleet.restart_worker("orders-1").await.unwrap();
    wait_shows_ready(&api, "orders-1", true).await;
    assert_eq!(fleet.workers().await["orders-1"].starts, 2);

    // Scaled down: the deleted pod's process is stopped.
    plane
        .kubectl_ok(["scale", "-n", ns, "dbc", "orders", "--replicas=1"])
        .await
        .unwrap();
    fleet.wait_ready(1, WAIT).await.unwrap();
    assert_eq!(
        fleet.live_pods().await,
        BTreeSet::from(["orders-0".to_owned()])
    );

    fleet.stop().await.unwrap();
}
