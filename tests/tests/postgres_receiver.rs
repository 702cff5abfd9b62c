//! The PostgreSQL receiver against throwaway PostgreSQL 15 servers: every family with the
//! values the test wrote, and the field cases pg-01 to pg-08 that a single server can
//! reproduce.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use dbcollector_tests::{Blackhole, PgOptions, PgServer};
use dbcollector_worker::config::{Connections, DbTls, Engine, QueryText, Statements, ValueSource};
use dbcollector_worker::metrics::{AttrValue, Point};
use dbcollector_worker::pool::Endpoints;
use dbcollector_worker::receivers::postgres::{checkpointer_query, Collector, APPLICATION_NAME};
use dbcollector_worker::receivers::{Databases, ErrorKind, Scrape, TargetSpec};
use dbcollector_worker::telemetry::{CapabilityLabels, Metrics};
use sqlx::{ConnectOptions as _, Connection as _, Executor as _, PgConnection, Row as _};
use tokio::sync::OnceCell;

/// The password of pg-05: every character that breaks a connection URL.
const URL_HOSTILE_PASSWORD: &str = "p@ss:w%rd#1;x=y?&";

/// One server for the tests that only add their own, uniquely named objects.
static SHARED: OnceCell<PgServer> = OnceCell::const_new();

async fn shared() -> &'static PgServer {
    SHARED
        .get_or_init(|| async {
            dbcollector_tests::init_tracing();
            PgServer::start(PgOptions::default())
                .await
                .expect("starting the shared postgres")
        })
        .await
}

fn spec(name: &str, port: u16, databases: Databases, user: &str, carrier: bool) -> TargetSpec {
    TargetSpec {
        name: Arc::from(name),
        engine: Engine::Postgresql,
        host: Arc::from("127.0.0.1"),
        port,
        databases,
        user: user.to_owned(),
        password: None,
        tls: DbTls::default(),
        interval: Duration::from_secs(10),
        query_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        lock_timeout: Duration::from_secs(1),
        relation_limit: 100,
        statements: Statements {
            query_text: QueryText::Obfuscated,
            ..Statements::default()
        },
        carrier,
    }
}

fn listed(names: &[&str]) -> Databases {
    Databases::Listed(names.iter().map(|n| Arc::from(*n)).collect())
}

fn new_collector(spec: TargetSpec) -> (Collector, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::unregistered());
    let endpoints = Endpoints::new(Connections::default(), metrics.clone());
    (Collector::new(spec, &endpoints, metrics.clone()), metrics)
}

fn capability_missing(metrics: &Metrics, target: &str, capability: &str) -> i64 {
    let labels = CapabilityLabels {
        target: target.to_owned(),
        capability: capability.to_owned(),
    };
    metrics.capability_missing.get_or_create(&labels).get()
}

async fn connect(server: &PgServer, database: &str) -> anyhow::Result<PgConnection> {
    Ok(server
        .connect_options("postgres", None, database)
        .connect()
        .await?)
}

fn attr(p: &Point, key: &str) -> Option<String> {
    p.attrs
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| match v {
            AttrValue::Str(s) => s.to_string(),
            other => other.to_string(),
        })
}

/// Points of metric `name` whose attributes include every `(key, value)` of `with`.
fn find<'a>(scrape: &'a Scrape, name: &str, with: &[(&str, &str)]) -> Vec<&'a Point> {
    scrape
        .points
        .iter()
        .filter(|p| p.desc.name == name)
        .filter(|p| with.iter().all(|(k, v)| attr(p, k).as_deref() == Some(*v)))
        .collect()
}

/// The value of the one point of `name` with `with`, if there is exactly one.
fn value(scrape: &Scrape, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    match find(scrape, name, with).as_slice() {
        [p] => Some(p.value.as_f64()),
        _ => None,
    }
}

/// Scrapes until `done` holds: other sessions' counters reach the statistics views
/// about a second after their transactions end. Bounded to 15 s.
async fn scrape_until(
    collector: &mut Collector,
    done: impl Fn(&Scrape) -> bool,
) -> anyhow::Result<Scrape> {
    let mut last = None;
    for _ in 0..75 {
        let scrape = collector.scrape().await?;
        if done(&scrape) {
            return Ok(scrape);
        }
        last = Some(scrape);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("condition never held; last scrape: {last:#?}")
}

/// Writes `password` to a file the target reads it from.
fn password_file(dir: &tempfile::TempDir, password: &str) -> anyhow::Result<ValueSource> {
    let path = dir.path().join("password");
    std::fs::write(&path, format!("{password}\n"))?;
    Ok(ValueSource::File(path))
}

#[tokio::test]
async fn every_family_is_reported_with_the_values_the_test_wrote() -> anyhow::Result<()> {
    let server = shared().await;
    let admin = server.admin_pool().await?;
    admin.execute("CREATE DATABASE fam_app").await?;
    admin
        .execute("SELECT pg_create_physical_replication_slot('fam_slot', true)")
        .await?;
    let mut app = connect(server, "fam_app").await?;
    app.execute(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 100) g;
         ANALYZE items;
         SET enable_seqscan = off;",
    )
    .await?;
    for id in 1..=5 {
        sqlx::query("SELECT name FROM items WHERE id = $1")
            .bind(id)
            .fetch_one(&mut app)
            .await?;
    }
    app.close().await?;

    let (mut collector, metrics) = new_collector(spec(
        "fam",
        server.port(),
        listed(&["fam_app"]),
        "postgres",
        true,
    ));
    let table = [
        ("postgresql.database.name", "fam_app"),
        ("postgresql.table.name", "items"),
    ];
    let ins = [table[0], table[1], ("operation", "ins")];
    let scrape = scrape_until(&mut collector, |s| {
        value(s, "postgresql.operations", &ins) == Some(100.0)
            && value(
                s,
                "postgresql.index.scans",
                &[("postgresql.index.name", "items_pkey")],
            )
            .is_some_and(|v| v >= 5.0)
    })
    .await?;

    // Per-table and per-index families.
    let live = [table[0], table[1], ("state", "live")];
    assert_eq!(value(&scrape, "postgresql.rows", &live), Some(100.0));
    assert_eq!(
        value(&scrape, "postgresql.rows", &[table[1], ("state", "dead")]),
        Some(0.0)
    );
    assert!(value(&scrape, "postgresql.table.size", &table).is_some_and(|v| v > 0.0));
    assert_eq!(
        value(&scrape, "postgresql.table.count", &[table[0]]),
        Some(1.0)
    );
    assert_eq!(
        value(&scrape, "postgresql.table.analyze.count", &table),
        Some(1.0)
    );
    assert!(value(&scrape, "postgresql.sequential_scans", &table).is_some());
    assert!(value(&scrape, "postgresql.table.index_scans", &table).is_some_and(|v| v >= 5.0));
    let pkey = [
        ("postgresql.schema.name", "public"),
        ("postgresql.index.name", "items_pkey"),
    ];
    assert!(value(&scrape, "postgresql.index.size", &pkey).is_some_and(|v| v > 0.0));
    assert!(!find(
        &scrape,
        "postgresql.blocks_read",
        &[table[1], ("source", "heap_hit")]
    )
    .is_empty());

    // pg_stat_database, for every database of the server but never the shared row.
    let db = [("postgresql.database.name", "fam_app")];
    assert!(value(&scrape, "postgresql.commits", &db).is_some_and(|v| v > 0.0));
    assert!(value(&scrape, "postgresql.tup_inserted", &db).is_some_and(|v| v >= 100.0));
    assert!(value(&scrape, "postgresql.db_size", &db).is_some_and(|v| v > 0.0));
    assert!(value(
        &scrape,
        "postgresql.commits",
        &[("postgresql.database.name", "postgres")]
    )
    .is_some());
    assert!(find(&scrape, "postgresql.commits", &[])
        .iter()
        .all(|p| attr(p, "postgresql.database.name").is_some()));
    assert!(find(
        &scrape,
        "postgresql.commits",
        &[("postgresql.database.name", "template1")]
    )
    .is_empty());
    let commits = find(&scrape, "postgresql.commits", &db)[0];
    assert!(commits.start_unix_nanos > 0 && commits.start_unix_nanos < commits.time_unix_nanos);

    // Server-wide families.
    let max: String = sqlx::query_scalar("SHOW max_connections")
        .fetch_one(&admin)
        .await?;
    assert_eq!(
        value(&scrape, "postgresql.connection.max", &[]),
        Some(max.parse::<f64>()?)
    );
    assert!(!find(
        &scrape,
        "postgresql.connection.count",
        &[("postgresql.state", "active")]
    )
    .is_empty());
    assert!(value(&scrape, "postgresql.bgwriter.buffers.allocated", &[]).is_some());
    assert!(value(
        &scrape,
        "postgresql.bgwriter.checkpoint.count",
        &[("type", "requested")]
    )
    .is_some());
    assert!(value(
        &scrape,
        "postgresql.bgwriter.buffers.writes",
        &[("source", "backend")]
    )
    .is_some());
    assert!(value(&scrape, "postgresql.wal.bytes", &[]).is_some_and(|v| v > 0.0));
    assert!(
        value(&scrape, "postgresql.wal.age", &[]).is_none(),
        "nothing was archived"
    );
    let slot = [("postgresql.replication.slot.name", "fam_slot")];
    assert_eq!(
        value(&scrape, "postgresql.replication.slot.active", &slot),
        Some(0.0)
    );
    assert!(value(&scrape, "postgresql.replication.slot.retained", &slot).is_some());
    assert!(!find(
        &scrape,
        "postgresql.database.locks",
        &[("mode", "AccessShareLock")]
    )
    .is_empty());
    assert!(find(&scrape, "postgresql.replication.data_delay", &[]).is_empty());

    // pg_stat_statements, as rows for the statements processor.
    let set = scrape.statements.as_ref().context("statements read")?;
    let lookup = set
        .rows
        .iter()
        .find(|r| {
            r.text
                .as_deref()
                .is_some_and(|t| t.contains("FROM items WHERE id = $1"))
        })
        .context("the lookup statement is reported")?;
    assert!(lookup.calls >= 5, "calls {}", lookup.calls);
    assert!(lookup.key.starts_with("fam_app/postgres/"));
    assert!(lookup
        .attrs
        .iter()
        .any(|(k, v)| *k == "user.name" && v.to_string() == "postgres"));
    assert!(set.start_unix_nanos > 0 && set.start_unix_nanos <= set.time_unix_nanos);

    // The resource names the target; nothing is missing for a superuser.
    assert!(scrape
        .resource
        .attrs
        .contains(&("dbcollector.target", "fam".into())));
    assert!(scrape
        .resource
        .attrs
        .contains(&("db.system.name", "postgresql".into())));
    assert_eq!(capability_missing(&metrics, "fam", "pg_stat_statements"), 0);
    assert_eq!(capability_missing(&metrics, "fam", "pg_monitor"), 0);

    // Commits made now show up as an increase.
    let before = value(&scrape, "postgresql.commits", &db).context("commits")?;
    let mut app = connect(server, "fam_app").await?;
    for id in 101..=103 {
        sqlx::query("INSERT INTO items VALUES ($1, 'more')")
            .bind(id)
            .execute(&mut app)
            .await?;
    }
    app.close().await?;
    scrape_until(&mut collector, |s| {
        value(s, "postgresql.commits", &db).is_some_and(|after| after >= before + 3.0)
    })
    .await?;
    collector.close().await;
    Ok(())
}

#[tokio::test]
async fn names_that_need_quoting_are_reported_exactly_as_stored() -> anyhow::Result<()> {
    let server = shared().await;
    let admin = server.admin_pool().await?;
    admin.execute(r#"CREATE DATABASE "Reporting""DB""#).await?;
    let mut db = connect(server, "Reporting\"DB").await?;
    db.execute(
        r#"CREATE SCHEMA "Sales";
           CREATE TABLE "Sales"."Order Items" (id int PRIMARY KEY, qty int);
           INSERT INTO "Sales"."Order Items" SELECT g, g FROM generate_series(1, 10) g;
           ANALYZE "Sales"."Order Items";"#,
    )
    .await?;
    db.close().await?;

    let (mut collector, _) = new_collector(spec(
        "quoting",
        server.port(),
        listed(&["Reporting\"DB"]),
        "postgres",
        true,
    ));
    let table = [
        ("postgresql.database.name", "Reporting\"DB"),
        ("postgresql.schema.name", "Sales"),
        ("postgresql.table.name", "Order Items"),
    ];
    let live = [table[0], table[1], table[2], ("state", "live")];
    let scrape = scrape_until(&mut collector, |s| {
        value(s, "postgresql.rows", &live) == Some(10.0)
    })
    .await?;

    assert!(value(&scrape, "postgresql.table.size", &table).is_some_and(|v| v > 0.0));
    let index = [
        table[0],
        table[1],
        table[2],
        ("postgresql.index.name", "Order Items_pkey"),
    ];
    assert!(value(&scrape, "postgresql.index.size", &index).is_some_and(|v| v > 0.0));
    let db = [("postgresql.database.name", "Reporting\"DB")];
    assert!(value(&scrape, "postgresql.db_size", &db).is_some_and(|v| v > 0.0));
    assert!(value(&scrape, "postgresql.commits", &db).is_some());
    collector.close().await;
    Ok(())
}

#[tokio::test]
async fn statements_are_read_from_an_extension_in_a_schema_off_the_search_path(
) -> anyhow::Result<()> {
    let server = shared().await;
    let admin = server.admin_pool().await?;
    admin
        .execute("CREATE DATABASE stmts_odd TEMPLATE template0")
        .await?;
    let mut db = connect(server, "stmts_odd").await?;
    db.execute(
        r#"CREATE SCHEMA "Mon itor";
           CREATE EXTENSION pg_stat_statements SCHEMA "Mon itor";"#,
    )
    .await?;
    for _ in 0..7 {
        sqlx::query("SELECT count(*) FROM pg_class WHERE relname = $1 AND relpages >= 0")
            .bind("pg_type")
            .fetch_one(&mut db)
            .await?;
    }
    db.close().await?;

    let (mut collector, metrics) = new_collector(spec(
        "odd-schema",
        server.port(),
        listed(&["stmts_odd"]),
        "postgres",
        true,
    ));
    let scrape = collector.scrape().await?;

    let set = scrape.statements.as_ref().context("statements read")?;
    let row = set
        .rows
        .iter()
        .filter(|r| r.key.starts_with("stmts_odd/postgres/"))
        .find(|r| {
            r.text
                .as_deref()
                .is_some_and(|t| t.contains("relpages >= $2"))
        })
        .context("the statement run 7 times is reported")?;
    assert!(row.calls >= 7, "calls {}", row.calls);
    assert!(row.total_time_s >= 0.0);
    assert_eq!(
        capability_missing(&metrics, "odd-schema", "pg_stat_statements"),
        0
    );
    collector.close().await;
    Ok(())
}

#[tokio::test]
async fn a_database_without_pg_stat_statements_reports_the_gap_and_keeps_other_families(
) -> anyhow::Result<()> {
    let server = shared().await;
    let admin = server.admin_pool().await?;
    admin
        .execute("CREATE DATABASE no_pgss TEMPLATE template0")
        .await?;
    let mut db = connect(server, "no_pgss").await?;
    db.execute("CREATE TABLE plain (id int)").await?;
    db.close().await?;

    let (mut collector, metrics) = new_collector(spec(
        "no-pgss",
        server.port(),
        listed(&["no_pgss"]),
        "postgres",
        true,
    ));
    let scrape = collector.scrape().await?;

    assert!(scrape.statements.is_none());
    assert_eq!(
        capability_missing(&metrics, "no-pgss", "pg_stat_statements"),
        1
    );
    let db = [("postgresql.database.name", "no_pgss")];
    assert!(value(&scrape, "postgresql.commits", &db).is_some());
    assert_eq!(value(&scrape, "postgresql.table.count", &db), Some(1.0));
    assert!(value(&scrape, "postgresql.connection.max", &[]).is_some());

    // Closing withdraws the report.
    collector.close().await;
    assert_eq!(
        capability_missing(&metrics, "no-pgss", "pg_stat_statements"),
        0
    );
    Ok(())
}

#[tokio::test]
async fn an_extension_whose_library_is_not_preloaded_is_a_gap_not_a_failure() -> anyhow::Result<()>
{
    let server = PgServer::start(PgOptions {
        extra_conf: vec!["shared_preload_libraries = ''".into()],
        ..PgOptions::default()
    })
    .await?;

    let (mut collector, metrics) = new_collector(spec(
        "not-preloaded",
        server.port(),
        listed(&["postgres"]),
        "postgres",
        true,
    ));
    let scrape = collector.scrape().await?;

    assert!(scrape.statements.is_none());
    assert_eq!(
        capability_missing(&metrics, "not-preloaded", "pg_stat_statements"),
        1
    );
    let db = [("postgresql.database.name", "postgres")];
    assert!(value(&scrape, "postgresql.commits", &db).is_some());
    assert!(value(&scrape, "postgresql.bgwriter.buffers.allocated", &[]).is_some());
    collector.close().await;
    Ok(())
}

#[tokio::test]
async fn discovery_skips_templates_and_databases_that_refuse_connections() -> anyhow::Result<()> {
    let server = shared().await;
    server
        .create_login_role("disc_mon", URL_HOSTILE_PASSWORD)
        .await?;
    let admin = server.admin_pool().await?;
    // CREATE DATABASE refuses to run inside a multi-statement (implicit) transaction.
    for statement in [
        "CREATE DATABASE disc_open",
        "CREATE DATABASE disc_closed ALLOW_CONNECTIONS false",
        "CREATE DATABASE disc_private",
        "REVOKE CONNECT ON DATABASE disc_private FROM PUBLIC",
        "CREATE DATABASE disc_template IS_TEMPLATE true",
    ] {
        admin.execute(statement).await?;
    }
    let mut open = connect(server, "disc_open").await?;
    open.execute("CREATE TABLE t1 (id int); GRANT SELECT ON t1 TO disc_mon")
        .await?;
    open.close().await?;

    let dir = tempfile::tempdir()?;
    let mut target = spec(
        "discover",
        server.port(),
        Databases::Discover {
            include: vec!["disc_*".into()],
            exclude: vec![],
        },
        "disc_mon",
        false,
    );
    target.password = Some(password_file(&dir, URL_HOSTILE_PASSWORD)?);
    let (mut collector, metrics) = new_collector(target);
    let scrape = collector.scrape().await?;

    let databases: std::collections::BTreeSet<String> = scrape
        .points
        .iter()
        .filter_map(|p| attr(p, "postgresql.database.name"))
        .collect();
    assert_eq!(databases.into_iter().collect::<Vec<_>>(), ["disc_open"]);
    assert_eq!(
        value(
            &scrape,
            "postgresql.table.count",
            &[("postgresql.database.name", "disc_open")]
        ),
        Some(1.0)
    );
    assert_eq!(
        capability_missing(&metrics, "discover", "database_connect"),
        1
    );
    assert_eq!(capability_missing(&metrics, "discover", "pg_monitor"), 1);

    // Only the discovery home and the open database ever had a session.
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT datname::text FROM pg_stat_activity WHERE usename = 'disc_mon'",
    )
    .fetch_all(&admin)
    .await?;
    assert!(
        sessions.iter().all(|d| d == "postgres" || d == "disc_open"),
        "{sessions:?}"
    );
    collector.close().await;
    Ok(())
}

#[tokio::test]
async fn a_listed_database_that_refuses_the_role_is_reported_and_not_retried_every_interval(
) -> anyhow::Result<()> {
    let server = shared().await;
    let (mut collector, metrics) = new_collector(spec(
        "refused",
        server.port(),
        listed(&["postgres", "listed_missing"]),
        "postgres",
        false,
    ));

    for _ in 0..3 {
        let scrape = collector.scrape().await?;
        let postgres = [("postgresql.database.name", "postgres")];
        assert!(value(&scrape, "postgresql.table.count", &postgres).is_some());
    }

    assert_eq!(
        capability_missing(&metrics, "refused", "database_connect"),
        1
    );
    let attempts = server
        .log()
        .matches("\"listed_missing\" does not exist")
        .count();
    assert_eq!(
        attempts, 1,
        "one refusal, then left alone until the slow timer"
    );
    collector.close().await;
    Ok(())
}

#[tokio::test]
async fn a_password_with_url_special_characters_logs_in_and_is_never_echoed() -> anyhow::Result<()>
{
    let server = shared().await;
    server
        .create_login_role("pw_mon", URL_HOSTILE_PASSWORD)
        .await?;
    let dir = tempfile::tempdir()?;

    let mut target = spec(
        "password",
        server.port(),
        listed(&["postgres"]),
        "pw_mon",
        false,
    );
    target.password = Some(password_file(&dir, URL_HOSTILE_PASSWORD)?);
    let (mut collector, _) = new_collector(target.clone());
    let scrape = collector.scrape().await?;
    let postgres = [("postgresql.database.name", "postgres")];
    assert!(value(&scrape, "postgresql.table.count", &postgres).is_some());
    collector.close().await;

    let wrong = format!("{URL_HOSTILE_PASSWORD}-wrong");
    let other = tempfile::tempdir()?;
    target.password = Some(password_file(&other, &wrong)?);
    let (mut collector, _) = new_collector(target);
    let err = collector
        .scrape()
        .await
        .err()
        .context("a wrong password fails")?;
    assert_eq!(err.kind, ErrorKind::Connect);
    let mut shown = format!("{err:?}");
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        shown.push_str(&e.to_string());
        source = e.source();
    }
    assert!(
        shown.contains("pw_mon") || shown.contains("password"),
        "{shown}"
    );
    assert!(
        !shown.contains(URL_HOSTILE_PASSWORD),
        "password echoed: {shown}"
    );
    Ok(())
}

#[tokio::test]
async fn a_session_holding_access_exclusive_neither_stalls_the_scrape_nor_grows_connections(
) -> anyhow::Result<()> {
    let server = PgServer::start(PgOptions::default()).await?;
    let admin = server.admin_pool().await?;
    let mut setup = connect(&server, "postgres").await?;
    setup
        .execute(
            "CREATE TABLE locked_t (id int PRIMARY KEY);
             CREATE TABLE free_t (id int PRIMARY KEY);
             INSERT INTO locked_t SELECT generate_series(1, 10);
             INSERT INTO free_t SELECT generate_series(1, 10);",
        )
        .await?;
    setup.close().await?;

    // pg-06: an ALTER TABLE in an open transaction holds ACCESS EXCLUSIVE until the end.
    let mut holder = connect(&server, "postgres").await?;
    holder
        .execute("BEGIN; ALTER TABLE locked_t ADD COLUMN x int;")
        .await?;

    let mut target = spec(
        "locked",
        server.port(),
        listed(&["postgres"]),
        "postgres",
        true,
    );
    target.query_timeout = Duration::from_secs(2);
    target.lock_timeout = Duration::from_millis(500);
    let metrics = Arc::new(Metrics::unregistered());
    let endpoints = Endpoints::new(Connections::default(), metrics.clone());
    let mut collector = Collector::new(target, &endpoints, metrics);
    let budget = endpoints
        .endpoint("127.0.0.1", server.port(), None)
        .budget();

    for _ in 0..3 {
        // A hang guard, far above the per-query deadlines.
        let scrape = tokio::time::timeout(Duration::from_secs(60), collector.scrape())
            .await
            .context("the scrape hung")??;
        let free = [("postgresql.table.name", "free_t")];
        let locked = [("postgresql.table.name", "locked_t")];
        assert!(value(&scrape, "postgresql.table.size", &free).is_some());
        assert!(value(&scrape, "postgresql.table.size", &locked).is_none());
        assert!(value(&scrape, "postgresql.sequential_scans", &locked).is_some());
        assert!(value(
            &scrape,
            "postgresql.commits",
            &[("postgresql.database.name", "postgres")]
        )
        .is_some());
        assert!(scrape.statements.is_some());

        let sessions: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(APPLICATION_NAME)
                .fetch_one(&admin)
                .await?;
        assert!(
            sessions <= i64::from(budget),
            "{sessions} sessions, budget {budget}"
        );
    }

    holder.execute("ROLLBACK").await?;
    collector.close().await;
    Ok(())
}

/// `pg_receivewal` from the server's binaries (as the harness finds them).
fn receivewal() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir).join("pg_receivewal"));
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
        .max_by_key(|(major, _)| *major)
        .context("no PostgreSQL binaries")?;
    Ok(newest.1.join("bin/pg_receivewal"))
}

#[tokio::test]
async fn a_standby_without_a_replay_position_reports_no_data_delay_rather_than_a_number(
) -> anyhow::Result<()> {
    let server = PgServer::start(PgOptions {
        extra_hba: vec!["host replication postgres 127.0.0.1/32 trust".into()],
        ..PgOptions::default()
    })
    .await?;
    let admin = server.admin_pool().await?;
    admin
        .execute("SELECT pg_create_physical_replication_slot('recv_slot', true)")
        .await?;

    // pg_receivewal streams WAL but never replays it: its replay_lsn stays NULL (pg-07).
    let wal_dir = tempfile::tempdir()?;
    let mut receiver = tokio::process::Command::new(receivewal()?)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["--slot", "recv_slot", "--no-sync", "-n", "-D"])
        .arg(wal_dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut streaming = false;
    for _ in 0..100 {
        streaming = sqlx::query_scalar::<_, bool>(
            "SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .fetch_one(&admin)
        .await?;
        if streaming {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(streaming, "pg_receivewal never streamed");
    admin
        .execute("CREATE TABLE wal_traffic AS SELECT generate_series(1, 1000) AS g")
        .await?;

    let (mut collector, _) = new_collector(spec(
        "standby",
        server.port(),
        listed(&["postgres"]),
        "postgres",
        true,
    ));
    let scrape = collector.scrape().await?;

    let slot = [("postgresql.replication.slot.name", "recv_slot")];
    assert_eq!(
        value(&scrape, "postgresql.replication.slot.active", &slot),
        Some(1.0)
    );
    assert!(find(&scrape, "postgresql.replication.data_delay", &[]).is_empty());
    // Lags the server does report (they come and go with WAL traffic) are plausible and
    // name the standby by its address alone.
    for lag in find(&scrape, "postgresql.wal.delay", &[]) {
        assert_eq!(
            attr(lag, "replication_client").as_deref(),
            Some("127.0.0.1")
        );
        let seconds = lag.value.as_f64();
        assert!(
            (0.0..3600.0).contains(&seconds),
            "implausible lag {seconds}"
        );
    }
    let row = sqlx::query("SELECT replay_lsn IS NULL AS unreplayed FROM pg_stat_replication")
        .fetch_one(&admin)
        .await?;
    assert!(
        row.try_get::<bool, _>("unreplayed")?,
        "the case needs a NULL replay position"
    );

    receiver.kill().await?;
    collector.close().await;
    Ok(())
}

#[tokio::test]
async fn the_postgres_17_checkpointer_query_reads_a_view_of_that_shape() -> anyhow::Result<()> {
    let server = shared().await;
    let admin = server.admin_pool().await?;
    admin.execute("CREATE DATABASE pg17_shape").await?;
    let mut db = connect(server, "pg17_shape").await?;
    // PostgreSQL 17 moved these columns; on 15 a view in a schema on the search path
    // stands in for pg_catalog.pg_stat_checkpointer.
    db.execute(
        "CREATE SCHEMA pg17;
         CREATE VIEW pg17.pg_stat_checkpointer AS
           SELECT checkpoints_timed AS num_timed, checkpoints_req AS num_requested,
                  checkpoint_write_time AS write_time, checkpoint_sync_time AS sync_time,
                  buffers_checkpoint AS buffers_written, stats_reset
             FROM pg_catalog.pg_stat_bgwriter;
         CHECKPOINT;
         SET search_path = pg17;",
    )
    .await?;

    // One statistics snapshot for both reads: other tests' CREATE DATABASE checkpoints.
    db.execute("BEGIN; SET LOCAL stats_fetch_consistency = snapshot")
        .await?;
    let row = sqlx::query(checkpointer_query()).fetch_one(&mut db).await?;
    let expected = sqlx::query(
        "SELECT checkpoints_req::int8 AS req, buffers_checkpoint::int8 AS written
           FROM pg_catalog.pg_stat_bgwriter",
    )
    .fetch_one(&mut db)
    .await?;
    db.execute("COMMIT").await?;
    assert_eq!(
        row.try_get::<Option<i64>, _>("checkpoints_req")?,
        Some(expected.try_get::<i64, _>("req")?)
    );
    assert_eq!(
        row.try_get::<Option<i64>, _>("buffers_checkpoint")?,
        Some(expected.try_get::<i64, _>("written")?)
    );
    assert_eq!(row.try_get::<Option<i64>, _>("buffers_backend")?, None);
    db.close().await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_target_fails_with_connect_or_timeout_within_its_deadline(
) -> anyhow::Result<()> {
    let blackhole = Blackhole::start()?;
    let mut target = spec(
        "unreachable",
        blackhole.port(),
        listed(&["postgres"]),
        "postgres",
        true,
    );
    target.connect_timeout = Duration::from_secs(1);
    let (mut collector, _) = new_collector(target);

    // A hang guard well above the connect deadline.
    let result = tokio::time::timeout(Duration::from_secs(30), collector.scrape())
        .await
        .context("the scrape outlived its connect deadline")?;
    let err = result.err().context("a silent server cannot be scraped")?;
    assert!(
        matches!(err.kind, ErrorKind::Connect | ErrorKind::Timeout),
        "{:?}",
        err.kind
    );
    assert_eq!(&*err.target, "unreachable");
    assert!(
        blackhole.accepted() >= 1,
        "the attempt reached the listener"
    );
    collector.close().await;
    Ok(())
}
