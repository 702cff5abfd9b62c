//! The whole worker, as a user runs it: a config file, real PostgreSQL and MariaDB
//! servers, real OTLP over gRPC to an in-test receiver. A database is killed mid-run and
//! restarted; the other targets keep their interval and connection counts stay within the
//! budget, as counted by the servers themselves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbcollector_tests::{
    Blackhole, MariaDbOptions, MariaDbServer, OtlpOptions, OtlpReceiver, PgOptions, PgServer, Point,
};
use dbcollector_worker::app::{Options, Worker};
use dbcollector_worker::assignment::Mode;
use dbcollector_worker::source::Source;
use dbcollector_worker::telemetry::Metrics;

/// Scrape interval of every target in this test.
const INTERVAL_S: u64 = 2;

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn up_points<'a>(points: &'a [Point], target: &str) -> Vec<&'a Point> {
    let mut ups: Vec<_> = points
        .iter()
        .filter(|p| p.metric == "dbcollector.up")
        .filter(|p| p.resource_attr("dbcollector.target") == Some(target))
        .collect();
    ups.sort_by_key(|p| p.time_unix_nano);
    ups
}

/// Ticks of `target` whose `up` point falls in `[from, to)`.
fn ticks_between(points: &[Point], target: &str, from: u64, to: u64) -> usize {
    up_points(points, target)
        .iter()
        .filter(|p| p.time_unix_nano >= from && p.time_unix_nano < to)
        .count()
}

fn targets_with(points: &[Point], metric: &str) -> Vec<String> {
    let mut names: Vec<String> = points
        .iter()
        .filter(|p| p.metric == metric)
        .filter_map(|p| p.resource_attr("dbcollector.target").map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Polls server-side connection counts of the monitoring sessions and keeps the maximum.
fn watch_connections(
    pg: Vec<(String, sqlx::PgPool)>,
    mariadb: sqlx::MySqlPool,
    stop: Arc<AtomicBool>,
) -> (
    Arc<std::sync::Mutex<BTreeMap<String, i64>>>,
    tokio::task::JoinHandle<()>,
) {
    let max = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let seen = max.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for (name, pool) in &pg {
                let n: Result<i64, _> = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbcollector'",
                )
                .fetch_one(pool)
                .await;
                if let Ok(n) = n {
                    let mut m = seen.lock().unwrap();
                    let e = m.entry(name.clone()).or_insert(0);
                    *e = (*e).max(n);
                }
            }
            let n: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = 'monitor'",
            )
            .fetch_one(&mariadb)
            .await;
            if let Ok(n) = n {
                let mut m = seen.lock().unwrap();
                let e = m.entry("mariadb".into()).or_insert(0);
                *e = (*e).max(n);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (max, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_database_opens_its_breaker_while_the_others_keep_their_interval() {
    dbcollector_tests::init_tracing();
    let _ = rustls::crypto::ring::default_provider().install_default();

    // Server A holds two monitored databases named by two targets (one endpoint);
    // server B is the one that gets killed; MariaDB is monitored by a dedicated user.
    let pg_a = PgServer::start(PgOptions::default()).await.unwrap();
    let mut pg_b = PgServer::start(PgOptions::default()).await.unwrap();
    let maria = MariaDbServer::start(MariaDbOptions::default())
        .await
        .unwrap();
    let receiver = OtlpReceiver::start(OtlpOptions::default()).await.unwrap();
    // A server that accepts connections and never answers (case pg-08).
    let blackhole = Blackhole::start().unwrap();

    let admin_a = pg_a.admin_pool().await.unwrap();
    for db in ["app1", "app2"] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin_a)
            .await
            .unwrap();
    }
    let app1 = sqlx::PgPool::connect_with(pg_a.admin_options().database("app1"))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE orders (id serial PRIMARY KEY, note text)")
        .execute(&app1)
        .await
        .unwrap();
    sqlx::query("INSERT INTO orders (note) SELECT 'n' || g FROM generate_series(1, 100) g")
        .execute(&app1)
        .await
        .unwrap();
    // Ending the session flushes its table statistics.
    app1.close().await;
    let maria_admin = maria.admin_pool().await.unwrap();
    maria.create_user("monitor", "m0n@tor%pw").await.unwrap();
    for grant in [
        "GRANT PROCESS, SLAVE MONITOR ON *.* TO 'monitor'@'%'",
        "GRANT SELECT ON performance_schema.* TO 'monitor'@'%'",
    ] {
        sqlx::query(grant).execute(&maria_admin).await.unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("maria-pw");
    std::fs::write(&pw, "m0n@tor%pw\n").unwrap();
    let config_path = dir.path().join("worker.yaml");
    let config = format!(
        r#"
version: 1
defaults:
  interval: {INTERVAL_S}s
  query_timeout: 1s
  connect_timeout: 1s
targets:
  - {{ name: pg-a-app1, engine: postgresql, host: 127.0.0.1, port: {a}, databases: [app1], user: postgres }}
  - {{ name: pg-a-app2, engine: postgresql, host: 127.0.0.1, port: {a}, databases: [app2], user: postgres }}
  - {{ name: pg-b, engine: postgresql, host: 127.0.0.1, port: {b}, user: postgres }}
  - {{ name: pg-silent, engine: postgresql, host: 127.0.0.1, port: {silent}, user: postgres }}
  - name: maria
    engine: mysql
    host: 127.0.0.1
    port: {m}
    user: monitor
    password: {{ file: {pw} }}
pipeline:
  breaker: {{ failure_threshold: 2 }}
exporter:
  endpoint: {otlp}
  retry: {{ initial_backoff: 100ms, max_backoff: 1s }}
telemetry:
  listen: 127.0.0.1:0
"#,
        a = pg_a.port(),
        b = pg_b.port(),
        m = maria.port(),
        pw = pw.display(),
        otlp = receiver.grpc_endpoint(),
        silent = blackhole.port(),
    );
    std::fs::write(&config_path, config).unwrap();

    let stop_watch = Arc::new(AtomicBool::new(false));
    let (max_conns, watcher) = watch_connections(
        vec![
            ("a".into(), admin_a.clone()),
            ("b".into(), pg_b.admin_pool().await.unwrap()),
        ],
        maria_admin.clone(),
        stop_watch.clone(),
    );

    let worker = Worker::start(Options {
        source: Source::File(config_path.clone()),
        worker_id: "e2e-worker".into(),
        reload_poll: Duration::from_millis(500),
        namespace: None,
        assignment: Mode::All,
    })
    .await
    .unwrap();
    let metrics: Arc<Metrics> = worker.metrics().clone();
    let telemetry = format!("http://{}", worker.telemetry_addr);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));

    // Steady state: every target up, every kind of family present.
    let targets = ["maria", "pg-a-app1", "pg-a-app2", "pg-b"];
    let points = receiver
        .wait_for_points(
            |p| {
                let live_orders = p.iter().any(|p| {
                    p.metric == "postgresql.rows"
                        && p.attr("postgresql.table.name") == Some("orders")
                        && p.attr("state") == Some("live")
                        && p.value == 100.0
                });
                live_orders
                    && targets
                        .iter()
                        .all(|t| up_points(p, t).iter().filter(|u| u.value == 1.0).count() >= 2)
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    for metric in [
        "postgresql.commits",
        "postgresql.table.size",
        "postgresql.index.size",
    ] {
        assert!(
            points.iter().any(|p| p.metric == metric),
            "{metric} missing"
        );
    }
    assert!(
        points
            .iter()
            .any(|p| p.metric.starts_with("postgresql.query.")),
        "statements missing"
    );
    assert!(
        points.iter().any(|p| p.metric.starts_with("mysql.")),
        "mysql families missing"
    );
    let maria_up = up_points(&points, "maria");
    assert_eq!(maria_up[0].resource_attr("db.system.name"), Some("mariadb"));
    assert!(points
        .iter()
        .all(|p| p.header("x-dbcollector-worker") == Some("e2e-worker")));

    // Server-wide families of server A come from exactly one of its two targets.
    assert_eq!(
        targets_with(&points, "postgresql.connection.max"),
        ["pg-a-app1", "pg-b"]
    );

    // The silent server: its scrapes time out, it is reported down, its breaker opens,
    // and it delays nobody (the others' intervals are checked below).
    let silent = Metrics::target("pg-silent");
    dbcollector_tests::eventually("pg-silent breaker open", Duration::from_secs(30), || {
        let state = metrics.breaker_state.get_or_create(&silent).get();
        async move { Ok((state == 1).then_some(())) }
    })
    .await
    .unwrap();
    let all = receiver.points();
    let silent_ups = up_points(&all, "pg-silent");
    assert!(!silent_ups.is_empty() && silent_ups.iter().all(|u| u.value == 0.0));
    assert!(
        blackhole.accepted() >= 1,
        "the worker never reached the silent server"
    );

    // Self-telemetry over HTTP.
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("{telemetry}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "ready although a target is down");
    let text = http
        .get(format!("{telemetry}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "dbcollector_up{target=\"pg-silent\"} 0",
        "dbcollector_up{target=\"pg-a-app1\"} 1",
        "dbcollector_breaker_state{target=\"pg-silent\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing from /metrics:\n{text}");
    }
    assert!(text.contains("dbcollector_scrape_errors_total{target=\"pg-silent\",kind="));
    assert!(!text.contains("m0n@tor%pw"), "a password reached /metrics");

    // Kill server B. The breaker opens after two failures; the others keep ticking.
    let killed_at = now_nanos();
    pg_b.kill().await.unwrap();
    let label = Metrics::target("pg-b");
    let breaker_opened = Arc::new(AtomicI64::new(0));
    dbcollector_tests::eventually("pg-b breaker open", Duration::from_secs(30), || {
        let state = metrics.breaker_state.get_or_create(&label).get();
        breaker_opened.fetch_max(state, Ordering::Relaxed);
        async move { Ok((state == 1).then_some(())) }
    })
    .await
    .unwrap();
    receiver
        .wait_for_points(
            |p| {
                up_points(p, "pg-b")
                    .iter()
                    .any(|u| u.value == 0.0 && u.time_unix_nano > killed_at)
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(metrics.up.get_or_create(&label).get(), 0);
    let down_window = 5 * INTERVAL_S;
    tokio::time::sleep(Duration::from_secs(down_window)).await;

    // Restart B: it is collected again at the first half-open probe, within the
    // breaker's maximum open time (two intervals by default) plus one interval.
    let restarted_at = now_nanos();
    pg_b.start_again().await.unwrap();
    let points = receiver
        .wait_for_points(
            |p| {
                up_points(p, "pg-b")
                    .iter()
                    .any(|u| u.value == 1.0 && u.time_unix_nano > restarted_at)
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let back_at = up_points(&points, "pg-b")
        .iter()
        .find(|u| u.value == 1.0 && u.time_unix_nano > restarted_at)
        .unwrap()
        .time_unix_nano;
    let intervals_to_recover = (back_at - restarted_at) / (INTERVAL_S * 1_000_000_000);
    assert!(
        intervals_to_recover <= 3,
        "recovered after {intervals_to_recover} intervals"
    );

    // While B was down, the other targets kept their interval: in the window from one
    // interval after the kill to the restart, each ticked once per interval (±1 for the
    // window's edges).
    let from = killed_at + INTERVAL_S * 1_000_000_000;
    let expected = ((restarted_at - from) / (INTERVAL_S * 1_000_000_000)) as i64;
    for target in ["pg-a-app1", "pg-a-app2", "maria"] {
        let ticks = ticks_between(&points, target, from, restarted_at) as i64;
        assert!(
            (ticks - expected).abs() <= 1,
            "{target}: {ticks} ticks while {expected} intervals passed"
        );
        let ups = up_points(&points, target);
        assert!(ups.iter().all(|u| u.value == 1.0), "{target} went down");
    }

    stop_tx.send(()).unwrap();
    running.await.unwrap();
    stop_watch.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    // Server-side counts never exceeded the budgets: A has two monitored databases
    // (budget 3), B one (budget 2), MariaDB one connection for its one target (budget 2).
    let max = max_conns.lock().unwrap().clone();
    assert!(
        max["a"] >= 1 && max["a"] <= 3,
        "server A connections: {max:?}"
    );
    assert!(max["b"] <= 2, "server B connections: {max:?}");
    assert!(
        max["mariadb"] >= 1 && max["mariadb"] <= 2,
        "MariaDB connections: {max:?}"
    );
    assert_eq!(breaker_opened.load(Ordering::Relaxed), 1);
}
