//! The memory run: the worker (default configuration) on PostgreSQL while a generator
//! issues statements whose normalized forms all differ, so the server keeps evicting
//! pg_stat_statements entries and every scrape brings thousands of statement keys the
//! worker has not seen. Its resident memory is read every 250 ms and the highest value of
//! each 10 s is kept: every scrape raises memory for a moment, so single readings 10 s apart
//! would land at random points of that cycle, whereas the peaks show whether what the
//! worker needs grows. From minute 2 on they should stay flat.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::estate::Estate;
use super::measure::Server;
use super::ours::{Setup, Worker};
use super::prom;
use super::sink::Sink;

/// The length of a window whose highest resident memory is kept.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// How often resident memory is read within a window.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// From when on memory should be flat.
pub const SETTLED_AFTER: Duration = Duration::from_secs(120);

/// Allowed deviation from the first settled sample.
pub const FLAT_WITHIN: f64 = 0.05;

/// What the memory run saw.
#[derive(Clone, Debug, Default)]
pub struct Churn {
    /// `(seconds since start, the highest resident bytes in the [`SAMPLE_EVERY`] before)`;
    /// the first entry is the reading at the start.
    pub rss: Vec<(f64, u64)>,
    /// Statements the generator issued.
    pub issued: u64,
    /// How many of them were distinct: the generator cycles through
    /// [`churn_forms`] normalized forms.
    pub distinct: u64,
    /// Run length, seconds.
    pub duration_s: f64,
    /// Statement keys the worker's cache held at the end.
    pub keys_at_end: f64,
    /// Points the sink received.
    pub points: u64,
}

impl Churn {
    /// The largest relative deviation of the samples from [`SETTLED_AFTER`] on from the
    /// first of them; `None` when the run has fewer than two such samples.
    pub fn settled_deviation(&self) -> Option<f64> {
        let settled: Vec<u64> = self
            .rss
            .iter()
            .filter(|(t, _)| *t >= SETTLED_AFTER.as_secs_f64())
            .map(|(_, rss)| *rss)
            .collect();
        if settled.len() < 2 {
            return None;
        }
        let base = settled[0] as f64;
        settled
            .iter()
            .map(|&r| (r as f64 - base).abs() / base)
            .reduce(f64::max)
    }
}

/// Distinct normalized forms of the churn generator with `tables` tables (see
/// `estate::churn_statement`).
pub fn churn_forms(tables: usize) -> u64 {
    tables as u64 * 155 * 6
}

/// Runs the churn for `duration` at about `rate` statements per second.
///
/// # Errors
/// When the worker or the generator cannot start, or the worker exits.
pub async fn run(
    binary: &Path,
    estate: &Estate,
    sink: &Sink,
    dir: &Path,
    setup: &Setup,
    duration: Duration,
    rate: u64,
) -> anyhow::Result<Churn> {
    debug_assert_eq!(setup.servers, [Server::Postgres]);
    let stop = Arc::new(AtomicBool::new(false));
    let (issued, tasks) = estate.churn(rate, 2, stop.clone()).await?;
    let result = measure(binary, estate, sink, dir, setup, duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let mut churn = result?;
    churn.issued = issued.load(Ordering::Relaxed);
    churn.distinct = churn.issued.min(churn_forms(estate.size.tables));
    Ok(churn)
}

async fn measure(
    binary: &Path,
    estate: &Estate,
    sink: &Sink,
    dir: &Path,
    setup: &Setup,
    duration: Duration,
) -> anyhow::Result<Churn> {
    let mut worker = Worker::start(binary, setup, estate, sink, dir).await?;
    sink.take();
    let started = Instant::now();
    let mut churn = Churn::default();
    churn.rss.push((0.0, worker.child().usage()?.rss));
    let mut window_end = started + SAMPLE_EVERY;
    let mut peak = 0;
    while window_end <= started + duration {
        tokio::time::sleep(POLL_EVERY).await;
        worker.child().check_running()?;
        peak = peak.max(worker.child().usage()?.rss);
        if Instant::now() >= window_end {
            let t = (window_end - started).as_secs_f64();
            churn.rss.push((t, peak));
            tracing::info!(
                t_s = t,
                peak_rss_mb = peak as f64 / 1e6,
                "churn: worker memory"
            );
            window_end += SAMPLE_EVERY;
            peak = 0;
        }
    }
    churn.duration_s = started.elapsed().as_secs_f64();
    churn.keys_at_end = prom::sum(&worker.metrics().await?, "dbcollector_sampler_keys", &[]);
    churn.points = sink.take().total();
    worker.stop().await;
    Ok(churn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_judged_from_minute_two_on() {
        let churn = Churn {
            // Growth before minute 2 does not count; then 100 → 104 → 98.
            rss: vec![
                (0.0, 10),
                (60.0, 50),
                (120.0, 100),
                (130.0, 104),
                (140.0, 98),
            ],
            ..Churn::default()
        };
        let dev = churn.settled_deviation().unwrap();
        assert!((dev - 0.04).abs() < 1e-9, "{dev}");
        let short = Churn {
            rss: vec![(0.0, 10), (60.0, 50)],
            ..Churn::default()
        };
        assert_eq!(short.settled_deviation(), None);
        // One sample from minute 2 on compares with nothing.
        let one = Churn {
            rss: vec![(0.0, 10), (60.0, 50), (120.0, 100)],
            ..Churn::default()
        };
        assert_eq!(one.settled_deviation(), None);
    }
}
