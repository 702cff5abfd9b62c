//! The README's main command: real PostgreSQL and MariaDB servers with some load, the
//! worker binary collecting them, and an independent OTLP receiver (the OpenTelemetry
//! project's Python protobuf bindings) printing what arrived.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use dbcollector_tests::{MariaDbOptions, MariaDbServer, PgOptions, PgServer};

struct Args {
    worker: PathBuf,
    python: PathBuf,
    receiver: PathBuf,
    seconds: u64,
    use_local: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        worker: "target/debug/dbcollector-worker".into(),
        python: "python3".into(),
        receiver: "scripts/otlp_receiver.py".into(),
        seconds: 25,
        use_local: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--worker" => args.worker = value()?.into(),
            "--python" => args.python = value()?.into(),
            "--receiver" => args.receiver = value()?.into(),
            "--seconds" => args.seconds = value()?.parse().context("--seconds")?,
            "--use-local" => args.use_local = true,
            other => bail!(
                "unknown argument {other}; usage: dbcollector-demo [--seconds N] [--use-local]"
            ),
        }
    }
    Ok(args)
}

/// Creates a few databases and tables, and keeps some load running.
async fn seed_postgres(
    admin: &sqlx::PgPool,
    options: sqlx::postgres::PgConnectOptions,
) -> anyhow::Result<()> {
    for db in ["shop", "analytics"] {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(db)
                .fetch_one(admin)
                .await?;
        if !exists {
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(admin)
                .await?;
        }
        let pool = sqlx::PgPool::connect_with(options.clone().database(db)).await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&pool)
            .await
            .ok();
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, amount int, note text)",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS orders_amount ON orders (amount)")
            .execute(&pool)
            .await?;
        tokio::spawn(async move {
            for i in 0..100_000 {
                let _ = sqlx::query("INSERT INTO orders (amount, note) VALUES ($1, 'demo')")
                    .bind(i % 1000)
                    .execute(&pool)
                    .await;
                let _ = sqlx::query("SELECT count(*) FROM orders WHERE amount = $1")
                    .bind(i % 1000)
                    .execute(&pool)
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    Ok(())
}

async fn seed_mariadb(admin: sqlx::MySqlPool) -> anyhow::Result<()> {
    sqlx::query("CREATE DATABASE IF NOT EXISTS shop")
        .execute(&admin)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS shop.orders (id int AUTO_INCREMENT PRIMARY KEY, amount int, KEY (amount))")
        .execute(&admin)
        .await?;
    tokio::spawn(async move {
        for i in 0..100_000 {
            let _ = sqlx::query("INSERT INTO shop.orders (amount) VALUES (?)")
                .bind(i % 1000)
                .execute(&admin)
                .await;
            let _ = sqlx::query("SELECT count(*) FROM shop.orders WHERE amount = ?")
                .bind(i % 1000)
                .execute(&admin)
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;

    // Servers: throwaway ones unless --use-local names the machine's own.
    let (pg, maria);
    let (pg_port, my_port, pg_options, my_admin) = if args.use_local {
        let pg_options = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(5432)
            .username("postgres");
        let my_options = sqlx::mysql::MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(3306)
            .username("root");
        (
            5432,
            3306,
            pg_options,
            sqlx::MySqlPool::connect_with(my_options).await?,
        )
    } else {
        println!("starting throwaway PostgreSQL and MariaDB servers ...");
        pg = PgServer::start(PgOptions::default()).await?;
        maria = MariaDbServer::start(MariaDbOptions::default()).await?;
        (
            pg.port(),
            maria.port(),
            pg.admin_options(),
            maria.admin_pool().await?,
        )
    };
    let pg_admin = sqlx::PgPool::connect_with(pg_options.clone()).await?;
    seed_postgres(&pg_admin, pg_options).await?;
    seed_mariadb(my_admin).await?;

    // The independent receiver.
    let otlp_port = dbcollector_tests::free_port();
    let summary_path = dir.path().join("summary.json");
    let mut receiver = tokio::process::Command::new(&args.python)
        .arg(&args.receiver)
        .arg(otlp_port.to_string())
        .arg(&summary_path)
        .spawn()
        .context("starting the OTLP receiver")?;

    let config_path = dir.path().join("worker.yaml");
    std::fs::write(
        &config_path,
        format!(
            r#"version: 1
defaults:
  interval: 5s
  statements: {{ top_n: 20, query_text: obfuscated }}
targets:
  - name: demo-postgresql
    engine: postgresql
    host: 127.0.0.1
    port: {pg_port}
    databases: [postgres, shop, analytics]
    user: postgres
  - name: demo-mariadb
    engine: mysql
    host: 127.0.0.1
    port: {my_port}
    user: root
exporter:
  endpoint: http://127.0.0.1:{otlp_port}
  protocol: http/protobuf
telemetry:
  listen: 127.0.0.1:0
"#
        ),
    )?;
    println!(
        "running dbcollector-worker for {} s (config {}) ...",
        args.seconds,
        config_path.display()
    );
    let mut worker = tokio::process::Command::new(&args.worker)
        .arg("--config")
        .arg(&config_path)
        .arg("--worker-id")
        .arg("demo-worker")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .spawn()
        .context("starting the worker")?;
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;

    // SIGTERM: the worker flushes its queue before it exits.
    signal(&worker, libc::SIGTERM);
    let status = worker.wait().await?;
    signal(&receiver, libc::SIGTERM);
    receiver.wait().await?;
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_path)?)?;
    print_summary(&summary);
    if !status.success() {
        bail!("the worker exited with {status}");
    }
    if summary["points"].as_u64().unwrap_or(0) == 0 {
        bail!("no data points arrived");
    }
    Ok(())
}

fn signal(child: &tokio::process::Child, sig: libc::c_int) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on a child we spawned and still own.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// A value for the table: integers as such, fractions to six places.
fn last(value: &serde_json::Value) -> String {
    match value.as_f64() {
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) => format!("{v:.6}"),
        None => value.to_string(),
    }
}

fn print_summary(summary: &serde_json::Value) {
    println!();
    println!("== what the independent OTLP receiver decoded ==");
    println!(
        "requests: {}   data points: {}   sent by: {}",
        summary["requests"], summary["points"], summary["workers"]
    );
    if let Some(resources) = summary["resources"].as_object() {
        for (target, attrs) in resources {
            println!("resource {target}: {attrs}");
        }
    }
    println!(
        "{:<48} {:>8} {:>10} {:>18}  unit",
        "metric", "points", "kind", "last value"
    );
    if let Some(metrics) = summary["metrics"].as_object() {
        for (name, m) in metrics {
            println!(
                "{:<48} {:>8} {:>10} {:>18}  {}",
                name,
                m["points"].as_u64().unwrap_or(0),
                m["kind"].as_str().unwrap_or(""),
                last(&m["last"]),
                m["unit"].as_str().unwrap_or("")
            );
        }
    }
}
