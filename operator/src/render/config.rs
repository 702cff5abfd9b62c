//! The worker's YAML config, rendered from a DatabaseCollector's spec.
//!
//! A small serializable mirror of the worker's config format (`worker/src/config`): only
//! the fields the spec sets are written, the worker's defaults fill in the rest. No
//! credential is copied: passwords and exporter headers are written as references to
//! Secret keys (`{ secret: { name, key } }`) that the worker reads through the API.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use dbcollector_crds::spec::{
    self, Compression, DatabaseCollectorSpec, Engine, Protocol, QueryText, SecretKeyRef,
    ServerWide, TlsMode,
};
use kube::core::Duration;
use serde::Serialize;

/// The config format version the operator writes (the worker's `FORMAT_VERSION`).
pub const FORMAT_VERSION: u32 = 1;

/// Address of the worker's `/metrics`, `/healthz` and `/readyz`, in every pod.
pub const LISTEN: &str = "0.0.0.0:9187";

/// The rendered config and what of the spec it could not express.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerConfig {
    /// The YAML document.
    pub yaml: String,
    /// Spec fields left out because the worker cannot act on them yet, with why: each
    /// entry is a field path and a sentence naming what is not collected.
    pub unsupported: Vec<Unsupported>,
}

/// A spec field the rendered config leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The field's path, e.g. `spec.databases[2].tls.caSecretRef`.
    pub field: String,
    /// What follows, e.g. `target orders is not collected`.
    pub consequence: String,
}

/// Why the config could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The document did not serialize (it does not for these types).
    #[error("serializing the worker config")]
    Yaml(#[source] serde_yaml_ng::Error),
}

/// Renders the worker config of a collector; `source` names it in the header comment.
///
/// Targets whose TLS needs material from Secrets (a CA or a client certificate) are left
/// out and listed in [`WorkerConfig::unsupported`]: the worker reads TLS files only, and
/// downgrading such a target to unverified TLS would be worse than not collecting it.
///
/// # Errors
/// [`Error::Yaml`] if serialization fails.
pub fn render(spec: &DatabaseCollectorSpec, source: &str) -> Result<WorkerConfig, Error> {
    let mut unsupported = Vec::new();
    let mut targets = Vec::with_capacity(spec.databases.len());
    for (i, target) in spec.databases.iter().enumerate() {
        match render_target(target) {
            Ok(t) => targets.push(t),
            Err(field) => unsupported.push(Unsupported {
                field: format!("spec.databases[{i}].tls.{field}"),
                consequence: format!(
                    "TLS material from Secrets is not supported by the worker yet; target {} \
                     is not collected",
                    target.name
                ),
            }),
        }
    }
    // TODO: the exporter's CA and client certificate from Secrets need a worker-side
    // source (`ca_secret`); until then an https:// exporter is rendered without them and
    // the worker refuses the config, which the condition below says.
    if let Some(tls) = &spec.exporter.tls {
        let field = if tls.cert_secret_ref.is_some() {
            "spec.exporter.tls"
        } else {
            "spec.exporter.tls.caSecretRef"
        };
        unsupported.push(Unsupported {
            field: field.to_owned(),
            consequence: "TLS material from Secrets is not supported by the worker yet; \
                          the workers cannot export"
                .to_owned(),
        });
    }

    let config = Config {
        version: FORMAT_VERSION,
        defaults: Defaults {
            interval: duration(spec.interval),
            query_timeout: spec.query_timeout.map(duration),
            relation_limit: spec.relation_limit,
            statements: Statements {
                enabled: spec.statements.enabled,
                top_n: spec.statements.top_n,
                query_text: match spec.statements.query_text {
                    QueryText::None => "none",
                    QueryText::Obfuscated => "obfuscated",
                },
            },
        },
        targets,
        pipeline: pipeline(&spec.pipeline),
        exporter: Exporter {
            endpoint: spec.exporter.endpoint.clone(),
            protocol: match spec.exporter.protocol {
                Protocol::Grpc => "grpc",
                Protocol::HttpProtobuf => "http/protobuf",
            },
            headers: spec
                .exporter
                .headers
                .iter()
                .map(|h| (h.name.clone(), SecretSource::from(&h.secret_key_ref)))
                .collect(),
            compression: match spec.exporter.compression {
                Compression::Gzip => "gzip",
                Compression::None => "none",
            },
        },
        telemetry: Telemetry {
            listen: LISTEN,
            log_format: "json",
        },
    };
    let body = serde_yaml_ng::to_string(&config).map_err(Error::Yaml)?;
    Ok(WorkerConfig {
        yaml: format!(
            "# Rendered by dbcollector-operator from DatabaseCollector {source}; edits are \
             overwritten.\n{body}"
        ),
        unsupported,
    })
}

/// One target, or the name of the TLS field that cannot be rendered.
fn render_target(t: &spec::Target) -> Result<Target, &'static str> {
    let tls = match &t.tls {
        None => None,
        Some(tls) if tls.ca_secret_ref.is_some() => return Err("caSecretRef"),
        Some(tls) if tls.cert_secret_ref.is_some() => return Err("certSecretRef"),
        Some(tls) => Some(Tls {
            mode: match tls.mode {
                TlsMode::Disable => "disable",
                TlsMode::Require => "require",
                TlsMode::VerifyCa => "verify-ca",
                TlsMode::VerifyFull => "verify-full",
            },
        }),
    };
    Ok(Target {
        name: t.name.clone(),
        engine: match t.engine {
            Engine::Postgresql => "postgresql",
            Engine::Mysql => "mysql",
        },
        host: t.host.clone(),
        port: t.port,
        databases: t.databases.clone(),
        discover: t.discover.as_ref().map(|d| Discover {
            include: d.include.clone(),
            exclude: d.exclude.clone(),
        }),
        user: t.user.clone(),
        password: t.password_secret_ref.as_ref().map(SecretSource::from),
        tls,
        interval: t.interval.map(duration),
        server_wide: match t.server_wide {
            ServerWide::Auto => "auto",
            ServerWide::Carrier => "carrier",
            ServerWide::Off => "off",
        },
    })
}

fn pipeline(p: &spec::Pipeline) -> Pipeline {
    Pipeline {
        sampler: Sampler {
            enabled: p.sampler.enabled,
            target_points: p.sampler.target_points,
            always_keep: p.sampler.always_keep,
        },
        breaker: Breaker {
            failure_threshold: p.breaker.failure_threshold,
            base_open: p.breaker.base_open.map(duration),
            max_open: p.breaker.max_open.map(duration),
        },
        batch: Batch {
            max_points: p.batch.max_points,
        },
    }
}

/// A Go duration of the spec in the worker's humantime syntax (`1m 30s`, `500ms`).
fn duration(d: Duration) -> String {
    humantime::format_duration(StdDuration::from(d)).to_string()
}

#[derive(Serialize)]
struct Config {
    version: u32,
    defaults: Defaults,
    targets: Vec<Target>,
    pipeline: Pipeline,
    exporter: Exporter,
    telemetry: Telemetry,
}

#[derive(Serialize)]
struct Defaults {
    interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    query_timeout: Option<String>,
    relation_limit: u32,
    statements: Statements,
}

#[derive(Serialize)]
struct Statements {
    enabled: bool,
    top_n: u32,
    query_text: &'static str,
}

#[derive(Serialize)]
struct Target {
    name: String,
    engine: &'static str,
    host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    databases: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    discover: Option<Discover>,
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<SecretSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    server_wide: &'static str,
}

#[derive(Serialize)]
struct Discover {
    include: Vec<String>,
    exclude: Vec<String>,
}

#[derive(Serialize)]
struct Tls {
    mode: &'static str,
}

/// `{ secret: { name, key } }`: a value the worker reads from a Secret of its namespace.
#[derive(Serialize)]
struct SecretSource {
    secret: SecretRef,
}

#[derive(Serialize)]
struct SecretRef {
    name: String,
    key: String,
}

impl From<&SecretKeyRef> for SecretSource {
    fn from(r: &SecretKeyRef) -> Self {
        Self {
            secret: SecretRef {
                name: r.name.clone(),
                key: r.key.clone(),
            },
        }
    }
}

#[derive(Serialize)]
struct Pipeline {
    sampler: Sampler,
    breaker: Breaker,
    batch: Batch,
}

#[derive(Serialize)]
struct Sampler {
    enabled: bool,
    target_points: u32,
    always_keep: u32,
}

#[derive(Serialize)]
struct Breaker {
    failure_threshold: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_open: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_open: Option<String>,
}

#[derive(Serialize)]
struct Batch {
    max_points: u32,
}

#[derive(Serialize)]
struct Exporter {
    endpoint: String,
    protocol: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, SecretSource>,
    compression: &'static str,
}

#[derive(Serialize)]
struct Telemetry {
    listen: &'static str,
    log_format: &'static str,
}
