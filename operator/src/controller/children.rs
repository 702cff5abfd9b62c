//! Writing children: server-side apply under the operator's field manager, only when the
//! live object differs, and deletion of children no longer wanted.
//!
//! Each outcome is a [`ChildReport`] rather than an error, so that a child the server
//! does not serve (autoscaling/v2 or policy/v1 before Kubernetes 1.23/1.21) or may not
//! be written (RBAC) is reported in `Degraded` and does not stop the others.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use dbcollector_crds::annotations::MANAGER;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::status::{ChildReport, Outcome};

/// How a failed request is classified.
#[derive(Debug)]
pub enum Failure {
    /// The API server does not serve the resource's group/version.
    NotServed,
    /// RBAC refused the request.
    Forbidden(String),
    /// Anything else.
    Other(String),
}

/// Classifies an API error. A 404 naming an object means that object is missing; a 404
/// without a name (often a plain-text `404 page not found`) means the resource itself is
/// not served.
pub fn classify(error: &kube::Error) -> Failure {
    match error {
        kube::Error::Api(status) if status.code == 404 => Failure::NotServed,
        kube::Error::Api(status) if status.code == 403 => {
            Failure::Forbidden(status.message.clone())
        }
        other => Failure::Other(crate::error_chain(other)),
    }
}

/// Whether a 404 is about a missing object (rather than an unserved resource).
pub fn is_missing_object(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if status.code == 404
            && status.details.as_ref().is_some_and(|d| !d.name.is_empty()))
}

/// Applies children and remembers what it applied, so that an unchanged child is not
/// written again even when the server normalizes a field (e.g. a quantity `0.5` read back
/// as `500m`) and the live object never literally contains the rendered one.
#[derive(Debug, Default)]
pub struct Applier {
    /// Child key → (hash of the rendered object, resourceVersion our last apply left).
    applied: Mutex<HashMap<String, (u64, String)>>,
}

/// What applying one child did.
#[derive(Debug)]
pub struct Applied<K> {
    /// The outcome for status.
    pub report: ChildReport,
    /// The live object after the apply, when there is one.
    pub live: Option<K>,
    /// Whether a write was sent.
    pub wrote: bool,
}

impl Applier {
    /// Applies `desired` unless the live object already contains it; `owner_uid` is the
    /// collector's, and a live object controlled by anything else is left alone.
    pub async fn apply<K>(
        &self,
        api: &Api<K>,
        desired: &K,
        owner_uid: &str,
        required: bool,
    ) -> Applied<K>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let name = desired.name_any();
        let kind = K::kind(&()).into_owned();
        let key = format!("{kind}/{}/{name}", desired.namespace().unwrap_or_default());
        let report = |outcome| ChildReport {
            kind: kind_name(&kind),
            name: name.clone(),
            required,
            outcome,
        };
        let wanted = match serde_json::to_value(desired) {
            Ok(v) => v,
            Err(e) => {
                return failed(report(Outcome::Failed {
                    message: format!("serializing: {e}"),
                }))
            }
        };
        let hash = hash_value(&wanted);

        let live = match api.get(&name).await {
            Ok(live) => Some(live),
            Err(e) if is_missing_object(&e) => None,
            Err(e) => return failed(report(outcome_of(&e, K::api_version(&())))),
        };
        if let Some(live) = &live {
            if !controlled_by(live, owner_uid) {
                return failed(report(Outcome::Failed {
                    message: "exists and is not controlled by this DatabaseCollector; \
                              delete it or rename the collector"
                        .to_owned(),
                }));
            }
            let unchanged = serde_json::to_value(live).is_ok_and(|l| contains(&wanted, &l))
                || self.lock().get(&key).is_some_and(|(h, rv)| {
                    *h == hash && live.resource_version().as_deref() == Some(rv.as_str())
                });
            if unchanged {
                return Applied {
                    report: report(Outcome::Applied),
                    live: Some(live.clone()),
                    wrote: false,
                };
            }
        }

        let params = PatchParams::apply(MANAGER).force();
        match api.patch(&name, &params, &Patch::Apply(desired)).await {
            Ok(written) => {
                if let Some(rv) = written.resource_version() {
                    self.lock().insert(key, (hash, rv));
                }
                tracing::debug!(kind = %kind, name = %name, "applied");
                Applied {
                    report: report(Outcome::Applied),
                    live: Some(written),
                    wrote: true,
                }
            }
            Err(e) => failed(report(outcome_of(&e, K::api_version(&())))),
        }
    }

    /// Deletes the child `name` if it exists and this collector controls it; `None` when
    /// there was nothing to delete (or its resource is not served, so it cannot exist).
    pub async fn delete<K>(&self, api: &Api<K>, name: &str, owner_uid: &str) -> Option<ChildReport>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    {
        let kind = K::kind(&()).into_owned();
        let report = |outcome| ChildReport {
            kind: kind_name(&kind),
            name: name.to_owned(),
            required: false,
            outcome,
        };
        let live = match api.get(name).await {
            Ok(live) => live,
            Err(e) if is_missing_object(&e) => return None,
            Err(e) => match classify(&e) {
                Failure::NotServed => return None,
                _ => return Some(report(outcome_of(&e, K::api_version(&())))),
            },
        };
        if !controlled_by(&live, owner_uid) {
            return None;
        }
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                let (prefix, suffix) = (format!("{kind}/"), format!("/{name}"));
                self.lock()
                    .retain(|k, _| !(k.starts_with(&prefix) && k.ends_with(&suffix)));
                tracing::info!(kind = %kind, name, "deleted a child no longer wanted");
                Some(report(Outcome::Deleted))
            }
            Err(e) if is_missing_object(&e) => None,
            Err(e) => Some(report(outcome_of(&e, K::api_version(&())))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, String)>> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn failed<K>(report: ChildReport) -> Applied<K> {
    Applied {
        report,
        live: None,
        wrote: false,
    }
}

/// The outcome for a failed request on a resource of `api_version`.
pub fn outcome_of(error: &kube::Error, api_version: impl Into<String>) -> Outcome {
    match classify(error) {
        Failure::NotServed => Outcome::NotServed {
            api: api_version.into(),
        },
        Failure::Forbidden(message) => Outcome::Forbidden { message },
        Failure::Other(message) => Outcome::Failed { message },
    }
}

/// Whether `object` has a controller owner reference to the object of uid `owner_uid`.
pub fn controlled_by<K: Resource>(object: &K, owner_uid: &str) -> bool {
    object
        .owner_references()
        .iter()
        .any(|r| r.controller == Some(true) && r.uid == owner_uid)
}

/// The kind as a `'static` name for reports.
fn kind_name(kind: &str) -> &'static str {
    const KINDS: [&str; 9] = [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Lease",
        "StatefulSet",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    ];
    KINDS.into_iter().find(|k| *k == kind).unwrap_or("Object")
}

/// Whether every field of `wanted` is in `live` with the same value: maps may have more
/// keys (server defaults), lists must have the same length and match item by item.
pub fn contains(wanted: &Value, live: &Value) -> bool {
    match (wanted, live) {
        (Value::Object(w), Value::Object(l)) => w
            .iter()
            .all(|(k, wv)| l.get(k).is_some_and(|lv| contains(wv, lv))),
        (Value::Array(w), Value::Array(l)) => {
            w.len() == l.len() && w.iter().zip(l).all(|(wv, lv)| contains(wv, lv))
        }
        (Value::Number(w), Value::Number(l)) => w.as_f64() == l.as_f64(),
        (w, l) => w == l,
    }
}

fn hash_value(value: &Value) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_live_object_with_server_defaults_contains_the_rendered_one() {
        let wanted = json!({"spec": {"replicas": 3, "ports": [{"port": 9187}]}});
        let live = json!({
            "spec": {"replicas": 3, "ports": [{"port": 9187, "protocol": "TCP"}], "extra": 1},
            "status": {}
        });
        assert!(contains(&wanted, &live));
    }

    #[test]
    fn a_changed_value_or_a_list_of_another_length_is_not_contained() {
        let wanted = json!({"spec": {"replicas": 3, "ports": [{"port": 9187}]}});
        let other_value = json!({"spec": {"replicas": 2, "ports": [{"port": 9187}]}});
        let longer = json!({"spec": {"replicas": 3, "ports": [{"port": 9187}, {"port": 1}]}});
        assert!(!contains(&wanted, &other_value));
        assert!(!contains(&wanted, &longer));
        assert!(!contains(&json!({"a": 1}), &json!({})));
    }

    #[test]
    fn a_404_naming_an_object_is_a_missing_object_and_a_bare_404_is_an_unserved_api() {
        let missing: kube::Error = kube::Error::Api(
            serde_json::from_value::<kube::core::Status>(json!({
                "code": 404, "reason": "NotFound", "message": "x not found",
                "details": {"name": "x", "kind": "horizontalpodautoscalers"}
            }))
            .unwrap()
            .boxed(),
        );
        let unserved = kube::Error::Api(
            kube::core::Status::failure("404 page not found", "Failed to parse error data")
                .with_code(404)
                .boxed(),
        );
        assert!(is_missing_object(&missing));
        assert!(!is_missing_object(&unserved));
        assert!(matches!(classify(&unserved), Failure::NotServed));
        assert_eq!(
            outcome_of(&unserved, "autoscaling/v2"),
            Outcome::NotServed {
                api: "autoscaling/v2".to_owned()
            }
        );
    }
}
