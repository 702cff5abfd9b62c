//! What one measured run of one tool against one server yields, and the polling that
//! every run shares.

use std::time::{Duration, Instant};

use super::connections::{MaxHeld, Opened, Watcher, POLL};
use super::procfs::{Child, Usage};

/// Which server a run monitored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// PostgreSQL.
    Postgres,
    /// MariaDB.
    MariaDb,
}

impl Server {
    /// The name shown in the report.
    pub fn name(self) -> &'static str {
        match self {
            Server::Postgres => "PostgreSQL",
            Server::MariaDb => "MariaDB",
        }
    }
}

/// The figures of one run of one tool against one server.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// The tool and configuration, as the report's column header.
    pub tool: String,
    /// Scrapes in the measured window.
    pub scrapes: f64,
    /// Samples (exposition lines, or OTLP data points) in the measured window.
    pub samples: f64,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// CPU time of the tool's process in the window, seconds.
    pub cpu_s: f64,
    /// Peak resident set size of the tool's process over its whole run, bytes.
    pub peak_rss: u64,
    /// Scrape duration p50 and p99, seconds.
    pub scrape_p50: Option<f64>,
    /// See `scrape_p50`.
    pub scrape_p99: Option<f64>,
    /// Pipeline latency p50, p99 and the share at or below 10 ms (ours only).
    pub latency: Option<Latency>,
    /// Ticks skipped because the previous scrape still ran (ours only).
    pub skipped: Option<f64>,
    /// Sessions the tool opened on the server: over its whole run, and in the window.
    pub opened_all: i64,
    /// See `opened_all`.
    pub opened_window: i64,
    /// The most sessions of the tool's user held at once.
    pub held_max: i64,
    /// Failed scrapes (HTTP errors of an exporter, scrape errors of ours).
    pub errors: f64,
}

/// Pipeline latency figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    /// Median, seconds.
    pub p50: f64,
    /// 99th percentile, seconds.
    pub p99: f64,
    /// Share of batches handed over within 10 ms.
    pub within_10ms: f64,
}

impl Measured {
    /// Samples per scrape.
    pub fn per_scrape(&self) -> f64 {
        if self.scrapes > 0.0 {
            self.samples / self.scrapes
        } else {
            0.0
        }
    }

    /// Samples per second over the window.
    pub fn per_second(&self) -> f64 {
        if self.window_s > 0.0 {
            self.samples / self.window_s
        } else {
            0.0
        }
    }

    /// CPU seconds per 10,000 samples.
    pub fn cpu_per_10k(&self) -> f64 {
        if self.samples > 0.0 {
            self.cpu_s * 10_000.0 / self.samples
        } else {
            f64::NAN
        }
    }

    /// Cores used on average over the window.
    pub fn cores(&self) -> f64 {
        if self.window_s > 0.0 {
            self.cpu_s / self.window_s
        } else {
            0.0
        }
    }
}

/// The tool's process and server counters at the start of a measured window.
#[derive(Debug)]
pub struct Window {
    started: Instant,
    usage: Usage,
    opened: Opened,
    /// The most sessions per user seen so far.
    pub held: MaxHeld,
    /// The highest resident set size seen by polling (the kernel's peak is read too).
    peak_rss: u64,
}

impl Window {
    /// Starts a window now.
    ///
    /// # Errors
    /// When the process is gone or the server counters cannot be read.
    pub async fn start(child: &Child, watcher: &Watcher) -> anyhow::Result<Self> {
        let usage = child.usage()?;
        Ok(Self {
            started: Instant::now(),
            usage,
            opened: watcher.opened().await?,
            held: MaxHeld::default(),
            peak_rss: usage.peak_rss,
        })
    }

    /// Polls sessions and memory until `until`, failing early when the process exits.
    ///
    /// # Errors
    /// When the process exits.
    pub async fn poll_until(
        &mut self,
        child: &mut Child,
        watcher: &Watcher,
        until: Instant,
    ) -> anyhow::Result<()> {
        while Instant::now() < until {
            self.poll(child, watcher).await?;
            tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
        }
        Ok(())
    }

    /// One poll of sessions and memory.
    ///
    /// # Errors
    /// When the process exits.
    pub async fn poll(&mut self, child: &mut Child, watcher: &Watcher) -> anyhow::Result<()> {
        child.check_running()?;
        self.held.poll(watcher).await;
        self.peak_rss = self.peak_rss.max(child.usage()?.peak_rss);
        Ok(())
    }

    /// Ends the window: CPU time, elapsed time, sessions opened and peak memory.
    ///
    /// # Errors
    /// When the process is gone or the server counters cannot be read.
    pub async fn end(self, child: &Child, watcher: &Watcher) -> anyhow::Result<Ended> {
        let usage = child.usage()?;
        let opened = watcher.opened().await?;
        Ok(Ended {
            elapsed: self.started.elapsed(),
            cpu_s: usage.cpu_s - self.usage.cpu_s,
            opened_pg: opened.pg - self.opened.pg,
            opened_my: opened.my - self.opened.my,
            peak_rss: self.peak_rss.max(usage.peak_rss),
            held: self.held,
        })
    }
}

/// What a window measured.
#[derive(Debug)]
pub struct Ended {
    /// Its length.
    pub elapsed: Duration,
    /// The process' CPU time in it, seconds.
    pub cpu_s: f64,
    /// PostgreSQL sessions opened in it.
    pub opened_pg: i64,
    /// MariaDB sessions opened in it.
    pub opened_my: i64,
    /// The process' peak resident set size, bytes.
    pub peak_rss: u64,
    /// The most sessions per user.
    pub held: MaxHeld,
}

impl Ended {
    /// Sessions opened on `server`.
    pub fn opened(&self, server: Server) -> i64 {
        match server {
            Server::Postgres => self.opened_pg,
            Server::MariaDb => self.opened_my,
        }
    }

    /// The most sessions `user` held on `server`.
    pub fn held(&self, server: Server, user: &str) -> i64 {
        let held = match server {
            Server::Postgres => &self.held.pg,
            Server::MariaDb => &self.held.my,
        };
        held.get(user).copied().unwrap_or(0)
    }
}
