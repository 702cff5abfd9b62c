//! The processing pool between the scheduler and the exporter.
//!
//! Scrapes arrive on one bounded channel (a full channel makes scrapes wait: back-pressure,
//! never a drop); a pool of tasks, one per core by default, turns statement statistics
//! into points through the statements processor (top N, adaptive sampling, aggregate),
//! cuts the points into batches at the size cap and hands them to the exporter. A
//! scrape's points read as they are go out before its statements are ranked, and a
//! scrape's last batch is flushed as soon as it is cut, so batching adds no delay.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

use crate::exporter::ExporterHandle;
use crate::metrics::{Batch, Points, Resource};
use crate::processors::batcher;
use crate::processors::statements::Statements;
use crate::receivers::Scrape;
use crate::scheduler::Job;
use crate::telemetry::Metrics;

/// Default capacity of the scrape channel.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 256;

/// The running pool.
#[derive(Debug)]
pub struct Pool {
    tasks: JoinSet<()>,
}

impl Pool {
    /// Starts `workers` tasks (0: one per core) reading `jobs`.
    pub fn start(
        workers: usize,
        jobs: mpsc::Receiver<Job>,
        statements: Arc<Statements>,
        exporter: ExporterHandle,
        max_points: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let workers = if workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            workers
        };
        let jobs = Arc::new(Mutex::new(jobs));
        let mut tasks = JoinSet::new();
        for _ in 0..workers {
            let (jobs, statements, exporter, metrics) = (
                jobs.clone(),
                statements.clone(),
                exporter.clone(),
                metrics.clone(),
            );
            tasks.spawn(async move {
                loop {
                    // The lock is held only while waiting for the next job.
                    let Some(job) = jobs.lock().await.recv().await else {
                        break;
                    };
                    process(job, &statements, &exporter, max_points, &metrics);
                }
            });
        }
        Self { tasks }
    }

    /// Waits until every task has drained the channel (its senders are gone).
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Turns one scrape into batches and hands them to the exporter.
pub fn process(
    job: Job,
    statements: &Statements,
    exporter: &ExporterHandle,
    max_points: usize,
    metrics: &Metrics,
) {
    let Job {
        scrape,
        statements: settings,
    } = job;
    let Scrape {
        target,
        resource,
        points,
        statements: set,
        read_at,
    } = scrape;
    let hand_over = |points: Points| {
        metrics.points_received.inc_by(points.len() as u64);
        for batch in batches(points, &target, &resource, read_at, max_points) {
            exporter.send(batch);
        }
    };
    // The points read as they are leave first, so ranking the statements holds none of
    // them back.
    hand_over(points);
    if let Some(set) = set {
        let mut points = Points::new();
        statements.process(&target, &settings, set, &mut points);
        hand_over(points);
    }
}

/// The export batches of `points`, in order: one per buffer, cut further only when
/// `max_points` is below [`Points::CHUNK`].
pub fn batches<'a>(
    points: Points,
    target: &'a Arc<str>,
    resource: &'a Arc<Resource>,
    read_at: Instant,
    max_points: usize,
) -> impl Iterator<Item = Batch> + 'a {
    points.into_chunks().into_iter().flat_map(move |chunk| {
        let batch = Batch {
            target: target.clone(),
            resource: resource.clone(),
            points: chunk,
            read_at,
        };
        batcher::split(batch, max_points)
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::config;
    use crate::exporter::Exporter;
    use crate::metrics::{Descriptor, Point, Resource, Value};

    static GAUGE: Descriptor = Descriptor::gauge("g", "1", "");

    /// An exporter whose receiver is a loopback listener that never accepts: sends only
    /// queue. Keep the listener alive as long as the handle.
    fn idle_exporter(metrics: Arc<Metrics>) -> (ExporterHandle, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let yaml =
            format!("endpoint: http://127.0.0.1:{port}\nprotocol: http/protobuf\ntimeout: 1h\n");
        let config: config::Exporter = serde_yaml_ng::from_str(&yaml).unwrap();
        (Exporter::start(&config, "test", metrics).unwrap(), listener)
    }

    fn job(points: usize, read_at: Instant) -> Job {
        let resource = Arc::new(Resource {
            attrs: crate::attrs!["server.address" => "h"],
        });
        let points = (0..points)
            .map(|i| Point {
                desc: &GAUGE,
                attrs: crate::attrs![],
                value: Value::Int(i as i64),
                start_unix_nanos: 0,
                time_unix_nanos: 1,
            })
            .collect();
        Job {
            scrape: Scrape {
                target: Arc::from("t"),
                resource,
                points,
                statements: None,
                read_at,
            },
            statements: Arc::new(config::Statements::default()),
        }
    }

    #[tokio::test]
    async fn every_batch_handed_over_records_its_latency_since_the_rows_were_read() {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let (exporter, _listener) = idle_exporter(metrics.clone());
        let statements = Statements::new(&config::Sampler::default(), metrics.clone());

        // Rows read 3 ms ago, cut into three batches: three observations, none under 3 ms.
        let read_at = Instant::now() - Duration::from_millis(3);
        process(job(25, read_at), &statements, &exporter, 10, &metrics);

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                .to_owned()
        };
        assert_eq!(
            line("dbcollector_pipeline_latency_seconds_count"),
            "dbcollector_pipeline_latency_seconds_count 3"
        );
        assert_eq!(
            line("dbcollector_pipeline_latency_seconds_bucket{le=\"0.002\"}"),
            "dbcollector_pipeline_latency_seconds_bucket{le=\"0.002\"} 0"
        );
        let sum: f64 = line("dbcollector_pipeline_latency_seconds_sum")
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(sum >= 0.009, "{sum}");
    }
}
