//! The worker's reports to its Lease (named like its pod): a heartbeat, the assignment
//! epoch it has applied, and a summary of its targets' health.
//!
//! The operator creates the Lease with metadata only; the worker fills the spec and its
//! own annotations with a read and a replace (its Role grants `get` and `update` on the
//! Lease, nothing else), every [`HEARTBEAT_SECONDS`] and at once after each
//! acknowledgement. Other annotations, labels and owner references are left as they
//! are. Nothing written here comes from a credential: counts, epochs and target names.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dbcollector_crds::annotations::{
    ACKED_EPOCH, CAPABILITIES_MISSING, HEARTBEAT_SECONDS, MAX_REPORTED_NAMES, TARGETS,
    TARGETS_DOWN, TARGETS_DOWN_NAMES,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::telemetry::Metrics;

/// How many times one report is retried when the Lease changed between read and write.
const CONFLICT_ATTEMPTS: u32 = 5;

/// What the worker tells the reporter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The epoch of the last assignment applied, once one is.
    pub acked: Option<u64>,
    /// The targets collected, sorted.
    pub targets: Arc<[Arc<str>]>,
}

/// One report as written to the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Summary {
    acked: Option<u64>,
    targets: usize,
    /// Every target whose latest scrape failed, sorted.
    down: Vec<Arc<str>>,
    capabilities_missing: usize,
}

impl Summary {
    /// The report with the targets' health as the self-metrics show it now.
    fn of(report: &Report, metrics: &Metrics) -> Self {
        let down = report
            .targets
            .iter()
            .filter(|t| {
                // A target not scraped yet has no `up` and is not counted as down.
                let up = metrics.up.get(&Metrics::target(t));
                up.is_some_and(|up| up.get() == 0)
            })
            .cloned()
            .collect();
        Self {
            acked: report.acked,
            targets: report.targets.len(),
            down,
            capabilities_missing: capabilities_missing(metrics),
        }
    }
}

/// The number of (target, capability) pairs reported missing. The family offers no
/// iteration, so its series are counted in its text encoding (a few lines, every
/// heartbeat).
fn capabilities_missing(metrics: &Metrics) -> usize {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("missing", "", metrics.capability_missing.clone());
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        return 0;
    }
    text.lines().filter(|line| !line.starts_with('#')).count()
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// The Lease could not be read.
    #[error("reading lease {namespace}/{name}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// The Lease could not be replaced.
    #[error("updating lease {namespace}/{name}")]
    Replace {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    /// Every attempt met a newer version of the Lease.
    #[error("lease {namespace}/{name} changed during each of {CONFLICT_ATTEMPTS} updates")]
    Conflicts { namespace: String, name: String },
}

impl Error {
    /// Whether the Lease does not exist (yet): the operator creates it.
    fn is_missing(&self) -> bool {
        let source = match self {
            Self::Get { source, .. } | Self::Replace { source, .. } => source,
            Self::Conflicts { .. } => return false,
        };
        matches!(source, kube::Error::Api(status) if status.is_not_found())
    }
}

/// Writes the reports of the worker whose pod and Lease are `namespace/name`.
pub struct Reporter {
    api: Api<Lease>,
    namespace: String,
    name: String,
    metrics: Arc<Metrics>,
    /// Whether the last write failed, so a failing streak is logged once.
    failing: bool,
}

impl Reporter {
    /// A reporter for the Lease `namespace/name`, holding it as `name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            metrics,
            failing: false,
        }
    }

    /// Reports every [`HEARTBEAT_SECONDS`], and at once when `report` carries a new
    /// acknowledged epoch, until `cancel` fires.
    pub fn spawn(
        mut self,
        mut report: watch::Receiver<Report>,
        cancel: CancellationToken,
    ) -> JoinHandle<()> {
        let period = Duration::from_secs(HEARTBEAT_SECONDS.unsigned_abs().into());
        tokio::spawn(async move {
            let mut heartbeat = tokio::time::interval(period);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut written_ack = None;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = heartbeat.tick() => {}
                    changed = report.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        // Other changes wait for the next heartbeat.
                        if report.borrow().acked == written_ack {
                            continue;
                        }
                    }
                }
                let summary = Summary::of(&report.borrow_and_update(), &self.metrics);
                if self.report(&summary).await {
                    written_ack = summary.acked;
                }
            }
        })
    }

    /// Writes `summary`; true when it was written. Failures are logged when a failing
    /// streak starts, then at debug.
    async fn report(&mut self, summary: &Summary) -> bool {
        match self.write(summary).await {
            Ok(()) => {
                if self.failing {
                    info!(lease = %self.name, "lease reports resumed");
                }
                self.failing = false;
                debug!(
                    acked = summary.acked,
                    targets = summary.targets,
                    down = summary.down.len(),
                    "lease renewed"
                );
                true
            }
            Err(error) => {
                let missing = error.is_missing();
                let error: &dyn std::error::Error = &error;
                if self.failing {
                    debug!(error, "lease report failed again");
                } else if missing {
                    warn!(
                        error,
                        "lease not found; reports resume once the operator creates it"
                    );
                } else {
                    warn!(error, "lease report failed; retrying at the next heartbeat");
                }
                self.failing = true;
                false
            }
        }
    }

    /// Reads the Lease, fills in the report and replaces it, again on a conflict.
    async fn write(&self, summary: &Summary) -> Result<(), Error> {
        for _ in 0..CONFLICT_ATTEMPTS {
            let mut lease = self
                .api
                .get(&self.name)
                .await
                .map_err(|source| Error::Get {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    source,
                })?;
            fill(&mut lease, &self.name, Timestamp::now(), summary);
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                Err(source) => {
                    return Err(Error::Replace {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        source,
                    })
                }
            }
        }
        Err(Error::Conflicts {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        })
    }
}

/// Writes the heartbeat and `summary` into `lease`, held by `holder`, leaving everything
/// else as it is.
fn fill(lease: &mut Lease, holder: &str, now: Timestamp, summary: &Summary) {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(holder) {
        if spec.holder_identity.is_some() {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        spec.holder_identity = Some(holder.to_owned());
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(3 * HEARTBEAT_SECONDS);

    let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut set = |key: &str, value: String| annotations.insert(key.to_owned(), value);
    if let Some(epoch) = summary.acked {
        set(ACKED_EPOCH, epoch.to_string());
    }
    set(TARGETS, summary.targets.to_string());
    set(TARGETS_DOWN, summary.down.len().to_string());
    set(
        CAPABILITIES_MISSING,
        summary.capabilities_missing.to_string(),
    );
    if summary.down.is_empty() {
        annotations.remove(TARGETS_DOWN_NAMES);
    } else {
        let names: Vec<&str> = summary
            .down
            .iter()
            .take(MAX_REPORTED_NAMES)
            .map(|n| &**n)
            .collect();
        annotations.insert(TARGETS_DOWN_NAMES.to_owned(), names.join(","));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::CapabilityLabels;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn summary(acked: Option<u64>, down: &[&str]) -> Summary {
        Summary {
            acked,
            targets: 20,
            down: down.iter().map(|&n| Arc::from(n)).collect(),
            capabilities_missing: 2,
        }
    }

    fn created_by_the_operator() -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("orders-0".into()),
                annotations: Some(BTreeMap::from([("note".into(), "kept".into())])),
                labels: Some(BTreeMap::from([("app".into(), "dbcollector".into())])),
                owner_references: Some(vec![OwnerReference {
                    name: "orders".into(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: None,
        }
    }

    #[test]
    fn a_report_fills_the_spec_and_keeps_the_operators_metadata() {
        let mut lease = created_by_the_operator();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        fill(&mut lease, "orders-0", now, &summary(Some(7), &[]));

        let spec = lease.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("orders-0"));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
        assert_eq!(spec.lease_duration_seconds, Some(3 * HEARTBEAT_SECONDS));
        assert_eq!(spec.lease_transitions, None);
        let a = lease.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[ACKED_EPOCH], "7");
        assert_eq!(a[TARGETS], "20");
        assert_eq!(a[TARGETS_DOWN], "0");
        assert_eq!(a[CAPABILITIES_MISSING], "2");
        assert!(!a.contains_key(TARGETS_DOWN_NAMES));
        assert_eq!(a["note"], "kept");
        assert!(lease.metadata.labels.as_ref().unwrap().contains_key("app"));
        assert_eq!(lease.metadata.owner_references.as_ref().unwrap().len(), 1);

        // A renewal moves only the renew time.
        let later = Timestamp::from_second(1_700_000_005).unwrap();
        fill(&mut lease, "orders-0", later, &summary(Some(7), &[]));
        let spec = lease.spec.as_ref().unwrap();
        assert_eq!(spec.renew_time, Some(MicroTime(later)));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
    }

    #[test]
    fn nothing_is_acknowledged_before_an_assignment_is_applied() {
        let mut lease = created_by_the_operator();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        fill(&mut lease, "orders-0", now, &summary(None, &[]));
        let a = lease.metadata.annotations.as_ref().unwrap();
        assert!(!a.contains_key(ACKED_EPOCH));
        assert_eq!(a[TARGETS], "20");
    }

    #[test]
    fn down_targets_are_counted_and_at_most_ten_are_named_in_order() {
        let mut lease = created_by_the_operator();
        let names: Vec<String> = (0..12).map(|i| format!("db{i:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        fill(&mut lease, "orders-0", now, &summary(Some(1), &names));
        let a = lease.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[TARGETS_DOWN], "12");
        assert_eq!(a[TARGETS_DOWN_NAMES], names[..MAX_REPORTED_NAMES].join(","));

        // Once they recover, the names go.
        fill(&mut lease, "orders-0", now, &summary(Some(1), &[]));
        let a = lease.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[TARGETS_DOWN], "0");
        assert!(!a.contains_key(TARGETS_DOWN_NAMES));
    }

    #[test]
    fn a_new_holder_counts_a_transition() {
        let mut lease = created_by_the_operator();
        lease.spec = Some(LeaseSpec {
            holder_identity: Some("orders-0-old".into()),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        });
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        fill(&mut lease, "orders-0", now, &summary(None, &[]));
        let spec = lease.spec.as_ref().unwrap();
        assert_eq!(spec.lease_transitions, Some(2));
        assert_eq!(spec.acquire_time, Some(MicroTime(now)));
    }

    #[test]
    fn only_targets_whose_last_scrape_failed_are_down() {
        let metrics = Metrics::unregistered();
        metrics.up.get_or_create(&Metrics::target("b-down")).set(0);
        metrics.up.get_or_create(&Metrics::target("a-up")).set(1);
        let report = Report {
            acked: Some(3),
            // "c-new" has not been scraped yet.
            targets: ["a-up", "b-down", "c-new"].map(Arc::from).into(),
        };
        let s = Summary::of(&report, &metrics);
        assert_eq!(s.targets, 3);
        assert_eq!(s.down, vec![Arc::<str>::from("b-down")]);
        assert_eq!(s.acked, Some(3));
        assert_eq!(s.capabilities_missing, 0);
    }

    #[test]
    fn missing_capabilities_are_counted_per_target_and_capability() {
        let metrics = Metrics::unregistered();
        for (target, capability) in [
            ("a", "pg_stat_statements"),
            ("a", "monitor"),
            ("b", "monitor"),
        ] {
            let labels = CapabilityLabels {
                target: target.into(),
                capability: capability.into(),
            };
            metrics.capability_missing.get_or_create(&labels).set(1);
        }
        assert_eq!(capabilities_missing(&metrics), 3);
    }
}
