//! The worker's configuration file: its types, defaults, parsing and validation.
//!
//! Every field is documented with its unit and default; `docs/configuration.md` mirrors
//! these comments for users. Unknown fields are errors, and every error names the field
//! by its path (and, for YAML syntax errors, the line).

mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use validate::validate;

/// The newest config format this worker reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema.
    #[error("{path}: {message}{}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        /// Where in the document, e.g. `targets[2].tls.mode` (`.` for the root).
        path: String,
        /// What is wrong.
        message: String,
        /// The 1-based line, when the parser knows it.
        line: Option<usize>,
    },
    /// The config parsed but breaks a rule.
    #[error("{field}: {message}")]
    Invalid {
        /// The field's path, e.g. `targets[1].port`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file uses a format newer than this worker understands.
    #[error("version: config format {found} is newer than this worker supports ({supported})")]
    NewerFormat {
        /// The version in the file.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
}

/// The whole worker configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Config format version. Required; this worker reads `1`.
    pub version: u32,
    /// Values targets inherit unless they set their own.
    #[serde(default)]
    pub defaults: Defaults,
    /// The databases to monitor. Default: none.
    #[serde(default)]
    pub targets: Vec<Target>,
    /// Connection pooling and the per-server connection budget.
    #[serde(default)]
    pub connections: Connections,
    /// Processing between the receivers and the exporter.
    #[serde(default)]
    pub pipeline: Pipeline,
    /// Where and how data is sent.
    pub exporter: Exporter,
    /// The worker's own metrics, health endpoints and logs.
    #[serde(default)]
    pub telemetry: Telemetry,
}

/// Defaults for every target.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    /// Time between two scrapes of a target. Default `30s`; at least `1s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Deadline of one query, enforced by the server (statement timeout) and by the
    /// worker. Default: `5s`, or half the target's interval when that is shorter; must be
    /// shorter than the interval.
    #[serde(default, with = "humantime_serde")]
    pub query_timeout: Option<Duration>,
    /// Deadline to open a connection (TCP, TLS and authentication). Default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a monitoring query waits for a lock before giving up (PostgreSQL
    /// `lock_timeout`, MySQL `lock_wait_timeout`). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub lock_timeout: Duration,
    /// Most tables (and, separately, indexes) reported per database, largest first.
    /// Default `1000`; `0` turns table and index families off.
    pub relation_limit: u32,
    /// Query-level statistics (pg_stat_statements, MySQL statement digests).
    pub statements: Statements,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            query_timeout: None,
            connect_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(1),
            relation_limit: 1000,
            statements: Statements::default(),
        }
    }
}

/// Query-level statistics settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Statements {
    /// Collect them at all. Default `true` (a missing extension is reported, not an
    /// error).
    pub enabled: bool,
    /// How many statements, ranked by execution time spent since the previous scrape,
    /// are exported one by one; the rest go out as one aggregate. Default `100`; `0`
    /// exports every statement individually (no aggregate).
    pub top_n: u32,
    /// Whether query text is exported: `none` (default) or `obfuscated` (literals
    /// replaced by `?`).
    pub query_text: QueryText,
    /// Longest query text exported, in characters, when `query_text` is `obfuscated`.
    /// Default `1024`.
    pub max_text_length: u32,
}

impl Default for Statements {
    fn default() -> Self {
        Self {
            enabled: true,
            top_n: 100,
            query_text: QueryText::None,
            max_text_length: 1024,
        }
    }
}

/// Whether query text is exported.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueryText {
    /// Never.
    #[default]
    None,
    /// With literals replaced.
    Obfuscated,
}

/// The database engine of a target.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL 12 to 17.
    Postgresql,
    /// MySQL 5.7/8.x and MariaDB 10.x/11.x (the flavor is probed).
    Mysql,
}

impl Engine {
    /// The engine's usual port.
    pub fn default_port(self) -> u16 {
        match self {
            Engine::Postgresql => 5432,
            Engine::Mysql => 3306,
        }
    }

    /// Lowercase name, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgresql => "postgresql",
            Engine::Mysql => "mysql",
        }
    }
}

/// One monitored target: a server endpoint and a set of its databases.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Stable identity of the target: unique, 1 to 63 characters of `[a-z0-9_.-]`.
    /// Exported as the `dbcollector.target` resource attribute. Required.
    pub name: String,
    /// `postgresql` or `mysql` (MariaDB included). Required.
    pub engine: Engine,
    /// Host name or IP address of the server. Required.
    pub host: String,
    /// TCP port. Default: 5432 (PostgreSQL) or 3306 (MySQL).
    pub port: Option<u16>,
    /// Databases to monitor by name. For PostgreSQL each gets its own connection; for
    /// MySQL they filter the schemas reported. Exclusive with `discover`. Default when
    /// neither is set: `postgres` (PostgreSQL) or every schema (MySQL).
    pub databases: Option<Vec<String>>,
    /// Monitor every database that accepts connections, filtered by glob patterns.
    /// Exclusive with `databases`.
    pub discover: Option<Discover>,
    /// User name to log in with. Required.
    pub user: String,
    /// Where the password comes from; read again at every (re)connect. Default: no
    /// password.
    pub password: Option<ValueSource>,
    /// TLS to the database. Default: `mode: disable`... unless set.
    #[serde(default)]
    pub tls: DbTls,
    /// Overrides `defaults.interval` for this target.
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Overrides `defaults.query_timeout` for this target.
    #[serde(default, with = "humantime_serde")]
    pub query_timeout: Option<Duration>,
    /// Overrides `defaults.relation_limit` for this target.
    pub relation_limit: Option<u32>,
    /// Overrides `defaults.statements` for this target.
    pub statements: Option<Statements>,
    /// Whether this target carries the server-wide families of its endpoint
    /// (`auto`: the lowest-named `auto` target of the endpoint does, unless another
    /// says `carrier`; `carrier`: this one does; `off`: never). Default `auto`.
    #[serde(default)]
    pub server_wide: ServerWide,
}

/// Who carries the server-wide families of an endpoint.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ServerWide {
    /// The lowest-named `auto` target of the endpoint, unless another is `carrier`.
    #[default]
    Auto,
    /// This target (at most one per endpoint).
    Carrier,
    /// Never this target.
    Off,
}

/// Database discovery with include/exclude glob patterns (`*` and `?`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Discover {
    /// Patterns a database must match one of. Default `["*"]`.
    pub include: Vec<String>,
    /// Patterns that exclude a database. Default: none. `template0`, databases that
    /// do not allow connections and MySQL's system schemas are always skipped.
    pub exclude: Vec<String>,
}

/// A value that must not be written into the config: read from a file, an environment
/// variable or (in a pod) a Kubernetes Secret each time it is needed. Written
/// `{ file: /path }`, `{ env: NAME }` or `{ secret: { name: NAME, key: KEY } }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// The whole content of a file, without a trailing newline.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
    /// A key of a Secret in the worker's own namespace, read through the Kubernetes API
    /// (only when the worker runs in a pod).
    Secret {
        /// The Secret's name.
        name: String,
        /// The key within its data.
        key: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValueSource {
    file: Option<PathBuf>,
    env: Option<String>,
    secret: Option<RawSecretRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretRef {
    name: String,
    key: String,
}

impl TryFrom<RawValueSource> for ValueSource {
    type Error = &'static str;

    fn try_from(raw: RawValueSource) -> Result<Self, Self::Error> {
        match (raw.file, raw.env, raw.secret) {
            (Some(file), None, None) if !file.as_os_str().is_empty() => Ok(ValueSource::File(file)),
            (Some(_), None, None) => Err("file must name a path"),
            (None, Some(env), None) if !env.is_empty() => Ok(ValueSource::Env(env)),
            (None, Some(_), None) => Err("env must name a variable"),
            (None, None, Some(s)) if !s.name.is_empty() && !s.key.is_empty() => {
                Ok(ValueSource::Secret {
                    name: s.name,
                    key: s.key,
                })
            }
            (None, None, Some(_)) => Err("secret needs a name and a key"),
            _ => Err("set exactly one of `file`, `env` or `secret`"),
        }
    }
}

/// Deserializes a [`ValueSource`] from its map form only. Anything else (an inline
/// password, a number) is refused with a message that never repeats the value, since it
/// is likely a secret.
impl<'de> Deserialize<'de> for ValueSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor};

        const INLINE: &str = "inline values are not accepted here (they would be secrets in \
             the config): use { file: PATH }, { env: NAME } or { secret: { name: N, key: K } }";

        struct Source;

        impl<'de> Visitor<'de> for Source {
            type Value = ValueSource;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("{ file: PATH }, { env: NAME } or { secret: { name, key } }")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ValueSource, A::Error> {
                let raw = RawValueSource::deserialize(de::value::MapAccessDeserializer::new(map))?;
                ValueSource::try_from(raw).map_err(de::Error::custom)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<ValueSource, E> {
                Err(E::custom(INLINE))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<ValueSource, E> {
                Err(E::custom(INLINE))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<ValueSource, E> {
                Err(E::custom(INLINE))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<ValueSource, E> {
                Err(E::custom(INLINE))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<ValueSource, E> {
                Err(E::custom(INLINE))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<ValueSource, A::Error> {
                Err(de::Error::custom(INLINE))
            }
        }

        deserializer.deserialize_any(Source)
    }
}

impl Config {
    /// The names of every Secret the config reads through the Kubernetes API.
    pub fn secret_names(&self) -> std::collections::BTreeSet<String> {
        let targets = self
            .targets
            .iter()
            .flat_map(|t| t.password.iter().chain(t.tls.sources()));
        targets
            .chain(self.exporter.headers.values())
            .chain(self.exporter.tls.sources())
            .filter_map(|s| match s {
                ValueSource::Secret { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

/// TLS from the worker to a database.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DbTls {
    /// `disable` (default), `require` (encrypt, no verification), `verify-ca` (verify
    /// the chain) or `verify-full` (chain and host name).
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file of the CA that signed the server's certificate; re-read at connect.
    /// Exclusive with `ca`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `key_file` or `key`. Exclusive with
    /// `cert`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Exclusive with `key`.
    pub key_file: Option<PathBuf>,
    /// The CA's PEM content, from a file, an environment variable or a Secret; read
    /// again before each connect. Exclusive with `ca_file`.
    pub ca: Option<ValueSource>,
    /// The client certificate's PEM content, read again before each connect; needs
    /// `key` or `key_file`. Exclusive with `cert_file`.
    pub cert: Option<ValueSource>,
    /// The client private key's PEM content, read again before each connect. Exclusive
    /// with `key_file`.
    pub key: Option<ValueSource>,
}

impl DbTls {
    /// The PEM sources the config names (`ca`, `cert`, `key`), in that order.
    pub fn sources(&self) -> impl Iterator<Item = &ValueSource> {
        [&self.ca, &self.cert, &self.key].into_iter().flatten()
    }
}

/// How a database connection is secured.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS without verifying the server.
    Require,
    /// TLS, server certificate chain verified against `ca_file` or `ca`. With the current sqlx
    /// (0.8) this also checks the host name, as `verify-full` does: stricter than
    /// libpq's `verify-ca`, never weaker.
    VerifyCa,
    /// As `verify-ca`, and the host name must match the certificate.
    VerifyFull,
}

/// Connection pooling.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Connections {
    /// Most connections open at once to one server endpoint (host:port), across all
    /// its targets and databases. The budget of an endpoint is the number of its
    /// monitored databases plus one, capped at this. Default `10`; at least `1`.
    pub max_per_server: u32,
    /// A connection older than this is closed and reopened. Default `30m`.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// An idle connection is closed after this. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest wait for a connection from the budget. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            max_per_server: 10,
            max_lifetime: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(10 * 60),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// The processing pipeline.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Pipeline {
    /// Processing tasks. Default `0`: one per CPU core.
    pub workers: u32,
    /// Capacity, in scrapes, of the channel from the receivers to processing. A full
    /// channel makes scrapes wait (back-pressure); it never drops. Default `256`.
    pub channel_capacity: Option<u32>,
    /// Query-level sampling.
    pub sampler: Sampler,
    /// Per-target circuit breaker.
    pub breaker: Breaker,
    /// Batching for export.
    pub batch: BatchConfig,
}

/// The adaptive sampler of query-level series.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Sampler {
    /// Sample at all. Default `true`.
    pub enabled: bool,
    /// Query-level points per target and scrape kept without sampling; above this the
    /// rate falls so that about this many are kept. Default `500`.
    pub target_points: u32,
    /// Statements kept whatever the rate: the slowest, most called and erroring,
    /// this many of each. Default `10`.
    pub always_keep: u32,
    /// Most statement keys remembered (their previous counters), all targets together.
    /// Default `100000`.
    pub max_keys: u64,
    /// A statement not returned for this long is forgotten, and a target not scraped for
    /// this long with its statements. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub key_ttl: Duration,
}

impl Default for Sampler {
    fn default() -> Self {
        Self {
            enabled: true,
            target_points: 500,
            always_keep: 10,
            max_keys: 100_000,
            key_ttl: Duration::from_secs(3600),
        }
    }
}

/// The per-target circuit breaker.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Breaker {
    /// Consecutive failed scrapes that open the breaker. Default `3`; at least `1`.
    pub failure_threshold: u32,
    /// First open time; doubles (with jitter) after each failed probe. Default: the
    /// target's interval.
    #[serde(default, with = "humantime_serde")]
    pub base_open: Option<Duration>,
    /// Longest open time. Default: two of the target's intervals.
    #[serde(default, with = "humantime_serde")]
    pub max_open: Option<Duration>,
    /// Most breakers remembered (one per target). Default `100000`.
    pub max_entries: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_open: None,
            max_open: None,
            max_entries: 100_000,
        }
    }
}

/// Batching for export.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most points in one batch handed to the exporter, which joins batches into requests
    /// of up to 4096 points. Default `1000`.
    pub max_points: u32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_points: 1000 }
    }
}

/// The OTLP exporter.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Exporter {
    /// Base URL of the receiver, `http://` or `https://`, e.g. `http://127.0.0.1:4317`
    /// (gRPC) or `http://127.0.0.1:4318` (HTTP; `/v1/metrics` is appended). Required.
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`.
    #[serde(default)]
    pub protocol: Protocol,
    /// TLS settings for `https://` endpoints.
    #[serde(default)]
    pub tls: ExporterTls,
    /// Extra request headers (e.g. an API key), each read from a file or env var.
    #[serde(default)]
    pub headers: BTreeMap<String, ValueSource>,
    /// `gzip` (default) or `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Deadline of one export request. Default `10s`.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of retryable failures.
    #[serde(default)]
    pub retry: Retry,
    /// The queue in front of the exporter.
    #[serde(default)]
    pub queue: Queue,
}

fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Export compression.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip.
    #[default]
    Gzip,
    /// None.
    None,
}

/// TLS from the worker to the OTLP receiver.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExporterTls {
    /// PEM CA bundle to verify the receiver. `https://` endpoints need it or `ca`;
    /// exclusive with `ca`.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS; needs `key_file` or `key`. Exclusive with
    /// `cert`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Exclusive with `key`.
    pub key_file: Option<PathBuf>,
    /// The CA bundle's PEM content, from a file, an environment variable or a Secret;
    /// read once at start. Exclusive with `ca_file`.
    pub ca: Option<ValueSource>,
    /// The client certificate's PEM content, read once at start; needs `key` or
    /// `key_file`. Exclusive with `cert_file`.
    pub cert: Option<ValueSource>,
    /// The client private key's PEM content, read once at start. Exclusive with
    /// `key_file`.
    pub key: Option<ValueSource>,
}

impl ExporterTls {
    /// The PEM sources the config names (`ca`, `cert`, `key`), in that order.
    pub fn sources(&self) -> impl Iterator<Item = &ValueSource> {
        [&self.ca, &self.cert, &self.key].into_iter().flatten()
    }
}

/// Export retry policy: exponential backoff with jitter; a server's retry hint
/// (`Retry-After`, gRPC `RetryInfo`) is honored when longer.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Retry at all. Default `true`.
    pub enabled: bool,
    /// First wait. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Give a batch up (counted as dropped) after retrying this long. Default `2m`.
    #[serde(with = "humantime_serde")]
    pub max_elapsed: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(120),
        }
    }
}

/// The bounded export queue.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Queue {
    /// Most points waiting for export; when full the oldest batches are dropped and
    /// counted. Default `200000`.
    pub max_points: u64,
    /// Export requests in flight at once. Default `2`.
    pub concurrency: u32,
    /// On shutdown, how long to keep exporting what is queued. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            max_points: 200_000,
            concurrency: 2,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// Self-telemetry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Address of `/metrics`, `/healthz` and `/readyz`. Default `0.0.0.0:9187`.
    pub listen: SocketAddr,
    /// `plain` (default) or `json` log lines.
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax. Default `info`; `RUST_LOG` overrides it.
    pub log_level: String,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9187)),
            log_format: LogFormat::Plain,
            log_level: "info".to_owned(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

impl Defaults {
    /// The query timeout for a target scraped every `interval`.
    pub fn query_timeout_for(&self, interval: Duration) -> Duration {
        self.query_timeout
            .unwrap_or_else(|| Duration::from_secs(5).min(interval / 2))
    }
}

impl Target {
    /// The port, defaulted by engine.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.engine.default_port())
    }
}

impl Config {
    /// Parses and validates a config document.
    ///
    /// # Errors
    /// [`Error::Parse`] with the field path (and line) for malformed YAML or schema
    /// mismatches, [`Error::NewerFormat`] for a format this worker does not know, and
    /// [`Error::Invalid`] for broken rules.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        check_version(text)?;
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.location().map(|l| l.line());
            let message = strip_location(&inner.to_string());
            // The YAML error may already start with the path; say it once.
            let message = match message.split_once(": ") {
                Some((head, rest)) if path.starts_with(head) => rest.to_owned(),
                _ => message,
            };
            Error::Parse {
                path,
                message,
                line,
            }
        })?;
        validate(&config)?;
        Ok(config)
    }

    /// Reads, parses and validates a config file.
    ///
    /// # Errors
    /// [`Error::Read`] when the file cannot be read, otherwise as [`Config::from_yaml`].
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text)
    }
}

/// Reads `version` before anything else, so a newer format is reported as such rather
/// than as the unknown fields it may bring.
fn check_version(text: &str) -> Result<(), Error> {
    #[derive(Deserialize)]
    struct Head {
        version: Option<serde_yaml_ng::Value>,
    }
    let Ok(head) = serde_yaml_ng::from_str::<Head>(text) else {
        return Ok(()); // the full parse reports the syntax error with its path
    };
    match head.version {
        None => Err(Error::Invalid {
            field: "version".into(),
            message: format!("missing; this worker reads format {FORMAT_VERSION}"),
        }),
        Some(serde_yaml_ng::Value::Number(n)) => match n.as_u64() {
            Some(v) if v > u64::from(FORMAT_VERSION) => Err(Error::NewerFormat {
                found: u32::try_from(v).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            }),
            Some(v) if v >= 1 => Ok(()),
            _ => Err(Error::Invalid {
                field: "version".into(),
                message: format!("must be {FORMAT_VERSION}, found {n}"),
            }),
        },
        Some(_) => Err(Error::Invalid {
            field: "version".into(),
            message: "must be an integer".into(),
        }),
    }
}

/// serde_yaml appends "at line X column Y" to its messages; the line is reported apart.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
