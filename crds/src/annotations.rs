//! Annotation and label keys shared by the operator and the worker, and the shard
//! assignment a worker pod carries in its annotations.
//!
//! The operator writes a worker pod's assignment as three annotations, always together:
//! [`SHARD_RANGES`] (the pod's slots in [`Ranges`] text), [`SHARD_SPACE`] (the number of
//! slots the ranges are cut from, `spec.shards`) and [`ASSIGNMENT_EPOCH`] (the epoch of
//! the assignment, which only ever grows). A pod without them has no assignment yet and
//! collects nothing.

use std::collections::BTreeMap;

use crate::shard::{self, Ranges};

/// Pod annotation: the slots this worker owns, in [`Ranges`] text (`none` when empty).
pub const SHARD_RANGES: &str = "dbcollector.dev/shard-ranges";

/// Pod annotation: the size of the shard space the ranges are cut from, in decimal.
pub const SHARD_SPACE: &str = "dbcollector.dev/shard-space";

/// Pod annotation: the epoch of the assignment, in decimal. A worker ignores an
/// assignment whose epoch is below the one it last applied.
pub const ASSIGNMENT_EPOCH: &str = "dbcollector.dev/assignment-epoch";

/// Lease annotation: the assignment epoch the worker has applied (acknowledged), in
/// decimal. The operator revokes a moved slot from its old owner only after the new
/// owner's acknowledged epoch reaches the epoch that granted it.
pub const ACKED_EPOCH: &str = "dbcollector.dev/acked-epoch";

/// Lease annotation: the number of targets the worker collects under its applied
/// assignment, in decimal.
pub const TARGETS: &str = "dbcollector.dev/targets";

/// Lease annotation: the number of the worker's targets whose last scrape failed, in
/// decimal.
pub const TARGETS_DOWN: &str = "dbcollector.dev/targets-down";

/// Lease annotation: up to [`MAX_REPORTED_NAMES`] names of the targets counted in
/// [`TARGETS_DOWN`], comma-separated, sorted.
pub const TARGETS_DOWN_NAMES: &str = "dbcollector.dev/targets-down-names";

/// Lease annotation: the number of (target, capability) pairs the worker found missing
/// (a family the server cannot serve), in decimal.
pub const CAPABILITIES_MISSING: &str = "dbcollector.dev/capabilities-missing";

/// Most target names a worker lists in [`TARGETS_DOWN_NAMES`].
pub const MAX_REPORTED_NAMES: usize = 10;

/// Seconds between two heartbeats of a worker in its Lease (`spec.renewTime`); the
/// Lease's `leaseDurationSeconds` is three times this, after which the operator treats
/// the worker as silent.
pub const HEARTBEAT_SECONDS: i32 = 5;

/// Standard label: the application's name; its value is [`APP_NAME`].
pub const NAME_LABEL: &str = "app.kubernetes.io/name";

/// Standard label: the instance, i.e. the DatabaseCollector's name.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Standard label: the role of the object; worker pods carry [`WORKER_COMPONENT`].
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";

/// Standard label: the tool managing the object; its value is [`MANAGER`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Value of [`NAME_LABEL`].
pub const APP_NAME: &str = "dbcollector";

/// Value of [`COMPONENT_LABEL`] on worker pods.
pub const WORKER_COMPONENT: &str = "worker";

/// Value of [`MANAGED_BY_LABEL`], also the operator's server-side apply field manager.
pub const MANAGER: &str = "dbcollector-operator";

/// Why a pod's assignment annotations could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Some of the three annotations are present and some are not.
    #[error("annotation {key} is missing while the other assignment annotations are set")]
    Missing {
        /// The missing key.
        key: &'static str,
    },
    /// A number annotation is not a decimal number.
    #[error("annotation {key}: {value:?} is not a decimal number")]
    NotANumber {
        /// The annotation key.
        key: &'static str,
        /// Its value, cut to 32 characters.
        value: String,
    },
    /// The shard space is 0 or above [`shard::MAX_SHARDS`].
    #[error(
        "annotation {SHARD_SPACE}: {space} is not between 1 and {}",
        shard::MAX_SHARDS
    )]
    BadSpace {
        /// The value read.
        space: u32,
    },
    /// The ranges text is malformed or leaves the space.
    #[error("annotation {SHARD_RANGES}")]
    Ranges(#[source] shard::ParseError),
}

/// The shard assignment of one worker pod, as carried by its annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardAssignment {
    /// The slots the pod owns.
    pub ranges: Ranges,
    /// The size of the shard space (`spec.shards`).
    pub space: u32,
    /// The assignment epoch.
    pub epoch: u64,
}

impl ShardAssignment {
    /// Reads the assignment from a pod's annotations: `Ok(None)` when the pod has none of
    /// the three annotations (not assigned yet).
    ///
    /// # Errors
    /// [`Error`] when only some annotations are present or one is malformed; a worker
    /// keeps its previous assignment then.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Option<Self>, Error> {
        let get = |key| annotations.get(key).map(String::as_str);
        let (ranges, space, epoch) =
            match (get(SHARD_RANGES), get(SHARD_SPACE), get(ASSIGNMENT_EPOCH)) {
                (None, None, None) => return Ok(None),
                (Some(r), Some(s), Some(e)) => (r, s, e),
                (None, _, _) => return Err(Error::Missing { key: SHARD_RANGES }),
                (_, None, _) => return Err(Error::Missing { key: SHARD_SPACE }),
                (_, _, None) => {
                    return Err(Error::Missing {
                        key: ASSIGNMENT_EPOCH,
                    })
                }
            };
        let space: u32 = number(SHARD_SPACE, space)?;
        if space == 0 || space > shard::MAX_SHARDS {
            return Err(Error::BadSpace { space });
        }
        let epoch = number(ASSIGNMENT_EPOCH, epoch)?;
        let ranges = Ranges::parse_in(ranges, space).map_err(Error::Ranges)?;
        Ok(Some(Self {
            ranges,
            space,
            epoch,
        }))
    }

    /// The three annotations that carry this assignment.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (SHARD_RANGES.to_owned(), self.ranges.to_string()),
            (SHARD_SPACE.to_owned(), self.space.to_string()),
            (ASSIGNMENT_EPOCH.to_owned(), self.epoch.to_string()),
        ])
    }

    /// Whether the target named `target_name` belongs to this pod.
    pub fn owns(&self, target_name: &str) -> bool {
        self.ranges
            .contains(shard::slot_of(target_name, self.space))
    }
}

/// A decimal number made of digits only (no sign, no spaces).
fn number<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, Error> {
    let bad = || Error::NotANumber {
        key,
        value: value.chars().take(32).collect(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// The labels that select the worker pods of the DatabaseCollector named `collector`
/// (the StatefulSet's selector and `status.selector`).
pub fn worker_selector(collector: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), collector.to_owned()),
        (COMPONENT_LABEL.to_owned(), WORKER_COMPONENT.to_owned()),
    ])
}

/// [`worker_selector`] in label-selector text (`a=b,c=d`), as the scale subresource
/// reads it from `status.selector`.
pub fn worker_selector_string(collector: &str) -> String {
    let pairs: Vec<String> = worker_selector(collector)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn assignment_round_trips_through_annotations() {
        let assignment = ShardAssignment {
            ranges: "0-99,512".parse().unwrap(),
            space: 1024,
            epoch: 7,
        };
        let written = assignment.to_annotations();
        assert_eq!(written[SHARD_RANGES], "0-99,512");
        assert_eq!(written[SHARD_SPACE], "1024");
        assert_eq!(written[ASSIGNMENT_EPOCH], "7");
        assert_eq!(
            ShardAssignment::from_annotations(&written),
            Ok(Some(assignment))
        );
    }

    #[test]
    fn a_pod_without_assignment_annotations_has_no_assignment() {
        let other = annotations(&[("kubectl.kubernetes.io/restartedAt", "now")]);
        assert_eq!(ShardAssignment::from_annotations(&other), Ok(None));
    }

    #[test]
    fn an_empty_assignment_is_an_assignment_of_no_slot() {
        let a = annotations(&[
            (SHARD_RANGES, "none"),
            (SHARD_SPACE, "16"),
            (ASSIGNMENT_EPOCH, "3"),
        ]);
        let assignment = ShardAssignment::from_annotations(&a).unwrap().unwrap();
        assert!(assignment.ranges.is_empty());
        assert!(!assignment.owns("db1"));
    }

    #[test]
    fn partial_or_malformed_annotations_are_refused_naming_the_key() {
        let partial = annotations(&[(SHARD_RANGES, "0-3"), (ASSIGNMENT_EPOCH, "1")]);
        assert_eq!(
            ShardAssignment::from_annotations(&partial),
            Err(Error::Missing { key: SHARD_SPACE })
        );
        let signed = annotations(&[
            (SHARD_RANGES, "0-3"),
            (SHARD_SPACE, "4"),
            (ASSIGNMENT_EPOCH, "+1"),
        ]);
        assert!(matches!(
            ShardAssignment::from_annotations(&signed),
            Err(Error::NotANumber {
                key: ASSIGNMENT_EPOCH,
                ..
            })
        ));
        let outside = annotations(&[
            (SHARD_RANGES, "0-4"),
            (SHARD_SPACE, "4"),
            (ASSIGNMENT_EPOCH, "1"),
        ]);
        assert!(matches!(
            ShardAssignment::from_annotations(&outside),
            Err(Error::Ranges(shard::ParseError::OutsideSpace {
                slot: 4,
                ..
            }))
        ));
        let zero = annotations(&[
            (SHARD_RANGES, "none"),
            (SHARD_SPACE, "0"),
            (ASSIGNMENT_EPOCH, "1"),
        ]);
        assert_eq!(
            ShardAssignment::from_annotations(&zero),
            Err(Error::BadSpace { space: 0 })
        );
    }

    #[test]
    fn owns_follows_the_slot_hash() {
        // "db2" is in slot 716 of 1024 (see the golden values in shard::tests).
        let a = ShardAssignment {
            ranges: "700-720".parse().unwrap(),
            space: 1024,
            epoch: 1,
        };
        assert!(a.owns("db2"));
        assert!(!a.owns("db1"));
    }

    #[test]
    fn selector_string_lists_the_worker_labels_sorted() {
        assert_eq!(
            worker_selector_string("orders"),
            "app.kubernetes.io/component=worker,app.kubernetes.io/instance=orders,\
             app.kubernetes.io/name=dbcollector"
        );
    }
}
