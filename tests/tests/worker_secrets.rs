//! A worker in a pod reads passwords from Secrets through a real Kubernetes API server:
//! a missing Secret stops only its own target, and creating it later brings the target
//! up without a restart.

use std::time::Duration;

use dbcollector_tests::{ControlPlane, OtlpOptions, OtlpReceiver, PgOptions, PgServer, Point};
use dbcollector_worker::app::{Options, Worker};
use dbcollector_worker::assignment::Mode;
use dbcollector_worker::source::Source;

fn last_up(points: &[Point], target: &str) -> Option<f64> {
    points
        .iter()
        .filter(|p| p.metric == "dbcollector.up")
        .filter(|p| p.resource_attr("dbcollector.target") == Some(target))
        .max_by_key(|p| p.time_unix_nano)
        .map(|p| p.value)
}

/// A Secret holding the monitoring role's password, in the workers' namespace.
async fn create_secret(plane: &ControlPlane, name: &str) {
    let literal = "--from-literal=password=s3cr3t:p@ss%";
    let args = [
        "-n",
        "monitoring",
        "create",
        "secret",
        "generic",
        name,
        literal,
    ];
    plane.kubectl_ok(args).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_read_through_the_api_and_a_missing_one_stops_only_its_target() {
    dbcollector_tests::init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plane = ControlPlane::start().await.unwrap();
    plane.create_namespace("monitoring").await.unwrap();
    let pg = PgServer::start(PgOptions::default()).await.unwrap();
    pg.create_login_role("monitor", "s3cr3t:p@ss%")
        .await
        .unwrap();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await.unwrap();

    create_secret(&plane, "pg-a").await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.yaml");
    let target = |name: &str, secret: &str| {
        format!(
            "  - {{ name: {name}, engine: postgresql, host: 127.0.0.1, port: {}, user: monitor, \
             password: {{ secret: {{ name: {secret}, key: password }} }} }}\n",
            pg.port()
        )
    };
    let config = format!(
        "version: 1\ndefaults: {{ interval: 1s }}\nexporter: {{ endpoint: {} }}\n\
         telemetry: {{ listen: 127.0.0.1:0 }}\ntargets:\n{}{}",
        receiver.grpc_endpoint(),
        target("with-secret", "pg-a"),
        target("later", "pg-b"),
    );
    std::fs::write(&path, config).unwrap();

    // The worker finds the API as a pod would through its service account; here through
    // the admin kubeconfig. This is the only test in this binary, so setting the variable
    // cannot race another test.
    std::env::set_var("KUBECONFIG", plane.kubeconfig_path());
    let worker = Worker::start(Options {
        source: Source::File(path),
        worker_id: "pod-0".into(),
        reload_poll: Duration::from_millis(200),
        namespace: Some("monitoring".into()),
        assignment: Mode::All,
    })
    .await
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));

    let points = receiver
        .wait_for_points(
            |p| last_up(p, "with-secret") == Some(1.0) && last_up(p, "later") == Some(0.0),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(points.iter().any(|p| p.metric == "postgresql.table.count"));
    // "later" is the endpoint's carrier (lowest name): while it cannot connect, the
    // server-wide families are missing, with no silent failover to "with-secret".
    assert!(!points
        .iter()
        .any(|p| p.metric == "postgresql.connection.max"));

    // The Secret appears: its target comes up without a restart or a reload.
    create_secret(&plane, "pg-b").await;
    receiver
        .wait_for_points(
            |p| {
                last_up(p, "later") == Some(1.0)
                    && p.iter().any(|p| {
                        p.metric == "postgresql.connection.max"
                            && p.resource_attr("dbcollector.target") == Some("later")
                    })
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();

    stop_tx.send(()).unwrap();
    running.await.unwrap();
}
