//! Sharding end to end: the operator binary and a fleet of worker processes (one per
//! worker pod, run as a kubelet would) on a real API server, collecting 22 targets on two
//! PostgreSQL servers and one MariaDB server every 2 s into an OTLP receiver.
//!
//! What reaches the receiver is the evidence: each target's `dbcollector.up` points and
//! each server endpoint's server-wide families, with the worker that exported them (the
//! `x-dbcollector-worker` header), counted in intervals from their timestamps with a
//! tolerance of half an interval (see `dbcollector_tests::coverage`).
//!
//! - Steady state: every target, and every endpoint's server-wide families, reported by
//!   exactly one worker, the one the status assigns it to.
//! - Scaling 3 → 5 → 2 (`kubectl scale`): no target goes uncollected for more than one
//!   interval, none is collected twice for more than one interval, and the targets that
//!   move stay within the balancing bound.
//! - A HorizontalPodAutoscaler (autoscaling/v2beta2, min = max = 4) scales the collector
//!   through its scale subresource.
//! - A worker killed and restarted gets its slots back; no other worker's target moves.
//! - Ten workers collect every target exactly once.
//!
//! The scenarios share one control plane and the database servers, and run one at a time
//! (each runs up to ten worker processes on a machine that may have two cores).

mod fleet_estate;
mod operator_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use dbcollector_crds::shard::{slot_of, DEFAULT_SHARDS};
use dbcollector_crds::status::{AVAILABLE, PROGRESSING};
use dbcollector_crds::DatabaseCollectorStatus;
use dbcollector_tests::coverage::{self, Counting, Coverage, Window};
use dbcollector_tests::{
    assignment_table, eventually, Fleet, FleetOptions, OtlpOptions, OtlpReceiver,
};
use fleet_estate::*;
use kube::Client;
use operator_support::*;
use serde_json::json;
use tokio::sync::Mutex;

/// How long a worker fleet may take to settle after a change.
const SETTLE: Duration = Duration::from_secs(120);

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// One scenario's world: a namespace with a collector, the fleet and the receiver.
struct Scenario {
    ns: String,
    name: String,
    client: Client,
    fleet: Fleet,
    receiver: OtlpReceiver,
    targets: Vec<String>,
    endpoints: Vec<String>,
    counting: Counting,
}

impl Scenario {
    /// Creates namespace `ns`, starts the receiver and the fleet, creates collector
    /// `orders` with `replicas` workers, and waits until it settles.
    async fn start(ns: &str, replicas: usize) -> Self {
        let plane = plane().await;
        let servers = servers().await;
        plane.create_namespace(ns).await.unwrap();
        let receiver = OtlpReceiver::start(OtlpOptions::default()).await.unwrap();
        let fleet = Fleet::start(plane, FleetOptions::new(ns)).await.unwrap();

        let client = plane.client();
        let spec = json!({
            "replicas": replicas,
            "interval": "2s",
            "databases": targets(servers),
            "exporter": { "endpoint": receiver.grpc_endpoint(), "protocol": "grpc" },
        });
        create_collector(&client, ns, "orders", spec).await;
        let scenario = Self {
            ns: ns.to_owned(),
            name: "orders".to_owned(),
            client,
            fleet,
            receiver,
            targets: targets(servers)
                .iter()
                .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
                .collect(),
            endpoints: endpoints(servers),
            counting: Counting::new(INTERVAL),
        };
        scenario.settle(replicas).await;
        scenario
    }

    /// Waits until `replicas` workers run ready, the collector is Available and not
    /// Progressing, and every slot is owned and acknowledged; returns the status.
    async fn settle(&self, replicas: usize) -> DatabaseCollectorStatus {
        let ready = self.fleet.wait_ready(replicas, SETTLE).await;
        if let Err(e) = ready {
            panic!("{e:#}\n{}", self.diagnostics().await);
        }
        let settled = eventually("the collector to settle", SETTLE, || async {
            let status = self.status().await;
            let pods = worker_pods(&self.client, &self.ns, &self.name).await;
            let done = pods.len() == replicas
                && status.ready_replicas == replicas as i32
                && status.unowned_slots == 0
                && condition_is(&status, AVAILABLE, "True")
                && !condition_is(&status, PROGRESSING, "True")
                && assignment_consistent(&status, DEFAULT_SHARDS, &pods);
            Ok(done.then_some(status))
        })
        .await;
        match settled {
            Ok(status) => status,
            Err(e) => panic!("{e:#}\n{}", self.diagnostics().await),
        }
    }

    async fn status(&self) -> DatabaseCollectorStatus {
        collectors(&self.client, &self.ns)
            .get(&self.name)
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    /// `kubectl scale dbc orders --replicas=N`, as a user would.
    async fn scale(&self, replicas: usize) {
        plane()
            .await
            .kubectl_ok([
                "scale",
                "-n",
                &self.ns,
                "dbc",
                &self.name,
                &format!("--replicas={replicas}"),
            ])
            .await
            .unwrap();
    }

    /// The targets' coverage over `window`.
    fn targets_coverage(&self, window: Window) -> Coverage {
        let samples = coverage::target_samples(&self.receiver.requests());
        Coverage::count(&samples, self.counting, window, self.targets.clone())
    }

    /// The server endpoints' coverage (server-wide families) over `window`.
    fn endpoints_coverage(&self, window: Window) -> Coverage {
        let samples = coverage::endpoint_samples(&self.receiver.requests());
        Coverage::count(&samples, self.counting, window, self.endpoints.clone())
    }

    /// Waits two intervals (for the last handoffs to show), then `intervals` more, and
    /// checks that every target and endpoint had exactly one worker over them, the one
    /// the status assigns it; returns each target's worker.
    async fn steady(&self, intervals: u32) -> BTreeMap<String, String> {
        tokio::time::sleep(INTERVAL * 2).await;
        let from = SystemTime::now();
        tokio::time::sleep(INTERVAL * intervals).await;
        let window = Window::between(from, SystemTime::now());

        let targets = self.targets_coverage(window);
        let endpoints = self.endpoints_coverage(window);
        let status = self.status().await;
        let context = || {
            format!(
                "{}\n{}\n{}",
                targets.render(),
                endpoints.render(),
                assignment_table(&status)
            )
        };
        assert!(
            targets.not_exactly_once().is_empty(),
            "targets without exactly one worker: {:?}\n{}",
            targets.not_exactly_once(),
            context()
        );
        assert!(
            endpoints.not_exactly_once().is_empty(),
            "endpoints whose server-wide families had not exactly one worker: {:?}\n{}",
            endpoints.not_exactly_once(),
            context()
        );
        let violations = targets.violations(1, 1);
        assert!(violations.is_empty(), "{violations:#?}\n{}", context());

        let owners: BTreeMap<String, String> = targets
            .last_workers()
            .into_iter()
            .map(|(k, w)| (k.to_owned(), w.to_owned()))
            .collect();
        assert_eq!(
            owners,
            owners_in_status(&status, &self.targets),
            "the workers that collect are not those the status assigns\n{}",
            context()
        );
        owners
    }

    /// Scales from `from` to `to` workers and checks the handoff: over the whole change,
    /// no target (nor endpoint) missed more than one interval or was collected twice for
    /// more than one, and the moved targets stay within the balancing bound. Returns each
    /// target's worker after the change.
    async fn scale_and_check(
        &self,
        before: &BTreeMap<String, String>,
        from: usize,
        to: usize,
    ) -> BTreeMap<String, String> {
        let started = SystemTime::now();
        self.scale(to).await;
        self.settle(to).await;
        let after = self.steady(5).await;
        let window = Window::between(started, SystemTime::now());

        let targets = self.targets_coverage(window);
        let endpoints = self.endpoints_coverage(window);
        let mut violations = targets.violations(1, 1);
        violations.extend(endpoints.violations(1, 1));
        assert!(
            violations.is_empty(),
            "scaling {from} → {to}: {violations:#?}\n{}\n{}",
            targets.render(),
            endpoints.render()
        );

        let moved: Vec<&String> = before
            .iter()
            .filter(|(target, worker)| after.get(*target) != Some(*worker))
            .map(|(target, _)| target)
            .collect();
        let bound = move_bound(&self.targets, from, to);
        assert!(
            bound < self.targets.len() as f64,
            "the bound {bound:.1} cannot fail with {} targets: choose other target names",
            self.targets.len()
        );
        assert!(
            moved.len() as f64 <= bound,
            "scaling {from} → {to} moved {} targets, more than the bound {bound:.1}: \
             {moved:?}\n{}",
            moved.len(),
            targets.render()
        );
        eprintln!(
            "scaling {from} → {to}: {} of {} targets moved (bound {bound:.1}), longest gap \
             {:?}, longest double collection {:?}",
            moved.len(),
            self.targets.len(),
            targets.longest_gap(),
            targets.longest_overlap()
        );
        after
    }

    /// The fleet's and the control plane's view, for failure messages.
    async fn diagnostics(&self) -> String {
        let status = self.status().await;
        let mut out = format!(
            "{}\nworkers: {:?}\n--- operator log ---\n{}",
            assignment_table(&status),
            self.fleet.workers().await,
            self.fleet.operator_log_tail(30),
        );
        for pod in self.fleet.workers().await.keys() {
            out.push_str(&format!(
                "\n--- {pod} log ---\n{}",
                self.fleet.log_tail(pod, 15)
            ));
        }
        out
    }

    async fn stop(self) {
        self.fleet.stop().await.unwrap();
    }
}

fn condition_is(status: &DatabaseCollectorStatus, type_: &str, value: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == value)
}

/// The pod the status assigns each target to, from the targets' slots and the pods'
/// ranges.
fn owners_in_status(
    status: &DatabaseCollectorStatus,
    targets: &[String],
) -> BTreeMap<String, String> {
    targets
        .iter()
        .filter_map(|target| {
            let slot = slot_of(target, DEFAULT_SHARDS);
            let owner = status.assignment.iter().find(|a| a.ranges.contains(slot))?;
            Some((target.clone(), owner.pod.clone()))
        })
        .collect()
}

/// The most targets of one slot: the granularity in which targets move.
fn slot_weight(targets: &[String], shards: u32) -> usize {
    let mut per_slot: BTreeMap<u32, usize> = BTreeMap::new();
    for target in targets {
        *per_slot.entry(slot_of(target, shards)).or_default() += 1;
    }
    per_slot.into_values().max().unwrap_or(0)
}

/// The most targets a change from `from` to `to` workers may move:
/// `1.1·T·|N'−N|/max(N,N') + w·|N'−N| + 2`, with `T` targets and `w` the slot weight.
fn move_bound(targets: &[String], from: usize, to: usize) -> f64 {
    let t = targets.len() as f64;
    let change = from.abs_diff(to) as f64;
    let w = slot_weight(targets, DEFAULT_SHARDS) as f64;
    1.1 * t * change / from.max(to) as f64 + w * change + 2.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_three_to_five_to_two_keeps_every_target_collected_about_once() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::start("shard-scale", 3).await;
    let before = scenario.steady(5).await;
    let workers: BTreeSet<&String> = before.values().collect();
    assert_eq!(workers.len(), 3, "every worker collects: {before:?}");

    let five = scenario.scale_and_check(&before, 3, 5).await;
    assert_eq!(five.values().collect::<BTreeSet<_>>().len(), 5, "{five:?}");
    let two = scenario.scale_and_check(&five, 5, 2).await;
    assert_eq!(two.values().collect::<BTreeSet<_>>().len(), 2, "{two:?}");
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hpa_with_min_and_max_four_scales_the_collector_through_its_scale_subresource() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::start("shard-hpa", 2).await;
    let before = scenario.steady(3).await;

    // The v1.20 autoscaler brings replicas below minReplicas up to it without reading a
    // metric (there is no metrics API here); its metric only matters within the range.
    let hpa = json!({
        "apiVersion": "autoscaling/v2beta2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": { "name": "orders-fixed", "namespace": scenario.ns },
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "dbcollector.dev/v1alpha1",
                "kind": "DatabaseCollector",
                "name": scenario.name,
            },
            "minReplicas": 4,
            "maxReplicas": 4,
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": { "type": "Utilization", "averageUtilization": 80 },
                },
            }],
        },
    });
    let plane = plane().await;
    let out = plane
        .kubectl_with_input(["apply", "-f", "-"], hpa.to_string().as_bytes())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let api = collectors(&scenario.client, &scenario.ns);
    let scaled = eventually(
        "the autoscaler to set spec.replicas to 4",
        SETTLE,
        || async {
            let dc = api.get(&scenario.name).await?;
            Ok((dc.spec.replicas == 4).then_some(()))
        },
    )
    .await;
    if let Err(e) = scaled {
        let log = std::fs::read_to_string(plane.dir().join("kube-controller-manager.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("horizontal") || l.contains("orders-fixed"))
            .collect();
        let hpa = plane
            .kubectl([
                "get",
                "hpa",
                "-n",
                &scenario.ns,
                "orders-fixed",
                "-o",
                "yaml",
            ])
            .await
            .unwrap();
        panic!(
            "{e:#}\n--- the HPA ---\n{}\n--- its controller's log ---\n{}",
            String::from_utf8_lossy(&hpa.stdout),
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    let status = scenario.settle(4).await;
    assert_eq!(status.replicas, 4);
    let after = scenario.steady(3).await;
    let moved = before
        .iter()
        .filter(|(t, w)| after.get(*t) != Some(*w))
        .count();
    assert!(
        moved as f64 <= move_bound(&scenario.targets, 2, 4),
        "{moved} moved"
    );

    plane
        .kubectl_ok(["delete", "hpa", "-n", &scenario.ns, "orders-fixed"])
        .await
        .unwrap();
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_gets_its_slots_back_and_no_other_target_moves() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::start("shard-kill", 3).await;
    let before = scenario.steady(3).await;
    let status_before = scenario.status().await;
    let victim = "orders-1".to_owned();
    let ranges_before = status_before
        .assignment
        .iter()
        .find(|a| a.pod == victim)
        .map(|a| a.ranges.clone())
        .unwrap();

    let started = SystemTime::now();
    scenario.fleet.kill_worker(&victim).await.unwrap();
    tokio::time::sleep(INTERVAL * 3).await;
    scenario.fleet.restart_worker(&victim).await.unwrap();
    let status = scenario.settle(3).await;
    let after = scenario.steady(3).await;
    let window = Window::between(started, SystemTime::now());

    // Its slots are its own again, applied and acknowledged at the current epoch.
    let entry = status.assignment.iter().find(|a| a.pod == victim).unwrap();
    assert_eq!(entry.ranges, ranges_before, "{}", assignment_table(&status));
    assert_eq!(entry.acked_epoch, Some(entry.epoch));
    assert_eq!(after, before, "a target changed workers");

    // The other workers' targets never had another worker, nor a gap.
    let coverage = scenario.targets_coverage(window);
    for (target, worker) in before.iter().filter(|(_, w)| **w != victim) {
        let c = &coverage.keys[target];
        assert_eq!(
            c.workers(),
            BTreeSet::from([worker.as_str()]),
            "{target}\n{}",
            coverage.render()
        );
        assert!(c.longest_gap() <= 1, "{target}\n{}", coverage.render());
    }
    let starts = scenario.fleet.workers().await[&victim].starts;
    assert_eq!(starts, 2, "started, killed, restarted");
    scenario.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_workers_collect_every_target_exactly_once() {
    let _serial = SERIAL.lock().await;
    let scenario = Scenario::start("shard-ten", 10).await;
    let owners = scenario.steady(5).await;
    assert_eq!(owners.len(), scenario.targets.len());
    let per_worker = owners.values().fold(BTreeMap::new(), |mut m, w| {
        *m.entry(w.clone()).or_insert(0) += 1;
        m
    });
    let status = scenario.status().await;
    for a in &status.assignment {
        assert_eq!(
            per_worker.get(&a.pod).copied().unwrap_or(0),
            a.targets as usize,
            "{}",
            assignment_table(&status)
        );
    }
    scenario.stop().await;
}
