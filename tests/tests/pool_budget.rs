//! The per-server connection budget, counted by the server itself: more databases than
//! the budget rotate through it, and every connection opened (a rotation, or a
//! replacement after the server dropped one) is counted.

use std::sync::Arc;
use std::time::Duration;

use dbcollector_tests::{PgOptions, PgServer};
use dbcollector_worker::config::Config;
use dbcollector_worker::pool::Endpoints;
use dbcollector_worker::receivers::{postgres, TargetSpec};
use dbcollector_worker::telemetry::{Metrics, ServerLabel};

async fn sessions(admin: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbcollector'",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

fn collector(pg: &PgServer, databases: &str, max: u32) -> (postgres::Collector, Arc<Metrics>) {
    let config = Config::from_yaml(&format!(
        "version: 1
connections: {{ max_per_server: {max} }}
exporter: {{ endpoint: http://127.0.0.1:4317 }}
targets:
  - {{ name: pg, engine: postgresql, host: 127.0.0.1, port: {}, user: postgres, databases: {databases} }}
",
        pg.port()
    ))
    .unwrap();
    let spec = TargetSpec::resolve(&config).remove(0);
    let metrics = Arc::new(Metrics::unregistered());
    let endpoints = Endpoints::new(config.connections.clone(), metrics.clone());
    (
        postgres::Collector::new(spec, &endpoints, metrics.clone()),
        metrics,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_databases_than_the_budget_rotate_and_never_exceed_it() {
    let pg = PgServer::start(PgOptions::default()).await.unwrap();
    let admin = pg.admin_pool().await.unwrap();
    for db in ["d1", "d2", "d3"] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(&admin)
            .await
            .unwrap();
    }
    // Four databases, a cap of two: connections must rotate.
    let (mut c, metrics) = collector(&pg, "[postgres, d1, d2, d3]", 2);
    let label = ServerLabel {
        server: format!("127.0.0.1:{}", pg.port()),
    };

    let watch = tokio::spawn({
        let admin = admin.clone();
        async move {
            let mut max = 0;
            for _ in 0..200 {
                max = max.max(sessions(&admin).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            max
        }
    });
    for _ in 0..3 {
        c.scrape().await.unwrap();
    }
    let max = watch.await.unwrap();
    assert!(max <= 2, "{max} sessions with a budget of 2");
    // Every scrape reads four databases through two permits: at least four opens each
    // after the first, all counted.
    let opened = metrics.connections_opened.get_or_create(&label).get();
    assert!(
        opened >= 3 * 3,
        "only {opened} connections opened over 3 rotating scrapes"
    );
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_drops_is_replaced_and_counted() {
    let pg = PgServer::start(PgOptions::default()).await.unwrap();
    let admin = pg.admin_pool().await.unwrap();
    let (mut c, metrics) = collector(&pg, "[postgres]", 10);
    let label = ServerLabel {
        server: format!("127.0.0.1:{}", pg.port()),
    };

    c.scrape().await.unwrap();
    c.scrape().await.unwrap();
    assert_eq!(
        metrics.connections_opened.get_or_create(&label).get(),
        1,
        "kept open"
    );
    assert_eq!(sessions(&admin).await, 1);

    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'dbcollector'",
    )
    .execute(&admin)
    .await
    .unwrap();
    // The next scrape may fail on the dead session; the one after runs on a new one.
    let _ = c.scrape().await;
    c.scrape().await.unwrap();
    assert_eq!(metrics.connections_opened.get_or_create(&label).get(), 2);
    assert_eq!(sessions(&admin).await, 1);
    c.close().await;
    // The backend exits just after the client's goodbye; give it a moment to go.
    dbcollector_tests::eventually("the session closed", Duration::from_secs(5), || {
        let admin = admin.clone();
        async move { Ok((sessions(&admin).await == 0).then_some(())) }
    })
    .await
    .unwrap();
}
