//! The MySQL receiver against real MariaDB 10.11 servers: flavor, session limits, global
//! status, per-table I/O, digests, capability gaps, replica status, the connection budget
//! and an unreachable target.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbcollector_tests::{
    eventually, free_port, init_tracing, Blackhole, MariaDbOptions, MariaDbServer,
};
use dbcollector_worker::config::{Connections, DbTls, Engine, QueryText, Statements, ValueSource};
use dbcollector_worker::metrics::{Point, Value};
use dbcollector_worker::pool::Endpoints;
use dbcollector_worker::receivers::mysql::Collector;
use dbcollector_worker::receivers::{Databases, ErrorKind, Scrape, StatementRow, TargetSpec};
use dbcollector_worker::telemetry::{CapabilityLabels, Metrics};
use sqlx::mysql::MySqlPool;

/// How long statistics may take to show up (MariaDB aggregates after answering).
const WAIT: Duration = Duration::from_secs(15);

/// A password that breaks any URL built by string formatting (case my-03).
const PASSWORD: &str = "p@ss%w0rd:/x";

/// Every capability label value the receiver can report.
const CAPABILITIES: [&str; 7] = [
    "performance_schema",
    "performance_schema.statements_digest",
    "performance_schema.digest_columns",
    "grant:SELECT ON performance_schema.*",
    "grant:SLAVE MONITOR",
    "grant:REPLICATION CLIENT",
    "grant:PROCESS",
];

struct Target {
    collector: Collector,
    metrics: Arc<Metrics>,
    name: &'static str,
    _password: Option<tempfile::NamedTempFile>,
}

impl Target {
    /// A carrier target for `user` on `db`, reading its password from a file.
    fn new(db: &MariaDbServer, name: &'static str, user: &str, password: Option<&str>) -> Self {
        Self::with(
            db.port(),
            name,
            user,
            password,
            Databases::Listed(vec!["my-app".into()]),
        )
    }

    fn with(
        port: u16,
        name: &'static str,
        user: &str,
        password: Option<&str>,
        databases: Databases,
    ) -> Self {
        let file = password.map(|p| {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), p).unwrap();
            f
        });
        let spec = TargetSpec {
            name: name.into(),
            engine: Engine::Mysql,
            host: "127.0.0.1".into(),
            port,
            databases,
            user: user.to_owned(),
            password: file
                .as_ref()
                .map(|f| ValueSource::File(f.path().to_owned())),
            tls: DbTls::default(),
            interval: Duration::from_secs(10),
            query_timeout: Duration::from_secs(4),
            connect_timeout: Duration::from_secs(2),
            lock_timeout: Duration::from_secs(1),
            relation_limit: 100,
            statements: Statements {
                enabled: true,
                top_n: 100,
                query_text: QueryText::Obfuscated,
                max_text_length: 1024,
            },
            carrier: true,
        };
        let metrics = Arc::new(Metrics::unregistered());
        let endpoints = Endpoints::new(Connections::default(), metrics.clone());
        let collector = Collector::new(spec, &endpoints, metrics.clone());
        Self {
            collector,
            metrics,
            name,
            _password: file,
        }
    }

    async fn scrape(&mut self) -> Scrape {
        self.collector.scrape().await.expect("scrape succeeds")
    }

    /// Scrapes until `check` finds what it looks for.
    async fn scrape_until<T>(&mut self, what: &str, check: impl Fn(&Scrape) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let scrape = self.scrape().await;
            if let Some(found) = check(&scrape) {
                return found;
            }
            if Instant::now() >= deadline {
                let statements: Vec<_> = scrape
                    .statements
                    .iter()
                    .flat_map(|s| &s.rows)
                    .map(|r| (&r.key, &r.text, r.calls))
                    .collect();
                panic!("{what}: not seen within {WAIT:?}; statements: {statements:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The capabilities currently reported missing.
    fn missing(&self) -> Vec<&'static str> {
        CAPABILITIES
            .into_iter()
            .filter(|c| {
                let labels = CapabilityLabels {
                    target: self.name.to_owned(),
                    capability: (*c).to_owned(),
                };
                self.metrics
                    .capability_missing
                    .get(&labels)
                    .is_some_and(|g| g.get() == 1)
            })
            .collect()
    }
}

fn attr(p: &Point, key: &str) -> Option<String> {
    p.attrs
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

/// The value of the one point of `name` whose attributes include all of `attrs`.
fn value(scrape: &Scrape, name: &str, attrs: &[(&str, &str)]) -> Option<i64> {
    let p = scrape.points.iter().find(|p| {
        p.desc.name == name && attrs.iter().all(|(k, v)| attr(p, k).as_deref() == Some(*v))
    })?;
    match p.value {
        Value::Int(v) => Some(v),
        Value::Double(v) => Some(v as i64),
    }
}

fn resource_attr(scrape: &Scrape, key: &str) -> Option<String> {
    scrape
        .resource
        .attrs
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

fn statement<'a>(scrape: &'a Scrape, text_part: &str) -> Option<&'a StatementRow> {
    scrape
        .statements
        .as_ref()?
        .rows
        .iter()
        .find(|r| r.text.as_deref().is_some_and(|t| t.contains(text_part)))
}

async fn exec(pool: &MySqlPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Connections the server sees for `user`.
async fn sessions_of(pool: &MySqlPool, user: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?")
        .bind(user)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn mariadb_target_reports_status_io_waits_and_digests_under_the_mariadb_flavor() {
    init_tracing();
    let db = MariaDbServer::start(MariaDbOptions::default())
        .await
        .unwrap();
    let admin = db.admin_pool().await.unwrap();
    db.create_user("monitor", PASSWORD).await.unwrap();
    for sql in [
        "GRANT PROCESS, SLAVE MONITOR ON *.* TO 'monitor'@'%'",
        "GRANT SELECT ON performance_schema.* TO 'monitor'@'%'",
        "CREATE DATABASE `my-app`",
        "CREATE TABLE `my-app`.orders (id INT PRIMARY KEY, qty INT, KEY by_qty (qty))",
        // The general log shows what the monitoring session sent to the server.
        "SET GLOBAL log_output = 'TABLE'",
        "SET GLOBAL general_log = 'ON'",
    ] {
        exec(&admin, sql).await;
    }

    let mut target = Target::new(&db, "maria", "monitor", Some(PASSWORD));
    let first = target.scrape().await;

    // Flavor: the version string says MariaDB (case my-01).
    assert_eq!(
        resource_attr(&first, "db.system.name").as_deref(),
        Some("mariadb")
    );
    assert_eq!(
        resource_attr(&first, "dbcollector.target").as_deref(),
        Some("maria")
    );
    assert!(
        target.missing().is_empty(),
        "nothing is missing: {:?}",
        target.missing()
    );

    // Global status and variables, plausible against the harness's settings.
    assert_eq!(value(&first, "mysql.connection.max", &[]), Some(100));
    assert_eq!(
        value(&first, "mysql.buffer_pool.limit", &[]),
        Some(32 * 1024 * 1024)
    );
    assert!(value(&first, "mysql.threads", &[("kind", "connected")]).unwrap() >= 2);
    assert!(value(&first, "mysql.uptime", &[]).unwrap() >= 0);
    assert!(value(&first, "mysql.buffer_pool.pages", &[("kind", "data")]).unwrap() > 0);
    assert!(value(&first, "mysql.handlers", &[("kind", "read_rnd_next")]).unwrap() > 0);
    // MariaDB 10.11 has no Innodb_rows_* variables: the family is absent, not zero.
    assert!(value(&first, "mysql.row_operations", &[("operation", "read")]).is_none());

    // No replica configured: no replica points, and no error.
    assert!(first
        .points
        .iter()
        .all(|p| !p.desc.name.starts_with("mysql.replica.")));

    // Counters start at the server's start, the same on every scrape.
    let uptime_point = first
        .points
        .iter()
        .find(|p| p.desc.name == "mysql.uptime")
        .unwrap();
    let server_start = uptime_point.start_unix_nanos;
    assert!(server_start > 0 && server_start <= uptime_point.time_unix_nanos);

    // The session limits were set on the monitoring session itself, before it read.
    let log: Vec<(u64, String)> = sqlx::query_as(
        "SELECT thread_id, CONVERT(argument USING utf8mb4) FROM mysql.general_log \
         WHERE user_host LIKE 'monitor[%' AND command_type = 'Query' ORDER BY event_time",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let set_limit = log
        .iter()
        .position(|(_, q)| q == "SET SESSION max_statement_time = 4.000")
        .unwrap_or_else(|| panic!("no max_statement_time in {log:#?}"));
    let thread = log[set_limit].0;
    assert!(log
        .iter()
        .any(|(t, q)| *t == thread && q == "SET SESSION lock_wait_timeout = 1"));
    assert!(
        log[set_limit..]
            .iter()
            .any(|(t, q)| *t == thread && q == "SHOW GLOBAL STATUS"),
        "the status was not read on the limited session: {log:#?}"
    );
    exec(&admin, "SET GLOBAL general_log = 'OFF'").await;

    // 50 statements between two scrapes: mysql.query.count grows by at least 50.
    let before = value(&target.scrape().await, "mysql.query.count", &[]).unwrap();
    for _ in 0..50 {
        exec(&admin, "SELECT 1").await;
    }
    let second = target.scrape().await;
    let after = value(&second, "mysql.query.count", &[]).unwrap();
    assert!(
        after - before >= 50,
        "query count grew by {} only",
        after - before
    );
    let start_again = second
        .points
        .iter()
        .find(|p| p.desc.name == "mysql.uptime")
        .unwrap();
    assert_eq!(start_again.start_unix_nanos, server_start);

    // Rows written to `my-app`.orders show up as insert I/O of that table.
    const ROWS: i64 = 25;
    for i in 0..ROWS {
        exec(
            &admin,
            &format!("INSERT INTO `my-app`.orders VALUES ({i}, {})", i % 5),
        )
        .await;
    }
    let inserts = target
        .scrape_until("insert I/O of my-app.orders", |s| {
            let attrs = [
                ("schema", "my-app"),
                ("table", "orders"),
                ("operation", "insert"),
            ];
            value(s, "mysql.table.io.wait.count", &attrs).filter(|n| *n >= ROWS)
        })
        .await;
    assert!(inserts >= ROWS);

    // Digests: a statement run without a default schema is kept (key "/<digest>"), one
    // run with `my-app` as default schema is keyed by it.
    const RUNS: i64 = 7;
    for _ in 0..RUNS {
        exec(&admin, "SELECT COUNT(*) FROM `my-app`.orders WHERE qty > 2").await;
    }
    let in_schema = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with(db.connect_options("root", None, Some("my-app")))
        .await
        .unwrap();
    exec(&in_schema, "SELECT MAX(id) FROM orders WHERE qty < 3").await;
    in_schema.close().await;

    let (schemaless, scoped) = target
        .scrape_until("digests of both statements", |s| {
            let a = statement(s, "`my-app` . `orders` WHERE `qty` >")
                .filter(|r| r.calls >= RUNS)?
                .clone();
            let b = statement(s, "FROM `orders` WHERE `qty` <")?.clone();
            Some((a, b))
        })
        .await;
    assert!(schemaless.key.starts_with('/'), "key {}", schemaless.key);
    assert!(schemaless.attrs.iter().all(|(k, _)| *k != "schema"));
    assert!(schemaless.total_time_s > 0.0);
    assert!(schemaless.rows >= RUNS, "one row sent per run");
    assert!(scoped.key.starts_with("my-app/"), "key {}", scoped.key);

    // Index I/O of the secondary index the digests' queries used.
    let index_reads = value(
        &target.scrape().await,
        "mysql.index.io.wait.count",
        &[
            ("schema", "my-app"),
            ("table", "orders"),
            ("index", "by_qty"),
            ("operation", "fetch"),
        ],
    );
    assert!(index_reads.is_some(), "index I/O of by_qty is reported");

    // The connection budget holds across scrapes, as the server counts sessions.
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let watcher = tokio::spawn({
        let (admin, stop, most) = (admin.clone(), stop.clone(), most.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(sessions_of(&admin, "monitor").await, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    for _ in 0..5 {
        target.scrape().await;
        most.fetch_max(sessions_of(&admin, "monitor").await, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    assert_eq!(
        most.load(Ordering::Relaxed),
        1,
        "one session per target, never more"
    );

    target.collector.close().await;
    // The server drops the session shortly after the client quits.
    eventually("the monitoring session ends on close", WAIT, || async {
        Ok((sessions_of(&admin, "monitor").await == 0).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn performance_schema_off_costs_only_its_families_and_is_reported_not_failed() {
    init_tracing();
    let opts = MariaDbOptions {
        extra_args: vec!["--performance-schema=OFF".into()],
        ..MariaDbOptions::default()
    };
    let db = MariaDbServer::start(opts).await.unwrap();
    let mut target = Target::new(&db, "no-ps", "root", None);

    for _ in 0..2 {
        let scrape = target.scrape().await;
        assert_eq!(target.missing(), ["performance_schema"]);
        assert!(
            value(&scrape, "mysql.query.count", &[]).is_some(),
            "global status stays"
        );
        assert!(scrape.statements.is_none());
        assert!(scrape
            .points
            .iter()
            .all(|p| !p.desc.name.contains(".io.wait.")));
    }

    target.collector.close().await;
    assert!(
        target.missing().is_empty(),
        "close withdraws the capability gauges"
    );
}

#[tokio::test]
async fn monitoring_user_lacking_grants_is_told_which_grant_is_missing() {
    init_tracing();
    let db = MariaDbServer::start(MariaDbOptions::default())
        .await
        .unwrap();
    let admin = db.admin_pool().await.unwrap();
    db.create_user("partial", PASSWORD).await.unwrap();
    exec(&admin, "GRANT PROCESS ON *.* TO 'partial'@'%'").await;

    let mut target = Target::new(&db, "partial", "partial", Some(PASSWORD));
    let scrape = target.scrape().await;
    assert_eq!(
        target.missing(),
        [
            "grant:SELECT ON performance_schema.*",
            "grant:SLAVE MONITOR"
        ],
        "SLAVE MONITOR is MariaDB 10.5.9+'s name for the replica status grant"
    );
    assert!(
        value(&scrape, "mysql.query.count", &[]).is_some(),
        "global status stays"
    );
    assert!(scrape.statements.is_none());

    // Granting what was missing is picked up by a later probe (after a reconnect here).
    exec(&admin, "GRANT SLAVE MONITOR ON *.* TO 'partial'@'%'").await;
    exec(
        &admin,
        "GRANT SELECT ON performance_schema.* TO 'partial'@'%'",
    )
    .await;
    target.collector.close().await;
    let mut target = Target::new(&db, "partial", "partial", Some(PASSWORD));
    let scrape = target.scrape().await;
    assert!(
        target.missing().is_empty(),
        "still missing: {:?}",
        target.missing()
    );
    assert!(scrape.statements.is_some());
}

#[tokio::test]
async fn stopped_replica_is_reported_not_running_without_a_lag_of_zero() {
    init_tracing();
    let db = MariaDbServer::start(MariaDbOptions::default())
        .await
        .unwrap();
    let admin = db.admin_pool().await.unwrap();
    // A source nobody listens on; the replica threads are never started (case my-02).
    let sql = format!(
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'r'",
        free_port()
    );
    exec(&admin, &sql).await;

    let mut target = Target::new(&db, "replica", "root", None);
    let scrape = target.scrape().await;
    assert_eq!(value(&scrape, "mysql.replica.running", &[]), Some(0));
    assert_eq!(value(&scrape, "mysql.replica.sql_delay", &[]), Some(0));
    assert!(
        scrape
            .points
            .iter()
            .all(|p| p.desc.name != "mysql.replica.time_behind_source"),
        "NULL Seconds_Behind_Master must not become a lag point"
    );
    target.collector.close().await;
}

#[tokio::test]
async fn unreachable_target_fails_with_a_timeout_within_its_connect_deadline() {
    init_tracing();
    let hole = Blackhole::start().unwrap();
    let mut target = Target::with(
        hole.port(),
        "hole",
        "monitor",
        Some(PASSWORD),
        Databases::Listed(vec![]),
    );

    let err = target
        .collector
        .scrape()
        .await
        .expect_err("nothing answers");
    // The server never greets: the connect deadline, not a refusal, ends the attempt.
    assert_eq!(err.kind, ErrorKind::Timeout);
    assert_eq!(&*err.target, "hole");
    assert!(hole.accepted() >= 1, "the attempt reached the listener");

    // The error names no credential.
    let chain = error_chain(&err);
    assert!(!chain.contains(PASSWORD), "{chain}");
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
