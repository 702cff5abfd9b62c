//! The whole system on one machine: throwaway PostgreSQL and MariaDB servers with some
//! load, a Kubernetes control plane with the CRD and the operator's RBAC installed from
//! the repository's manifests, the operator binary acting with its own ServiceAccount,
//! and a fleet of worker processes run as the collector's pods. A DatabaseCollector of 22
//! targets is applied, then scaled 3 → 5 → 2; after each step the demo prints the
//! collector, the shard assignment and what the OTLP receiver got from which worker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use dbcollector_crds::status::{AVAILABLE, PROGRESSING};
use dbcollector_crds::{DatabaseCollector, DatabaseCollectorStatus};
use dbcollector_tests::coverage::{self, Counting, Coverage, Window, WORKER_HEADER};
use dbcollector_tests::{
    assignment_table, ControlPlane, Fleet, FleetOptions, MariaDbOptions, MariaDbServer,
    OtlpOptions, OtlpReceiver, PgOptions, PgServer,
};
use kube::api::Api;
use tokio::task::JoinHandle;

/// The namespace of the collector and its workers.
const NAMESPACE: &str = "databases";

/// The operator's namespace, as `deploy/00-namespace.yaml` names it.
const OPERATOR_NAMESPACE: &str = "dbcollector-system";

/// The collector's name.
const COLLECTOR: &str = "shop";

/// Databases per PostgreSQL server, and schemas on the MariaDB server: one target each.
const PG_DATABASES: usize = 8;
const MARIADB_SCHEMAS: usize = 6;

/// How long a step may take to settle.
const SETTLE: Duration = Duration::from_secs(180);

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Args {
    /// Collection interval of every target.
    interval: Duration,
    /// Intervals to watch after each step settled.
    hold: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        interval: Duration::from_secs(2),
        hold: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--interval" => {
                let seconds: u64 = value()?.parse().context("--interval (seconds)")?;
                args.interval = Duration::from_secs(seconds.max(1));
            }
            "--hold" => args.hold = value()?.parse().context("--hold (intervals)")?,
            other => bail!(
                "unknown argument {other}; usage: dbcollector-fleet-demo [--interval SECONDS] \
                 [--hold INTERVALS]"
            ),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();

    step("starting 2 PostgreSQL servers and 1 MariaDB server, with databases and load");
    let (a, b, mariadb) = tokio::join!(
        PgServer::start(PgOptions::default()),
        PgServer::start(PgOptions::default()),
        MariaDbServer::start(MariaDbOptions::default()),
    );
    let pg = [a?, b?];
    let mariadb = mariadb?;
    let mut load = Vec::new();
    for server in &pg {
        load.push(seed_postgres(server).await?);
    }
    load.push(seed_mariadb(&mariadb).await?);
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await?;
    println!("OTLP receiver on {}", receiver.grpc_endpoint());

    step("starting a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)");
    let plane = Arc::new(ControlPlane::start().await?);
    install(&plane).await?;

    step("starting the operator (with its ServiceAccount) and the worker fleet");
    let operator_kubeconfig = plane
        .service_account_kubeconfig(OPERATOR_NAMESPACE, "dbcollector-operator")
        .await?;
    plane.create_namespace(NAMESPACE).await?;
    let mut options = FleetOptions::new(NAMESPACE);
    options.watch_namespace = None;
    options.operator_namespace = OPERATOR_NAMESPACE.to_owned();
    options.operator_kubeconfig = Some(operator_kubeconfig);
    let fleet = Fleet::start(Arc::clone(&plane), options).await?;
    println!("logs in {}", fleet.dir().display());

    let demo = Demo {
        plane,
        fleet,
        receiver,
        counting: Counting::new(args.interval),
        targets: target_names(),
        endpoints: pg
            .iter()
            .map(PgServer::port)
            .chain([mariadb.port()])
            .map(|port| format!("127.0.0.1:{port}"))
            .collect(),
        hold: args.hold,
    };
    let result = demo.run(&pg, &mariadb, args.interval).await;

    step("cleaning up");
    demo.fleet.stop().await?;
    drop(demo.plane);
    // The load stops before its servers do.
    for task in load {
        task.abort();
        let _ = task.await;
    }
    println!("done in {:.0?}", started.elapsed());
    result
}

struct Demo {
    plane: Arc<ControlPlane>,
    fleet: Fleet,
    receiver: OtlpReceiver,
    counting: Counting,
    targets: Vec<String>,
    endpoints: Vec<String>,
    hold: u32,
}

impl Demo {
    async fn run(
        &self,
        pg: &[PgServer; 2],
        mariadb: &MariaDbServer,
        interval: Duration,
    ) -> anyhow::Result<()> {
        step("applying DatabaseCollector shop: 22 targets, 3 workers");
        let manifest = collector_manifest(pg, mariadb, &self.receiver, interval);
        println!("{manifest}");
        let out = self
            .plane
            .kubectl_with_input(["apply", "-n", NAMESPACE, "-f", "-"], manifest.as_bytes())
            .await?;
        if !out.status.success() {
            bail!("kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.settle(3).await?;
        let begin = SystemTime::now();
        let mut from = self.report(begin).await?;

        for replicas in [5, 2] {
            step(&format!(
                "kubectl scale dbc {COLLECTOR} --replicas={replicas}"
            ));
            self.plane
                .kubectl_ok([
                    "scale",
                    "-n",
                    NAMESPACE,
                    "dbc",
                    COLLECTOR,
                    &format!("--replicas={replicas}"),
                ])
                .await?;
            self.settle(replicas).await?;
            from = self.report(from).await?;
        }

        step("summary of the whole run");
        self.summary(Window::between(begin, SystemTime::now()));
        Ok(())
    }

    /// Waits until `replicas` workers are ready and the collector is Available with
    /// every slot acknowledged.
    async fn settle(&self, replicas: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        self.fleet.wait_ready(replicas, SETTLE).await?;
        let api: Api<DatabaseCollector> = Api::namespaced(self.plane.client(), NAMESPACE);
        dbcollector_tests::eventually("the collector to settle", SETTLE, || async {
            let status = api.get(COLLECTOR).await?.status.unwrap_or_default();
            Ok(settled(&status, replicas).then_some(()))
        })
        .await?;
        println!(
            "settled with {replicas} workers in {:.1?}",
            started.elapsed()
        );
        Ok(())
    }

    /// Watches `hold` intervals, then prints the collector, its assignment, the fleet
    /// and what was received since `from`; returns the end of that window.
    async fn report(&self, from: SystemTime) -> anyhow::Result<SystemTime> {
        tokio::time::sleep(self.counting.interval * self.hold).await;
        let to = SystemTime::now();
        let get = self
            .plane
            .kubectl_ok(["get", "dbc", "-n", NAMESPACE, "-o", "wide"])
            .await?;
        println!("$ kubectl get dbc -n {NAMESPACE} -o wide\n{get}");
        let pods = self
            .plane
            .kubectl_ok(["get", "pods", "-n", NAMESPACE, "-o", "wide"])
            .await?;
        println!("$ kubectl get pods -n {NAMESPACE} -o wide\n{pods}");
        let api: Api<DatabaseCollector> = Api::namespaced(self.plane.client(), NAMESPACE);
        let status = api.get(COLLECTOR).await?.status.unwrap_or_default();
        println!("assignment:\n{}", assignment_table(&status));
        for (pod, worker) in self.fleet.workers().await {
            println!(
                "worker process {pod}: port {}, running {}, ready {}, starts {}",
                worker.port, worker.running, worker.ready, worker.starts
            );
        }
        self.summary(Window::between(from, to));
        Ok(to)
    }

    /// Prints, for `window`, what each worker sent and each target's and endpoint's
    /// coverage.
    fn summary(&self, window: Window) {
        let requests = self.receiver.requests();
        let mut per_worker: BTreeMap<String, (usize, usize, BTreeSet<String>)> = BTreeMap::new();
        for request in &requests {
            let worker = request.header(WORKER_HEADER).unwrap_or("?").to_owned();
            let points: Vec<_> = request
                .points()
                .into_iter()
                .filter(|p| window.contains(p.time_unix_nano))
                .collect();
            if points.is_empty() {
                continue;
            }
            let entry = per_worker.entry(worker).or_default();
            entry.0 += 1;
            entry.1 += points.len();
            entry.2.extend(
                points
                    .iter()
                    .filter_map(|p| p.resource_attr(coverage::TARGET_ATTRIBUTE))
                    .map(str::to_owned),
            );
        }
        println!(
            "{:<10} {:>8} {:>12} {:>8}",
            "worker", "exports", "data points", "targets"
        );
        for (worker, (exports, points, targets)) in &per_worker {
            println!(
                "{worker:<10} {exports:>8} {points:>12} {:>8}",
                targets.len()
            );
        }

        let targets = Coverage::count(
            &coverage::target_samples(&requests),
            self.counting,
            window,
            self.targets.clone(),
        );
        let endpoints = Coverage::count(
            &coverage::endpoint_samples(&requests),
            self.counting,
            window,
            self.endpoints.clone(),
        );
        println!("\nper target (dbcollector.up):\n{}", targets.render());
        println!(
            "per server endpoint (server-wide families):\n{}",
            endpoints.render()
        );
        let (gap, doubled) = (targets.longest_gap(), targets.longest_overlap());
        println!(
            "longest run of missed ticks: {} ({}); most ticks collected twice in one handoff: \
             {} ({})",
            gap.map_or(0, |(_, n)| n),
            gap.filter(|(_, n)| *n > 0).map_or("-", |(key, _)| key),
            doubled.map_or(0, |(_, n)| n),
            doubled.filter(|(_, n)| *n > 0).map_or("-", |(key, _)| key),
        );
    }
}

/// Available, not Progressing, `replicas` ready pods each owning acknowledged slots,
/// none granted and none unowned.
fn settled(status: &DatabaseCollectorStatus, replicas: usize) -> bool {
    let is = |type_: &str, value: &str| status.condition(type_).is_some_and(|c| c.status == value);
    status.ready_replicas == replicas as i32
        && status.assignment.len() == replicas
        && status.unowned_slots == 0
        && is(AVAILABLE, "True")
        && !is(PROGRESSING, "True")
        && status
            .assignment
            .iter()
            .all(|a| a.granted.is_empty() && a.acked_epoch == Some(a.epoch))
}

/// Installs the CRD and the operator's namespace and RBAC from the repository.
async fn install(plane: &ControlPlane) -> anyhow::Result<()> {
    let crd = format!("{REPO}/crds/dbcollector.dev_databasecollectors.yaml");
    // A v1.20 server's OpenAPI document lacks the CEL fields kubectl would validate.
    plane
        .kubectl_ok(["apply", "--validate=false", "-f", &crd])
        .await?;
    plane
        .kubectl_ok([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/databasecollectors.dbcollector.dev",
        ])
        .await?;
    for manifest in ["deploy/00-namespace.yaml", "deploy/02-rbac.yaml"] {
        let path = format!("{REPO}/{manifest}");
        let out = plane.kubectl_ok(["apply", "-f", &path]).await?;
        print!("{out}");
    }
    Ok(())
}

fn target_names() -> Vec<String> {
    let pg = ["a", "b"]
        .into_iter()
        .flat_map(|s| (0..PG_DATABASES).map(move |i| format!("pg{s}-db{i}")));
    let maria = (0..MARIADB_SCHEMAS).map(|i| format!("maria-db{i}"));
    pg.chain(maria).collect()
}

/// The DatabaseCollector, as YAML a user would apply.
fn collector_manifest(
    pg: &[PgServer; 2],
    mariadb: &MariaDbServer,
    receiver: &OtlpReceiver,
    interval: Duration,
) -> String {
    let mut targets = String::new();
    for (letter, server) in ["a", "b"].iter().zip(pg) {
        for i in 0..PG_DATABASES {
            targets.push_str(&format!(
                "    - {{ name: pg{letter}-db{i}, engine: postgresql, host: 127.0.0.1, port: {}, \
                 user: postgres, databases: [app{i}] }}\n",
                server.port()
            ));
        }
    }
    for i in 0..MARIADB_SCHEMAS {
        targets.push_str(&format!(
            "    - {{ name: maria-db{i}, engine: mysql, host: 127.0.0.1, port: {}, user: root, \
             databases: [app{i}] }}\n",
            mariadb.port()
        ));
    }
    format!(
        "apiVersion: dbcollector.dev/v1alpha1\nkind: DatabaseCollector\nmetadata:\n  name: \
         {COLLECTOR}\nspec:\n  replicas: 3\n  interval: {}s\n  exporter:\n    endpoint: {}\n    \
         protocol: grpc\n  databases:\n{targets}",
        interval.as_secs(),
        receiver.grpc_endpoint()
    )
}

/// Creates the databases `app0`.. with a table each, and starts some load on `app0`.
async fn seed_postgres(server: &PgServer) -> anyhow::Result<JoinHandle<()>> {
    let admin = server.admin_pool().await?;
    let mut load = None;
    for i in 0..PG_DATABASES {
        sqlx::query(&format!("CREATE DATABASE app{i}"))
            .execute(&admin)
            .await?;
        let db =
            sqlx::PgPool::connect_with(server.admin_options().database(&format!("app{i}"))).await?;
        sqlx::query("CREATE TABLE orders (id serial PRIMARY KEY, amount int)")
            .execute(&db)
            .await?;
        if i == 0 {
            load = Some(tokio::spawn(async move {
                for n in 0..1_000_000 {
                    let _ = sqlx::query("INSERT INTO orders (amount) VALUES ($1)")
                        .bind(n % 1000)
                        .execute(&db)
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        } else {
            db.close().await;
        }
    }
    admin.close().await;
    load.context("no database to load")
}

/// Creates the schemas `app0`.. with a table each, and starts some load on `app0`.
async fn seed_mariadb(server: &MariaDbServer) -> anyhow::Result<JoinHandle<()>> {
    let admin = server.admin_pool().await?;
    for i in 0..MARIADB_SCHEMAS {
        sqlx::query(&format!("CREATE DATABASE app{i}"))
            .execute(&admin)
            .await?;
        sqlx::query(&format!(
            "CREATE TABLE app{i}.orders (id int AUTO_INCREMENT PRIMARY KEY, amount int)"
        ))
        .execute(&admin)
        .await?;
    }
    Ok(tokio::spawn(async move {
        for n in 0..1_000_000 {
            let _ = sqlx::query("INSERT INTO app0.orders (amount) VALUES (?)")
                .bind(n % 1000)
                .execute(&admin)
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }))
}

fn step(what: &str) {
    println!("\n== {what} ==");
}
