//! Criterion settings shared by every bench target, and the exporter seam.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use dbcollector_worker::config;
use dbcollector_worker::exporter::{Exporter, ExporterHandle, GZIP_LEVEL};
use dbcollector_worker::telemetry::Metrics;

/// Criterion with short warm-up and measurement times and ten samples, so every target
/// finishes within a minute or two on two cores; command-line flags (`--quick`,
/// `--sample-size`, `--measurement-time`, a filter) still override.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(10)
        .without_plots()
        .configure_from_args()
}

/// The runtime-thread counts of the concurrent benches: 1, 2 and twice the cores.
pub fn thread_counts() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut counts = vec![1, 2, cores * 2];
    counts.dedup();
    counts
}

/// An exporter whose batches go nowhere: its receiver is a loopback listener that never
/// accepts, so the single sender waits on its first request for an hour, while
/// [`ExporterHandle::send`] does all its work (latency histogram, queue push, eviction of
/// the oldest batches). The queue is filled to `max_points` before it is handed out, so
/// from the first measured send on, every send frees as many old points as it queues:
/// the steady state, where a scrape's points are released once. Keep the listener alive
/// as long as the handle. Must be called inside a tokio runtime.
///
/// # Panics
/// When the loopback port cannot be bound or the exporter refuses the config (bench
/// setup, not a measured path).
pub fn idle_exporter(max_points: u64, metrics: Arc<Metrics>) -> (ExporterHandle, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = listener.local_addr().expect("local address").port();
    let yaml = format!(
        "endpoint: http://127.0.0.1:{port}\n\
         protocol: http/protobuf\n\
         compression: none\n\
         timeout: 1h\n\
         retry: {{ initial_backoff: 1h, max_backoff: 1h, max_elapsed: 10h }}\n\
         queue: {{ max_points: {max_points}, concurrency: 1, shutdown_timeout: 1s }}\n"
    );
    let config: config::Exporter = serde_yaml_ng::from_str(&yaml).expect("exporter config");
    let handle = Exporter::start(&config, "bench", metrics).expect("exporter start");
    let filler = crate::fixtures::batch(crate::fixtures::Engine::Postgres, 1_000);
    while handle.queued_points() + 1_000 <= max_points {
        handle.send(filler.clone());
    }
    (handle, listener)
}

/// Gzip at the exporter's level, as the HTTP exporter compresses a request body.
///
/// # Panics
/// Never in practice: writing into memory does not fail.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_level(data, flate2::Compression::new(GZIP_LEVEL))
}

/// Gzip at the default level 6, as tonic compresses a gRPC message.
///
/// # Panics
/// Never in practice: writing into memory does not fail.
pub fn gzip_grpc(data: &[u8]) -> Vec<u8> {
    gzip_level(data, flate2::Compression::default())
}

/// Gzip at `level`, to compare with the exporter's default level.
///
/// # Panics
/// Never in practice: writing into memory does not fail.
pub fn gzip_level(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 4), level);
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}
