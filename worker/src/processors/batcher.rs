//! Splits a scrape's points into export batches of bounded size.
//!
//! The caller splits each scrape as soon as it is processed, so batching bounds request
//! sizes without holding points back: no batch waits for another scrape to fill it.

use std::sync::Arc;
use std::time::Instant;

use crate::metrics::{Batch, Point, Resource};

/// The parts of `batch`, in order, each with at most `max_points` points (a `max_points`
/// of 0 is read as 1) and the batch's target, resource and read time. An empty batch
/// has no parts; one that fits is passed through as is.
pub fn split(batch: Batch, max_points: usize) -> Split {
    let max_points = max_points.max(1);
    if batch.points.len() <= max_points {
        let whole = (!batch.points.is_empty()).then_some(batch);
        return Split {
            whole,
            rest: None,
            max_points,
        };
    }
    let Batch {
        target,
        resource,
        points,
        read_at,
    } = batch;
    let rest = Rest {
        target,
        resource,
        read_at,
        points: points.into_iter(),
    };
    Split {
        whole: None,
        rest: Some(rest),
        max_points,
    }
}

/// The parts of a batch; see [`split`].
#[derive(Debug)]
pub struct Split {
    whole: Option<Batch>,
    rest: Option<Rest>,
    max_points: usize,
}

/// The points not handed out yet, with what every part shares.
#[derive(Debug)]
struct Rest {
    target: Arc<str>,
    resource: Arc<Resource>,
    read_at: Instant,
    points: std::vec::IntoIter<Point>,
}

impl Iterator for Split {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if let Some(whole) = self.whole.take() {
            return Some(whole);
        }
        let rest = self.rest.as_mut()?;
        let points: Vec<Point> = rest.points.by_ref().take(self.max_points).collect();
        if points.is_empty() {
            self.rest = None;
            return None;
        }
        Some(Batch {
            target: rest.target.clone(),
            resource: rest.resource.clone(),
            points,
            read_at: rest.read_at,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match (&self.whole, &self.rest) {
            (Some(_), _) => 1,
            (None, Some(rest)) => rest.points.len().div_ceil(self.max_points),
            (None, None) => 0,
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Split {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Descriptor, Value};

    static DESC: Descriptor = Descriptor::gauge("g", "1", "");

    fn batch(n: usize) -> Batch {
        let resource = Arc::new(Resource {
            attrs: crate::attrs!["server.address" => "h"],
        });
        let mut b = Batch::new(Arc::from("db"), resource);
        b.points = (0..n)
            .map(|i| Point {
                desc: &DESC,
                attrs: crate::attrs![],
                value: Value::Int(i as i64),
                start_unix_nanos: 0,
                time_unix_nanos: 1,
            })
            .collect();
        b
    }

    fn values(b: &Batch) -> Vec<i64> {
        b.points.iter().map(|p| p.value.as_f64() as i64).collect()
    }

    #[test]
    fn parts_hold_at_most_max_points_each() {
        let parts = split(batch(2500), 1000);
        assert_eq!(parts.len(), 3);
        let sizes: Vec<usize> = parts.map(|b| b.points.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);

        let sizes: Vec<usize> = split(batch(2000), 1000).map(|b| b.points.len()).collect();
        assert_eq!(sizes, [1000, 1000]);
    }

    #[test]
    fn no_point_is_lost_and_order_is_kept() {
        let all: Vec<i64> = split(batch(1234), 100).flat_map(|b| values(&b)).collect();
        assert_eq!(all, (0..1234).collect::<Vec<_>>());
    }

    #[test]
    fn every_part_shares_the_target_resource_and_read_time() {
        let original = batch(10);
        let (resource, read_at) = (original.resource.clone(), original.read_at);
        for part in split(original, 3) {
            assert_eq!(&*part.target, "db");
            assert!(Arc::ptr_eq(&part.resource, &resource));
            assert_eq!(part.read_at, read_at);
        }
    }

    #[test]
    fn a_batch_that_fits_passes_through_whole() {
        let parts: Vec<Batch> = split(batch(5), 5).collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(values(&parts[0]), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn an_empty_batch_has_no_parts() {
        assert_eq!(split(batch(0), 10).count(), 0);
    }

    #[test]
    fn a_zero_limit_is_read_as_one() {
        let sizes: Vec<usize> = split(batch(3), 0).map(|b| b.points.len()).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
