//! The OTLP exporter against the harness receiver over real gRPC and HTTP connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use dbcollector_tests::{
    free_port, init_tracing, Fault, Kind, OtlpOptions, OtlpReceiver, Protocol, Temporality,
};
use dbcollector_worker::attrs;
use dbcollector_worker::config::{self, Compression, ValueSource};
use dbcollector_worker::exporter::{Exporter, ExporterHandle, WORKER_HEADER};
use dbcollector_worker::metrics::{Batch, Descriptor, Point, Resource, Value};
use dbcollector_worker::telemetry::{DropLabel, DropReason, Metrics};

static COMMITS: Descriptor =
    Descriptor::counter("postgresql.commits", "{commit}", "Transactions committed.");
static BACKENDS: Descriptor =
    Descriptor::gauge("postgresql.backends", "{connection}", "Open connections.");
static OTHERS: Descriptor = Descriptor::delta(
    "postgresql.statements.others.calls",
    "{call}",
    "Calls outside the top N.",
);

/// Long enough for any wait on a healthy loopback receiver; only reached on failure.
const PATIENCE: Duration = Duration::from_secs(30);

const START: u64 = 1_700_000_000_000_000_000;
const NOW: u64 = START + 60_000_000_000;

fn exporter_config(endpoint: String, protocol: Protocol) -> config::Exporter {
    config::Exporter {
        endpoint,
        protocol: match protocol {
            Protocol::Grpc => config::Protocol::Grpc,
            Protocol::Http => config::Protocol::HttpProtobuf,
        },
        tls: config::ExporterTls::default(),
        headers: Default::default(),
        compression: Compression::Gzip,
        timeout: Duration::from_secs(5),
        retry: config::Retry {
            enabled: true,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_elapsed: Duration::from_secs(60),
        },
        queue: config::Queue {
            max_points: 10_000,
            concurrency: 1,
            shutdown_timeout: Duration::from_secs(20),
        },
    }
}

fn endpoint(receiver: &OtlpReceiver, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => receiver.grpc_endpoint(),
        Protocol::Http => receiver.http_endpoint(),
    }
}

fn start(config: &config::Exporter) -> anyhow::Result<(ExporterHandle, Arc<Metrics>)> {
    let metrics = Arc::new(Metrics::unregistered());
    let exporter = Exporter::start(config, "worker-a", metrics.clone())?;
    Ok((exporter, metrics))
}

/// One scrape of target `db1`: a counter, a gauge and a delta sum, `n` points each.
fn scrape(n: usize) -> Batch {
    let resource = Arc::new(Resource {
        attrs: attrs!("db.system.name" => "postgresql", "dbcollector.target" => "db1"),
    });
    let mut batch = Batch::new("db1".into(), resource);
    for i in 0..n {
        let attrs =
            attrs!("postgresql.database.name" => "app", "index" => i as i64, "primary" => true);
        let point = |desc, value, start| Point {
            desc,
            attrs: attrs.clone(),
            value,
            start_unix_nanos: start,
            time_unix_nanos: NOW,
        };
        batch
            .points
            .push(point(&COMMITS, Value::Int(100 + i as i64), START));
        batch.points.push(point(&BACKENDS, Value::Double(2.5), 0));
        batch
            .points
            .push(point(&OTHERS, Value::Int(7), NOW - 30_000_000_000));
    }
    batch
}

/// A batch of `n` gauge points tagged `seq`, to tell batches apart at the receiver.
fn tagged(seq: i64, n: usize) -> Batch {
    let resource = Arc::new(Resource {
        attrs: attrs!("db.system.name" => "postgresql"),
    });
    let mut batch = Batch::new("db1".into(), resource);
    batch.points = (0..n)
        .map(|i| Point {
            desc: &BACKENDS,
            attrs: attrs!("seq" => seq, "i" => i as i64),
            value: Value::Int(1),
            start_unix_nanos: 0,
            time_unix_nanos: NOW,
        })
        .collect();
    batch
}

fn dropped(metrics: &Metrics, reason: DropReason) -> u64 {
    metrics
        .points_dropped
        .get_or_create(&DropLabel { reason })
        .get()
}

/// Waits until `done` holds, checking every few milliseconds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn delivers_points_as_read(
    protocol: Protocol,
    compression: Compression,
) -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    let variable = format!("DBCOLLECTOR_TEST_EXPORTER_KEY_{}", free_port());
    std::env::set_var(&variable, "k3y");
    let mut config = exporter_config(endpoint(&receiver, protocol), protocol);
    config.compression = compression;
    config
        .headers
        .insert("x-api-key".into(), ValueSource::Env(variable));
    let (exporter, metrics) = start(&config)?;

    exporter.send(scrape(2));
    exporter.shutdown().await;

    let requests = receiver.requests();
    ensure!(!requests.is_empty(), "nothing received");
    for request in &requests {
        assert_eq!(request.protocol, protocol);
        assert_eq!(request.header(WORKER_HEADER), Some("worker-a"));
        assert_eq!(request.header("x-api-key"), Some("k3y"));
        let encoding = match protocol {
            Protocol::Grpc => request.header("grpc-encoding"),
            Protocol::Http => request.header("content-encoding"),
        };
        match compression {
            Compression::Gzip => assert_eq!(encoding, Some("gzip")),
            Compression::None => assert!(encoding.is_none_or(|e| e == "identity"), "{encoding:?}"),
        }
    }

    let points = receiver.points();
    assert_eq!(points.len(), 6);
    assert_eq!(metrics.points_exported.get(), 6);
    for p in &points {
        assert_eq!(
            (p.scope.as_str(), p.resource_attr("dbcollector.target")),
            ("dbcollector", Some("db1"))
        );
        assert_eq!(p.resource_attr("db.system.name"), Some("postgresql"));
        assert_eq!(
            (p.attr("postgresql.database.name"), p.attr("primary")),
            (Some("app"), Some("true"))
        );
        assert_eq!(p.time_unix_nano, NOW);
    }

    let commits: Vec<_> = points
        .iter()
        .filter(|p| p.metric == "postgresql.commits")
        .collect();
    assert_eq!(commits.len(), 2);
    let first = commits
        .iter()
        .find(|p| p.attr("index") == Some("0"))
        .context("index 0")?;
    assert_eq!(
        (first.unit.as_str(), first.description.as_str()),
        ("{commit}", "Transactions committed.")
    );
    assert_eq!(
        first.kind,
        Kind::Sum {
            temporality: Temporality::Cumulative,
            monotonic: true
        }
    );
    assert_eq!((first.value, first.start_time_unix_nano), (100.0, START));

    let gauge = points
        .iter()
        .find(|p| p.metric == "postgresql.backends")
        .context("gauge")?;
    assert_eq!(
        (gauge.kind, gauge.value, gauge.start_time_unix_nano),
        (Kind::Gauge, 2.5, 0)
    );

    let delta = points
        .iter()
        .find(|p| p.metric == "postgresql.statements.others.calls")
        .context("delta")?;
    assert_eq!(
        delta.kind,
        Kind::Sum {
            temporality: Temporality::Delta,
            monotonic: true
        }
    );
    assert_eq!(delta.start_time_unix_nano, NOW - 30_000_000_000);
    Ok(())
}

#[tokio::test]
async fn grpc_with_gzip_delivers_points_as_read_with_the_worker_and_configured_headers(
) -> anyhow::Result<()> {
    delivers_points_as_read(Protocol::Grpc, Compression::Gzip).await
}

#[tokio::test]
async fn grpc_without_compression_delivers_points_as_read() -> anyhow::Result<()> {
    delivers_points_as_read(Protocol::Grpc, Compression::None).await
}

#[tokio::test]
async fn http_with_gzip_delivers_points_as_read_with_the_worker_and_configured_headers(
) -> anyhow::Result<()> {
    delivers_points_as_read(Protocol::Http, Compression::Gzip).await
}

#[tokio::test]
async fn http_without_compression_delivers_points_as_read() -> anyhow::Result<()> {
    delivers_points_as_read(Protocol::Http, Compression::None).await
}

/// The receiver refuses the next two exports with `fault`; the batch must still arrive.
async fn delivered_after_retries(protocol: Protocol, fault: Fault) -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    receiver.inject(fault, 2);
    let (exporter, metrics) = start(&exporter_config(endpoint(&receiver, protocol), protocol))?;

    exporter.send(tagged(1, 4));
    exporter.shutdown().await;

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3, "{}", receiver.summary());
    assert!(requests[..2].iter().all(|r| !r.outcome.is_accepted()));
    assert_eq!(receiver.points().len(), 4);
    assert_eq!(metrics.points_exported.get(), 4);
    for reason in [
        DropReason::ExportFailed,
        DropReason::QueueFull,
        DropReason::Shutdown,
    ] {
        assert_eq!(dropped(&metrics, reason), 0, "{reason:?}");
    }
    Ok(())
}

#[tokio::test]
async fn grpc_unavailable_twice_is_retried_and_nothing_is_dropped() -> anyhow::Result<()> {
    delivered_after_retries(Protocol::Grpc, Fault::unavailable(None)).await
}

#[tokio::test]
async fn grpc_resource_exhausted_with_retry_info_is_retried() -> anyhow::Result<()> {
    delivered_after_retries(
        Protocol::Grpc,
        Fault::throttled(Some(Duration::from_millis(20))),
    )
    .await
}

#[tokio::test]
async fn http_503_with_retry_after_is_retried_and_nothing_is_dropped() -> anyhow::Result<()> {
    // Retry-After is in whole seconds: this test waits about two.
    delivered_after_retries(
        Protocol::Http,
        Fault::unavailable(Some(Duration::from_secs(1))),
    )
    .await
}

/// The receiver refuses the export for good; its points count as `export_failed`.
async fn refused_for_good(protocol: Protocol, fault: Fault) -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    receiver.inject(fault, 1);
    let (exporter, metrics) = start(&exporter_config(endpoint(&receiver, protocol), protocol))?;

    exporter.send(tagged(1, 3));
    exporter.shutdown().await;

    assert_eq!(
        receiver.requests().len(),
        1,
        "retried: {}",
        receiver.summary()
    );
    assert_eq!(dropped(&metrics, DropReason::ExportFailed), 3);
    assert_eq!(metrics.points_exported.get(), 0);
    Ok(())
}

#[tokio::test]
async fn grpc_invalid_argument_drops_the_batch_as_export_failed() -> anyhow::Result<()> {
    refused_for_good(Protocol::Grpc, Fault::bad_request()).await
}

#[tokio::test]
async fn grpc_resource_exhausted_without_retry_info_is_not_retried() -> anyhow::Result<()> {
    refused_for_good(Protocol::Grpc, Fault::throttled(None)).await
}

#[tokio::test]
async fn http_400_drops_the_batch_as_export_failed() -> anyhow::Result<()> {
    refused_for_good(Protocol::Http, Fault::bad_request()).await
}

async fn partial_success_counts_rejected(protocol: Protocol) -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    receiver.inject(Fault::partial_success(2), 1);
    let (exporter, metrics) = start(&exporter_config(endpoint(&receiver, protocol), protocol))?;

    exporter.send(tagged(1, 5));
    exporter.shutdown().await;

    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(dropped(&metrics, DropReason::Rejected), 2);
    assert_eq!(metrics.points_exported.get(), 3);
    Ok(())
}

#[tokio::test]
async fn grpc_partial_success_counts_the_rejected_points() -> anyhow::Result<()> {
    partial_success_counts_rejected(Protocol::Grpc).await
}

#[tokio::test]
async fn http_partial_success_counts_the_rejected_points() -> anyhow::Result<()> {
    partial_success_counts_rejected(Protocol::Http).await
}

/// Credentials rotated after start: the refused request is sent again with the new value.
async fn rotated_credentials(
    protocol: Protocol,
    code: tonic::Code,
    status: u16,
) -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("api-key");
    std::fs::write(&key, "old\n")?;
    let mut config = exporter_config(endpoint(&receiver, protocol), protocol);
    config
        .headers
        .insert("x-api-key".into(), ValueSource::File(key.clone()));
    let (exporter, metrics) = start(&config)?;

    std::fs::write(&key, "new\n")?;
    receiver.inject(
        Fault::Reject {
            code,
            http_status: status,
            retry_after: None,
        },
        1,
    );
    exporter.send(tagged(1, 2));
    exporter.shutdown().await;

    let keys: Vec<_> = receiver
        .requests()
        .iter()
        .map(|r| r.header("x-api-key").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(keys, ["old", "new"]);
    assert_eq!(metrics.points_exported.get(), 2);
    Ok(())
}

#[tokio::test]
async fn grpc_unauthenticated_rereads_rotated_headers_and_resends() -> anyhow::Result<()> {
    rotated_credentials(Protocol::Grpc, tonic::Code::Unauthenticated, 401).await
}

#[tokio::test]
async fn http_401_rereads_rotated_headers_and_resends() -> anyhow::Result<()> {
    rotated_credentials(Protocol::Http, tonic::Code::Unauthenticated, 401).await
}

/// With the receiver down, a tiny queue keeps only the newest batches; once a receiver
/// listens on the endpoint's port, they (and the one in flight) arrive.
///
/// Runs on a current-thread runtime so the sender only runs when the test awaits: which
/// batches are queued, in flight or evicted is then exact.
async fn newest_batches_survive_an_outage(protocol: Protocol) -> anyhow::Result<()> {
    init_tracing();
    let port = free_port(); // nothing listens here yet: connections are refused
    let mut config = exporter_config(format!("http://127.0.0.1:{port}"), protocol);
    config.queue.max_points = 10;
    let (exporter, metrics) = start(&config)?;

    // 1..=10, five points each: only 9 and 10 fit.
    for seq in 1..=10 {
        exporter.send(tagged(seq, 5));
    }
    assert_eq!(dropped(&metrics, DropReason::QueueFull), 40);

    // The sender takes 9 and 10 and fails; then 11..=13 arrive and 11 is evicted.
    eventually("a failed attempt", || {
        metrics
            .export_requests
            .get_or_create(&retryable_label())
            .get()
            > 0
    })
    .await?;
    for seq in 11..=13 {
        exporter.send(tagged(seq, 5));
    }
    assert_eq!(dropped(&metrics, DropReason::QueueFull), 45);

    let opts = match protocol {
        Protocol::Grpc => OtlpOptions {
            grpc_port: Some(port),
            ..Default::default()
        },
        Protocol::Http => OtlpOptions {
            http_port: Some(port),
            ..Default::default()
        },
    };
    let receiver = OtlpReceiver::start(opts).await?;
    let points = receiver
        .wait_for_points(|p| p.len() >= 20, PATIENCE)
        .await?;
    exporter.shutdown().await;

    let mut seqs: Vec<_> = points.iter().filter_map(|p| p.attr("seq")).collect();
    seqs.sort_by_key(|s| s.parse::<i64>().unwrap_or_default());
    seqs.dedup();
    assert_eq!(seqs, ["9", "10", "12", "13"]);
    assert_eq!(metrics.points_exported.get(), 20);
    assert_eq!(dropped(&metrics, DropReason::ExportFailed), 0);
    Ok(())
}

fn retryable_label() -> dbcollector_worker::telemetry::ResultLabel {
    dbcollector_worker::telemetry::ResultLabel {
        result: "retryable",
    }
}

#[tokio::test(flavor = "current_thread")]
async fn grpc_outage_drops_the_oldest_batches_and_delivers_the_newest_when_back(
) -> anyhow::Result<()> {
    newest_batches_survive_an_outage(Protocol::Grpc).await
}

#[tokio::test(flavor = "current_thread")]
async fn http_outage_drops_the_oldest_batches_and_delivers_the_newest_when_back(
) -> anyhow::Result<()> {
    newest_batches_survive_an_outage(Protocol::Http).await
}

#[tokio::test]
async fn shutdown_flushes_what_is_queued_before_returning() -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    // A slow first answer keeps the rest queued when shutdown begins.
    receiver.inject(Fault::delay(Duration::from_millis(200)), 1);
    let mut config = exporter_config(receiver.http_endpoint(), Protocol::Http);
    config.queue.concurrency = 2;
    let (exporter, metrics) = start(&config)?;

    for seq in 1..=20 {
        exporter.send(tagged(seq, 300));
    }
    exporter.shutdown().await;

    assert_eq!(receiver.points().len(), 6000);
    assert_eq!(metrics.points_exported.get(), 6000);
    assert_eq!(dropped(&metrics, DropReason::Shutdown), 0);
    assert_eq!(metrics.queue_points.get(), 0);
    Ok(())
}

#[tokio::test]
async fn shutdown_deadline_counts_undelivered_points_as_shutdown() -> anyhow::Result<()> {
    init_tracing();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    receiver.inject(Fault::delay(Duration::from_secs(600)), usize::MAX);
    let mut config = exporter_config(receiver.grpc_endpoint(), Protocol::Grpc);
    config.timeout = Duration::from_secs(600);
    config.queue.shutdown_timeout = Duration::from_millis(300);
    let (exporter, metrics) = start(&config)?;

    exporter.send(tagged(1, 4));
    receiver.wait_for(|r| !r.is_empty(), PATIENCE).await?; // in flight, unanswered
    exporter.send(tagged(2, 6));
    exporter.shutdown().await;

    assert_eq!(dropped(&metrics, DropReason::Shutdown), 10);
    assert_eq!(metrics.points_exported.get(), 0);
    Ok(())
}
