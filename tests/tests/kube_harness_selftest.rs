//! The Kubernetes control plane of the harness: API, kubectl, controllers, ServiceAccount
//! tokens under RBAC, and cleanup.

use std::time::{Duration, Instant};

use dbcollector_tests::{client_from_kubeconfig, eventually, ControlPlane};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams, PostParams};

const WAIT: Duration = Duration::from_secs(60);

async fn start() -> ControlPlane {
    dbcollector_tests::init_tracing();
    let started = Instant::now();
    let plane = ControlPlane::start().await.unwrap();
    // Not asserted: printed so that `--nocapture` shows what a start costs.
    eprintln!("control plane started in {:?}", started.elapsed());
    plane
}

fn from_json<T: k8s_openapi::serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn objects_created_through_the_client_are_seen_by_kubectl() {
    let plane = start().await;
    let kubeconfig = std::fs::read_to_string(plane.kubeconfig_path()).unwrap();
    assert!(kubeconfig.contains(&plane.server_url()), "{kubeconfig}");
    plane.create_namespace("selftest").await.unwrap();

    let config_maps = Api::<ConfigMap>::namespaced(plane.client(), "selftest");
    let config_map = from_json(serde_json::json!({
        "metadata": { "name": "settings" },
        "data": { "interval": "10s" },
    }));
    config_maps
        .create(&PostParams::default(), &config_map)
        .await
        .unwrap();

    let namespaces = plane
        .kubectl_ok(["get", "namespaces", "-o", "name"])
        .await
        .unwrap();
    assert!(
        namespaces.lines().any(|line| line == "namespace/selftest"),
        "{namespaces}"
    );
    let interval = plane
        .kubectl_ok([
            "get",
            "configmap",
            "settings",
            "-n",
            "selftest",
            "-o",
            "jsonpath={.data.interval}",
        ])
        .await
        .unwrap();
    assert_eq!(interval, "10s");
}

#[tokio::test]
async fn statefulset_controller_creates_pods_and_counts_those_marked_ready() {
    let plane = start().await;
    plane.create_namespace("apps").await.unwrap();
    let client = plane.client();

    // Parallel: with the default OrderedReady the second pod would wait for the first.
    let set = from_json(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "serviceName": "web",
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example.invalid/web:1" }] },
            },
        },
    }));
    let sets = Api::<StatefulSet>::namespaced(client.clone(), "apps");
    sets.create(&PostParams::default(), &set).await.unwrap();

    let pods = Api::<Pod>::namespaced(client, "apps");
    let names = eventually("two pods of web", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        Ok((names.len() == 2).then_some(names))
    })
    .await
    .unwrap();
    assert_eq!(names, ["web-0", "web-1"]);

    let ready_replicas = || async {
        let set = sets.get("web").await?;
        anyhow::Ok(set.status.and_then(|s| s.ready_replicas).unwrap_or(0))
    };

    plane.mark_pod_ready("apps", "web-0").await.unwrap();
    eventually("one ready replica", WAIT, || async {
        Ok((ready_replicas().await? == 1).then_some(()))
    })
    .await
    .unwrap();
    let pod = pods.get("web-0").await.unwrap();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));

    plane.mark_pod_not_ready("apps", "web-0").await.unwrap();
    eventually("no ready replica", WAIT, || async {
        Ok((ready_replicas().await? == 0).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn service_account_token_gets_exactly_what_rbac_grants() {
    let plane = start().await;
    plane.create_namespace("team").await.unwrap();
    let path = plane
        .service_account_kubeconfig("team", "reader")
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client_from_kubeconfig(&path).unwrap(), "team");

    // Authenticated (not 401) as the account, but allowed nothing.
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("system:serviceaccount:team:reader"),
                "{status:?}"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }

    let role = from_json(serde_json::json!({
        "metadata": { "name": "pod-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }],
    }));
    let binding = from_json(serde_json::json!({
        "metadata": { "name": "reader" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": "team" }],
    }));
    let admin = plane.client();
    Api::<Role>::namespaced(admin.clone(), "team")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin, "team")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // RBAC's authorizer reads through an informer: the grant takes effect shortly.
    eventually("listing pods once granted", WAIT, || async {
        Ok(pods.list(&ListParams::default()).await.ok().map(|_| ()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dropping_the_control_plane_stops_its_servers_and_removes_its_directory() {
    let plane = start().await;
    let (dir, port) = (plane.dir().to_path_buf(), plane.port());
    assert!(dir.join("kube-apiserver.log").exists());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok());

    drop(plane);

    assert!(!dir.exists(), "{} is left behind", dir.display());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
}
