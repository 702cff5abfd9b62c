//! Rules a parsed config must follow beyond its schema.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Config, Error, Protocol, ServerWide, Target, TlsMode};

/// Checks every rule and reports the first broken one with the field's path.
///
/// # Errors
/// [`Error::Invalid`] naming the field and what is wrong.
pub fn validate(config: &Config) -> Result<(), Error> {
    check_defaults(config)?;
    let mut names = BTreeSet::new();
    for (i, target) in config.targets.iter().enumerate() {
        let at = |field: &str| format!("targets[{i}].{field}");
        if !names.insert(target.name.as_str()) {
            return invalid(
                at("name"),
                format!("duplicate target name {:?}", target.name),
            );
        }
        check_target(config, target, &at)?;
    }
    check_carriers(config)?;
    check_exporter(config)?;
    if config.connections.max_per_server == 0 {
        return invalid("connections.max_per_server", "must be at least 1");
    }
    check_durations(config)?;
    if config.pipeline.breaker.failure_threshold == 0 {
        return invalid("pipeline.breaker.failure_threshold", "must be at least 1");
    }
    if config.pipeline.workers > 1024 {
        return invalid("pipeline.workers", "must be at most 1024 (0: one per core)");
    }
    if config
        .pipeline
        .channel_capacity
        .is_some_and(|c| c > 1_000_000)
    {
        return invalid("pipeline.channel_capacity", "must be at most 1000000");
    }
    if config.pipeline.sampler.target_points == 0 {
        return invalid("pipeline.sampler.target_points", "must be at least 1");
    }
    if config.pipeline.breaker.max_entries == 0 {
        return invalid("pipeline.breaker.max_entries", "must be at least 1");
    }
    if config.exporter.queue.concurrency > 64 {
        return invalid("exporter.queue.concurrency", "must be at most 64");
    }
    if tracing_subscriber::EnvFilter::try_new(&config.telemetry.log_level).is_err() {
        return invalid(
            "telemetry.log_level",
            "is not a valid filter (e.g. info, debug, dbcollector_worker=debug)",
        );
    }
    if config.pipeline.batch.max_points == 0 {
        return invalid("pipeline.batch.max_points", "must be at least 1");
    }
    if config.pipeline.channel_capacity == Some(0) {
        return invalid("pipeline.channel_capacity", "must be at least 1");
    }
    if config.pipeline.sampler.max_keys == 0 {
        return invalid("pipeline.sampler.max_keys", "must be at least 1");
    }
    if config.exporter.queue.concurrency == 0 {
        return invalid("exporter.queue.concurrency", "must be at least 1");
    }
    if config.exporter.queue.max_points < u64::from(config.pipeline.batch.max_points) {
        return invalid(
            "exporter.queue.max_points",
            "must hold at least one batch (pipeline.batch.max_points)",
        );
    }
    Ok(())
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Result<(), Error> {
    Err(Error::Invalid {
        field: field.into(),
        message: message.into(),
    })
}

/// Durations that must be above zero, and pairs that must be ordered.
fn check_durations(config: &Config) -> Result<(), Error> {
    let c = &config.connections;
    let p = &config.pipeline;
    let e = &config.exporter;
    let positive = [
        ("connections.acquire_timeout", Some(c.acquire_timeout)),
        ("connections.max_lifetime", Some(c.max_lifetime)),
        ("connections.idle_timeout", Some(c.idle_timeout)),
        ("pipeline.sampler.key_ttl", Some(p.sampler.key_ttl)),
        ("pipeline.breaker.base_open", p.breaker.base_open),
        ("pipeline.breaker.max_open", p.breaker.max_open),
        ("exporter.retry.max_elapsed", Some(e.retry.max_elapsed)),
        (
            "exporter.queue.shutdown_timeout",
            Some(e.queue.shutdown_timeout),
        ),
        ("defaults.lock_timeout", Some(config.defaults.lock_timeout)),
    ];
    for (field, value) in positive {
        if value.is_some_and(|v| v.is_zero()) {
            return invalid(field, "must be above 0");
        }
    }
    if let (Some(base), Some(max)) = (p.breaker.base_open, p.breaker.max_open) {
        if base > max {
            return invalid(
                "pipeline.breaker.base_open",
                "must be at most pipeline.breaker.max_open",
            );
        }
    }
    Ok(())
}

fn check_defaults(config: &Config) -> Result<(), Error> {
    let d = &config.defaults;
    if d.interval < Duration::from_secs(1) {
        return invalid("defaults.interval", "must be at least 1s");
    }
    if d.query_timeout
        .is_some_and(|t| t.is_zero() || t >= d.interval)
    {
        return invalid(
            "defaults.query_timeout",
            "must be above 0 and below defaults.interval",
        );
    }
    if d.connect_timeout.is_zero() {
        return invalid("defaults.connect_timeout", "must be above 0");
    }
    Ok(())
}

fn check_target(config: &Config, t: &Target, at: &dyn Fn(&str) -> String) -> Result<(), Error> {
    let name_ok = (1..=63).contains(&t.name.len())
        && t.name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
    if !name_ok {
        return invalid(
            at("name"),
            "must be 1 to 63 characters of a-z, 0-9, '_', '.', '-'",
        );
    }
    if t.host.trim().is_empty() {
        return invalid(at("host"), "must not be empty");
    }
    if t.port == Some(0) {
        return invalid(at("port"), "must be between 1 and 65535");
    }
    if t.user.is_empty() {
        return invalid(at("user"), "must not be empty");
    }
    match (&t.databases, &t.discover) {
        (Some(_), Some(_)) => {
            return invalid(
                at("databases"),
                "set either databases or discover, not both",
            );
        }
        (Some(dbs), None) => {
            if dbs.is_empty() {
                return invalid(at("databases"), "must name at least one database");
            }
            if let Some(j) = dbs.iter().position(|d| d.is_empty()) {
                return invalid(at(&format!("databases[{j}]")), "must not be empty");
            }
            let unique: BTreeSet<_> = dbs.iter().collect();
            if unique.len() != dbs.len() {
                return invalid(at("databases"), "lists a database twice");
            }
        }
        _ => {}
    }
    let interval = t.interval.unwrap_or(config.defaults.interval);
    if interval < Duration::from_secs(1) {
        return invalid(at("interval"), "must be at least 1s");
    }
    let timeout = t
        .query_timeout
        .unwrap_or_else(|| config.defaults.query_timeout_for(interval));
    if timeout.is_zero() || timeout >= interval {
        return invalid(
            at("query_timeout"),
            "must be above 0 and below the target's interval",
        );
    }
    check_tls(t, at)
}

fn check_tls(t: &Target, at: &dyn Fn(&str) -> String) -> Result<(), Error> {
    let tls = &t.tls;
    let (ca, cert, key) = check_pem_pairs(
        [
            (tls.ca_file.is_some(), tls.ca.is_some()),
            (tls.cert_file.is_some(), tls.cert.is_some()),
            (tls.key_file.is_some(), tls.key.is_some()),
        ],
        &|field| at(&format!("tls.{field}")),
    )?;
    if tls.mode == TlsMode::Disable && (ca || cert || key) {
        return invalid(at("tls.mode"), "is disable but TLS material is set");
    }
    if matches!(tls.mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && !ca {
        return invalid(
            at("tls.ca_file"),
            "(or tls.ca) is required by verify-ca and verify-full",
        );
    }
    Ok(())
}

/// Checks the `(x_file set, x set)` pairs of `ca`, `cert` and `key`: each is given at most
/// one way, and a certificate comes with its key. Returns which of the three are given;
/// `at` turns a field name (`ca`, `key_file`) into its path.
fn check_pem_pairs(
    pairs: [(bool, bool); 3],
    at: &dyn Fn(&str) -> String,
) -> Result<(bool, bool, bool), Error> {
    for ((file, pem), name) in pairs.iter().zip(["ca", "cert", "key"]) {
        if *file && *pem {
            invalid(at(name), format!("is exclusive with {name}_file"))?;
        }
    }
    let [ca, cert, key] = pairs.map(|(file, pem)| file || pem);
    if cert != key {
        invalid(
            at("key"),
            "a client certificate (cert or cert_file) and its key (key or key_file) go \
             together",
        )?;
    }
    Ok((ca, cert, key))
}

/// At most one explicit carrier per endpoint.
fn check_carriers(config: &Config) -> Result<(), Error> {
    let mut carriers: BTreeMap<(String, u16), usize> = BTreeMap::new();
    for (i, t) in config.targets.iter().enumerate() {
        if t.server_wide != ServerWide::Carrier {
            continue;
        }
        let key = (t.host.to_ascii_lowercase(), t.port());
        if let Some(first) = carriers.insert(key, i) {
            return invalid(
                format!("targets[{i}].server_wide"),
                format!(
                    "targets[{first}] already carries the server-wide families of {}:{}",
                    t.host,
                    t.port()
                ),
            );
        }
    }
    Ok(())
}

fn check_exporter(config: &Config) -> Result<(), Error> {
    let e = &config.exporter;
    let (ca, cert, _) = check_pem_pairs(
        [
            (e.tls.ca_file.is_some(), e.tls.ca.is_some()),
            (e.tls.cert_file.is_some(), e.tls.cert.is_some()),
            (e.tls.key_file.is_some(), e.tls.key.is_some()),
        ],
        &|field| format!("exporter.tls.{field}"),
    )?;
    let Ok(uri) = e.endpoint.parse::<http::Uri>() else {
        return invalid("exporter.endpoint", "is not a URL");
    };
    match uri.scheme_str() {
        Some("http") => {
            if ca || cert {
                return invalid("exporter.tls", "is set but the endpoint is http://");
            }
        }
        Some("https") => {
            if !ca {
                return invalid(
                    "exporter.tls.ca_file",
                    "(or exporter.tls.ca) is required for an https:// endpoint",
                );
            }
        }
        _ => return invalid("exporter.endpoint", "must start with http:// or https://"),
    }
    if uri.host().is_none() {
        return invalid("exporter.endpoint", "has no host");
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return invalid(
            "exporter.endpoint",
            "must not carry credentials; use exporter.headers",
        );
    }
    if e.protocol == Protocol::Grpc && uri.path() != "/" && !uri.path().is_empty() {
        return invalid("exporter.endpoint", "a gRPC endpoint takes no path");
    }
    for name in e.headers.keys() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return invalid(
                format!("exporter.headers.{name}"),
                "is not a valid header name",
            );
        }
    }
    if e.timeout.is_zero() {
        return invalid("exporter.timeout", "must be above 0");
    }
    if e.retry.initial_backoff.is_zero() || e.retry.initial_backoff > e.retry.max_backoff {
        return invalid(
            "exporter.retry.initial_backoff",
            "must be above 0 and at most exporter.retry.max_backoff",
        );
    }
    Ok(())
}
