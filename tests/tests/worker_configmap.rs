//! A worker in a pod reads its config from a ConfigMap through a real Kubernetes API
//! server: a missing ConfigMap or key fails the start clearly, an edit reaches the running
//! worker within a few poll intervals, and a bad edit is refused while the last good
//! config keeps collecting.

use std::time::Duration;

use dbcollector_tests::{ControlPlane, OtlpOptions, OtlpReceiver, PgOptions, PgServer, Point};
use dbcollector_worker::app::{Error, Options, Worker};
use dbcollector_worker::assignment::Mode;
use dbcollector_worker::source::{self, Source};
use dbcollector_worker::telemetry::ResultLabel;

const NAMESPACE: &str = "monitoring";

/// How long an edit may take to reach the worker: a few 200 ms polls plus a 1 s scrape
/// and the export, far below the minute a kubelet takes to refresh a mounted ConfigMap.
const EDIT_BOUND: Duration = Duration::from_secs(10);

fn config(pg_port: u16, otlp: &str, targets: &[&str]) -> String {
    let mut text = format!(
        "version: 1\ndefaults: {{ interval: 1s }}\nexporter: {{ endpoint: {otlp} }}\n\
         telemetry: {{ listen: 127.0.0.1:0 }}\ntargets:\n"
    );
    for t in targets {
        text.push_str(&format!(
            "  - {{ name: {t}, engine: postgresql, host: 127.0.0.1, port: {pg_port}, user: postgres }}\n"
        ));
    }
    text
}

/// Creates or replaces the ConfigMap `name` holding `text` under `config.yaml`.
async fn apply(plane: &ControlPlane, name: &str, text: &str) {
    let map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": NAMESPACE },
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

fn options(name: &str, key: &str) -> Options {
    Options {
        source: Source::ConfigMap {
            name: name.into(),
            key: key.into(),
        },
        worker_id: "pod-0".into(),
        reload_poll: Duration::from_millis(200),
        namespace: Some(NAMESPACE.into()),
        assignment: Mode::All,
    }
}

fn ups_of(points: &[Point], target: &str) -> usize {
    points
        .iter()
        .filter(|p| p.metric == "dbcollector.up")
        .filter(|p| p.resource_attr("dbcollector.target") == Some(target))
        .filter(|p| p.value == 1.0)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_map_edit_reaches_the_running_worker_and_a_bad_one_is_refused() {
    dbcollector_tests::init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plane = ControlPlane::start().await.unwrap();
    plane.create_namespace(NAMESPACE).await.unwrap();
    let pg = PgServer::start(PgOptions::default()).await.unwrap();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await.unwrap();
    let otlp = receiver.grpc_endpoint();

    // The worker finds the API as a pod would through its service account; here through
    // the admin kubeconfig. This is the only test in this binary, so setting the variable
    // cannot race another test.
    std::env::set_var("KUBECONFIG", plane.kubeconfig_path());

    // A missing ConfigMap, then a missing key: the start fails and says which.
    let Err(error) = Worker::start(options("dbc-config", "config.yaml")).await else {
        panic!("a worker started without its ConfigMap");
    };
    assert!(
        matches!(
            &error,
            Error::Source { source: source::Error::Missing { name, .. }, .. } if name == "dbc-config"
        ),
        "{error:?}"
    );
    apply(&plane, "dbc-config", &config(pg.port(), &otlp, &["first"])).await;
    let Err(error) = Worker::start(options("dbc-config", "worker.yaml")).await else {
        panic!("a worker started without its config key");
    };
    assert!(
        matches!(
            &error,
            Error::Source { source: source::Error::MissingKey { key, .. }, .. } if key == "worker.yaml"
        ),
        "{error:?}"
    );

    let worker = Worker::start(options("dbc-config", "config.yaml"))
        .await
        .unwrap();
    let metrics = worker.metrics().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));
    receiver
        .wait_for_points(|p| ups_of(p, "first") >= 1, Duration::from_secs(30))
        .await
        .unwrap();

    // A second target added through the API is collected without a restart.
    let both = config(pg.port(), &otlp, &["first", "second"]);
    apply(&plane, "dbc-config", &both).await;
    receiver
        .wait_for_points(|p| ups_of(p, "second") >= 1, EDIT_BOUND)
        .await
        .unwrap();
    let success = ResultLabel { result: "success" };
    assert_eq!(metrics.config_reloads.get_or_create(&success).get(), 1);

    // A broken edit is refused; both targets keep reporting.
    apply(&plane, "dbc-config", "version: 1\ntargets: [unclosed\n").await;
    let failure = ResultLabel { result: "failure" };
    dbcollector_tests::eventually("reload refused", EDIT_BOUND, || {
        let refused = metrics.config_reloads.get_or_create(&failure).get();
        async move { Ok((refused >= 1).then_some(())) }
    })
    .await
    .unwrap();
    assert_eq!(metrics.config_last_reload_ok.get(), 0);
    let points = receiver.points();
    let (first, second) = (ups_of(&points, "first"), ups_of(&points, "second"));
    receiver
        .wait_for_points(
            |p| ups_of(p, "first") >= first + 2 && ups_of(p, "second") >= second + 2,
            EDIT_BOUND,
        )
        .await
        .unwrap();

    stop_tx.send(()).unwrap();
    running.await.unwrap();
}
