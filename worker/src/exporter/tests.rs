//! Sender, queue and header behaviour against a scripted transport, on tokio's paused clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message as _;

use super::*;
use crate::attrs;
use crate::metrics::{Descriptor, Point, Resource, Value};
use crate::telemetry::DropLabel;

static COMMITS: Descriptor = Descriptor::counter("postgresql.commits", "{commit}", "Commits.");

/// What the scripted receiver answers to one attempt.
enum Reply {
    Accept {
        rejected: u64,
        message: &'static str,
    },
    Fail {
        class: Class,
        retry_after: Option<Duration>,
    },
    /// Never answers (a receiver that accepted the connection and went silent).
    Hang,
}

#[derive(Debug)]
struct Call {
    points: usize,
    headers: HeaderMap,
    at: Instant,
}

/// Answers from a script, then accepts everything.
#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    calls: Mutex<Vec<Call>>,
}

#[derive(Clone)]
struct Fake(Arc<Script>);

impl Fake {
    fn new(replies: impl IntoIterator<Item = Reply>) -> Self {
        Self(Arc::new(Script {
            replies: Mutex::new(replies.into_iter().collect()),
            calls: Mutex::default(),
        }))
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Vec<Call>> {
        self.0.calls.lock().unwrap()
    }

    async fn wait_for_calls(&self, n: usize) {
        while self.calls().len() < n {
            tokio::task::yield_now().await;
        }
    }
}

impl Transport for Fake {
    type Prepared = ExportMetricsServiceRequest;

    fn prepare(&self, request: Vec<u8>) -> Self::Prepared {
        ExportMetricsServiceRequest::decode(request.as_slice())
            .expect("the exporter's bytes decode")
    }

    async fn export(
        &self,
        request: &ExportMetricsServiceRequest,
        headers: &HeaderMap,
    ) -> Result<Accepted, Failure> {
        let points = request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) => {
                    s.data_points.len()
                }
                _ => 0,
            })
            .sum();
        self.calls().push(Call {
            points,
            headers: headers.clone(),
            at: Instant::now(),
        });
        let reply = self.0.replies.lock().unwrap().pop_front();
        match reply {
            None => Ok(Accepted::default()),
            Some(Reply::Accept { rejected, message }) => Ok(Accepted {
                rejected,
                message: message.to_owned(),
            }),
            Some(Reply::Fail { class, retry_after }) => Err(Failure {
                class,
                retry_after,
                error: SendError::Grpc {
                    code: tonic::Code::Unavailable,
                    message: "test".into(),
                },
            }),
            Some(Reply::Hang) => std::future::pending().await,
        }
    }
}

fn config() -> config::Exporter {
    config::Exporter {
        endpoint: "http://127.0.0.1:4317".into(),
        protocol: config::Protocol::Grpc,
        tls: config::ExporterTls::default(),
        headers: BTreeMap::new(),
        compression: config::Compression::Gzip,
        timeout: Duration::from_secs(1),
        retry: config::Retry {
            enabled: true,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(10),
        },
        queue: config::Queue {
            max_points: 1000,
            concurrency: 1,
            shutdown_timeout: Duration::from_secs(60),
        },
    }
}

fn start(fake: &Fake, config: &config::Exporter) -> (ExporterHandle, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::unregistered());
    let headers = Headers::load(config, "worker-0").unwrap();
    (
        launch(fake.clone(), headers, config, metrics.clone()),
        metrics,
    )
}

fn batch(n: usize) -> Batch {
    let resource = Arc::new(Resource {
        attrs: attrs!("db.system.name" => "postgresql"),
    });
    let mut b = Batch::new("t".into(), resource);
    b.points = (0..n)
        .map(|i| Point {
            desc: &COMMITS,
            attrs: attrs!("n" => i as i64),
            value: Value::Int(1),
            start_unix_nanos: 1,
            time_unix_nanos: 2,
        })
        .collect();
    b
}

fn dropped(metrics: &Metrics, reason: DropReason) -> u64 {
    metrics
        .points_dropped
        .get_or_create(&DropLabel { reason })
        .get()
}

fn requests(metrics: &Metrics, result: &'static str) -> u64 {
    metrics
        .export_requests
        .get_or_create(&ResultLabel { result })
        .get()
}

fn retryable(retry_after: Option<Duration>) -> Reply {
    Reply::Fail {
        class: Class::Retryable,
        retry_after,
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_until_accepted_and_nothing_is_dropped() {
    let fake = Fake::new([retryable(None), retryable(None)]);
    let (exporter, metrics) = start(&fake, &config());
    exporter.send(batch(5));
    exporter.shutdown().await;

    assert_eq!(fake.calls().len(), 3);
    assert_eq!(metrics.points_exported.get(), 5);
    assert_eq!(requests(&metrics, "retryable"), 2);
    assert_eq!(requests(&metrics, "success"), 1);
    for reason in [
        DropReason::ExportFailed,
        DropReason::QueueFull,
        DropReason::Shutdown,
    ] {
        assert_eq!(dropped(&metrics, reason), 0, "{reason:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_server_retry_hint_longer_than_the_backoff_is_waited_for() {
    let fake = Fake::new([retryable(Some(Duration::from_secs(7)))]);
    let (exporter, metrics) = start(&fake, &config());
    exporter.send(batch(1));
    exporter.shutdown().await;

    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    // max_backoff is 1s: only the hint explains the wait.
    assert!(calls[1].at - calls[0].at >= Duration::from_secs(7));
    assert_eq!(metrics.points_exported.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_max_elapsed_and_the_points_count_as_export_failed() {
    let fake = Fake::new((0..1000).map(|_| retryable(None)));
    let mut config = config();
    config.retry.max_elapsed = Duration::from_secs(3);
    let (exporter, metrics) = start(&fake, &config);
    exporter.send(batch(4));
    exporter.shutdown().await;

    let calls = fake.calls();
    assert!(calls.len() > 2, "retried {} times", calls.len());
    assert!(calls[calls.len() - 1].at - calls[0].at <= Duration::from_secs(3));
    assert_eq!(dropped(&metrics, DropReason::ExportFailed), 4);
    assert_eq!(metrics.points_exported.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn disabled_retry_drops_a_retryable_failure_after_one_attempt() {
    let fake = Fake::new([retryable(None)]);
    let mut config = config();
    config.retry.enabled = false;
    let (exporter, metrics) = start(&fake, &config);
    exporter.send(batch(2));
    exporter.shutdown().await;

    assert_eq!(fake.calls().len(), 1);
    assert_eq!(dropped(&metrics, DropReason::ExportFailed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_drops_the_request_at_once() {
    let fake = Fake::new([Reply::Fail {
        class: Class::Permanent,
        retry_after: None,
    }]);
    let (exporter, metrics) = start(&fake, &config());
    exporter.send(batch(3));
    exporter.send(batch(2));
    exporter.shutdown().await;

    // Both batches went in one request, refused once.
    assert_eq!(fake.calls().len(), 1);
    assert_eq!(dropped(&metrics, DropReason::ExportFailed), 5);
    assert_eq!(requests(&metrics, "permanent"), 1);
}

#[tokio::test(start_paused = true)]
async fn partial_success_counts_the_rejected_points_apart_from_the_exported() {
    let fake = Fake::new([Reply::Accept {
        rejected: 2,
        message: "bad unit",
    }]);
    let (exporter, metrics) = start(&fake, &config());
    exporter.send(batch(5));
    exporter.shutdown().await;

    assert_eq!(metrics.points_exported.get(), 3);
    assert_eq!(dropped(&metrics, DropReason::Rejected), 2);
}

#[tokio::test(start_paused = true)]
async fn small_batches_are_coalesced_into_one_request() {
    let fake = Fake::new([]);
    let (exporter, metrics) = start(&fake, &config());
    for _ in 0..3 {
        exporter.send(batch(3));
    }
    exporter.shutdown().await;

    let calls = fake.calls();
    assert_eq!(calls.iter().map(|c| c.points).collect::<Vec<_>>(), [9]);
    assert_eq!(metrics.points_exported.get(), 9);
    assert_eq!(metrics.queue_points.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn every_request_names_the_worker_and_carries_the_configured_headers() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "s3cret\n").unwrap();
    let mut config = config();
    config
        .headers
        .insert("x-api-key".into(), ValueSource::File(key));

    let fake = Fake::new([]);
    let metrics = Arc::new(Metrics::unregistered());
    let headers = Headers::load(&config, "worker-7").unwrap();
    let exporter = launch(fake.clone(), headers, &config, metrics);
    exporter.send(batch(1));
    exporter.shutdown().await;

    let calls = fake.calls();
    assert_eq!(calls[0].headers.get(WORKER_HEADER).unwrap(), "worker-7");
    assert_eq!(calls[0].headers.get("x-api-key").unwrap(), "s3cret");
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_are_read_again_and_the_request_retried_when_they_changed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "old").unwrap();
    let mut config = config();
    config
        .headers
        .insert("x-api-key".into(), ValueSource::File(key.clone()));

    let fake = Fake::new([Reply::Fail {
        class: Class::Auth,
        retry_after: None,
    }]);
    let (exporter, metrics) = start(&fake, &config);
    std::fs::write(&key, "new").unwrap(); // rotated after start
    exporter.send(batch(2));
    exporter.shutdown().await;

    let sent: Vec<_> = fake
        .calls()
        .iter()
        .map(|c| c.headers["x-api-key"].clone())
        .collect();
    assert_eq!(sent, ["old", "new"]);
    assert_eq!(metrics.points_exported.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_that_did_not_change_drop_the_request() {
    let fake = Fake::new([Reply::Fail {
        class: Class::Auth,
        retry_after: None,
    }]);
    let (exporter, metrics) = start(&fake, &config());
    exporter.send(batch(2));
    exporter.shutdown().await;

    assert_eq!(fake.calls().len(), 1);
    assert_eq!(dropped(&metrics, DropReason::ExportFailed), 2);
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_counts_in_flight_and_queued_points_as_shutdown() {
    let fake = Fake::new([Reply::Hang]);
    let mut config = config();
    config.queue.shutdown_timeout = Duration::from_secs(2);
    let (exporter, metrics) = start(&fake, &config);
    exporter.send(batch(5));
    fake.wait_for_calls(1).await; // the sender holds these 5 points now
    exporter.send(batch(3));
    exporter.shutdown().await;

    assert_eq!(dropped(&metrics, DropReason::Shutdown), 8);
    assert_eq!(metrics.points_exported.get(), 0);
    assert_eq!(metrics.queue_points.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_deadline_stops_a_sender_waiting_to_retry() {
    let fake = Fake::new((0..1000).map(|_| retryable(Some(Duration::from_secs(30)))));
    let mut config = config();
    config.retry.max_elapsed = Duration::from_secs(600);
    config.queue.shutdown_timeout = Duration::from_secs(1);
    let (exporter, metrics) = start(&fake, &config);
    exporter.send(batch(4));
    fake.wait_for_calls(1).await;
    exporter.shutdown().await;

    assert_eq!(fake.calls().len(), 1);
    assert_eq!(dropped(&metrics, DropReason::Shutdown), 4);
    assert_eq!(dropped(&metrics, DropReason::ExportFailed), 0);
}

#[tokio::test(start_paused = true)]
async fn batches_sent_after_shutdown_are_counted_as_shutdown() {
    let fake = Fake::new([]);
    let (exporter, metrics) = start(&fake, &config());
    let late = exporter.clone();
    exporter.shutdown().await;
    late.send(batch(6));

    assert_eq!(dropped(&metrics, DropReason::Shutdown), 6);
    assert!(fake.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_lets_the_senders_export_the_queue_and_stop() {
    let fake = Fake::new([]);
    let (exporter, metrics) = start(&fake, &config());
    exporter.send(batch(3));
    drop(exporter);
    fake.wait_for_calls(1).await;
    // The sender's last step after the call; let it run.
    tokio::task::yield_now().await;

    assert_eq!(metrics.points_exported.get(), 3);
    assert_eq!(
        Arc::strong_count(&fake.0),
        1,
        "a sender still holds the transport"
    );
}

#[test]
fn a_configured_header_cannot_replace_the_worker_header() {
    let dir = tempfile::tempdir().unwrap();
    let fake_id = dir.path().join("id");
    std::fs::write(&fake_id, "someone-else").unwrap();
    let mut config = config();
    config
        .headers
        .insert(WORKER_HEADER.into(), ValueSource::File(fake_id));
    let headers = Headers::load(&config, "worker-1").unwrap().current();
    assert_eq!(
        headers.get_all(WORKER_HEADER).iter().collect::<Vec<_>>(),
        ["worker-1"]
    );
}

#[test]
fn an_unreadable_header_source_names_the_header_not_the_value() {
    let mut config = config();
    config.headers.insert(
        "authorization".into(),
        ValueSource::Env("DBCOLLECTOR_TEST_UNSET_HEADER".into()),
    );
    let err = Headers::load(&config, "w").unwrap_err();
    assert_eq!(
        err.to_string(),
        "exporter.headers.authorization: reading the value"
    );
}

#[test]
fn starting_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Exporter::start(&config(), "w", Arc::new(Metrics::unregistered())).unwrap_err();
    assert!(matches!(err, Error::NoRuntime));
}

#[tokio::test]
async fn a_missing_ca_file_fails_start_naming_the_field() {
    let mut config = config();
    config.endpoint = "https://127.0.0.1:4317".into();
    config.tls.ca_file = Some("/nonexistent/ca.pem".into());
    let err = Exporter::start(&config, "w", Arc::new(Metrics::unregistered())).unwrap_err();
    assert_eq!(
        err.to_string(),
        "exporter.tls.ca_file: reading /nonexistent/ca.pem"
    );
}

#[test]
fn logged_endpoint_keeps_scheme_host_port_and_path_only() {
    assert_eq!(
        loggable_endpoint("http://127.0.0.1:4318/otlp/?token=x"),
        "http://127.0.0.1:4318/otlp"
    );
    assert_eq!(
        loggable_endpoint("https://collector:4317"),
        "https://collector:4317"
    );
}
