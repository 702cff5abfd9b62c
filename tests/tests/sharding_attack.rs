//! Sharding under faults and bad inputs (a tester's scratch file): the operator binary and
//! a fleet of worker processes on a real API server, collecting 22 targets on two
//! PostgreSQL servers and one MariaDB server every 2 s into an OTLP receiver, while the
//! fleet is scaled in bursts, pods, Leases and the operator are deleted or killed, and
//! annotations are overwritten by hand.
//!
//! Each scenario watches the status all along ([`Watch`]: every slot owned at most once,
//! `unownedSlots` right, the epoch never going back) and counts the targets' collection
//! from the data points' timestamps (a gap or a double collection longer than one interval
//! is a violation). Findings are printed with `eprintln!` and asserted.

mod fleet_estate;
mod operator_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use dbcollector_crds::annotations::{ACKED_EPOCH, ASSIGNMENT_EPOCH, SHARD_RANGES, SHARD_SPACE};
use dbcollector_crds::shard::{slot_of, Ranges, DEFAULT_SHARDS};
use dbcollector_crds::status::{AVAILABLE, DEGRADED, PROGRESSING};
use dbcollector_crds::DatabaseCollectorStatus;
use dbcollector_tests::coverage::{self, Counting, Coverage, Window};
use dbcollector_tests::{
    assignment_table, eventually, Fleet, FleetOptions, OtlpOptions, OtlpReceiver,
};
use fleet_estate::*;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use operator_support::*;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// How long a fleet may take to settle after a change.
const SETTLE: Duration = Duration::from_secs(150);

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Polls the status every 250 ms and records every inconsistency: a slot owned by two
/// pods, `unownedSlots` not the complement of the owned slots, the epoch going back.
struct Watch {
    task: JoinHandle<()>,
    found: Arc<StdMutex<Vec<String>>>,
    epochs: Arc<StdMutex<Vec<u64>>>,
    reasons: Arc<StdMutex<BTreeSet<String>>>,
}

impl Watch {
    fn start(client: Client, ns: &str) -> Self {
        let found = Arc::new(StdMutex::new(Vec::new()));
        let epochs = Arc::new(StdMutex::new(Vec::new()));
        let reasons = Arc::new(StdMutex::new(BTreeSet::new()));
        let api = collectors(&client, ns);
        let (f, e, r) = (found.clone(), epochs.clone(), reasons.clone());
        let task = tokio::spawn(async move {
            let mut last_epoch = 0;
            loop {
                if let Ok(dc) = api.get("orders").await {
                    let status = dc.status.unwrap_or_default();
                    let mut problems = inconsistencies(&status, DEFAULT_SHARDS);
                    if status.assignment_epoch < last_epoch {
                        problems.push(format!(
                            "epoch went back from {last_epoch} to {}",
                            status.assignment_epoch
                        ));
                    }
                    last_epoch = last_epoch.max(status.assignment_epoch);
                    e.lock().unwrap().push(status.assignment_epoch);
                    for c in &status.conditions {
                        r.lock()
                            .unwrap()
                            .insert(format!("{}={} {}", c.type_, c.status, c.reason));
                    }
                    if !problems.is_empty() {
                        f.lock()
                            .unwrap()
                            .push(format!("{problems:?}\n{}", assignment_table(&status)));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self {
            task,
            found,
            epochs,
            reasons,
        }
    }

    /// The inconsistencies seen (deduplicated, first 5) and every condition reason seen.
    fn finish(self) -> (Vec<String>, BTreeSet<String>, Vec<u64>) {
        self.task.abort();
        let mut found = self.found.lock().unwrap().clone();
        found.dedup();
        found.truncate(5);
        let reasons = self.reasons.lock().unwrap().clone();
        let mut epochs = self.epochs.lock().unwrap().clone();
        epochs.dedup();
        (found, reasons, epochs)
    }
}

/// Slots owned twice, and a wrong `unownedSlots`.
fn inconsistencies(status: &DatabaseCollectorStatus, shards: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut union = Ranges::new();
    for (i, a) in status.assignment.iter().enumerate() {
        for b in &status.assignment[i + 1..] {
            if !a.ranges.is_disjoint(&b.ranges) {
                out.push(format!(
                    "{} and {} both own {}",
                    a.pod,
                    b.pod,
                    a.ranges.intersection(&b.ranges)
                ));
            }
        }
        union = union.union(&a.ranges);
    }
    let unowned = u64::from(shards) - union.len();
    if u64::from(status.unowned_slots) != unowned && !status.assignment.is_empty() {
        out.push(format!(
            "unownedSlots {} but {unowned} slots owned by nobody",
            status.unowned_slots
        ));
    }
    out
}

struct Scenario {
    ns: String,
    client: Client,
    fleet: Fleet,
    receiver: OtlpReceiver,
    targets: Vec<String>,
    counting: Counting,
}

impl Scenario {
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
            client,
            fleet,
            receiver,
            targets: names(&targets(servers)),
            counting: Counting::new(INTERVAL),
        };
        scenario.settle(replicas).await;
        scenario
    }

    async fn settle(&self, replicas: usize) -> DatabaseCollectorStatus {
        let started = std::time::Instant::now();
        if let Err(e) = self.fleet.wait_ready(replicas, SETTLE).await {
            panic!("{e:#}\n{}", self.diagnostics().await);
        }
        let settled = eventually("the collector to settle", SETTLE, || async {
            let status = self.status().await;
            let pods = worker_pods(&self.client, &self.ns, "orders").await;
            let done = pods.len() == replicas
                && status.ready_replicas == replicas as i32
                && status.unowned_slots == 0
                && is(&status, AVAILABLE, "True")
                && !is(&status, PROGRESSING, "True")
                && assignment_consistent(&status, DEFAULT_SHARDS, &pods);
            Ok(done.then_some(status))
        })
        .await;
        match settled {
            Ok(status) => {
                eprintln!(
                    "[{}] settled with {replicas} in {:?}",
                    self.ns,
                    started.elapsed()
                );
                status
            }
            Err(e) => panic!("{e:#}\n{}", self.diagnostics().await),
        }
    }

    async fn status(&self) -> DatabaseCollectorStatus {
        collectors(&self.client, &self.ns)
            .get("orders")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
    }

    async fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        let out = plane().await.kubectl(all.clone()).await.unwrap();
        format!(
            "$ kubectl {}\n{}{}",
            all.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    async fn scale(&self, replicas: usize) -> String {
        self.kubectl(&["scale", "dbc", "orders", &format!("--replicas={replicas}")])
            .await
    }

    fn coverage(&self, window: Window) -> Coverage {
        let samples = coverage::target_samples(&self.receiver.requests());
        Coverage::count(&samples, self.counting, window, self.targets.clone())
    }

    /// Each target's worker over the last `intervals` intervals, after two to let
    /// handoffs show.
    async fn owners(&self, intervals: u32) -> BTreeMap<String, String> {
        tokio::time::sleep(INTERVAL * 2).await;
        let from = SystemTime::now();
        tokio::time::sleep(INTERVAL * intervals).await;
        let c = self.coverage(Window::between(from, SystemTime::now()));
        c.last_workers()
            .into_iter()
            .map(|(k, w)| (k.to_owned(), w.to_owned()))
            .collect()
    }

    /// Reports the gaps and overlaps since `from` and returns the violations' count.
    fn report(&self, what: &str, from: SystemTime) -> usize {
        let c = self.coverage(Window::between(from, SystemTime::now()));
        let violations = c.violations(1, 1);
        eprintln!(
            "[{}] {what}: longest gap {:?}, longest overlap {:?}, {} violations",
            self.ns,
            c.longest_gap(),
            c.longest_overlap(),
            violations.len()
        );
        if !violations.is_empty() {
            eprintln!("{}", c.render());
        }
        violations.len()
    }

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
                self.fleet.log_tail(pod, 10)
            ));
        }
        out
    }

    async fn stop(self) {
        if let Err(e) = self.fleet.stop().await {
            eprintln!("[{}] fleet stop: {e:#}", self.ns);
        }
    }
}

fn is(status: &DatabaseCollectorStatus, type_: &str, value: &str) -> bool {
    condition(status, type_).is_some_and(|c| c.status == value)
}

fn conditions(status: &DatabaseCollectorStatus) -> String {
    status
        .conditions
        .iter()
        .map(|c| format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pid of the process whose command line holds `needle`.
fn pid_with_arg(needle: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == needle.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

async fn worker_pid(fleet: &Fleet, pod: &str) -> i32 {
    let port = fleet.workers().await[pod].port;
    pid_with_arg(&format!("--listen=127.0.0.1:{port}")).unwrap()
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a pid of a process this test started.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

async fn lease_annotate(client: &Client, ns: &str, lease: &str, key: &str, value: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let patch = json!({ "metadata": { "annotations": { key: value } } });
    leases
        .patch(lease, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Scaling 1 → 6 → 1 → 4 a second apart: nothing uncollected, status consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_scaling_one_six_one_four_keeps_every_target_collected() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-rapid", 1).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    for n in [6, 1, 4] {
        eprintln!("{}", s.scale(n).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.settle(4).await;
    tokio::time::sleep(INTERVAL * 3).await;
    let violations = s.report("1 → 6 → 1 → 4", from);
    let (found, reasons, epochs) = watch.finish();
    eprintln!("reasons seen: {reasons:?}\nepochs: {epochs:?}");
    eprintln!("{}", assignment_table(&s.status().await));
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert_eq!(violations, 0);
}

/// `kubectl scale --replicas=0`, then back to 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_to_zero_and_back() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-zero", 2).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    eprintln!("{}", s.scale(0).await);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let status = s.status().await;
    let sets: Api<StatefulSet> = Api::namespaced(s.client.clone(), &s.ns);
    let set = sets.get("orders").await.ok();
    let dc = collectors(&s.client, &s.ns).get("orders").await.unwrap();
    eprintln!(
        "after scale 0 (20 s): spec.replicas {}, statefulset replicas {:?}, live pods {:?}\n{}",
        dc.spec.replicas,
        set.and_then(|s| s.spec).and_then(|s| s.replicas),
        s.fleet.live_pods().await,
        assignment_table(&status)
    );
    eprintln!("{}", s.kubectl(&["get", "dbc"]).await);
    let c = s.coverage(Window::between(
        SystemTime::now() - Duration::from_secs(8),
        SystemTime::now(),
    ));
    eprintln!("last 8 s at 0 replicas:\n{}", c.render());
    eprintln!("{}", s.scale(2).await);
    s.settle(2).await;
    let violations = s.report("2 → 0 → 2", from);
    let (found, reasons, _) = watch.finish();
    eprintln!("reasons seen: {reasons:?}");
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert_eq!(violations, 0);
}

/// A worker pod deleted (the StatefulSet recreates it) while a scale-up is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_during_a_handoff_leaves_no_target_uncollected() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-delpod", 2).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    eprintln!("{}", s.scale(4).await);
    eventually("a grant in flight", SETTLE, || async {
        let st = s.status().await;
        Ok(st
            .assignment
            .iter()
            .any(|a| !a.granted.is_empty())
            .then_some(()))
    })
    .await
    .unwrap();
    eprintln!("in flight:\n{}", assignment_table(&s.status().await));
    eprintln!(
        "{}",
        s.kubectl(&["delete", "pod", "orders-0", "--wait=false"])
            .await
    );
    s.settle(4).await;
    tokio::time::sleep(INTERVAL * 3).await;
    let violations = s.report("2 → 4 with orders-0 deleted", from);
    let (found, reasons, _) = watch.finish();
    eprintln!("reasons seen: {reasons:?}");
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert_eq!(violations, 0);
}

/// The operator SIGKILLed mid-handoff, another started 5 s later: the epoch never goes
/// back, no slot is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_handoff_is_replaced_without_losing_a_slot() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-operator", 3).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    eprintln!("{}", s.scale(5).await);
    eventually("a grant in flight", SETTLE, || async {
        let st = s.status().await;
        Ok(st
            .assignment
            .iter()
            .any(|a| !a.granted.is_empty())
            .then_some(()))
    })
    .await
    .unwrap();
    let pid = pid_with_arg(&format!("--listen=127.0.0.1:{}", s.fleet.operator_port())).unwrap();
    signal(pid, libc::SIGKILL);
    let at_kill = s.status().await;
    eprintln!("operator killed with:\n{}", assignment_table(&at_kill));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let plane = plane().await;
    let mut opts = options(&s.ns, "replacement");
    opts.default_image = dbcollector_operator::DEFAULT_IMAGE.to_owned();
    let replacement = start_operator(plane.config(), opts);
    replacement.wait_leading().await;
    let after = s.settle(5).await;
    tokio::time::sleep(INTERVAL * 3).await;
    // Without an operator nothing is revoked: the slots granted before the kill are
    // collected twice until the replacement leads (5 s + its start, at most 8 intervals
    // here). What must hold is that none goes uncollected.
    let c = s.coverage(Window::between(from, SystemTime::now()));
    let violations = c.violations(1, 8).len();
    eprintln!("[{}] 3 → 5 with the operator killed:\n{}", s.ns, c.render());
    let (found, reasons, epochs) = watch.finish();
    eprintln!("reasons seen: {reasons:?}\nepochs: {epochs:?}");
    eprintln!("settled:\n{}", assignment_table(&after));
    replacement.stop().await;
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert!(after.assignment_epoch >= at_kill.assignment_epoch);
    assert_eq!(violations, 0);
}

/// Assignment annotations overwritten by hand on a settled fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_assignment_annotations_are_repaired_without_double_collection() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-annot", 3).await;
    let before = s.owners(3).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    let epoch = s.status().await.assignment_epoch;
    let lower = epoch.saturating_sub(1).to_string();
    let higher = (epoch + 1000).to_string();
    let cases: [(&str, &str, &str, &str); 5] = [
        ("garbage ranges", "x-y", "1024", "99999"),
        ("lower epoch, all slots", "0-1023", "1024", &lower),
        ("ranges outside the space", "0-5000", "1024", "99999"),
        ("epoch not a number", "0-1023", "1024", "abc"),
        ("higher epoch, all slots", "0-1023", "1024", &higher),
    ];
    for (what, ranges, space, epoch) in cases {
        let case_from = SystemTime::now();
        let out = s
            .kubectl(&[
                "annotate",
                "--overwrite",
                "pod",
                "orders-1",
                &format!("{SHARD_RANGES}={ranges}"),
                &format!("{SHARD_SPACE}={space}"),
                &format!("{ASSIGNMENT_EPOCH}={epoch}"),
            ])
            .await;
        eprintln!("{what}: {out}");
        tokio::time::sleep(INTERVAL * 4).await;
        let pod = s
            .kubectl(&[
                "get",
                "pod",
                "orders-1",
                "-o",
                "jsonpath={.metadata.annotations}",
            ])
            .await;
        eprintln!("{what}: after 8 s: {pod}");
        s.report(what, case_from);
    }
    s.settle(3).await;
    let after = s.owners(3).await;
    let violations = s.report("all annotation cases", from);
    let (found, reasons, epochs) = watch.finish();
    eprintln!("reasons seen: {reasons:?}\nepochs: {epochs:?}");
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert_eq!(after, before, "targets moved");
    assert_eq!(violations, 0);
}

/// A Lease's acked-epoch overwritten with garbage: nothing should move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_a_lease_acked_epoch_moves_no_target() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-leasejunk", 3).await;
    let before = s.owners(3).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    let epoch_before = s.status().await.assignment_epoch;
    lease_annotate(&s.client, &s.ns, "orders-0", ACKED_EPOCH, "garbage").await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let status = s.status().await;
    eprintln!(
        "12 s after acked-epoch=garbage on orders-0:\n{}",
        assignment_table(&status)
    );
    s.settle(3).await;
    let after = s.owners(3).await;
    let moved: Vec<_> = before
        .iter()
        .filter(|(t, w)| after.get(*t) != Some(*w))
        .collect();
    let violations = s.report("acked-epoch garbage", from);
    let (found, reasons, epochs) = watch.finish();
    eprintln!("reasons seen: {reasons:?}\nepochs: {epochs:?} (before {epoch_before})");
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert!(moved.is_empty(), "moved: {moved:?}");
    assert_eq!(violations, 0);
}

/// A Lease's acked-epoch set to u64::MAX, then the fleet scaled 3 → 4 → 2: each worker
/// must still collect what the status assigns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximal_acked_epoch_does_not_freeze_the_assignment() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-leasemax", 3).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    lease_annotate(
        &s.client,
        &s.ns,
        "orders-0",
        ACKED_EPOCH,
        &u64::MAX.to_string(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    eprintln!(
        "8 s after acked-epoch=u64::MAX on orders-0:\n{}",
        assignment_table(&s.status().await)
    );
    let mut mismatches = Vec::new();
    for n in [4, 2] {
        eprintln!("{}", s.scale(n).await);
        let settled = eventually("settle", Duration::from_secs(60), || async {
            let st = s.status().await;
            let ok = st.ready_replicas == n as i32
                && st.unowned_slots == 0
                && !is(&st, PROGRESSING, "True");
            Ok(ok.then_some(st))
        })
        .await;
        let status = match settled {
            Ok(st) => st,
            Err(e) => {
                eprintln!("{e:#}\n{}", s.diagnostics().await);
                s.status().await
            }
        };
        let owners = s.owners(3).await;
        let assigned: BTreeMap<String, String> = s
            .targets
            .iter()
            .filter_map(|t| {
                let slot = slot_of(t, DEFAULT_SHARDS);
                let a = status.assignment.iter().find(|a| a.ranges.contains(slot))?;
                Some((t.clone(), a.pod.clone()))
            })
            .collect();
        let c = s.coverage(Window::between(
            SystemTime::now() - INTERVAL * 3,
            SystemTime::now(),
        ));
        eprintln!(
            "after scale {n}:\n{}\n{}",
            assignment_table(&status),
            c.render()
        );
        if owners != assigned {
            mismatches.push(format!(
                "scale {n}: collected by {owners:?}, assigned {assigned:?}"
            ));
        }
    }
    let violations = s.report("u64::MAX acked epoch", from);
    let (found, reasons, epochs) = watch.finish();
    eprintln!("reasons seen: {reasons:?}\nepochs: {epochs:?}");
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert_eq!(violations, 0);
}

/// A worker's Lease deleted (the operator recreates it): nothing should move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_moves_no_target() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-leasedel", 3).await;
    let before = s.owners(3).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    eprintln!("{}", s.kubectl(&["delete", "lease", "orders-2"]).await);
    tokio::time::sleep(Duration::from_secs(12)).await;
    eprintln!(
        "12 s after deleting lease orders-2:\n{}",
        assignment_table(&s.status().await)
    );
    s.settle(3).await;
    let after = s.owners(3).await;
    let moved: Vec<_> = before
        .iter()
        .filter(|(t, w)| after.get(*t) != Some(*w))
        .collect();
    let violations = s.report("lease deleted", from);
    let (found, reasons, _) = watch.finish();
    eprintln!("reasons seen: {reasons:?}");
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert!(moved.is_empty(), "moved: {moved:?}");
    assert_eq!(violations, 0);
}

/// A target whose server is down (nothing listens on its port) shows in Degraded
/// TargetsDown; no other target moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_database_is_down_is_reported_and_nothing_moves() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-down", 3).await;
    let before = s.owners(3).await;
    let from = SystemTime::now();
    let mut all = targets(servers().await);
    let port = dbcollector_tests::free_port();
    all.push(pg_target("pg-down", port, "app0"));
    let patch = json!({ "spec": { "databases": all } });
    collectors(&s.client, &s.ns)
        .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let degraded = eventually("pg-down in Degraded", Duration::from_secs(60), || async {
        let st = s.status().await;
        let named = condition(&st, DEGRADED).is_some_and(|c| c.message.contains("pg-down"));
        Ok((is(&st, DEGRADED, "True") && named).then_some(st))
    })
    .await;
    let status = s.status().await;
    eprintln!("{}", conditions(&status));
    eprintln!("{}", s.kubectl(&["get", "dbc"]).await);
    let after = s.owners(3).await;
    let moved: Vec<_> = before
        .iter()
        .filter(|(t, w)| after.get(*t) != Some(*w))
        .collect();
    // pg-down starts with the spec change: its first interval is not a gap of a move.
    let c = s.coverage(Window::between(from, SystemTime::now()));
    let violations: Vec<String> = c
        .violations(1, 1)
        .into_iter()
        .filter(|v| !v.starts_with("pg-down"))
        .collect();
    eprintln!("{violations:#?}");
    let violations = violations.len();
    s.stop().await;
    let degraded = degraded.unwrap();
    let c = condition(&degraded, DEGRADED).unwrap();
    eprintln!("Degraded reason {}", c.reason);
    assert!(c.message.contains("pg-down"), "{}", c.message);
    assert!(moved.is_empty(), "moved: {moved:?}");
    assert_eq!(violations, 0);
}

/// A worker SIGSTOPped for 45 s: reported, its targets not left uncollected for long, the
/// operator not wedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_reported_and_its_targets_move() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-sigstop", 3).await;
    let before = s.owners(3).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    let pid = worker_pid(&s.fleet, "orders-1").await;
    signal(pid, libc::SIGSTOP);
    let mut timeline = Vec::new();
    for i in 0..9 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let st = s.status().await;
        let line = st
            .conditions
            .iter()
            .map(|c| format!("{}={}({})", c.type_, c.status, c.reason))
            .collect::<Vec<_>>()
            .join(" ");
        timeline.push(format!("t={}s {line}", (i + 1) * 5));
    }
    let stopped = s.status().await;
    eprintln!(
        "while stopped:\n{}\n{}",
        timeline.join("\n"),
        assignment_table(&stopped)
    );
    eprintln!("{}", s.kubectl(&["describe", "dbc", "orders"]).await);
    let victims: Vec<&String> = before
        .iter()
        .filter(|(_, w)| *w == "orders-1")
        .map(|(t, _)| t)
        .collect();
    let c = s.coverage(Window::between(from, SystemTime::now()));
    let gaps: Vec<(String, u32)> = victims
        .iter()
        .map(|t| ((*t).clone(), c.keys[*t].longest_gap()))
        .collect();
    eprintln!("gaps of orders-1's targets while stopped: {gaps:?}");
    signal(pid, libc::SIGCONT);
    s.settle(3).await;
    tokio::time::sleep(INTERVAL * 3).await;
    let violations = s.report("SIGSTOP 45 s", from);
    let (found, reasons, _) = watch.finish();
    eprintln!("reasons seen: {reasons:?}");
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert!(
        reasons.iter().any(|r| r.contains("WorkersLost")),
        "{reasons:?}"
    );
    // A hung worker keeps its slots for the grace (three heartbeats, 15 s) in case it
    // is only restarting; then they move. Its targets' longest gap is the grace plus a
    // reconcile and an acknowledgement: at most 11 intervals of 2 s (stated tolerance).
    let longest = gaps.iter().map(|(_, g)| *g).max().unwrap_or(0);
    assert!(longest <= 11, "gaps while stopped: {gaps:?}");
    // Only its targets were affected.
    assert!(violations <= victims.len(), "{violations} violations");
}

/// Targets added and removed while a scale-up is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_changed_during_a_handoff_are_all_collected() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::start("atk-targets", 2).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let servers = servers().await;
    eprintln!("{}", s.scale(4).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut all = targets(servers);
    all.retain(|t| !t["name"].as_str().unwrap_or_default().starts_with("maria"));
    for i in 0..4 {
        all.push(pg_target(
            &format!("new-db{i}"),
            servers.pg[0].port(),
            &format!("app{i}"),
        ));
    }
    let patch = json!({ "spec": { "databases": all } });
    collectors(&s.client, &s.ns)
        .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let status = s.settle(4).await;
    let from = SystemTime::now();
    tokio::time::sleep(INTERVAL * 5).await;
    let expected = names(&all);
    let samples = coverage::target_samples(&s.receiver.requests());
    let c = Coverage::count(
        &samples,
        s.counting,
        Window::between(from, SystemTime::now()),
        expected.clone(),
    );
    let wrong = c.not_exactly_once();
    eprintln!("{}\n{}", assignment_table(&status), c.render());
    let (found, reasons, _) = watch.finish();
    eprintln!("reasons seen: {reasons:?}");
    // The workers read the new config at their next ConfigMap poll: a removed target may
    // report once more, in the window's first interval (tolerance: one interval).
    let removed_still: Vec<String> = c
        .keys
        .iter()
        .filter(|(k, c)| {
            k.starts_with("maria") && c.runs.iter().map(|r| r.times.len()).sum::<usize>() > 1
        })
        .map(|(k, _)| k.clone())
        .collect();
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(
        removed_still.is_empty(),
        "removed targets still collected: {removed_still:?}"
    );
    assert_eq!(status.targets as usize, expected.len());
}

/// Holds `value` in the acked-epoch of Lease `lease` for `hold` (re-written every 300 ms,
/// over the worker's heartbeats).
async fn hold_acked_epoch(client: &Client, ns: &str, lease: &str, value: &str, hold: Duration) {
    let until = std::time::Instant::now() + hold;
    while std::time::Instant::now() < until {
        lease_annotate(client, ns, lease, ACKED_EPOCH, value).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A huge acked-epoch held in one Lease for 10 s (`value`), then released; afterwards the
/// fleet is scaled 3 → 4 and must settle.
async fn huge_acked_epoch_then_scale(ns: &str, value: &str) {
    let s = Scenario::start(ns, 3).await;
    let watch = Watch::start(s.client.clone(), &s.ns);
    let from = SystemTime::now();
    hold_acked_epoch(&s.client, &s.ns, "orders-0", value, Duration::from_secs(10)).await;
    let held = s.status().await;
    eprintln!(
        "after holding acked-epoch={value} on orders-0 for 10 s:\n{}",
        assignment_table(&held)
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    eprintln!(
        "8 s after release:\n{}",
        assignment_table(&s.status().await)
    );
    eprintln!("{}", s.scale(4).await);
    let settled = eventually("settle at 4", Duration::from_secs(60), || async {
        let st = s.status().await;
        let ok = st.ready_replicas == 4 && st.unowned_slots == 0 && !is(&st, PROGRESSING, "True");
        Ok(ok.then_some(st))
    })
    .await;
    let log = s.fleet.operator_log_tail(400);
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    eprintln!(
        "operator warnings/errors ({}), last 5:\n{}",
        errors.len(),
        errors[errors.len().saturating_sub(5)..].join("\n")
    );
    let final_status = s.status().await;
    eprintln!("final:\n{}", assignment_table(&final_status));
    let violations = s.report(&format!("acked-epoch {value}"), from);
    let (found, reasons, epochs) = watch.finish();
    eprintln!("reasons seen: {reasons:?}\nepochs: {epochs:?}");
    s.stop().await;
    assert!(found.is_empty(), "{found:#?}");
    assert!(settled.is_ok(), "did not settle at 4: {settled:?}");
    assert_eq!(violations, 0);
}

/// acked-epoch = u64::MAX (above what the status schema's integers hold) for 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_epoch_of_u64_max_held_for_ten_seconds_then_a_scale_settles() {
    let _serial = SERIAL.lock().await;
    huge_acked_epoch_then_scale("atk-u64max", &u64::MAX.to_string()).await;
}

/// acked-epoch = i64::MAX for 10 s: the next epoch would be i64::MAX + 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acked_epoch_of_i64_max_held_for_ten_seconds_then_a_scale_settles() {
    let _serial = SERIAL.lock().await;
    huge_acked_epoch_then_scale("atk-i64max", &i64::MAX.to_string()).await;
}
