//! Tests of the generated CRD: the committed manifest, the schema's shape, bounds,
//! patterns and CEL rules, and an example DatabaseCollector.

use std::path::Path;

use kube::core::cel::{analyze_rule, compile_schema, CompiledSchema, ScopeContext, WarningKind};
use kube::core::CustomResourceExt;
use regex::Regex;
use serde_json::{json, Value};

use super::*;
use crate::spec::*;

/// The committed manifest, relative to this crate.
const COMMITTED: &str = "dbcollector.dev_databasecollectors.yaml";

/// An example a user would apply; the README and the report show the same shape.
const EXAMPLE: &str = r#"
apiVersion: dbcollector.dev/v1alpha1
kind: DatabaseCollector
metadata:
  name: prod
  namespace: monitoring
spec:
  replicas: 3
  interval: 30s
  databases:
    - name: orders
      engine: postgresql
      host: orders-db.prod.svc
      databases: [orders, inventory]
      user: monitor
      passwordSecretRef: { name: orders-db-monitor, key: password }
      tls:
        mode: verify-full
        caSecretRef: { name: db-ca }
    - name: billing
      engine: mysql
      host: billing-db.prod.svc
      port: 3307
      discover: { exclude: ["tmp_*"] }
      user: monitor
      passwordSecretRef: { name: billing-db-monitor, key: password }
      interval: 1m
  statements: { topN: 50, queryText: obfuscated }
  exporter:
    endpoint: https://otel-gateway.observability.svc:4317
    tls:
      caSecretRef: { name: otel-ca }
    headers:
      - name: x-api-key
        secretKeyRef: { name: otel-api-key, key: key }
  autoscaling:
    minReplicas: 2
    maxReplicas: 10
    targetCPUUtilizationPercentage: 70
"#;

fn schema_json() -> Value {
    let crd = crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

fn spec_schema() -> Value {
    schema_json()["properties"]["spec"].clone()
}

#[test]
fn committed_crd_manifest_matches_the_rust_types() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMITTED);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crd_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/{COMMITTED} is out of date with the Rust types; regenerate it from the \
         workspace root with:\n  {REGENERATE}"
    );
}

#[test]
fn crd_names_scope_and_subresources() {
    let crd = crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("databasecollectors.dbcollector.dev")
    );
    assert_eq!(crd.spec.group, "dbcollector.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "DatabaseCollector");
    assert_eq!(crd.spec.names.short_names, Some(vec!["dbc".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let subresources = serde_json::to_value(&version.subresources).unwrap();
    assert_eq!(
        subresources,
        json!({
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            }
        })
    );
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
            ("Replicas", ".spec.replicas"),
            ("Targets", ".status.targets"),
            ("Shards", ".spec.shards"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
}

#[test]
fn every_cel_rule_is_in_the_schema_where_the_mirror_expects_it() {
    let spec = spec_schema();
    let rules_at = |node: &Value| -> Vec<String> {
        node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["rule"].as_str().unwrap().to_owned())
            .collect()
    };
    let target = &spec["properties"]["databases"]["items"];
    let placed: Vec<(&Value, cel::CelRule)> = vec![
        (&spec, cel::REPLICAS_WITHIN_SHARDS),
        (&spec, cel::MAX_REPLICAS_WITHIN_SHARDS),
        (&spec, cel::QUERY_TIMEOUT_BELOW_INTERVAL),
        (&spec, cel::QUERY_TIMEOUT_BELOW_TARGET_INTERVALS),
        (
            &spec["properties"]["queryTimeout"],
            cel::QUERY_TIMEOUT_ABOVE_ZERO,
        ),
        (&spec["properties"]["interval"], cel::INTERVAL_AT_LEAST_1S),
        (&target["properties"]["interval"], cel::INTERVAL_AT_LEAST_1S),
        (&spec["properties"]["shards"], cel::SHARDS_IMMUTABLE),
        (
            &spec["properties"]["autoscaling"],
            cel::MIN_WITHIN_MAX_REPLICAS,
        ),
        (target, cel::DATABASES_OR_DISCOVER),
        (&target["properties"]["tls"], cel::CA_FOR_VERIFY_MODES),
        (&target["properties"]["tls"], cel::NO_TLS_REFS_WHEN_DISABLED),
        (&spec["properties"]["exporter"], cel::TLS_FOR_HTTPS),
        (&spec["properties"]["exporter"], cel::NO_TLS_FOR_HTTP),
    ];
    for (node, rule) in &placed {
        assert!(
            rules_at(node).contains(&rule.rule.to_owned()),
            "{} is not where the mirror expects it",
            rule.rule
        );
    }
    for rule in cel::ALL {
        assert!(
            placed.iter().any(|(_, r)| *r == rule),
            "{} untested",
            rule.rule
        );
    }
}

/// Walks the compiled schema, calling `f` on every node.
fn walk(node: &CompiledSchema, f: &mut dyn FnMut(&CompiledSchema)) {
    f(node);
    for child in node.properties.values() {
        walk(child, f);
    }
    for child in node.items.iter().chain(&node.additional_properties) {
        walk(child, f);
    }
}

#[test]
fn cel_rules_compile_and_stay_within_the_api_server_cost_budget() {
    let compiled = compile_schema(&schema_json());
    let mut rules = 0;
    walk(&compiled, &mut |node| {
        assert!(!node.has_errors(), "{:?}", node.compilation_errors());
        for rule in node.validations.iter().flatten() {
            rules += 1;
            // The scope check mistakes a comprehension's variable (`t` in `all(t, ...)`)
            // for an unknown one; the agreement tests in cel::tests evaluate every rule.
            let warnings: Vec<_> = analyze_rule(&rule.rule.rule, node, ScopeContext::CrdValidation)
                .into_iter()
                .filter(|w| w.kind != WarningKind::WrongScope)
                .collect();
            assert!(warnings.is_empty(), "{warnings:?}");
        }
    });
    // Every rule once, the interval rule twice (spec and target).
    assert_eq!(rules, cel::ALL.len() + 1);
}

#[test]
fn targets_are_a_bounded_list_map_keyed_by_name() {
    let databases = &spec_schema()["properties"]["databases"];
    assert_eq!(databases["x-kubernetes-list-type"], "map");
    assert_eq!(databases["x-kubernetes-list-map-keys"], json!(["name"]));
    assert_eq!(databases["maxItems"], json!(MAX_TARGETS));
    let required = &databases["items"]["required"];
    assert!(required.as_array().unwrap().contains(&json!("name")));
}

#[test]
fn conditions_and_assignment_are_list_maps() {
    let status = &schema_json()["properties"]["status"]["properties"];
    assert_eq!(
        status["conditions"]["x-kubernetes-list-map-keys"],
        json!(["type"])
    );
    assert_eq!(
        status["assignment"]["x-kubernetes-list-map-keys"],
        json!(["pod"])
    );
}

/// The embedded Kubernetes types, which carry their upstream schemas; the API server
/// checks their values again when the operator writes the pod template.
const UPSTREAM: [&str; 4] = [
    ".resources",
    ".affinity",
    ".tolerations[]",
    ".autoscaling.behavior",
];

/// Every node of the tree, with its path.
fn nodes(path: String, node: &Value, out: &mut Vec<(String, Value)>) {
    out.push((path.clone(), node.clone()));
    if let Some(props) = node["properties"].as_object() {
        for (name, child) in props {
            nodes(format!("{path}.{name}"), child, out);
        }
    }
    if node["items"].is_object() {
        nodes(format!("{path}[]"), &node["items"], out);
    }
    if node["additionalProperties"].is_object() {
        nodes(format!("{path}{{}}"), &node["additionalProperties"], out);
    }
}

#[test]
fn every_string_and_list_of_our_own_types_is_bounded() {
    let mut all = Vec::new();
    nodes("spec".to_owned(), &spec_schema(), &mut all);
    for (path, node) in all {
        if UPSTREAM.iter().any(|u| path.contains(u)) {
            continue;
        }
        match node["type"].as_str() {
            Some("string") if node["enum"].is_null() => {
                assert!(node["maxLength"].is_number(), "{path} has no maxLength");
            }
            Some("array") => assert!(node["maxItems"].is_number(), "{path} has no maxItems"),
            Some("object") if node["properties"].is_null() => {
                assert!(
                    node["maxProperties"].is_number(),
                    "{path} has no maxProperties"
                );
            }
            _ => {}
        }
    }
}

#[test]
fn every_spec_field_has_a_description_without_hard_line_breaks() {
    let mut all = Vec::new();
    nodes("spec".to_owned(), &spec_schema(), &mut all);
    for (path, node) in all {
        // List items and map values are described by their list or map.
        let item = path.ends_with("[]") || path.ends_with("{}");
        let inside_upstream = UPSTREAM
            .iter()
            .any(|u| path.contains(u) && !path.ends_with(u));
        if item || inside_upstream {
            continue;
        }
        let description = node["description"].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "{path} has no description");
        let single_breaks = description.replace("\n\n", "").contains('\n');
        assert!(!single_breaks, "{path}: {description:?}");
    }
}

#[test]
fn schema_patterns_accept_and_refuse_what_they_should() {
    let checks: [(&str, &[&str], &[&str]); 6] = [
        (
            TARGET_NAME_PATTERN,
            &["orders", "db-1.eu_west", &"a".repeat(63)],
            &["", "Orders", "a b", &"a".repeat(64)],
        ),
        (
            DURATION_PATTERN,
            &["30s", "1m30s", "500ms", "1.5h", "2h"],
            &["", "30", "-1s", "1d", "10us", "1 s"],
        ),
        (
            SECRET_NAME_PATTERN,
            &["db-ca", "a.b-c", "x"],
            &["", "Db", "-a", "a_b"],
        ),
        (
            SECRET_KEY_PATTERN,
            &["ca.crt", "tls.key", "PASSWORD_1"],
            &["", "a/b", "a b"],
        ),
        (
            ENDPOINT_PATTERN,
            &[
                "http://otel:4317",
                "https://otel.example/v1",
                "http://[::1]:4317",
            ],
            &[
                "otel:4317",
                "ftp://otel",
                "http://user:pw@otel:4317",
                "http://",
            ],
        ),
        (
            HEADER_NAME_PATTERN,
            &["x-api-key", "Authorization"],
            &["", "x api", "x:y"],
        ),
    ];
    for (pattern, good, bad) in checks {
        let re = Regex::new(pattern).unwrap();
        for text in good {
            assert!(re.is_match(text), "{pattern} refuses {text:?}");
        }
        for text in bad {
            assert!(!re.is_match(text), "{pattern} accepts {text:?}");
        }
    }
}

#[test]
fn schema_defaults_are_the_serde_defaults() {
    let spec = spec_schema();
    let props = &spec["properties"];
    assert_eq!(props["replicas"]["default"], json!(1));
    assert_eq!(props["shards"]["default"], json!(1024));
    assert_eq!(props["interval"]["default"], json!("30s"));
    assert_eq!(props["paused"]["default"], json!(false));
    assert!(props["image"]["default"].is_null(), "image has no default");

    // A minimal spec read in Rust gets the same values the API server would write.
    let minimal: DatabaseCollectorSpec =
        serde_json::from_value(json!({ "exporter": { "endpoint": "http://otel:4317" } })).unwrap();
    let defaulted = serde_json::to_value(&minimal).unwrap();
    for (field, default) in props.as_object().unwrap() {
        if let Some(default) = default.get("default") {
            assert_eq!(&defaulted[field], default, "default of {field}");
        }
    }
    assert_eq!(minimal.interval, std::time::Duration::from_secs(30));
}

#[test]
fn the_example_parses_and_passes_every_rule() {
    let example: DatabaseCollector = serde_yaml_ng::from_str(EXAMPLE).unwrap();
    assert_eq!(example.spec.databases.len(), 2);
    assert_eq!(example.spec.shards, 1024);
    assert_eq!(
        example.spec.databases[0]
            .tls
            .as_ref()
            .unwrap()
            .ca_secret_ref,
        Some(CaSecretRef {
            name: "db-ca".to_owned(),
            key: "ca.crt".to_owned()
        })
    );
    assert_eq!(cel::validate(&example.spec, None), Ok(()));
    assert!(kube::core::cel::validate_cel(&example).is_ok());
}

#[test]
fn the_status_round_trips_with_ranges_as_text() {
    let status: DatabaseCollectorStatus = serde_json::from_value(json!({
        "observedGeneration": 4,
        "replicas": 2,
        "readyReplicas": 2,
        "selector": "app.kubernetes.io/instance=prod",
        "targets": 2,
        "assignmentEpoch": 9,
        "assignment": [
            { "pod": "prod-0", "ranges": "0-511", "targets": 1, "ackedEpoch": 9 },
            { "pod": "prod-1", "ranges": "512-1023", "targets": 1 }
        ],
        "unownedSlots": 0,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "Available", "message": "",
            "lastTransitionTime": "2025-01-01T00:00:00Z"
        }]
    }))
    .unwrap();
    assert_eq!(status.assignment[1].ranges.to_string(), "512-1023");
    assert_eq!(status.assignment[1].acked_epoch, None);
    assert_eq!(status.condition(status::READY).unwrap().status, "True");
    let back = serde_json::to_value(&status).unwrap();
    assert_eq!(back["assignment"][0]["ranges"], "0-511");
    assert!(serde_json::from_value::<DatabaseCollectorStatus>(json!({
        "assignment": [{ "pod": "p", "ranges": "5-1" }]
    }))
    .is_err());
}

#[test]
fn crd_is_the_derived_one_with_descriptions_reflowed_and_no_nullable() {
    let derived = serde_json::to_value(DatabaseCollector::crd()).unwrap();
    let installed = serde_json::to_value(crd()).unwrap();
    let strip = |mut v: Value| {
        fn go(v: &mut Value) {
            match v {
                Value::Object(map) => {
                    map.remove("description");
                    map.remove("nullable");
                    map.values_mut().for_each(go);
                }
                Value::Array(items) => items.iter_mut().for_each(go),
                _ => {}
            }
        }
        go(&mut v);
        v
    };
    assert!(!installed.to_string().contains("nullable"));
    assert_eq!(strip(derived), strip(installed));
}
