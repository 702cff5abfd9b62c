//! The load bench: the worker against real servers holding a large estate, side by side
//! with Debian's prometheus-postgres-exporter and prometheus-mysqld-exporter, on the
//! same servers in the same run, one tool after the other.
//!
//! Run it with `scripts/load-bench.sh` (about 10 minutes with the defaults; it installs
//! the exporters if missing and builds the release binaries). It prints a markdown
//! report and writes it to `target/load-bench/results.md`; the servers' and tools' logs
//! and configs stay in `target/load-bench/`.
//!
//! What it does:
//! 1. Starts throwaway PostgreSQL and MariaDB servers (the test harness) and creates the
//!    estate ([`estate`]): 20 databases besides `postgres`, 2000 tables with a primary
//!    key and an index, 5000 distinct statements on each server; a light write load
//!    runs throughout.
//! 2. Scrapes each exporter back to back ([`exporters`]), measuring its process from
//!    `/proc`.
//! 3. Runs the release worker as a separate process ([`ours`]) per server in the parity
//!    configuration (every statement and relation on its own series, no sampling, no
//!    cap), uncompressed and with gzip, then in its default configuration, exporting to
//!    a cheap OTLP sink in this process ([`sink`]).
//! 4. Lowers the interval of the parity configuration with both servers, each monitored
//!    through two targets (see `--rate-copies`), until the worker skips ticks or needs
//!    more than one core (the maximum rate).
//! 5. Runs the worker while a generator churns through distinct statements, sampling its
//!    memory every 10 s ([`churn`]).
//!
//! Sessions opened and held are counted by the servers ([`connections`]), each tool
//! logging in as its own user.

pub mod churn;
pub mod connections;
pub mod estate;
pub mod exporters;
pub mod measure;
pub mod ours;
pub mod procfs;
pub mod prom;
pub mod report;
pub mod sink;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::Parser;

use self::connections::Watcher;
use self::estate::{Estate, Size};
use self::measure::{Measured, Server};
use self::ours::Setup;
use self::report::{RateStep, Results};
use self::sink::Sink;

/// Column header of the parity run, uncompressed.
pub const PARITY: &str = "ours, parity";
/// Column header of the parity run with gzip.
pub const PARITY_GZIP: &str = "ours, parity, gzip";
/// Column header of the default configuration's run.
pub const DEFAULTS: &str = "ours, default config (gzip)";

/// The parts of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// The worker's three configurations and the exporters, side by side.
    Compare,
    /// The maximum-rate steps.
    Rate,
    /// The memory run under statement churn.
    Churn,
}

/// The load bench's options.
#[derive(Debug, Parser)]
#[command(about = "dbcollector load bench: the worker side by side with the Prometheus exporters")]
pub struct Args {
    /// Scrape interval of the worker in the side-by-side runs.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Intervals in each measured window of the worker.
    #[arg(long, default_value_t = 20)]
    pub intervals: u32,
    /// Measured scrapes of each exporter (after two warm-up scrapes).
    #[arg(long, default_value_t = 20)]
    pub scrapes: usize,
    /// Intervals of the maximum-rate run, tried in this order until the worker skips
    /// ticks or needs more than one core (1 s is the worker's shortest).
    #[arg(long, value_delimiter = ',', default_value = "2s,1s", value_parser = humantime::parse_duration)]
    pub rate_steps: Vec<Duration>,
    /// Targets per server in the maximum-rate run, 1 or 2: the second is the same server
    /// reached as `localhost`, another endpoint to the worker, which so collects each
    /// server twice (one server does not give the worker enough samples per second to
    /// load it).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub rate_copies: u8,
    /// Length of each maximum-rate window.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub rate_window: Duration,
    /// Length of the memory run under statement churn; 0s skips it. A long run:
    /// `--churn 30m`.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub churn: Duration,
    /// Distinct statements per second the churn generator aims at (about 1M in 3 min).
    #[arg(long, default_value_t = 5_600)]
    pub churn_rate: u64,
    /// PostgreSQL databases besides `postgres`.
    #[arg(long, default_value_t = 20)]
    pub pg_databases: usize,
    /// MariaDB schemas.
    #[arg(long, default_value_t = 10)]
    pub my_schemas: usize,
    /// Tables per server.
    #[arg(long, default_value_t = 2000)]
    pub tables: usize,
    /// Distinct statements per server (at most three per table).
    #[arg(long, default_value_t = 5000)]
    pub statements: usize,
    /// Time between two writes of the write load, per server.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub write_period: Duration,
    /// Record a CPU profile of the worker in every measured window (`perf record`,
    /// into `perf-<run>.data` in the output directory; read with `perf report -i`).
    #[arg(long)]
    pub perf: bool,
    /// The parts to run, e.g. `--phases churn --churn 30m` for a long memory run alone.
    #[arg(long, value_delimiter = ',', default_value = "compare,rate,churn")]
    pub phases: Vec<Phase>,
    /// Skip the exporters (e.g. where they are not installed).
    #[arg(long)]
    pub no_exporters: bool,
    /// Where the report, configs and logs go.
    #[arg(long, default_value = "target/load-bench")]
    pub out: PathBuf,
}

/// Runs the bench and returns the report.
///
/// # Errors
/// When a server, a tool or the worker fails to start, or a tool exits mid-run.
pub async fn run(args: Args, command: String) -> anyhow::Result<String> {
    let missing = exporters::missing();
    anyhow::ensure!(
        args.no_exporters || missing.is_empty(),
        "not installed: {missing:?} (scripts/load-bench.sh installs them; or --no-exporters)"
    );
    let binary = ours::binary()?;
    std::fs::create_dir_all(&args.out)?;
    let dir = args.out.canonicalize()?;
    let size = Size {
        pg_databases: args.pg_databases,
        my_schemas: args.my_schemas,
        tables: args.tables,
        statements: args.statements.min(args.tables * 3),
    };

    tracing::info!(?size, "creating the estate");
    let estate = Estate::create(size).await?;
    let watcher = Watcher::connect(&estate).await?;
    let versions = watcher.versions().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writes = estate.write_load(args.write_period, stop.clone()).await?;
    let sink = Sink::start().await?;
    let budgets = vec![
        (Server::Postgres, args.pg_databases as i64 + 2),
        (Server::MariaDb, args.my_schemas as i64 + 1),
    ];

    let mut servers: Vec<(Server, Vec<Measured>)> = Vec::new();
    let compare: &[Server] = match args.phases.contains(&Phase::Compare) {
        true => &[Server::Postgres, Server::MariaDb],
        false => &[],
    };
    for &server in compare {
        let mut runs = Vec::new();
        for (label, parity, gzip) in [
            (PARITY, true, false),
            (PARITY_GZIP, true, true),
            (DEFAULTS, false, true),
        ] {
            let setup = Setup {
                label: label.into(),
                parity,
                gzip,
                interval: args.interval,
                servers: vec![server],
                copies: 1,
                budget: budget_of(&budgets, server),
                perf: args.perf,
            };
            tracing::info!(server = server.name(), label, "measuring the worker");
            let measured = ours::run(
                &binary,
                &setup,
                &estate,
                &watcher,
                &sink,
                &dir,
                args.intervals,
            )
            .await?;
            runs.extend(measured.into_iter().map(|(_, m)| m));
        }
        if !args.no_exporters {
            tracing::info!(server = server.name(), "measuring the exporter");
            let peer = match server {
                Server::Postgres => {
                    exporters::postgres_exporter(&estate, &watcher, &dir, args.scrapes).await?
                }
                Server::MariaDb => {
                    exporters::mysqld_exporter(&estate, &watcher, &dir, args.scrapes).await?
                }
            };
            runs.push(peer);
        }
        servers.push((server, runs));
    }

    let rate = match args.phases.contains(&Phase::Rate) {
        true => max_rate(&args, &binary, &estate, &watcher, &sink, &dir, &budgets).await?,
        false => Vec::new(),
    };

    let churn = if args.churn.is_zero() || !args.phases.contains(&Phase::Churn) {
        None
    } else {
        tracing::info!(duration = ?args.churn, "memory run under statement churn");
        let setup = Setup {
            label: "churn".into(),
            parity: false,
            gzip: true,
            interval: args.interval,
            servers: vec![Server::Postgres],
            copies: 1,
            budget: budget_of(&budgets, Server::Postgres),
            perf: false,
        };
        Some(
            churn::run(
                &binary,
                &estate,
                &sink,
                &dir,
                &setup,
                args.churn,
                args.churn_rate,
            )
            .await?,
        )
    };

    stop.store(true, Ordering::Relaxed);
    let _ = writes.await;

    let results = Results {
        machine: procfs::Machine::read(),
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        command,
        setting: setting(&args, &size, &versions),
        servers,
        budgets,
        rate,
        churn,
        profiles: Vec::new(),
    };
    let markdown = results.markdown();
    let path = dir.join("results.md");
    std::fs::write(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "report written");
    Ok(markdown)
}

fn budget_of(budgets: &[(Server, i64)], server: Server) -> u32 {
    budgets
        .iter()
        .find(|(s, _)| *s == server)
        .map_or(1, |(_, b)| u32::try_from(*b).unwrap_or(u32::MAX))
}

/// The maximum-rate steps, stopping after the first the worker could not sustain.
async fn max_rate(
    args: &Args,
    binary: &std::path::Path,
    estate: &Estate,
    watcher: &Watcher,
    sink: &Sink,
    dir: &std::path::Path,
    budgets: &[(Server, i64)],
) -> anyhow::Result<Vec<RateStep>> {
    let mut steps = Vec::new();
    for &interval in &args.rate_steps {
        let setup = Setup {
            label: format!("rate-{}ms", interval.as_millis()),
            parity: true,
            gzip: false,
            interval,
            servers: vec![Server::Postgres, Server::MariaDb],
            copies: usize::from(args.rate_copies),
            // One process, an endpoint per server and copy: each has its own budget.
            budget: budget_of(budgets, Server::Postgres),
            perf: args.perf,
        };
        let intervals = (args.rate_window.as_secs_f64() / interval.as_secs_f64()).ceil() as u32;
        tracing::info!(?interval, "maximum rate step");
        let runs = ours::run(binary, &setup, estate, watcher, sink, dir, intervals.max(1)).await?;
        let step = RateStep {
            copies: setup.copies,
            interval_s: interval.as_secs_f64(),
            combined: combine(&runs),
        };
        let sustained = step.sustained();
        steps.push(step);
        if !sustained {
            break;
        }
    }
    Ok(steps)
}

/// Both targets of one worker run as one: samples, scrapes, skips and errors summed;
/// CPU, memory and latency are the process' already.
fn combine(runs: &[(Server, Measured)]) -> Measured {
    let mut out = runs.first().map(|(_, m)| m.clone()).unwrap_or_default();
    for (_, m) in runs.iter().skip(1) {
        out.samples += m.samples;
        out.scrapes += m.scrapes;
        out.errors += m.errors;
        out.skipped = Some(out.skipped.unwrap_or(0.0) + m.skipped.unwrap_or(0.0));
    }
    out
}

/// The paragraph describing the estate and the settings.
fn setting(args: &Args, size: &Size, (pg, my): &(String, String)) -> String {
    format!(
        "Estate: PostgreSQL {pg} with {dbs} databases besides `postgres`, {t} tables \
         (primary key + one index) in one of them and {s} distinct statements in \
         pg_stat_statements; MariaDB {my} with {schemas} schemas, {t} tables and {s} \
         statement digests. A write load updates one row per server every {w:?} \
         throughout. The worker scrapes every {i:?} and is measured over {n} intervals \
         after two warm-up scrapes; each exporter is scraped {e} times back to back after \
         two warm-up scrapes. Samples are OTLP data points for the worker and exposition \
         lines for the exporters. Parity: `relation_limit` at its maximum, \
         `statements.top_n: 0`, sampler off (the worker reads at most 10,000 statements \
         and 10,000 digests per scrape, a cap that cannot be lifted by configuration and \
         is above this estate). The exporters collect the same families: postgres_exporter \
         with auto-discovery, its default metrics without settings, and extended queries \
         for tables, indexes and pg_stat_statements; mysqld_exporter with global status \
         and variables, replica status, all statement digests, and table and index I/O \
         waits. CPU and memory are each tool's own process (`/proc`), not the servers'.",
        dbs = size.pg_databases,
        t = size.tables,
        s = size.statements,
        schemas = size.my_schemas,
        w = args.write_period,
        i = args.interval,
        n = args.intervals,
        e = args.scrapes,
    )
}
