//! The estate the sharding tests collect: two throwaway PostgreSQL servers and one
//! MariaDB server, started once per test binary, with one target per database.

#![allow(dead_code)] // each test binary uses a different part

use std::time::Duration;

use dbcollector_tests::{MariaDbOptions, MariaDbServer, PgOptions, PgServer};
use serde_json::{json, Value};
use tokio::sync::OnceCell;

/// The collection interval of every target.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Databases per PostgreSQL server, each a target.
pub const PG_DATABASES: usize = 8;

/// Schemas on the MariaDB server, each a target.
pub const MARIADB_SCHEMAS: usize = 6;

/// The database servers every scenario collects.
pub struct Servers {
    pub pg: [PgServer; 2],
    pub mariadb: MariaDbServer,
}

/// Starts the servers once per test binary and creates the targets' databases, each with
/// a table holding a few rows.
pub async fn servers() -> &'static Servers {
    static SERVERS: OnceCell<Servers> = OnceCell::const_new();
    SERVERS
        .get_or_init(|| async {
            let (a, b, mariadb) = tokio::join!(
                PgServer::start(PgOptions::default()),
                PgServer::start(PgOptions::default()),
                MariaDbServer::start(MariaDbOptions::default()),
            );
            let servers = Servers {
                pg: [a.unwrap(), b.unwrap()],
                mariadb: mariadb.unwrap(),
            };
            for pg in &servers.pg {
                let admin = pg.admin_pool().await.unwrap();
                for i in 0..PG_DATABASES {
                    sqlx::query(&format!("CREATE DATABASE app{i}"))
                        .execute(&admin)
                        .await
                        .unwrap();
                    let db =
                        sqlx::PgPool::connect_with(pg.admin_options().database(&format!("app{i}")))
                            .await
                            .unwrap();
                    sqlx::query(
                        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 100) g",
                    )
                    .execute(&db)
                    .await
                    .unwrap();
                    db.close().await;
                }
                admin.close().await;
            }
            let admin = servers.mariadb.admin_pool().await.unwrap();
            for i in 0..MARIADB_SCHEMAS {
                sqlx::query(&format!("CREATE DATABASE app{i}"))
                    .execute(&admin)
                    .await
                    .unwrap();
                sqlx::query(&format!("CREATE TABLE app{i}.orders (id int PRIMARY KEY)"))
                    .execute(&admin)
                    .await
                    .unwrap();
            }
            admin.close().await;
            servers
        })
        .await
}

/// The targets: one per database, named after their server (`pga-db3`, `maria-db2`). With
/// these names no two targets share a slot of the default shard space, so the bound on
/// moved targets stays below their number.
pub fn targets(servers: &Servers) -> Vec<Value> {
    let mut targets = Vec::new();
    for (letter, pg) in ["a", "b"].iter().zip(&servers.pg) {
        for i in 0..PG_DATABASES {
            targets.push(json!({
                "name": format!("pg{letter}-db{i}"), "engine": "postgresql",
                "host": "127.0.0.1", "port": pg.port(), "user": "postgres",
                "databases": [format!("app{i}")],
            }));
        }
    }
    for i in 0..MARIADB_SCHEMAS {
        targets.push(json!({
            "name": format!("maria-db{i}"), "engine": "mysql",
            "host": "127.0.0.1", "port": servers.mariadb.port(), "user": "root",
            "databases": [format!("app{i}")],
        }));
    }
    targets
}

/// The server endpoints, as the coverage keys them.
pub fn endpoints(servers: &Servers) -> Vec<String> {
    let mut ports: Vec<u16> = servers.pg.iter().map(PgServer::port).collect();
    ports.push(servers.mariadb.port());
    ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect()
}

/// A PostgreSQL target named `name` on database `db` of the server at `port`.
pub fn pg_target(name: &str, port: u16, db: &str) -> Value {
    json!({
        "name": name, "engine": "postgresql", "host": "127.0.0.1", "port": port,
        "user": "postgres", "databases": [db],
    })
}

/// The names of `targets`.
pub fn names(targets: &[Value]) -> Vec<String> {
    targets
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}
