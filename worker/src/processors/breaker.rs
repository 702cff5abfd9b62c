//! Per-target circuit breakers: stop scraping a failing target and probe it with backoff.
//!
//! A breaker is closed while scrapes succeed. After `failure_threshold` failures in a row
//! it opens: ticks are rejected for the open time, then one tick is let through as a
//! probe (half-open). A successful probe closes the breaker; a failed one reopens it for
//! twice the previous time (±20% jitter, so targets that failed together do not probe
//! together), never longer than `max_open`.
//!
//! State lives in a bounded cache keyed by target name; a breaker untouched for long is
//! forgotten (see [`Breakers::new`]), so removed targets cost nothing.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;
use rand::Rng;
use tokio::time::Instant;

use crate::config;
use crate::telemetry::Metrics;

/// Relative spread of the open time: it is multiplied by a factor in `[1 - J, 1 + J]`.
const JITTER: f64 = 0.2;

/// A breaker is forgotten after this long without a decision, or four open periods if
/// that is longer. The scheduler consults it at every tick, so only targets that are no
/// longer scheduled expire.
const MIN_IDLE: Duration = Duration::from_secs(3600);

/// What to do with a target's tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Scrape: the breaker is closed.
    Allow,
    /// Scrape as the half-open trial; its result decides whether the breaker closes.
    Probe,
    /// Do not scrape: the breaker is open, or a probe is already running.
    Reject,
}

/// A breaker's state, as exported in `breaker_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Scrapes go through.
    Closed,
    /// Scrapes are rejected until the open time has passed.
    Open,
    /// One probe is running.
    HalfOpen,
}

impl State {
    /// The `breaker_state` gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// The state machine of one breaker. `reopens` counts failed probes since the breaker
/// last closed: the open time is `base_open × 2^reopens`, capped.
#[derive(Clone, Copy, Debug)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Instant, reopens: u32 },
    HalfOpen { since: Instant, reopens: u32 },
}

impl Phase {
    fn state(self) -> State {
        match self {
            Phase::Closed { .. } => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }
}

/// One target's breaker. `idle` is fixed at creation and read by the cache's expiry
/// without taking the lock.
#[derive(Debug)]
struct Slot {
    idle: Duration,
    phase: Mutex<Phase>,
}

impl Slot {
    /// The phase; a panic elsewhere while holding the lock cannot leave a `Phase` half
    /// written (it is `Copy`), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Expires a slot after its own idle time, renewed at every read.
struct IdleExpiry;

impl Expiry<Arc<str>, Arc<Slot>> for IdleExpiry {
    fn expire_after_create(
        &self,
        _target: &Arc<str>,
        slot: &Arc<Slot>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(slot.idle)
    }

    fn expire_after_read(
        &self,
        _target: &Arc<str>,
        slot: &Arc<Slot>,
        _read_at: std::time::Instant,
        _until_expiry: Option<Duration>,
        _last_modified_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(slot.idle)
    }
}

/// The circuit breakers of every target, shared by the scheduling tasks.
pub struct Breakers {
    slots: Cache<Arc<str>, Arc<Slot>>,
    failure_threshold: u32,
    base_open: Option<Duration>,
    max_open: Option<Duration>,
    jitter: f64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers")
            .field("targets", &self.slots.entry_count())
            .field("failure_threshold", &self.failure_threshold)
            .field("base_open", &self.base_open)
            .field("max_open", &self.max_open)
            .finish_non_exhaustive()
    }
}

impl Breakers {
    /// Breakers configured by `config`, exporting their state to `metrics`.
    ///
    /// At most `config.max_entries` breakers are remembered; one unused for an hour (or
    /// four open periods of its target, if longer) is forgotten, and its
    /// `breaker_state` series removed.
    pub fn new(config: &config::Breaker, metrics: Arc<Metrics>) -> Self {
        let listener_metrics = metrics.clone();
        let slots = Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(IdleExpiry)
            .eviction_listener(move |target: Arc<Arc<str>>, _slot, cause| {
                // `Replaced` never happens (slots are only created), but a replaced
                // breaker's series must live on.
                if cause != RemovalCause::Replaced {
                    listener_metrics
                        .breaker_state
                        .remove(&Metrics::target(&target));
                }
            })
            .build();
        Self {
            slots,
            failure_threshold: config.failure_threshold.max(1),
            base_open: config.base_open,
            max_open: config.max_open,
            jitter: JITTER,
            metrics,
        }
    }

    /// Whether `target`'s tick at `now` scrapes. `interval` is the target's scrape
    /// interval (the default open times derive from it).
    ///
    /// A [`Decision::Probe`] must be followed by a [`Breakers::record`] of its result;
    /// until then further ticks are rejected, unless the probe is older than the
    /// longest open time, in which case it is taken as lost and a new probe is issued.
    pub fn decide(&self, target: &Arc<str>, interval: Duration, now: Instant) -> Decision {
        let slot = self.slot(target, interval);
        let mut phase = slot.lock();
        let decision = match *phase {
            Phase::Closed { .. } => Decision::Allow,
            Phase::Open { until, reopens } if now >= until => {
                *phase = Phase::HalfOpen {
                    since: now,
                    reopens,
                };
                Decision::Probe
            }
            Phase::HalfOpen { since, reopens }
                if now.saturating_duration_since(since) >= self.max_open(interval) =>
            {
                *phase = Phase::HalfOpen {
                    since: now,
                    reopens,
                };
                Decision::Probe
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => Decision::Reject,
        };
        self.export(target, phase.state());
        decision
    }

    /// Records the result of a scrape that [`Breakers::decide`] let through.
    ///
    /// A success closes the breaker from any state (also a late one while open: the
    /// target answered). A failure counts towards the threshold while closed, reopens
    /// with the next backoff while half-open, and changes nothing while open.
    pub fn record(&self, target: &Arc<str>, interval: Duration, success: bool, now: Instant) {
        let slot = self.slot(target, interval);
        let mut phase = slot.lock();
        let next = match (*phase, success) {
            (_, true) => Phase::Closed { failures: 0 },
            (Phase::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if failures >= self.failure_threshold {
                    self.open(now, interval, 0)
                } else {
                    Phase::Closed { failures }
                }
            }
            (Phase::HalfOpen { reopens, .. }, false) => {
                self.open(now, interval, reopens.saturating_add(1))
            }
            (open @ Phase::Open { .. }, false) => open,
        };
        if next.state() != phase.state() {
            tracing::debug!(
                target_name = %target,
                from = ?phase.state(),
                to = ?next.state(),
                "breaker changed state"
            );
        }
        *phase = next;
        self.export(target, next.state());
    }

    /// The current state of `target`'s breaker; closed when it has none.
    pub fn state(&self, target: &str) -> State {
        self.slots
            .get(target)
            .map_or(State::Closed, |slot| slot.lock().state())
    }

    /// Forgets `target`'s breaker and its `breaker_state` series (the target was removed).
    pub fn forget(&self, target: &str) {
        self.slots.invalidate(target);
        // The listener removes the series too, but may run later; removing twice is
        // harmless.
        self.metrics.breaker_state.remove(&Metrics::target(target));
    }

    /// `target`'s slot, created closed.
    fn slot(&self, target: &Arc<str>, interval: Duration) -> Arc<Slot> {
        self.slots.get_with_by_ref(target, || {
            let idle = MIN_IDLE.max(self.max_open(interval).saturating_mul(4));
            Arc::new(Slot {
                idle,
                phase: Mutex::new(Phase::Closed { failures: 0 }),
            })
        })
    }

    fn base_open(&self, interval: Duration) -> Duration {
        self.base_open.unwrap_or(interval)
    }

    fn max_open(&self, interval: Duration) -> Duration {
        self.max_open.unwrap_or_else(|| interval.saturating_mul(2))
    }

    /// An open phase whose length is `base_open × 2^reopens`, jittered, within
    /// `max_open`.
    fn open(&self, now: Instant, interval: Duration, reopens: u32) -> Phase {
        let max = self.max_open(interval);
        let factor = 1u32.checked_shl(reopens).unwrap_or(u32::MAX);
        let nominal = self.base_open(interval).saturating_mul(factor).min(max);
        let spread = if self.jitter > 0.0 {
            rand::rng().random_range(1.0 - self.jitter..=1.0 + self.jitter)
        } else {
            1.0
        };
        let open_for = Duration::try_from_secs_f64(nominal.as_secs_f64() * spread)
            .unwrap_or(max)
            .min(max);
        Phase::Open {
            until: now + open_for,
            reopens,
        }
    }

    fn export(&self, target: &str, state: State) {
        self.metrics
            .breaker_state
            .get_or_create(&Metrics::target(target))
            .set(state.gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const INTERVAL: Duration = Duration::from_secs(10);

    fn breakers(threshold: u32) -> (Breakers, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::unregistered());
        let config = config::Breaker {
            failure_threshold: threshold,
            ..Default::default()
        };
        (Breakers::new(&config, metrics.clone()), metrics)
    }

    fn exact(mut b: Breakers) -> Breakers {
        b.jitter = 0.0;
        b
    }

    fn fail(b: &Breakers, t: &Arc<str>) {
        b.record(t, INTERVAL, false, Instant::now());
    }

    /// How long the breaker stays open from `now`, read from its state.
    fn open_for(b: &Breakers, t: &str, now: Instant) -> Option<Duration> {
        let slot = b.slots.get(t)?;
        let phase = *slot.lock();
        match phase {
            Phase::Open { until, .. } => Some(until.saturating_duration_since(now)),
            _ => None,
        }
    }

    fn gauge(metrics: &Metrics, t: &str) -> i64 {
        metrics
            .breaker_state
            .get_or_create(&Metrics::target(t))
            .get()
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_exactly_the_threshold_of_consecutive_failures() {
        let (b, metrics) = breakers(3);
        let t: Arc<str> = Arc::from("db");

        for _ in 0..2 {
            assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Allow);
            fail(&b, &t);
            assert_eq!(b.state("db"), State::Closed);
        }
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Allow);
        fail(&b, &t);

        assert_eq!(b.state("db"), State::Open);
        assert_eq!(gauge(&metrics, "db"), 1);
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Reject);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_while_closed_resets_the_failure_count() {
        let (b, _) = breakers(3);
        let t: Arc<str> = Arc::from("db");

        fail(&b, &t);
        fail(&b, &t);
        b.record(&t, INTERVAL, true, Instant::now());
        fail(&b, &t);
        fail(&b, &t);

        assert_eq!(b.state("db"), State::Closed);
        fail(&b, &t);
        assert_eq!(b.state("db"), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_at_the_first_probe_after_the_open_time() {
        let (b, metrics) = breakers(1);
        let b = exact(b);
        let t: Arc<str> = Arc::from("db");
        fail(&b, &t);

        // Open for exactly base_open (the interval, by default).
        advance(INTERVAL - Duration::from_millis(1)).await;
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Reject);
        advance(Duration::from_millis(1)).await;
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Probe);
        assert_eq!(b.state("db"), State::HalfOpen);
        assert_eq!(gauge(&metrics, "db"), 2);

        // Only one probe at a time.
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Reject);

        b.record(&t, INTERVAL, true, Instant::now());
        assert_eq!(b.state("db"), State::Closed);
        assert_eq!(gauge(&metrics, "db"), 0);
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_twice_as_long_up_to_max_open() {
        let metrics = Arc::new(Metrics::unregistered());
        let config = config::Breaker {
            failure_threshold: 1,
            base_open: Some(Duration::from_secs(1)),
            max_open: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let b = exact(Breakers::new(&config, metrics));
        let t: Arc<str> = Arc::from("db");
        fail(&b, &t);

        let mut seen = Vec::new();
        for _ in 0..5 {
            let open = open_for(&b, "db", Instant::now()).expect("open");
            seen.push(open.as_secs());
            advance(open).await;
            assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Probe);
            fail(&b, &t);
        }

        assert_eq!(seen, [1, 2, 4, 5, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn jittered_backoff_grows_and_never_exceeds_max_open() {
        let (b, _) = breakers(1);
        let max = INTERVAL * 2;

        // Many targets, so the jitter is drawn many times.
        for i in 0..200 {
            let t: Arc<str> = Arc::from(format!("db{i}"));
            fail(&b, &t);
            let first = open_for(&b, &t, Instant::now()).expect("open");
            assert!(
                first >= INTERVAL.mul_f64(0.8) && first <= INTERVAL.mul_f64(1.2),
                "{first:?}"
            );

            let mut now = Instant::now();
            for _ in 0..6 {
                now += open_for(&b, &t, now).expect("open");
                assert_eq!(b.decide(&t, INTERVAL, now), Decision::Probe);
                b.record(&t, INTERVAL, false, now);
                let open = open_for(&b, &t, now).expect("reopened");
                assert!(open <= max, "{open:?} exceeds {max:?}");
                // Doubled from the base, so at least 0.8 × 2 × base (capped at max).
                assert!(open >= max.mul_f64(0.8), "{open:?} did not grow");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_after_backoff_starts_over_from_the_base_open_time() {
        let (b, _) = breakers(1);
        let b = exact(b);
        let t: Arc<str> = Arc::from("db");
        fail(&b, &t);
        for _ in 0..3 {
            advance(open_for(&b, "db", Instant::now()).expect("open")).await;
            assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Probe);
            fail(&b, &t);
        }
        advance(open_for(&b, "db", Instant::now()).expect("open")).await;
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Probe);
        b.record(&t, INTERVAL, true, Instant::now());

        fail(&b, &t);
        assert_eq!(open_for(&b, "db", Instant::now()), Some(INTERVAL));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_is_replaced_after_the_longest_open_time() {
        let (b, _) = breakers(1);
        let b = exact(b);
        let t: Arc<str> = Arc::from("db");
        fail(&b, &t);
        advance(INTERVAL).await;
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Probe);

        // No result recorded (the probing task died).
        advance(INTERVAL * 2 - Duration::from_millis(1)).await;
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Reject);
        advance(Duration::from_millis(1)).await;
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn breakers_of_different_targets_are_independent() {
        let (b, _) = breakers(1);
        let (x, y): (Arc<str>, Arc<str>) = (Arc::from("x"), Arc::from("y"));
        fail(&b, &x);
        assert_eq!(b.decide(&x, INTERVAL, Instant::now()), Decision::Reject);
        assert_eq!(b.decide(&y, INTERVAL, Instant::now()), Decision::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn forgetting_a_target_closes_its_breaker_and_drops_its_series() {
        let (b, metrics) = breakers(1);
        let t: Arc<str> = Arc::from("db");
        fail(&b, &t);
        assert_eq!(b.state("db"), State::Open);

        b.forget("db");
        b.slots.run_pending_tasks();

        assert_eq!(b.state("db"), State::Closed);
        assert!(!metrics.breaker_state.remove(&Metrics::target("db")));
        assert_eq!(b.decide(&t, INTERVAL, Instant::now()), Decision::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn the_number_of_breakers_stays_within_max_entries() {
        let metrics = Arc::new(Metrics::unregistered());
        let config = config::Breaker {
            max_entries: 50,
            ..Default::default()
        };
        let b = Breakers::new(&config, metrics);
        for i in 0..1000 {
            let t: Arc<str> = Arc::from(format!("db{i}"));
            b.decide(&t, INTERVAL, Instant::now());
        }
        b.slots.run_pending_tasks();
        assert!(b.slots.entry_count() <= 50, "{}", b.slots.entry_count());
    }
}
