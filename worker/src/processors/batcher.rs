//! Splits a scrape's points into export batches of bounded size.
//!
//! The caller splits each scrape as soon as it is processed, so batching bounds request
//! sizes without holding points back: no batch waits for another scrape to fill it.

use crate::metrics::Batch;

/// The parts of `batch`, in order, each with at most `max_points` points (a `max_points`
/// of 0 is read as 1) and the batch's target, resource and read time. An empty batch
/// has no parts; one that fits is passed through as is.
///
/// Points are moved, never cloned, and the scrape's buffer is given back as the parts are
/// cut: they are taken from its end, each cut shrinking the buffer (`realloc` shrinks in
/// place), and the first part keeps what is left of it. A scrape's points are thus held
/// about once, plus one part, instead of once in the buffer and once in the parts.
pub fn split(batch: Batch, max_points: usize) -> Split {
    let max_points = max_points.max(1);
    if batch.points.len() <= max_points {
        let parts = if batch.points.is_empty() {
            Vec::new()
        } else {
            vec![batch]
        };
        return Split { parts };
    }

    // Last part first: `parts` is handed out from its end, in the scrape's order.
    let Batch {
        target,
        resource,
        mut points,
        read_at,
    } = batch;
    let mut parts = Vec::with_capacity(points.len().div_ceil(max_points));
    while points.len() > max_points {
        let cut = (points.len() - 1) / max_points * max_points;
        let tail = points.split_off(cut);
        points.shrink_to_fit();
        parts.push(Batch {
            target: target.clone(),
            resource: resource.clone(),
            points: tail,
            read_at,
        });
    }
    parts.push(Batch {
        target,
        resource,
        points,
        read_at,
    });
    Split { parts }
}

/// The parts of a batch; see [`split`].
#[derive(Debug)]
pub struct Split {
    /// The parts not handed out yet, last part first.
    parts: Vec<Batch>,
}

impl Iterator for Split {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.parts.pop()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.parts.len(), Some(self.parts.len()))
    }
}

impl ExactSizeIterator for Split {}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::{Descriptor, Point, Resource, Value};

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
    fn no_part_keeps_the_scrape_buffer() {
        let mut original = batch(2500);
        original.points.reserve_exact(1500);
        for part in split(original, 1000) {
            assert!(part.points.capacity() <= 1000, "{}", part.points.capacity());
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
