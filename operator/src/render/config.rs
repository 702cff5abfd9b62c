//! The worker's YAML config, rendered from a DatabaseCollector's spec.
//!
//! A small serializable mirror of the worker's config format (`worker/src/config`): only
//! the fields the spec sets are written, the worker's defaults fill in the rest. No
//! credential is copied: passwords, exporter headers and TLS material (CA bundles, client
//! certificates and keys) are written as references to Secret keys
//! (`{ secret: { name, key } }`) that the worker reads through the API.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use dbcollector_crds::spec::{
    self, CaSecretRef, Compression, DatabaseCollectorSpec, Engine, Protocol, QueryText,
    SecretKeyRef, ServerWide, TlsMode, TlsSecretRef,
};
use kube::core::Duration;
use serde::Serialize;

/// The config format version the operator writes (the worker's `FORMAT_VERSION`).
pub const FORMAT_VERSION: u32 = 1;

/// Address of the worker's `/metrics`, `/healthz` and `/readyz`, in every pod.
pub const LISTEN: &str = "0.0.0.0:9187";

/// The rendered config.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerConfig {
    /// The YAML document.
    pub yaml: String,
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
/// # Errors
/// [`Error::Yaml`] if serialization fails.
pub fn render(spec: &DatabaseCollectorSpec, source: &str) -> Result<WorkerConfig, Error> {
    let targets = spec.databases.iter().map(render_target).collect();
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
            tls: spec.exporter.tls.as_ref().map(|tls| {
                let (cert, key) = client_certificate(tls.cert_secret_ref.as_ref());
                Tls {
                    mode: None,
                    ca: Some(SecretSource::ca(&tls.ca_secret_ref)),
                    cert,
                    key,
                }
            }),
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
    })
}

/// One target; its TLS material is written as Secret references.
fn render_target(t: &spec::Target) -> Target {
    let tls = t.tls.as_ref().map(|tls| {
        let (cert, key) = client_certificate(tls.cert_secret_ref.as_ref());
        Tls {
            mode: Some(match tls.mode {
                TlsMode::Disable => "disable",
                TlsMode::Require => "require",
                TlsMode::VerifyCa => "verify-ca",
                TlsMode::VerifyFull => "verify-full",
            }),
            ca: tls.ca_secret_ref.as_ref().map(SecretSource::ca),
            cert,
            key,
        }
    });
    Target {
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
    }
}

/// The `cert` and `key` sources of a client certificate: the `tls.crt` and `tls.key` of
/// its kubernetes.io/tls Secret.
fn client_certificate(r: Option<&TlsSecretRef>) -> (Option<SecretSource>, Option<SecretSource>) {
    let Some(r) = r else {
        return (None, None);
    };
    let source = |key: &str| SecretSource {
        secret: SecretRef {
            name: r.name.clone(),
            key: key.to_owned(),
        },
    };
    (Some(source("tls.crt")), Some(source("tls.key")))
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

/// A target's or the exporter's `tls`; the exporter's has no `mode` (its scheme says).
#[derive(Serialize)]
struct Tls {
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<SecretSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert: Option<SecretSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<SecretSource>,
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

impl SecretSource {
    /// The CA bundle key of a `caSecretRef` (`ca.crt` unless it names another).
    fn ca(r: &CaSecretRef) -> Self {
        Self {
            secret: SecretRef {
                name: r.name.clone(),
                key: r.key.clone(),
            },
        }
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls>,
    compression: &'static str,
}

#[derive(Serialize)]
struct Telemetry {
    listen: &'static str,
    log_format: &'static str,
}
