//! `DatabaseCollector.spec`: what the user asks for, with the bounds, defaults and CEL
//! rules the API server enforces.
//!
//! The doc comments of the fields become the schema's descriptions, which is what
//! `kubectl explain databasecollector.spec` prints: they are written for users.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::cel;
use crate::schema;
use crate::shard::{DEFAULT_SHARDS, MAX_SHARDS};
use crate::status::DatabaseCollectorStatus;

/// Most targets in one DatabaseCollector (`spec.databases`).
pub const MAX_TARGETS: u32 = 1_000;

/// What a target name must match: its identity and shard key, as in the worker's config.
pub const TARGET_NAME_PATTERN: &str = r"^[a-z0-9_.-]{1,63}$";

/// What a duration must match: Go duration syntax (`30s`, `1m30s`, `500ms`, `1.5h`),
/// without sign and without the `ns`/`us` units.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,9}(\.[0-9]{1,9})?(ms|s|m|h))+$";

/// What a Secret name must match (a DNS-1123 subdomain).
pub const SECRET_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// What a Secret data key must match.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// What an exporter endpoint must match: `http://` or `https://`, a host with no
/// credentials, and an optional path.
pub const ENDPOINT_PATTERN: &str = r"^https?://[^/@\s?#]+(/[^\s?#]*)?$";

/// What an HTTP header name must match (an RFC 9110 token).
pub const HEADER_NAME_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";

/// The desired state of a DatabaseCollector: its targets, how they are collected and
/// exported, and the worker pods that collect them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// The lint takes the keys repeated across printcolumn(...) entries for duplicates.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "dbcollector.dev",
    version = "v1alpha1",
    kind = "DatabaseCollector",
    namespaced,
    shortname = "dbc",
    status = "DatabaseCollectorStatus",
    derive = "PartialEq",
    doc = "A fleet of database metrics collectors: worker pods that scrape the listed \
           PostgreSQL and MySQL/MariaDB databases and export their metrics over OTLP, each \
           target collected by exactly one worker.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Whether every shard slot is collected by a ready worker",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        description = "Desired worker pods",
        json_path = ".spec.replicas"
    ),
    printcolumn(
        name = "Targets",
        type_ = "integer",
        description = "Targets in the spec",
        json_path = ".status.targets"
    ),
    printcolumn(
        name = "Shards",
        type_ = "integer",
        description = "Size of the shard space",
        json_path = ".spec.shards"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = cel::REPLICAS_WITHIN_SHARDS.to_rule(),
    validation = cel::MAX_REPLICAS_WITHIN_SHARDS.to_rule(),
    validation = cel::QUERY_TIMEOUT_BELOW_INTERVAL.to_rule(),
    validation = cel::QUERY_TIMEOUT_BELOW_TARGET_INTERVALS.to_rule()
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseCollectorSpec {
    /// Number of worker pods. At least 1 and at most `shards`; set `paused` to stop
    /// reconciling instead of scaling to zero. Changed by `kubectl scale` and by the
    /// HorizontalPodAutoscaler when `autoscaling` is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = MAX_SHARDS))]
    pub replicas: i32,

    /// Worker container image. When unset, the operator uses the worker image of its own
    /// version, so upgrading the operator also upgrades collectors that do not pin one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Image pull policy of the worker container (the schema's description is the
    /// type's: kube hoists an optional enum's schema over the field's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Compute resources of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels a worker pod's node must have (at most 64).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::label_map")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the worker pods (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of the worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Extra labels on the worker pods (at most 64). Cannot override the labels the
    /// operator sets (`app.kubernetes.io/*`, `dbcollector.dev/*`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::label_map")]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations on the worker pods (at most 64). The `dbcollector.dev/`
    /// annotations are the operator's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::annotation_map")]
    pub pod_annotations: BTreeMap<String, String>,

    /// The database targets to collect (at most 1000), each identified by its unique
    /// `name`. Each target is collected by exactly one worker, chosen by the hash of its
    /// name. Adding or removing a target reaches the workers without restarting them.
    #[serde(default)]
    #[schemars(length(max = MAX_TARGETS))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub databases: Vec<Target>,

    /// Time between two scrapes of a target, as a Go duration (`30s`, `1m`). At least
    /// 1s; default 30s. A target's own `interval` overrides it.
    #[serde(default = "default_interval")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    #[x_kube(validation = cel::INTERVAL_AT_LEAST_1S.to_rule())]
    pub interval: Duration,

    /// Deadline of one monitoring query, enforced by the database (statement timeout)
    /// and by the worker. Must be shorter than every target's interval. Default: 5s, or
    /// half the interval when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    #[x_kube(validation = cel::QUERY_TIMEOUT_ABOVE_ZERO.to_rule())]
    pub query_timeout: Option<Duration>,

    /// Most tables (and, separately, indexes) reported per database, largest first.
    /// Default 1000; 0 turns the table and index metrics off.
    #[serde(default = "default_relation_limit")]
    #[schemars(range(max = 100_000))]
    pub relation_limit: u32,

    /// Query-level statistics (PostgreSQL pg_stat_statements, MySQL statement digests).
    #[serde(default)]
    pub statements: Statements,

    /// Processing between scraping and export: sampling, circuit breaking, batching.
    #[serde(default)]
    pub pipeline: Pipeline,

    /// Where the metrics are sent, over OTLP. Required.
    pub exporter: Exporter,

    /// Scale the workers with a HorizontalPodAutoscaler (autoscaling/v2) on CPU and/or
    /// memory utilization. The autoscaler scales this DatabaseCollector through its scale
    /// subresource, so `replicas` follows it. Unset: `replicas` is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Size of the fixed shard space targets are hashed into and worker ranges are cut
    /// from. Between 1 and 16384, at least `replicas` and `autoscaling.maxReplicas`;
    /// default 1024. Immutable: changing it would move every target.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = MAX_SHARDS))]
    #[x_kube(validation = cel::SHARDS_IMMUTABLE.to_rule())]
    pub shards: u32,

    /// Stop reconciling this collector without deleting anything: the workers keep
    /// running as they are, and spec changes wait until it is unpaused. Default false.
    #[serde(default)]
    pub paused: bool,
}

/// Image pull policy of the worker container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(
    description = "Image pull policy of the worker container: Always, IfNotPresent or \
    Never. When unset, Kubernetes' default applies (Always for the latest tag, else IfNotPresent)."
)]
pub enum ImagePullPolicy {
    /// Pull at every container start.
    Always,
    /// Pull only when the node does not have the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// One monitored target: a database server endpoint and a set of its databases.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = cel::DATABASES_OR_DISCOVER.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// Stable identity of the target, unique in this collector: 1 to 63 characters of
    /// a-z, 0-9, '_', '.', '-'. Its hash chooses the worker; it is exported as the
    /// `dbcollector.target` resource attribute. Renaming a target makes it a new one.
    #[schemars(length(min = 1, max = 63), pattern(TARGET_NAME_PATTERN))]
    pub name: String,

    /// Database engine: postgresql, or mysql (MySQL and MariaDB).
    pub engine: Engine,

    /// Host name or IP address of the database server (an IPv6 address without
    /// brackets).
    #[schemars(length(min = 1, max = 253), pattern(r"^[A-Za-z0-9._:%-]+$"))]
    pub host: String,

    /// TCP port. Default: 5432 for postgresql, 3306 for mysql.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,

    /// Databases to collect, by name (1 to 256). Exclusive with `discover`. When neither
    /// is set: `postgres` on PostgreSQL, every schema on MySQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 64)))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub databases: Option<Vec<String>>,

    /// Collect every database that accepts connections, filtered by glob patterns.
    /// Exclusive with `databases`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discover: Option<Discover>,

    /// User name to log in with.
    #[schemars(length(min = 1, max = 128))]
    pub user: String,

    /// The Secret key holding the password, read by the worker at each connect (so a
    /// rotated password takes effect at the next connection). Unset: no password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,

    /// TLS to the database server. Unset: plain TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DatabaseTls>,

    /// Time between two scrapes of this target, overriding `spec.interval`. At least 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    #[x_kube(validation = cel::INTERVAL_AT_LEAST_1S.to_rule())]
    pub interval: Option<Duration>,

    /// Whether this target reports the server-wide metrics of its endpoint (host and
    /// port), which several targets may share: auto (the lowest-named auto target of the
    /// endpoint does, unless another is carrier), carrier (this one does; at most one per
    /// endpoint) or off. Default auto.
    #[serde(default)]
    pub server_wide: ServerWide,
}

/// Database engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL.
    Postgresql,
    /// MySQL or MariaDB (the flavor is detected).
    Mysql,
}

/// Database discovery by glob patterns (`*` any run of characters, `?` one character).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Discover {
    /// Patterns a database name must match one of (1 to 64). Default `["*"]`.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 128)))]
    pub include: Vec<String>,

    /// Patterns that exclude a database (at most 64). Default none. template0, databases
    /// that refuse connections and MySQL's system schemas are always skipped.
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub exclude: Vec<String>,
}

impl Default for Discover {
    fn default() -> Self {
        Self {
            include: vec!["*".to_owned()],
            exclude: Vec::new(),
        }
    }
}

/// Who reports the server-wide metrics of an endpoint.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServerWide {
    /// The lowest-named auto target of the endpoint, unless another is carrier.
    #[default]
    Auto,
    /// This target.
    Carrier,
    /// Never this target.
    Off,
}

/// A key of a Secret in the collector's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_NAME_PATTERN))]
    pub name: String,

    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub key: String,
}

/// A CA certificate bundle in a Secret of the collector's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_NAME_PATTERN))]
    pub name: String,

    /// Key holding the PEM CA bundle. Default `ca.crt`.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub key: String,
}

/// A client certificate: a Secret of type kubernetes.io/tls in the collector's
/// namespace, whose `tls.crt` and `tls.key` hold the PEM certificate and key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(SECRET_NAME_PATTERN))]
    pub name: String,
}

/// TLS from a worker to a database server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = cel::CA_FOR_VERIFY_MODES.to_rule(),
    validation = cel::NO_TLS_REFS_WHEN_DISABLED.to_rule()
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseTls {
    /// disable (plain TCP), require (encrypted, server not verified), verify-ca (server
    /// certificate verified against `caSecretRef`) or verify-full (verify-ca, and the
    /// host name must match the certificate). Default disable.
    #[serde(default)]
    pub mode: TlsMode,

    /// CA bundle that signed the server's certificate. Required by verify-ca and
    /// verify-full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,

    /// Client certificate for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<TlsSecretRef>,
}

/// How a database connection is secured.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS without verifying the server.
    Require,
    /// TLS; the server's certificate chain is verified.
    VerifyCa,
    /// As verify-ca, and the host name must match the certificate.
    VerifyFull,
}

/// Query-level statistics settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Statements {
    /// Collect them at all. Default true; a missing extension or disabled
    /// performance_schema is reported, not an error.
    pub enabled: bool,

    /// How many statements, ranked by execution time since the previous scrape, are
    /// exported one by one; the rest are exported as one aggregate. Default 100; 0
    /// exports every statement individually.
    #[schemars(range(max = 10_000))]
    pub top_n: u32,

    /// Whether query text is exported: none, or obfuscated (literals replaced by `?`).
    /// Default none.
    pub query_text: QueryText,
}

impl Default for Statements {
    fn default() -> Self {
        Self {
            enabled: true,
            top_n: 100,
            query_text: QueryText::None,
        }
    }
}

/// Whether query text is exported.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum QueryText {
    /// Never.
    #[default]
    None,
    /// With literals replaced by `?`.
    Obfuscated,
}

/// Processing between scraping and export.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Pipeline {
    /// Adaptive sampling of query-level series.
    pub sampler: Sampler,

    /// Per-target circuit breaker: a target that keeps failing is probed less often.
    pub breaker: Breaker,

    /// Batching of export requests.
    pub batch: Batch,
}

/// Adaptive sampling of query-level series.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Sampler {
    /// Sample at all. Default true.
    pub enabled: bool,

    /// Query-level points per target and scrape kept without sampling; above this the
    /// sampling rate falls so that about this many are kept. Default 500.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub target_points: u32,

    /// Statements kept whatever the rate: this many of the slowest, of the most called
    /// and of the erroring. Default 10.
    #[schemars(range(max = 10_000))]
    pub always_keep: u32,
}

impl Default for Sampler {
    fn default() -> Self {
        Self {
            enabled: true,
            target_points: 500,
            always_keep: 10,
        }
    }
}

/// Per-target circuit breaker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Breaker {
    /// Consecutive failed scrapes that open the breaker. Default 3.
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,

    /// First time the breaker stays open; doubles, with jitter, after each failed probe.
    /// Default: the target's interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub base_open: Option<Duration>,

    /// Longest time the breaker stays open. Default: two of the target's intervals.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), pattern(DURATION_PATTERN))]
    pub max_open: Option<Duration>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_open: None,
            max_open: None,
        }
    }
}

/// Batching of export requests.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Batch {
    /// Most data points in one export request. Default 1000.
    #[schemars(range(min = 1, max = 100_000))]
    pub max_points: u32,
}

impl Default for Batch {
    fn default() -> Self {
        Self { max_points: 1000 }
    }
}

/// The OTLP exporter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = cel::TLS_FOR_HTTPS.to_rule(),
    validation = cel::NO_TLS_FOR_HTTP.to_rule()
)]
#[serde(rename_all = "camelCase")]
pub struct Exporter {
    /// Base URL of the OTLP receiver, http:// or https://, without credentials: e.g.
    /// `http://otel-collector:4317` for grpc, or `http://otel-collector:4318` for
    /// http/protobuf (`/v1/metrics` is appended).
    #[schemars(length(min = 1, max = 2048), pattern(ENDPOINT_PATTERN))]
    pub endpoint: String,

    /// OTLP transport: grpc or http/protobuf. Default grpc.
    #[serde(default)]
    pub protocol: Protocol,

    /// TLS to the receiver. Required for an https:// endpoint, refused for http://.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExporterTls>,

    /// Extra request headers (e.g. an API key), each read from a Secret key (at most 32,
    /// unique by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub headers: Vec<Header>,

    /// Compression of export requests: gzip or none. Default gzip.
    #[serde(default)]
    pub compression: Compression,
}

/// OTLP transport.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum Protocol {
    /// OTLP over gRPC.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP over HTTP with binary protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Export compression.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip.
    #[default]
    Gzip,
    /// No compression.
    None,
}

/// TLS from a worker to the OTLP receiver.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExporterTls {
    /// CA bundle to verify the receiver's certificate.
    pub ca_secret_ref: CaSecretRef,

    /// Client certificate for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<TlsSecretRef>,
}

/// An export request header whose value is read from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// Header name, e.g. `x-api-key`.
    #[schemars(length(min = 1, max = 256), pattern(HEADER_NAME_PATTERN))]
    pub name: String,

    /// The Secret key holding the header's value.
    pub secret_key_ref: SecretKeyRef,
}

/// Horizontal autoscaling of the workers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = cel::MIN_WITHIN_MAX_REPLICAS.to_rule())]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest worker pods. At least 1, at most `maxReplicas`. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = MAX_SHARDS))]
    pub min_replicas: i32,

    /// Most worker pods. At least 1, at most `shards`. Required.
    #[schemars(range(min = 1, max = MAX_SHARDS))]
    pub max_replicas: i32,

    /// Target average CPU utilization of the workers, in percent of their CPU request.
    /// When neither this nor the memory target is set, CPU 80% (the autoscaler's own
    /// default) applies.
    #[serde(
        rename = "targetCPUUtilizationPercentage",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub target_cpu_utilization_percentage: Option<i32>,

    /// Target average memory utilization of the workers, in percent of their memory
    /// request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub target_memory_utilization_percentage: Option<i32>,

    /// Scale-up and scale-down behavior, as in a HorizontalPodAutoscaler
    /// (autoscaling/v2). Unset: the autoscaler's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

fn default_replicas() -> i32 {
    1
}

fn default_shards() -> u32 {
    DEFAULT_SHARDS
}

fn default_interval() -> Duration {
    Duration::from(StdDuration::from_secs(30))
}

fn default_relation_limit() -> u32 {
    1000
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}
