//! The processing pool between the scheduler and the exporter.
//!
//! Scrapes arrive on one bounded channel (a full channel makes scrapes wait: back-pressure,
//! never a drop); a pool of tasks, one per core by default, turns statement statistics
//! into points through the statements processor (top N, adaptive sampling, aggregate),
//! cuts the points into batches at the size cap and hands them to the exporter. A
//! scrape's last batch is flushed as soon as it is cut, so batching adds no delay.

use std::sync::Arc;

use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

use crate::exporter::ExporterHandle;
use crate::metrics::Batch;
use crate::processors::batcher;
use crate::processors::statements::Statements;
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
    let mut points = scrape.points;
    if let Some(set) = scrape.statements {
        statements.process(&scrape.target, &settings, set, &mut points);
    }
    metrics.points_received.inc_by(points.len() as u64);
    let batch = Batch {
        target: scrape.target,
        resource: scrape.resource,
        points,
        read_at: scrape.read_at,
    };
    for part in batcher::split(batch, max_points) {
        exporter.send(part);
    }
}
