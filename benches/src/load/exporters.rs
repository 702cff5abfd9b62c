//! Debian's Prometheus exporters as peers: postgres_exporter and mysqld_exporter started
//! on loopback ports against the estate, configured for the same rows as the worker's
//! parity configuration, and scraped back to back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::connections::Watcher;
use super::estate::{Estate, MY_EXPORTER_USER, PASSWORD, PG_EXPORTER_USER};
use super::measure::{Measured, Server, Window};
use super::procfs::Child;
use super::prom;

/// The postgres_exporter binary of Debian's package.
pub const POSTGRES_EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";
/// The mysqld_exporter binary of Debian's package.
pub const MYSQLD_EXPORTER: &str = "/usr/bin/prometheus-mysqld-exporter";

/// Scrapes before the measured ones: connections, caches and Go's heap settle.
const WARM_UP_SCRAPES: usize = 2;

/// postgres_exporter's extended queries: the table, index and statement families the
/// worker reads. Debian's example file cannot be used as it is: it names the pre-13
/// pg_stat_statements columns (`total_time`), and with auto-discovery a query without
/// `master: true` runs in every database, so a server-wide view would come out once per
/// database with identical labels (HTTP 500 every scrape).
const PG_QUERIES: &str = r#"
pg_stat_user_tables:
  query: |
    SELECT current_database() datname, schemaname, relname, seq_scan, seq_tup_read,
           coalesce(idx_scan, 0) idx_scan, coalesce(idx_tup_fetch, 0) idx_tup_fetch,
           n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, n_live_tup, n_dead_tup,
           vacuum_count, autovacuum_count, analyze_count, autoanalyze_count,
           pg_table_size(relid) size_bytes
      FROM pg_stat_user_tables
  metrics:
    - datname: { usage: LABEL, description: Database }
    - schemaname: { usage: LABEL, description: Schema }
    - relname: { usage: LABEL, description: Table }
    - seq_scan: { usage: COUNTER, description: Sequential scans }
    - seq_tup_read: { usage: COUNTER, description: Rows read by sequential scans }
    - idx_scan: { usage: COUNTER, description: Index scans }
    - idx_tup_fetch: { usage: COUNTER, description: Rows fetched by index scans }
    - n_tup_ins: { usage: COUNTER, description: Rows inserted }
    - n_tup_upd: { usage: COUNTER, description: Rows updated }
    - n_tup_del: { usage: COUNTER, description: Rows deleted }
    - n_tup_hot_upd: { usage: COUNTER, description: Rows HOT updated }
    - n_live_tup: { usage: GAUGE, description: Live rows }
    - n_dead_tup: { usage: GAUGE, description: Dead rows }
    - vacuum_count: { usage: COUNTER, description: Vacuums }
    - autovacuum_count: { usage: COUNTER, description: Autovacuums }
    - analyze_count: { usage: COUNTER, description: Analyzes }
    - autoanalyze_count: { usage: COUNTER, description: Autoanalyzes }
    - size_bytes: { usage: GAUGE, description: Table size }
pg_statio_user_tables:
  query: |
    SELECT current_database() datname, schemaname, relname, heap_blks_read, heap_blks_hit,
           coalesce(idx_blks_read, 0) idx_blks_read, coalesce(idx_blks_hit, 0) idx_blks_hit,
           coalesce(toast_blks_read, 0) toast_blks_read, coalesce(toast_blks_hit, 0) toast_blks_hit,
           coalesce(tidx_blks_read, 0) tidx_blks_read, coalesce(tidx_blks_hit, 0) tidx_blks_hit
      FROM pg_statio_user_tables
  metrics:
    - datname: { usage: LABEL, description: Database }
    - schemaname: { usage: LABEL, description: Schema }
    - relname: { usage: LABEL, description: Table }
    - heap_blks_read: { usage: COUNTER, description: Heap blocks read }
    - heap_blks_hit: { usage: COUNTER, description: Heap buffer hits }
    - idx_blks_read: { usage: COUNTER, description: Index blocks read }
    - idx_blks_hit: { usage: COUNTER, description: Index buffer hits }
    - toast_blks_read: { usage: COUNTER, description: TOAST blocks read }
    - toast_blks_hit: { usage: COUNTER, description: TOAST buffer hits }
    - tidx_blks_read: { usage: COUNTER, description: TOAST index blocks read }
    - tidx_blks_hit: { usage: COUNTER, description: TOAST index buffer hits }
pg_stat_user_indexes:
  query: |
    SELECT current_database() datname, schemaname, relname, indexrelname, idx_scan,
           pg_relation_size(indexrelid) size_bytes
      FROM pg_stat_user_indexes
  metrics:
    - datname: { usage: LABEL, description: Database }
    - schemaname: { usage: LABEL, description: Schema }
    - relname: { usage: LABEL, description: Table }
    - indexrelname: { usage: LABEL, description: Index }
    - idx_scan: { usage: COUNTER, description: Index scans }
    - size_bytes: { usage: GAUGE, description: Index size }
pg_stat_statements:
  query: |
    SELECT r.rolname, d.datname, s.queryid::text queryid, s.calls,
           s.total_exec_time / 1000 total_time_seconds, s.rows, s.shared_blks_hit,
           s.shared_blks_read, s.shared_blks_dirtied, s.shared_blks_written,
           s.temp_blks_read, s.temp_blks_written
      FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
      JOIN pg_database d ON d.oid = s.dbid
  master: true
  metrics:
    - rolname: { usage: LABEL, description: Role }
    - datname: { usage: LABEL, description: Database }
    - queryid: { usage: LABEL, description: Query id }
    - calls: { usage: COUNTER, description: Executions }
    - total_time_seconds: { usage: COUNTER, description: Execution time }
    - rows: { usage: COUNTER, description: Rows }
    - shared_blks_hit: { usage: COUNTER, description: Shared buffer hits }
    - shared_blks_read: { usage: COUNTER, description: Shared blocks read }
    - shared_blks_dirtied: { usage: COUNTER, description: Shared blocks dirtied }
    - shared_blks_written: { usage: COUNTER, description: Shared blocks written }
    - temp_blks_read: { usage: COUNTER, description: Temp blocks read }
    - temp_blks_written: { usage: COUNTER, description: Temp blocks written }
"#;

/// The mysqld_exporter collectors matching the worker's MySQL families: status,
/// variables, replica status, statement digests (all of them, not the default 250) and
/// table and index I/O waits; the default-on InnoDB compression and response-time
/// collectors, which the worker has no counterpart for, are off.
const MY_COLLECTORS: &[&str] = &[
    "--collect.global_status",
    "--collect.global_variables",
    "--collect.slave_status",
    "--collect.perf_schema.eventsstatements",
    "--collect.perf_schema.eventsstatements.limit=10000",
    "--collect.perf_schema.tableiowaits",
    "--collect.perf_schema.indexiowaits",
    "--no-collect.info_schema.innodb_cmp",
    "--no-collect.info_schema.innodb_cmpmem",
    "--no-collect.info_schema.query_response_time",
];

/// Runs postgres_exporter against the estate and measures `scrapes` scrapes.
///
/// # Errors
/// When it does not start or a scrape cannot be sent.
pub async fn postgres_exporter(
    estate: &Estate,
    watcher: &Watcher,
    dir: &Path,
    scrapes: usize,
) -> anyhow::Result<Measured> {
    let queries = dir.join("postgres-exporter-queries.yaml");
    std::fs::write(&queries, PG_QUERIES)?;
    let port = dbcollector_tests::try_free_port()?;
    let dsn = format!(
        "postgresql://{PG_EXPORTER_USER}:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
        estate.pg.port()
    );
    let args = vec![
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--auto-discover-databases".into(),
        "--exclude-databases=template1".into(),
        format!("--extend.query-path={}", queries.display()),
        // The worker reports max_connections, not every setting.
        "--disable-settings-metrics".into(),
        "--log.level=warn".into(),
    ];
    let env = [("DATA_SOURCE_NAME", dsn)];
    let opened_before = watcher.opened().await?;
    let child = Child::spawn(
        "postgres_exporter",
        Path::new(POSTGRES_EXPORTER),
        &args,
        &env,
        &dir.join("postgres-exporter.log"),
    )?;
    let mut m = scrape_back_to_back(
        child,
        port,
        watcher,
        scrapes,
        Server::Postgres,
        PG_EXPORTER_USER,
    )
    .await?;
    m.opened_all = watcher.opened().await?.pg - opened_before.pg;
    m.tool = "postgres_exporter 0.11.1".into();
    Ok(m)
}

/// Runs mysqld_exporter against the estate and measures `scrapes` scrapes.
///
/// # Errors
/// When it does not start or a scrape cannot be sent.
pub async fn mysqld_exporter(
    estate: &Estate,
    watcher: &Watcher,
    dir: &Path,
    scrapes: usize,
) -> anyhow::Result<Measured> {
    let my_cnf = dir.join("mysqld-exporter.my.cnf");
    std::fs::write(
        &my_cnf,
        format!(
            "[client]\nuser={MY_EXPORTER_USER}\npassword={PASSWORD}\nhost=127.0.0.1\nport={}\n",
            estate.my.port()
        ),
    )?;
    let port = dbcollector_tests::try_free_port()?;
    let mut args = vec![
        format!("--config.my-cnf={}", my_cnf.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--log.level=warn".into(),
    ];
    args.extend(MY_COLLECTORS.iter().map(|a| (*a).to_owned()));
    let opened_before = watcher.opened().await?;
    let child = Child::spawn(
        "mysqld_exporter",
        Path::new(MYSQLD_EXPORTER),
        &args,
        &[],
        &dir.join("mysqld-exporter.log"),
    )?;
    let mut m = scrape_back_to_back(
        child,
        port,
        watcher,
        scrapes,
        Server::MariaDb,
        MY_EXPORTER_USER,
    )
    .await?;
    m.opened_all = watcher.opened().await?.my - opened_before.my;
    m.tool = "mysqld_exporter 0.14.0".into();
    Ok(m)
}

/// Waits for the exporter, scrapes it [`WARM_UP_SCRAPES`] times, then `scrapes` times
/// measured, one right after the other; stops it.
async fn scrape_back_to_back(
    mut child: Child,
    port: u16,
    watcher: &Watcher,
    scrapes: usize,
    server: Server,
    user: &str,
) -> anyhow::Result<Measured> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_gzip()
        .build()?;
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_listening(&client, &url, &mut child).await?;

    let mut m = Measured::default();
    for _ in 0..WARM_UP_SCRAPES {
        scrape(&client, &url).await?;
    }
    let mut window = Window::start(&child, watcher).await?;
    let mut durations = Vec::with_capacity(scrapes);
    for _ in 0..scrapes {
        let started = Instant::now();
        let (ok, samples) = scrape(&client, &url).await?;
        durations.push(started.elapsed().as_secs_f64());
        m.samples += samples as f64;
        m.errors += f64::from(u8::from(!ok));
        window.poll(&mut child, watcher).await?;
    }
    let ended = window.end(&child, watcher).await?;
    child.stop().await;

    durations.sort_by(f64::total_cmp);
    m.scrapes = scrapes as f64;
    m.window_s = durations.iter().sum();
    m.cpu_s = ended.cpu_s;
    m.peak_rss = ended.peak_rss;
    m.scrape_p50 = percentile(&durations, 0.5);
    m.scrape_p99 = percentile(&durations, 0.99);
    m.opened_window = ended.opened(server);
    m.held_max = ended.held(server, user);
    Ok(m)
}

/// One scrape: whether it answered 200, and its samples.
async fn scrape(client: &reqwest::Client, url: &str) -> anyhow::Result<(bool, usize)> {
    let response = client.get(url).send().await.context("scraping")?;
    let ok = response.status().is_success();
    let text = response.text().await?;
    Ok((ok, prom::count_samples(&text)))
}

/// Polls `url` until it answers (30 s at most).
pub async fn wait_listening(
    client: &reqwest::Client,
    url: &str,
    child: &mut Child,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        child.check_running()?;
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{url} not answering after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `q` percentile of sorted `values` (nearest rank); `None` when empty.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The exporter binaries that are not installed.
pub fn missing() -> Vec<PathBuf> {
    [POSTGRES_EXPORTER, MYSQLD_EXPORTER]
        .iter()
        .map(PathBuf::from)
        .filter(|p| !p.exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(10.0));
        assert_eq!(percentile(&v, 0.99), Some(20.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
