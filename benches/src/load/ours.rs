//! The worker under measurement: the release `dbcollector-worker` binary as a separate
//! process, configured against the estate and exporting OTLP/HTTP to the bench's sink,
//! measured from outside (`/proc`, its `/metrics`, the servers' session counts).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::connections::Watcher;
use super::estate::{Estate, PASSWORD, WORKER_USER};
use super::exporters::wait_listening;
use super::measure::{Latency, Measured, Server, Window};
use super::procfs::Child;
use super::prom::{self, Histogram};
use super::sink::Sink;

/// Scrapes per target before a window starts: the first has no statement deltas, and the
/// connections are opened.
const WARM_UP_SCRAPES: f64 = 2.0;

/// A pause in the exports this long falls between two scrapes.
const QUIET: Duration = Duration::from_millis(250);

/// How the worker is configured for one run.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Column header in the report.
    pub label: String,
    /// The parity configuration (every statement and relation one by one, no sampling)
    /// instead of the defaults.
    pub parity: bool,
    /// Gzip the export requests.
    pub gzip: bool,
    /// Scrape interval.
    pub interval: Duration,
    /// The servers monitored.
    pub servers: Vec<Server>,
    /// Targets per server: 1, or 2 to offer the worker twice what a server gives (see
    /// [`targets`]).
    pub copies: usize,
    /// Connection budget per server (`connections.max_per_server`).
    pub budget: u32,
    /// Record a CPU profile of the worker over the measured window with `perf record`
    /// into `perf-<label>.data` beside the logs.
    pub perf: bool,
}

/// The target name of a server.
pub fn target(server: Server) -> &'static str {
    match server {
        Server::Postgres => "pg",
        Server::MariaDb => "mariadb",
    }
}

/// Host names of a server's targets, one per copy. The worker tells endpoints apart by
/// host string and port, so a copy at `localhost` is another server to it: it opens its
/// own sessions and collects the server-wide families again, exactly as it would for a
/// second server with the same contents.
const HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// Most copies of a target: one per host name.
pub const MAX_COPIES: usize = HOSTS.len();

/// The targets of `setup`: (server, target name, host), the first copy of a server named
/// after it ([`target`]), a second one `<name>-2`.
pub fn targets(setup: &Setup) -> Vec<(Server, String, &'static str)> {
    let mut out = Vec::new();
    for &server in &setup.servers {
        for (copy, host) in HOSTS
            .iter()
            .take(setup.copies.clamp(1, MAX_COPIES))
            .enumerate()
        {
            let name = match copy {
                0 => target(server).to_owned(),
                n => format!("{}-{}", target(server), n + 1),
            };
            out.push((server, name, *host));
        }
    }
    out
}

/// The worker's config for `setup`.
fn config(setup: &Setup, estate: &Estate, sink: &Sink, listen: u16, password: &Path) -> String {
    let mut yaml = String::from("version: 1\ndefaults:\n");
    yaml += &format!("  interval: {}ms\n", setup.interval.as_millis());
    if setup.parity {
        // No relation cap (the largest u32), every statement on its own series.
        yaml += "  relation_limit: 4294967295\n  statements: { top_n: 0 }\n";
    }
    yaml += "targets:\n";
    for (server, name, host) in targets(setup) {
        let (engine, port, databases) = match server {
            Server::Postgres => (
                "postgresql",
                estate.pg.port(),
                "    discover: { include: [\"*\"], exclude: [template1] }\n",
            ),
            Server::MariaDb => ("mysql", estate.my.port(), ""),
        };
        yaml += &format!(
            "  - name: {name}\n    engine: {engine}\n    host: {host}\n    port: {port}\n\
             {databases}    user: {WORKER_USER}\n    password: {{ file: {} }}\n",
            password.display()
        );
    }
    yaml += &format!("connections: {{ max_per_server: {} }}\n", setup.budget);
    if setup.parity {
        yaml += "pipeline: { sampler: { enabled: false } }\n";
    }
    yaml += &format!(
        "exporter:\n  endpoint: {}\n  protocol: http/protobuf\n  compression: {}\n",
        sink.endpoint(),
        if setup.gzip { "gzip" } else { "none" }
    );
    yaml += &format!("telemetry:\n  listen: 127.0.0.1:{listen}\n  log_level: warn\n");
    yaml
}

/// A running worker.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    client: reqwest::Client,
    metrics_url: String,
    targets: Vec<String>,
}

impl Worker {
    /// Writes the config for `setup` into `dir` and starts `binary` on it; returns once
    /// its `/metrics` answers.
    ///
    /// # Errors
    /// When it does not start.
    pub async fn start(
        binary: &Path,
        setup: &Setup,
        estate: &Estate,
        sink: &Sink,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let password = dir.join("worker-password");
        std::fs::write(&password, PASSWORD)?;
        let listen = dbcollector_tests::try_free_port()?;
        let name = setup.file_name();
        let config_path = dir.join(format!("worker-{name}.yaml"));
        std::fs::write(&config_path, config(setup, estate, sink, listen, &password))?;
        let args = vec![
            "--config".to_owned(),
            config_path.display().to_string(),
            "--worker-id".to_owned(),
            "load-bench".to_owned(),
        ];
        let mut child = Child::spawn(
            "dbcollector-worker",
            binary,
            &args,
            &[],
            &dir.join(format!("worker-{name}.log")),
        )?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let metrics_url = format!("http://127.0.0.1:{listen}/metrics");
        wait_listening(&client, &metrics_url, &mut child).await?;
        Ok(Self {
            child,
            client,
            metrics_url,
            targets: targets(setup)
                .into_iter()
                .map(|(_, name, _)| name)
                .collect(),
        })
    }

    /// The process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The worker's `/metrics` text now.
    ///
    /// # Errors
    /// When it does not answer.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self.client.get(&self.metrics_url).send().await?;
        Ok(response.error_for_status()?.text().await?)
    }

    /// Scrapes started so far for each target, the fewest of them.
    async fn fewest_scrapes(&self) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        Ok(self
            .targets
            .iter()
            .map(|t| scrapes(&text, t))
            .fold(f64::INFINITY, f64::min))
    }

    /// Waits until every target has started `n` scrapes.
    ///
    /// # Errors
    /// When the worker exits or `timeout` passes.
    pub async fn wait_scrapes(&mut self, n: f64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.fewest_scrapes().await? < n {
            self.child.check_running()?;
            if Instant::now() > deadline {
                anyhow::bail!("the worker did not scrape {n} times within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops the worker.
    pub async fn stop(self) {
        self.child.stop().await;
    }
}

impl Setup {
    /// The label and the targets, as a file name part.
    fn file_name(&self) -> String {
        let mut name: String = self
            .label
            .chars()
            .filter_map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' => Some(c),
                ' ' | '-' => Some('-'),
                _ => None,
            })
            .collect();
        for server in &self.servers {
            name.push('-');
            name.push_str(target(*server));
        }
        if self.copies > 1 {
            name.push_str(&format!("-x{}", self.copies));
        }
        name
    }
}

/// Starts `perf record` with call graphs on process `pid`, writing `output`; stopping the returned
/// child (SIGTERM) makes perf write the profile and exit.
fn perf_record(pid: u32, output: &Path, dir: &Path) -> anyhow::Result<Child> {
    let args = [
        "record",
        // Rust's standard library has no frame pointers: unwind from DWARF.
        "--call-graph",
        "dwarf",
        "-F",
        "299",
        "-p",
        &pid.to_string(),
        "-o",
        &output.display().to_string(),
    ]
    .map(str::to_owned);
    Child::spawn("perf", Path::new("perf"), &args, &[], &dir.join("perf.log"))
}

fn label(target: &str) -> String {
    format!("target=\"{target}\"")
}

fn scrapes(text: &str, target: &str) -> f64 {
    prom::sum(text, "dbcollector_scrapes_total", &[&label(target)])
}

/// One run of the worker with `setup`: warm-up, then a window of `intervals` intervals.
/// Returns one [`Measured`] per server, its copies' scrapes and samples summed (CPU and
/// memory are the whole process'; scrape durations are the first copy's).
///
/// # Errors
/// When the worker fails to start or exits.
pub async fn run(
    binary: &Path,
    setup: &Setup,
    estate: &Estate,
    watcher: &Watcher,
    sink: &Sink,
    dir: &Path,
    intervals: u32,
) -> anyhow::Result<Vec<(Server, Measured)>> {
    let opened_before = watcher.opened().await?;
    let mut worker = Worker::start(binary, setup, estate, sink, dir).await?;
    let warm_up = setup.interval * 4 + Duration::from_secs(60);
    worker
        .wait_scrapes(WARM_UP_SCRAPES + 1.0, warm_up)
        .await
        .with_context(|| format!("warming up {}", setup.label))?;

    // The window opens and closes between two scrapes' exports, so it holds whole
    // scrapes; the `up` points say how many.
    sink.wait_quiet(QUIET, setup.interval * 2).await;
    let before = worker.metrics().await?;
    sink.take();
    let mut window = Window::start(&worker.child, watcher).await?;
    let until = Instant::now() + setup.interval * intervals;
    let perf = match setup.perf {
        true => {
            let output = dir.join(format!("perf-{}.data", setup.file_name()));
            Some(perf_record(worker.child.pid(), &output, dir)?)
        }
        false => None,
    };
    window.poll_until(worker.child(), watcher, until).await?;
    sink.wait_quiet(QUIET, setup.interval * 2).await;
    if let Some(perf) = perf {
        perf.stop().await;
    }
    let after = worker.metrics().await?;
    let received = sink.take();
    let ended = window.end(&worker.child, watcher).await?;
    worker.stop().await;
    let opened_after = watcher.opened().await?;

    let latency = Histogram::parse(&after, "dbcollector_pipeline_latency_seconds", &[]).since(
        &Histogram::parse(&before, "dbcollector_pipeline_latency_seconds", &[]),
    );
    let latency = match (latency.quantile(0.5), latency.quantile(0.99)) {
        (Some(p50), Some(p99)) => Some(Latency {
            p50,
            p99,
            within_10ms: latency.share_at_most(0.01).unwrap_or(f64::NAN),
        }),
        _ => None,
    };
    let all = targets(setup);
    let copies = |server: Server| all.iter().filter(move |(s, _, _)| *s == server);
    let delta = |name: &str, server: Server| -> f64 {
        copies(server)
            .map(|(_, t, _)| {
                prom::sum(&after, name, &[&label(t)]) - prom::sum(&before, name, &[&label(t)])
            })
            .sum()
    };
    let received_sum = |counts: &std::collections::HashMap<String, u64>, server: Server| {
        copies(server)
            .map(|(_, t, _)| counts.get(t.as_str()).copied().unwrap_or(0) as f64)
            .sum::<f64>()
    };
    let mut out = Vec::new();
    for &server in &setup.servers {
        let first = label(target(server));
        let durations =
            Histogram::parse(&after, "dbcollector_scrape_duration_seconds", &[&first]).since(
                &Histogram::parse(&before, "dbcollector_scrape_duration_seconds", &[&first]),
            );
        let opened_all = match server {
            Server::Postgres => opened_after.pg - opened_before.pg,
            Server::MariaDb => opened_after.my - opened_before.my,
        };
        out.push((
            server,
            Measured {
                tool: setup.label.clone(),
                scrapes: received_sum(&received.scrapes, server),
                samples: received_sum(&received.points, server),
                window_s: ended.elapsed.as_secs_f64(),
                cpu_s: ended.cpu_s,
                peak_rss: ended.peak_rss,
                scrape_p50: durations.quantile(0.5),
                scrape_p99: durations.quantile(0.99),
                latency,
                skipped: Some(delta("dbcollector_scrapes_skipped_total", server)),
                opened_all,
                opened_window: ended.opened(server),
                held_max: ended.held(server, WORKER_USER),
                errors: delta("dbcollector_scrape_errors_total", server),
            },
        ));
    }
    Ok(out)
}

/// The worker binary: `$DBCOLLECTOR_WORKER`, else `dbcollector-worker` next to this
/// program (both are built into the same target directory).
///
/// # Errors
/// When it does not exist.
pub fn binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("DBCOLLECTOR_WORKER") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .context("this program has no directory")?
            .join("dbcollector-worker"),
    };
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it with `cargo build --release -p dbcollector-worker` \
         or set DBCOLLECTOR_WORKER",
        path.display()
    );
    Ok(path)
}
