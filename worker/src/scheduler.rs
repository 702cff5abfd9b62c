//! Runs each target on its own non-blocking interval.
//!
//! One task per target: a slow or dead target never delays another. A scrape that
//! outlasts its interval makes the following ticks skip (counted), never stack. The
//! circuit breaker decides whether a tick scrapes; every tick exports the target's `up`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config;
use crate::metrics::{self, Descriptor, PointSink, Points, Resource, Value};
use crate::processors::breaker::{Breakers, Decision};
use crate::receivers::{Scrape, ScrapeError, TargetSpec};
use crate::telemetry::{ErrorLabels, Metrics};

/// `1` when the target's last scrape read its database, `0` when it failed or was not
/// attempted (breaker open).
pub static UP: Descriptor = Descriptor::gauge(
    "dbcollector.up",
    "1",
    "Whether the last scrape of the target succeeded (1) or not (0).",
);

/// A future a collector returns; boxed so engines can share one scheduler.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the scheduler needs from an engine's collector.
pub trait Collect: Send {
    /// One scrape.
    fn scrape(&mut self) -> BoxFuture<'_, Result<Scrape, ScrapeError>>;
    /// Closes the collector's connections.
    fn close(&mut self) -> BoxFuture<'_, ()>;
}

/// A scrape on its way to processing, with the settings processing needs.
#[derive(Debug)]
pub struct Job {
    /// What was read.
    pub scrape: Scrape,
    /// The target's statement settings.
    pub statements: Arc<config::Statements>,
}

/// Everything a target task shares with the others.
#[derive(Clone)]
pub struct Shared {
    /// Per-target breakers.
    pub breakers: Arc<Breakers>,
    /// Self-metrics.
    pub metrics: Arc<Metrics>,
    /// The channel to processing.
    pub jobs: mpsc::Sender<Job>,
}

/// Runs one target until `cancel` fires; an in-flight scrape finishes first.
pub async fn run_target(
    spec: Arc<TargetSpec>,
    mut collector: Box<dyn Collect>,
    shared: Shared,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("target", target = %spec.name);
    async move {
        info!(server = %spec.server(), interval = ?spec.interval, "collector started");
        let label = Metrics::target(&spec.name);
        let statements = Arc::new(spec.statements.clone());
        let mut resource = Arc::new(crate::receivers::resource(&spec, default_system(&spec)));
        let mut next = Instant::now() + stagger(&spec.name, spec.interval);
        // Failures are logged at warn when the target goes down, then at debug.
        let mut was_up = true;

        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep_until(next) => {}
            }

            let started = Instant::now();
            let decision = shared.breakers.decide(&spec.name, spec.interval, started);
            let (up, scrape) = if decision == Decision::Reject {
                shared
                    .metrics
                    .scrapes_short_circuited
                    .get_or_create(&label)
                    .inc();
                (false, None)
            } else {
                shared.metrics.scrapes.get_or_create(&label).inc();
                let result = tokio::time::timeout(scrape_deadline(&spec), collector.scrape()).await;
                let elapsed = started.elapsed();
                shared
                    .metrics
                    .scrape_duration
                    .get_or_create(&label)
                    .observe(elapsed.as_secs_f64());
                match result {
                    Ok(Ok(scrape)) => (true, Some(scrape)),
                    Ok(Err(e)) => {
                        count_error(&shared.metrics, &spec.name, e.kind.as_str());
                        log_failure(&e, was_up);
                        (false, None)
                    }
                    Err(_) => {
                        count_error(&shared.metrics, &spec.name, "timeout");
                        if was_up {
                            warn!(deadline = ?scrape_deadline(&spec), "scrape deadline passed");
                        }
                        (false, None)
                    }
                }
            };
            if decision != Decision::Reject {
                shared
                    .breakers
                    .record(&spec.name, spec.interval, up, Instant::now());
                if up && !was_up {
                    info!("target is up again");
                }
                was_up = up;
            }
            shared.metrics.up.get_or_create(&label).set(i64::from(up));

            if let Some(s) = &scrape {
                resource = s.resource.clone();
            }
            let job = job_with_up(&spec, scrape, resource.clone(), up, statements.clone());
            tokio::select! {
                () = cancel.cancelled() => break,
                sent = shared.jobs.send(job) => if sent.is_err() { break },
            }

            next = next_tick(next, spec.interval, Instant::now(), |skipped| {
                shared
                    .metrics
                    .scrapes_skipped
                    .get_or_create(&label)
                    .inc_by(skipped);
                debug!(skipped, "scrape outlasted its interval; ticks skipped");
            });
        }

        collector.close().await;
        shared.breakers.forget(&spec.name);
        shared.metrics.forget_target(&spec.name);
        info!("collector stopped");
    }
    .instrument(span)
    .await;
}

fn default_system(spec: &TargetSpec) -> &'static str {
    match spec.engine {
        config::Engine::Postgresql => "postgresql",
        config::Engine::Mysql => "mysql",
    }
}

/// The longest a scrape may run before it is abandoned: two intervals plus a connect
/// deadline. Longer than the interval on purpose, so a slow scrape shows up as skipped
/// ticks rather than being cut at every interval.
pub fn scrape_deadline(spec: &TargetSpec) -> Duration {
    spec.interval * 2 + spec.connect_timeout
}

/// Spreads targets over their interval so they do not all scrape at the same instant;
/// deterministic per name.
fn stagger(name: &str, interval: Duration) -> Duration {
    let hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
    let millis = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(hash % millis)
}

/// The tick after `previous`; ticks already past are skipped and reported.
fn next_tick(
    previous: Instant,
    interval: Duration,
    now: Instant,
    on_skip: impl FnOnce(u64),
) -> Instant {
    let next = previous + interval;
    if now <= next {
        return next;
    }
    let behind = now - next;
    let skipped = (behind.as_nanos() / interval.as_nanos().max(1)) as u64 + 1;
    on_skip(skipped);
    next + interval * u32::try_from(skipped).unwrap_or(u32::MAX)
}

fn count_error(metrics: &Metrics, target: &str, kind: &'static str) {
    metrics
        .scrape_errors
        .get_or_create(&ErrorLabels {
            target: target.to_owned(),
            kind,
        })
        .inc();
}

/// A failure is logged at warn when the target goes down; repeats stay at debug (they
/// are counted in `dbcollector_scrape_errors_total` and visible in `up`).
fn log_failure(e: &ScrapeError, was_up: bool) {
    let source: &dyn std::error::Error = &*e.source;
    if was_up {
        warn!(
            kind = e.kind.as_str(),
            error = source,
            "scrape failed; target is down"
        );
    } else {
        debug!(
            kind = e.kind.as_str(),
            error = source,
            "scrape failed again"
        );
    }
}

/// The scrape's points plus the `up` point, or just `up` when nothing was read.
fn job_with_up(
    spec: &TargetSpec,
    scrape: Option<Scrape>,
    resource: Arc<Resource>,
    up: bool,
    statements: Arc<config::Statements>,
) -> Job {
    let mut scrape = scrape.unwrap_or_else(|| Scrape {
        target: spec.name.clone(),
        resource,
        points: Points::new(),
        statements: None,
        read_at: std::time::Instant::now(),
    });
    let now = metrics::unix_nanos_now();
    PointSink::new(&mut scrape.points, now, 0).push(
        &UP,
        Value::Int(i64::from(up)),
        Default::default(),
    );
    Job { scrape, statements }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::receivers::ErrorKind;
    use std::collections::HashMap;

    /// A collector that takes `delay` per scrape and fails when told to.
    struct Fake {
        spec: Arc<TargetSpec>,
        delay: Duration,
        fail: bool,
    }

    impl Collect for Fake {
        fn scrape(&mut self) -> BoxFuture<'_, Result<Scrape, ScrapeError>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                if self.fail {
                    return Err(ScrapeError {
                        target: self.spec.name.clone(),
                        kind: ErrorKind::Connect,
                        source: "refused".into(),
                    });
                }
                Ok(Scrape {
                    target: self.spec.name.clone(),
                    resource: Arc::new(crate::receivers::resource(&self.spec, "postgresql")),
                    points: Points::new(),
                    statements: None,
                    read_at: std::time::Instant::now(),
                })
            })
        }

        fn close(&mut self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn specs() -> Vec<Arc<TargetSpec>> {
        let config = Config::from_yaml(
            "version: 1
defaults: { interval: 10s }
exporter: { endpoint: http://127.0.0.1:4317 }
targets:
  - { name: fast, engine: postgresql, host: a, user: u }
  - { name: slow, engine: postgresql, host: b, user: u }
  - { name: dead, engine: postgresql, host: c, user: u }
",
        )
        .unwrap();
        TargetSpec::resolve(&config)
            .into_iter()
            .map(Arc::new)
            .collect()
    }

    /// Per target: skipped ticks, scrapes attempted, ticks short-circuited, `up`.
    type Counts = HashMap<String, (u64, u64, u64, i64)>;

    /// Runs the three targets for `intervals` intervals of paused time and returns the
    /// jobs each sent, with their self-metrics read before they stopped.
    async fn run_for(intervals: u32) -> (HashMap<String, Vec<bool>>, Counts) {
        let metrics = Arc::new(Metrics::unregistered());
        let breakers = Arc::new(Breakers::new(&config::Breaker::default(), metrics.clone()));
        let (jobs, mut rx) = mpsc::channel(1024);
        let shared = Shared {
            breakers,
            metrics: metrics.clone(),
            jobs,
        };
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        for spec in specs() {
            let (delay, fail) = match &*spec.name {
                "fast" => (Duration::from_millis(100), false),
                "slow" => (Duration::from_secs(25), false),
                _ => (Duration::from_millis(100), true),
            };
            let fake = Box::new(Fake {
                spec: spec.clone(),
                delay,
                fail,
            });
            tasks.push(tokio::spawn(run_target(
                spec,
                fake,
                shared.clone(),
                cancel.clone(),
            )));
        }
        drop(shared);
        tokio::time::sleep(Duration::from_secs(10) * intervals).await;
        let counts: Counts = ["fast", "slow", "dead"]
            .into_iter()
            .map(|t| {
                let l = Metrics::target(t);
                let c = (
                    metrics.scrapes_skipped.get_or_create(&l).get(),
                    metrics.scrapes.get_or_create(&l).get(),
                    metrics.scrapes_short_circuited.get_or_create(&l).get(),
                    metrics.up.get_or_create(&l).get(),
                );
                (t.to_owned(), c)
            })
            .collect();
        cancel.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        let mut seen: HashMap<String, Vec<bool>> = HashMap::new();
        while let Ok(job) = rx.try_recv() {
            let up = job.scrape.points.last().map(|p| p.value == Value::Int(1));
            seen.entry(job.scrape.target.to_string())
                .or_default()
                .push(up.unwrap_or(false));
        }
        // A stopped target leaves no series behind.
        assert_eq!(metrics.up.get_or_create(&Metrics::target("fast")).get(), 0);
        (seen, counts)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_target_skips_its_own_ticks_and_delays_no_other() {
        let (seen, counts) = run_for(30).await;

        // 30 intervals: the fast target ticks once each (its first tick is staggered
        // within the first interval, so 29 or 30).
        let fast = &seen["fast"];
        assert!(
            (29..=30).contains(&fast.len()),
            "fast ticked {} times",
            fast.len()
        );
        assert!(fast.iter().all(|up| *up));

        // The slow one takes 2.5 intervals per scrape: every scrape skips two ticks.
        let slow = &seen["slow"];
        assert!(
            (10..=12).contains(&slow.len()),
            "slow ticked {} times",
            slow.len()
        );
        let skipped = counts["slow"].0;
        // The last scrape may still run when the test stops, its skips not yet counted.
        let scrapes = slow.len() as u64;
        assert!(
            (2 * scrapes.saturating_sub(1)..=2 * scrapes).contains(&skipped),
            "{skipped} ticks skipped over {scrapes} slow scrapes"
        );
        assert_eq!(counts["fast"].0, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_target_reports_down_every_tick_and_its_breaker_opens() {
        let (seen, counts) = run_for(20).await;
        let dead = &seen["dead"];
        assert!(
            (19..=20).contains(&dead.len()),
            "dead ticked {} times",
            dead.len()
        );
        assert!(dead.iter().all(|up| !*up), "a failing target reported up");

        let (_, attempted, short, up) = counts["dead"];
        assert_eq!(attempted + short, dead.len() as u64);
        // Three failures open it; then probes at most every two intervals.
        assert!(short >= 5, "breaker short-circuited only {short} ticks");
        assert_eq!(up, 0);
    }

    #[test]
    fn next_tick_follows_the_interval_when_on_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs(5);
        let mut skipped = 0;
        let next = next_tick(t0, s, t0 + Duration::from_secs(1), |n| skipped = n);
        assert_eq!(next, t0 + s);
        assert_eq!(skipped, 0);
    }

    #[test]
    fn next_tick_skips_the_ticks_a_slow_scrape_overran() {
        let t0 = Instant::now();
        let s = Duration::from_secs(5);
        let mut skipped = 0;
        // The scrape ended 12 s after tick t0: ticks at 5 and 10 passed; next is 15.
        let next = next_tick(t0, s, t0 + Duration::from_secs(12), |n| skipped = n);
        assert_eq!(skipped, 2);
        assert_eq!(next, t0 + Duration::from_secs(15));
    }

    #[test]
    fn stagger_is_stable_and_within_the_interval() {
        let i = Duration::from_secs(10);
        assert_eq!(stagger("pg-a", i), stagger("pg-a", i));
        assert!(stagger("pg-a", i) < i);
    }
}
