//! The operator's own Prometheus metrics.
//!
//! Labels are bounded: error kinds are a fixed enum, and the per-collector gauge is
//! labelled by namespace and name of collectors that exist (entries of deleted
//! collectors are pruned).

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Why a reconcile failed, as a counter label and for the choice of backoff.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum ErrorKind {
    /// The API server answered with an error not listed below, or did not answer.
    Api,
    /// A write lost a race (a resourceVersion precondition or a field conflict).
    Conflict,
    /// RBAC refused a request.
    Forbidden,
    /// Rendering a child failed.
    Render,
    /// The object does not deserialize.
    InvalidObject,
}

/// Labels of a reconcile error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// What kind of failure.
    pub kind: ErrorKind,
}

/// Labels naming a collector.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectorLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Every metric of the operator, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles run, whatever their outcome.
    pub reconciles: Counter,
    /// Reconciles that failed, by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Time one reconcile takes, seconds.
    pub duration: Histogram,
    /// Slots owned by some pod, per collector.
    pub assigned_slots: Family<CollectorLabels, Gauge>,
    /// New shard assignments (epochs) written.
    pub assignments: Counter,
    /// 1 while this instance holds the leader Lease.
    pub leader: Gauge,
    /// Collectors that have an [`Self::assigned_slots`] entry, for pruning.
    known: Mutex<HashSet<CollectorLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `dbcollector_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dbcollector_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind",
            errors.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile takes",
            duration.clone(),
        );
        let assigned_slots = Family::<CollectorLabels, Gauge>::default();
        registry.register(
            "assigned_slots",
            "Shard slots owned by a worker pod, per DatabaseCollector",
            assigned_slots.clone(),
        );
        let assignments = Counter::default();
        registry.register(
            "assignments",
            "New shard assignments (epochs) written to status",
            assignments.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            errors,
            duration,
            assigned_slots,
            assignments,
            leader,
            known: Mutex::new(HashSet::new()),
        }
    }

    /// Records the slots assigned in collector `namespace/name`.
    pub fn set_assigned(&self, namespace: &str, name: &str, slots: u64) {
        let labels = CollectorLabels {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        self.assigned_slots
            .get_or_create(&labels)
            .set(i64::try_from(slots).unwrap_or(i64::MAX));
        self.lock_known().insert(labels);
    }

    /// Drops the per-collector entries of collectors for which `exists` is false.
    pub fn prune(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut known = self.lock_known();
        known.retain(|labels| {
            let keep = exists(&labels.namespace, &labels.name);
            if !keep {
                self.assigned_slots.remove(labels);
            }
            keep
        });
    }

    /// Counts a failed reconcile.
    pub fn count_error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashSet<CollectorLabels>> {
        // A panic elsewhere cannot leave the set inconsistent: keep using it.
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_metrics_carry_the_prefix_and_the_error_kind() {
        let metrics = Metrics::new();
        metrics.reconciles.inc();
        metrics.count_error(ErrorKind::Forbidden);
        metrics.set_assigned("ns", "orders", 1024);
        let text = metrics.encode();
        assert!(
            text.contains("dbcollector_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("dbcollector_operator_reconcile_errors_total{kind=\"Forbidden\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "dbcollector_operator_assigned_slots{namespace=\"ns\",name=\"orders\"} 1024"
            ),
            "{text}"
        );
    }

    #[test]
    fn pruning_drops_the_gauge_of_deleted_collectors_only() {
        let metrics = Metrics::new();
        metrics.set_assigned("ns", "kept", 4);
        metrics.set_assigned("ns", "gone", 4);
        metrics.prune(|_, name| name == "kept");
        let text = metrics.encode();
        assert!(text.contains("name=\"kept\""), "{text}");
        assert!(!text.contains("name=\"gone\""), "{text}");
    }
}
