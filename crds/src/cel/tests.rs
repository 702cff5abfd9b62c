//! The CEL rules evaluated by kube's client-side interpreter and by the Rust mirror must
//! agree: on a table of specs that each break known rules, and on random specs.

use kube::core::cel::{validate_cel, validate_cel_update};
use kube::core::Duration;
use proptest::prelude::*;

use super::*;
use crate::spec::*;
use crate::DatabaseCollector;

fn dur(text: &str) -> Duration {
    text.parse().unwrap()
}

fn target(name: &str) -> Target {
    Target {
        name: name.to_owned(),
        engine: Engine::Postgresql,
        host: "db.example".to_owned(),
        port: None,
        databases: Some(vec!["app".to_owned()]),
        discover: None,
        user: "monitor".to_owned(),
        password_secret_ref: Some(SecretKeyRef {
            name: "db-credentials".to_owned(),
            key: "password".to_owned(),
        }),
        tls: None,
        interval: None,
        server_wide: ServerWide::Auto,
    }
}

/// A spec that breaks no rule.
fn base() -> DatabaseCollectorSpec {
    DatabaseCollectorSpec {
        replicas: 3,
        image: None,
        image_pull_policy: None,
        resources: None,
        node_selector: Default::default(),
        tolerations: Vec::new(),
        affinity: None,
        pod_labels: Default::default(),
        pod_annotations: Default::default(),
        databases: vec![target("orders"), target("billing")],
        interval: dur("30s"),
        query_timeout: None,
        relation_limit: 1000,
        statements: Statements::default(),
        pipeline: Pipeline::default(),
        exporter: Exporter {
            endpoint: "http://otel-collector:4317".to_owned(),
            protocol: Protocol::Grpc,
            tls: None,
            headers: Vec::new(),
            compression: Compression::Gzip,
        },
        autoscaling: None,
        shards: 1024,
        paused: false,
    }
}

fn ca() -> CaSecretRef {
    CaSecretRef {
        name: "ca".to_owned(),
        key: "ca.crt".to_owned(),
    }
}

fn autoscaling(min: i32, max: i32) -> Option<Autoscaling> {
    Some(Autoscaling {
        min_replicas: min,
        max_replicas: max,
        target_cpu_utilization_percentage: Some(70),
        target_memory_utilization_percentage: None,
        behavior: None,
    })
}

/// The (field, message) pairs kube's CEL interpreter reports, sorted.
fn cel_errors(
    spec: &DatabaseCollectorSpec,
    old: Option<&DatabaseCollectorSpec>,
) -> Vec<(String, String)> {
    let new = DatabaseCollector::new("x", spec.clone());
    let result = match old {
        Some(old) => validate_cel_update(&new, &DatabaseCollector::new("x", old.clone())),
        None => validate_cel(&new),
    };
    let mut errors: Vec<_> = match result {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| (e.field_path, e.message))
            .collect(),
    };
    errors.sort();
    errors
}

/// The (field, message) pairs the Rust mirror reports, sorted.
fn rust_errors(
    spec: &DatabaseCollectorSpec,
    old: Option<&DatabaseCollectorSpec>,
) -> Vec<(String, String)> {
    let mut errors: Vec<_> = violations(spec, old)
        .into_iter()
        .map(|e| (e.field, e.message))
        .collect();
    errors.sort();
    errors
}

struct Case {
    name: &'static str,
    spec: DatabaseCollectorSpec,
    old: Option<DatabaseCollectorSpec>,
    /// The fields that must be reported, sorted.
    fields: &'static [&'static str],
}

fn case(
    name: &'static str,
    fields: &'static [&'static str],
    edit: impl FnOnce(&mut DatabaseCollectorSpec),
) -> Case {
    let mut spec = base();
    edit(&mut spec);
    Case {
        name,
        spec,
        old: None,
        fields,
    }
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        case("valid base", &[], |_| {}),
        case("replicas equal to shards", &[], |s| {
            s.shards = 4;
            s.replicas = 4;
        }),
        case("replicas above shards", &["spec.replicas"], |s| {
            s.shards = 4;
            s.replicas = 5;
        }),
        case("autoscaling within bounds", &[], |s| {
            s.autoscaling = autoscaling(2, 1024);
        }),
        case(
            "max replicas above shards",
            &["spec.autoscaling.maxReplicas"],
            |s| {
                s.autoscaling = autoscaling(1, 1025);
            },
        ),
        case(
            "min replicas above max",
            &["spec.autoscaling.minReplicas"],
            |s| {
                s.autoscaling = autoscaling(5, 3);
            },
        ),
        case(
            "min above max above shards",
            &[
                "spec.autoscaling.maxReplicas",
                "spec.autoscaling.minReplicas",
            ],
            |s| {
                s.shards = 16;
                s.autoscaling = autoscaling(40, 20);
            },
        ),
        case(
            "databases and discover together",
            &["spec.databases[1].discover"],
            |s| {
                s.databases[1].discover = Some(Discover::default());
            },
        ),
        case("discover alone", &[], |s| {
            s.databases[1].databases = None;
            s.databases[1].discover = Some(Discover::default());
        }),
        case(
            "target interval below 1s",
            &["spec.databases[0].interval"],
            |s| {
                s.databases[0].interval = Some(dur("500ms"));
            },
        ),
        case("interval below 1s", &["spec.interval"], |s| {
            s.interval = dur("999ms");
        }),
        case("interval of exactly 1s, compound durations", &[], |s| {
            s.interval = dur("1s");
            s.databases[0].interval = Some(dur("1m30s"));
            s.query_timeout = Some(dur("500ms"));
        }),
        case("query timeout of zero", &["spec.queryTimeout"], |s| {
            s.query_timeout = Some(dur("0s"));
        }),
        case(
            "query timeout equal to interval",
            &["spec.queryTimeout"],
            |s| {
                s.interval = dur("1m");
                s.query_timeout = Some(dur("60s"));
            },
        ),
        case(
            "query timeout above a target's interval",
            &["spec.queryTimeout"],
            |s| {
                s.query_timeout = Some(dur("10s"));
                s.databases[1].interval = Some(dur("5s"));
            },
        ),
        case(
            "verify-full without a CA",
            &["spec.databases[0].tls.caSecretRef"],
            |s| {
                s.databases[0].tls = Some(DatabaseTls {
                    mode: TlsMode::VerifyFull,
                    ca_secret_ref: None,
                    cert_secret_ref: None,
                });
            },
        ),
        case("verify-ca with a CA and a client certificate", &[], |s| {
            s.databases[0].tls = Some(DatabaseTls {
                mode: TlsMode::VerifyCa,
                ca_secret_ref: Some(ca()),
                cert_secret_ref: Some(TlsSecretRef {
                    name: "client".to_owned(),
                }),
            });
        }),
        case(
            "disabled TLS with a client certificate",
            &["spec.databases[1].tls.mode"],
            |s| {
                s.databases[1].tls = Some(DatabaseTls {
                    mode: TlsMode::Disable,
                    ca_secret_ref: None,
                    cert_secret_ref: Some(TlsSecretRef {
                        name: "client".to_owned(),
                    }),
                });
            },
        ),
        case("https exporter without TLS", &["spec.exporter.tls"], |s| {
            s.exporter.endpoint = "https://otel.example:4317".to_owned();
        }),
        case("http exporter with TLS", &["spec.exporter.tls"], |s| {
            s.exporter.tls = Some(ExporterTls {
                ca_secret_ref: ca(),
                cert_secret_ref: None,
            });
        }),
        case("https exporter with TLS", &[], |s| {
            s.exporter.endpoint = "https://otel.example:4317".to_owned();
            s.exporter.tls = Some(ExporterTls {
                ca_secret_ref: ca(),
                cert_secret_ref: None,
            });
        }),
    ];

    let mut changed = case("shards changed on update", &["spec.shards"], |s| {
        s.shards = 2048
    });
    changed.old = Some(base());
    cases.push(changed);
    let mut scaled = case("replicas changed on update", &[], |s| s.replicas = 7);
    scaled.old = Some(base());
    cases.push(scaled);
    cases
}

#[test]
fn cel_and_the_rust_mirror_agree_on_every_case() {
    for case in cases() {
        let cel = cel_errors(&case.spec, case.old.as_ref());
        let rust = rust_errors(&case.spec, case.old.as_ref());
        assert_eq!(cel, rust, "{}", case.name);
        let fields: Vec<&str> = rust.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(fields, case.fields, "{}", case.name);
    }
}

#[test]
fn validate_reports_the_first_broken_rule_with_its_field() {
    let mut spec = base();
    spec.shards = 2;
    let err = validate(&spec, None).unwrap_err();
    assert_eq!(err.field, "spec.replicas");
    assert_eq!(
        err.to_string(),
        "spec.replicas: must not exceed shards: each worker needs a slot of its own"
    );
    assert_eq!(validate(&base(), Some(&base())), Ok(()));
}

fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..3000).prop_map(|ms| format!("{ms}ms")),
        (0u32..120).prop_map(|s| format!("{s}s")),
        (0u32..3, 0u32..60).prop_map(|(m, s)| format!("{m}m{s}s")),
    ]
}

fn tls_mode() -> impl Strategy<Value = TlsMode> {
    prop_oneof![
        Just(TlsMode::Disable),
        Just(TlsMode::Require),
        Just(TlsMode::VerifyCa),
        Just(TlsMode::VerifyFull),
    ]
}

prop_compose! {
    fn random_spec()(
        shards in 1u32..40,
        replicas in 1i32..40,
        scaling in proptest::option::of((1i32..40, 1i32..40)),
        interval in duration_text(),
        timeout in proptest::option::of(duration_text()),
        target_interval in proptest::option::of(duration_text()),
        both in any::<bool>(),
        tls in proptest::option::of((tls_mode(), any::<bool>(), any::<bool>())),
        https in any::<bool>(),
        exporter_tls in any::<bool>(),
    ) -> DatabaseCollectorSpec {
        let mut s = base();
        s.shards = shards;
        s.replicas = replicas;
        s.autoscaling = scaling.and_then(|(min, max)| autoscaling(min, max));
        s.interval = dur(&interval);
        s.query_timeout = timeout.map(|t| dur(&t));
        s.databases[0].interval = target_interval.map(|t| dur(&t));
        if both {
            s.databases[0].discover = Some(Discover::default());
        }
        s.databases[1].tls = tls.map(|(mode, with_ca, with_cert)| DatabaseTls {
            mode,
            ca_secret_ref: with_ca.then(ca),
            cert_secret_ref: with_cert.then(|| TlsSecretRef { name: "client".to_owned() }),
        });
        if https {
            s.exporter.endpoint = "https://otel.example".to_owned();
        }
        s.exporter.tls = exporter_tls.then(|| ExporterTls {
            ca_secret_ref: ca(),
            cert_secret_ref: None,
        });
        s
    }
}

proptest! {
    // Each case runs the CEL interpreter over the whole schema; a few dozen are enough to
    // cover every rule's both outcomes many times.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn cel_and_the_rust_mirror_agree_on_random_specs(
        spec in random_spec(),
        old_shards in proptest::option::of(1u32..40),
    ) {
        let old = old_shards.map(|shards| DatabaseCollectorSpec { shards, ..spec.clone() });
        prop_assert_eq!(cel_errors(&spec, old.as_ref()), rust_errors(&spec, old.as_ref()));
    }
}
