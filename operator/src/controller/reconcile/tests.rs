//! Parsing what the watch delivers, and refusing what CEL would.

use super::*;
use serde_json::json;

fn object(spec: Value, status: Option<Value>) -> DynamicObject {
    let mut value = json!({
        "apiVersion": "dbcollector.dev/v1alpha1",
        "kind": "DatabaseCollector",
        "metadata": { "name": "orders", "namespace": "shop", "uid": "u", "generation": 2 },
        "spec": spec,
    });
    if let Some(status) = status {
        value["status"] = status;
    }
    serde_json::from_value(value).unwrap()
}

fn spec() -> Value {
    json!({
        "replicas": 2,
        "databases": [{ "name": "pg", "engine": "postgresql", "host": "h", "user": "u" }],
        "exporter": { "endpoint": "http://otel:4317" }
    })
}

#[test]
fn a_valid_object_parses_with_its_status() {
    let status = json!({ "assignmentEpoch": 4, "replicas": 2 });
    let parsed = parse(&object(spec(), Some(status))).ok().unwrap();
    assert_eq!(parsed.dc.spec.replicas, 2);
    assert_eq!(parsed.status.assignment_epoch, 4);
    assert!(parsed.status_valid);
    assert_eq!(parsed.dc.metadata.uid.as_deref(), Some("u"));
}

#[test]
fn a_spec_that_does_not_deserialize_is_reported_with_its_path() {
    let mut bad = spec();
    bad["databases"][0]["engine"] = json!("oracle");
    let conditions = json!([{
        "type": "Ready", "status": "True", "reason": "Ready", "message": "m",
        "lastTransitionTime": "2024-01-01T00:00:00Z"
    }]);
    let invalid = match parse(&object(bad, Some(json!({ "conditions": conditions })))) {
        Err(invalid) => invalid,
        Ok(_) => panic!("parsed"),
    };
    assert!(
        invalid.message.starts_with("spec.databases[0].engine: "),
        "{}",
        invalid.message
    );
    assert_eq!(invalid.conditions.len(), 1);
}

#[test]
fn a_status_that_does_not_deserialize_is_replaced_keeping_its_epoch() {
    let status = json!({
        "assignmentEpoch": 7,
        "assignment": [{ "pod": "orders-0", "ranges": "9-3" }]
    });
    let parsed = parse(&object(spec(), Some(status))).ok().unwrap();
    assert!(!parsed.status_valid);
    assert_eq!(parsed.status.assignment_epoch, 7);
    assert!(parsed.status.assignment.is_empty());
}

#[test]
fn a_changed_shard_count_is_refused_naming_the_field() {
    let mut s: DatabaseCollectorSpec = serde_json::from_value(spec()).unwrap();
    s.shards = 512;
    let refused = refusal(&s, Some(1024)).unwrap();
    assert_eq!(refused.reason, "ShardsChanged");
    assert!(refused.message.starts_with("spec.shards: is immutable"));
    assert!(refused.message.contains("set it back to 1024"));
    assert_eq!(refusal(&s, Some(512)), None);
    assert_eq!(refusal(&s, None), None);
}

#[test]
fn a_spec_breaking_a_cel_rule_is_refused_even_where_the_server_ignores_cel() {
    let mut s: DatabaseCollectorSpec = serde_json::from_value(spec()).unwrap();
    s.shards = 4;
    s.replicas = 5;
    let refused = refusal(&s, None).unwrap();
    assert_eq!(refused.reason, "InvalidSpec");
    assert!(
        refused.message.starts_with("spec.replicas: "),
        "{}",
        refused.message
    );
}
