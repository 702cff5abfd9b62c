//! Rendering: every child's shape, what stays out of the pod template, and a worker
//! config the worker itself accepts.

use std::net::SocketAddr;

use super::*;
use dbcollector_crds::annotations::INSTANCE_LABEL;
use serde_json::json;

/// A collector as read from the API server (with namespace and uid).
fn collector(spec: serde_json::Value) -> DatabaseCollector {
    serde_json::from_value(json!({
        "apiVersion": "dbcollector.dev/v1alpha1",
        "kind": "DatabaseCollector",
        "metadata": { "name": "orders", "namespace": "shop", "uid": "uid-1", "generation": 1 },
        "spec": spec,
    }))
    .unwrap()
}

fn spec() -> serde_json::Value {
    json!({
        "replicas": 3,
        "databases": [
            {
                "name": "pg-main", "engine": "postgresql", "host": "pg.shop.svc", "user": "monitor",
                "databases": ["app", "billing"],
                "passwordSecretRef": { "name": "pg-monitor", "key": "password" },
                "interval": "10s"
            },
            {
                "name": "maria", "engine": "mysql", "host": "maria.shop.svc", "port": 3307,
                "user": "exporter", "discover": { "include": ["shop_*"], "exclude": ["shop_tmp"] },
                "tls": { "mode": "require" }, "serverWide": "carrier"
            }
        ],
        "interval": "1m30s",
        "queryTimeout": "5s",
        "exporter": {
            "endpoint": "http://otel-collector.observability:4317",
            "headers": [ { "name": "x-api-key", "secretKeyRef": { "name": "otlp", "key": "api-key" } } ]
        }
    })
}

fn children_of(spec: serde_json::Value) -> Children {
    children(&collector(spec), "example.invalid/worker:1").unwrap()
}

fn worker_container(set: &StatefulSet) -> &Container {
    &set.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

#[test]
fn every_child_is_controlled_by_the_collector_and_labelled() {
    let c = children_of(spec());
    let metas = [
        &c.service_account.metadata,
        &c.role.metadata,
        &c.role_binding.metadata,
        &c.config_map.metadata,
        &c.service.metadata,
        &c.stateful_set.metadata,
        &c.pod_disruption_budget.metadata,
        &c.leases[0].metadata,
    ];
    for meta in metas {
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "DatabaseCollector");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[INSTANCE_LABEL], "orders");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGER);
    }
    assert_eq!(c.leases.len(), 3);
    assert_eq!(c.leases[2].metadata.name.as_deref(), Some("orders-2"));
}

#[test]
fn the_statefulset_is_parallel_restricted_and_probed_on_the_worker_port() {
    let c = children_of(spec());
    let set = c.stateful_set.spec.as_ref().unwrap();
    assert_eq!(set.replicas, Some(3));
    assert_eq!(set.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(set.service_name.as_deref(), Some("orders"));
    assert_eq!(
        set.selector.match_labels.as_ref(),
        Some(&worker_selector("orders"))
    );
    let pod = set.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("orders-worker"));
    let pod_security = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );

    let container = worker_container(&c.stateful_set);
    assert_eq!(container.image.as_deref(), Some("example.invalid/worker:1"));
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 9187);
    let path = |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().path.clone();
    assert_eq!(path(&container.readiness_probe).as_deref(), Some("/readyz"));
    assert_eq!(path(&container.liveness_probe).as_deref(), Some("/healthz"));

    let env: BTreeMap<_, _> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let field = |name: &str| {
        env[name]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path
            .clone()
    };
    assert_eq!(field("POD_NAME"), "metadata.name");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
    // Each worker collects only the targets of its pod's shard assignment.
    assert_eq!(
        container.args.as_deref(),
        Some(&["--assignment=pod".to_owned()][..])
    );
}

#[test]
fn the_worker_watches_its_config_map_instead_of_mounting_it() {
    let c = children_of(spec());
    let container = worker_container(&c.stateful_set);
    let env: BTreeMap<_, _> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    assert_eq!(env["DBCOLLECTOR_CONFIG_MAP"], Some("orders-config"));
    assert_eq!(env["DBCOLLECTOR_CONFIG_KEY"], Some(CONFIG_KEY));
    assert!(!env.contains_key("DBCOLLECTOR_CONFIG"));
    assert_eq!(c.config_map.metadata.name.as_deref(), Some("orders-config"));
    assert!(c.config_map.data.as_ref().unwrap().contains_key(CONFIG_KEY));

    // The kubelet's refresh of a mounted ConfigMap lags by a minute or more.
    let pod = c.stateful_set.spec.as_ref().unwrap().template.spec.clone();
    let volumes = pod.unwrap().volumes.unwrap_or_default();
    assert!(
        volumes.iter().all(|v| v.config_map.is_none()),
        "{volumes:?}"
    );
}

#[test]
fn the_pod_template_does_not_change_with_targets_replicas_or_pipeline_settings() {
    let before = children_of(spec());
    let mut changed = spec();
    changed["replicas"] = json!(7);
    changed["databases"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "new", "engine": "postgresql", "host": "h", "user": "u" }));
    changed["pipeline"] = json!({ "batch": { "maxPoints": 50 } });
    let after = children_of(changed);

    let template = |c: &Children| c.stateful_set.spec.as_ref().unwrap().template.clone();
    assert_eq!(template(&before), template(&after));
    assert_ne!(before.config_map.data, after.config_map.data);
    let text = serde_json::to_string(&template(&after)).unwrap();
    assert!(!text.contains("shard"), "{text}");
    assert!(!text.contains("replicas"), "{text}");
}

#[test]
fn the_image_and_scheduling_are_in_the_pod_template() {
    let before = children_of(spec());
    let mut changed = spec();
    changed["image"] = json!("example.invalid/worker:2");
    changed["nodeSelector"] = json!({ "disk": "ssd" });
    let after = children_of(changed);
    let template = |c: &Children| c.stateful_set.spec.as_ref().unwrap().template.clone();
    assert_ne!(template(&before), template(&after));
    assert_eq!(
        worker_container(&after.stateful_set).image.as_deref(),
        Some("example.invalid/worker:2")
    );
}

#[test]
fn user_pod_labels_cannot_override_the_operators() {
    let mut s = spec();
    s["podLabels"] = json!({ "team": "db", "app.kubernetes.io/instance": "evil" });
    s["podAnnotations"] = json!({ "note": "x", "dbcollector.dev/shard-ranges": "0-9" });
    let c = children_of(s);
    let meta = c.stateful_set.spec.unwrap().template.metadata.unwrap();
    let labels = meta.labels.unwrap();
    assert_eq!(labels["team"], "db");
    assert_eq!(labels[INSTANCE_LABEL], "orders");
    let annotations = meta.annotations.unwrap();
    assert_eq!(annotations.len(), 1);
    assert_eq!(annotations["note"], "x");
}

#[test]
fn the_workers_role_names_its_pods_config_leases_and_secrets_and_grants_no_patch() {
    let c = children_of(spec());
    let rules = c.role.rules.unwrap();
    let rule = |resource: &str| {
        rules
            .iter()
            .find(|r| r.resources.as_deref() == Some(&[resource.to_owned()][..]))
            .unwrap()
            .clone()
    };
    let pods = rule("pods");
    assert_eq!(
        pods.resource_names.unwrap(),
        ["orders-0", "orders-1", "orders-2"]
    );
    assert_eq!(pods.verbs, ["get", "list", "watch"]);
    assert_eq!(
        rule("configmaps").resource_names.unwrap(),
        ["orders-config"]
    );
    let leases = rule("leases");
    assert_eq!(leases.api_groups.unwrap(), ["coordination.k8s.io"]);
    assert_eq!(leases.verbs, ["get", "update"]);
    let secrets = rule("secrets");
    assert_eq!(secrets.resource_names.unwrap(), ["otlp", "pg-monitor"]);
    assert_eq!(secrets.verbs, ["get"]);
    assert!(rules
        .iter()
        .all(|r| !r.verbs.iter().any(|v| v == "patch" || v == "*")));
    assert!(rules
        .iter()
        .all(|r| r.resource_names.as_ref().is_some_and(|n| !n.is_empty())));

    let binding = c.role_binding;
    assert_eq!(binding.role_ref.name, "orders-worker");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", "orders-worker")
    );
}

#[test]
fn without_secret_references_the_role_has_no_secrets_rule() {
    let mut s = spec();
    s["databases"][0]
        .as_object_mut()
        .unwrap()
        .remove("passwordSecretRef");
    s["exporter"].as_object_mut().unwrap().remove("headers");
    let rules = children_of(s).role.rules.unwrap();
    // An empty resourceNames list would mean every Secret of the namespace.
    assert!(rules
        .iter()
        .all(|r| r.resources.as_deref() != Some(&["secrets".to_owned()][..])));
}

#[test]
fn the_budget_allows_one_worker_down_and_the_service_is_headless() {
    let c = children_of(spec());
    let pdb = c.pod_disruption_budget.spec.unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb.selector.unwrap().match_labels.unwrap(),
        worker_selector("orders")
    );
    let service = c.service.spec.unwrap();
    assert_eq!(service.cluster_ip.as_deref(), Some("None"));
    assert_eq!(service.selector.unwrap(), worker_selector("orders"));
    assert_eq!(service.ports.unwrap()[0].port, 9187);
}

#[test]
fn the_autoscaler_targets_the_collectors_scale_subresource() {
    assert!(children_of(spec()).autoscaler.is_none());

    let mut s = spec();
    s["autoscaling"] = json!({
        "minReplicas": 2, "maxReplicas": 6, "targetMemoryUtilizationPercentage": 70
    });
    let hpa = children_of(s).autoscaler.unwrap();
    assert_eq!(hpa.metadata.name.as_deref(), Some("orders"));
    let spec = hpa.spec.unwrap();
    assert_eq!(spec.scale_target_ref.kind, "DatabaseCollector");
    assert_eq!(
        spec.scale_target_ref.api_version.as_deref(),
        Some("dbcollector.dev/v1alpha1")
    );
    assert_eq!(spec.scale_target_ref.name, "orders");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6));
    let metrics = spec.metrics.unwrap();
    assert_eq!(metrics.len(), 1);
    let resource = metrics[0].resource.as_ref().unwrap();
    assert_eq!(resource.name, "memory");
    assert_eq!(resource.target.average_utilization, Some(70));

    let mut s = spec_with_autoscaling_defaults();
    s["autoscaling"]["maxReplicas"] = json!(4);
    let hpa = children_of(s).autoscaler.unwrap();
    let metrics = hpa.spec.unwrap().metrics.unwrap();
    assert_eq!(metrics[0].resource.as_ref().unwrap().name, "cpu");
    assert_eq!(
        metrics[0]
            .resource
            .as_ref()
            .unwrap()
            .target
            .average_utilization,
        Some(80)
    );
}

fn spec_with_autoscaling_defaults() -> serde_json::Value {
    let mut s = spec();
    s["autoscaling"] = json!({ "maxReplicas": 2 });
    s
}

#[test]
fn the_worker_config_references_secrets_and_copies_no_credential() {
    let c = children_of(spec());
    let yaml = &c.config_map.data.as_ref().unwrap()[CONFIG_KEY];
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
    assert_eq!(
        doc["targets"][0]["password"]["secret"]["name"].as_str(),
        Some("pg-monitor")
    );
    assert_eq!(
        doc["targets"][0]["password"]["secret"]["key"].as_str(),
        Some("password")
    );
    assert_eq!(
        doc["exporter"]["headers"]["x-api-key"]["secret"]["name"].as_str(),
        Some("otlp")
    );
    assert_eq!(doc["defaults"]["interval"].as_str(), Some("1m 30s"));
    assert_eq!(doc["targets"][0]["interval"].as_str(), Some("10s"));
    assert_eq!(doc["telemetry"]["listen"].as_str(), Some("0.0.0.0:9187"));
}

#[test]
fn the_worker_accepts_the_rendered_config() {
    let c = children_of(spec());
    let yaml = &c.config_map.data.as_ref().unwrap()[CONFIG_KEY];
    let config = dbcollector_worker::config::Config::from_yaml(yaml)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(config.targets.len(), 2);
    assert_eq!(config.targets[1].port(), 3307);
    assert_eq!(
        config.targets[0].password,
        Some(dbcollector_worker::config::ValueSource::Secret {
            name: "pg-monitor".to_owned(),
            key: "password".to_owned()
        })
    );
    assert_eq!(config.defaults.interval, std::time::Duration::from_secs(90));
    assert_eq!(
        config.telemetry.listen,
        SocketAddr::from(([0, 0, 0, 0], 9187))
    );
}

#[test]
fn tls_material_from_secrets_is_rendered_as_references_the_worker_accepts_and_may_read() {
    use dbcollector_worker::config::{Config, TlsMode, ValueSource};
    let secret = |name: &str, key: &str| {
        Some(ValueSource::Secret {
            name: name.to_owned(),
            key: key.to_owned(),
        })
    };
    let mut s = spec();
    s["databases"][0]["tls"] = json!({
        "mode": "verify-full",
        "caSecretRef": { "name": "pg-ca" },
        "certSecretRef": { "name": "pg-client" }
    });
    s["exporter"]["endpoint"] = json!("https://otel-collector.observability:4317");
    s["exporter"]["tls"] = json!({
        "caSecretRef": { "name": "otlp-ca", "key": "bundle.pem" },
        "certSecretRef": { "name": "otlp-client" }
    });
    let c = children_of(s);
    let yaml = &c.config_map.data.as_ref().unwrap()[CONFIG_KEY];
    let config = Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));

    assert_eq!(config.targets.len(), 2, "no target is left out");
    let tls = &config.targets[0].tls;
    assert_eq!(tls.mode, TlsMode::VerifyFull);
    assert_eq!(tls.ca, secret("pg-ca", "ca.crt"), "the CRD's default key");
    assert_eq!(tls.cert, secret("pg-client", "tls.crt"));
    assert_eq!(tls.key, secret("pg-client", "tls.key"));
    assert_eq!(tls.ca_file, None);
    let tls = &config.exporter.tls;
    assert_eq!(tls.ca, secret("otlp-ca", "bundle.pem"));
    assert_eq!(tls.cert, secret("otlp-client", "tls.crt"));
    assert_eq!(tls.key, secret("otlp-client", "tls.key"));

    // Every Secret the worker will read is one its Role lets it get.
    let rules = c.role.rules.unwrap();
    let secrets = rules
        .iter()
        .find(|r| r.resources.as_deref() == Some(&["secrets".to_owned()][..]))
        .unwrap();
    let allowed = secrets.resource_names.clone().unwrap();
    assert_eq!(
        allowed,
        [
            "otlp",
            "otlp-ca",
            "otlp-client",
            "pg-ca",
            "pg-client",
            "pg-monitor"
        ]
    );
    assert_eq!(
        config.secret_names().into_iter().collect::<Vec<_>>(),
        allowed
    );
}

#[test]
fn secret_refs_list_every_referencing_field_by_secret() {
    let mut s = collector(spec()).spec;
    s.databases[1].password_secret_ref = Some(dbcollector_crds::spec::SecretKeyRef {
        name: "pg-monitor".to_owned(),
        key: "maria".to_owned(),
    });
    let refs = secret_refs(&s);
    let fields: Vec<&str> = refs["pg-monitor"]
        .iter()
        .map(|u| u.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.databases[0].passwordSecretRef",
            "spec.databases[1].passwordSecretRef"
        ]
    );
    assert_eq!(refs["otlp"][0].key, "api-key");
}

#[test]
fn ordinals_are_read_only_from_the_collectors_canonical_pod_names() {
    assert_eq!(names::ordinal("orders", "orders-0"), Some(0));
    assert_eq!(names::ordinal("orders", "orders-12"), Some(12));
    assert_eq!(names::ordinal("orders", "orders-01"), None);
    assert_eq!(names::ordinal("orders", "orders-x"), None);
    assert_eq!(names::ordinal("orders", "orders-eu-1"), None);
    assert_eq!(names::ordinal("orders", "other-1"), None);
}

#[test]
fn a_collector_not_read_from_the_api_is_refused() {
    let mut dc = collector(spec());
    dc.metadata.uid = None;
    assert!(matches!(
        children(&dc, "img"),
        Err(Error::MissingMetadata("uid"))
    ));
}
