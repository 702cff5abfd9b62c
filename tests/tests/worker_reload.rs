//! Config reloads of a running worker: a bad config or a newer format is refused and the
//! last good config keeps collecting; a good one adds and removes targets without
//! touching the others.

use std::sync::Arc;
use std::time::Duration;

use dbcollector_tests::{OtlpOptions, OtlpReceiver, PgOptions, PgServer, Point};
use dbcollector_worker::app::{Options, Worker};
use dbcollector_worker::assignment::Mode;
use dbcollector_worker::source::Source;
use dbcollector_worker::telemetry::Metrics;

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

fn ups_of(points: &[Point], target: &str) -> usize {
    points
        .iter()
        .filter(|p| p.metric == "dbcollector.up")
        .filter(|p| p.resource_attr("dbcollector.target") == Some(target))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reloads_keep_the_last_good_config_and_good_ones_apply() {
    dbcollector_tests::init_tracing();
    let pg = PgServer::start(PgOptions::default()).await.unwrap();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await.unwrap();
    let otlp = receiver.grpc_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.yaml");
    std::fs::write(&path, config(pg.port(), &otlp, &["first"])).unwrap();

    let worker = Worker::start(Options {
        source: Source::File(path.clone()),
        worker_id: "reload-worker".into(),
        reload_poll: Duration::from_millis(100),
        namespace: None,
        assignment: Mode::All,
    })
    .await
    .unwrap();
    let metrics: Arc<Metrics> = worker.metrics().clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));
    receiver
        .wait_for_points(|p| ups_of(p, "first") >= 2, Duration::from_secs(30))
        .await
        .unwrap();

    // Broken YAML, then a newer format: both refused, collection goes on.
    for (i, bad) in [
        "version: 1\ntargets: [unclosed\n",
        "version: 2\nexporter: {}\n",
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&path, bad).unwrap();
        let failures = i as u64 + 1;
        dbcollector_tests::eventually("reload refused", Duration::from_secs(10), || {
            let refused = metrics
                .config_reloads
                .get_or_create(&dbcollector_worker::telemetry::ResultLabel { result: "failure" })
                .get();
            async move { Ok((refused >= failures).then_some(())) }
        })
        .await
        .unwrap();
        assert_eq!(metrics.config_last_reload_ok.get(), 0);
        let before = ups_of(&receiver.points(), "first");
        receiver
            .wait_for_points(
                |p| ups_of(p, "first") >= before + 2,
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    // A good config: "second" starts, "first" stops.
    std::fs::write(&path, config(pg.port(), &otlp, &["second"])).unwrap();
    receiver
        .wait_for_points(|p| ups_of(p, "second") >= 2, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(metrics.config_last_reload_ok.get(), 1);
    let first_after = ups_of(&receiver.points(), "first");
    receiver
        .wait_for_points(|p| ups_of(p, "second") >= 5, Duration::from_secs(30))
        .await
        .unwrap();
    // At most one in-flight scrape of "first" could still land after the reload.
    assert!(ups_of(&receiver.points(), "first") <= first_after + 1);

    stop_tx.send(()).unwrap();
    running.await.unwrap();
}
