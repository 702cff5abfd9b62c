//! The worker's own telemetry: Prometheus metrics about collection, processing and export.
//!
//! Labels are bounded: target names come from the config, servers are sanitized
//! `host:port` strings, kinds and reasons are fixed enums. Never a credential, never a
//! raw error message.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels naming a target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// The target's name.
    pub target: String,
}

/// Labels of a scrape error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The target's name.
    pub target: String,
    /// [`crate::receivers::ErrorKind`] as a string.
    pub kind: &'static str,
}

/// Labels naming a server endpoint (`host:port`, no credentials).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// `host:port`.
    pub server: String,
}

/// Labels of a missing capability.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CapabilityLabels {
    /// The target's name.
    pub target: String,
    /// The family or feature that cannot be collected, e.g. `pg_stat_statements`.
    pub capability: String,
}

/// Why points were dropped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// The export queue was full; the oldest batch made room.
    QueueFull,
    /// The receiver refused the batch, or retries ran out.
    ExportFailed,
    /// The receiver accepted the request but rejected these points (partial success).
    Rejected,
    /// The shutdown deadline passed with the batch still queued.
    Shutdown,
}

impl DropReason {
    /// The label value, as documented: `queue_full`, `export_failed`, `rejected`,
    /// `shutdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::ExportFailed => "export_failed",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of dropped points.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// Why.
    pub reason: DropReason,
}

/// Labels of an export request outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success`, `retryable` or `permanent`.
    pub result: &'static str,
}

/// Every self-metric of the worker, registered once.
#[derive(Debug)]
pub struct Metrics {
    /// Scrape duration per target, seconds.
    pub scrape_duration: Family<TargetLabel, Histogram, fn() -> Histogram>,
    /// Scrapes started per target (who collected what).
    pub scrapes: Family<TargetLabel, Counter>,
    /// Failed scrapes by target and kind.
    pub scrape_errors: Family<ErrorLabels, Counter>,
    /// Ticks skipped because the previous scrape still ran.
    pub scrapes_skipped: Family<TargetLabel, Counter>,
    /// Scrapes not attempted because the target's breaker was open.
    pub scrapes_short_circuited: Family<TargetLabel, Counter>,
    /// 1 when the last scrape of a target succeeded.
    pub up: Family<TargetLabel, Gauge>,
    /// Connections open per server endpoint, as counted by the pools.
    pub connections_open: Family<ServerLabel, Gauge>,
    /// Connections opened per server endpoint (each one after the first per database
    /// is a reconnect or a rotation).
    pub connections_opened: Family<ServerLabel, Counter>,
    /// Breaker state per target: 0 closed, 1 open, 2 half-open.
    pub breaker_state: Family<TargetLabel, Gauge>,
    /// 1 per capability a target lacks.
    pub capability_missing: Family<CapabilityLabels, Gauge>,
    /// Points produced by the receivers.
    pub points_received: Counter,
    /// Points accepted by the OTLP receiver.
    pub points_exported: Counter,
    /// Points dropped, by reason.
    pub points_dropped: Family<DropLabel, Counter>,
    /// Query-level points left out by the sampler (folded into the aggregate; not a
    /// loss).
    pub points_sampled_out: Counter,
    /// Points waiting in the export queue.
    pub queue_points: Gauge,
    /// Export requests by outcome.
    pub export_requests: Family<ResultLabel, Counter>,
    /// Statement keys remembered by the sampler.
    pub sampler_keys: Gauge,
    /// Statements read but not remembered for want of room in `sampler.max_keys`: their
    /// next change reads as their whole cumulative value.
    pub sampler_keys_over_budget: Counter,
    /// Time from a scrape's rows having been read to each of its batches being handed to
    /// the export queue (processing and batching included, export not), seconds.
    pub pipeline_latency: Histogram,
    /// Config reloads by outcome.
    pub config_reloads: Family<ResultLabel, Counter>,
    /// 1 when the last config (re)load succeeded.
    pub config_last_reload_ok: Gauge,
    /// Config format version in use.
    pub config_version: Gauge<i64, std::sync::atomic::AtomicI64>,
    /// Keep rate of the sampler per target (0 to 1).
    pub sampler_rate: Family<TargetLabel, Gauge<f64, AtomicU64>>,
    /// Targets this worker collects now: every target of the config, or in pod mode
    /// those of the applied assignment.
    pub targets: Gauge,
    /// Epoch of the applied shard assignment; 0 before the first and when the worker
    /// collects every target.
    pub assignment_epoch: Gauge,
}

fn scrape_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Upper bounds of the pipeline latency buckets, seconds: fine below 10 ms, where the
/// processing of a scrape normally ends, with 10 ms itself a bound so a p99 target there
/// can be read off exactly; coarse above, up to 5 s.
pub const PIPELINE_LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.1,
    0.5, 1.0, 5.0,
];

impl Metrics {
    /// Metrics registered in a throwaway registry, for tests and benches.
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    /// Creates the metrics and registers them under the `dbcollector_` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            scrape_duration: Family::new_with_constructor(scrape_histogram),
            scrapes: Family::default(),
            scrape_errors: Family::default(),
            scrapes_skipped: Family::default(),
            scrapes_short_circuited: Family::default(),
            up: Family::default(),
            connections_open: Family::default(),
            connections_opened: Family::default(),
            breaker_state: Family::default(),
            capability_missing: Family::default(),
            points_received: Counter::default(),
            points_exported: Counter::default(),
            points_dropped: Family::default(),
            points_sampled_out: Counter::default(),
            queue_points: Gauge::default(),
            export_requests: Family::default(),
            sampler_keys: Gauge::default(),
            sampler_keys_over_budget: Counter::default(),
            pipeline_latency: Histogram::new(PIPELINE_LATENCY_BUCKETS),
            config_reloads: Family::default(),
            config_last_reload_ok: Gauge::default(),
            config_version: Gauge::default(),
            sampler_rate: Family::default(),
            targets: Gauge::default(),
            assignment_epoch: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("dbcollector");
        r.register(
            "scrape_duration_seconds",
            "Scrape duration",
            m.scrape_duration.clone(),
        );
        r.register("scrapes", "Scrapes started", m.scrapes.clone());
        r.register(
            "scrape_errors",
            "Failed scrapes by kind",
            m.scrape_errors.clone(),
        );
        r.register(
            "scrapes_skipped",
            "Ticks skipped while the previous scrape ran",
            m.scrapes_skipped.clone(),
        );
        r.register(
            "scrapes_short_circuited",
            "Scrapes not attempted, breaker open",
            m.scrapes_short_circuited.clone(),
        );
        r.register(
            "up",
            "1 when the last scrape of the target succeeded",
            m.up.clone(),
        );
        r.register(
            "connections_open",
            "Open database connections",
            m.connections_open.clone(),
        );
        r.register(
            "connections_opened",
            "Database connections opened",
            m.connections_opened.clone(),
        );
        r.register(
            "breaker_state",
            "Breaker state: 0 closed, 1 open, 2 half-open",
            m.breaker_state.clone(),
        );
        r.register(
            "capability_missing",
            "1 per capability the target lacks",
            m.capability_missing.clone(),
        );
        r.register(
            "points_received",
            "Points produced by receivers",
            m.points_received.clone(),
        );
        r.register(
            "points_exported",
            "Points accepted by the receiver",
            m.points_exported.clone(),
        );
        r.register(
            "points_dropped",
            "Points dropped, by reason",
            m.points_dropped.clone(),
        );
        r.register(
            "points_sampled_out",
            "Query-level points folded into the aggregate by the sampler",
            m.points_sampled_out.clone(),
        );
        r.register(
            "queue_points",
            "Points waiting for export",
            m.queue_points.clone(),
        );
        r.register(
            "export_requests",
            "Export requests by outcome",
            m.export_requests.clone(),
        );
        r.register(
            "sampler_keys",
            "Statement keys the sampler remembers",
            m.sampler_keys.clone(),
        );
        r.register(
            "sampler_keys_over_budget",
            "Statements not remembered for want of room in sampler.max_keys",
            m.sampler_keys_over_budget.clone(),
        );
        r.register(
            "pipeline_latency_seconds",
            "From a scrape's rows read to its batch handed to the export queue",
            m.pipeline_latency.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by outcome",
            m.config_reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last config load succeeded",
            m.config_last_reload_ok.clone(),
        );
        r.register(
            "config_version",
            "Config format version in use",
            m.config_version.clone(),
        );
        r.register(
            "sampler_rate",
            "Sampler keep rate per target",
            m.sampler_rate.clone(),
        );
        r.register("targets", "Targets this worker collects", m.targets.clone());
        r.register(
            "assignment_epoch",
            "Epoch of the applied shard assignment",
            m.assignment_epoch.clone(),
        );
        m
    }

    /// Labels for a target.
    pub fn target(name: &str) -> TargetLabel {
        TargetLabel {
            target: name.to_owned(),
        }
    }

    /// Removes a target's series once it is no longer collected here (removed from the
    /// config, or moved to another worker), so `/metrics` shows no stale `up`.
    pub fn forget_target(&self, target: &str) {
        let label = Self::target(target);
        self.scrape_duration.remove(&label);
        self.scrapes.remove(&label);
        self.scrapes_skipped.remove(&label);
        self.scrapes_short_circuited.remove(&label);
        self.up.remove(&label);
        self.breaker_state.remove(&label);
        self.sampler_rate.remove(&label);
        for kind in ["connect", "timeout", "query", "credentials", "budget"] {
            self.scrape_errors.remove(&ErrorLabels {
                target: target.to_owned(),
                kind,
            });
        }
    }

    /// Counts dropped points.
    pub fn dropped(&self, reason: DropReason, points: u64) {
        self.points_dropped
            .get_or_create(&DropLabel { reason })
            .inc_by(points);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_use_the_documented_label_values() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.dropped(DropReason::QueueFull, 3);
        metrics.dropped(DropReason::ExportFailed, 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("dbcollector_points_dropped_total{reason=\"queue_full\"} 3"),
            "{text}"
        );
        assert!(text.contains("{reason=\"export_failed\"} 1"), "{text}");
    }

    #[test]
    fn a_forgotten_target_leaves_no_series() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        metrics.up.get_or_create(&Metrics::target("gone")).set(1);
        metrics
            .scrapes
            .get_or_create(&Metrics::target("gone"))
            .inc();
        metrics.forget_target("gone");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("gone"), "{text}");
    }
}
