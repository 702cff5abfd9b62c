//! The cross-field rules of the spec: as CEL for the API server, and mirrored in Rust.
//!
//! Each rule is written once here as a [`CelRule`] and placed in the schema by the derive
//! (`x-kubernetes-validations`), where API servers from Kubernetes 1.25 enforce it.
//! Older servers ignore CEL, so [`validate`] checks the same rules in Rust; the operator
//! calls it and refuses a spec that fails (reporting the field in `Degraded`). The unit
//! tests evaluate the CEL rules with kube's client-side CEL interpreter and assert both
//! agree on a table of specs.
//!
//! Field paths are those the API server reports: `spec.databases[2].discover`.

use std::time::Duration as StdDuration;

use kube::core::{Duration, Rule};

use crate::spec::{DatabaseCollectorSpec, DatabaseTls, TlsMode};

/// One CEL validation rule of the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CelRule {
    /// The CEL expression; `self` is the schema node the rule sits on.
    pub rule: &'static str,
    /// The message reported when the rule fails.
    pub message: &'static str,
    /// The field blamed, relative to the node the rule sits on (`.replicas`); `None`
    /// blames the node itself.
    pub field_path: Option<&'static str>,
}

impl CelRule {
    /// The rule as kube's derive puts it in the schema.
    pub fn to_rule(&self) -> Rule {
        let rule = Rule::new(self.rule).message(self.message);
        match self.field_path {
            Some(path) => rule.field_path(path),
            None => rule,
        }
    }
}

/// On `spec`: every worker needs at least one slot.
pub const REPLICAS_WITHIN_SHARDS: CelRule = CelRule {
    rule: "self.replicas <= self.shards",
    message: "must not exceed shards: each worker needs a slot of its own",
    field_path: Some(".replicas"),
};

/// On `spec`: the autoscaler may not scale past the shard space either.
pub const MAX_REPLICAS_WITHIN_SHARDS: CelRule = CelRule {
    rule: "!has(self.autoscaling) || self.autoscaling.maxReplicas <= self.shards",
    message: "must not exceed shards: each worker needs a slot of its own",
    field_path: Some(".autoscaling.maxReplicas"),
};

/// On `spec`: the query deadline fits in the default interval.
pub const QUERY_TIMEOUT_BELOW_INTERVAL: CelRule = CelRule {
    rule: "!has(self.queryTimeout) || duration(self.queryTimeout) < duration(self.interval)",
    message: "must be shorter than interval",
    field_path: Some(".queryTimeout"),
};

/// On `spec`: the query deadline fits in every target's own interval.
pub const QUERY_TIMEOUT_BELOW_TARGET_INTERVALS: CelRule = CelRule {
    rule: "!has(self.queryTimeout) || self.databases.all(t, !has(t.interval) || \
           duration(self.queryTimeout) < duration(t.interval))",
    message: "must be shorter than the interval of every target",
    field_path: Some(".queryTimeout"),
};

/// On `spec.queryTimeout`.
pub const QUERY_TIMEOUT_ABOVE_ZERO: CelRule = CelRule {
    rule: "duration(self) > duration('0s')",
    message: "must be above 0",
    field_path: None,
};

/// On `spec.interval` and `spec.databases[*].interval`.
pub const INTERVAL_AT_LEAST_1S: CelRule = CelRule {
    rule: "duration(self) >= duration('1s')",
    message: "must be at least 1s",
    field_path: None,
};

/// On `spec.shards`: a transition rule, checked on updates only.
pub const SHARDS_IMMUTABLE: CelRule = CelRule {
    rule: "self == oldSelf",
    message: "is immutable: changing it would move every target to another slot",
    field_path: None,
};

/// On `spec.autoscaling`.
pub const MIN_WITHIN_MAX_REPLICAS: CelRule = CelRule {
    rule: "self.minReplicas <= self.maxReplicas",
    message: "must not exceed maxReplicas",
    field_path: Some(".minReplicas"),
};

/// On each target.
pub const DATABASES_OR_DISCOVER: CelRule = CelRule {
    rule: "!has(self.databases) || !has(self.discover)",
    message: "set either databases or discover, not both",
    field_path: Some(".discover"),
};

/// On a target's `tls`.
pub const CA_FOR_VERIFY_MODES: CelRule = CelRule {
    rule: "!(self.mode in ['verify-ca', 'verify-full']) || has(self.caSecretRef)",
    message: "is required by the verify-ca and verify-full modes",
    field_path: Some(".caSecretRef"),
};

/// On a target's `tls`.
pub const NO_TLS_REFS_WHEN_DISABLED: CelRule = CelRule {
    rule: "self.mode != 'disable' || (!has(self.caSecretRef) && !has(self.certSecretRef))",
    message: "is disable but caSecretRef or certSecretRef is set",
    field_path: Some(".mode"),
};

/// On `spec.exporter`.
pub const TLS_FOR_HTTPS: CelRule = CelRule {
    rule: "!self.endpoint.startsWith('https://') || has(self.tls)",
    message: "is required for an https:// endpoint",
    field_path: Some(".tls"),
};

/// On `spec.exporter`.
pub const NO_TLS_FOR_HTTP: CelRule = CelRule {
    rule: "self.endpoint.startsWith('https://') || !has(self.tls)",
    message: "is set but the endpoint is not https://",
    field_path: Some(".tls"),
};

/// Every rule, for tests that check each one reaches the schema.
pub const ALL: [CelRule; 13] = [
    REPLICAS_WITHIN_SHARDS,
    MAX_REPLICAS_WITHIN_SHARDS,
    QUERY_TIMEOUT_BELOW_INTERVAL,
    QUERY_TIMEOUT_BELOW_TARGET_INTERVALS,
    QUERY_TIMEOUT_ABOVE_ZERO,
    INTERVAL_AT_LEAST_1S,
    SHARDS_IMMUTABLE,
    MIN_WITHIN_MAX_REPLICAS,
    DATABASES_OR_DISCOVER,
    CA_FOR_VERIFY_MODES,
    NO_TLS_REFS_WHEN_DISABLED,
    TLS_FOR_HTTPS,
    NO_TLS_FOR_HTTP,
];

/// A spec field that breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path, as the API server reports it: `spec.databases[2].discover`.
    pub field: String,
    /// What is wrong, the rule's message.
    pub message: String,
}

/// Checks the CEL rules of the schema in Rust and reports the first broken one.
///
/// `old` is the spec before an update (`None` on creation), for the rules that compare
/// with it (`shards` is immutable).
///
/// # Errors
/// The first [`FieldError`], in the order of [`violations`].
pub fn validate(
    spec: &DatabaseCollectorSpec,
    old: Option<&DatabaseCollectorSpec>,
) -> Result<(), FieldError> {
    match violations(spec, old).into_iter().next() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Every CEL rule of the schema that `spec` breaks, as [`validate`] checks them.
pub fn violations(
    spec: &DatabaseCollectorSpec,
    old: Option<&DatabaseCollectorSpec>,
) -> Vec<FieldError> {
    let mut out = Violations(Vec::new());
    let shards = i64::from(spec.shards);

    out.check(
        i64::from(spec.replicas) <= shards,
        "spec",
        REPLICAS_WITHIN_SHARDS,
    );
    if let Some(a) = &spec.autoscaling {
        out.check(
            i64::from(a.max_replicas) <= shards,
            "spec",
            MAX_REPLICAS_WITHIN_SHARDS,
        );
        out.check(
            a.min_replicas <= a.max_replicas,
            "spec.autoscaling",
            MIN_WITHIN_MAX_REPLICAS,
        );
    }
    if let Some(old) = old {
        out.check(spec.shards == old.shards, "spec.shards", SHARDS_IMMUTABLE);
    }

    out.check(
        spec.interval >= seconds(1),
        "spec.interval",
        INTERVAL_AT_LEAST_1S,
    );
    if let Some(timeout) = spec.query_timeout {
        out.check(
            timeout > seconds(0),
            "spec.queryTimeout",
            QUERY_TIMEOUT_ABOVE_ZERO,
        );
        out.check(
            timeout < spec.interval,
            "spec",
            QUERY_TIMEOUT_BELOW_INTERVAL,
        );
        let fits = spec
            .databases
            .iter()
            .all(|t| t.interval.is_none_or(|interval| timeout < interval));
        out.check(fits, "spec", QUERY_TIMEOUT_BELOW_TARGET_INTERVALS);
    }

    for (i, target) in spec.databases.iter().enumerate() {
        let at = format!("spec.databases[{i}]");
        out.check(
            target.databases.is_none() || target.discover.is_none(),
            &at,
            DATABASES_OR_DISCOVER,
        );
        if let Some(interval) = target.interval {
            out.check(
                interval >= seconds(1),
                &format!("{at}.interval"),
                INTERVAL_AT_LEAST_1S,
            );
        }
        if let Some(tls) = &target.tls {
            check_tls(&mut out, tls, &format!("{at}.tls"));
        }
    }

    let https = spec.exporter.endpoint.starts_with("https://");
    let tls = spec.exporter.tls.is_some();
    out.check(!https || tls, "spec.exporter", TLS_FOR_HTTPS);
    out.check(https || !tls, "spec.exporter", NO_TLS_FOR_HTTP);
    out.0
}

fn check_tls(out: &mut Violations, tls: &DatabaseTls, at: &str) {
    let verifies = matches!(tls.mode, TlsMode::VerifyCa | TlsMode::VerifyFull);
    out.check(
        !verifies || tls.ca_secret_ref.is_some(),
        at,
        CA_FOR_VERIFY_MODES,
    );
    let no_refs = tls.ca_secret_ref.is_none() && tls.cert_secret_ref.is_none();
    out.check(
        tls.mode != TlsMode::Disable || no_refs,
        at,
        NO_TLS_REFS_WHEN_DISABLED,
    );
}

fn seconds(s: u64) -> Duration {
    Duration::from(StdDuration::from_secs(s))
}

/// The broken rules found so far.
struct Violations(Vec<FieldError>);

impl Violations {
    /// Records `rule` as broken unless `ok`; `node` is the path of the node the rule sits
    /// on, to which the rule's own field path is appended.
    fn check(&mut self, ok: bool, node: &str, rule: CelRule) {
        if ok {
            return;
        }
        self.0.push(FieldError {
            field: format!("{node}{}", rule.field_path.unwrap_or_default()),
            message: rule.message.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests;
