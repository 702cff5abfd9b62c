//! Receivers: read a target's statistics from its database and turn rows into points.
//!
//! A receiver produces one [`Scrape`] per target and interval: plain points, plus the
//! target's statement statistics as [`StatementRow`]s, which the statements processor
//! ranks, samples and maps to points (the receiver does not know the previous scrape).

pub mod mysql;
pub mod postgres;

use std::sync::Arc;
use std::time::Instant;

use crate::metrics::{Attributes, Descriptor, Points, Resource, Value};

/// The result of one scrape of one target.
#[derive(Debug)]
pub struct Scrape {
    /// The target's name.
    pub target: Arc<str>,
    /// The monitored instance (OTLP resource).
    pub resource: Arc<Resource>,
    /// Points ready for export.
    pub points: Points,
    /// Statement statistics, when the target collects them this scrape.
    pub statements: Option<StatementSet>,
    /// When the scrape had read all its rows: the pipeline latency starts here, so it
    /// covers processing, batching and the hand-over, not the database's time.
    pub read_at: Instant,
}

/// The statement statistics of a target at one read.
#[derive(Debug)]
pub struct StatementSet {
    /// The metric descriptors of this engine's statement families.
    pub descriptors: &'static StatementDescriptors,
    /// Every statement the server reported (already filtered by database).
    pub rows: Vec<StatementRow>,
    /// Read time, Unix nanoseconds.
    pub time_unix_nanos: u64,
    /// Start of the server's counters (last reset, or server start), Unix nanoseconds.
    pub start_unix_nanos: u64,
}

/// One statement's cumulative counters, as the server keeps them.
#[derive(Clone, Debug)]
pub struct StatementRow {
    /// Identifies the statement across scrapes (and workers): database, user and the
    /// server's query id or digest.
    pub key: Arc<str>,
    /// Attributes of its points (database, query id, ...; never raw query text).
    pub attrs: Attributes,
    /// Normalized query text as the server reports it; exported only obfuscated, and
    /// only when configured.
    pub text: Option<String>,
    /// Executions.
    pub calls: i64,
    /// Total execution time, seconds.
    pub total_time_s: f64,
    /// Rows returned or affected.
    pub rows: i64,
    /// Executions that failed (MySQL); 0 where the server does not count them.
    pub errors: i64,
    /// Engine-specific cumulative counters (block I/O, temp tables, ...).
    pub extra: smallvec::SmallVec<[(&'static Descriptor, Value); 6]>,
}

/// The descriptors of an engine's statement families.
#[derive(Debug)]
pub struct StatementDescriptors {
    /// Executions (cumulative).
    pub calls: &'static Descriptor,
    /// Execution time (cumulative, seconds).
    pub time: &'static Descriptor,
    /// Rows (cumulative).
    pub rows: &'static Descriptor,
    /// Errors (cumulative); `None` where the engine does not count them.
    pub errors: Option<&'static Descriptor>,
    /// Executions of the statements not exported one by one (delta per interval).
    pub others_calls: &'static Descriptor,
    /// Execution time of those statements (delta per interval, seconds).
    pub others_time: &'static Descriptor,
    /// Rows of those statements (delta per interval).
    pub others_rows: &'static Descriptor,
    /// How many statements the aggregate holds (gauge).
    pub others_count: &'static Descriptor,
    /// The sampler's current keep rate for this target (gauge, 0 to 1).
    pub sample_rate: &'static Descriptor,
}

/// A bounded classification of scrape failures, used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Could not open a connection (refused, DNS, TLS, authentication).
    Connect,
    /// A connection or query deadline passed.
    Timeout,
    /// A query failed on the server.
    Query,
    /// A password or certificate could not be read.
    Credentials,
    /// The connection budget had no free connection in time.
    Budget,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Query => "query",
            ErrorKind::Credentials => "credentials",
            ErrorKind::Budget => "budget",
        }
    }
}

/// A scrape that produced nothing usable.
#[derive(Debug, thiserror::Error)]
#[error("scraping {target}: {kind:?}")]
pub struct ScrapeError {
    /// The target.
    pub target: Arc<str>,
    /// The bounded classification.
    pub kind: ErrorKind,
    /// The first failure.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Which databases of a target are monitored.
#[derive(Clone, Debug, PartialEq)]
pub enum Databases {
    /// These, by name.
    Listed(Vec<Arc<str>>),
    /// Every database that accepts connections, filtered by glob patterns.
    Discover {
        /// A database must match one of these.
        include: Vec<String>,
        /// A database matching one of these is skipped.
        exclude: Vec<String>,
    },
}

/// A target with every default applied: what a receiver needs to collect it.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetSpec {
    /// The target's name (its identity).
    pub name: Arc<str>,
    /// Its engine.
    pub engine: crate::config::Engine,
    /// Server host.
    pub host: Arc<str>,
    /// Server port.
    pub port: u16,
    /// Monitored databases.
    pub databases: Databases,
    /// Login user.
    pub user: String,
    /// Password source (read at each connect).
    pub password: Option<crate::config::ValueSource>,
    /// TLS to the server.
    pub tls: crate::config::DbTls,
    /// Scrape interval.
    pub interval: std::time::Duration,
    /// Per-query deadline (server-side statement timeout and client-side deadline).
    pub query_timeout: std::time::Duration,
    /// Connect deadline.
    pub connect_timeout: std::time::Duration,
    /// Lock wait limit of monitoring sessions.
    pub lock_timeout: std::time::Duration,
    /// Most tables and indexes reported per database; 0 turns them off.
    pub relation_limit: u32,
    /// Statement statistics settings.
    pub statements: crate::config::Statements,
    /// Whether this target collects its endpoint's server-wide families.
    pub carrier: bool,
}

impl TargetSpec {
    /// Resolves every target of `config`, applying defaults and choosing, per server
    /// endpoint, the one target that carries the server-wide families: the target marked
    /// `carrier`, else the lowest-named `auto` one.
    pub fn resolve(config: &crate::config::Config) -> Vec<TargetSpec> {
        use crate::config::ServerWide;
        use std::collections::BTreeMap;

        let mut carriers: BTreeMap<(String, u16), &str> = BTreeMap::new();
        for t in &config.targets {
            let key = (t.host.to_ascii_lowercase(), t.port());
            match t.server_wide {
                ServerWide::Carrier => {
                    carriers.insert(key, &t.name);
                }
                ServerWide::Auto => {
                    let explicit = config.targets.iter().any(|o| {
                        o.server_wide == ServerWide::Carrier
                            && (o.host.to_ascii_lowercase(), o.port()) == key
                    });
                    if !explicit {
                        let entry = carriers.entry(key).or_insert(&t.name);
                        if t.name.as_str() < *entry {
                            *entry = &t.name;
                        }
                    }
                }
                ServerWide::Off => {}
            }
        }

        let d = &config.defaults;
        config
            .targets
            .iter()
            .map(|t| {
                let key = (t.host.to_ascii_lowercase(), t.port());
                let databases = match (&t.databases, &t.discover) {
                    (Some(list), _) => {
                        Databases::Listed(list.iter().map(|s| Arc::from(s.as_str())).collect())
                    }
                    (None, Some(disc)) => Databases::Discover {
                        include: if disc.include.is_empty() {
                            vec!["*".to_owned()]
                        } else {
                            disc.include.clone()
                        },
                        exclude: disc.exclude.clone(),
                    },
                    (None, None) => match t.engine {
                        crate::config::Engine::Postgresql => {
                            Databases::Listed(vec![Arc::from("postgres")])
                        }
                        crate::config::Engine::Mysql => Databases::Discover {
                            include: vec!["*".to_owned()],
                            exclude: Vec::new(),
                        },
                    },
                };
                TargetSpec {
                    name: Arc::from(t.name.as_str()),
                    engine: t.engine,
                    host: Arc::from(t.host.as_str()),
                    port: t.port(),
                    databases,
                    user: t.user.clone(),
                    password: t.password.clone(),
                    tls: t.tls.clone(),
                    interval: t.interval.unwrap_or(d.interval),
                    query_timeout: t
                        .query_timeout
                        .unwrap_or_else(|| d.query_timeout_for(t.interval.unwrap_or(d.interval))),
                    connect_timeout: d.connect_timeout,
                    lock_timeout: d.lock_timeout,
                    relation_limit: t.relation_limit.unwrap_or(d.relation_limit),
                    statements: t.statements.clone().unwrap_or_else(|| d.statements.clone()),
                    carrier: carriers.get(&key).is_some_and(|c| *c == t.name),
                }
            })
            .collect()
    }

    /// `host:port`, safe for logs and labels.
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Resource attributes shared by both engines, following the OpenTelemetry semantic
/// conventions. `system` is `postgresql`, `mysql` or `mariadb` (probed). Nothing here
/// depends on which worker collects the target.
pub fn resource(spec: &TargetSpec, system: &'static str) -> Resource {
    Resource {
        attrs: crate::attrs![
            "db.system.name" => system,
            "service.name" => system,
            "service.instance.id" => spec.server(),
            "server.address" => &spec.host,
            "server.port" => i64::from(spec.port),
            "dbcollector.target" => &spec.name,
        ],
    }
}

/// Matches a name against a glob with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether discovery keeps database `name`.
pub fn discover_keeps(include: &[String], exclude: &[String], name: &str) -> bool {
    include.iter().any(|p| glob_match(p, name)) && !exclude.iter().any(|p| glob_match(p, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_stars_and_question_marks() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("app_*", "app_eu"));
        assert!(!glob_match("app_*", "reporting"));
        assert!(glob_match("db?", "db1"));
        assert!(!glob_match("db?", "db12"));
        assert!(glob_match("*_tmp*", "x_tmp_1"));
        assert!(discover_keeps(&["*".into()], &["test*".into()], "prod"));
        assert!(!discover_keeps(&["*".into()], &["test*".into()], "test_a"));
    }
}
