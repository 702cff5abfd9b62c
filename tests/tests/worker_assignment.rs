//! A worker in pod mode against a real API server collects only the targets its pod's
//! shard assignment grants: nothing before the first assignment (while ready), exactly
//! the granted targets after it, and on a newer assignment it starts and stops only the
//! targets that changed hands. Stale and malformed assignments change nothing, a config
//! reload keeps the assignment, and the pod's Lease carries the heartbeat, the
//! acknowledged epoch and the targets' health.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbcollector_crds::annotations::{
    ACKED_EPOCH, ASSIGNMENT_EPOCH, CAPABILITIES_MISSING, HEARTBEAT_SECONDS, SHARD_RANGES,
    SHARD_SPACE, TARGETS, TARGETS_DOWN, TARGETS_DOWN_NAMES,
};
use dbcollector_crds::shard::{slot_of, Ranges};
use dbcollector_tests::{
    ControlPlane, MariaDbOptions, MariaDbServer, OtlpOptions, OtlpReceiver, PgOptions, PgServer,
    Point,
};
use dbcollector_worker::app::{Options, Worker};
use dbcollector_worker::assignment::Mode;
use dbcollector_worker::source::Source;
use dbcollector_worker::telemetry::{Metrics, ServerLabel};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};

const NAMESPACE: &str = "monitoring";

/// The worker's pod, and its Lease.
const POD: &str = "dbc-0";

/// The shard space the assignments are cut from.
const SPACE: u32 = 1024;

/// Scrape interval of every target, seconds.
const INTERVAL_S: u64 = 1;

/// How long the worker may take to act on an annotation or a ConfigMap edit: the watch
/// event, the acknowledgement after the stopped targets' last scrape, and the Lease write.
const ACT_BOUND: Duration = Duration::from_secs(20);

/// Every target of the config: five databases of one PostgreSQL server, a MariaDB
/// server, and a PostgreSQL target on a port where nothing listens.
const TARGETS_ALL: [&str; 7] = [
    "pg-app1", "pg-app2", "pg-app3", "pg-app4", "pg-app5", "maria", "dead",
];

fn now_nanos() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_nanos()).unwrap()
}

fn target_line(name: &str, engine: &str, port: u16, database: Option<&str>, user: &str) -> String {
    let databases = database.map_or(String::new(), |d| format!(", databases: [{d}]"));
    format!(
        "  - {{ name: {name}, engine: {engine}, host: 127.0.0.1, port: {port}{databases}, \
         user: {user} }}\n"
    )
}

/// The worker config: the seven targets plus `extra` (PostgreSQL targets on `app1`).
fn config(pg: u16, maria: u16, dead: u16, otlp: &str, extra: &[&str]) -> String {
    let mut text = format!(
        "version: 1\ndefaults: {{ interval: {INTERVAL_S}s, connect_timeout: 1s }}\n\
         exporter: {{ endpoint: {otlp} }}\ntelemetry: {{ listen: 127.0.0.1:0 }}\ntargets:\n"
    );
    for i in 1..=5 {
        let name = format!("pg-app{i}");
        let database = format!("app{i}");
        text.push_str(&target_line(
            &name,
            "postgresql",
            pg,
            Some(&database),
            "postgres",
        ));
    }
    text.push_str(&target_line("maria", "mysql", maria, None, "root"));
    text.push_str(&target_line("dead", "postgresql", dead, None, "postgres"));
    for name in extra {
        text.push_str(&target_line(
            name,
            "postgresql",
            pg,
            Some("app1"),
            "postgres",
        ));
    }
    text
}

/// Creates or replaces the ConfigMap holding `text`.
async fn apply_config(plane: &ControlPlane, text: &str) {
    let map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "dbc-config", "namespace": NAMESPACE },
        "data": { "config.yaml": text },
    });
    let output = plane
        .kubectl_with_input(["apply", "-f", "-"], map.to_string().as_bytes())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The slots of `names`, as the operator would grant them.
fn ranges_of(names: &[&str]) -> Ranges {
    names.iter().map(|n| slot_of(n, SPACE)).collect()
}

/// Every target of `all` that `ranges` grants.
fn granted<'a>(ranges: &Ranges, all: &[&'a str]) -> BTreeSet<&'a str> {
    all.iter()
        .copied()
        .filter(|n| ranges.contains(slot_of(n, SPACE)))
        .collect()
}

/// Writes the three assignment annotations on the pod.
async fn assign(pods: &Api<Pod>, ranges: &str, space: &str, epoch: &str) {
    let patch = serde_json::json!({ "metadata": { "annotations": {
        SHARD_RANGES: ranges, SHARD_SPACE: space, ASSIGNMENT_EPOCH: epoch,
    }}});
    pods.patch(POD, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

fn annotations(lease: &Lease) -> BTreeMap<String, String> {
    lease.metadata.annotations.clone().unwrap_or_default()
}

/// Waits until the Lease satisfies `pred`, and returns it.
async fn wait_lease(leases: &Api<Lease>, what: &str, pred: impl Fn(&Lease) -> bool) -> Lease {
    dbcollector_tests::eventually(what, ACT_BOUND, || async {
        let lease = leases.get(POD).await?;
        Ok(pred(&lease).then_some(lease))
    })
    .await
    .unwrap()
}

fn acked(lease: &Lease) -> Option<String> {
    annotations(lease).get(ACKED_EPOCH).cloned()
}

fn ups<'a>(points: &'a [Point], target: &str) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| p.metric == "dbcollector.up")
        .filter(|p| p.resource_attr("dbcollector.target") == Some(target))
        .collect()
}

fn exported_targets(points: &[Point]) -> BTreeSet<String> {
    points
        .iter()
        .filter_map(|p| p.resource_attr("dbcollector.target").map(str::to_owned))
        .collect()
}

fn scraped(metrics: &Metrics, target: &str) -> bool {
    metrics.up.get(&Metrics::target(target)).is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_mode_worker_collects_exactly_its_assignment_and_reports_in_its_lease() {
    dbcollector_tests::init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plane = ControlPlane::start().await.unwrap();
    plane.create_namespace(NAMESPACE).await.unwrap();
    let pg = PgServer::start(PgOptions::default()).await.unwrap();
    let maria = MariaDbServer::start(MariaDbOptions::default())
        .await
        .unwrap();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await.unwrap();
    let dead = dbcollector_tests::free_port();
    let admin = pg.admin_pool().await.unwrap();
    for i in 1..=5 {
        sqlx::query(&format!("CREATE DATABASE app{i}"))
            .execute(&admin)
            .await
            .unwrap();
    }

    // Epoch 1 grants two PostgreSQL targets, MariaDB and the dead one; epoch 2 moves the
    // PostgreSQL targets and keeps MariaDB.
    let ranges_a = ranges_of(&["pg-app1", "pg-app2", "maria", "dead"]);
    let ranges_b = ranges_of(&["pg-app3", "pg-app4", "pg-app5", "maria"]);
    let (set_a, set_b) = (
        granted(&ranges_a, &TARGETS_ALL),
        granted(&ranges_b, &TARGETS_ALL),
    );
    let removed: Vec<&str> = set_a.difference(&set_b).copied().collect();
    let added: Vec<&str> = set_b.difference(&set_a).copied().collect();
    assert!(set_a.contains("dead") && !set_b.contains("dead"));
    assert!(set_a.contains("maria") && set_b.contains("maria"));
    assert!(!removed.is_empty() && !added.is_empty() && set_a.len() < TARGETS_ALL.len());

    // The operator's part: the pod (it stays Pending without a kubelet), its
    // metadata-only Lease, the ConfigMap.
    let client = plane.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": POD },
        "spec": { "containers": [{ "name": "worker", "image": "example.invalid/worker:1" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": POD,
            "labels": { "app.kubernetes.io/name": "dbcollector" },
            "annotations": { "example.com/note": "kept" },
        },
    }))
    .unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let otlp = receiver.grpc_endpoint();
    let text = |extra: &[&str]| config(pg.port(), maria.port(), dead, &otlp, extra);
    apply_config(&plane, &text(&[])).await;

    // The worker finds the API as a pod would through its service account; here through
    // the admin kubeconfig. This is the only test in this binary, so setting the variable
    // cannot race another test.
    std::env::set_var("KUBECONFIG", plane.kubeconfig_path());
    let worker = Worker::start(Options {
        source: Source::ConfigMap {
            name: "dbc-config".into(),
            key: "config.yaml".into(),
        },
        worker_id: POD.into(),
        reload_poll: Duration::from_millis(200),
        namespace: Some(NAMESPACE.into()),
        assignment: Mode::Pod { name: POD.into() },
    })
    .await
    .unwrap();
    let metrics: Arc<Metrics> = worker.metrics().clone();
    let readyz = format!("http://{}/readyz", worker.telemetry_addr);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));

    // Before any assignment: ready, heartbeating, collecting nothing.
    let status = reqwest::get(&readyz).await.unwrap().status();
    assert_eq!(status, reqwest::StatusCode::OK);
    let lease = wait_lease(&leases, "the first heartbeat", |l| {
        annotations(l).get(TARGETS).map(String::as_str) == Some("0")
    })
    .await;
    let spec = lease.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(POD));
    assert_eq!(spec.lease_duration_seconds, Some(3 * HEARTBEAT_SECONDS));
    assert_eq!(acked(&lease), None);
    tokio::time::sleep(Duration::from_secs(3 * INTERVAL_S)).await;
    assert!(receiver.points().is_empty(), "{}", receiver.summary());
    assert_eq!(metrics.targets.get(), 0);

    // Epoch 1: exactly its targets, acknowledged with their count.
    assign(&pods, &ranges_a.to_string(), &SPACE.to_string(), "1").await;
    let lease = wait_lease(&leases, "the ack of epoch 1", |l| {
        acked(l).as_deref() == Some("1")
    })
    .await;
    assert_eq!(annotations(&lease)[TARGETS], set_a.len().to_string());
    let points = receiver
        .wait_for_points(|p| set_a.iter().all(|t| !ups(p, t).is_empty()), ACT_BOUND)
        .await
        .unwrap();
    let expected: BTreeSet<String> = set_a.iter().map(|t| (*t).to_owned()).collect();
    assert_eq!(exported_targets(&points), expected);
    assert_eq!(metrics.assignment_epoch.get(), 1);
    // The worker is named by the request header only, never in the data.
    for p in &points {
        assert_eq!(p.header("x-dbcollector-worker"), Some(POD));
        assert!(p.resource.values().all(|v| !v.contains(POD)), "{p:?}");
    }

    // The dead target is reported down, by name; everything else on the Lease stays.
    let lease = wait_lease(&leases, "the dead target reported down", |l| {
        let a = annotations(l);
        a.get(TARGETS_DOWN).map(String::as_str) == Some("1")
            && a.get(TARGETS_DOWN_NAMES).map(String::as_str) == Some("dead")
    })
    .await;
    let a = annotations(&lease);
    assert!(a[CAPABILITIES_MISSING].parse::<u32>().is_ok(), "{a:?}");
    assert_eq!(a["example.com/note"], "kept");
    assert!(lease
        .metadata
        .labels
        .unwrap()
        .contains_key("app.kubernetes.io/name"));

    // The heartbeat renews the Lease within one period (plus the write).
    let renewed = lease.spec.and_then(|s| s.renew_time).unwrap();
    wait_lease(&leases, "a heartbeat", |l| {
        l.spec.as_ref().and_then(|s| s.renew_time.as_ref()) > Some(&renewed)
    })
    .await;

    // Epoch 2: the moved targets stop and start; MariaDB keeps running untouched (its
    // scrape counter is not reset and it does not reconnect).
    let maria_server = ServerLabel {
        server: format!("127.0.0.1:{}", maria.port()),
    };
    let maria_opened = metrics
        .connections_opened
        .get_or_create(&maria_server)
        .get();
    let maria_scrapes = metrics
        .scrapes
        .get_or_create(&Metrics::target("maria"))
        .get();
    assign(&pods, &ranges_b.to_string(), &SPACE.to_string(), "2").await;
    let lease = wait_lease(&leases, "the ack of epoch 2", |l| {
        acked(l).as_deref() == Some("2")
    })
    .await;
    let acked_at = now_nanos();
    assert_eq!(annotations(&lease)[TARGETS], set_b.len().to_string());
    receiver
        .wait_for_points(
            |p| {
                added.iter().all(|t| !ups(p, t).is_empty())
                    && ups(p, "maria")
                        .iter()
                        .filter(|u| u.time_unix_nano >= acked_at)
                        .count()
                        >= 3
            },
            ACT_BOUND,
        )
        .await
        .unwrap();
    // A removed target scrapes no more after the ack; one interval of tolerance.
    let points = receiver.points();
    for t in &removed {
        let late = ups(&points, t)
            .iter()
            .filter(|u| u.time_unix_nano >= acked_at)
            .count();
        assert!(late <= 1, "{t} scraped {late} times after the ack");
        assert!(!scraped(&metrics, t), "{t} still has an up series");
    }
    let scrapes_now = metrics
        .scrapes
        .get_or_create(&Metrics::target("maria"))
        .get();
    assert!(
        scrapes_now > maria_scrapes,
        "maria restarted: {scrapes_now} scrapes, {maria_scrapes} before the switch"
    );
    assert_eq!(
        metrics
            .connections_opened
            .get_or_create(&maria_server)
            .get(),
        maria_opened,
        "maria reconnected"
    );
    wait_lease(&leases, "no target down after epoch 2", |l| {
        let a = annotations(l);
        a.get(TARGETS_DOWN).map(String::as_str) == Some("0") && !a.contains_key(TARGETS_DOWN_NAMES)
    })
    .await;

    // A config reload keeps the assignment: of two new targets, only the granted one
    // runs.
    let extra = |inside: bool| {
        (0..)
            .map(|i| format!("extra-{i}"))
            .find(|n| ranges_b.contains(slot_of(n, SPACE)) == inside)
            .unwrap()
    };
    let (extra_in, extra_out) = (extra(true), extra(false));
    apply_config(&plane, &text(&[&extra_in, &extra_out])).await;
    receiver
        .wait_for_points(|p| !ups(p, &extra_in).is_empty(), ACT_BOUND)
        .await
        .unwrap();
    let collected = set_b.len() + 1;
    wait_lease(&leases, "the reloaded target count", |l| {
        annotations(l).get(TARGETS) == Some(&collected.to_string())
    })
    .await;
    assert_eq!(metrics.targets.get(), i64::try_from(collected).unwrap());
    assert!(!scraped(&metrics, &extra_out));

    // A lower epoch, then malformed annotations: nothing changes. Each is given several
    // intervals to (wrongly) take effect.
    for (ranges, epoch) in [(ranges_a.to_string(), "1"), ("0-5000".to_owned(), "3")] {
        assign(&pods, &ranges, &SPACE.to_string(), epoch).await;
        tokio::time::sleep(Duration::from_secs(3 * INTERVAL_S)).await;
        assert_eq!(metrics.assignment_epoch.get(), 2, "after epoch {epoch}");
        assert_eq!(metrics.targets.get(), i64::try_from(collected).unwrap());
        for t in &removed {
            assert!(!scraped(&metrics, t), "{t} came back with epoch {epoch}");
        }
        let lease = leases.get(POD).await.unwrap();
        assert_eq!(acked(&lease).as_deref(), Some("2"));
    }
    assert!(!exported_targets(&receiver.points()).contains(&extra_out));

    // A valid newer assignment still applies after the malformed one.
    let full = Ranges::full(SPACE).to_string();
    assign(&pods, &full, &SPACE.to_string(), "4").await;
    let lease = wait_lease(&leases, "the ack of epoch 4", |l| {
        acked(l).as_deref() == Some("4")
    })
    .await;
    let everything = TARGETS_ALL.len() + 2;
    assert_eq!(annotations(&lease)[TARGETS], everything.to_string());

    stop_tx.send(()).unwrap();
    running.await.unwrap();
}
