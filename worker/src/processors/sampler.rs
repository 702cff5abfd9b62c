//! The adaptive sampler: which of a target's top statements go out one by one.
//!
//! Some statements are always kept: the slowest and the most called of this interval and
//! every one with errors. The rest are kept when the hash of their key falls below
//! `rate × 2^64`, so the choice is the same on every worker and across restarts, and a
//! statement kept at one rate stays kept at any higher rate (its series does not flap
//! while the rate drifts). The rate aims at about `target_points` statements per target
//! and scrape, smoothed over scrapes.

use xxhash_rust::xxh3::xxh3_64;

use crate::config;

/// Weight of the newest scrape in the smoothed rate; the rest is the previous rate. A
/// jump in the number of statements is absorbed within a few scrapes.
const SMOOTHING: f64 = 0.5;

/// A statement competing to be exported one by one, with its change since the previous
/// scrape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Its position in the scrape's rows.
    pub index: usize,
    /// [`key_hash`] of its key.
    pub hash: u64,
    /// Executions in the interval.
    pub calls: i64,
    /// Execution time in the interval, seconds.
    pub time: f64,
    /// Rows in the interval.
    pub rows: i64,
    /// Failed executions in the interval.
    pub errors: i64,
}

/// The stable hash of a statement key that sampling compares with the rate.
pub fn key_hash(key: &str) -> u64 {
    xxh3_64(key.as_bytes())
}

/// Whether a statement whose key hashes to `hash` is kept at `rate` (0 to 1).
pub fn admits(hash: u64, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate.is_nan() || rate <= 0.0 {
        return false;
    }
    // `rate < 1`, so the product is below 2^64 and the cast does not saturate.
    let threshold = (rate * 18_446_744_073_709_551_616.0) as u64;
    hash < threshold
}

/// The sampler's settings.
#[derive(Clone, Debug)]
pub struct Sampler {
    enabled: bool,
    target_points: u32,
    always_keep: u32,
}

impl Sampler {
    /// A sampler configured by `config`.
    pub fn new(config: &config::Sampler) -> Self {
        Self {
            enabled: config.enabled,
            target_points: config.target_points,
            always_keep: config.always_keep,
        }
    }

    /// Whether it samples at all (when not, every candidate is kept).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Decides which `candidates` are kept, writing one flag per candidate into `keep`,
    /// and returns the rate used. `candidates` must be ordered slowest first (by `time`);
    /// `previous_rate` is the rate of the target's previous scrape, if any.
    pub fn select(
        &self,
        candidates: &[Candidate],
        previous_rate: Option<f64>,
        keep: &mut Vec<bool>,
    ) -> f64 {
        keep.clear();
        if !self.enabled {
            keep.resize(candidates.len(), true);
            return 1.0;
        }
        keep.resize(candidates.len(), false);

        let forced = self.keep_always(candidates, keep);
        let remaining = candidates.len() - forced;
        let budget = (self.target_points as usize).saturating_sub(forced);
        let raw = if remaining == 0 {
            1.0
        } else {
            (budget as f64 / remaining as f64).min(1.0)
        };
        let rate = previous_rate
            .filter(|r| r.is_finite())
            .map_or(raw, |prev| SMOOTHING * raw + (1.0 - SMOOTHING) * prev)
            .clamp(0.0, 1.0);

        for (flag, c) in keep.iter_mut().zip(candidates) {
            *flag = *flag || admits(c.hash, rate);
        }
        rate
    }

    /// Marks the statements kept whatever the rate; returns how many.
    fn keep_always(&self, candidates: &[Candidate], keep: &mut [bool]) -> usize {
        let always = (self.always_keep as usize).min(candidates.len());

        // The slowest: the first ones, as candidates come slowest first.
        keep[..always].fill(true);

        // The most called, ties broken by hash so every worker picks the same ones.
        if always > 0 {
            let mut by_calls: Vec<usize> = (0..candidates.len()).collect();
            let most_called = |a: &usize, b: &usize| {
                let (a, b) = (&candidates[*a], &candidates[*b]);
                b.calls.cmp(&a.calls).then(a.hash.cmp(&b.hash))
            };
            if always < by_calls.len() {
                by_calls.select_nth_unstable_by(always - 1, most_called);
            }
            for &i in &by_calls[..always] {
                keep[i] = true;
            }
        }

        // Every statement that failed in this interval.
        for (flag, c) in keep.iter_mut().zip(candidates) {
            *flag = *flag || c.errors > 0;
        }
        keep.iter().filter(|k| **k).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(target_points: u32, always_keep: u32) -> Sampler {
        Sampler::new(&config::Sampler {
            target_points,
            always_keep,
            ..Default::default()
        })
    }

    /// `n` candidates, slowest first, with spread-out hashes.
    fn candidates(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                index: i,
                hash: key_hash(&format!("key{i}")),
                calls: 1,
                time: (n - i) as f64,
                rows: 0,
                errors: 0,
            })
            .collect()
    }

    #[test]
    fn admission_compares_the_hash_with_the_rate_times_two_to_the_64() {
        assert!(admits(u64::MAX, 1.0));
        assert!(admits(0, 0.5));
        assert!(admits(u64::MAX / 2 - 1024, 0.5));
        assert!(!admits(u64::MAX / 2 + 1024, 0.5));
        assert!(!admits(0, 0.0));
        assert!(!admits(0, f64::NAN));
    }

    #[test]
    fn a_key_kept_at_some_rate_is_kept_at_every_higher_rate() {
        for i in 0..1000 {
            let h = key_hash(&format!("k{i}"));
            let rates = [0.01, 0.1, 0.3, 0.7, 0.99];
            let first = rates
                .iter()
                .position(|&r| admits(h, r))
                .unwrap_or(rates.len());
            assert!(rates[first..].iter().all(|&r| admits(h, r)));
        }
    }

    #[test]
    fn everything_is_kept_within_the_budget() {
        let mut keep = Vec::new();
        let rate = sampler(500, 10).select(&candidates(100), None, &mut keep);
        assert_eq!(rate, 1.0);
        assert!(keep.iter().all(|k| *k));
    }

    #[test]
    fn about_target_points_are_kept_above_the_budget() {
        let mut keep = Vec::new();
        let c = candidates(10_000);
        let rate = sampler(500, 0).select(&c, None, &mut keep);
        assert!((rate - 0.05).abs() < 1e-9, "{rate}");
        let kept = keep.iter().filter(|k| **k).count();
        assert!((400..600).contains(&kept), "{kept}");
    }

    #[test]
    fn the_slowest_and_the_most_called_and_the_failing_are_always_kept() {
        let mut c = candidates(1000);
        c[500].calls = 1_000_000;
        c[600].calls = 999_999;
        c[700].errors = 1;
        let mut keep = Vec::new();
        sampler(0, 2).select(&c, None, &mut keep);

        let kept: Vec<usize> = (0..c.len()).filter(|i| keep[*i]).collect();
        assert_eq!(kept, [0, 1, 500, 600, 700]);
    }

    #[test]
    fn the_rate_is_smoothed_over_scrapes() {
        let mut keep = Vec::new();
        let s = sampler(100, 0);
        let c = candidates(1000);
        let r1 = s.select(&c, Some(1.0), &mut keep);
        assert!((r1 - 0.55).abs() < 1e-9, "{r1}");
        let r2 = s.select(&c, Some(r1), &mut keep);
        assert!(r2 < r1 && r2 > 0.1, "{r2}");
    }

    #[test]
    fn a_disabled_sampler_keeps_everything_at_rate_one() {
        let s = Sampler::new(&config::Sampler {
            enabled: false,
            ..Default::default()
        });
        let mut keep = Vec::new();
        assert_eq!(s.select(&candidates(100_000), Some(0.01), &mut keep), 1.0);
        assert!(keep.iter().all(|k| *k));
    }
}
