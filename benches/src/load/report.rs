//! The load bench's results as markdown: the machine and command, one side-by-side table
//! per server, the maximum rate, the memory run, and the targets met or missed.

use std::fmt::Write as _;

use super::churn::{Churn, FLAT_WITHIN, SETTLED_AFTER};
use super::measure::{Measured, Server};
use super::procfs::Machine;

/// The targets the results are judged against.
pub mod targets {
    /// Our CPU per 10k samples at most this fraction of each exporter's (parity).
    pub const CPU_RATIO: f64 = 5.0;
    /// Peak resident memory, bytes.
    pub const RSS: u64 = 100_000_000;
    /// Sustained samples per second within one core.
    pub const RATE: f64 = 300_000.0;
    /// p99 pipeline latency, seconds.
    pub const LATENCY_P99: f64 = 0.010;
}

/// One step of the maximum-rate run.
#[derive(Clone, Debug)]
pub struct RateStep {
    /// Targets per server (see `ours::targets`).
    pub copies: usize,
    /// Scrape interval, seconds.
    pub interval_s: f64,
    /// Both targets' figures, summed where it makes sense (CPU and memory are the one
    /// process').
    pub combined: Measured,
}

impl RateStep {
    /// Whether the worker kept its interval within one core.
    pub fn sustained(&self) -> bool {
        self.combined.skipped.unwrap_or(0.0) == 0.0 && self.combined.cores() <= 1.0
    }
}

/// Everything one bench run measured.
#[derive(Clone, Debug)]
pub struct Results {
    /// Where it ran.
    pub machine: Machine,
    /// When it ran (RFC 3339, UTC).
    pub date: String,
    /// The command line.
    pub command: String,
    /// One paragraph on the estate and the settings.
    pub setting: String,
    /// Per server, the runs side by side (ours first, the exporter last).
    pub servers: Vec<(Server, Vec<Measured>)>,
    /// Connection budget per server, as configured for the worker.
    pub budgets: Vec<(Server, i64)>,
    /// The maximum-rate steps, in the order run.
    pub rate: Vec<RateStep>,
    /// The memory run, when it ran.
    pub churn: Option<Churn>,
    /// The profiles taken, one line each.
    pub profiles: Vec<String>,
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

fn count(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn ms(s: Option<f64>) -> String {
    match s {
        Some(s) if s < 0.01 => format!("{:.2} ms", s * 1e3),
        Some(s) => format!("{:.0} ms", s * 1e3),
        None => "n/a".into(),
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

impl Results {
    /// The whole report.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "# dbcollector load bench\n");
        let _ = writeln!(
            out,
            "Machine: {} cores, {}, {:.1} GiB RAM, load average {} at the end. Date: {}. \
             Command: `{}`.\n",
            m.cores,
            m.cpu,
            m.ram as f64 / (1u64 << 30) as f64,
            m.load,
            self.date,
            self.command
        );
        let _ = writeln!(out, "{}\n", self.setting);
        for (server, runs) in &self.servers {
            self.server_table(&mut out, *server, runs);
        }
        self.rate_table(&mut out);
        self.churn_section(&mut out);
        self.targets_table(&mut out);
        if !self.profiles.is_empty() {
            let _ = writeln!(out, "## Profiles\n");
            for p in &self.profiles {
                let _ = writeln!(out, "- {p}");
            }
            out.push('\n');
        }
        out
    }

    fn budget(&self, server: Server) -> i64 {
        self.budgets
            .iter()
            .find(|(s, _)| *s == server)
            .map_or(0, |(_, b)| *b)
    }

    fn server_table(&self, out: &mut String, server: Server, runs: &[Measured]) {
        let _ = writeln!(out, "## {}\n", server.name());
        let header: Vec<&str> = runs.iter().map(|r| r.tool.as_str()).collect();
        let _ = writeln!(out, "| | {} |", header.join(" | "));
        let _ = writeln!(out, "|---|{}", "---|".repeat(runs.len()));
        let row = |out: &mut String, name: &str, f: &dyn Fn(&Measured) -> String| {
            let cells: Vec<String> = runs.iter().map(f).collect();
            let _ = writeln!(out, "| {name} | {} |", cells.join(" | "));
        };
        row(out, "samples per scrape", &|r| count(r.per_scrape()));
        row(out, "samples/s sustained", &|r| count(r.per_second()));
        row(out, "CPU-s per 10k samples", &|r| {
            format!("{:.4}", r.cpu_per_10k())
        });
        row(out, "CPU, cores (window average)", &|r| {
            format!("{:.2}", r.cores())
        });
        row(out, "peak RSS", &|r| mb(r.peak_rss));
        row(out, "scrape duration p50 / p99", &|r| {
            format!("{} / {}", ms(r.scrape_p50), ms(r.scrape_p99))
        });
        row(out, "pipeline latency p50 / p99", &|r| match r.latency {
            Some(l) => format!("{} / {}", ms(Some(l.p50)), ms(Some(l.p99))),
            None => "n/a".into(),
        });
        row(out, "sessions opened: whole run / window (scrapes)", &|r| {
            format!("{} / {} ({:.0})", r.opened_all, r.opened_window, r.scrapes)
        });
        let budget = self.budget(server);
        row(out, "sessions held, max (budget)", &|r| {
            format!("{} ({budget})", r.held_max)
        });
        row(
            out,
            "failed scrapes / skipped ticks",
            &|r| match r.skipped {
                Some(s) => format!("{:.0} / {s:.0}", r.errors),
                None => format!("{:.0} / n/a", r.errors),
            },
        );
        out.push('\n');
    }

    fn rate_table(&self, out: &mut String) {
        if self.rate.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "## Maximum sustainable rate (parity, uncompressed, both servers in one worker, \
             {} per server)\n",
            match self.rate[0].copies {
                1 => "one target".to_owned(),
                n => format!("{n} targets (127.0.0.1 and localhost)"),
            }
        );
        let _ = writeln!(
            out,
            "| interval | samples/s | CPU, cores | samples/s per core | CPU-s per 10k | peak RSS | \
             skipped ticks | pipeline p99 | kept up within one core |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for step in &self.rate {
            let c = &step.combined;
            let _ = writeln!(
                out,
                "| {:.1} s | {} | {:.2} | {} | {:.4} | {} | {:.0} | {} | {} |",
                step.interval_s,
                count(c.per_second()),
                c.cores(),
                count(c.per_second() / c.cores().max(1e-9)),
                c.cpu_per_10k(),
                mb(c.peak_rss),
                c.skipped.unwrap_or(0.0),
                ms(c.latency.map(|l| l.p99)),
                if step.sustained() { "yes" } else { "no" }
            );
        }
        out.push('\n');
    }

    fn churn_section(&self, out: &mut String) {
        let Some(churn) = &self.churn else {
            return;
        };
        let _ = writeln!(
            out,
            "## Memory under statement churn (default configuration, PostgreSQL)\n"
        );
        let _ = writeln!(
            out,
            "{} statements issued in {:.0} s ({:.0}/s), {} of them distinct; {} points \
             exported; {:.0} statement keys cached at the end.\n",
            churn.issued,
            churn.duration_s,
            churn.issued as f64 / churn.duration_s.max(1.0),
            churn.distinct,
            churn.points,
            churn.keys_at_end
        );
        let _ = writeln!(
            out,
            "| t | RSS, highest in the 10 s before (read every 250 ms) |\n|---|---|"
        );
        for (t, rss) in &churn.rss {
            let _ = writeln!(out, "| {t:.0} s | {:.1} MB |", *rss as f64 / 1e6);
        }
        match churn.settled_deviation() {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "\nFrom {} s on, each 10 s peak stays within {:.1} % of the one ending \
                     then.\n",
                    SETTLED_AFTER.as_secs(),
                    d * 100.0
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "\nFewer than two 10 s peaks from {} s on: flatness not measured.\n",
                    SETTLED_AFTER.as_secs()
                );
            }
        }
    }

    /// The parity run (uncompressed) of ours and the exporter on `server`.
    fn parity(&self, server: Server) -> Option<(&Measured, &Measured, Option<&Measured>)> {
        let runs = &self.servers.iter().find(|(s, _)| *s == server)?.1;
        let ours = runs.iter().find(|r| r.tool == super::PARITY)?;
        let gzip = runs.iter().find(|r| r.tool == super::PARITY_GZIP);
        let peer = runs.iter().find(|r| r.skipped.is_none())?;
        Some((ours, peer, gzip))
    }

    fn targets_table(&self, out: &mut String) {
        let _ = writeln!(out, "## Targets\n\n| target | measured | |\n|---|---|---|");
        for server in [Server::Postgres, Server::MariaDb] {
            if let Some((ours, peer, gzip)) = self.parity(server) {
                let ratio = peer.cpu_per_10k() / ours.cpu_per_10k();
                let gzip_ratio = gzip.map(|g| peer.cpu_per_10k() / g.cpu_per_10k());
                let _ = writeln!(
                    out,
                    "| ≥ {:.0}x less CPU per 10k samples than {} (parity) | {ratio:.1}x \
                     uncompressed{} | {} |",
                    targets::CPU_RATIO,
                    peer.tool,
                    gzip_ratio.map_or(String::new(), |g| format!(", {g:.1}x with gzip")),
                    verdict(ratio >= targets::CPU_RATIO)
                );
            }
        }

        let ours: Vec<&Measured> = self
            .servers
            .iter()
            .flat_map(|(_, runs)| runs.iter().filter(|r| r.skipped.is_some()))
            .chain(self.rate.iter().map(|s| &s.combined))
            .collect();
        if let Some(peak) = ours.iter().map(|r| r.peak_rss).max() {
            let _ = writeln!(
                out,
                "| RSS < {} | peak {} over every run of ours | {} |",
                mb(targets::RSS),
                mb(peak),
                verdict(peak < targets::RSS)
            );
        }

        for (server, runs) in &self.servers {
            let budget = self.budget(*server);
            let mine: Vec<&Measured> = runs.iter().filter(|r| r.skipped.is_some()).collect();
            if mine.is_empty() {
                continue;
            }
            let held = mine.iter().map(|r| r.held_max).max().unwrap_or(0);
            let in_window = mine.iter().map(|r| r.opened_window).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "| {}: at most the budget held ({budget}), none opened per scrape | \
                 {held} held at most; {in_window} opened during a measured window | {} |",
                server.name(),
                verdict(held <= budget && in_window == 0)
            );
        }

        if !self.rate.is_empty() {
            let best = self
                .rate
                .iter()
                .filter(|s| s.sustained())
                .max_by(|a, b| a.combined.per_second().total_cmp(&b.combined.per_second()));
            // Below one core at the shortest interval, the rate shows what the estate
            // offers, not what the worker could take: the per-core figure says that.
            let (best, per_core) = best.map_or((0.0, 0.0), |s| {
                let rate = s.combined.per_second();
                (rate, rate / s.combined.cores().max(1e-9))
            });
            let _ = writeln!(
                out,
                "| ≥ {} samples/s sustained within one core | {} sustained ({} per core \
                 of CPU at that rate) | {} |",
                count(targets::RATE),
                count(best),
                count(per_core),
                verdict(best >= targets::RATE)
            );
        }

        let p99 = ours
            .iter()
            .filter_map(|r| r.latency.map(|l| (l.p99, l.within_10ms)))
            .fold(None, |worst: Option<(f64, f64)>, l| match worst {
                Some(w) if w.0 >= l.0 => Some(w),
                _ => Some(l),
            });
        if let Some((p99, share)) = p99 {
            let _ = writeln!(
                out,
                "| p99 pipeline latency < {} | worst p99 {} (in that run {:.1} % of batches \
                 within 10 ms) | {} |",
                ms(Some(targets::LATENCY_P99)),
                ms(Some(p99)),
                share * 100.0,
                verdict(share >= 0.99)
            );
        }

        if let Some(churn) = &self.churn {
            let dev = churn.settled_deviation();
            let _ = writeln!(
                out,
                "| RSS flat within {:.0} % from minute 2 on | {} | {} |",
                FLAT_WITHIN * 100.0,
                dev.map_or(
                    "run too short (two 10 s peaks from minute 2 on needed)".into(),
                    |d| { format!("within {:.1} %", d * 100.0) }
                ),
                dev.map_or("not measured", |d| verdict(d <= FLAT_WITHIN))
            );
        }
        out.push('\n');
    }
}
