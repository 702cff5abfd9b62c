//! The Prometheus text exposition as the load bench reads it: samples counted, counters
//! summed, histogram buckets picked out and quantiles estimated from them.

/// Samples in an exposition: every line that is neither empty nor a comment.
pub fn count_samples(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count()
}

/// One sample line split into its name, its label text (without braces) and its value.
fn parse_line(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let close = line[i..].rfind('}')? + i;
            (&line[..i], &line[i + 1..close], &line[close + 1..])
        }
        Some(i) => (&line[..i], "", &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// Whether a label text holds every `k="v"` pair of `filters`.
fn matches(labels: &str, filters: &[&str]) -> bool {
    filters.iter().all(|f| labels.split(',').any(|l| l == *f))
}

/// Sum of every sample named exactly `name` whose labels hold all `filters`
/// (each written `key="value"`); 0 when there is none.
pub fn sum(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter_map(parse_line)
        .filter(|(n, labels, _)| *n == name && matches(labels, filters))
        .map(|(_, _, v)| v)
        .sum()
}

/// A histogram's cumulative buckets, summed over the label sets that matched.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// `(upper bound, cumulative count)`, ascending; `+Inf` last.
    buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The buckets of histogram `name` (without `_bucket`) whose labels hold all
    /// `filters`, summed bound by bound.
    pub fn parse(text: &str, name: &str, filters: &[&str]) -> Self {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for (n, labels, value) in text.lines().filter_map(parse_line) {
            if n != bucket || !matches(labels, filters) {
                continue;
            }
            let Some(le) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("le=\""))
                .and_then(|l| l.strip_suffix('"'))
                .and_then(|l| l.parse::<f64>().ok())
            else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, count)) => *count += value,
                None => buckets.push((le, value)),
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { buckets }
    }

    /// The observations made after `earlier` (same buckets): bucket by bucket difference.
    pub fn since(&self, earlier: &Self) -> Self {
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, count)| {
                let before = earlier
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |(_, c)| *c);
                (le, count - before)
            })
            .collect();
        Self { buckets }
    }

    /// Observations in all.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, c)| *c)
    }

    /// Share of the observations at or below bucket bound `le` (which must be a bound);
    /// `None` without observations or without that bound.
    pub fn share_at_most(&self, le: f64) -> Option<f64> {
        let total = self.count();
        let (_, below) = self.buckets.iter().find(|(b, _)| (*b - le).abs() < 1e-12)?;
        (total > 0.0).then(|| below / total)
    }

    /// The `q` quantile, interpolated linearly inside its bucket as Prometheus'
    /// `histogram_quantile` does (the first bucket from 0). A quantile in the `+Inf`
    /// bucket is reported as the highest finite bound. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = count - lower.1;
                let within = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * within);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP x_seconds A histogram.
# TYPE x_seconds histogram
x_seconds_bucket{target=\"a\",le=\"0.001\"} 10
x_seconds_bucket{target=\"a\",le=\"0.01\"} 90
x_seconds_bucket{target=\"a\",le=\"+Inf\"} 100
x_seconds_bucket{target=\"b\",le=\"0.001\"} 0
x_seconds_bucket{target=\"b\",le=\"0.01\"} 0
x_seconds_bucket{target=\"b\",le=\"+Inf\"} 100
x_seconds_count{target=\"a\"} 100
x_total{kind=\"q\"} 3
x_total{kind=\"r\"} 4.5

plain 7 1700000000000
";

    #[test]
    fn samples_are_the_lines_that_are_not_comments() {
        assert_eq!(count_samples(TEXT), 10);
    }

    #[test]
    fn sums_pick_the_name_and_the_labels() {
        assert_eq!(sum(TEXT, "x_total", &[]), 7.5);
        assert_eq!(sum(TEXT, "x_total", &["kind=\"r\""]), 4.5);
        assert_eq!(sum(TEXT, "plain", &[]), 7.0);
        assert_eq!(sum(TEXT, "x_seconds_count", &["target=\"b\""]), 0.0);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::parse(TEXT, "x_seconds", &["target=\"a\""]);
        assert_eq!(h.count(), 100.0);
        // Rank 50 is the 40th of the 80 observations in (0.001, 0.01].
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - 0.0055).abs() < 1e-9, "{p50}");
        // Rank 5 is half way through the first bucket, which starts at 0.
        assert!((h.quantile(0.05).unwrap() - 0.0005).abs() < 1e-9);
        // Rank 99 is in +Inf: reported as the highest finite bound.
        assert_eq!(h.quantile(0.99), Some(0.01));
        assert_eq!(h.share_at_most(0.01), Some(0.9));
    }

    #[test]
    fn label_sets_are_summed_and_earlier_counts_subtracted() {
        let both = Histogram::parse(TEXT, "x_seconds", &[]);
        assert_eq!(both.count(), 200.0);
        let a = Histogram::parse(TEXT, "x_seconds", &["target=\"a\""]);
        let b = both.since(&a);
        assert_eq!(b.count(), 100.0);
        assert_eq!(b.share_at_most(0.01), Some(0.0));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
